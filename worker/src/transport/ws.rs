//! The WebSocket pool, type 2 (REFERENCE.md 4.4): every pool entry is its own WebSocket
//! connection from the client to `ws://<tunnel host:port>/` (`wss://` under tls 1/2, or on
//! port 443), carried over its own TCP connection and, under tls 1/2, TLS 1.3.
//!
//! Server, per accepted connection: TLS handshake when tls is 1/2, then one HTTP/1.1 request
//! head (both within [`HEADER_TIMEOUT`] each). Refusals, each answered with a plain-text
//! status and `Connection: close`: a path other than `/` (404), a method other than GET
//! (405), `pool full` (503) while `max` entries are idle, another IP than the handshaking
//! client (403; the reference lets any IP in), a request that is not a WebSocket upgrade
//! (426/400). Otherwise 101, then the id as one 4-byte binary message (the first entry of a
//! session gets `00000000`). Client: dial, TLS, upgrade (30 s in all), read the 4 id bytes
//! (1 minute).
//!
//! Framing: every write is one binary message and a read returns bytes of at most one
//! message, so a UDP datagram written in one call keeps its boundaries. A text message is
//! a protocol error (close 1003). Closing sends a close frame 1000; a received 1000/1001
//! close reads as EOF. No pings: liveness is TCP keep-alive (NP_REPORT_INTERVAL period).
//!
//! Half-close: WebSocket has none (a close frame ends both directions, as with the
//! reference). Between two of our peers the upgrade carries [`HALF_CLOSE_HEADER`] both
//! ways; then a shutdown sends an empty binary message, read as EOF by the peer, which
//! can keep sending. The reference ignores the header and skips empty messages, so a Go
//! peer never sees the difference; with it we close with a close frame.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll, Waker};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::{Buf as _, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{Sink, Stream};
use nodepass_proto::url::TlsMode;
use nodepass_proto::wire::{PoolId, ENTRY_PROOF_HEADER};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::machine::TryParse as _;
use tokio_tungstenite::tungstenite::handshake::server::{
    create_response, write_response, Request, Response,
};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::tls::{ClientTls, ServerTls};
use super::{
    accept_each, admit_connection, dial_tunnel, leaf_cert_der, move_home, tune_pool_socket,
    Context, Entry, PoolClient, PoolPortAdmission, PoolServer, PoolStream, Refused, SessionEdge,
    ID_READ_TIMEOUT,
};

/// The only path that upgrades (the reference's client always asks for it).
const WS_PATH: &str = "/";
/// How long the server waits for a TLS handshake, and then for the request head (the
/// reference's ReadHeaderTimeout, which Go's HTTP server also applies to TLS).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head the server reads before answering 431.
const MAX_HEAD: usize = 16 * 1024;
/// Connections from the client's address between accept and upgrade at once; more are
/// closed at accept. Bounds the memory a flood of idle connections can hold (each at most
/// [`MAX_HEAD`] + TLS state).
const MAX_PENDING_UPGRADES: usize = 1024;
/// Connections from any other address are only answered (403) and never take the client's
/// places: at most this many per address and [`MAX_PENDING_STRANGERS`] in all, the oldest
/// of the busiest address closed to make room (admission.rs).
const MAX_PENDING_PER_STRANGER: usize = 4;
const MAX_PENDING_STRANGERS: usize = 32;
/// How long the client waits for TLS and the upgrade together (the reference's dial
/// context).
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Our own upgrade header: both ends speak the empty-message half-close (module doc).
pub const HALF_CLOSE_HEADER: &str = "x-nodepass-half-close";
/// Largest frame or message accepted from a peer. The reference sets no limit, but it
/// writes one frame per relay read (NP_TCP_DATA_BUF_SIZE, 16 KiB by default).
const MAX_MESSAGE: usize = 16 << 20;
/// Read buffer per entry, and the most tungstenite reads at once. It is allocated (and
/// zero-filled) when the entry is made and never shrinks, so it is most of what an idle or
/// held entry costs: at 64 KiB a held connection cost 74 KiB per side; at 4 KiB it costs
/// 14 KiB, at the same throughput within the noise of one run (a larger frame still
/// arrives whole: tungstenite grows the buffer to the frame's length; it only reads it in
/// 4 KiB steps, copies from TLS's own buffer at tls 1/2). benches/RESULTS.md has the run.
const READ_BUFFER: usize = 4 * 1024;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Write each message through at once: the relay writes whole buffers and flushes
        // when its source is idle, so batching here would only add a copy.
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// What a WebSocket connection runs over: a TCP socket, or TLS on one.
pub trait Carrier: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn tcp(&self) -> &TcpStream;
    fn tcp_mut(&mut self) -> &mut TcpStream;
    fn peer_cert_der(&self) -> Option<Vec<u8>> {
        None
    }
}

