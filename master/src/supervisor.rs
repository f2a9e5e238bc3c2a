//! One task per instance owns its worker process (`<exe> worker -`, URL on stdin), spawned with
//! tokio::process and read with tokio-process-stream. The task turns the worker's report
//! lines (`ready`, `stats`, `log`, `exit`; nodepass_proto::report) into instance fields and
//! SSE events; it never interprets human text (a line that is not a report is relayed as a
//! log line, nothing more).
//!
//! Lifecycle: `running` after `ready` (or the first `stats`); `stopped` when asked;
//! `error` when the worker exits on its own with a failure, cannot be spawned, or stops
//! reporting for 3 x NP_REPORT_INTERVAL. An instance with `restart: true` is started again
//! after a crash with exponential backoff (1 s, 2 s, 4 s ... capped at 60 s; the count
//! resets after a run of 60 s), and the reason shows as a log event of the instance.
//! Stop = SIGTERM, then SIGKILL after NP_SHUTDOWN_TIMEOUT. Workers get PR_SET_PDEATHSIG
//! (SIGKILL) so they never outlive a killed master, and their own process group so a
//! terminal's Ctrl-C reaches only the master, which then stops them in order.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nodepass_proto::report::{decode_line, Report, ReportLevel, ReportLine};
use tokio::sync::{mpsc, oneshot};
use tokio_process_stream::{Item, ProcessChunkStream};

use crate::gojson::log_line;
use crate::model::Status;
use crate::state::Master;

/// What the API asks of an instance's task.
#[derive(Debug)]
pub enum Command {
    /// Start unless running (also from `error`, cancelling a pending backoff).
    Start,
    /// Stop if running; the sender (if any) is told when the worker is gone.
    Stop(Option<oneshot::Sender<()>>),
    /// Stop, wait 100 ms, start.
    Restart,
    /// Stop and end the task (instance deleted).
    Delete(oneshot::Sender<()>),
    /// Stop and end the task (master shutting down).
    Shutdown(oneshot::Sender<()>),
}

const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest line kept from a worker; longer output is cut into pieces of this size.
const MAX_LINE: usize = 64 * 1024;

/// Starts the task of one instance; returns its command sender.
pub fn spawn(master: Weak<Master>, id: String) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(master.clone(), id.clone(), rx));
    // A panic in the task (a bug, or tokio-process-stream's unwrap on a failed pipe read)
    // must not go unnoticed: say so and show the instance as failed.
    tokio::spawn(async move {
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!("Supervisor of instance {id} crashed; restart the master [{id}]");
                if let Some(m) = master.upgrade() {
                    let mut reg = m.lock();
                    if let Some(e) = reg.instances.get_mut(&id) {
                        e.inst.status = Status::Error.as_str().to_string();
                        m.events.publish("update", Some(&e.inst), "");
                    }
                }
            }
        }
    });
    tx
}

/// A running worker.
struct Worker {
    stream: ProcessChunkStream,
    pid: u32,
    spawned: Instant,
    last_report: Instant,
    ready: bool,
    stale: bool,
    out: Vec<u8>,
    err: Vec<u8>,
    exit: Option<nodepass_proto::report::Exit>,
}

async fn run(weak: Weak<Master>, id: String, mut rx: mpsc::UnboundedReceiver<Command>) {
    let Some(interval) = weak.upgrade().map(|m| m.settings.tunables.report_interval) else {
        return;
    };
    let mut worker: Option<Worker> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut attempts: u32 = 0;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(m) = weak.upgrade() else { return };
                let Some(cmd) = cmd else {
                    // The registry dropped us: stop quietly.
                    if let Some(w) = worker.take() { stop(&m, &id, w).await; }
                    return;
                };
                match cmd {
                    Command::Start => {
                        retry_at = None;
                        if worker.is_none() {
                            attempts = 0;
                            worker = start(&m, &id, &mut attempts, &mut retry_at);
                        }
                    }
                    Command::Stop(done) => {
                        retry_at = None;
                        match worker.take() {
                            Some(w) => stop(&m, &id, w).await,
                            None => set_stopped(&m, &id),
                        }
                        if let Some(done) = done { let _ = done.send(()); }
                    }
                    Command::Restart => {
                        retry_at = None;
                        if let Some(w) = worker.take() { stop(&m, &id, w).await; }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        attempts = 0;
                        worker = start(&m, &id, &mut attempts, &mut retry_at);
                    }
                    Command::Delete(done) | Command::Shutdown(done) => {
                        if let Some(w) = worker.take() { stop(&m, &id, w).await; }
                        let _ = done.send(());
                        return;
                    }
                }
            }
            item = next_item(&mut worker) => {
                let Some(m) = weak.upgrade() else { return };
                let Some(w) = worker.as_mut() else { continue };
                match item {
                    Some(Item::Stdout(chunk)) => feed(&m, &id, w, chunk, false),
                    Some(Item::Stderr(chunk)) => feed(&m, &id, w, chunk, true),
                    Some(Item::Done(status)) => {
                        if let Some(w) = worker.take() {
                            exited(&m, &id, w, status.ok(), &mut attempts, &mut retry_at);
                        }
                    }
                    None => {
                        if let Some(w) = worker.take() {
                            exited(&m, &id, w, None, &mut attempts, &mut retry_at);
                        }
                    }
                }
            }
            _ = sleep_until(retry_at) => {
                retry_at = None;
                let Some(m) = weak.upgrade() else { return };
                if worker.is_none() {
                    worker = start(&m, &id, &mut attempts, &mut retry_at);
                }
            }
            _ = tick.tick() => {
                let Some(m) = weak.upgrade() else { return };
                if let Some(w) = worker.as_mut() {
                    check_stale(&m, &id, w, interval);
                }
            }
        }
    }
}

