//! TLS for pool connections (REFERENCE.md 1 `tls`, 4.2): TLS 1.3 only, ring provider, no
//! ALPN.
//!
//! - Server tls=1: a self-signed certificate made once per process (ECDSA P-256, 128-bit
//!   random serial, O = nodepass, valid one year, serverAuth, no SAN; crate::cert), as the
//!   reference's cert library makes it.
//! - Server tls=2: certificate chain and key from the `crt`/`key` PEM files, re-read on the
//!   first handshake after NP_RELOAD_INTERVAL (a failed re-read keeps the old pair and logs
//!   why). Unlike the reference, which silently falls back to tls=1, files that cannot be
//!   loaded at start are a fatal error: the user asked for that certificate.
//! - Client tls=1: encrypts without verifying the server (the fingerprint exchange on the
//!   control channel is the check) and sends no SNI. tls=2: verifies the chain against the
//!   system trust store (honouring SSL_CERT_FILE / SSL_CERT_DIR) for the `sni` name.
//! - [`TlsSocket`]: the TCP socket under a pool entry's TLS session, with a read-ahead
//!   buffer. rustls asks its socket for at most 4 KiB at a time, so a 16 KiB record cost
//!   four or five read(2) calls; the read-ahead takes what the kernel has in one call and
//!   exists only while bytes are arriving in bulk.
//! - Cipher suites: AES-128-GCM first (then AES-256-GCM, ChaCha20), as Go orders them on
//!   CPUs with AES instructions: ten AES rounds instead of fourteen per block, and a
//!   SHA-256 key schedule instead of SHA-384 for each pool entry's handshake.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use nodepass_proto::url::TlsMode;
use nodepass_proto::wire::cert_fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut p = rustls::crypto::ring::default_provider();
    // Stable: only the AES-128-GCM suites move ahead (see the module comment).
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

/// The server's TLS setup for the life of the process.
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    certs: Arc<CertSource>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Builds the server side for `mode` (None for tls=0).
    pub fn new(
        mode: TlsMode,
        crt: Option<&str>,
        key: Option<&str>,
        reload: Duration,
    ) -> anyhow::Result<Option<Arc<ServerTls>>> {
        let certs = match mode {
            TlsMode::Off => return Ok(None),
            TlsMode::SelfSigned => CertSource::fixed(self_signed()?),
            TlsMode::Files => {
                let (crt, key) = match (crt, key) {
                    (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => (c, k),
                    _ => anyhow::bail!(
                        "tls=2 needs both crt= and key= (paths of PEM files); use tls=1 for a self-signed certificate"
                    ),
                };
                CertSource::files(PathBuf::from(crt), PathBuf::from(key), reload)?
            }
        };
        let certs = Arc::new(certs);
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is unavailable in the crypto provider")?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        // tls=1: one ticket per handshake, so that the client's next pool entry resumes
        // (PSK with a fresh X25519 exchange) instead of a full handshake: no certificate
        // signature to make or check. Every fresh user connection takes an entry and the
        // client replaces it at once on the same cores, so this is on the latency path.
        // The certificate never changes in a process, and a restarted server has a new
        // certificate and an empty session cache, so a ticket never outlives its
        // certificate; a resumed client session keeps the certificate it was first shown
        // for the fingerprint exchange. tls=2 sends none: its certificate can be reloaded
        // from files, and a resumed session would show the client the old one.
        config.send_tls13_tickets = match mode {
            TlsMode::SelfSigned => 1,
            _ => 0,
        };
        Ok(Some(Arc::new(ServerTls {
            config: Arc::new(config),
            certs,
        })))
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// An acceptor that offers the ALPN `protocols` (same certificate source, so tls=2
    /// reloads still apply). Build it once per transport, not per connection.
    pub fn acceptor_with_alpn(&self, protocols: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// Fingerprint of the certificate currently served (for the `verify` signal).
    pub fn fingerprint(&self) -> String {
        let current = self.certs.current();
        current
            .cert
            .first()
            .map(|c| cert_fingerprint(c.as_ref()))
            .unwrap_or_default()
    }

    /// Subject summary for the start-up log.
    pub fn describe(&self) -> String {
        match &self.certs.files {
            None => "self-signed certificate (tls=1)".to_string(),
            Some(f) => format!(
                "certificate {} with key {} (tls=2)",
                f.crt.display(),
                f.key.display()
            ),
        }
    }
}

/// Makes the tls=1 certificate ([`crate::cert::self_signed`]) ready to serve.
fn self_signed() -> anyhow::Result<Arc<CertifiedKey>> {
    let pair = crate::cert::self_signed()?;
    let signing = provider()
        .key_provider
        .load_private_key(pair.key)
        .context("cannot load the generated key")?;
    Ok(Arc::new(CertifiedKey::new(pair.chain, signing)))
}

struct CertFiles {
    crt: PathBuf,
    key: PathBuf,
    reload: Duration,
}

/// The certificate being served, reloadable for tls=2.
struct CertSource {
    current: RwLock<(Arc<CertifiedKey>, Instant)>,
    files: Option<CertFiles>,
}

impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertSource")
    }
}

