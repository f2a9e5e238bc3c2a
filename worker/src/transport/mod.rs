//! Pool transports: how the data connections between a server and a client are made and
//! identified (REFERENCE.md 4). The tunnel roles only see the two traits here, pool
//! [`Entry`] values and ids; the one place that maps the URL's `type` to a transport is
//! [`server_for`] / [`client_for`].
//!
//! What stays the same for every type: the HTTP handshake runs on the tunnel TCP port
//! (tunnel/handshake.rs), and the control channel is the pool entry `00000000`, so it
//! travels on the transport like every other entry.
//!
//! # Adding a transport
//! 1. Write `transport/<name>.rs` with a server type implementing [`PoolServer`] and a client
//!    type implementing [`PoolClient`], both built from a [`Context`]. Entries that are not
//!    bare TCP sockets are boxed [`PoolStream`]s (`Entry::Stream(Box::new(..))`); implement
//!    `peer_closed` (non-blocking liveness of an idle entry) and, under TLS, `peer_cert_der`.
//!    TLS over TCP: use [`tls::ServerTls`] / [`tls::ClientTls`].
//! 2. Add `pub mod <name>;` below and one arm in each of [`server_for`] and [`client_for`].
//! 3. Add the type's number to `POOL_TYPES` in tests/tunnel_e2e.rs.
//!
//! Implemented: TCP (type 0) with optional TLS (tls 1/2) in [`tcp`], QUIC (type 1) in
//! [`quic`], WebSocket (type 2) in [`ws`], HTTP/2 (type 3) in [`h2`]. The README's
//! "Pool transports" table lists every constant each one takes from the reference.

pub mod admission;
pub mod h2;
pub mod quic;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nodepass_proto::tunables::Tunables;
use nodepass_proto::url::{HostPort, PoolType, TlsMode};
use nodepass_proto::wire::{EntryProof, PoolId};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use crate::pool::{Entry, PoolStream};
pub(crate) use admission::PoolPortAdmission;
pub use admission::{Refused, SessionEdge};

/// How long a client waits for the server to send an entry's id (the reference's 1-minute
/// `idReadTimeout`, the same on every transport).
pub const ID_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A pool socket, either side, on every transport carried by TCP: keep-alive with the
/// NP_REPORT_INTERVAL period (REFERENCE.md 4.1) and no Nagle delay.
pub(crate) fn tune_pool_socket(s: &TcpStream, period: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(period)
        .with_interval(period);
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
    let _ = s.set_nodelay(true);
}

/// The client's TCP dial to the server's tunnel port, for every transport carried by TCP:
/// the host re-resolved per dial (like the reference, so a moved server is followed), the
/// connect bounded by NP_TCP_DIAL_TIMEOUT, the socket tuned.
pub(crate) async fn dial_tunnel(ctx: &Context) -> anyhow::Result<(SocketAddr, TcpStream)> {
    use anyhow::Context as _;
    let t = &ctx.tunables;
    let addr = ctx.dns.resolve(&ctx.tunnel).await?;
    let tcp = tokio::time::timeout(t.tcp_dial_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("dial tcp {addr}: i/o timeout"))?
        .with_context(|| format!("dial tcp {addr}"))?;
    tune_pool_socket(&tcp, t.report_interval);
    Ok((addr, tcp))
}

/// The peer's leaf certificate (DER) of a TLS connection, for the fingerprint check.
pub(crate) fn leaf_cert_der(
    certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> Option<Vec<u8>> {
    certs.and_then(|c| c.first()).map(|c| c.as_ref().to_vec())
}

/// Pause after a failed accept (out of file descriptors and the like) before retrying.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Everything a transport may need, built by the role. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// The NP_* tunables (dial timeout, keep-alive period = report interval, ...).
    pub tunables: Tunables,
    /// Name resolution for the client's dials (re-resolve per dial to follow a moved server).
    pub dns: Arc<crate::dns::Dns>,
    /// The tunnel address from the URL: where the client dials.
    pub tunnel: HostPort,
    /// The tls mode in force: the server's own, the client's from the handshake.
    pub tls: TlsMode,
    /// The `sni` value (the client's TLS server name for tls 2, the HTTP/2 `:authority`).
    pub sni: String,
    /// The server's certificate (None with tls 0; server side only). Made once per
    /// process so it stays the same across restarts.
    pub server_tls: Option<Arc<tls::ServerTls>>,
    /// Idle entries allowed at once (the server's `max`).
    pub max: usize,
    /// User connections allowed at once (`slot`): with `max`, the most entries that can be
    /// open at once (idle + in use), which is what a multiplexed transport's stream limit
    /// must allow (see [`Context::stream_limit`]).
    pub slot: usize,
    /// Client side: the session's entry proof, when the server answered the handshake with
    /// a nonce (a server of ours). Every entry carries it before it reads its id.
    pub proof: Option<EntryProof>,
}

