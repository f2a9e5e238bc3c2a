//! Certificates shared by the worker's pool TLS and the master's API TLS: the tls=1
//! self-signed certificate and the tls=2 PEM files.
//!
//! The PEM loader opens the file without blocking, checks with fstat that it is a regular
//! file of at most [`MAX_PEM_FILE`] bytes, and only then reads it: `crt=/dev/zero` would
//! otherwise fill memory, and a FIFO would block start-up until someone wrote to it.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest certificate or key file accepted: a long chain is a few tens of KiB.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// How long the self-signed certificate is valid (as the reference).
const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate chain and its private key, in DER.
pub struct CertPair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Makes a self-signed certificate: ECDSA P-256, 128-bit random serial, O = nodepass,
/// valid one year from now, serverAuth, no subject alternative names (clients of tls=1
/// check the fingerprint, not the name).
pub fn self_signed() -> anyhow::Result<CertPair> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
        KeyUsagePurpose, SerialNumber,
    };
    let key = KeyPair::generate().context("cannot generate the TLS key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "nodepass");
    params.distinguished_name = dn;
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + SELF_SIGNED_VALIDITY).into();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .self_signed(&key)
        .context("cannot make the self-signed certificate")?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow!("cannot use the generated key: {e}"))?;
    Ok(CertPair {
        chain: vec![cert.der().clone()],
        key,
    })
}

/// Reads a small regular file (a PEM certificate or key). `what` names it in errors, e.g.
/// "certificate file (crt=)".
pub fn read_small_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It has no
    // effect on a regular file, the only kind read below.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "the {what} {} is not a regular file; give the path of a PEM file",
            path.display()
        );
    }
    if meta.len() > MAX_PEM_FILE {
        bail!(
            "the {what} {} is {} bytes, more than the {} bytes a PEM file may have",
            path.display(),
            meta.len(),
            MAX_PEM_FILE
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The bound holds even if the file grows after the fstat.
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        bail!(
            "the {what} {} grew past {} bytes while being read",
            path.display(),
            MAX_PEM_FILE
        );
    }
    Ok(bytes)
}

/// Loads a PEM certificate chain (`crt`) and private key (`key`). It does not check that
/// they belong together: the TLS library that uses them does.
pub fn load_pem_pair(crt: &Path, key: &Path) -> anyhow::Result<CertPair> {
    let crt_pem = read_small_file(crt, "certificate file (crt=)")?;
    let key_pem = read_small_file(key, "key file (key=)")?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut crt_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", crt.display()))?;
    if chain.is_empty() {
        bail!(
            "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            crt.display()
        );
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM key file", key.display()))?
        .ok_or_else(|| {
            anyhow!(
                "{} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----)",
                key.display()
            )
        })?;
    Ok(CertPair { chain, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_names_nodepass() {
        let pair = self_signed().expect("self-signed");
        assert_eq!(pair.chain.len(), 1);
        // The organisation is in the DER as a UTF8String or PrintableString.
        let der = pair.chain[0].as_ref();
        assert!(der.windows(8).any(|w| w == b"nodepass"));
    }

    #[test]
    fn a_written_pair_loads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gen = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let (crt, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&crt, gen.cert.pem()).expect("write");
        std::fs::write(&key, gen.signing_key.serialize_pem()).expect("write");
        let pair = load_pem_pair(&crt, &key).expect("load");
        assert_eq!(pair.chain[0].as_ref(), gen.cert.der().as_ref());
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let err = read_small_file(&fifo, "certificate file (crt=)").expect_err("fifo");
        let text = format!("{err:#}");
        assert!(text.contains("is not a regular file"), "{text}");
        assert!(text.contains(&fifo.display().to_string()), "{text}");

        let err = read_small_file(Path::new("/dev/zero"), "key file (key=)").expect_err("dev");
        assert!(format!("{err:#}").contains("/dev/zero is not a regular file"));

        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; 2 * 1024 * 1024]).expect("write");
        let err = read_small_file(&big, "certificate file (crt=)").expect_err("big");
        let text = format!("{err:#}");
        assert!(text.contains("more than the 1048576 bytes"), "{text}");
        assert!(text.contains("big.pem"), "{text}");

        let err = read_small_file(&dir.path().join("absent"), "key file (key=)").expect_err("no");
        assert!(format!("{err:#}").contains("cannot read the key file (key=)"));
    }
}
