//! The API over TLS: `tls=1` (a self-signed certificate made at start) and `tls=2` (the
//! `crt`/`key` files), TLS 1.3 only, read with a real rustls client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use crate::common::TestMaster;
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

/// A `crt` that is a FIFO, /dev/zero or a 2 MiB file is refused with an error naming the
/// path (never read: a FIFO would block start-up, /dev/zero would fill memory), and the
/// master starts anyway on a self-signed certificate, as the reference falls back.
#[test]
fn unreadable_certificate_files_are_refused_and_the_master_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("crt.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let big = dir.path().join("big.crt");
    std::fs::write(&big, vec![b'-'; 2 * 1024 * 1024]).unwrap();
    let key = dir.path().join("api.key");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let key = key.display().to_string();
    for (crt, why) in [
        (fifo.display().to_string(), "is not a regular file"),
        ("/dev/zero".to_string(), "is not a regular file"),
        (big.display().to_string(), "more than the 1048576 bytes"),
    ] {
        let err = nodepass_master::tls::load_files(&crt, &key).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(why) && text.contains(&crt), "{crt}: {text}");

        // The whole start, in a thread so a start-up that blocked would fail the test at a
        // generous deadline instead of hanging it.
        let url = format!("master://127.0.0.1:0/api?log=warn&tls=2&crt={crt}&key={key}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let tm = TestMaster::start_with(&url, PathBuf::from("/nonexistent/nodepass-worker"));
            let (_, presented, text) = https_get(&tm, "/info");
            let _ = tx.send((presented, text));
        });
        let (presented, text) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{crt}: the master did not start"));
        assert!(text.starts_with("HTTP/1.1 200"), "{crt}: {text}");
        // The fallback is our self-signed certificate.
        assert!(presented.windows(8).any(|w| w == b"nodepass"), "{crt}");
    }
}
