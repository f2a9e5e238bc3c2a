//! The QUIC pool, type 1 (REFERENCE.md 4.3): one QUIC connection from the client to the
//! server's tunnel address over UDP (the same port number as the tunnel TCP listener), and
//! every pool entry is a bidirectional stream on it. Always TLS 1.3 with ALPN `np-quic`
//! (a tls=0 server runs tls=1, as the reference upgrades it).
//!
//! Per entry the client opens a stream, writes one byte `00` (a QUIC stream only becomes
//! visible to the peer once it carries data) and reads the 4 raw id bytes; the server reads
//! that byte, refuses while its pool holds `max` idle entries, and writes the id (the first
//! one `00000000`). Both sides: keep-alive every NP_REPORT_INTERVAL, idle timeout three times
//! that, at most `max` + `slot` concurrent streams opened by the client (idle entries plus
//! those in use; the reference allows `max`, so a tunnel holding about `max` user
//! connections could not open more pool streams).
//!
//! Server, per session: the UDP endpoint is bound when the pool starts and closed (with
//! every connection on it, code 0 `pool closed`) when the session ends, so the next start
//! finds the port free, like the reference's per-start listener. The tunnel TCP listener
//! stays open during the session as in the reference, which re-listens on it after the
//! handshake; TCP connections arriving there are closed at once. A connection attempt from
//! another IP than the handshaking client is dropped without a reply before anything else
//! (the reference completes the handshake, then closes with code 0 `unauthorized IP`), and
//! one from the client's IP must prove it with a Retry round trip (QUIC address validation)
//! before it takes a handshake place, so spoofed Initials cannot hold them. Against a flood,
//! handshakes in flight and accepted connections are bounded ([`MAX_HANDSHAKES`],
//! [`MAX_CONNECTIONS`]; the oldest connection is closed when a newer one needs its place).
//!
//! Client: one connection for all entries, dialled (from a fresh UDP socket, re-resolving
//! the host) when there is none; when opening a stream or the id exchange fails it is
//! forgotten (entries already on it keep working) and the next open dials anew.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::{Buf as _, Bytes};
use futures::future::BoxFuture;
use nodepass_proto::url::TlsMode;
use nodepass_proto::wire::{EntryProof, PoolId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::tls::{ClientTls, ServerTls};
use super::{
    canonical_ip, Context, Entry, PoolClient, PoolServer, PoolStream, SessionEdge, ID_READ_TIMEOUT,
    RETRY_PAUSE,
};

/// The ALPN protocol both sides must agree on (quic v1.0.14 `defaultALPN`).
pub const ALPN: &[u8] = b"np-quic";
/// How long the server waits for a stream's first byte. The reference waits forever; a
/// stream that never sends it would hold a task (and a stream credit) for nothing.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection attempt may take to finish its handshake on the server.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection attempts in their handshake at once on the server; more are refused. The
/// reference (quic-go) allows any number.
pub const MAX_HANDSHAKES: usize = 16;
/// Connection attempts the endpoint keeps queued before this code looks at them.
const MAX_QUEUED_ATTEMPTS: usize = 64;
/// Accepted connections kept per session; a newer one closes the oldest. A client needs
/// one; a reference client leaves its old one behind whenever an open fails, hence a few.
pub const MAX_CONNECTIONS: usize = 8;
/// Flow-control credit per stream (quic-go starts at 512 KiB and grows to 6 MiB).
const STREAM_WINDOW: u32 = 4 << 20;
/// Flow-control credit per connection: also the most a peer can make us buffer on one
/// connection (quic-go grows to 15 MiB).
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Unacknowledged bytes in flight per connection.
const SEND_WINDOW: u64 = 16 << 20;
/// Ack-eliciting packets a peer that supports the ACK frequency extension (ours) may receive
/// before it must acknowledge: fewer ACK packets, less CPU on both ends. Peers without the
/// extension (quic-go) ack as usual.
const ACK_ELICITING_THRESHOLD: u32 = 7;
/// Kernel buffers of the UDP socket (capped by net.core.[rw]mem_max).
const SOCKET_BUFFER: usize = 4 << 20;

/// One pool entry: a bidirectional stream and the connection it lives on.
pub struct QuicEntry {
    send: SendStream,
    recv: RecvStream,
    conn: Connection,
    /// Bytes read by [`PoolStream::peer_closed`]'s look at an idle entry, handed out first.
    pending: Option<Bytes>,
}

impl QuicEntry {
    fn new(conn: Connection, send: SendStream, recv: RecvStream) -> Self {
        QuicEntry {
            send,
            recv,
            conn,
            pending: None,
        }
    }
}

impl PoolStream for QuicEntry {
    fn peer_closed(&mut self) -> bool {
        if self.conn.close_reason().is_some() {
            return true;
        }
        if self.pending.is_some() {
            return false;
        }
        // One poll with a waker that does nothing: nobody reads an idle entry, and the next
        // real read registers its own waker. Data found is kept for that read.
        let mut cx = TaskContext::from_waker(Waker::noop());
        let read = self.recv.read_chunk(usize::MAX, true);
        let mut read = std::pin::pin!(read);
        match read.as_mut().poll(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Ok(Some(chunk))) => {
                self.pending = Some(chunk.bytes);
                false
            }
            // A finished (FIN) or reset stream: the peer has let go of this entry.
            Poll::Ready(Ok(None)) | Poll::Ready(Err(_)) => true,
        }
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.conn.remote_address())
    }

    fn peer_cert_der(&self) -> Option<Vec<u8>> {
        let identity = self.conn.peer_identity()?;
        let certs = identity
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?;
        certs.first().map(|c| c.as_ref().to_vec())
    }
}