async fn next_item(worker: &mut Option<Worker>) -> Option<Item<Bytes>> {
    match worker {
        Some(w) => w.stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Environment variable naming the instance a worker runs for: lets a restarted master
/// recognise a stray worker of its previous run (lib.rs `end_strays`) now that the URL is
/// not in the command line.
pub const INSTANCE_ENV: &str = "NODEPASS_INSTANCE";

/// The worker's command line: `<exe> worker -`, with the URL handed over on stdin by
/// [`hand_over_url`]. The URL is not an argument because the command line of every process
/// is readable by every local user (`ps`), and the URL carries the tunnel key.
fn worker_command(exe: &std::path::Path, id: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("worker")
        .arg("-")
        .env(INSTANCE_ENV, id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    cmd
}

/// Writes the URL as one line to the worker's stdin and closes it. The write runs as a
/// task: a pipe holds 64 KiB by default but may hold as little as 4 KiB when the user's
/// pipe quota is used up, and the worker reads only after it has started. A worker that
/// dies before reading fails on its own and is reported like any other crash.
fn hand_over_url(child: &mut tokio::process::Child, url: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the worker's stdin pipe is missing"))?;
    let line = format!("{url}\n");
    tokio::spawn(async move {
        let _ = stdin.write_all(line.as_bytes()).await;
        // Dropping stdin closes the pipe: the worker sees the end of its input.
    });
    Ok(())
}

/// Spawns the worker; on failure marks the instance `error` and schedules a retry.
fn start(
    m: &Arc<Master>,
    id: &str,
    attempts: &mut u32,
    retry_at: &mut Option<tokio::time::Instant>,
) -> Option<Worker> {
    let url = {
        let reg = m.lock();
        reg.instances.get(id)?.inst.url.clone()
    };
    let mut cmd = worker_command(&m.settings.worker_exe, id);
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes two syscalls (prctl,
    // getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            // The master may have died between fork and prctl: then do not start at all.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn().and_then(|mut child| {
        hand_over_url(&mut child, &url)?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("worker exited before its pid was read"))?;
        Ok((ProcessChunkStream::from(child), pid))
    });
    match spawned {
        Ok((stream, pid)) => {
            {
                let mut reg = m.lock();
                if let Some(e) = reg.instances.get_mut(id) {
                    e.pid = Some(pid);
                    e.counters.base = [e.inst.tcprx, e.inst.tcptx, e.inst.udprx, e.inst.udptx];
                    e.counters.offset = [0; 4];
                    e.counters.last = [0; 4];
                    e.dirty = true;
                }
            }
            tracing::info!("Instance starting: {} [{}] (pid {})", url, id, pid);
            let now = Instant::now();
            Some(Worker {
                stream,
                pid,
                spawned: now,
                last_report: now,
                ready: false,
                stale: false,
                out: Vec::new(),
                err: Vec::new(),
                exit: None,
            })
        }
        Err(e) => {
            let reason = format!(
                "cannot start worker {} ({e}); set NODEPASS_WORKER_EXE to the nodepass binary",
                m.settings.worker_exe.display()
            );
            failed(m, id, &reason, attempts, retry_at);
            None
        }
    }
}

/// Marks an instance `error` after a crash or failed spawn, and schedules the retry.
fn failed(
    m: &Arc<Master>,
    id: &str,
    reason: &str,
    attempts: &mut u32,
    retry_at: &mut Option<tokio::time::Instant>,
) {
    let restart = {
        let mut reg = m.lock();
        let Some(e) = reg.instances.get_mut(id) else {
            return;
        };
        e.inst.status = Status::Error.as_str().to_string();
        zero_gauges(&mut e.inst);
        e.dirty = true;
        m.events.publish("update", Some(&e.inst), "");
        e.inst.restart
    };
    let text = if restart {
        let delay = BACKOFF_BASE
            .saturating_mul(1u32 << (*attempts).min(16))
            .min(BACKOFF_MAX);
        *attempts = attempts.saturating_add(1);
        *retry_at = Some(tokio::time::Instant::now() + delay);
        format!(
            "Instance failed: {reason}; restarting in {}s (attempt {})",
            delay.as_secs(),
            attempts
        )
    } else {
        format!("Instance failed: {reason}; restart is off, the instance stays in error")
    };
    tracing::warn!("{} [{}]", text, id);
    master_log(m, id, ReportLevel::Warn, &text);
}

/// Publishes a line of the master's own about an instance as that instance's log event.
fn master_log(m: &Master, id: &str, level: ReportLevel, text: &str) {
    let line = log_line(SystemTime::now(), level, text, true);
    let reg = m.lock();
    if let Some(e) = reg.instances.get(id) {
        m.events.publish("log", Some(&e.inst), &line);
    }
}

fn zero_gauges(inst: &mut crate::model::Instance) {
    inst.ping = 0;
    inst.pool = 0;
    inst.tcps = 0;
    inst.udps = 0;
}

/// Splits a chunk of worker output into lines and handles each.
fn feed(m: &Master, id: &str, w: &mut Worker, chunk: Bytes, stderr: bool) {
    let mut buf = std::mem::take(if stderr { &mut w.err } else { &mut w.out });
    buf.extend_from_slice(&chunk);
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&buf[start..start + pos]).into_owned();
        handle_line(m, id, w, &line, stderr);
        start += pos + 1;
    }
    buf.drain(..start);
    while buf.len() >= MAX_LINE {
        let piece: Vec<u8> = buf.drain(..MAX_LINE).collect();
        handle_line(m, id, w, &String::from_utf8_lossy(&piece), stderr);
    }
    *(if stderr { &mut w.err } else { &mut w.out }) = buf;
}

