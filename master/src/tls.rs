//! TLS for the API itself: `tls=1` makes an in-memory self-signed certificate at start
//! (ECDSA P-256, valid one year, as the reference), `tls=2` loads the `crt`/`key` PEM files
//! (on failure the reference logs the error and falls back to a self-signed certificate, and
//! so do we). Both go through the worker's `cert` module, so master and worker make and read
//! certificates the same way (a FIFO or /dev/zero as `crt` is refused, never read). TLS 1.3
//! only; ALPN offers h2 and http/1.1.
//!
//! The handshake itself runs in the connection loop ([`crate::serve`]), in the connection's
//! own task, under its connection limit and handshake timeout.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use nodepass_proto::url::{MasterUrl, TlsMode};
use nodepass_worker::cert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
