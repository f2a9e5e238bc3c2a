//! nodepass-master: the control plane. It keeps instances in a sled store, runs each one as
//! its own worker process (`nodepass worker -`, URL on stdin) under a supervisor task, and serves the
//! REST + SSE API of the reference master (NodePass v1.14.0) under `{prefix}/v1`.
//!
//! Start-up order: open the store (or restore the backup) -> end stray workers of a previous
//! run -> load instances -> serve the API -> start `restart: true` instances. SIGTERM or
//! SIGINT: `shutdown` event to SSE clients -> stop every worker -> save -> exit.
//!
//! Environment: `NP_STATE_DIR` (state directory, default `<exe dir>/nodepass-state`),
//! `NODEPASS_WORKER_EXE` (the program run for instances, default this executable), and the
//! reference's NP_* tunables (REFERENCE.md 8), which workers inherit.

pub mod api;
pub mod counters;
pub mod events;
pub mod gojson;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod serve;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod sysinfo;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nodepass_proto::tunables::Tunables;
use nodepass_proto::url::{MasterUrl, TlsMode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::state::{Master, Settings};
use crate::store::{Snapshot, Store};
use crate::supervisor::Command;

/// Everything a master needs to start.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    pub url: MasterUrl,
    /// State directory (sled database and backup).
    pub state_dir: PathBuf,
    /// Program run as `<worker_exe> worker -` (URL on stdin) per instance.
    pub worker_exe: PathBuf,
    pub tunables: Tunables,
    /// Colour codes in the master's output.
    pub colour: bool,
}

impl MasterOptions {
    /// Options from the environment: NP_STATE_DIR, NODEPASS_WORKER_EXE and the NP_* tunables.
    pub fn from_env(url: MasterUrl) -> Result<(Self, Vec<String>)> {
        let exe = std::env::current_exe().context("Cannot find the path of this executable")?;
        let worker_exe = std::env::var_os("NODEPASS_WORKER_EXE")
            .map(PathBuf::from)
            .unwrap_or_else(|| exe.clone());
        let state_dir = state_dir_from_env(&exe);
        let (tunables, warnings) = Tunables::from_env();
        Ok((
            MasterOptions {
                url,
                state_dir,
                worker_exe,
                tunables,
                colour: logging::colour_wanted(),
            },
            warnings,
        ))
    }
}

/// The state directory a master uses: `NP_STATE_DIR`, else `nodepass-state` beside `exe`.
pub fn state_dir_from_env(exe: &Path) -> PathBuf {
    match std::env::var_os("NP_STATE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => exe
            .parent()
            .unwrap_or(Path::new("."))
            .join("nodepass-state"),
    }
}

/// Longest wait for the servers started at boot before the clients follow.
const SERVERS_FIRST_WAIT: Duration = Duration::from_secs(3);