impl Carrier for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        self
    }
}

impl Carrier for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        self.get_mut().0
    }

    fn peer_cert_der(&self) -> Option<Vec<u8>> {
        leaf_cert_der(self.get_ref().1.peer_certificates())
    }
}

/// One pool entry: a WebSocket connection read and written as a byte stream.
pub struct WsStream<S: Carrier> {
    ws: WebSocketStream<S>,
    /// The unread rest of the message being read.
    pending: Bytes,
    /// Where a write is copied into a message; its allocation comes back once tungstenite
    /// has framed the message (it drops the payload then), so writes do not allocate.
    staging: BytesMut,
    /// The peer speaks the empty-message half-close (module doc).
    half_close: bool,
    /// This direction has ended (close frame or half-close message read).
    read_eof: bool,
    /// Our shutdown has been sent.
    write_closed: bool,
    /// A close frame has been sent or answered; nothing more to do on drop.
    closed: bool,
}

impl<S: Carrier> WsStream<S> {
    fn new(ws: WebSocketStream<S>, half_close: bool) -> Self {
        WsStream {
            ws,
            pending: Bytes::new(),
            staging: BytesMut::new(),
            half_close,
            read_eof: false,
            write_closed: false,
            closed: false,
        }
    }

    fn ws(&mut self) -> Pin<&mut WebSocketStream<S>> {
        Pin::new(&mut self.ws)
    }

    /// Queues a close frame and pushes it out as far as the socket takes it now.
    fn close_now(&mut self, code: CloseCode, reason: &'static str) {
        if self.closed {
            return;
        }
        self.closed = true;
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let mut cx = TaskContext::from_waker(Waker::noop());
        if let Poll::Ready(Ok(())) = self.ws().poll_ready(&mut cx) {
            let _ = self.ws().start_send(Message::Close(Some(frame)));
        }
        let _ = self.ws().poll_flush(&mut cx);
    }

