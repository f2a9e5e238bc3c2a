//! The tunnel roles and their life cycle. [`run_role`] starts the server or client role,
//! and when a start ends in an error it logs `Server error: ...` / `Client error: ...`,
//! waits NP_SERVICE_COOLDOWN and starts again, exactly like the reference, until the
//! instance is asked to stop. A few errors are fatal instead (see [`Fatal`]): they are
//! configuration mistakes that a restart cannot fix (tunnel port in use at the first
//! start, unreadable certificate files), and the process exits with them.

pub mod activity;
pub mod client;
pub mod control;
pub mod handshake;
pub mod incoming;
pub mod outgoing;
pub mod server;
pub mod session;
pub mod single;
pub mod udp;
pub mod user;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nodepass_proto::url::{HostPort, Role, RunMode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::instance::Instance;
use crate::transport::tls::ServerTls;
pub use crate::transport::RETRY_PAUSE;

/// Marks an error that ends the process instead of the restart loop.
#[derive(Debug)]
pub struct Fatal;

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot start")
    }
}

/// Whether an error was marked [`Fatal`].
pub fn is_fatal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Fatal>().is_some()
}

/// The socket address to listen on for a `host:port` (empty host: all interfaces).
pub async fn listen_addr(hp: &HostPort) -> anyhow::Result<SocketAddr> {
    crate::dns::resolve_once(hp).await
}

/// A TCP listener with the reference's socket options (SO_REUSEADDR, as Go sets it).
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

/// No control channel within the wait: the handshake worked but no pool entry got through.
#[derive(Debug, thiserror::Error)]
#[error("setControlConn: handshake timeout")]
pub struct ControlTimeout;

/// Why a dual-end start failed, in words an operator can act on, when the error says it:
/// the server cannot be reached, it refused the key, the certificate was refused, or the
/// handshake worked but the pool could not be filled. Appended to the `... error:` line.
pub fn failure_reason(e: &anyhow::Error) -> Option<&'static str> {
    use nodepass_proto::wire::HandshakeError;
    use std::io::ErrorKind;
    // The most specific cause wins: a pool that could not be filled because of a refused
    // certificate is reported as the certificate.
    // (anyhow finds a context value too, which the chain's items do not show as its type).
    let mut no_pool = e.downcast_ref::<ControlTimeout>().is_some();
    let (mut status, mut cert, mut unreachable) = (None, false, false);
    for cause in e.chain() {
        if let Some(HandshakeError::Status(s)) = cause.downcast_ref::<HandshakeError>() {
            status = Some(*s);
        }
        no_pool |= cause.downcast_ref::<ControlTimeout>().is_some();
        let io = cause.downcast_ref::<std::io::Error>();
        let tls = io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| cause.downcast_ref::<rustls::Error>());
        cert |= matches!(tls, Some(rustls::Error::InvalidCertificate(_)));
        unreachable |= io.is_some_and(|io| {
            matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::TimedOut
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
        });
    }
    Some(match (status, cert, unreachable, no_pool) {
        (Some(401), ..) => {
            "key refused: the server does not accept this tunnel key; give both URLs the same key"
        }
        (Some(_), ..) => {
            "handshake refused: the tunnel address answers, but not as a nodepass server; check the address and port"
        }
        (_, true, ..) => {
            "certificate refused: the server's certificate does not verify for the sni name (tls=2); check the server's crt and the client's trust store or sni"
        }
        (_, _, true, _) => {
            "server unreachable: nothing answers at the tunnel address; check the address, that the server runs and the firewall"
        }
        (_, _, _, true) => {
            "pool cannot be filled: the handshake worked but no pool connection reached the server; check that the tunnel port is reachable for them too (TCP, or UDP for type=1) and that nothing in between closes them"
        }
        _ => return None,
    })
}