impl Context {
    /// Concurrent streams a multiplexed transport (QUIC, HTTP/2) lets its client open:
    /// idle entries (at most `max`, enforced by the pool-full check) plus those in use by
    /// user connections (at most `slot`). The reference sets `max` alone, so a tunnel
    /// holding about `max` user connections runs out of streams for its pool.
    pub fn stream_limit(&self) -> u64 {
        (self.max.max(1) as u64).saturating_add(self.slot as u64)
    }
}

/// The server side of a pool transport. One value per process; each session calls
/// [`serve`](Self::serve) again (per-session state, the pool, with its first-id rule, comes with each call).
pub trait PoolServer: Send + Sync {
    /// Accepts pool entries until the session (`edge.cancel`) ends, by the rule in
    /// [`admission`]: refuses them from an address other than the client's, while the pool
    /// holds `max` idle entries, or without the session's entry proof; gives each an id
    /// (the first one `00000000`) and puts it in the session's pool.
    ///
    /// `tunnel` is the tunnel TCP listener the handshake ran on, handed over once the
    /// handshake is done (the reference re-listens on that address; handing it over avoids
    /// a window with nothing listening). A transport carried over TCP accepts on it; one
    /// that is not (QUIC) drops it and binds its own socket at its `local_addr()`.
    fn serve(
        self: Arc<Self>,
        tunnel: Arc<TcpListener>,
        edge: Arc<SessionEdge>,
    ) -> BoxFuture<'static, ()>;
}

/// The client side of a pool transport: one value per session.
pub trait PoolClient: Send + Sync {
    /// Opens one new pool entry and reads the id the server gave it. Should give up on its
    /// own within a bounded time (one pool round waits for all its opens).
    fn open(&self) -> BoxFuture<'_, anyhow::Result<(PoolId, Entry)>>;

    /// How many of this transport's entries may open at once on the low-priority
    /// background runtime ([`crate::background`]), to be moved with [`Entry::move_to`]; 0:
    /// none (they open in the foreground). Only a transport whose entries are connections
    /// of their own, owning everything they are registered with, may say more than 0.
    fn background_opens(&self) -> usize {
        0
    }
}

/// One accepted connection's admission steps and the runtime they run on.
pub(crate) struct Admission {
    pub(crate) steps: BoxFuture<'static, ()>,
    /// None: the accepting runtime; else the background one (see [`admit_connection`]).
    pub(crate) on: Option<&'static crate::background::Background>,
}

impl Admission {
    /// Steps that run on the accepting runtime.
    pub(crate) fn here(steps: BoxFuture<'static, ()>) -> Admission {
        Admission { steps, on: None }
    }
}

