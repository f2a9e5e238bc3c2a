//! Where everything a worker prints goes: one writer thread owns stdout and writes whole
//! lines, one `write` per line, so report lines are never interleaved, and the async tasks
//! (relays, the control channel) never wait on a slow reader of our stdout.
//!
//! Log lines are offered without blocking (a full queue drops the line and counts it);
//! the few lines the master depends on (`ready`, `stats`, `exit`) wait for room instead.
//! [`flush`] waits until everything queued so far is written, for the `exit` line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use nodepass_proto::report::{Report, Stats};

/// Lines queued for the writer thread before log lines start being dropped.
const QUEUE_LINES: usize = 8192;

enum Msg {
    Line(String),
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<SyncSender<Msg>> = OnceLock::new();
static REPORT_MODE: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Starts the writer thread (once). `report_mode`: JSON report lines instead of human text.
pub fn start(report_mode: bool) {
    REPORT_MODE.store(report_mode, Ordering::Relaxed);
    QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        // If the thread cannot start we fall back to writing inline (see `send`).
        let spawned = std::thread::Builder::new()
            .name("np-output".into())
            .spawn(move || writer(rx));
        if spawned.is_err() {
            eprintln!("nodepass: could not start the output thread; writing inline");
        }
        tx
    });
}

/// Whether this process writes JSON report lines (`nodepass worker`).
pub fn report_mode() -> bool {
    REPORT_MODE.load(Ordering::Relaxed)
}

fn writer(rx: Receiver<Msg>) {
    let stdout = std::io::stdout();
    for msg in rx {
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
        Some(q) => match q.try_send(Msg::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
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
            if let Err(e) = q.send(Msg::Line(line)) {
                if let Msg::Line(l) = e.0 {
                    println!("{l}");
                }
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
        if q.send(Msg::Flush(tx)).is_ok() {
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
