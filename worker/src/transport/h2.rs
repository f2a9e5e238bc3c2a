//! The HTTP/2 pool, type 3 (REFERENCE.md 4.5): one TLS 1.3 connection (ALPN `h2`) from the
//! client to the server's tunnel port carries every pool entry; each entry is one
//! `POST /stream` request whose request body carries client->server bytes and whose
//! response body carries server->client bytes.
//!
//! Opening an entry: the client sends the request headers and one `0x00` body byte; the
//! server checks the peer IP (403 `unauthorized`), the path, the method and the pool's
//! idle count (404 `not found`), reads that byte, answers 200 and sends the 4 id bytes as
//! the first body bytes. The server is always TLS (tls 0 becomes 1, as in the reference)
//! and drops a connection that did not agree on `h2`.
//!
//! Keeping the one connection healthy: the server allows `max` + `slot` concurrent streams
//! (idle entries plus those in use; the reference allows `max`, too few once about `max`
//! user connections are held) and
//! closes a connection that has had no stream for 2 x NP_REPORT_INTERVAL; the client
//! PINGs every NP_REPORT_INTERVAL and before a round of new entries, and dials a new
//! connection when a PING fails.
//!
//! Closing: the reference's server never ends a response when it closes an entry, and its
//! client resets the stream on close. Our server marks its 200 with [`HALF_CLOSE_HEADER`];
//! our client then treats its close as a half-close (END_STREAM, keep reading), as over
//! TCP. Against a server without the mark (the reference) a close also ends our reading
//! side and the stream is reset once the queued bytes are out, as the reference's client
//! does.
//!
//! Throughput: generous flow-control windows (the crate's 64 KiB default would cap a
//! stream at a window per round trip), capacity released as the reader consumes bytes,
//! received `Bytes` handed to the reader without an intermediate copy, and writes copied
//! into one reused buffer (no allocation per chunk once its earlier chunks are sent).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf as _, Bytes, BytesMut};
use futures::future::BoxFuture;
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use nodepass_proto::url::TlsMode;
use nodepass_proto::wire::{PoolId, ENTRY_PROOF_HEADER};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::tls::{ClientTls, ServerTls};
use super::{
    accept_each, dial_tunnel, tune_pool_socket, Admission, Context, Entry, PoolClient,
    PoolPortAdmission, PoolServer, PoolStream, SessionEdge, ID_READ_TIMEOUT,
};

/// The ALPN protocol both sides must agree on.
const ALPN_H2: &[u8] = b"h2";
/// The one path entries are opened on.
const STREAM_PATH: &str = "/stream";
/// Response header by which our server says "END_STREAM from you is a half-close; I keep
/// sending until I am done". The reference ignores unknown headers.
pub const HALF_CLOSE_HEADER: &str = "x-nodepass-half-close";
/// How long the server waits for a connection's TLS handshake and HTTP/2 preface together
/// (the reference waits forever; a connection that never completes them would hold a task
/// and a descriptor for nothing).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header block the server accepts (h2's default is 16 MiB; an entry's request is
/// a few hundred bytes).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// HTTP/2 connections from the client's address at once (it keeps one; more come only
/// while an old one is being replaced).
const MAX_CLIENT_CONNECTIONS: usize = 64;
/// Connections from any other address are only refused (403 per stream) and never take the
/// client's places: at most this many per address and [`MAX_STRANGERS`] in all, the oldest
/// of the busiest address closed to make room (admission.rs), each for at most
/// [`STRANGER_LIFETIME`].
const MAX_PER_STRANGER: usize = 4;
const MAX_STRANGERS: usize = 32;
const STRANGER_LIFETIME: Duration = Duration::from_secs(10);
/// Per-stream receive window we grant (the reference's Go client grants 4 MiB).
const STREAM_WINDOW: u32 = 4 << 20;
/// Receive window for the whole connection: the bound on bytes buffered for readers that
/// do not keep up, across all entries.
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest DATA frame we accept: fewer frames per byte than the 16 KiB default.
const MAX_FRAME: u32 = 256 << 10;
/// Bytes a stream may have queued in the connection before its writer waits.
const SEND_BUFFER: usize = 1 << 20;
/// The reused write buffer's size.
const WRITE_CHUNK: usize = 256 << 10;
/// How long a closed client entry whose bytes may still be queued keeps its stream open:
/// the crate's reset on drop would discard them (see `Drop for H2Entry`).
const LINGER: Duration = Duration::from_secs(10);
/// A PING answered this recently stands for "before opening new streams": the entries of
/// one pool round are opened together, and one PING covers them all.
const PING_FRESH: Duration = Duration::from_millis(500);