impl AsyncRead for QuicEntry {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(p) = &mut this.pending {
            let n = p.len().min(buf.remaining());
            buf.put_slice(&p[..n]);
            p.advance(n);
            if p.is_empty() {
                this.pending = None;
            }
            return Poll::Ready(Ok(()));
        }
        AsyncRead::poll_read(Pin::new(&mut this.recv), cx, buf)
    }
}

impl AsyncWrite for QuicEntry {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    /// FIN on the send side; the receive side stays readable (half-close).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}

/// Transport parameters shared by both sides. `incoming_streams` = streams the peer may
/// have open at once.
fn transport_config(keepalive: Duration, incoming_streams: u64) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keepalive))
        // 3x the keep-alive period, as the reference; the bound keeps it a valid varint.
        .max_idle_timeout(quinn::IdleTimeout::try_from(keepalive.saturating_mul(3)).ok())
        .max_concurrent_bidi_streams(VarInt::from_u64(incoming_streams).unwrap_or(VarInt::MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None);
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(acks));
    t
}

/// A UDP socket for an endpoint, with large kernel buffers; dual-stack when `addr` is the
/// IPv6 wildcard.
fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(false);
    }
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> io::Result<Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| io::Error::other("QUIC needs a tokio runtime"))?;
    Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}

/// Closes the session's endpoint, and so every connection on it, however the session ends
/// (the serve task may be aborted), which frees the UDP port for the next start.
struct CloseOnDrop(Endpoint);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(VarInt::from_u32(0), b"pool closed");
    }
}

/// Server side of the QUIC pool.
pub struct QuicServer {
    config: quinn::ServerConfig,
}

impl QuicServer {
    pub fn new(ctx: Context) -> anyhow::Result<Self> {
        // QUIC always runs TLS: a tls=0 server gets the tls=1 self-signed certificate.
        let tls = match ctx.server_tls.clone() {
            Some(t) => t,
            None => ServerTls::new(TlsMode::SelfSigned, None, None, Duration::from_secs(3600))?
                .ok_or_else(|| anyhow!("no certificate for the QUIC pool"))?,
        };
        let mut rustls_config = (**tls.acceptor().config()).clone();
        rustls_config.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(Arc::new(rustls_config))
            .context("the TLS setup cannot be used for QUIC")?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config
            .transport_config(Arc::new(transport_config(
                ctx.tunables.report_interval,
                ctx.stream_limit(),
            )))
            .max_incoming(MAX_QUEUED_ATTEMPTS)
            .incoming_buffer_size(64 << 10)
            .incoming_buffer_size_total(4 << 20);
        Ok(QuicServer { config })
    }