fn handle_line(m: &Master, id: &str, w: &mut Worker, line: &str, stderr: bool) {
    match decode_line(line) {
        ReportLine::Report(Report::Ready(r)) => {
            w.ready = true;
            w.last_report = Instant::now();
            w.stale = false;
            let mut reg = m.lock();
            if let Some(e) = reg.instances.get_mut(id) {
                e.inst.status = Status::Running.as_str().to_string();
                e.inst.mode = i32::from(r.mode);
                m.events.publish("update", Some(&e.inst), "");
            }
        }
        ReportLine::Report(Report::Stats(s)) => {
            w.ready = true;
            w.last_report = Instant::now();
            w.stale = false;
            let mut reg = m.lock();
            if let Some(e) = reg.instances.get_mut(id) {
                let reported = [s.tcprx, s.tcptx, s.udprx, s.udptx];
                let c = &mut e.counters;
                let mut totals = [0u64; 4];
                for i in 0..4 {
                    if reported[i] < c.offset[i] {
                        // Cannot happen within one worker's life; keep counting forward.
                        c.offset[i] = 0;
                    }
                    c.last[i] = reported[i];
                    totals[i] = c.base[i].saturating_add(reported[i] - c.offset[i]);
                }
                let inst = &mut e.inst;
                inst.mode = i32::from(s.mode);
                inst.ping = clamp_i32(s.ping);
                inst.pool = clamp_i32(s.pool);
                inst.tcps = clamp_i32(s.tcps);
                inst.udps = clamp_i32(s.udps);
                [inst.tcprx, inst.tcptx, inst.udprx, inst.udptx] = totals;
                inst.status = Status::Running.as_str().to_string();
                e.dirty = true;
                m.events.publish("update", Some(&e.inst), "");
            }
        }
        ReportLine::Report(Report::Log(l)) => {
            let t = if l.ts_ms > 0 {
                SystemTime::UNIX_EPOCH + Duration::from_millis(l.ts_ms)
            } else {
                SystemTime::now()
            };
            relay(m, id, t, l.level, &l.message);
        }
        ReportLine::Report(Report::Exit(e)) => {
            w.exit = Some(e);
        }
        ReportLine::Unknown(_) => {}
        ReportLine::Plain(text) => {
            if text.trim().is_empty() {
                return;
            }
            let level = if stderr {
                ReportLevel::Warn
            } else {
                ReportLevel::Info
            };
            relay(m, id, SystemTime::now(), level, &text);
        }
    }
}