/// Waits for the control channel: the pool entry `00000000`, which is always the server's
/// first accepted entry (REFERENCE.md 4.1), within NP_HANDSHAKE_TIMEOUT (+ the pool get
/// timeout, as the reference waits for the first entry and then looks it up).
pub async fn take_control(
    inst: &Instance,
    pool: &crate::pool::Pool,
    cancel: &CancellationToken,
) -> anyhow::Result<crate::pool::Entry> {
    let wait = inst.tunables.handshake_timeout + inst.tunables.pool_get_timeout;
    tokio::select! {
        _ = cancel.cancelled() => anyhow::bail!("setControlConn: context canceled"),
        c = pool.outgoing_get(nodepass_proto::wire::PoolId::CONTROL, wait) => {
            c.ok_or_else(|| ControlTimeout.into())
        }
    }
}

/// The WARN a dual-end instance without a key in its URL logs at start: the key is then
/// derived from the tunnel port, which anyone can compute.
pub const NO_KEY_WARNING: &str = "No tunnel key in the URL: the key is derived from the port \
     and anyone who can reach the tunnel port can use it. Put a secret key in the URL \
     (server://SECRET@host:port/...) on both ends, and use tls=2 or a firewall for the \
     tunnel port";

/// Runs the instance's role until `shutdown` fires. Returns an error only for a fatal one.
pub async fn run_role(inst: Arc<Instance>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let name = match inst.role() {
        Role::Server => "Server",
        Role::Client => "Client",
    };
    // Made once per process, like the reference: the tls=1 certificate stays the same
    // across restarts, and an unsupported type or unusable tls=2 files are reported before
    // anything listens.
    let server_side = match inst.role() {
        Role::Server => {
            let tls = ServerTls::new(
                inst.url.effective_tls(),
                inst.url.params.crt.as_deref(),
                inst.url.params.key.as_deref(),
                inst.tunables.reload_interval,
            )
            .context(Fatal)?;
            let pool_server = crate::transport::server_for(
                inst.url.params.pool_type(),
                transport_context(&inst, inst.url.effective_tls(), tls.clone()),
            )
            .context(Fatal)?;
            if let Some(t) = &tls {
                tracing::info!("TLS: {} with TLS 1.3", t.describe());
            }
            Some((pool_server, tls))
        }
        Role::Client => None,
    };
    if inst.role() == Role::Server && !inst.url.key_in_url {
        tracing::warn!("{NO_KEY_WARNING}");
    }
    let mut first = true;
    // Kept across sessions (see server::Bound).
    let mut server_bound = None;
    let mut client_users = None;
    let mut backoff = RestartBackoff::new(inst.tunables.service_cooldown);
    loop {
        let session = shutdown.child_token();
        // Each start resolves names afresh, like the reference.
        inst.dns.clear();
        let began = std::time::Instant::now();
        let result = match &server_side {
            Some((pool_server, tls)) => {
                server::start(
                    &inst,
                    pool_server.clone(),
                    tls.clone(),
                    &session,
                    first,
                    &mut server_bound,
                )
                .await
            }
            None => client_start(&inst, &session, first, &mut client_users).await,
        };
        session.cancel();
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match result {
            Err(e) if first && is_fatal(&e) => return Err(e),
            Err(e) => match failure_reason(&e) {
                Some(why) => tracing::error!("{name} error: {e:#} ({why})"),
                None => tracing::error!("{name} error: {e:#}"),
            },
            Ok(()) => tracing::error!("{name} error: the session ended"),
        }
        first = false;
        let pause = backoff.after(began.elapsed());
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
        tracing::info!("{name} restart");
    }
}

/// The pause before a role starts again. The reference always waits NP_SERVICE_COOLDOWN
/// (3 s). Here a start that lasted at least that long (a session that ran, then lost its
/// peer) restarts at once, so a peer that comes back finds us ready; starts that keep
/// failing quickly back off from 100 ms, doubling up to the cooldown, so a dead peer is
/// retried soon after it returns and never in a busy loop.
struct RestartBackoff {
    cooldown: Duration,
    last: Duration,
}