/// Starts the `restart: true` instances at boot: servers first, then (once those servers
/// run, or after [`SERVERS_FIRST_WAIT`]) clients. A client in the default `mode=0` takes the
/// tunnel address as its own single-end listener when nothing listens there yet, so a client
/// started before its server on the same host would take the server's port (the Go master
/// starts them in random map order and loses that race at times).
async fn autostart_in_order(m: Arc<Master>, ids: Vec<String>) {
    use crate::model::{InstanceKind, InstanceStatus, Target};
    let kind = |id: &String| m.get(Target::Instance(id)).map(|i| i.kind).ok();
    let (servers, clients): (Vec<String>, Vec<String>) = ids
        .into_iter()
        .partition(|id| kind(id) == Some(InstanceKind::Server));
    start_paced(&m, &servers).await;
    if !servers.is_empty() && !clients.is_empty() {
        let deadline = tokio::time::Instant::now() + SERVERS_FIRST_WAIT;
        while tokio::time::Instant::now() < deadline
            && servers.iter().any(|id| {
                m.get(Target::Instance(id))
                    .is_ok_and(|i| i.status == InstanceStatus::Stopped)
            })
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start_paced(&m, &clients).await;
}

/// Workers started at boot that may be starting at once (spawned, not yet `running` or
/// `error`). Paced by the workers themselves rather than by a fixed gap: a fixed 10 ms per
/// instance made 1000 instances take 10 s to start however fast the machine was.
const STARTING_AT_ONCE: usize = 32;

/// Starts `ids` in order, keeping at most [`STARTING_AT_ONCE`] of them starting at a time
/// (one that takes longer than 10 s to start stops holding its place).
async fn start_paced(m: &Master, ids: &[String]) {
    use crate::model::{InstanceStatus, Target};
    let starting = |id: &String| {
        m.get(Target::Instance(id))
            .is_ok_and(|i| i.status == InstanceStatus::Stopped)
    };
    let mut in_flight: std::collections::VecDeque<(&String, tokio::time::Instant)> =
        std::collections::VecDeque::new();
    for id in ids {
        while in_flight.len() >= STARTING_AT_ONCE {
            in_flight
                .retain(|(id, since)| starting(id) && since.elapsed() < Duration::from_secs(10));
            if in_flight.len() >= STARTING_AT_ONCE {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        m.start(id);
        in_flight.push_back((id, tokio::time::Instant::now()));
    }
}

/// A master serving in the current runtime.
pub struct RunningMaster {
    /// Where the API listens.
    pub addr: SocketAddr,
    pub master: Arc<Master>,
    stop_server: Option<tokio::sync::watch::Sender<bool>>,
    server: JoinHandle<()>,
    periodic: JoinHandle<()>,
}

impl RunningMaster {
    pub fn api_key(&self) -> String {
        self.master.api_key()
    }

    /// The API base URL, e.g. `http://127.0.0.1:9090/api/v1`.
    pub fn base_url(&self) -> String {
        let scheme = if self.master.settings.url.effective_tls() == TlsMode::Off {
            "http"
        } else {
            "https"
        };
        format!(
            "{scheme}://{}{}",
            self.addr,
            self.master.settings.url.api_base()
        )
    }

    /// Stops like SIGTERM does: `shutdown` event, workers stopped, state saved.
    pub async fn shutdown(mut self) -> Result<()> {
        let m = self.master.clone();
        m.events.close_all();
        let stops = m.controls().into_iter().map(|(_, ctl)| {
            let (tx, rx) = oneshot::channel();
            async move {
                // No lock is held here: wait for room in a full queue.
                if ctl.send(Command::Shutdown(tx)).await.is_ok() {
                    let _ = rx.await;
                }
            }
        });
        let bound = m.settings.tunables.shutdown_timeout + Duration::from_secs(3);
        if tokio::time::timeout(bound, futures::future::join_all(stops))
            .await
            .is_err()
        {
            tracing::warn!("Some workers did not stop in time");
        }
        // Wait until the periodic task is really gone: an abort only takes effect at its next
        // poll, and a save it was in the middle of may still hold a database handle (and so
        // sled's file lock), which the final save's reopen would then wait for in vain.
        self.periodic.abort();
        let _ = (&mut self.periodic).await;
        let saved = m.save_dirty().await;
        match &saved {
            Ok(()) => tracing::info!("Instances saved: {}", m.store.root().display()),
            Err(e) => tracing::error!("Master shutdown error: {e:#}"),
        }
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(true);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.server).await;
        self.server.abort();
        saved
    }
}

/// Ends workers a previous master left behind (it was killed before it could stop them and
/// PR_SET_PDEATHSIG did not fire, e.g. in a container without it): a pid still running
/// `<exe> worker ...` for the stored instance is killed. The instance is named by the
/// worker's environment (supervisor::INSTANCE_ENV, readable only by our own user), or, for
/// a worker started by an older master, by the URL in its command line.
fn end_strays(snapshot: &Snapshot) {
    for rec in &snapshot.instances {
        let Some(pid) = rec.pid else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.len() < 3 || args[1] != b"worker" {
            continue;
        }
        let tag = format!("{}={}", supervisor::INSTANCE_ENV, rec.instance.id);
        let ours = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|v| v == tag.as_bytes()))
            .unwrap_or(false)
            || args[2] == rec.instance.url.as_bytes();
        if ours {
            tracing::warn!(
                "Ending stray worker pid {pid} of a previous run [{}]",
                rec.instance.id
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Opens the store, starts the API and the instances; returns once the API listens.
pub async fn start(opts: MasterOptions) -> Result<RunningMaster> {
    let dir = opts.state_dir.clone();
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .context("The state loader crashed")??;
    if let Some(from) = &opened.restored_from {
        tracing::warn!(
            "State restored from the backup {} ({} instances)",
            from.display(),
            opened.snapshot.instances.len()
        );
    }
    end_strays(&opened.snapshot);
    let fresh = opened.snapshot.master.is_none();
    let count = opened.snapshot.instances.len();
    let settings = Settings {
        inherited: opts.url.inherited(),
        url: opts.url.clone(),
        tunables: opts.tunables,
        worker_exe: opts.worker_exe.clone(),
        colour: opts.colour,
    };
    let (master, autostart) = Master::new(settings, opened.store, opened.snapshot);
    master
        .save_dirty()
        .await
        .context("Cannot save the new API key to the state directory")?;
    let key = master.api_key();
    let key_line = if fresh {
        format!("API Key created: {key}")
    } else {
        tracing::info!(
            "Loaded {count} instances from {}",
            master.store.root().display()
        );
        format!("API Key loaded: {key}")
    };
    // The key is what an operator needs from the log: show it even when `log` hides info.
    if tracing::enabled!(tracing::Level::INFO) {
        tracing::info!("{key_line}");
    } else {
        tracing::warn!("{key_line}");
    }
    // Never replaces a backup that holds more than this start found (see the store).
    if let Err(e) = master.store.write_backup_at_start(&master.snapshot()) {
        tracing::warn!("{e:#}");
    }

    // Listen.
    let listen = &opts.url.listen;
    let bind = if listen.host.is_empty() {
        format!("0.0.0.0:{}", listen.port)
    } else {
        listen.to_string()
    };
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("Cannot listen on {bind} for the API"))?;
    let addr = listener.local_addr()?;
    let tls = tls::server_config(&opts.url)?;
    match opts.url.effective_tls() {
        TlsMode::Off => tracing::warn!("TLS code-0: unencrypted"),
        TlsMode::SelfSigned => tracing::info!("TLS code-1: self-signed certificate"),
        TlsMode::Files => tracing::info!("TLS code-2: certificate files"),
    }
    let router = api::router(master.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve::serve(
        listener,
        tls,
        router,
        serve::ApiLimits::standard(),
        stop_rx,
    ));
    tracing::info!("Master started: {}{}", addr, opts.url.api_base());

    // Start the instances that want to run; spaced a little so a big restore does not fork
    // hundreds of workers in the same millisecond.
    let m = master.clone();
    tokio::spawn(autostart_in_order(m, autostart));

    let periodic = tokio::spawn(periodic_tasks(master.clone()));
    Ok(RunningMaster {
        addr,
        master,
        stop_server: Some(stop_tx),
        server,
        periodic,
    })
}

/// Saves counters every NP_REPORT_INTERVAL and writes the backup every NP_RELOAD_INTERVAL.
async fn periodic_tasks(m: Arc<Master>) {
    let mut save = tokio::time::interval(m.settings.tunables.report_interval);
    let mut backup = tokio::time::interval(m.settings.tunables.reload_interval);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    backup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    backup.tick().await; // the first tick is immediate; a backup was just written
    let mut failing = false;
    loop {
        tokio::select! {
            _ = save.tick() => {
                match m.save_dirty().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("State saved again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!("{e:#}; changes are kept in memory and retried");
                    }
                    Err(_) => {}
                }
            }
            _ = backup.tick() => {
                let snap = m.snapshot();
                let store = m.store.clone();
                match tokio::task::spawn_blocking(move || store.write_backup(&snap)).await {
                    Ok(Ok(())) => tracing::debug!("Backup written: {}", m.store.backup_path().display()),
                    Ok(Err(e)) => tracing::error!("{e:#}"),
                    Err(e) => tracing::error!("Backup task failed: {e}"),
                }
            }
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("Cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("Cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Runs the master until SIGTERM/SIGINT.
pub fn run(url: MasterUrl) -> Result<()> {
    let (opts, warnings) = MasterOptions::from_env(url)?;
    logging::init(opts.url.effective_log(), opts.colour);
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Before the API's connection cap is derived from it (serve::ApiLimits).
    nodepass_worker::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nodepass-master")
        .build()
        .context("Cannot start the async runtime")?;
    rt.block_on(async move {
        let running = start(opts).await?;
        wait_for_signal().await?;
        running.shutdown().await?;
        tracing::info!("Master shutdown complete");
        Ok(())
    })
}
