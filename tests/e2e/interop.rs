//! Wire compatibility with the reference Go program (NodePass v1.14.0), as one matrix over
//! the four pool types (0 TCP, 1 QUIC, 2 WebSocket, 3 HTTP/2): our client against its
//! server and its client against our server, tls 0 and 1 in reverse and forward flow, and
//! tls=2 with a test CA as far as the reference's own defect allows. Each cell moves TCP
//! (1 MiB each way on several connections) and UDP (datagrams of many sizes, several in
//! flight, each arriving whole) through the pair and checks the verify exchange.
//!
//! Runs only when NODEPASS_GO_BIN names a built reference binary (`.ci/run` builds one from
//! ../shared/tools/go-nodepass); otherwise each test prints why it is skipped and passes.

use std::collections::HashSet;
use std::time::Duration;

use nodepass_testkit::go::Impl;
use nodepass_testkit::pair::Pair;
use nodepass_testkit::pair::{Spec, UP};
use nodepass_testkit::{echo_once, pattern, udp_echo, wait_udp};

/// What the reference's logs (and ours) say when the verify exchange went wrong: the
/// deadlock of both sides naming the same entry, or a fingerprint mismatch.
const SYMPTOMS: &[&str] = &[
    "mismatch",
    "outgoingVerify: request timeout",
    "incomingVerify: incomingGet failed",
    "no fingerprint in signal",
    "panicked",
];

/// Starts the pair of `spec` and checks TCP, UDP and the verify exchange through it.
fn check(spec: Spec) {
    let spec = spec.client_q("&min=8");
    let Some(pair) = spec.try_start() else { return };
    let users = &pair.users;
    // TCP: several connections, 1 MiB each way. No half-close before reading: the
    // reference's TLS relay turns a half-close into a full close.
    for i in 0..4u64 {
        let payload = pattern(1 << 20, i + 100);
        let back = echo_once(users, &payload, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", pair.dumps()));
        assert!(back == payload, "connection {i}: echo differs");
    }
    let sock = wait_udp(users, UP, &[&pair.server, &pair.client]);
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    if spec.pool_type == 2 {
        // WebSocket: every datagram is one message each way, so sizes survive even with
        // several in flight at once.
        udp_burst(&sock, users, &pair);
    } else {
        // The reference's stream pools carry a datagram as raw bytes on a stream: one at
        // a time, each answer read before the next is sent.
        for i in 0..200 {
            let p = format!("interop datagram {i}");
            let back = udp_echo(&sock, users, p.as_bytes())
                .unwrap_or_else(|e| panic!("datagram {i}: {e}\n{}", pair.dumps()));
            assert_eq!(back, p.as_bytes());
        }
    }
    // A few health rounds more, then the symptoms. Plain restarts are not counted: the
    // reference server closes its HTTP server as soon as its handler accepted the
    // handshake, racing the flush of its own answer, and a client that then sees EOF
    // retries until the server gives up on its pool and restarts.
    std::thread::sleep(Duration::from_millis(1500));
    for p in [&pair.server, &pair.client] {
        for symptom in SYMPTOMS {
            assert_eq!(p.count(symptom), 0, "{symptom}\n{}", pair.dumps());
        }
    }
    if spec.verifies_fingerprint() {
        for p in [&pair.server, &pair.client] {
            p.wait_line("the fingerprint verified", UP, |l| {
                l.contains("TLS certificate fingerprint verified")
            });
        }
    }
}

/// Ten rounds of eight datagrams of different sizes sent at once; each must come back
/// whole.
fn udp_burst(sock: &std::net::UdpSocket, users: &str, pair: &Pair) {
    for round in 0..10usize {
        let sent: Vec<Vec<u8>> = (0..8usize)
            .map(|k| pattern(1 + (round * 8 + k) * 17 % 1400, (round * 8 + k) as u64))
            .collect();
        for d in &sent {
            sock.send_to(d, users).expect("send");
        }
        let mut want: HashSet<Vec<u8>> = sent.into_iter().collect();
        let mut buf = vec![0u8; 65536];
        while !want.is_empty() {
            let (n, _) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", pair.dumps()));
            assert!(
                want.remove(&buf[..n]),
                "round {round}: a datagram of {n} bytes that was not sent as such\n{}",
                pair.dumps()
            );
        }
    }
}

/// tls 0 and 1, both pairings, in one flow.
fn matrix(pool_type: u8, forward: bool) {
    for tls in [0, 1] {
        for (server, client) in [(Impl::Go, Impl::Ours), (Impl::Ours, Impl::Go)] {
            check(
                Spec::new(pool_type, tls)
                    .sides(server, client)
                    .forward(forward),
            );
        }
    }
}

/// tls=2 with a test CA: the Go client verifies our CA-signed certificate and then our
/// fingerprint, in both flows. The Go server sends no fingerprint and rejects every
/// `verify` (REFERENCE.md 5.4), so against it only forward flow can work (it does not need
/// ours there), and our client accepts the chain it verified during TLS.
fn tls2(pool_type: u8) {
    for forward in [false, true] {
        check(
            Spec::new(pool_type, 2)
                .sides(Impl::Ours, Impl::Go)
                .forward(forward),
        );
    }
    check(
        Spec::new(pool_type, 2)
            .sides(Impl::Go, Impl::Ours)
            .forward(true),
    );
}

macro_rules! pool_type {
    ($name:ident, $ty:expr) => {
        mod $name {
            #[test]
            fn reverse_tls0_tls1_both_pairings() {
                super::matrix($ty, false);
            }
            #[test]
            fn forward_tls0_tls1_both_pairings() {
                super::matrix($ty, true);
            }
            #[test]
            fn tls2_with_a_test_ca() {
                super::tls2($ty);
            }
        }
    };
}

pool_type!(tcp, 0);
pool_type!(quic, 1);
pool_type!(ws, 2);
pool_type!(h2, 3);
