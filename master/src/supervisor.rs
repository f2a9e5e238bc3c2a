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

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Weak;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nodepass_proto::report::{decode_line, Report, ReportLevel, ReportLine, Stats};
use tokio::sync::{mpsc, oneshot};
use tokio_process_stream::{Item, ProcessChunkStream};

use crate::gojson::log_line;

/// What the API asks of an instance's task. Commands carry what the task needs, so it
/// never reads the registry.
#[derive(Debug)]
pub enum Command {
    /// Start `url` unless running (also from `error`, cancelling a pending backoff). The
    /// task keeps the URL for restarts after a crash.
    Start { url: String, restart: bool },
    /// Stop if running; the sender (if any) is told when the worker is gone.
    Stop(Option<oneshot::Sender<()>>),
    /// Stop, wait 100 ms, start `url`.
    Restart { url: String, restart: bool },
    /// The instance's restart policy changed: whether a failed worker is started again.
    RestartPolicy(bool),
    /// Stop and end the task (instance deleted).
    Delete(oneshot::Sender<()>),
    /// Stop and end the task (master shutting down).
    Shutdown(oneshot::Sender<()>),
}

/// How the supervisor reports what happened to an instance's worker. The master state
/// implements it and is the only writer of instance fields and events; the supervisor
/// only calls these methods, in the order things happen.
pub trait InstanceSink: Send + Sync + 'static {
    /// A worker process was spawned (traffic counting restarts from the current totals).
    fn worker_spawned(&self, id: &str, pid: u32);
    /// The worker reported `ready` with its resolved mode: status `running`.
    fn worker_ready(&self, id: &str, mode: u8);
    /// A `stats` report (cumulative figures of this worker): status `running`.
    fn worker_stats(&self, id: &str, stats: &Stats);
    /// The worker is gone as asked, or ended cleanly: status `stopped`, gauges zeroed.
    fn worker_stopped(&self, id: &str);
    /// The worker failed (crash, failed spawn, silence): status `error`, gauges zeroed.
    /// (Whether it is started again is the supervisor's decision, by the restart policy
    /// its commands carry.)
    fn worker_failed(&self, id: &str);
    /// A log line of the instance, already rendered, for its `log` event.
    fn worker_log(&self, id: &str, line: &str);
    /// The worker program could not be started at all (reported before `worker_failed`).
    fn worker_spawn_failed(&self, id: &str);
    /// A worker process ended, asked to or not, with this exit code (128 + the signal
    /// number when a signal ended it, -1 when unknown); reported before `worker_stopped`
    /// or `worker_failed`.
    fn worker_exited(&self, id: &str, code: i32);
}

/// What every supervisor task needs to know, fixed at master start.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// The program run as `<exe> worker <url>`.
    pub worker_exe: PathBuf,
    /// Colour codes in the master's own output.
    pub colour: bool,
    /// NP_REPORT_INTERVAL: a worker silent for three of these is shown as `error`.
    pub report_interval: Duration,
    /// NP_SHUTDOWN_TIMEOUT: SIGTERM to SIGKILL.
    pub shutdown_timeout: Duration,
}

const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest line kept from a worker; longer output is cut into pieces of this size.
const MAX_LINE: usize = 64 * 1024;

/// Commands an instance's task may have queued. Every sender is an API call holding the
/// registry lock (so it uses `try_send`); a full queue answers that call 503 "busy" before
/// anything changed. Each command is taken at once unless a stop is under way (at most
/// NP_SHUTDOWN_TIMEOUT), so only a client looping on actions can fill it.
pub const COMMAND_QUEUE: usize = 32;

/// Starts the task of one instance; returns its command sender. The task holds `sink`
/// weakly and ends when the sink is gone.
pub fn spawn(
    sink: Weak<dyn InstanceSink>,
    settings: SupervisorSettings,
    id: String,
) -> mpsc::Sender<Command> {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let task = tokio::spawn(run(sink.clone(), settings, id.clone(), rx));
    // A panic in the task (a bug, or tokio-process-stream's unwrap on a failed pipe read)
    // must not go unnoticed: say so and show the instance as failed.
    tokio::spawn(async move {
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!("Supervisor of instance {id} crashed; restart the master [{id}]");
                if let Some(sink) = sink.upgrade() {
                    sink.worker_failed(&id);
                }
            }
        }
    });
    tx
}