fn clamp_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Longest log message relayed; longer ones are cut (an SSE line must stay under the 64 KiB
/// a dashboard's line reader accepts, with the instance beside it).
const MAX_LOG_MESSAGE: usize = 8 * 1024;

/// Prints a worker's log record as `<line> [<id>]` and publishes it as a `log` event.
fn relay(m: &Master, id: &str, t: SystemTime, level: ReportLevel, message: &str) {
    let cut;
    let message = if message.len() > MAX_LOG_MESSAGE {
        let mut end = MAX_LOG_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        cut = format!("{}... ({} bytes cut)", &message[..end], message.len() - end);
        cut.as_str()
    } else {
        message
    };
    let coloured = log_line(t, level, message, true);
    crate::logging::print_instance_line(
        if m.settings.colour {
            coloured.clone()
        } else {
            log_line(t, level, message, false)
        },
        id,
    );
    let reg = m.lock();
    if let Some(e) = reg.instances.get(id) {
        m.events.publish("log", Some(&e.inst), &coloured);
    }
}

fn check_stale(m: &Master, id: &str, w: &mut Worker, interval: Duration) {
    let silent = w.last_report.elapsed();
    if w.stale || silent < interval.saturating_mul(3) {
        return;
    }
    w.stale = true;
    {
        let mut reg = m.lock();
        if let Some(e) = reg.instances.get_mut(id) {
            e.inst.status = Status::Error.as_str().to_string();
            zero_gauges(&mut e.inst);
            m.events.publish("update", Some(&e.inst), "");
        }
    }
    let what = if w.ready {
        "stopped reporting"
    } else {
        "has not become ready"
    };
    let text = format!(
        "Worker (pid {}) {} for {}s; status error until it reports again",
        w.pid,
        what,
        silent.as_secs()
    );
    tracing::warn!("{} [{}]", text, id);
    master_log(m, id, ReportLevel::Warn, &text);
}

fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| sig.to_string());
                format!("killed by signal {name}")
            }
            _ => "exited".to_string(),
        },
        None => "exit status unknown".to_string(),
    }
}

/// A worker ended without being asked to.
fn exited(
    m: &Arc<Master>,
    id: &str,
    mut w: Worker,
    status: Option<ExitStatus>,
    attempts: &mut u32,
    retry_at: &mut Option<tokio::time::Instant>,
) {
    flush_partial(m, id, &mut w);
    let ran = w.spawned.elapsed();
    if ran >= BACKOFF_MAX {
        *attempts = 0;
    }
    let ok = status.is_some_and(|s| s.success()) && !w.exit.as_ref().is_some_and(|e| e.error);
    let mut reason = describe(status);
    if let Some(e) = w.exit.as_ref().filter(|e| !e.reason.is_empty()) {
        reason = format!("{} ({reason})", e.reason);
    }
    if ok {
        tracing::info!("Instance exited: {} [{}]", reason, id);
        set_stopped(m, id);
        return;
    }
    failed(
        m,
        id,
        &format!("worker exited: {reason}"),
        attempts,
        retry_at,
    );
}

fn flush_partial(m: &Master, id: &str, w: &mut Worker) {
    for stderr in [false, true] {
        let rest = std::mem::take(if stderr { &mut w.err } else { &mut w.out });
        if !rest.is_empty() {
            handle_line(m, id, w, &String::from_utf8_lossy(&rest), stderr);
        }
    }
}

fn set_stopped(m: &Master, id: &str) {
    let mut reg = m.lock();
    if let Some(e) = reg.instances.get_mut(id) {
        if e.inst.status != Status::Stopped.as_str() {
            e.inst.status = Status::Stopped.as_str().to_string();
            zero_gauges(&mut e.inst);
            e.dirty = true;
            m.events.publish("update", Some(&e.inst), "");
        }
    }
}

/// SIGTERM, wait up to NP_SHUTDOWN_TIMEOUT while relaying its last lines, then SIGKILL.
async fn stop(m: &Arc<Master>, id: &str, mut w: Worker) {
    let pid = Pid::from_raw(w.pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let timeout = m.settings.tunables.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut forced = false;
    loop {
        let item = if forced {
            // After SIGKILL the pipes close at once; bound the wait anyway.
            tokio::time::timeout(Duration::from_secs(2), w.stream.next())
                .await
                .unwrap_or(None)
        } else {
            match tokio::time::timeout_at(deadline, w.stream.next()).await {
                Ok(item) => item,
                Err(_) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    forced = true;
                    continue;
                }
            }
        };
        match item {
            Some(Item::Stdout(chunk)) => feed(m, id, &mut w, chunk, false),
            Some(Item::Stderr(chunk)) => feed(m, id, &mut w, chunk, true),
            Some(Item::Done(_)) | None => break,
        }
    }
    flush_partial(m, id, &mut w);
    if forced {
        tracing::warn!("Instance force killed [{}]", id);
    } else {
        tracing::info!("Instance stopped [{}]", id);
    }
    set_stopped(m, id);
}
