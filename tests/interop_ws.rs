//! Wire compatibility of the WebSocket pool (type 2) with the reference Go program
//! (NodePass v1.14.0): our client against its server and its client against our server,
//! tls 0/1/2, TCP and UDP (datagram boundaries included), reverse and forward flow.
//!
//! Runs only when NODEPASS_GO_BIN points at a built reference binary; otherwise each test
//! prints why it is skipped and passes. The binary is never part of this repository.

mod tunnel_support;

use std::collections::HashSet;
use std::time::Duration;

use tunnel_support::interop::{go_bin, start, Impl};
use tunnel_support::*;

const UP: Duration = Duration::from_secs(30);

/// One interop cell: who plays which role, the flow, and extra URL parts / environment.
struct Cell<'a> {
    server: Impl,
    client: Impl,
    forward: bool,
    /// Appended to the server URL's query (always with `&type=2`).
    server_q: String,
    client_q: String,
    env: Vec<(&'a str, &'a str)>,
}

impl Cell<'_> {
    fn new(server: Impl, client: Impl, tls: u8, forward: bool) -> Self {
        Cell {
            server,
            client,
            forward,
            server_q: format!("&tls={tls}"),
            client_q: String::new(),
            env: Vec::new(),
        }
    }
}

/// Runs a pair over the WebSocket pool and checks TCP, UDP and the verify exchange.
fn check(cell: Cell<'_>) {
    let Some(go) = go_bin() else { return };
    eprintln!(
        "--- server {:?}, client {:?}, forward {}, {}",
        cell.server, cell.client, cell.forward, cell.server_q
    );
    let echo = Echo::start();
    let tunnel = free_port();
    let user_port = free_port();
    let (server_target, client_target, mode) = if cell.forward {
        (echo.addr(), format!("127.0.0.1:{user_port}"), 2)
    } else {
        (format!("127.0.0.1:{user_port}"), echo.addr(), 1)
    };
    let srv = start(
        cell.server,
        &go,
        "server",
        &format!(
            "server://interop@127.0.0.1:{tunnel}/{server_target}?mode={mode}&type=2&log=debug{}",
            cell.server_q
        ),
        &cell.env,
    );
    srv.wait_line("server listening", UP, |l| {
        l.contains("Pending tunnel handshake")
    });
    let cli = start(
        cell.client,
        &go,
        "client",
        &format!(
            "client://interop@127.0.0.1:{tunnel}/{client_target}?mode=2&log=debug&min=8{}",
            cell.client_q
        ),
        &cell.env,
    );
    let user = format!("127.0.0.1:{user_port}");
    wait_tunnel(&user, UP, &[&srv, &cli]);
    let dumps = || format!("{}\n{}", srv.dump(), cli.dump());
    for i in 0..4u64 {
        let payload = pattern(1 << 20, i + 200);
        let back = echo_once(&user, &payload, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", dumps()));
        assert!(back == payload, "connection {i}: echo differs");
    }
    // UDP: every datagram is one WebSocket message each way, so sizes survive even when
    // several are in flight at once.
    let sock = wait_udp(&user, UP, &[&srv, &cli]);
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for round in 0..10usize {
        let sent: Vec<Vec<u8>> = (0..8usize)
            .map(|k| pattern(1 + (round * 8 + k) * 17 % 1400, (round * 8 + k) as u64))
            .collect();
        for d in &sent {
            sock.send_to(d, &user).expect("send");
        }
        let mut want: HashSet<Vec<u8>> = sent.into_iter().collect();
        let mut buf = vec![0u8; 65536];
        while !want.is_empty() {
            let (n, _) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", dumps()));
            assert!(
                want.remove(&buf[..n]),
                "round {round}: a datagram of {n} bytes that was not sent as such\n{}",
                dumps()
            );
        }
    }
    // A few health rounds, then look for the verify deadlock or a fingerprint mismatch.
    std::thread::sleep(Duration::from_millis(1500));
    for p in [&srv, &cli] {
        for symptom in [
            "mismatch",
            "outgoingVerify: request timeout",
            "incomingVerify: incomingGet failed",
            "no fingerprint in signal",
            "panicked",
        ] {
            assert_eq!(p.count(symptom), 0, "{symptom}\n{}", dumps());
        }
    }
    if cell.server_q.contains("tls=1") {
        for p in [&srv, &cli] {
            assert!(
                p.count("TLS certificate fingerprint verified") >= 1,
                "{}",
                dumps()
            );
        }
    }
}

#[test]
fn reverse_tls0_both_ways() {
    check(Cell::new(Impl::Go, Impl::Ours, 0, false));
    check(Cell::new(Impl::Ours, Impl::Go, 0, false));
}

#[test]
fn reverse_tls1_both_ways() {
    check(Cell::new(Impl::Go, Impl::Ours, 1, false));
    check(Cell::new(Impl::Ours, Impl::Go, 1, false));
}

#[test]
fn forward_tls0_and_tls1_both_ways() {
    for tls in [0, 1] {
        check(Cell::new(Impl::Go, Impl::Ours, tls, true));
        check(Cell::new(Impl::Ours, Impl::Go, tls, true));
    }
}

/// A CA and a leaf for `tunnel.test` and 127.0.0.1 (the Go WebSocket client verifies the
/// tunnel host, not the sni): (dir, ca, crt, key).
fn test_pki() -> (tempfile::TempDir, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name.push(DnType::CommonName, "interop CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["tunnel.test".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &Issuer::from_params(&ca, &ca_key))
        .expect("leaf");
    let p = |n: &str| dir.path().join(n).to_string_lossy().to_string();
    let (ca_p, crt_p, key_p) = (p("ca.pem"), p("leaf.pem"), p("leaf.key"));
    std::fs::write(&ca_p, ca_cert.pem()).expect("write");
    std::fs::write(&crt_p, leaf.pem()).expect("write");
    std::fs::write(&key_p, leaf_key.serialize_pem()).expect("write");
    (dir, ca_p, crt_p, key_p)
}

/// tls=2, Go client and our server: the Go client verifies our chain for 127.0.0.1 and
/// our fingerprint; everything works, in both flows.
#[test]
fn go_client_with_our_server_tls2() {
    let (_dir, ca, crt, key) = test_pki();
    for forward in [false, true] {
        check(Cell {
            server_q: format!("&tls=2&crt={crt}&key={key}"),
            client_q: "&sni=tunnel.test".to_string(),
            env: vec![
                ("SSL_CERT_FILE", ca.as_str()),
                ("NP_HANDSHAKE_TIMEOUT", "20s"),
            ],
            ..Cell::new(Impl::Ours, Impl::Go, 2, forward)
        });
    }
}

/// tls=2 with the Go server: it sends no fingerprint and rejects every `verify`
/// (REFERENCE.md 5.4; in reverse flow it logs `outgoingVerify: no local certificate` and
/// restarts), so only forward flow can work; our client verifies the chain.
#[test]
fn our_client_with_go_server_tls2_forward() {
    let (_dir, ca, crt, key) = test_pki();
    check(Cell {
        server_q: format!("&tls=2&crt={crt}&key={key}"),
        client_q: "&sni=tunnel.test".to_string(),
        env: vec![
            ("SSL_CERT_FILE", ca.as_str()),
            ("NP_HANDSHAKE_TIMEOUT", "20s"),
        ],
        ..Cell::new(Impl::Go, Impl::Ours, 2, true)
    });
}
