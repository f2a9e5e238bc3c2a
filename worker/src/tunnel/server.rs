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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::control;
use super::session::{UserListeners, Verifier};
use super::{
    bind_tcp, bind_users, handshake, listen_addr, listen_list_users, take_control, AbortOnDrop,
    Fatal,
};
use crate::instance::Instance;
use crate::pool::Pool;
use crate::transport::tls::ServerTls;
use crate::transport::{PoolServer, SessionEdge};

fn listen_list(tunnel: SocketAddr, users: Option<&UserListeners>) -> Vec<String> {
    let mut v = vec![format!("tcp://{tunnel}")];
    if let Some(u) = users {
        v.extend(listen_list_users(u));
    }
    v
}

/// What a server binds once and keeps for all its sessions: the tunnel port, the mode it
/// decided, and in mode 1 the user listeners. A client's handshake or a user that arrives
/// between two sessions waits in the listen backlog and is served by the next session,
/// instead of being refused while nothing listens (the reference closes and re-binds them
/// at every restart).
#[derive(Clone)]
pub struct Bound {
    addr: SocketAddr,
    tunnel: Arc<TcpListener>,
    mode: u8,
    flow: Flow,
    users: Option<UserListeners>,
}

async fn bind(inst: &Arc<Instance>, first: bool) -> anyhow::Result<Bound> {
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
    Ok(Bound {
        addr,
        tunnel: Arc::new(listener),
        mode,
        flow,
        users,
    })
}

/// One start of the server role; returns when the session ends. Binds on the first start
/// and keeps what it bound in `bound` for the next ones.
pub async fn start(
    inst: &Arc<Instance>,
    pool_server: Arc<dyn PoolServer>,
    tls: Option<Arc<ServerTls>>,
    cancel: &CancellationToken,
    first: bool,
    bound: &mut Option<Bound>,
) -> anyhow::Result<()> {
    let b = match bound {
        Some(b) => b.clone(),
        None => bound.insert(bind(inst, first).await?).clone(),
    };
    let Bound {
        addr,
        tunnel: listener,
        mode,
        flow,
        users,
    } = b;
    let url = &inst.url;
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