/// The two halves of an entry's HTTP/2 stream.
struct Halves {
    send: SendStream<Bytes>,
    recv: RecvStream,
}

/// One pool entry: an HTTP/2 stream with its two bodies.
pub struct H2Entry {
    /// Always Some until the entry is dropped (a lingering close takes them).
    io: Option<Halves>,
    /// Received bytes not yet read (their flow-control capacity is released as they are).
    pending: Bytes,
    /// Reused for outgoing chunks: each write is split off and frozen; the allocation is
    /// reclaimed once the connection has sent every chunk taken from it.
    wbuf: BytesMut,
    peer: SocketAddr,
    /// DER of the server's leaf certificate as the client saw it (client side only).
    cert: Option<Arc<[u8]>>,
    is_client: bool,
    /// Whether the peer treats our END_STREAM as a half-close (see the module doc).
    peer_half_closes: bool,
    /// Set at the end of the peer's body, or when our close also ended our reading side
    /// (a reference server peer).
    read_done: bool,
    write_done: bool,
    /// Whether this side has sent user bytes (decides whether a close must linger).
    wrote: bool,
}

impl H2Entry {
    fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        pending: Bytes,
        peer: SocketAddr,
        cert: Option<Arc<[u8]>>,
        is_client: bool,
        peer_half_closes: bool,
    ) -> Self {
        H2Entry {
            io: Some(Halves { send, recv }),
            pending,
            wbuf: BytesMut::new(),
            peer,
            cert,
            is_client,
            peer_half_closes,
            read_done: false,
            write_done: false,
            wrote: false,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "HTTP/2 pool entry already closed",
    )
}

fn reset_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into());
    }
    match e.reason() {
        Some(Reason::NO_ERROR) | Some(Reason::CANCEL) | Some(Reason::STREAM_CLOSED) => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        _ => io::Error::other(e),
    }
}

impl AsyncRead for H2Entry {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                // Lets the peer send that much more. Fails only when the stream is gone,
                // which the next read shows.
                let _ = io.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match futures::ready!(io.recv.poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                None => {
                    this.read_done = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(reset_error(e))),
            }
        }
    }
}

