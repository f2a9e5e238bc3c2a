//! The server role (REFERENCE.md 3): listen on the tunnel port, decide the mode (1 reverse
//! when the target address can be bound, 2 forward otherwise, or as `mode` says), wait for
//! one client's HTTP handshake, then accept that client's pool connections and run the
//! session over the first one (`00000000`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use nodepass_proto::url::{RunMode, TlsMode};
use nodepass_proto::wire::{Flow, TunnelConfig};
use tokio_util::sync::CancellationToken;

use super::control::{self, UserListeners, Verifier};
use super::{bind_tcp, handshake, listen_addr, take_control, Fatal};
use crate::instance::Instance;
use crate::pool::Pool;
use crate::transport::tls::ServerTls;
use crate::transport::{PoolServer, SessionEdge};

/// Binds the user-facing listeners on the first target (TCP unless notcp, UDP unless
/// noudp). Used by the incoming side: the server in mode 1, the client in flow `+`.
pub async fn bind_users(inst: &Instance) -> anyhow::Result<UserListeners> {
    let Some(first) = inst.targets.first() else {
        anyhow::bail!("initTargetListener: no target address");
    };
    let addr = listen_addr(first).await?;
    let tcp = if inst.url.params.notcp() {
        None
    } else {
        Some(bind_tcp(addr).with_context(|| format!("initTargetListener: listen tcp {addr}"))?)
    };
    let udp = if inst.url.params.noudp() {
        None
    } else {
        Some(Arc::new(
            tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("initTargetListener: listen udp {addr}"))?,
        ))
    };
    Ok(UserListeners { tcp, udp })
}

fn listen_list(tunnel: SocketAddr, users: Option<&UserListeners>) -> Vec<String> {
    let mut v = vec![format!("tcp://{tunnel}")];
    if let Some(u) = users {
        v.extend(listen_list_users(u));
    }
    v
}

/// The `listen` entries of the user listeners, for the `ready` report.
pub fn listen_list_users(u: &UserListeners) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(Ok(a)) = u.tcp.as_ref().map(|l| l.local_addr()) {
        v.push(format!("tcp://{a}"));
    }
    if let Some(Ok(a)) = u.udp.as_ref().map(|s| s.local_addr()) {
        v.push(format!("udp://{a}"));
    }
    v
}

/// One start of the server role; returns when the session ends.
pub async fn start(
    inst: &Arc<Instance>,
    pool_server: Arc<dyn PoolServer>,
    tls: Option<Arc<ServerTls>>,
    cancel: &CancellationToken,
    first: bool,
) -> anyhow::Result<()> {
    let fatal_if_first = |e: anyhow::Error| if first { e.context(Fatal) } else { e };
    let url = &inst.url;
    let addr = listen_addr(&url.tunnel).await.map_err(fatal_if_first)?;
    let listener = bind_tcp(addr)
        .with_context(|| format!("initTunnelListener: listen tcp {addr}"))
        .map_err(fatal_if_first)?;
    // The reference also binds (and closes) UDP on the tunnel port as a port check.
    drop(
        std::net::UdpSocket::bind(addr)
            .with_context(|| format!("initTunnelListener: listen udp {addr}"))
            .map_err(fatal_if_first)?,
    );
    let (mode, flow, users) = match url.params.mode() {
        RunMode::One => (
            1,
            Flow::Reverse,
            Some(bind_users(inst).await.map_err(fatal_if_first)?),
        ),
        RunMode::Two => (2, Flow::Forward, None),
        RunMode::Auto => match bind_users(inst).await {
            Ok(u) => (1, Flow::Reverse, Some(u)),
            Err(e) => {
                tracing::debug!("target address not bindable, forward mode: {e:#}");
                (2, Flow::Forward, None)
            }
        },
    };
    inst.set_mode(mode);
    inst.announce_ready(listen_list(addr, users.as_ref()));
    let tls_mode = if tls.is_some() {
        url.effective_tls()
    } else {
        TlsMode::Off
    };
    let config = TunnelConfig {
        flow,
        max: url.params.max(),
        tls: tls_mode,
        pool_type: url.params.pool_type(),
    };
    tracing::info!("Pending tunnel handshake...");
    let accepted = handshake::serve(
        &listener,
        &url.key,
        config,
        inst.tunables.handshake_timeout,
        cancel,
    )
    .await?;
    let began = Instant::now();
    let pool = Arc::new(Pool::new(url.params.max() as usize));
    let edge = SessionEdge::new(
        pool.clone(),
        accepted.client_ip,
        accepted.proof,
        cancel.clone(),
    );
    let accept = tokio::spawn(pool_server.serve(listener, edge));
    let _stop_accept = AbortOnDrop(accept);
    tracing::info!("Getting tunnel pool ready...");
    let control_conn = take_control(inst, &pool, cancel).await?;
    tracing::info!(
        "Marking tunnel handshake as complete in {}ms",
        began.elapsed().as_millis()
    );
    let verifier = match tls {
        Some(t) => Verifier::Server(t),
        None => Verifier::None,
    };
    control::run(
        control::SessionSpec {
            inst: inst.clone(),
            pool,
            flow,
            is_server: true,
            verifier,
            users,
        },
        control_conn,
        cancel.clone(),
    )
    .await
}

/// Aborts a task when the session ends, whichever way it ends.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