    /// Binds the UDP endpoint on the tunnel address, retrying while the previous session's
    /// endpoint (or anything else) still holds the port.
    async fn bind(&self, addr: SocketAddr, cancel: &CancellationToken) -> Option<Endpoint> {
        let mut warned = false;
        loop {
            match udp_socket(addr).and_then(|s| endpoint(s, Some(self.config.clone()))) {
                Ok(e) => return Some(e),
                Err(e) => {
                    if !warned {
                        tracing::warn!("QUIC pool: listen udp {addr}: {e}; retrying");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(RETRY_PAUSE * 4) => {}
            }
        }
    }
}

/// Per-session state shared by the server's tasks.
struct Session {
    edge: Arc<SessionEdge>,
    cancel: CancellationToken,
    /// Accepted connections, oldest first (bounded by [`MAX_CONNECTIONS`]).
    conns: Mutex<VecDeque<Connection>>,
}

impl Session {
    /// Records a new connection; closes the oldest one when there are too many.
    fn track(&self, conn: Connection) {
        let evicted = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.retain(|c| c.close_reason().is_none());
            conns.push_back(conn);
            if conns.len() > MAX_CONNECTIONS {
                conns.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = evicted {
            tracing::debug!(
                "QUIC pool: more than {MAX_CONNECTIONS} connections from {}: closing the oldest",
                old.remote_address()
            );
            old.close(VarInt::from_u32(0), b"superseded");
        }
    }

    /// Finishes one attempt's handshake, then takes the streams its client opens.
    async fn connection(self: Arc<Self>, incoming: quinn::Incoming, permit: HandshakePermit) {
        let peer = incoming.remote_address();
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("QUIC pool: connection from {peer} failed: {e}");
                return;
            }
        };
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!("QUIC pool: handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("QUIC pool: handshake with {peer} timed out");
                return;
            }
        };
        drop(permit);
        tracing::debug!("QUIC pool: connection from {peer}");
        self.track(conn.clone());
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("QUIC pool: connection from {peer} ended: {e}");
                    return;
                }
            };
            let admit = self.clone().admit(conn.clone(), send, recv);
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = admit => {}
                }
            });
        }
    }

    /// One stream: read the client's byte, give it an id, put it in the pool.
    async fn admit(self: Arc<Self>, conn: Connection, send: SendStream, recv: RecvStream) {
        let peer = conn.remote_address();
        // Dropping the streams here finishes ours (the client reads a short id) and stops
        // the client's, as the reference's close does.
        if self.edge.pool.is_full() {
            tracing::debug!("Pool full: refusing a stream from {peer}");
            return;
        }
        let mut entry = QuicEntry::new(conn, send, recv);
        let mut first = [0u8; 1];
        match tokio::time::timeout(FIRST_BYTE_TIMEOUT, entry.recv.read_exact(&mut first)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!("QUIC pool: stream from {peer} ended before its first byte: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("QUIC pool: stream from {peer} sent nothing; closed");
                return;
            }
        }
        if let Err(why) = self.edge.read_proof(&mut entry.recv).await {
            tracing::debug!("QUIC pool: stream from {peer} refused: {why}");
            return;
        }
        // A stream that comes before the control channel is taken waits for it: the
        // reference's client drops its whole connection (control stream included) when
        // one stream gets no id.
        let id = match self.edge.assign_waiting(FIRST_BYTE_TIMEOUT).await {
            Ok(id) => id,
            Err(why) => {
                tracing::debug!("QUIC pool: stream from {peer} refused: {why}");
                return;
            }
        };
        if entry.send.write_all(&id.0).await.is_err() {
            return;
        }
        self.edge
            .enroll(id, Entry::Stream(Box::new(entry)), peer, "QUIC pool");
    }
}

type HandshakePermit = tokio::sync::OwnedSemaphorePermit;