impl AsyncWrite for H2Entry {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let room = io.send.capacity();
            if room > 0 {
                let n = room.min(buf.len());
                if this.wbuf.capacity() < n {
                    // Reclaims the old allocation when every chunk taken from it is sent.
                    this.wbuf.reserve(WRITE_CHUNK.max(n));
                }
                this.wbuf.extend_from_slice(&buf[..n]);
                let chunk = this.wbuf.split().freeze();
                return match io.send.send_data(chunk, false) {
                    Ok(()) => {
                        this.wrote = true;
                        Poll::Ready(Ok(n))
                    }
                    Err(e) => Poll::Ready(Err(reset_error(e))),
                };
            }
            io.send.reserve_capacity(buf.len().min(SEND_BUFFER));
            match futures::ready!(io.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(reset_error(e))),
                // The stream can no longer send: the peer reset it or it was closed.
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        // Sent data is queued in the connection, which writes it out on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if !this.write_done {
            this.write_done = true;
            // END_STREAM after the queued bytes. A peer that already reset the stream
            // makes this fail; the direction is over either way.
            let _ = io.send.send_data(Bytes::new(), true);
            if !this.peer_half_closes {
                // The peer never ends its side after ours: stop reading so the relay
                // ends; the drop then lingers until the queued bytes are out.
                this.read_done = true;
                this.pending = Bytes::new();
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Closing an entry must not lose the bytes it has queued. The crate resets a stream whose
/// handles are all dropped while it is still open, and a CANCEL reset discards queued DATA
/// (a server's NO_ERROR reset after its END_STREAM does not). So a drop first ends our
/// side (END_STREAM after the queued bytes, as a TCP close sends FIN after them; a server
/// pool entry closed right after its id was queued thus still delivers the id). A client
/// stream whose peer has not ended its side yet then lingers in a small task until the
/// peer ends or resets it, or [`LINGER`] passes.
impl Drop for H2Entry {
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else { return };
        if !self.write_done {
            let _ = io.send.send_data(Bytes::new(), true);
        }
        if !self.is_client || !self.wrote || io.recv.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                // Discards what the peer still sends, releasing its window, until it ends
                // its side (the stream is then closed, and dropping it resets nothing).
                while let Some(Ok(data)) = io.recv.data().await {
                    let _ = io.recv.flow_control().release_capacity(data.len());
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
            drop(io);
        });
    }
}

impl PoolStream for H2Entry {
    fn peer_closed(&mut self) -> bool {
        let Some(io) = self.io.as_mut() else {
            return true;
        };
        if self.read_done {
            return true;
        }
        if !self.pending.is_empty() {
            return false;
        }
        let mut cx = TaskContext::from_waker(futures::task::noop_waker_ref());
        match io.recv.poll_data(&mut cx) {
            Poll::Ready(Some(Ok(data))) => {
                // Early bytes mean alive; keep them for the reader.
                self.pending = data;
                return false;
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => return true,
            Poll::Pending => {}
        }
        io.send.poll_reset(&mut cx).is_ready()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    fn peer_cert_der(&self) -> Option<Vec<u8>> {
        self.cert.as_ref().map(|c| c.to_vec())
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// Server side of the HTTP/2 pool.
pub struct H2Server {
    acceptor: tokio_rustls::TlsAcceptor,
    keepalive: Duration,
    /// Concurrent streams per connection ([`Context::stream_limit`]).
    streams: u64,
    /// The client's places and everybody else's (refused per stream, 403).
    places: PoolPortAdmission,
}

impl H2Server {
    pub fn new(ctx: Context) -> anyhow::Result<Self> {
        // The role makes tls 0 into tls 1 for this type (TunnelUrl::effective_tls); a
        // caller that did not still gets the reference's behaviour.
        let tls = match ctx.server_tls.clone() {
            Some(t) => t,
            None => ServerTls::new(TlsMode::SelfSigned, None, None, Duration::MAX)?
                .ok_or_else(|| anyhow!("HTTP/2 pool: no TLS certificate could be made"))?,
        };
        Ok(H2Server {
            acceptor: tls.acceptor_with_alpn(&[ALPN_H2]),
            keepalive: ctx.tunables.report_interval,
            streams: ctx.stream_limit(),
            places: PoolPortAdmission::new(
                MAX_CLIENT_CONNECTIONS,
                MAX_PER_STRANGER,
                MAX_STRANGERS,
                Some(STRANGER_LIFETIME),
            ),
        })
    }

    /// One TLS connection: handshake, ALPN check, then its streams until it ends, goes
    /// idle for 2 x NP_REPORT_INTERVAL, or the session is cancelled.
    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, session: Session) {
        tune_pool_socket(&tcp, self.keepalive);
        let handshake = async {
            let tls = self
                .acceptor
                .accept(tcp)
                .await
                .map_err(|e| anyhow!("TLS handshake failed: {e}"))?;
            if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                anyhow::bail!("refused: it did not negotiate ALPN h2");
            }
            h2::server::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .max_send_buffer_size(SEND_BUFFER)
                .max_header_list_size(MAX_HEADER_LIST)
                .max_concurrent_streams(u32::try_from(self.streams).unwrap_or(u32::MAX))
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|e| anyhow!("HTTP/2 preface failed: {e}"))
        };
        let mut conn = tokio::select! {
            _ = session.cancel.cancelled() => return,
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!("HTTP/2 pool: connection from {peer}: {e:#}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(
                        "HTTP/2 pool: connection from {peer}: no TLS and HTTP/2 handshake within {HANDSHAKE_TIMEOUT:?}"
                    );
                    return;
                }
            },
        };
        let idle_limit = self.keepalive.saturating_mul(2);
        let mut tick = tokio::time::interval((self.keepalive / 2).max(Duration::from_millis(100)));
        let mut idle_since: Option<Instant> = None;
        let mut closing: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = session.cancel.cancelled() => return,
                next = conn.accept() => match next {
                    Some(Ok((req, respond))) => {
                        idle_since = None;
                        tokio::spawn(stream(session.clone(), req, respond, peer));
                    }
                    Some(Err(e)) => {
                        tracing::debug!("HTTP/2 pool: connection from {peer} failed: {e}");
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    if let Some(since) = closing {
                        // A graceful close waits for the peer's PING ack; a peer that never
                        // sends it does not keep the connection.
                        if since.elapsed() >= idle_limit {
                            tracing::debug!("HTTP/2 pool: dropping the connection from {peer}: no close acknowledgement");
                            return;
                        }
                    } else if conn.has_streams() {
                        idle_since = None;
                    } else {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= idle_limit {
                            tracing::debug!("HTTP/2 pool: closing the idle connection from {peer}");
                            conn.graceful_shutdown();
                            closing = Some(Instant::now());
                        }
                    }
                }
            }
        }
    }
}