/// What the functions of one task share: where to report, the settings, the instance id.
struct Ctx<'a> {
    sink: &'a dyn InstanceSink,
    settings: &'a SupervisorSettings,
    id: &'a str,
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

/// Restart bookkeeping of one task: the URL to run and the crash backoff.
#[derive(Default)]
struct Plan {
    /// The URL of the last Start or Restart (used again after a crash).
    url: Option<String>,
    /// The instance's restart policy, from the last Start, Restart or RestartPolicy.
    restart: bool,
    retry_at: Option<tokio::time::Instant>,
    attempts: u32,
}

async fn run(
    weak: Weak<dyn InstanceSink>,
    settings: SupervisorSettings,
    id: String,
    mut rx: mpsc::Receiver<Command>,
) {
    let interval = settings.report_interval;
    let mut worker: Option<Worker> = None;
    let mut plan = Plan::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(sink) = weak.upgrade() else { return };
                let cx = Ctx { sink: &*sink, settings: &settings, id: &id };
                let Some(cmd) = cmd else {
                    // The registry dropped us: stop quietly.
                    if let Some(w) = worker.take() { stop(&cx, w).await; }
                    return;
                };
                match cmd {
                    Command::Start { url, restart } => {
                        plan.retry_at = None;
                        plan.url = Some(url);
                        plan.restart = restart;
                        if worker.is_none() {
                            plan.attempts = 0;
                            worker = start(&cx, &mut plan);
                        }
                    }
                    Command::Stop(done) => {
                        plan.retry_at = None;
                        match worker.take() {
                            Some(w) => stop(&cx, w).await,
                            None => sink.worker_stopped(&id),
                        }
                        if let Some(done) = done { let _ = done.send(()); }
                    }
                    Command::RestartPolicy(restart) => {
                        plan.restart = restart;
                        if !restart {
                            // A retry already scheduled is called off with the policy.
                            plan.retry_at = None;
                        }
                    }
                    Command::Restart { url, restart } => {
                        plan.retry_at = None;
                        plan.url = Some(url);
                        plan.restart = restart;
                        if let Some(w) = worker.take() { stop(&cx, w).await; }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        plan.attempts = 0;
                        worker = start(&cx, &mut plan);
                    }
                    Command::Delete(done) | Command::Shutdown(done) => {
                        if let Some(w) = worker.take() { stop(&cx, w).await; }
                        let _ = done.send(());
                        return;
                    }
                }
            }
            item = next_item(&mut worker) => {
                let Some(sink) = weak.upgrade() else { return };
                let cx = Ctx { sink: &*sink, settings: &settings, id: &id };
                let Some(w) = worker.as_mut() else { continue };
                match item {
                    Some(Item::Stdout(chunk)) => feed(&cx, w, chunk, false),
                    Some(Item::Stderr(chunk)) => feed(&cx, w, chunk, true),
                    Some(Item::Done(status)) => {
                        if let Some(w) = worker.take() {
                            exited(&cx, w, status.ok(), &mut plan);
                        }
                    }
                    None => {
                        if let Some(w) = worker.take() {
                            exited(&cx, w, None, &mut plan);
                        }
                    }
                }
            }
            _ = sleep_until(plan.retry_at) => {
                plan.retry_at = None;
                let Some(sink) = weak.upgrade() else { return };
                let cx = Ctx { sink: &*sink, settings: &settings, id: &id };
                if worker.is_none() {
                    worker = start(&cx, &mut plan);
                }
            }
            _ = tick.tick() => {
                let Some(sink) = weak.upgrade() else { return };
                let cx = Ctx { sink: &*sink, settings: &settings, id: &id };
                if let Some(w) = worker.as_mut() {
                    check_stale(&cx, w, interval);
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

/// Runs `<exe> worker -` with the URL handed over on stdin ([`hand_over_url`]), its output
/// piped, in its own process group, killed with the master (PR_SET_PDEATHSIG). Returns the
/// output stream and the pid. This is the only place a worker process is created.
///
/// The URL is not an argument because the command line of every process is readable by
/// every local user (`ps`), and the URL carries the tunnel key.
fn spawn_worker(exe: &Path, url: &str, id: &str) -> std::io::Result<(ProcessChunkStream, u32)> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("worker")
        .arg("-")
        .env(INSTANCE_ENV, id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
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
    let mut child = cmd.spawn()?;
    hand_over_url(&mut child, url)?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("worker exited before its pid was read"))?;
    Ok((ProcessChunkStream::from(child), pid))
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

/// Spawns the worker for the planned URL; on failure marks the instance `error` and
/// schedules a retry.
fn start(cx: &Ctx, plan: &mut Plan) -> Option<Worker> {
    let url = plan.url.clone()?;
    match spawn_worker(&cx.settings.worker_exe, &url, cx.id) {
        Ok((stream, pid)) => {
            cx.sink.worker_spawned(cx.id, pid);
            tracing::info!("Instance starting: {} [{}] (pid {})", url, cx.id, pid);
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
            cx.sink.worker_spawn_failed(cx.id);
            let reason = format!(
                "cannot start worker {} ({e}); set NODEPASS_WORKER_EXE to the nodepass binary",
                cx.settings.worker_exe.display()
            );
            failed(cx, &reason, plan);
            None
        }
    }
}

/// Marks an instance `error` after a crash or failed spawn, and schedules the retry.
fn failed(cx: &Ctx, reason: &str, plan: &mut Plan) {
    cx.sink.worker_failed(cx.id);
    let restart = plan.restart;
    let text = if restart {
        let delay = BACKOFF_BASE
            .saturating_mul(1u32 << plan.attempts.min(16))
            .min(BACKOFF_MAX);
        plan.attempts = plan.attempts.saturating_add(1);
        plan.retry_at = Some(tokio::time::Instant::now() + delay);
        format!(
            "Instance failed: {reason}; restarting in {}s (attempt {})",
            delay.as_secs(),
            plan.attempts
        )
    } else {
        format!("Instance failed: {reason}; restart is off, the instance stays in error")
    };
    tracing::warn!("{} [{}]", text, cx.id);
    master_log(cx, ReportLevel::Warn, &text);
}

/// Publishes a line of the master's own about an instance as that instance's log event.
fn master_log(cx: &Ctx, level: ReportLevel, text: &str) {
    let line = log_line(SystemTime::now(), level, text, true);
    cx.sink.worker_log(cx.id, &line);
}

/// Splits a chunk of worker output into lines and handles each.
fn feed(cx: &Ctx, w: &mut Worker, chunk: Bytes, stderr: bool) {
    let mut buf = std::mem::take(if stderr { &mut w.err } else { &mut w.out });
    buf.extend_from_slice(&chunk);
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&buf[start..start + pos]).into_owned();
        handle_line(cx, w, &line, stderr);
        start += pos + 1;
    }
    buf.drain(..start);
    while buf.len() >= MAX_LINE {
        let piece: Vec<u8> = buf.drain(..MAX_LINE).collect();
        handle_line(cx, w, &String::from_utf8_lossy(&piece), stderr);
    }
    *(if stderr { &mut w.err } else { &mut w.out }) = buf;
}