impl PoolServer for QuicServer {
    fn serve(
        self: Arc<Self>,
        tunnel: Arc<TcpListener>,
        edge: Arc<SessionEdge>,
    ) -> BoxFuture<'static, ()> {
        let (client_ip, cancel) = (edge.client_ip, edge.cancel.clone());
        Box::pin(async move {
            let addr = match tunnel.local_addr() {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!("QUIC pool: no tunnel address: {e}");
                    return;
                }
            };
            let Some(endpoint) = self.bind(addr, &cancel).await else {
                return;
            };
            let _close = CloseOnDrop(endpoint.clone());
            let session = Arc::new(Session {
                edge,
                cancel: cancel.clone(),
                conns: Mutex::new(VecDeque::new()),
            });
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    accepted = tunnel.accept() => match accepted {
                        // The pool runs over UDP; the port's TCP side only held the handshake.
                        Ok((_tcp, peer)) => {
                            tracing::debug!("QUIC pool: TCP connection from {peer} on the tunnel port closed");
                        }
                        Err(e) => {
                            tracing::debug!("Tunnel accept failed: {e}");
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    },
                    incoming = endpoint.accept() => {
                        let Some(incoming) = incoming else {
                            tracing::error!("QUIC pool: the UDP endpoint on {addr} stopped");
                            return;
                        };
                        let peer = incoming.remote_address();
                        // A UDP source address is only a claim: a foreign one is dropped
                        // without a reply (a reply would go to whoever was spoofed), and the
                        // client's own is proven by a Retry round trip before the attempt
                        // may take a handshake place.
                        if canonical_ip(peer.ip()) != client_ip {
                            tracing::debug!(
                                "QUIC pool: connection from {peer} dropped: not the handshaking client {client_ip}"
                            );
                            incoming.ignore();
                            continue;
                        }
                        if !incoming.remote_address_validated() {
                            if incoming.may_retry() {
                                if let Err(e) = incoming.retry() {
                                    tracing::debug!("QUIC pool: Retry to {peer} failed: {e}");
                                }
                            } else {
                                tracing::debug!(
                                    "QUIC pool: connection from {peer} dropped: its address was not validated"
                                );
                                incoming.ignore();
                            }
                            continue;
                        }
                        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                            tracing::debug!(
                                "QUIC pool: connection from {peer} refused: {MAX_HANDSHAKES} handshakes already in progress"
                            );
                            incoming.refuse();
                            continue;
                        };
                        let task = session.clone().connection(incoming, permit);
                        let cancel = cancel.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = cancel.cancelled() => {}
                                _ = task => {}
                            }
                        });
                    }
                }
            }
        })
    }
}

/// Client side of the QUIC pool: one per session.
pub struct QuicClient {
    ctx: Context,
    config: quinn::ClientConfig,
    /// The name given to TLS: the `sni` value with tls 2; otherwise a placeholder that is
    /// neither sent (SNI is off) nor checked.
    server_name: String,
    /// The connection entries are opened on, and the last failed dial.
    conn: tokio::sync::Mutex<Dialled>,
}

/// The client's connection slot.
#[derive(Default)]
struct Dialled {
    /// None until the first dial or after a failure.
    current: Option<Connection>,
    /// When and why the last dial failed: opens that waited for that dial share its
    /// outcome instead of dialling one after another (like the reference's one dial per
    /// round).
    failed: Option<(tokio::time::Instant, String)>,
}

impl QuicClient {
    pub fn new(ctx: Context) -> anyhow::Result<Self> {
        // tls 0 or 1: no verification, no SNI (the reference treats both alike).
        let mode = match ctx.tls {
            TlsMode::Files => TlsMode::Files,
            _ => TlsMode::SelfSigned,
        };
        let tls = ClientTls::new(mode, &ctx.sni)?
            .ok_or_else(|| anyhow!("no TLS client for the QUIC pool"))?;
        let mut rustls_config = (**tls.connector.config()).clone();
        rustls_config.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(Arc::new(rustls_config))
            .context("the TLS setup cannot be used for QUIC")?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        // The server opens no streams.
        config.transport_config(Arc::new(transport_config(ctx.tunables.report_interval, 0)));
        let server_name = match mode {
            TlsMode::Files => ctx.sni.clone(),
            _ => "nodepass.invalid".to_string(),
        };
        Ok(QuicClient {
            ctx,
            config,
            server_name,
            conn: tokio::sync::Mutex::new(Dialled::default()),
        })
    }

    /// The current connection, dialling one when there is none (one dial for all the
    /// opens of a round).
    async fn connection(&self) -> anyhow::Result<Connection> {
        let asked = tokio::time::Instant::now();
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.current.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        slot.current = None;
        if let Some((at, why)) = &slot.failed {
            if *at >= asked {
                anyhow::bail!("{why}");
            }
        }
        match self.dial().await {
            Ok(conn) => {
                slot.current = Some(conn.clone());
                slot.failed = None;
                Ok(conn)
            }
            Err(e) => {
                slot.failed = Some((tokio::time::Instant::now(), format!("{e:#}")));
                Err(e)
            }
        }
    }