/// What a stream handler needs from its session.
type Session = Arc<SessionEdge>;

/// One stream through the shared admission steps ([`super::admission`]), answered the
/// reference's way: 403 `unauthorized` for another address (and, between our peers, a
/// missing or wrong entry proof), 404 for another path or a full pool.
async fn stream(
    edge: Session,
    req: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
) {
    {
        let refusal = if !edge.from_client(peer) {
            tracing::debug!(
                "HTTP/2 pool: stream from {peer} refused (403): not the handshaking client {}",
                edge.client_ip
            );
            Some(StatusCode::FORBIDDEN)
        } else if req.uri().path() != STREAM_PATH || req.method() != Method::POST {
            tracing::debug!(
                "HTTP/2 pool: stream from {peer} refused (404): {} {} is not POST {STREAM_PATH}",
                req.method(),
                req.uri().path()
            );
            Some(StatusCode::NOT_FOUND)
        } else if let Err(why) = edge.check_proof(
            req.headers()
                .get(ENTRY_PROOF_HEADER)
                .and_then(|v| v.to_str().ok()),
        ) {
            tracing::debug!("HTTP/2 pool: stream from {peer} refused (403): {why}");
            Some(StatusCode::FORBIDDEN)
        } else if edge.pool.is_full() {
            tracing::debug!("HTTP/2 pool: stream from {peer} refused (404): pool full");
            Some(StatusCode::NOT_FOUND)
        } else {
            None
        };
        if let Some(status) = refusal {
            refuse(&mut respond, status, req.into_body()).await;
            return;
        }
        let mut recv = req.into_body();
        // The client's one opening byte; anything after it is early data for the entry.
        let first = tokio::select! {
            _ = edge.cancel.cancelled() => return,
            r = tokio::time::timeout(ID_READ_TIMEOUT, first_byte(&mut recv)) => r,
        };
        let rest = match first {
            Ok(Ok(rest)) => rest,
            Ok(Err(e)) => {
                tracing::debug!("HTTP/2 pool: stream from {peer} ended before its first byte: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("HTTP/2 pool: stream from {peer} sent no first byte in time");
                return;
            }
        };
        // The first entry of a session (after the checks) is the control channel. A stream
        // that arrives before the session has taken it waits for it instead of being reset:
        // a client opens its next entries right behind the first, and under load they
        // arrived first (the client then saw its stream reset, "stream no longer needed").
        let id = match edge.assign_waiting(CONTROL_WAIT).await {
            Ok(id) => id,
            Err(why) => {
                tracing::debug!("HTTP/2 pool: stream from {peer} refused: {why}");
                return;
            }
        };
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(HALF_CLOSE_HEADER, "1")
            .body(());
        let Ok(response) = response else { return };
        let mut send = match respond.send_response(response, false) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("HTTP/2 pool: answering a stream from {peer} failed: {e}");
                return;
            }
        };
        if send
            .send_data(Bytes::copy_from_slice(&id.0), false)
            .is_err()
        {
            return;
        }
        // Ours and the reference's client both treat our END_STREAM as "no more bytes"
        // and keep sending until they are done: a half-close.
        let entry = H2Entry::new(send, recv, rest, peer, None, false, true);
        edge.enroll(id, Entry::Stream(Box::new(entry)), peer, "HTTP/2 pool");
    }
}

