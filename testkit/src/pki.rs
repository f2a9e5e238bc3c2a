//! A test PKI on disk: a CA and a leaf it signed, for the tls=2 tests (ours and the Go
//! reference verify the chain through `SSL_CERT_FILE`).

/// A CA and a leaf for `tunnel.test` and 127.0.0.1 (the Go WebSocket client verifies the
/// tunnel host, the others the `sni`), written as PEM files to a temporary directory that
/// lives as long as this value.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA certificate's file.
    pub ca: String,
    /// The leaf certificate's file.
    pub crt: String,
    /// The leaf's private key file.
    pub key: String,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().expect("temp dir for the test PKI");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "nodepass test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["tunnel.test".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params")
            .signed_by(&leaf_key, &Issuer::from_params(&ca, &ca_key))
            .expect("leaf certificate");
        let path = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let pki = Pki {
            ca: path("ca.pem"),
            crt: path("leaf.pem"),
            key: path("leaf.key"),
            _dir: dir,
        };
        std::fs::write(&pki.ca, ca_cert.pem()).expect("write the CA");
        std::fs::write(&pki.crt, leaf.pem()).expect("write the leaf");
        std::fs::write(&pki.key, leaf_key.serialize_pem()).expect("write the key");
        pki
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