    /// Takes the next message into `pending`; Ok(false) at the end of the read direction.
    fn poll_message(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<bool>> {
        loop {
            if self.read_eof {
                return Poll::Ready(Ok(false));
            }
            let msg = match ready!(self.ws().poll_next(cx)) {
                None => {
                    self.read_eof = true;
                    self.closed = true;
                    return Poll::Ready(Ok(false));
                }
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    self.read_eof = true;
                    return Poll::Ready(Err(io_error(e)));
                }
            };
            match msg {
                Message::Binary(b) if b.is_empty() => {
                    // An empty message carries no bytes (the reference skips them);
                    // between our peers it is the half-close.
                    if self.half_close {
                        self.read_eof = true;
                        return Poll::Ready(Ok(false));
                    }
                }
                Message::Binary(b) => {
                    self.pending = b;
                    return Poll::Ready(Ok(true));
                }
                Message::Text(_) => {
                    self.read_eof = true;
                    self.close_now(
                        CloseCode::Unsupported,
                        "text message on a binary pool entry",
                    );
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the peer sent a WebSocket text message; pool entries carry binary messages only",
                    )));
                }
                Message::Close(frame) => {
                    self.read_eof = true;
                    // tungstenite has queued the answering close frame: send it.
                    self.closed = true;
                    let _ = self.ws().poll_flush(cx);
                    return match frame {
                        Some(f) if !matches!(f.code, CloseCode::Normal | CloseCode::Away) => {
                            Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!(
                                    "the peer closed the WebSocket with status {} ({})",
                                    u16::from(f.code),
                                    f.reason
                                ),
                            )))
                        }
                        _ => Poll::Ready(Ok(false)),
                    };
                }
                // Pings are answered by tungstenite; pongs and raw frames mean nothing here.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the WebSocket connection is closed",
        ),
        WsError::Protocol(ProtocolError::SendAfterClosing) => io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the WebSocket connection is closing; nothing more can be sent",
        ),
        WsError::Protocol(p) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("WebSocket protocol error: {p}"),
        ),
        other => io::Error::other(format!("WebSocket: {other}")),
    }
}

impl<S: Carrier> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() && !ready!(this.poll_message(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: Carrier> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown of a WebSocket pool entry",
            )));
        }
        ready!(this.ws().poll_ready(cx)).map_err(io_error)?;
        this.staging.reserve(buf.len());
        this.staging.extend_from_slice(buf);
        let message = this.staging.split().freeze();
        this.ws()
            .start_send(Message::Binary(message))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws().poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            ready!(this.ws().poll_ready(cx)).map_err(io_error)?;
            let last = if this.half_close {
                Message::Binary(Bytes::new())
            } else {
                this.closed = true;
                Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }))
            };
            this.write_closed = true;
            match this.ws().start_send(last) {
                Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
                Err(e) => return Poll::Ready(Err(io_error(e))),
            }
        }
        this.ws().poll_flush(cx).map_err(io_error)
    }
}

impl<S: Carrier> Drop for WsStream<S> {
    /// Best effort, never waiting: a close frame 1000, so the peer reads EOF rather than
    /// a connection reset.
    fn drop(&mut self) {
        self.close_now(CloseCode::Normal, "");
    }
}

