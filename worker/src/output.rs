//! Where everything a worker prints goes: one writer thread owns stdout and writes whole
//! lines, one `write` per line, so report lines are never interleaved, and the async tasks
//! (relays, the control channel) never wait on a slow reader of our stdout.
//!
//! Log lines are offered without blocking (a full queue drops the line and counts it);
//! the few lines the master depends on (`ready`, `stats`, `exit`) wait for room instead.
//! [`flush`] waits until everything queued so far is written, for the `exit` line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use nodepass_proto::report::{Report, Stats};

/// Lines queued for the writer thread before log lines start being dropped.
const QUEUE_LINES: usize = 8192;

enum Msg {
    Line(String),
    Flush(SyncSender<()>),
}

/// The writer's queue: a channel that allocates as lines arrive, bounded by a count of the
/// lines in it. (A `sync_channel(QUEUE_LINES)` allocates and writes all its slots at once:
/// 256 KiB in every worker process, a quarter of an idle worker's private memory.)
struct Queue {
    tx: Mutex<Sender<Msg>>,
    /// Lines queued and not yet written.
    pending: Mutex<usize>,
    /// Signalled by the writer when a line has been written.
    room: Condvar,
}

impl Queue {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, usize> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg` if there is room (or always, with `wait`, after waiting for room).
    /// Gives the message back when it was not queued.
    fn push(&self, msg: Msg, wait: bool) -> Result<(), Msg> {
        let mut pending = self.lock_pending();
        while *pending >= QUEUE_LINES {
            if !wait {
                return Err(msg);
            }
            pending = self.room.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        // Counted before it is sent: the writer may take it (and count it out) before
        // `send` returns.
        *pending += 1;
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(msg)
            .map_err(|e| e.0);
        if sent.is_err() {
            *pending -= 1;
        }
        sent
    }

    /// The writer took one message off the queue.
    fn done(&self) {
        let mut pending = self.lock_pending();
        *pending = pending.saturating_sub(1);
        self.room.notify_all();
    }
}

static QUEUE: OnceLock<Queue> = OnceLock::new();
static REPORT_MODE: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Starts the writer thread (once). `report_mode`: JSON report lines instead of human text.
pub fn start(report_mode: bool) {
    REPORT_MODE.store(report_mode, Ordering::Relaxed);
    QUEUE.get_or_init(|| {
        let (tx, rx) = channel();
        // If the thread cannot start we fall back to writing inline (see `send`).
        let spawned = std::thread::Builder::new()
            .name("np-output".into())
            .spawn(move || writer(rx));
        if spawned.is_err() {
            eprintln!("nodepass: could not start the output thread; writing inline");
        }
        Queue {
            tx: Mutex::new(tx),
            pending: Mutex::new(0),
            room: Condvar::new(),
        }
    });
}

/// Whether this process writes JSON report lines (`nodepass worker`).
pub fn report_mode() -> bool {
    REPORT_MODE.load(Ordering::Relaxed)
}

fn writer(rx: Receiver<Msg>) {
    let stdout = std::io::stdout();
    for msg in rx {
        if let Some(q) = QUEUE.get() {
            q.done();
        }
        match msg {
            Msg::Line(mut line) => {
                line.push('\n');
                // A closed stdout (master gone) is not our problem to report: nobody reads it.
                let mut out = stdout.lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
            Msg::Flush(ack) => {
                let _ = stdout.lock().flush();
                let _ = ack.send(());
            }
        }
    }
}

/// Queues a log line; never blocks. Returns false when the line was dropped.
pub fn log_line(line: String) -> bool {
    match QUEUE.get() {
        Some(q) => match q.push(Msg::Line(line), false) {
            Ok(()) => true,
            Err(_) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                false
            }
        },
        None => {
            println!("{line}");
            true
        }
    }
}

/// Queues a line the master depends on; waits for room in the queue if needed.
pub fn important_line(line: String) {
    match QUEUE.get() {
        Some(q) => {
            if let Err(Msg::Line(l)) = q.push(Msg::Line(line), true) {
                println!("{l}");
            }
        }
        None => println!("{line}"),
    }
}

/// Writes a report (report mode only; a no-op in foreground mode).
pub fn report(r: &Report) {
    if report_mode() {
        important_line(r.to_line());
    }
}

/// Waits (at most `timeout`) until every line queued so far has been written.
pub fn flush(timeout: Duration) {
    if let Some(q) = QUEUE.get() {
        let (tx, rx) = sync_channel(1);
        if q.push(Msg::Flush(tx), true).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }
}

/// Number of log lines dropped because the output queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Publishes one round of figures: a `stats` report line in report mode, the reference's
/// `CHECK_POINT|...` line at EVENT level in foreground mode.
pub fn publish_stats(stats: Stats) {
    if report_mode() {
        important_line(Report::Stats(stats).to_line());
    } else {
        crate::np_event!(
            "CHECK_POINT|MODE={}|PING={}ms|POOL={}|TCPS={}|UDPS={}|TCPRX={}|TCPTX={}|UDPRX={}|UDPTX={}",
            stats.mode,
            stats.ping,
            stats.pool,
            stats.tcps,
            stats.udps,
            stats.tcprx,
            stats.tcptx,
            stats.udprx,
            stats.udptx
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (Queue, Receiver<Msg>) {
        let (tx, rx) = channel();
        let q = Queue {
            tx: Mutex::new(tx),
            pending: Mutex::new(0),
            room: Condvar::new(),
        };
        (q, rx)
    }

    /// The queue takes QUEUE_LINES lines that nobody writes out, refuses the next log line
    /// (never blocks), and takes one again once the writer has taken one off.
    #[test]
    fn log_lines_are_bounded_without_blocking() {
        let (q, rx) = queue();
        for i in 0..QUEUE_LINES {
            assert!(q.push(Msg::Line(format!("{i}")), false).is_ok(), "line {i}");
        }
        assert!(q.push(Msg::Line("one too many".into()), false).is_err());
        assert!(rx.recv().is_ok());
        q.done();
        assert!(q.push(Msg::Line("room again".into()), false).is_ok());
    }

    /// An important line waits for room rather than being dropped.
    #[test]
    fn important_lines_wait_for_room() {
        let (q, rx) = queue();
        let q = std::sync::Arc::new(q);
        for i in 0..QUEUE_LINES {
            assert!(q.push(Msg::Line(format!("{i}")), false).is_ok());
        }
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.push(Msg::Line("ready".into()), true).is_ok())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "it waited for room");
        assert!(rx.recv().is_ok());
        q.done();
        assert!(waiter.join().expect("waiter"), "queued once there was room");
    }
}