/// Reads past the client's opening byte; returns what came after it in the same frame.
async fn first_byte(recv: &mut RecvStream) -> anyhow::Result<Bytes> {
    loop {
        match recv.data().await {
            Some(Ok(mut data)) => {
                if data.is_empty() {
                    continue;
                }
                let _ = recv.flow_control().release_capacity(1);
                data.advance(1);
                return Ok(data);
            }
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the request body ended"),
        }
    }
}

/// Answers with `status` and the reference's `http.Error` body (text plus a newline), then
/// holds the stream until the client ends its request body (both clients do on a refusal)
/// or a moment has passed. Dropping it at once would reset the stream with CANCEL while the
/// client's request is still open, and h2 drops a reset stream's queued frames: under load
/// the client then saw "stream no longer needed" instead of the answer.
/// The text is the reference's: `unauthorized` for 403, `not found` for 404.
async fn refuse(
    respond: &mut h2::server::SendResponse<Bytes>,
    status: StatusCode,
    mut body: RecvStream,
) {
    let text = if status == StatusCode::FORBIDDEN {
        "unauthorized"
    } else {
        "not found"
    };
    let response = Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(());
    let Ok(response) = response else { return };
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from(format!("{text}\n")), true);
    }
    let drain = async {
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
        }
    };
    let _ = tokio::time::timeout(REFUSAL_HOLD, drain).await;
}

/// How long a stream waits for the session to take its control channel (see `stream`).
const CONTROL_WAIT: Duration = Duration::from_secs(30);

/// How long a refused stream is held for its answer to leave (see [`refuse`]).
const REFUSAL_HOLD: Duration = Duration::from_secs(2);