impl RestartBackoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new(cooldown: Duration) -> Self {
        RestartBackoff {
            cooldown,
            last: Duration::ZERO,
        }
    }

    /// The pause after a start that ran for `ran`.
    fn after(&mut self, ran: Duration) -> Duration {
        self.last = if ran >= self.cooldown {
            Duration::ZERO
        } else if self.last.is_zero() {
            Self::FIRST.min(self.cooldown)
        } else {
            self.last.saturating_mul(2).min(self.cooldown)
        };
        self.last
    }
}

/// What a transport needs from this instance; `tls` is the mode in force (the server's
/// own, the client's from the handshake).
pub fn transport_context(
    inst: &Instance,
    tls: nodepass_proto::url::TlsMode,
    server_tls: Option<Arc<ServerTls>>,
) -> crate::transport::Context {
    crate::transport::Context {
        tunables: inst.tunables,
        dns: inst.dns.clone(),
        tunnel: inst.url.tunnel.clone(),
        tls,
        sni: inst.url.effective_sni(),
        server_tls,
        max: inst.url.params.max() as usize,
        slot: inst.url.params.slot() as usize,
        proof: None,
    }
}

async fn client_start(
    inst: &Arc<Instance>,
    cancel: &CancellationToken,
    first: bool,
    users_kept: &mut Option<session::UserListeners>,
) -> anyhow::Result<()> {
    let mode = inst.url.params.mode();
    if mode != RunMode::Two {
        match single::bind(inst).await {
            Ok(listeners) => return single::run(inst.clone(), listeners, cancel.clone()).await,
            Err(e) if mode == RunMode::One => {
                return if first { Err(e.context(Fatal)) } else { Err(e) };
            }
            Err(e) => tracing::debug!("single-end bind failed, trying dual-end: {e:#}"),
        }
    }
    if first && !inst.url.key_in_url {
        tracing::warn!("{NO_KEY_WARNING}");
    }
    client::start(inst, cancel, users_kept).await
}

// What both roles' sessions use (the server's target listeners, the client's in flow `+`).

/// Binds the user-facing listeners on the first target (TCP unless notcp, UDP unless
/// noudp). Used by the incoming side: the server in mode 1, the client in flow `+`.
pub async fn bind_users(inst: &Instance) -> anyhow::Result<session::UserListeners> {
    let Some(first) = inst.targets.first() else {
        anyhow::bail!("initTargetListener: no target address");
    };
    let addr = listen_addr(first).await?;
    let tcp = if inst.url.params.notcp() {
        None
    } else {
        Some(Arc::new(bind_tcp(addr).with_context(|| {
            format!("initTargetListener: listen tcp {addr}")
        })?))
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
    Ok(session::UserListeners {
        tcp,
        udp,
        succession: Default::default(),
    })
}

/// The `listen` entries of the user listeners, for the `ready` report.
pub fn listen_list_users(u: &session::UserListeners) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(Ok(a)) = u.tcp.as_ref().map(|l| l.local_addr()) {
        v.push(format!("tcp://{a}"));
    }
    if let Some(Ok(a)) = u.udp.as_ref().map(|s| s.local_addr()) {
        v.push(format!("udp://{a}"));
    }
    v
}

/// Aborts a task when the session ends, whichever way it ends.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod restart_backoff_tests {
    use super::RestartBackoff;
    use std::time::Duration;

    #[test]
    fn a_session_that_ran_restarts_at_once_and_quick_failures_back_off() {
        let ms = Duration::from_millis;
        let mut b = RestartBackoff::new(ms(3000));
        // A session that ran for minutes, then lost its peer: no pause.
        assert_eq!(b.after(ms(600_000)), ms(0));
        // The peer is not back yet: each quick failure doubles the pause up to the cooldown.
        let pauses: Vec<_> = (0..7).map(|_| b.after(ms(5))).collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3000, 3000].map(ms).to_vec()
        );
        // Back up and running for a while: the next loss restarts at once again.
        assert_eq!(b.after(ms(3000)), ms(0));
        assert_eq!(b.after(ms(1)), ms(100));
        // A cooldown below the first step is never exceeded.
        let mut short = RestartBackoff::new(ms(50));
        assert_eq!(short.after(ms(1)), ms(50));
    }
}