/// The accept loop of a transport carried by TCP: accepts on `tunnel` until `cancel` fires
/// and runs what `admit` makes of each connection in a task of its own (on the runtime the
/// admission names), which `cancel` ends too. `admit` returns None to drop a connection at
/// once. A failed accept (out of descriptors and the like) pauses instead of spinning.
pub(crate) async fn accept_each<F>(
    tunnel: Arc<TcpListener>,
    cancel: CancellationToken,
    mut admit: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Option<Admission>,
{
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = tunnel.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Some(Admission { steps, on }) = admit(tcp, peer) else {
                    continue;
                };
                let cancel = cancel.clone();
                let task = async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = steps => {}
                    }
                };
                // A background admission is not waited for here: its end wakes no thread
                // of this runtime.
                match on {
                    Some(bg) => drop(bg.handle().spawn(task)),
                    None => drop(tokio::spawn(task)),
                }
            }
            Err(e) => {
                tracing::debug!("Pool accept failed: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// What a server transport whose entries are connections of their own (TCP, WebSocket)
/// makes of one accepted connection, for [`accept_each`]: it takes a place in the port's
/// admission table `places` (None: refused there, `what` names the pool in the log), then
/// runs `admit` (the transport's admission steps) here, or on the low-priority background
/// runtime when the connection replaces an entry nobody waits for: it comes from the client
/// while the pool is refilled but still stocked ([`crate::pool::Pool::well_stocked`]; a
/// session's first entries, a drained pool and strangers are admitted here). There the
/// socket is registered with the background runtime (its handshake's readiness wakes no
/// thread of this one) and `admit` gets this runtime's handle, to move the entry back with
/// [`move_home`] before enrolling it; the place is held until the steps end.
pub(crate) fn admit_connection<F, Fut>(
    edge: &SessionEdge,
    places: &PoolPortAdmission,
    what: &str,
    tcp: TcpStream,
    peer: SocketAddr,
    admit: F,
) -> Option<Admission>
where
    F: FnOnce(TcpStream, Option<tokio::runtime::Handle>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let unhurried = (edge.from_client(peer) && edge.pool.well_stocked())
        .then(crate::background::shared)
        .flatten();
    let (steps, on): (BoxFuture<'static, ()>, _) = match unhurried {
        None => (Box::pin(admit(tcp, None)), None),
        Some(bg) => {
            let home = tokio::runtime::Handle::current();
            // Every step but the accept runs there (see accept_each), taking the socket
            // off this runtime's reactor first.
            let steps = async move {
                match tcp.into_std().and_then(TcpStream::from_std) {
                    Ok(tcp) => admit(tcp, Some(home)).await,
                    Err(e) => tracing::debug!("Pool connection from {peer} dropped: {e}"),
                }
            };
            (Box::pin(steps), Some(bg))
        }
    };
    let steps = places.admit(peer, edge.client_ip, &edge.cancel, what, steps)?;
    Some(Admission { steps, on })
}

/// Moves `entry` to `home` (when admitted on the background runtime) before it is enrolled;
/// false when that failed (the connection is dropped).
pub(crate) fn move_home(
    entry: &mut Entry,
    home: Option<&tokio::runtime::Handle>,
    peer: SocketAddr,
) -> bool {
    let Some(home) = home else {
        return true;
    };
    match entry.move_to(home) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("Pool connection from {peer} dropped: moving it failed: {e}");
            false
        }
    }
}

/// The server side for pool type `t`: the one place a server picks its transport.
pub fn server_for(t: PoolType, ctx: Context) -> anyhow::Result<Arc<dyn PoolServer>> {
    Ok(match t {
        PoolType::Tcp => Arc::new(tcp::TcpServer::new(ctx)),
        PoolType::Quic => Arc::new(quic::QuicServer::new(ctx)?),
        PoolType::Http2 => Arc::new(h2::H2Server::new(ctx)?),
        PoolType::WebSocket => Arc::new(ws::WsServer::new(ctx)),
    })
}

/// The client side for pool type `t` (as the handshake said): the one place a client picks
/// its transport.
pub fn client_for(t: PoolType, ctx: Context) -> anyhow::Result<Arc<dyn PoolClient>> {
    Ok(match t {
        PoolType::Tcp => Arc::new(tcp::TcpClient::new(ctx)?),
        PoolType::Quic => Arc::new(quic::QuicClient::new(ctx)?),
        PoolType::Http2 => Arc::new(h2::H2Client::new(ctx)?),
        PoolType::WebSocket => Arc::new(ws::WsClient::new(ctx)?),
    })
}

