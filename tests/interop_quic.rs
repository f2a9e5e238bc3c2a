//! Wire compatibility of the QUIC pool (type 1) with the reference Go program (NodePass
//! v1.14.0): our client against its server and its client against our server, reverse and
//! forward flow, TCP and UDP through the tunnel, and the fingerprint exchange (a type=1
//! server always runs TLS: tls=0 is upgraded to 1 on both implementations).
//!
//! Runs only when NODEPASS_GO_BIN points at a built reference binary; otherwise each test
//! prints why it is skipped and passes. The binary is never part of this repository.

mod tunnel_support;

use std::time::Duration;

use tunnel_support::interop::{go_bin, start, Impl};
use tunnel_support::*;

const UP: Duration = Duration::from_secs(30);

/// Runs a type=1 pair and checks TCP and UDP through it and the fingerprint exchange.
/// `server_q` / `client_q` are appended to the URLs' queries.
fn check_pair(
    server: Impl,
    client: Impl,
    forward: bool,
    server_q: &str,
    client_q: &str,
    env: &[(&str, &str)],
) {
    let Some(go) = go_bin() else { return };
    let echo = Echo::start();
    let tunnel = free_port();
    let user_port = free_port();
    let (server_target, client_target, mode) = if forward {
        (echo.addr(), format!("127.0.0.1:{user_port}"), 2)
    } else {
        (format!("127.0.0.1:{user_port}"), echo.addr(), 1)
    };
    let srv = start(
        server,
        &go,
        "server",
        &format!(
            "server://interop@127.0.0.1:{tunnel}/{server_target}?type=1&mode={mode}&log=debug{server_q}"
        ),
        env,
    );
    srv.wait_line("server listening", UP, |l| {
        l.contains("Pending tunnel handshake")
    });
    let cli = start(
        client,
        &go,
        "client",
        &format!(
            "client://interop@127.0.0.1:{tunnel}/{client_target}?mode=2&log=debug&min=8{client_q}"
        ),
        env,
    );
    let user = format!("127.0.0.1:{user_port}");
    wait_tunnel(&user, UP, &[&srv, &cli]);
    for p in [&srv, &cli] {
        p.wait_line("fingerprint verified", UP, |l| {
            l.contains("TLS certificate fingerprint verified")
        });
    }
    // TCP: several connections, 1 MiB each way, each on its own QUIC stream.
    for i in 0..8u64 {
        let payload = pattern(1 << 20, i + 100);
        let back = echo_once(&user, &payload, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}\n{}", srv.dump(), cli.dump()));
        assert!(back == payload, "connection {i}: echo differs");
    }
    // UDP: raw datagrams over a stream.
    let sock = wait_udp(&user, UP, &[&srv, &cli]);
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for i in 0..200 {
        let p = format!("interop datagram {i}");
        assert_eq!(
            udp_echo(&sock, &user, p.as_bytes()).expect("udp echo"),
            p.as_bytes()
        );
    }
    // A few health rounds more: no verify deadlock, no mismatch, no restart.
    std::thread::sleep(Duration::from_millis(1500));
    for p in [&srv, &cli] {
        for symptom in [
            "mismatch",
            "outgoingVerify: request timeout",
            "incomingVerify: incomingGet failed",
            "no fingerprint in signal",
            "panicked",
        ] {
            assert_eq!(
                p.count(symptom),
                0,
                "{symptom}\n{}\n{}",
                srv.dump(),
                cli.dump()
            );
        }
    }
}

#[test]
fn our_client_with_go_server_tls0_upgraded() {
    check_pair(Impl::Go, Impl::Ours, false, "&tls=0", "", &[]);
}

#[test]
fn go_client_with_our_server_tls0_upgraded() {
    check_pair(Impl::Ours, Impl::Go, false, "&tls=0", "", &[]);
}

#[test]
fn our_client_with_go_server_tls1() {
    check_pair(Impl::Go, Impl::Ours, false, "&tls=1", "", &[]);
}

#[test]
fn go_client_with_our_server_tls1() {
    check_pair(Impl::Ours, Impl::Go, false, "&tls=1", "", &[]);
}

#[test]
fn forward_flow_both_ways_tls1() {
    check_pair(Impl::Go, Impl::Ours, true, "&tls=1", "", &[]);
    check_pair(Impl::Ours, Impl::Go, true, "&tls=1", "", &[]);
}

/// A CA and a leaf certificate for `tunnel.test` in a temp dir: (dir, ca, crt, key) paths.
fn ca_and_leaf() -> (tempfile::TempDir, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "quic interop CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["tunnel.test".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
        .expect("leaf cert");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let files = [
        (path("ca.pem"), ca.pem()),
        (path("crt.pem"), leaf.pem()),
        (path("key.pem"), leaf_key.serialize_pem()),
    ];
    for (p, text) in &files {
        std::fs::write(p, text).expect("write pem");
    }
    let [(ca_p, _), (crt_p, _), (key_p, _)] = files;
    (dir, ca_p, crt_p, key_p)
}

/// tls=2: the Go client verifies our chain for its `sni` over QUIC, then our fingerprint.
#[test]
fn go_client_with_our_server_tls2() {
    let (_dir, ca, crt, key) = ca_and_leaf();
    check_pair(
        Impl::Ours,
        Impl::Go,
        false,
        &format!("&tls=2&crt={crt}&key={key}"),
        "&sni=tunnel.test",
        &[("SSL_CERT_FILE", ca.as_str())],
    );
}
