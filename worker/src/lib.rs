//! nodepass-worker: runs one NodePass instance (server, client or single-end forwarder).
//!
//! [`run`] is the whole life of a worker process: start the output thread and logging,
//! read the NP_* tunables, run the role on a tokio runtime until SIGTERM/SIGINT (or a fatal
//! start error), stop within NP_SHUTDOWN_TIMEOUT and write the `exit` report.
//!
//! Module map: `tunnel/` the roles and their control logic, `transport/` the pool
//! connections per `type`, `pool` the idle-entry bookkeeping, `relay` the byte mover,
//! `policy/` slot/rate/read/block/proxy, `targets` dialing, `output` + `logging` what the
//! process prints, `figures` the live counters.

pub mod admission;
pub mod background;
pub mod cert;
pub mod dns;
pub mod figures;
pub mod instance;
pub mod logging;
pub mod output;
pub mod policy;
pub mod pool;
pub mod relay;
pub mod targets;
pub mod transport;
pub mod tunnel;

use std::time::Duration;

use anyhow::Context as _;
use nodepass_proto::report::{Exit, Report};
use nodepass_proto::tunables::Tunables;
use nodepass_proto::url::{Role, TunnelUrl};
use tokio_util::sync::CancellationToken;

use crate::instance::Instance;

/// Runs one tunnel instance until SIGTERM/SIGINT. `report_mode` = `nodepass worker`:
/// JSON report lines on stdout instead of human logs.
pub fn run(url: TunnelUrl, report_mode: bool) -> anyhow::Result<()> {
    output::start(report_mode);
    logging::init(url.params.log());
    let (tunables, warnings) = Tunables::from_env();
    for w in warnings {
        tracing::warn!("{w}");
    }
    raise_fd_limit();
    let result = runtime_builder()
        .enable_all()
        .thread_name("np-worker")
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            let r = rt.block_on(run_async(url, tunables));
            // Relays still running after the grace period are cut here.
            rt.shutdown_timeout(Duration::from_millis(100));
            r
        });
    let exit = match &result {
        Ok(()) => Exit {
            reason: "shutdown".into(),
            error: false,
        },
        Err(e) => Exit {
            reason: format!("{e:#}"),
            error: true,
        },
    };
    output::report(&Report::Exit(exit));
    output::flush(Duration::from_secs(2));
    result
}

/// The tokio runtime: `NP_WORKER_THREADS` (our extension) picks the number of threads; 1
/// runs everything on the main thread.
fn runtime_builder() -> tokio::runtime::Builder {
    let threads = std::env::var("NP_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    }
}

async fn run_async(url: TunnelUrl, tunables: Tunables) -> anyhow::Result<()> {
    let name = match url.role {
        Role::Server => "Server",
        Role::Client => "Client",
    };
    let inst = Instance::new(url, tunables);
    tracing::info!("{name} started: {}", inst.url.to_config());
    let shutdown = CancellationToken::new();
    let mut role = tokio::spawn(tunnel::run_role(inst.clone(), shutdown.clone()));
    let heartbeat = tokio::spawn(inst.clone().heartbeat());
    let stopped_by_signal = tokio::select! {
        r = &mut role => {
            // The role only returns by itself on a fatal error.
            return match r {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("the tunnel task failed: {e}")),
            };
        }
        s = stop_signal() => s?,
    };
    tracing::debug!("received {stopped_by_signal}, stopping");
    shutdown.cancel();
    heartbeat.abort();
    match tokio::time::timeout(inst.tunables.shutdown_timeout, role).await {
        Ok(_) => tracing::info!("{name} shutdown complete"),
        Err(_) => tracing::error!("{name} shutdown error: timed out"),
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns which one.
async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (what the Go runtime does at start), for
/// the worker and the master alike: connections, pool entries and spawned workers all need
/// descriptors, and the usual soft default of 1024 runs out long before the hard limit.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!("cannot raise the open-file limit to {hard}: {e}");
            }
        }
    }
}