/// Same IP, with IPv4-mapped IPv6 addresses (from a dual-stack listener) made IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A transport context for unit tests: loopback tunnel `port`, default tunables, pool `max`.
#[cfg(test)]
pub(crate) fn test_context(
    port: u16,
    tls: TlsMode,
    server_tls: Option<Arc<tls::ServerTls>>,
    max: usize,
) -> Context {
    use nodepass_proto::url::DnsSetting;
    Context {
        tunables: Tunables::default(),
        dns: Arc::new(crate::dns::Dns::new(&DnsSetting::Ttl(Duration::from_secs(
            60,
        )))),
        tunnel: HostPort {
            host: "127.0.0.1".to_string(),
            port,
        },
        tls,
        sni: String::new(),
        server_tls,
        max,
        slot: 64,
        proof: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn ctx(port: u16, tls: TlsMode, server_tls: Option<Arc<tls::ServerTls>>) -> Context {
        test_context(port, tls, server_tls, 4)
    }

    /// What every transport must do, through the two traits only: the first entry is
    /// `00000000`, both sides agree on ids, bytes flow both ways, an idle entry is alive,
    /// and it reads as closed once the other side drops it. A new transport adds a test
    /// calling this with its type.
    async fn contract(t: PoolType, tls: TlsMode) {
        contract_with(t, tls, None).await;
        // Between two of our peers: every entry proves the key.
        let proof = EntryProof::new(&nodepass_proto::url::TunnelKey::new("k"), &[9; 16]);
        contract_with(t, tls, Some(proof)).await;
    }

    /// A server of `t` on a loopback port for the client 127.0.0.1, with its pool and the
    /// session's end.
    async fn serving(
        t: PoolType,
        tls: TlsMode,
        proof: Option<EntryProof>,
    ) -> (
        u16,
        Arc<Pool>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server_tls =
            tls::ServerTls::new(tls, None, None, Duration::from_secs(3600)).expect("server tls");
        let server = server_for(t, ctx(port, tls, server_tls)).expect("server");
        let pool = Arc::new(Pool::new(4));
        let cancel = CancellationToken::new();
        let edge = SessionEdge::new(
            pool.clone(),
            "127.0.0.1".parse().expect("ip"),
            proof,
            cancel.clone(),
        );
        let task = tokio::spawn(server.serve(Arc::new(listener), edge));
        (port, pool, cancel, task)
    }

    async fn contract_with(t: PoolType, tls: TlsMode, proof: Option<EntryProof>) {
        let (port, pool, cancel, serving) = serving(t, tls, proof.clone()).await;
        let mut client_ctx = ctx(port, tls, None);
        client_ctx.proof = proof;
        let client = client_for(t, client_ctx).expect("client");
        let (id1, mut c1) = client.open().await.expect("first entry");
        assert_eq!(
            id1,
            PoolId::CONTROL,
            "the first entry is the control channel"
        );
        let wait = Duration::from_secs(10);
        // The session takes the control channel; only then are data entries admitted
        // (Pool::control_up).
        let mut s1 = pool.outgoing_get(id1, wait).await.expect("server has id1");
        let (id2, mut c2) = client.open().await.expect("second entry");
        assert_ne!(id2, id1);
        assert_eq!(c1.peer_cert_der().is_some(), tls != TlsMode::Off);
        let mut s2 = pool.outgoing_get(id2, wait).await.expect("server has id2");
        assert!(
            !s1.peer_closed() && !c1.peer_closed(),
            "fresh entries are alive"
        );

        c2.write_all(b"ping").await.expect("client write");
        c2.flush().await.expect("client flush");
        let mut buf = [0u8; 4];
        s2.read_exact(&mut buf).await.expect("server read");
        assert_eq!(&buf, b"ping");
        s2.write_all(b"pong").await.expect("server write");
        s2.flush().await.expect("server flush");
        c2.read_exact(&mut buf).await.expect("client read");
        assert_eq!(&buf, b"pong");

        drop(c1);
        let deadline = tokio::time::Instant::now() + wait;
        while !s1.peer_closed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a dropped entry never read as closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        serving.await.expect("serve ends on cancel");
    }

    /// A session with entry proofs gives no id, on any transport, to a connection from the
    /// client's own address that does not prove the key (a stranger behind the same NAT or
    /// proxy), while the real client's entries still get in.
    #[tokio::test]
    async fn without_the_entry_proof_no_transport_gives_an_id() {
        let key = nodepass_proto::url::TunnelKey::new("k");
        let proof = EntryProof::new(&key, &[3; 16]);
        let forged = EntryProof::new(&key, &[4; 16]);
        for (t, tls) in [
            (PoolType::Tcp, TlsMode::Off),
            (PoolType::Tcp, TlsMode::SelfSigned),
            (PoolType::Quic, TlsMode::SelfSigned),
            (PoolType::WebSocket, TlsMode::Off),
            (PoolType::Http2, TlsMode::SelfSigned),
        ] {
            let (port, pool, cancel, serving) = serving(t, tls, Some(proof.clone())).await;
            let mut wrong = ctx(port, tls, None);
            wrong.proof = Some(forged.clone());
            let stranger = client_for(t, wrong).expect("client");
            assert!(
                stranger.open().await.is_err(),
                "{t:?}/{tls:?}: an entry with a wrong proof got an id"
            );
            if matches!(t, PoolType::WebSocket | PoolType::Http2) {
                // The proof rides in a header: without one the refusal is immediate.
                let none = client_for(t, ctx(port, tls, None)).expect("client");
                assert!(
                    none.open().await.is_err(),
                    "{t:?}/{tls:?}: an entry without a proof got an id"
                );
            }
            assert_eq!(
                pool.idle_count(),
                0,
                "{t:?}/{tls:?}: nothing entered the pool"
            );
            let mut right = ctx(port, tls, None);
            right.proof = Some(proof.clone());
            let client = client_for(t, right).expect("client");
            let (id, _entry) = client.open().await.expect("the real client's entry");
            assert_eq!(
                id,
                PoolId::CONTROL,
                "{t:?}/{tls:?}: the refused ones did not use up the control id"
            );
            cancel.cancel();
            serving.await.expect("serve ends on cancel");
        }
    }

    #[tokio::test]
    async fn tcp_meets_the_contract() {
        contract(PoolType::Tcp, TlsMode::Off).await;
        contract(PoolType::Tcp, TlsMode::SelfSigned).await;
    }

    #[tokio::test]
    async fn http2_meets_the_contract() {
        contract(PoolType::Http2, TlsMode::SelfSigned).await;
    }

    #[tokio::test]
    async fn websocket_meets_the_contract() {
        contract(PoolType::WebSocket, TlsMode::Off).await;
        contract(PoolType::WebSocket, TlsMode::SelfSigned).await;
    }

    #[tokio::test]
    async fn quic_meets_the_contract() {
        contract(PoolType::Quic, TlsMode::SelfSigned).await;
    }

    /// Pool connections are authenticated only by the client's IP: besides the one that
    /// becomes the control channel, none is admitted while no control channel is up.
    #[tokio::test]
    async fn tcp_admits_no_data_entry_without_a_control_channel() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = server_for(PoolType::Tcp, ctx(port, TlsMode::Off, None)).expect("server");
        let pool = Arc::new(Pool::new(4));
        let cancel = CancellationToken::new();
        let edge = SessionEdge::new(
            pool.clone(),
            "127.0.0.1".parse().expect("ip"),
            None,
            cancel.clone(),
        );
        let serving = tokio::spawn(server.serve(Arc::new(listener), edge));
        let client = client_for(PoolType::Tcp, ctx(port, TlsMode::Off, None)).expect("client");
        let (id, _control) = client.open().await.expect("first entry");
        assert_eq!(id, PoolId::CONTROL);
        // Not yet taken by a session: refused.
        assert!(
            client.open().await.is_err(),
            "data entry before the control channel"
        );
        let _taken = pool
            .outgoing_get(PoolId::CONTROL, Duration::from_secs(10))
            .await
            .expect("control entry");
        assert!(
            client.open().await.is_ok(),
            "data entry with the control channel up"
        );
        // The session ends: refused again.
        pool.close();
        assert!(client.open().await.is_err(), "data entry after the session");
        cancel.cancel();
        serving.await.expect("serve ends on cancel");
    }

    /// An admission that names the background runtime runs there, with nothing left on
    /// this one, and the session's end still ends it.
    #[tokio::test]
    async fn a_background_admission_runs_there_and_ends_with_the_session() {
        let bg: &'static crate::background::Background = Box::leak(Box::new(
            crate::background::Background::start("np-test-admit", crate::background::NICE)
                .expect("background thread"),
        ));
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let (ran_on, mut threads) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (held_tx, held) = tokio::sync::oneshot::channel::<()>();
        let mut held_tx = Some(held_tx);
        let accepting = tokio::spawn(accept_each(listener, cancel.clone(), move |tcp, _| {
            let ran_on = ran_on.clone();
            // Admissions here never end by themselves; the first holds the sender, which
            // only the session's end drops.
            let held_tx = held_tx.take();
            Some(Admission {
                steps: Box::pin(async move {
                    let _keep = (tcp, held_tx);
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    let _ = ran_on.send(name);
                    std::future::pending::<()>().await;
                }),
                on: Some(bg),
            })
        }));
        let _first = TcpStream::connect(addr).await.expect("connect");
        let _second = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..2 {
            let name = tokio::time::timeout(Duration::from_secs(20), threads.recv())
                .await
                .expect("the admission ran")
                .expect("a thread name");
            assert_eq!(name, "np-test-admit");
        }
        cancel.cancel();
        accepting.await.expect("the accept loop ends on cancel");
        tokio::time::timeout(Duration::from_secs(20), held)
            .await
            .expect("the session's end did not end the admission")
            .expect_err("nothing is ever sent");
    }
}