/// Turns one line of worker output into a report to the sink.
fn handle_line(cx: &Ctx, w: &mut Worker, line: &str, stderr: bool) {
    match decode_line(line) {
        ReportLine::Report(Report::Ready(r)) => {
            w.ready = true;
            w.last_report = Instant::now();
            w.stale = false;
            cx.sink.worker_ready(cx.id, r.mode);
        }
        ReportLine::Report(Report::Stats(s)) => {
            w.ready = true;
            w.last_report = Instant::now();
            w.stale = false;
            cx.sink.worker_stats(cx.id, &s);
        }
        ReportLine::Report(Report::Log(l)) => {
            let t = if l.ts_ms > 0 {
                SystemTime::UNIX_EPOCH + Duration::from_millis(l.ts_ms)
            } else {
                SystemTime::now()
            };
            relay_log_line(cx, t, l.level, &l.message);
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
            relay_log_line(cx, SystemTime::now(), level, &text);
        }
    }
}

/// Longest log message relayed; longer ones are cut (an SSE line must stay under the 64 KiB
/// a dashboard's line reader accepts, with the instance beside it).
const MAX_LOG_MESSAGE: usize = 8 * 1024;

/// Prints a worker's log record as `<line> [<id>]` and publishes it as a `log` event.
fn relay_log_line(cx: &Ctx, t: SystemTime, level: ReportLevel, message: &str) {
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
        if cx.settings.colour {
            coloured.clone()
        } else {
            log_line(t, level, message, false)
        },
        cx.id,
    );
    cx.sink.worker_log(cx.id, &coloured);
}