    /// Dials a new connection from a fresh UDP socket (re-resolving the tunnel host).
    async fn dial(&self) -> anyhow::Result<Connection> {
        let addr = self.ctx.dns.resolve(&self.ctx.tunnel).await?;
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = udp_socket(local)
            .and_then(|s| endpoint(s, None))
            .with_context(|| format!("QUIC socket for {addr}"))?;
        let connecting = endpoint
            .connect_with(self.config.clone(), addr, &self.server_name)
            .with_context(|| format!("dial quic {addr}"))?;
        let conn = tokio::time::timeout(self.ctx.tunables.tcp_dial_timeout, connecting)
            .await
            .map_err(|_| anyhow!("dial quic {addr}: i/o timeout"))?
            .with_context(|| format!("dial quic {addr}"))?;
        tracing::debug!("QUIC pool: connected to {addr}");
        Ok(conn)
    }

    /// Forgets `conn` if it is still the current one, so the next open dials anew.
    async fn forget(&self, conn: &Connection) {
        let mut slot = self.conn.lock().await;
        if slot.current.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
            slot.current = None;
        }
    }

    async fn open_entry(&self) -> anyhow::Result<(PoolId, Entry)> {
        let conn = self.connection().await?;
        match exchange(&conn, self.ctx.proof.as_ref()).await {
            Ok(found) => Ok(found),
            Err(Failed { error, suspect }) => {
                // A stream the server closed without an id (its pool was full) says nothing
                // about the connection; a dead or unresponsive one is replaced.
                if suspect || conn.close_reason().is_some() {
                    self.forget(&conn).await;
                }
                Err(error)
            }
        }
    }
}

/// Why an exchange failed, and whether the connection itself is in doubt.
struct Failed {
    error: anyhow::Error,
    suspect: bool,
}

impl Failed {
    fn stream(error: anyhow::Error) -> Self {
        Failed {
            error,
            suspect: false,
        }
    }

    fn connection(error: anyhow::Error) -> Self {
        Failed {
            error,
            suspect: true,
        }
    }
}

/// Opens one stream on `conn`, sends the `00` byte (and the entry proof, with a server of
/// ours) and reads the id.
async fn exchange(
    conn: &Connection,
    proof: Option<&EntryProof>,
) -> Result<(PoolId, Entry), Failed> {
    let peer = conn.remote_address();
    let (mut send, mut recv) = match tokio::time::timeout(ID_READ_TIMEOUT, conn.open_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Failed::connection(
                anyhow!(e).context(format!("opening a stream to {peer}")),
            ))
        }
        Err(_) => {
            return Err(Failed::connection(anyhow!(
                "no stream to {peer} within a minute (the server's stream limit is reached)"
            )))
        }
    };
    let mut opening = vec![0u8];
    if let Some(p) = proof {
        opening.extend_from_slice(&p.bytes());
    }
    if let Err(e) = send.write_all(&opening).await {
        return Err(Failed::stream(
            anyhow!(e).context(format!("writing to a stream to {peer}")),
        ));
    }
    let mut id = [0u8; 4];
    match tokio::time::timeout(ID_READ_TIMEOUT, recv.read_exact(&mut id)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(Failed::stream(
                anyhow!(e).context(format!("reading the pool id from {peer}")),
            ))
        }
        Err(_) => {
            return Err(Failed::connection(anyhow!(
                "no pool id from {peer} within a minute"
            )))
        }
    }
    Ok((
        PoolId(id),
        Entry::Stream(Box::new(QuicEntry::new(conn.clone(), send, recv))),
    ))
}

impl PoolClient for QuicClient {
    fn open(&self) -> BoxFuture<'_, anyhow::Result<(PoolId, Entry)>> {
        Box::pin(self.open_entry())
    }
}

impl Drop for QuicClient {
    /// The session is over: close its connection like the reference's pool close (entries
    /// still in use on it end too).
    fn drop(&mut self) {
        if let Some(c) = self.conn.get_mut().current.take() {
            c.close(VarInt::from_u32(0), b"pool closed");
        }
    }
}