impl PoolServer for H2Server {
    fn serve(
        self: Arc<Self>,
        tunnel: Arc<TcpListener>,
        edge: Arc<SessionEdge>,
    ) -> BoxFuture<'static, ()> {
        let cancel = edge.cancel.clone();
        Box::pin(accept_each(tunnel, cancel, move |tcp, peer| {
            let conn = self.clone().connection(tcp, peer, edge.clone());
            self.places
                .admit(peer, edge.client_ip, &edge.cancel, "HTTP/2 pool", conn)
                .map(Admission::here)
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Client

/// The client's one HTTP/2 connection.
struct Conn {
    requests: h2::client::SendRequest<Bytes>,
    pings: Mutex<h2::PingPong>,
    last_pong: std::sync::Mutex<Instant>,
    /// Set when the connection task has ended or a PING failed.
    dead: AtomicBool,
    peer: SocketAddr,
    cert: Option<Arc<[u8]>>,
}

impl Conn {
    /// One PING round trip, bounded by `limit`.
    async fn ping(&self, limit: Duration) -> anyhow::Result<()> {
        let mut pings = self.pings.lock().await;
        tokio::time::timeout(limit, pings.ping(h2::Ping::opaque()))
            .await
            .map_err(|_| anyhow!("no PING answer within {limit:?}"))?
            .context("PING failed")?;
        *self.last_pong.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(())
    }

    fn fresh(&self) -> bool {
        self.last_pong
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            < PING_FRESH
    }
}

/// Client side of the HTTP/2 pool.
pub struct H2Client {
    ctx: Context,
    tls: ClientTls,
    authority: String,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Ends the connection tasks when the session drops this client.
    cancel: CancellationToken,
}

impl Drop for H2Client {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl H2Client {
    pub fn new(ctx: Context) -> anyhow::Result<Self> {
        // tls 0 and 1 both mean "encrypt, do not verify" here (the server is always TLS).
        let mode = match ctx.tls {
            TlsMode::Off => TlsMode::SelfSigned,
            m => m,
        };
        let tls = ClientTls::with_alpn(mode, &ctx.sni, &[ALPN_H2])?
            .ok_or_else(|| anyhow!("HTTP/2 pool: no TLS client configuration"))?;
        // `:authority` is the sni value; a value that is no valid authority falls back to
        // the tunnel address (the server does not check it).
        let authority = if http::uri::Authority::try_from(ctx.sni.as_str()).is_ok() {
            ctx.sni.clone()
        } else {
            ctx.tunnel.to_string()
        };
        Ok(H2Client {
            ctx,
            tls,
            authority,
            conn: Mutex::new(None),
            cancel: CancellationToken::new(),
        })
    }

    fn ping_limit(&self) -> Duration {
        self.ctx
            .tunables
            .report_interval
            .max(Duration::from_secs(1))
    }

    /// The live connection, checked by a PING (one per round), or a new one.
    async fn connection(&self) -> anyhow::Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.dead.load(Ordering::Acquire) {
                if c.fresh() {
                    return Ok(c.clone());
                }
                match c.ping(self.ping_limit()).await {
                    Ok(()) => return Ok(c.clone()),
                    Err(e) => {
                        tracing::debug!("HTTP/2 pool: {e:#}; dialing a new connection");
                        c.dead.store(true, Ordering::Release);
                    }
                }
            }
            *slot = None;
        }
        let c = self.dial().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn dial(&self) -> anyhow::Result<Arc<Conn>> {
        let (addr, tcp) = dial_tunnel(&self.ctx).await?;
        let tls = tokio::time::timeout(
            ID_READ_TIMEOUT,
            self.tls
                .connector
                .connect(self.tls.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake with {addr} timed out"))?
        .with_context(|| format!("TLS handshake with {addr}"))?;
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(ALPN_H2) {
            bail!("{addr} did not agree to HTTP/2 (ALPN h2): is it a type=3 server?");
        }
        let cert: Option<Arc<[u8]>> = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::from(c.as_ref()));
        let (requests, mut connection) = tokio::time::timeout(
            ID_READ_TIMEOUT,
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .max_send_buffer_size(SEND_BUFFER)
                .enable_push(false)
                .handshake::<_, Bytes>(tls),
        )
        .await
        .map_err(|_| anyhow!("HTTP/2 handshake with {addr} timed out"))?
        .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
        let pings = connection
            .ping_pong()
            .ok_or_else(|| anyhow!("HTTP/2 connection without PING support"))?;
        let conn = Arc::new(Conn {
            requests,
            pings: Mutex::new(pings),
            last_pong: std::sync::Mutex::new(Instant::now()),
            dead: AtomicBool::new(false),
            peer: addr,
            cert,
        });
        let cancel = self.cancel.clone();
        let watched = conn.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = connection => if let Err(e) = r {
                    tracing::debug!("HTTP/2 pool: connection to {addr} ended: {e}");
                },
            }
            watched.dead.store(true, Ordering::Release);
        });
        self.spawn_keepalive(&conn);
        Ok(conn)
    }

    /// PINGs every NP_REPORT_INTERVAL; a failed PING marks the connection dead, so the
    /// next round dials a new one.
    fn spawn_keepalive(&self, conn: &Arc<Conn>) {
        let period = self.ctx.tunables.report_interval;
        if period.is_zero() {
            return;
        }
        let limit = self.ping_limit();
        let weak = Arc::downgrade(conn);
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(conn) = weak.upgrade() else { return };
                if conn.dead.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = conn.ping(limit).await {
                    tracing::debug!("HTTP/2 pool: keep-alive {e:#}");
                    conn.dead.store(true, Ordering::Release);
                    return;
                }
            }
        });
    }

    async fn open_entry(&self) -> anyhow::Result<(PoolId, Entry)> {
        let conn = self.connection().await?;
        let result = tokio::time::timeout(ID_READ_TIMEOUT, self.request(&conn)).await;
        match result {
            Ok(Ok(e)) => Ok(e),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow!("no pool id from {} within a minute", conn.peer)),
        }
    }

    /// One entry on `conn`: request, opening byte, 200, 4 id bytes.
    async fn request(&self, conn: &Conn) -> anyhow::Result<(PoolId, Entry)> {
        let peer = conn.peer;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("https://{}{STREAM_PATH}", self.authority));
        if let Some(proof) = &self.ctx.proof {
            // Our server: the stream proves the key.
            req = req.header(ENTRY_PROOF_HEADER, proof.to_hex());
        }
        let req = req.body(()).context("building the HTTP/2 request")?;
        let mut requests = conn
            .requests
            .clone()
            .ready()
            .await
            .with_context(|| format!("HTTP/2 connection to {peer}"))?;
        let (response, mut send) = requests
            .send_request(req, false)
            .with_context(|| format!("opening a stream to {peer}"))?;
        send.send_data(Bytes::from_static(&[0]), false)
            .with_context(|| format!("sending the opening byte to {peer}"))?;
        let response = response
            .await
            .with_context(|| format!("waiting for the answer from {peer}"))?;
        let status = response.status();
        let half_closes = response.headers().contains_key(HALF_CLOSE_HEADER);
        let mut recv = response.into_body();
        if status != StatusCode::OK {
            let body = error_text(&mut recv).await;
            bail!("{peer} refused the pool entry: {status} {body}");
        }
        let mut got = BytesMut::with_capacity(4);
        let mut rest = Bytes::new();
        while got.len() < 4 {
            match recv.data().await {
                Some(Ok(mut data)) => {
                    let take = (4 - got.len()).min(data.len());
                    got.extend_from_slice(&data[..take]);
                    let _ = recv.flow_control().release_capacity(take);
                    data.advance(take);
                    rest = data;
                }
                Some(Err(e)) => {
                    return Err(e).with_context(|| format!("reading the pool id from {peer}"))
                }
                None => bail!("{peer} ended the stream before sending the pool id"),
            }
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&got);
        let entry = H2Entry::new(send, recv, rest, peer, conn.cert.clone(), true, half_closes);
        Ok((PoolId(id), Entry::Stream(Box::new(entry))))
    }
}

/// The first line of a refusal's body (bounded), for the error message.
async fn error_text(recv: &mut RecvStream) -> String {
    let read = async {
        let mut text = Vec::new();
        while let Some(Ok(data)) = recv.data().await {
            let _ = recv.flow_control().release_capacity(data.len());
            text.extend_from_slice(&data[..data.len().min(256 - text.len().min(256))]);
            if text.len() >= 256 {
                break;
            }
        }
        text
    };
    let text = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&text).trim().to_string()
}

impl PoolClient for H2Client {
    fn open(&self) -> BoxFuture<'_, anyhow::Result<(PoolId, Entry)>> {
        Box::pin(self.open_entry())
    }
}
