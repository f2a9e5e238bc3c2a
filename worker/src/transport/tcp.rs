//! The TCP pool, type 0 (REFERENCE.md 4.2): every pool entry is its own TCP connection
//! from the client to the server's tunnel port, optionally wrapped in TLS 1.3.
//!
//! Server, per accepted connection, by the shared admission rule ([`super::admission`]):
//! closed silently when it comes from another IP than the handshaking client, while the pool
//! holds `max` idle entries, or when it would not become the control channel and no control
//! channel is up; TLS handshake when tls is 1/2 (30 s); with entry proofs (both ends ours)
//! the 16 proof bytes (10 s); then the 4 raw id bytes (the first entry gets `00000000`,
//! the control channel). Client: dial, TLS, the proof when negotiated, read the 4 id bytes
//! (1-minute deadline).
//! Both sides turn on TCP keep-alive with the NP_REPORT_INTERVAL period.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures::future::BoxFuture;
use nodepass_proto::wire::PoolId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsStream;

use super::tls::{ClientTls, ServerTls, TlsSocket};
use super::{
    accept_each, admit_connection, dial_tunnel, leaf_cert_der, move_home, tune_pool_socket,
    Context, Entry, PoolClient, PoolPortAdmission, PoolServer, PoolStream, SessionEdge,
    ID_READ_TIMEOUT,
};
use crate::pool::tcp_peer_closed;

/// How long the server waits for a pool connection's TLS handshake. The reference waits
/// forever; a connection that never completes it would hold a task for nothing.
const TLS_ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

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
        leaf_cert_der(self.get_ref().1.peer_certificates())
    }

    fn rehome(&mut self) -> io::Result<()> {
        self.get_mut().0.rehome()
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
        leaf_cert_der(self.get_ref().1.peer_certificates())
    }
}

/// Server side of the TCP pool.
pub struct TcpServer {
    tls: Option<Arc<ServerTls>>,
    keepalive: Duration,
    /// The client's places (TLS handshake and proof in progress) and everybody else's
    /// (closed at once).
    places: PoolPortAdmission,
}

/// Pool connections of the client's address between accept and enrolment at once (TLS
/// handshake, entry proof). Past this the newcomer is closed; the client opens at most
/// `max` per round.
const MAX_PENDING_CLIENT: usize = 1024;

impl TcpServer {
    pub fn new(ctx: Context) -> Self {
        TcpServer {
            tls: ctx.server_tls,
            keepalive: ctx.tunables.report_interval,
            // Strangers are closed at once, so their table only bounds the moment between
            // accept and close.
            places: PoolPortAdmission::new(MAX_PENDING_CLIENT, 4, 32, Some(Duration::ZERO)),
        }
    }

    /// One connection through the admission steps ([`super::admission`]); the reference
    /// closes every refusal silently, and so does this.
    /// `home`: the runtime the entry is enrolled for, when this runs on the background one
    /// (the entry's socket moves there first).
    async fn admit(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        edge: Arc<SessionEdge>,
        home: Option<tokio::runtime::Handle>,
    ) {
        if let Err(why) = edge.check(peer) {
            tracing::debug!("Pool connection from {peer} refused: {why}");
            return;
        }
        tune_pool_socket(&tcp, self.keepalive);
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
        if let Err(why) = edge.read_proof(&mut entry).await {
            tracing::debug!("Pool connection from {peer} refused: {why}");
            return;
        }
        // The first entry of a session (after the checks) is the control channel.
        let id = match edge.assign() {
            Ok(id) => id,
            Err(why) => {
                tracing::debug!("Pool connection from {peer} refused: {why}");
                return;
            }
        };
        if entry.write_all(&id.0).await.is_err() || entry.flush().await.is_err() {
            return;
        }
        if !move_home(&mut entry, home.as_ref(), peer) {
            return;
        }
        edge.enroll(id, entry, peer, "TCP pool");
    }
}

impl PoolServer for TcpServer {
    fn serve(
        self: Arc<Self>,
        tunnel: Arc<TcpListener>,
        edge: Arc<SessionEdge>,
    ) -> BoxFuture<'static, ()> {
        let cancel = edge.cancel.clone();
        Box::pin(accept_each(tunnel, cancel, move |tcp, peer| {
            // A replacement's TLS handshake, proof and id run at a low priority.
            let (me, e) = (self.clone(), edge.clone());
            admit_connection(
                &edge,
                &self.places,
                "TCP pool",
                tcp,
                peer,
                move |tcp, home| me.admit(tcp, peer, e, home),
            )
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
        let (addr, tcp) = dial_tunnel(&self.ctx).await?;
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
        if let Some(proof) = &self.ctx.proof {
            // Our server: the entry proves the key before it gets an id.
            entry
                .write_all(&proof.bytes())
                .await
                .with_context(|| format!("sending the entry proof to {addr}"))?;
            entry.flush().await.ok();
        }
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

    /// Two: one at a time fell behind steady users at tls=1 (a resumed handshake waits for
    /// a low-priority thread at each end): the pool sank to half and 14-20 % of the
    /// replacements were made in the foreground, on the users' threads; two at a time keep
    /// up (2.5 %). Each open takes one TLS ticket and brings one back, and the client keeps
    /// eight per server, so two at once still resume (benches/RESULTS.md).
    fn background_opens(&self) -> usize {
        2
    }
}
