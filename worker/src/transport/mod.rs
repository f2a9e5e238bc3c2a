//! Pool transports: how the data connections between a server and a client are made and
//! identified. One trait pair for every `type` (REFERENCE.md 4): [`PoolServer`] turns
//! accepted connections into identified idle entries of a [`Pool`], [`PoolClient`] opens
//! one new entry and learns its id. The tunnel logic only sees [`Conn`] values and ids; it
//! never names a concrete transport.
//!
//! Implemented: TCP (type 0) with optional TLS (tls 1/2) in [`tcp`] and [`tls`]. QUIC,
//! WebSocket and HTTP/2 (types 1-3) are refused with a clear error for now.

pub mod tcp;
pub mod tls;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use nodepass_proto::url::PoolType;
use nodepass_proto::wire::PoolId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;
use crate::relay::RelayIo;

/// One pool entry (or the control channel): a connection to the peer.
pub enum Conn {
    /// tls 0: a bare TCP socket (the relay can splice it).
    Tcp(TcpStream),
    /// tls 1/2: TLS 1.3 over TCP.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// DER of the peer's leaf certificate (a client's view of the server), if any.
    pub fn peer_cert_der(&self) -> Option<Vec<u8>> {
        match self {
            Conn::Tcp(_) => None,
            Conn::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
        }
    }

    /// True when the peer has closed this (idle) connection: a non-blocking peek sees EOF
    /// or an error. Pending data (a TLS session ticket, early user bytes) means alive.
    pub fn peer_closed(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // tokio sockets are non-blocking, so this peek never waits.
        match socket2::SockRef::from(self.tcp()).peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl RelayIo for Conn {
    fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            Conn::Tcp(s) => Some(s),
            Conn::Tls(_) => None,
        }
    }
}

/// The server side of a pool transport.
pub trait PoolServer: Send + Sync {
    /// Accepts pool entries on the tunnel address until `cancel` fires: refuses them while
    /// the pool holds `max` idle entries or when they come from an address other than
    /// `client_ip`, gives each an id (the first one `00000000`) and puts it in `pool`.
    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        pool: Arc<Pool>,
        client_ip: IpAddr,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

/// The client side of a pool transport.
pub trait PoolClient: Send + Sync {
    /// Opens one new pool entry and reads the id the server gave it.
    fn open(&self) -> BoxFuture<'_, anyhow::Result<(PoolId, Conn)>>;
}

/// Refuses pool types this build does not carry yet, with a sentence saying so.
pub fn ensure_supported(t: PoolType) -> anyhow::Result<()> {
    match t {
        PoolType::Tcp => Ok(()),
        other => anyhow::bail!(
            "pool type {} ({}) is not supported yet by this build; use type=0 (TCP)",
            other.code(),
            match other {
                PoolType::Quic => "QUIC",
                PoolType::WebSocket => "WebSocket",
                _ => "HTTP/2",
            }
        ),
    }
}

/// Same IP, with IPv4-mapped IPv6 addresses (from a dual-stack listener) made IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}