impl CertSource {
    fn fixed(ck: Arc<CertifiedKey>) -> Self {
        CertSource {
            current: RwLock::new((ck, Instant::now())),
            files: None,
        }
    }

    fn files(crt: PathBuf, key: PathBuf, reload: Duration) -> anyhow::Result<Self> {
        let ck = load_pair(&crt, &key)?;
        Ok(CertSource {
            current: RwLock::new((ck, Instant::now())),
            files: Some(CertFiles { crt, key, reload }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Re-reads the files when the reload interval has passed (at most once per interval,
    /// also when the re-read fails).
    fn maybe_reload(&self) {
        let Some(files) = &self.files else { return };
        let due = {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            cur.1.elapsed() >= files.reload
        };
        if !due {
            return;
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.1.elapsed() < files.reload {
            return; // another handshake reloaded it meanwhile
        }
        cur.1 = Instant::now();
        match load_pair(&files.crt, &files.key) {
            Ok(ck) => {
                cur.0 = ck;
                tracing::info!("TLS certificate reloaded from {}", files.crt.display());
            }
            Err(e) => tracing::error!("TLS certificate reload failed, keeping the old one: {e:#}"),
        }
    }
}

impl ResolvesServerCert for CertSource {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        Some(self.current())
    }
}

/// Loads a PEM certificate chain and private key ([`crate::cert::load_pem_pair`]) and
/// checks that they belong together.
pub fn load_pair(crt: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let crate::cert::CertPair {
        chain,
        key: key_der,
    } = crate::cert::load_pem_pair(crt, key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .with_context(|| format!("the key in {} is not usable", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().with_context(|| {
        format!(
            "the key in {} does not belong to the certificate in {}",
            key.display(),
            crt.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// The client side: a connector and the server name to present.
#[derive(Clone)]
pub struct ClientTls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// tls=1: no verification, no SNI. tls=2: verify for `sni`. tls=0: None.
    pub fn new(mode: TlsMode, sni: &str) -> anyhow::Result<Option<ClientTls>> {
        Self::with_alpn(mode, sni, &[])
    }

    /// Like [`new`](Self::new), offering the ALPN `protocols`.
    pub fn with_alpn(
        mode: TlsMode,
        sni: &str,
        protocols: &[&[u8]],
    ) -> anyhow::Result<Option<ClientTls>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is unavailable in the crypto provider")?;
        let (config, name) = match mode {
            TlsMode::Off => return Ok(None),
            TlsMode::SelfSigned => {
                let mut c = builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
                    .with_no_client_auth();
                c.enable_sni = false;
                // Any syntactically valid name: it is neither sent nor checked.
                (c, ServerName::try_from("nodepass.invalid")?.to_owned())
            }
            TlsMode::Files => {
                let roots = system_roots();
                let c = builder.with_root_certificates(roots).with_no_client_auth();
                let name = ServerName::try_from(sni.to_string())
                    .map_err(|e| anyhow!("sni={sni:?} is not a valid TLS server name: {e}"))?;
                (c, name)
            }
        };
        let mut config = config;
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Ok(Some(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: name,
        }))
    }

    /// Verified TLS for `host` (the handshake over port 443).
    pub fn verified(host: &str) -> anyhow::Result<ClientTls> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS is unavailable in the crypto provider")?
            .with_root_certificates(system_roots())
            .with_no_client_auth();
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(host.to_string())
                .map_err(|e| anyhow!("{host:?} is not a valid TLS server name: {e}"))?,
        })
    }
}

/// How much [`TlsSocket`] reads ahead: four full TLS records.
const READ_AHEAD: usize = 64 * 1024;

/// The TCP socket a TLS session runs on, reading ahead for it (see the module comment).
/// Writes go straight through (rustls already hands over all its records in one writev).
pub struct TlsSocket {
    tcp: TcpStream,
    /// Bytes read from the socket and not yet handed to rustls: `ahead[pos..len]`. Only
    /// allocated while bytes are arriving; dropped when drained and the socket is empty.
    ahead: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
    /// Set when a direct read filled what rustls asked for (more is likely waiting);
    /// cleared when the socket runs dry. Only then is the read-ahead buffer used, so small
    /// messages (a signal, a request) cost no allocation.
    bulk: bool,
}

impl TlsSocket {
    pub fn new(tcp: TcpStream) -> Self {
        TlsSocket {
            tcp,
            ahead: None,
            pos: 0,
            len: 0,
            bulk: false,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Moves the socket to the current runtime's reactor (see
    /// [`crate::background::rehome_tcp`]); bytes read ahead stay.
    pub fn rehome(&mut self) -> io::Result<()> {
        crate::background::rehome_tcp(&mut self.tcp)
    }

    /// True while bytes that were read ahead wait for rustls.
    pub fn has_buffered(&self) -> bool {
        self.pos < self.len
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pos >= me.len {
            if !me.bulk || buf.remaining() >= READ_AHEAD {
                let asked = buf.remaining();
                let before = buf.filled().len();
                let r = Pin::new(&mut me.tcp).poll_read(cx, buf);
                me.bulk = match &r {
                    Poll::Ready(Ok(())) => asked > 0 && buf.filled().len() - before == asked,
                    _ => false,
                };
                return r;
            }
            let ahead = me
                .ahead
                .get_or_insert_with(|| vec![0u8; READ_AHEAD].into_boxed_slice());
            let mut rb = ReadBuf::new(ahead);
            match Pin::new(&mut me.tcp).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    me.ahead = None;
                    me.bulk = false;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    me.ahead = None;
                    me.bulk = false;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {
                    me.pos = 0;
                    me.len = rb.filled().len();
                    if me.len == 0 {
                        me.ahead = None;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
        let Some(ahead) = &me.ahead else {
            return Poll::Ready(Err(io::Error::other("read-ahead buffer missing")));
        };
        let n = buf.remaining().min(me.len - me.pos);
        buf.put_slice(&ahead[me.pos..me.pos + n]);
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The system trust store (with SSL_CERT_FILE / SSL_CERT_DIR honoured).
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!("trust store: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no trusted CA certificates found ({ignored} unusable); tls=2 verification will fail"
        );
    }
    roots
}

/// tls=1 client: accept any certificate but still check the handshake signature, so the
/// peer must hold the key of the certificate it shows (whose fingerprint is then compared
/// on the control channel).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_has_a_fingerprint() {
        let tls = ServerTls::new(TlsMode::SelfSigned, None, None, Duration::from_secs(3600))
            .expect("tls=1 setup")
            .expect("some");
        let fp = tls.fingerprint();
        assert!(fp.starts_with("sha256:"), "{fp}");
        assert_eq!(fp.len(), "sha256:".len() + 95);
    }

    #[test]
    fn missing_or_bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let crt = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        let err = ServerTls::new(
            TlsMode::Files,
            crt.to_str(),
            key.to_str(),
            Duration::from_secs(1),
        )
        .expect_err("missing files");
        assert!(format!("{err:#}").contains("cannot read the certificate file"));
        std::fs::write(&crt, "not pem").expect("write");
        std::fs::write(&key, "not pem").expect("write");
        let err = ServerTls::new(
            TlsMode::Files,
            crt.to_str(),
            key.to_str(),
            Duration::from_secs(1),
        )
        .expect_err("bad files");
        assert!(
            format!("{err:#}").contains("holds no PEM certificate"),
            "{err:#}"
        );
        let err = ServerTls::new(TlsMode::Files, None, None, Duration::from_secs(1))
            .expect_err("no paths");
        assert!(format!("{err:#}").contains("needs both crt= and key="));
    }
}
