//! The API over TLS: `tls=1` (a self-signed certificate made at start) and `tls=2` (the
//! `crt`/`key` files), TLS 1.3 only, read with a real rustls client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use common::TestMaster;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate: the test checks which one was presented itself.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// GET over TLS; returns (protocol version, server certificate, response text).
fn https_get(tm: &TestMaster, path: &str) -> (rustls::ProtocolVersion, Vec<u8>, String) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut sock = TcpStream::connect(tm.api.addr).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let req = format!(
        "GET {}{path} HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {}\r\nConnection: close\r\n\r\n",
        tm.api.base, tm.api.key
    );
    tls.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let version = conn.protocol_version().unwrap();
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    (version, cert, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn self_signed_tls() {
    let tm = TestMaster::start_with(
        "master://127.0.0.1:0/api?log=warn&tls=1",
        PathBuf::from("/nonexistent/nodepass-worker"),
    );
    let (version, _cert, text) = https_get(&tm, "/info");
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"tls\":\"1\""), "{text}");
    // Plain HTTP on the TLS port gets nowhere.
    let mut s = TcpStream::connect(tm.api.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let _ = s.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[test]
fn certificate_files_tls() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let crt_path = dir.path().join("api.crt");
    let key_path = dir.path().join("api.key");
    std::fs::write(&crt_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let tm = TestMaster::start_with(
        &format!(
            "master://127.0.0.1:0/api?log=warn&tls=2&crt={}&key={}",
            crt_path.display(),
            key_path.display()
        ),
        PathBuf::from("/nonexistent/nodepass-worker"),
    );
    let (_, presented, text) = https_get(&tm, "/info");
    assert_eq!(presented, cert.der().to_vec(), "our certificate is served");
    assert!(text.contains("\"tls\":\"2\""), "{text}");
    assert!(
        text.contains(&format!("\"crt\":\"{}\"", crt_path.display())),
        "{text}"
    );
}