fn check_stale(cx: &Ctx, w: &mut Worker, interval: Duration) {
    let silent = w.last_report.elapsed();
    if w.stale || silent < interval.saturating_mul(3) {
        return;
    }
    w.stale = true;
    // Shown as failed, but not restarted: the worker may still recover and report.
    cx.sink.worker_failed(cx.id);
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
    tracing::warn!("{} [{}]", text, cx.id);
    master_log(cx, ReportLevel::Warn, &text);
}

/// The shell's convention: the exit code, or 128 + the signal that ended the process.
fn exit_code(status: Option<ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            _ => -1,
        },
        None => -1,
    }
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
fn exited(cx: &Ctx, mut w: Worker, status: Option<ExitStatus>, plan: &mut Plan) {
    flush_partial(cx, &mut w);
    cx.sink.worker_exited(cx.id, exit_code(status));
    let ran = w.spawned.elapsed();
    if ran >= BACKOFF_MAX {
        plan.attempts = 0;
    }
    let ok = status.is_some_and(|s| s.success()) && !w.exit.as_ref().is_some_and(|e| e.error);
    let mut reason = describe(status);
    if let Some(e) = w.exit.as_ref().filter(|e| !e.reason.is_empty()) {
        reason = format!("{} ({reason})", e.reason);
    }
    if ok {
        tracing::info!("Instance exited: {} [{}]", reason, cx.id);
        cx.sink.worker_stopped(cx.id);
        return;
    }
    failed(cx, &format!("worker exited: {reason}"), plan);
}

fn flush_partial(cx: &Ctx, w: &mut Worker) {
    for stderr in [false, true] {
        let rest = std::mem::take(if stderr { &mut w.err } else { &mut w.out });
        if !rest.is_empty() {
            handle_line(cx, w, &String::from_utf8_lossy(&rest), stderr);
        }
    }
}

/// SIGTERM, wait up to NP_SHUTDOWN_TIMEOUT while relaying its last lines, then SIGKILL.
async fn stop(cx: &Ctx<'_>, mut w: Worker) {
    let pid = Pid::from_raw(w.pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + cx.settings.shutdown_timeout;
    let mut forced = false;
    let mut status = None;
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
            Some(Item::Stdout(chunk)) => feed(cx, &mut w, chunk, false),
            Some(Item::Stderr(chunk)) => feed(cx, &mut w, chunk, true),
            Some(Item::Done(done)) => {
                status = done.ok();
                break;
            }
            None => break,
        }
    }
    flush_partial(cx, &mut w);
    cx.sink.worker_exited(cx.id, exit_code(status));
    if forced {
        tracing::warn!("Instance force killed [{}]", cx.id);
    } else {
        tracing::info!("Instance stopped [{}]", cx.id);
    }
    cx.sink.worker_stopped(cx.id);
}