impl<S: Carrier> PoolStream for WsStream<S> {
    fn peer_closed(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        // Look at what has arrived without waiting: a message is kept for the reader.
        let mut cx = TaskContext::from_waker(Waker::noop());
        match self.poll_message(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Ok(got_message)) => !got_message,
            Poll::Ready(Err(_)) => true,
        }
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.ws.get_ref().tcp().peer_addr()
    }

    fn peer_cert_der(&self) -> Option<Vec<u8>> {
        self.ws.get_ref().peer_cert_der()
    }

    fn rehome(&mut self) -> io::Result<()> {
        crate::background::rehome_tcp(self.ws.get_mut().tcp_mut())
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// Server side of the WebSocket pool.
pub struct WsServer {
    tls: Option<Arc<ServerTls>>,
    keepalive: Duration,
    /// The client's places and everybody else's (answered, never upgraded).
    places: PoolPortAdmission,
}

impl WsServer {
    pub fn new(ctx: Context) -> Self {
        WsServer {
            tls: ctx.server_tls,
            keepalive: ctx.tunables.report_interval,
            places: PoolPortAdmission::new(
                MAX_PENDING_UPGRADES,
                MAX_PENDING_PER_STRANGER,
                MAX_PENDING_STRANGERS,
                None,
            ),
        }
    }

    /// `home`: the runtime the entry is enrolled for, when this runs on the background one.
    async fn admit(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        edge: Arc<SessionEdge>,
        home: Option<tokio::runtime::Handle>,
    ) {
        tune_pool_socket(&tcp, self.keepalive);
        let session = Session { edge, peer, home };
        let refused = match &self.tls {
            None => session.upgrade(tcp).await,
            Some(tls) => {
                match tokio::time::timeout(HEADER_TIMEOUT, tls.acceptor().accept(tcp)).await {
                    Ok(Ok(s)) => session.upgrade(TlsStream::Server(s)).await,
                    Ok(Err(e)) => Err(anyhow!("TLS handshake failed: {e}")),
                    Err(_) => Err(anyhow!("TLS handshake timed out")),
                }
            }
        };
        if let Err(e) = refused {
            tracing::debug!("Pool WebSocket from {peer} refused: {e:#}");
        }
    }
}

/// What one accepted connection needs to become a pool entry.
struct Session {
    edge: Arc<SessionEdge>,
    peer: SocketAddr,
    home: Option<tokio::runtime::Handle>,
}

impl Session {
    /// Reads one request head and either answers a refusal or upgrades, sends the id and
    /// puts the entry in the pool.
    async fn upgrade<S: Carrier>(&self, mut s: S) -> anyhow::Result<()> {
        let peer = self.peer;
        let mut head = Vec::with_capacity(1024);
        let parsed = tokio::time::timeout(HEADER_TIMEOUT, read_head(&mut s, &mut head))
            .await
            .map_err(|_| anyhow!("no complete request head within {HEADER_TIMEOUT:?}"))?;
        let checked = parsed.and_then(|(len, request)| {
            let response = check_request(&request, &self.edge, peer)?;
            Ok((len, request, response))
        });
        let (len, request, mut response) = match checked {
            Ok(r) => r,
            Err(refusal) => {
                refuse(&mut s, peer, refusal).await;
                return Ok(());
            }
        };
        let half_close = request
            .headers()
            .get(HALF_CLOSE_HEADER)
            .is_some_and(|v| v == "1");
        if half_close {
            response
                .headers_mut()
                .insert(HALF_CLOSE_HEADER, http::HeaderValue::from_static("1"));
        }
        let mut out = Vec::with_capacity(256);
        write_response(&mut out, &response).context("encoding the 101 response")?;
        s.write_all(&out)
            .await
            .context("writing the 101 response")?;
        s.flush().await.context("writing the 101 response")?;
        // Bytes after the head (a client that did not wait for the 101) are frames.
        let rest = head.split_off(len);
        let ws =
            WebSocketStream::from_partially_read(s, rest, Role::Server, Some(ws_config())).await;
        let mut ws = WsStream::new(ws, half_close);

        // The first entry of a session (after the checks) is the control channel.
        let id = match self.edge.assign() {
            Ok(id) => id,
            Err(Refused::Duplicate) => {
                // Like the reference: an internal-error close; the client tries again.
                ws.close_now(CloseCode::Error, "duplicate id");
                anyhow::bail!("refused: {}", Refused::Duplicate);
            }
            Err(why) => anyhow::bail!("refused: {why}"),
        };
        ws.write_all(&id.0).await.context("sending the id")?;
        ws.flush().await.context("sending the id")?;
        tracing::trace!("Pool WebSocket {id} from {peer} (half-close: {half_close})");
        let mut entry = Entry::Stream(Box::new(ws));
        if move_home(&mut entry, self.home.as_ref(), peer) {
            self.edge.enroll(id, entry, peer, "WebSocket pool");
        }
        Ok(())
    }
}

/// A refusal: status, reason phrase and body text.
struct Refusal(u16, &'static str, &'static str);

/// Reads until a complete request head has arrived; a refusal for anything that is not
/// one. The head's length and the request are returned; bytes after it stay in `buf`.
async fn read_head<S: Carrier>(s: &mut S, buf: &mut Vec<u8>) -> Result<(usize, Request), Refusal> {
    let mut chunk = [0u8; 2048];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Refusal(0, "", "")),
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match Request::try_parse(buf) {
            Ok(Some(done)) => return Ok(done),
            Ok(None) if buf.len() >= MAX_HEAD => {
                return Err(Refusal(
                    431,
                    "Request Header Fields Too Large",
                    "request header too large",
                ))
            }
            Ok(None) => {}
            Err(WsError::Protocol(ProtocolError::WrongHttpMethod)) => {
                return Err(Refusal(405, "Method Not Allowed", "method not allowed"))
            }
            Err(_) => return Err(Refusal(400, "Bad Request", "bad request")),
        }
    }
}

