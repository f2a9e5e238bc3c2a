//! TLS for the API itself: `tls=1` makes an in-memory self-signed certificate at start
//! (ECDSA P-256, valid one year, as the reference), `tls=2` loads the `crt`/`key` PEM files
//! (on failure the reference logs the error and falls back to a self-signed certificate, and
//! so do we). Both go through the worker's `cert` module, so master and worker make and read
//! certificates the same way (a FIFO or /dev/zero as `crt` is refused, never read). TLS 1.3
//! only; ALPN offers h2 and http/1.1.
//!
//! [`TlsListener`] plugs into `axum::serve`: handshakes run in their own tasks (bounded by a
//! timeout) so one slow client never holds up the accept loop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nodepass_proto::url::{MasterUrl, TlsMode};
use nodepass_worker::cert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The tls=1 certificate (shared with the worker: [`nodepass_worker::cert`]).
fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let pair = cert::self_signed()?;
    Ok((pair.chain, pair.key))
}

/// The tls=2 files, read only if they are small regular files ([`cert::read_small_file`]).
pub fn load_files(
    crt: &str,
    key: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let pair = cert::load_pem_pair(Path::new(crt), Path::new(key))?;
    Ok((pair.chain, pair.key))
}

/// The server configuration for the master URL, or None for plain HTTP.
pub fn server_config(url: &MasterUrl) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let (certs, key) = match url.effective_tls() {
        TlsMode::Off => return Ok(None),
        TlsMode::SelfSigned => self_signed()?,
        TlsMode::Files => {
            let crt = url.crt.clone().unwrap_or_default();
            let key = url.key.clone().unwrap_or_default();
            match load_files(&crt, &key) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::error!(
                        "TLS certificate files unusable ({e:#}); falling back to a self-signed certificate"
                    );
                    self_signed()?
                }
            }
        }
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("The TLS certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

/// Accepts TCP connections and hands over those that completed a TLS handshake.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, cfg: Arc<rustls::ServerConfig>) -> Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(cfg);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait instead of spinning.
                        tracing::warn!("API accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // No Nagle delay, as for plain HTTP (see lib.rs).
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let handoff = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = handoff.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (server shutting down): never yield again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
