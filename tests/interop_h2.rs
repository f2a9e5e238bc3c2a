//! HTTP/2 pool (type 3) against the reference Go program (NodePass v1.14.0): our server
//! with its client and its server with our client, tls 0 (which both sides run as tls 1
//! for this type), 1 and 2, TCP and UDP, reverse flow and forward flow.
//!
//! Runs only when NODEPASS_GO_BIN names the reference binary; otherwise each test prints
//! why it is skipped and passes.

mod tunnel_support;

use std::time::Duration;

use tunnel_support::interop::{go_bin, start, Impl};
use tunnel_support::*;

const UP: Duration = Duration::from_secs(30);

/// One cell of the matrix.
struct Cell {
    server: Impl,
    client: Impl,
    forward: bool,
    tls: u8,
}

/// Starts the pair of `cell` over type 3, moves TCP and UDP through it, and checks that
/// the fingerprint exchange ran without the verify symptoms.
fn run(cell: Cell) {
    let Some(go) = go_bin() else { return };
    let echo = Echo::start();
    let tunnel = free_port();
    let user_port = free_port();
    let user = format!("127.0.0.1:{user_port}");
    let (server_target, client_target, mode) = if cell.forward {
        (echo.addr(), user.clone(), 2)
    } else {
        (user.clone(), echo.addr(), 1)
    };
    let pki = (cell.tls == 2).then(TestPki::new);
    let (server_tls, client_sni, env): (String, &str, Vec<(&str, &str)>) = match &pki {
        Some(p) => (
            format!("&tls=2&crt={}&key={}", p.crt, p.key),
            "&sni=tunnel.test",
            vec![
                ("SSL_CERT_FILE", p.ca.as_str()),
                ("NP_HANDSHAKE_TIMEOUT", "20s"),
            ],
        ),
        None => (format!("&tls={}", cell.tls), "", Vec::new()),
    };
    let server = start(
        cell.server,
        &go,
        "server",
        &format!(
            "server://h2interop@127.0.0.1:{tunnel}/{server_target}?type=3&mode={mode}&log=debug{server_tls}"
        ),
        &env,
    );
    server.wait_line("the handshake wait", UP, |l| {
        l.contains("Pending tunnel handshake")
    });
    let client = start(
        cell.client,
        &go,
        "client",
        &format!(
            "client://h2interop@127.0.0.1:{tunnel}/{client_target}?mode=2&log=debug&min=8{client_sni}"
        ),
        &env,
    );
    wait_tunnel(&user, UP, &[&server, &client]);
    // No half-close before reading: the reference turns one into a full close.
    for i in 0..4u64 {
        let payload = pattern(1 << 20, 300 + i);
        let back = echo_once(&user, &payload, Duration::from_secs(15)).unwrap_or_else(|e| {
            panic!("connection {i}: {e}\n{}\n{}", server.dump(), client.dump())
        });
        assert!(back == payload, "connection {i}: the echo differs");
    }
    let sock = wait_udp(&user, UP, &[&server, &client]);
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for i in 0..100 {
        let p = format!("h2 datagram {i}");
        let back = udp_echo(&sock, &user, p.as_bytes())
            .unwrap_or_else(|e| panic!("datagram {i}: {e}\n{}\n{}", server.dump(), client.dump()));
        assert_eq!(back, p.as_bytes());
    }
    // A few health rounds, then look for verify trouble on either side.
    std::thread::sleep(Duration::from_millis(1500));
    for p in [&server, &client] {
        for symptom in [
            "mismatch",
            "no fingerprint in signal",
            "incomingVerify: incomingGet failed",
        ] {
            assert_eq!(
                p.count(symptom),
                0,
                "{symptom}\n{}\n{}",
                server.dump(),
                client.dump()
            );
        }
    }
    if cell.tls != 2 {
        // Type 3 always runs TLS, so the exchange runs even with tls=0 in the URL.
        for p in [&server, &client] {
            assert!(
                p.count("TLS certificate fingerprint verified") >= 1,
                "{}",
                p.dump()
            );
        }
    }
}

/// A CA and a leaf for `tunnel.test` in a temp dir.
struct TestPki {
    _dir: tempfile::TempDir,
    ca: String,
    crt: String,
    key: String,
}

impl TestPki {
    fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "h2 interop CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["tunnel.test".to_string()])
            .expect("leaf params")
            .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
            .expect("leaf cert");
        let path = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let pki = TestPki {
            ca: path("ca.pem"),
            crt: path("leaf.pem"),
            key: path("leaf.key"),
            _dir: dir,
        };
        std::fs::write(&pki.ca, ca.pem()).expect("write CA");
        std::fs::write(&pki.crt, leaf.pem()).expect("write leaf");
        std::fs::write(&pki.key, leaf_key.serialize_pem()).expect("write key");
        pki
    }
}

#[test]
fn h2_go_client_our_server_reverse_tls0_and_tls1() {
    for tls in [0, 1] {
        run(Cell {
            server: Impl::Ours,
            client: Impl::Go,
            forward: false,
            tls,
        });
    }
}

#[test]
fn h2_our_client_go_server_reverse_tls0_and_tls1() {
    for tls in [0, 1] {
        run(Cell {
            server: Impl::Go,
            client: Impl::Ours,
            forward: false,
            tls,
        });
    }
}

#[test]
fn h2_forward_flow_both_ways_tls1() {
    run(Cell {
        server: Impl::Ours,
        client: Impl::Go,
        forward: true,
        tls: 1,
    });
    run(Cell {
        server: Impl::Go,
        client: Impl::Ours,
        forward: true,
        tls: 1,
    });
}

/// tls=2: the Go client verifies our CA-signed certificate over ALPN h2 and our
/// fingerprint; the reverse cell against a Go server cannot work (REFERENCE.md 5.4: it
/// sends no fingerprint and rejects every `verify`), its forward cell does.
#[test]
fn h2_tls2_with_a_test_ca() {
    run(Cell {
        server: Impl::Ours,
        client: Impl::Go,
        forward: false,
        tls: 2,
    });
    run(Cell {
        server: Impl::Go,
        client: Impl::Ours,
        forward: true,
        tls: 2,
    });
}