/// The server's checks: the path, then the shared admission steps ([`super::admission`]:
/// address, pool room, control channel, entry proof), then the upgrade headers. The
/// reference's answers where it has them (404, 503 `pool full`, 403 `unauthorized`). Ok is
/// the 101 response to send.
fn check_request(
    request: &Request,
    edge: &SessionEdge,
    peer: SocketAddr,
) -> Result<Response, Refusal> {
    if request.uri().path() != WS_PATH {
        return Err(Refusal(404, "Not Found", "404 page not found"));
    }
    let proof = request
        .headers()
        .get(ENTRY_PROOF_HEADER)
        .and_then(|v| v.to_str().ok());
    match edge.check(peer).and_then(|()| edge.check_proof(proof)) {
        Ok(()) => {}
        Err(Refused::PoolFull) => return Err(Refusal(503, "Service Unavailable", "pool full")),
        Err(Refused::NoControl) => {
            return Err(Refusal(503, "Service Unavailable", "no control channel"))
        }
        Err(_) => return Err(Refusal(403, "Forbidden", "unauthorized")),
    }
    create_response(request).map_err(|e| match e {
        WsError::Protocol(
            ProtocolError::MissingSecWebSocketVersionHeader | ProtocolError::MissingSecWebSocketKey,
        ) => Refusal(400, "Bad Request", "not a WebSocket version 13 handshake"),
        _ => Refusal(426, "Upgrade Required", "WebSocket upgrade required"),
    })
}

