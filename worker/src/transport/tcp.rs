//! The TCP pool, type 0 (REFERENCE.md 4.2): every pool entry is its own TCP connection
//! from the client to the server's tunnel port, optionally wrapped in TLS 1.3.
//!
//! Server, per accepted connection: refuse while the pool holds `max` idle entries; drop
//! silently when it comes from another IP than the handshaking client, or when it would
//! not become the control channel and no control channel is up; TLS handshake when
//! tls is 1/2; then write the 4 raw id bytes (the first entry gets `00000000`, the control
//! channel). Client: dial, TLS, read the 4 id bytes (1-minute deadline).
//! Both sides turn on TCP keep-alive with the NP_REPORT_INTERVAL period.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures::future::BoxFuture;
use nodepass_proto::wire::PoolId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsStream;
use tokio_util::sync::CancellationToken;

use super::tls::{ClientTls, ServerTls, TlsSocket};
use super::{accept_each, canonical_ip, Context, Entry, PoolClient, PoolServer, PoolStream};
use crate::pool::{tcp_peer_closed, Pool};

/// How long the client waits for the server to send an entry's id.
const ID_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server waits for a pool connection's TLS handshake. The reference waits
/// forever; a connection that never completes it would hold a task for nothing.
const TLS_ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

fn keepalive(s: &TcpStream, period: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(period)
        .with_interval(period);
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
    let _ = s.set_nodelay(true);
}

/// A tls 1/2 entry: TLS 1.3 over its own TCP socket (read ahead, see [`TlsSocket`]).
impl PoolStream for TlsStream<TlsSocket> {
    fn peer_closed(&mut self) -> bool {
        let socket = self.get_ref().0;
        !socket.has_buffered() && tcp_peer_closed(socket.tcp())
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.tcp().peer_addr()
    }

    fn peer_cert_der(&self) -> Option<Vec<u8>> {
        self.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
    }
}

/// TLS 1.3 over a bare TCP socket (for transports that wrap their own sockets).
impl PoolStream for TlsStream<TcpStream> {
    fn peer_closed(&mut self) -> bool {
        tcp_peer_closed(self.get_ref().0)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.peer_addr()
    }

    fn peer_cert_der(&self) -> Option<Vec<u8>> {
        self.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
    }
}

/// Server side of the TCP pool.
pub struct TcpServer {
    tls: Option<Arc<ServerTls>>,
    keepalive: Duration,
}

impl TcpServer {
    pub fn new(ctx: Context) -> Self {
        TcpServer {
            tls: ctx.server_tls,
            keepalive: ctx.tunables.report_interval,
        }
    }

    async fn admit(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        pool: Arc<Pool>,
        client_ip: IpAddr,
    ) {
        if pool.active() >= pool.max() {
            tracing::debug!("Pool full: refusing {peer}");
            return;
        }
        keepalive(&tcp, self.keepalive);
        if canonical_ip(peer.ip()) != client_ip {
            tracing::debug!(
                "Pool connection from {peer} refused: not the handshaking client {client_ip}"
            );
            return;
        }
        if !pool.admits() {
            tracing::debug!("Pool connection from {peer} refused: no control channel is up");
            return;
        }
        let mut entry = match &self.tls {
            None => Entry::Tcp(tcp),
            Some(tls) => {
                match tokio::time::timeout(
                    TLS_ACCEPT_TIMEOUT,
                    tls.acceptor().accept(TlsSocket::new(tcp)),
                )
                .await
                {
                    Ok(Ok(s)) => Entry::Stream(Box::new(TlsStream::Server(s))),
                    Ok(Err(e)) => {
                        tracing::debug!("Pool TLS handshake with {peer} failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("Pool TLS handshake with {peer} timed out");
                        return;
                    }
                }
            }
        };
        // The first entry of a session (after the checks) is the control channel.
        let Some(id) = pool.assign_id() else {
            tracing::debug!("Pool connection from {peer} refused: no control channel is up");
            return;
        };
        if pool.contains(id) {
            return;
        }
        if entry.write_all(&id.0).await.is_err() || entry.flush().await.is_err() {
            return;
        }
        if let Err((why, _entry)) = pool.put(id, entry) {
            tracing::debug!("Pool entry {id} from {peer} dropped: {why:?}");
        }
    }
}

impl PoolServer for TcpServer {
    fn serve(
        self: Arc<Self>,
        tunnel: TcpListener,
        pool: Arc<Pool>,
        client_ip: IpAddr,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let client_ip = canonical_ip(client_ip);
        Box::pin(accept_each(tunnel, cancel, move |tcp, peer| {
            Some(self.clone().admit(tcp, peer, pool.clone(), client_ip))
        }))
    }
}

/// Client side of the TCP pool.
pub struct TcpClient {
    ctx: Context,
    tls: Option<ClientTls>,
}

impl TcpClient {
    pub fn new(ctx: Context) -> anyhow::Result<Self> {
        let tls = ClientTls::new(ctx.tls, &ctx.sni)?;
        Ok(TcpClient { ctx, tls })
    }

    async fn open_entry(&self) -> anyhow::Result<(PoolId, Entry)> {
        let t = &self.ctx.tunables;
        // Re-resolved per dial, like the reference, so a moved server is followed.
        let addr = self.ctx.dns.resolve(&self.ctx.tunnel).await?;
        let tcp = tokio::time::timeout(t.tcp_dial_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("dial tcp {addr}: i/o timeout"))?
            .with_context(|| format!("dial tcp {addr}"))?;
        keepalive(&tcp, t.report_interval);
        let mut entry = match &self.tls {
            None => Entry::Tcp(tcp),
            Some(tls) => {
                // Bounded: one pool round waits for all its opens, so a server that
                // accepts TCP but never answers TLS must not stall the pool for good.
                let s = tokio::time::timeout(
                    ID_READ_TIMEOUT,
                    tls.connector
                        .connect(tls.server_name.clone(), TlsSocket::new(tcp)),
                )
                .await
                .map_err(|_| anyhow!("TLS handshake with {addr} timed out"))?
                .with_context(|| format!("TLS handshake with {addr}"))?;
                Entry::Stream(Box::new(TlsStream::Client(s)))
            }
        };
        let mut id = [0u8; 4];
        tokio::time::timeout(ID_READ_TIMEOUT, entry.read_exact(&mut id))
            .await
            .map_err(|_| anyhow!("no pool id from {addr} within a minute"))?
            .with_context(|| format!("reading the pool id from {addr}"))?;
        Ok((PoolId(id), entry))
    }
}

impl PoolClient for TcpClient {
    fn open(&self) -> BoxFuture<'_, anyhow::Result<(PoolId, Entry)>> {
        Box::pin(self.open_entry())
    }
}
