//! The TCP pool, type 0 (REFERENCE.md 4.2): every pool entry is its own TCP connection
//! from the client to the server's tunnel port, optionally wrapped in TLS 1.3.
//!
//! Server, per accepted connection: refuse while the pool holds `max` idle entries; drop
//! silently when it comes from another IP than the handshaking client; TLS handshake when
//! tls is 1/2; then write the 4 raw id bytes (the first entry gets `00000000`, the control
//! channel). Client: dial, TLS, read the 4 id bytes (1-minute deadline).
//! Both sides turn on TCP keep-alive with the NP_REPORT_INTERVAL period.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures::future::BoxFuture;
use nodepass_proto::url::HostPort;
use nodepass_proto::wire::PoolId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::tls::{ClientTls, ServerTls};
use super::{canonical_ip, Conn, PoolClient, PoolServer};
use crate::pool::Pool;

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

/// Server side of the TCP pool for one session (the first-id rule is per session).
pub struct TcpPoolServer {
    tls: Option<Arc<ServerTls>>,
    keepalive: Duration,
    first_given: AtomicBool,
}

impl TcpPoolServer {
    pub fn new(tls: Option<Arc<ServerTls>>, keepalive: Duration) -> Arc<Self> {
        Arc::new(TcpPoolServer {
            tls,
            keepalive,
            first_given: AtomicBool::new(false),
        })
    }

    fn next_id(&self) -> PoolId {
        if !self.first_given.swap(true, Ordering::AcqRel) {
            return PoolId::CONTROL;
        }
        PoolId(rand::random())
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
        let mut conn = match &self.tls {
            None => Conn::Tcp(tcp),
            Some(tls) => {
                match tokio::time::timeout(TLS_ACCEPT_TIMEOUT, tls.acceptor().accept(tcp)).await {
                    Ok(Ok(s)) => Conn::Tls(Box::new(tokio_rustls::TlsStream::Server(s))),
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
        let id = self.next_id();
        if pool.contains(id) {
            return;
        }
        if conn.write_all(&id.0).await.is_err() || conn.flush().await.is_err() {
            return;
        }
        if let Err((why, _conn)) = pool.put(id, conn) {
            tracing::debug!("Pool entry {id} from {peer} dropped: {why:?}");
        }
    }
}

impl PoolServer for TcpPoolServer {
    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        pool: Arc<Pool>,
        client_ip: IpAddr,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let client_ip = canonical_ip(client_ip);
        Box::pin(async move {
            loop {
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((tcp, peer)) => {
                        let admit = self.clone().admit(tcp, peer, pool.clone(), client_ip);
                        let cancel = cancel.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = cancel.cancelled() => {}
                                _ = admit => {}
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!("Pool accept failed: {e}");
                        tokio::time::sleep(crate::tunnel::RETRY_PAUSE).await;
                    }
                }
            }
        })
    }
}

/// Client side of the TCP pool.
pub struct TcpPoolClient {
    dns: Arc<crate::dns::Dns>,
    server: HostPort,
    tls: Option<ClientTls>,
    dial_timeout: Duration,
    keepalive: Duration,
}

impl TcpPoolClient {
    pub fn new(
        dns: Arc<crate::dns::Dns>,
        server: HostPort,
        tls: Option<ClientTls>,
        dial_timeout: Duration,
        keepalive: Duration,
    ) -> Self {
        TcpPoolClient {
            dns,
            server,
            tls,
            dial_timeout,
            keepalive,
        }
    }

    async fn open_entry(&self) -> anyhow::Result<(PoolId, Conn)> {
        // Re-resolved per dial, like the reference, so a moved server is followed.
        let addr = self.dns.resolve(&self.server).await?;
        let tcp = tokio::time::timeout(self.dial_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("dial tcp {addr}: i/o timeout"))?
            .with_context(|| format!("dial tcp {addr}"))?;
        keepalive(&tcp, self.keepalive);
        let mut conn = match &self.tls {
            None => Conn::Tcp(tcp),
            Some(tls) => {
                // Bounded: one pool round waits for all its opens, so a server that
                // accepts TCP but never answers TLS must not stall the pool for good.
                let s = tokio::time::timeout(
                    ID_READ_TIMEOUT,
                    tls.connector.connect(tls.server_name.clone(), tcp),
                )
                .await
                .map_err(|_| anyhow!("TLS handshake with {addr} timed out"))?
                .with_context(|| format!("TLS handshake with {addr}"))?;
                Conn::Tls(Box::new(tokio_rustls::TlsStream::Client(s)))
            }
        };
        let mut id = [0u8; 4];
        tokio::time::timeout(ID_READ_TIMEOUT, conn.read_exact(&mut id))
            .await
            .map_err(|_| anyhow!("no pool id from {addr} within a minute"))?
            .with_context(|| format!("reading the pool id from {addr}"))?;
        Ok((PoolId(id), conn))
    }
}

impl PoolClient for TcpPoolClient {
    fn open(&self) -> BoxFuture<'_, anyhow::Result<(PoolId, Conn)>> {
        Box::pin(self.open_entry())
    }
}