/// Answers a refusal (status 0: just close) and logs why.
async fn refuse<S: Carrier>(s: &mut S, peer: SocketAddr, Refusal(status, reason, body): Refusal) {
    if status == 0 {
        tracing::debug!("Pool connection from {peer} closed before a request head");
        return;
    }
    tracing::debug!("Pool WebSocket from {peer} refused: {status} {body}");
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    );
    let _ = tokio::time::timeout(HEADER_TIMEOUT, async {
        let _ = s.write_all(text.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await;
}

impl PoolServer for WsServer {
    fn serve(
        self: Arc<Self>,
        tunnel: Arc<TcpListener>,
        edge: Arc<SessionEdge>,
    ) -> BoxFuture<'static, ()> {
        let cancel = edge.cancel.clone();
        Box::pin(accept_each(tunnel, cancel, move |tcp, peer| {
            // A replacement's TLS handshake, upgrade and id run at a low priority.
            let (me, e) = (self.clone(), edge.clone());
            admit_connection(
                &edge,
                &self.places,
                "WebSocket pool",
                tcp,
                peer,
                move |tcp, home| me.admit(tcp, peer, e, home),
            )
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Client

/// Client side of the WebSocket pool.
pub struct WsClient {
    ctx: Context,
    tls: Option<ClientTls>,
    /// `ws://host:port/` or `wss://host:port/`.
    url: String,
    /// The Host header: the tunnel host without the port, as the reference sends it.
    host: String,
}

impl WsClient {
    pub fn new(ctx: Context) -> anyhow::Result<Self> {
        let host = ctx.tunnel.host.clone();
        // The reference verifies (tls 2, or tls 0 on port 443 behind a TLS proxy) against
        // the tunnel host; an explicit sni names the certificate instead.
        let name = if ctx.sni.is_empty() || ctx.sni == "none" {
            host.clone()
        } else {
            ctx.sni.clone()
        };
        let tls = match ctx.tls {
            TlsMode::Off if ctx.tunnel.port == 443 => Some(ClientTls::verified(&name)?),
            TlsMode::Off => None,
            TlsMode::SelfSigned => ClientTls::new(TlsMode::SelfSigned, "")?,
            TlsMode::Files => ClientTls::new(TlsMode::Files, &name)?,
        };
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        Ok(WsClient {
            url: format!("{scheme}://{bracketed}:{}{WS_PATH}", ctx.tunnel.port),
            host: bracketed,
            ctx,
            tls,
        })
    }

    fn request(&self, addr: SocketAddr) -> anyhow::Result<http::Request<()>> {
        // An empty tunnel host dials the local machine; name it by the address.
        let (url, host) = if self.host.is_empty() {
            let scheme = if self.tls.is_some() { "wss" } else { "ws" };
            (format!("{scheme}://{addr}{WS_PATH}"), addr.ip().to_string())
        } else {
            (self.url.clone(), self.host.clone())
        };
        let mut request = http::Request::builder()
            .method("GET")
            .uri(&url)
            .header("Host", host)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", generate_key())
            .header(HALF_CLOSE_HEADER, "1");
        if let Some(proof) = &self.ctx.proof {
            // Our server: the upgrade proves the key.
            request = request.header(ENTRY_PROOF_HEADER, proof.to_hex());
        }
        request
            .body(())
            .with_context(|| format!("cannot build the WebSocket request for {url}"))
    }

    async fn open_entry(&self) -> anyhow::Result<(PoolId, Entry)> {
        let (addr, tcp) = dial_tunnel(&self.ctx).await?;
        let request = self.request(addr)?;
        let dial = async {
            match &self.tls {
                None => finish(tcp, request, addr).await,
                Some(tls) => {
                    let s = tls
                        .connector
                        .connect(tls.server_name.clone(), tcp)
                        .await
                        .with_context(|| format!("TLS handshake with {addr}"))?;
                    finish(TlsStream::Client(s), request, addr).await
                }
            }
        };
        let mut entry = tokio::time::timeout(DIAL_TIMEOUT, dial)
            .await
            .map_err(|_| anyhow!("WebSocket upgrade with {addr} timed out"))??;
        let mut id = [0u8; 4];
        tokio::time::timeout(ID_READ_TIMEOUT, entry.read_exact(&mut id))
            .await
            .map_err(|_| anyhow!("no pool id from {addr} within a minute"))?
            .with_context(|| format!("reading the pool id from {addr}"))?;
        Ok((PoolId(id), entry))
    }
}

/// The upgrade on an open connection.
async fn finish<S: Carrier>(
    s: S,
    request: http::Request<()>,
    addr: SocketAddr,
) -> anyhow::Result<Entry> {
    let (ws, response) =
        match tokio_tungstenite::client_async_with_config(request, s, Some(ws_config())).await {
            Ok(r) => r,
            Err(WsError::Http(r)) => {
                let body = r
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_string())
                    .unwrap_or_default();
                anyhow::bail!(
                    "WebSocket upgrade refused by {addr}: status {} {body}",
                    r.status().as_u16()
                );
            }
            Err(e) => return Err(anyhow!("WebSocket upgrade with {addr}: {e}")),
        };
    let half_close = response
        .headers()
        .get(HALF_CLOSE_HEADER)
        .is_some_and(|v| v == "1");
    Ok(Entry::Stream(Box::new(WsStream::new(ws, half_close))))
}

impl PoolClient for WsClient {
    /// One: two at a time (as on the TCP pool) raised the WebSocket pool's fresh-connection
    /// p99 in three of four runs (an entry also costs an HTTP upgrade).
    fn background_opens(&self) -> usize {
        1
    }

    fn open(&self) -> BoxFuture<'_, anyhow::Result<(PoolId, Entry)>> {
        Box::pin(self.open_entry())
    }
}

#[cfg(test)]
mod tests;
