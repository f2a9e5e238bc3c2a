//! End-to-end tunnels with the built binary: a server and a client as child processes on
//! loopback, real echo targets, real traffic. Reverse and forward modes, tls 0/1/2 (tls=2
//! with a CA and leaf made here by rcgen), single-end forwarding, a 64 MiB transfer with a
//! checksum, 10k UDP datagrams, 200 concurrent connections, half-close, and the report
//! lines a master reads.
//!
//! Every dual-end test runs once per pool type (the kit's `pair::POOL_TYPES`, through
//! `each_type`); a new transport joins the suite by adding its `type` number there.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use nodepass_testkit::pair::{each_type, Spec};
use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);

/// 64-bit checksum over the stream, cheap enough for a debug build.
#[derive(Default)]
struct Sum(u64, u64);

impl Sum {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            self.1 = self.1.wrapping_add(self.0);
        }
    }
}

#[test]
fn reverse_tls0_carries_64_mib_with_checksum() {
    each_type(|ty| {
        let pair = Spec::new(ty, 0).worker().start();
        const TOTAL: usize = 64 << 20;
        let mut s = TcpStream::connect(&pair.users).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let mut sum = Sum::default();
            let chunk = pattern(1 << 20, 7);
            for i in 0..(TOTAL >> 20) {
                let mut c = chunk.clone();
                c[0] = i as u8; // make every MiB differ
                sum.add(&c);
                w.write_all(&c).expect("write");
            }
            w.shutdown(Shutdown::Write).expect("half-close");
            sum
        });
        let mut got = Sum::default();
        let mut n = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let k = s.read(&mut buf).expect("read echo");
            if k == 0 {
                break;
            }
            got.add(&buf[..k]);
            n += k;
        }
        let sent = writer.join().expect("writer");
        assert_eq!(n, TOTAL, "{}\n{}", pair.server.dump(), pair.client.dump());
        assert_eq!((got.0, got.1), (sent.0, sent.1), "checksum");
    });
}

#[test]
fn reverse_tls0_udp_10k_datagrams() {
    each_type(|ty| {
        let pair = Spec::new(ty, 0).worker().start();
        let sock = wait_udp(&pair.users, UP, &[&pair.server, &pair.client]);
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        for i in 0..10_000u32 {
            let payload = format!("datagram {i} {}", "x".repeat((i % 200) as usize));
            let back = udp_echo(&sock, &pair.users, payload.as_bytes())
                .unwrap_or_else(|e| panic!("datagram {i}: {e}\n{}", pair.client.dump()));
            assert_eq!(back, payload.as_bytes(), "datagram {i}");
        }
    });
}

#[test]
fn reverse_tls0_200_concurrent_connections() {
    each_type(|ty| {
        let pair = Spec::new(ty, 0).worker().start();
        let n = 200;
        let barrier = Arc::new(Barrier::new(n));
        let workers: Vec<_> = (0..n)
            .map(|i| {
                let (user, barrier) = (pair.users.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut s =
                        TcpStream::connect(&user).map_err(|e| format!("connect {i}: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(20)))
                        .map_err(|e| e.to_string())?;
                    // Hold all 200 open at once before any data moves.
                    barrier.wait();
                    let payload = pattern(64 * 1024, i as u64 + 1);
                    s.write_all(&payload)
                        .map_err(|e| format!("write {i}: {e}"))?;
                    let mut back = vec![0u8; payload.len()];
                    s.read_exact(&mut back)
                        .map_err(|e| format!("read {i}: {e}"))?;
                    if back != payload {
                        return Err(format!("connection {i}: echo differs"));
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        let failures: Vec<String> = workers
            .into_iter()
            .filter_map(|w| w.join().expect("thread").err())
            .collect();
        assert!(
            failures.is_empty(),
            "{failures:?}\n{}\n{}",
            pair.server.dump(),
            pair.client.dump()
        );
    });
}

/// `max` bounds the idle pool, not the connections a tunnel can hold: a server with
/// `max=16` holds 60 user connections open at once (each after a round trip), then all of
/// them still echo. The reference's QUIC and HTTP/2 pools allow only `max` concurrent
/// streams (idle plus in use), so about `max` held connections leave none for the pool.
#[test]
fn more_held_connections_than_max() {
    each_type(|ty| {
        let pair = Spec::new(ty, 0)
            .worker()
            .server_q("&max=16")
            .client_q("&min=4")
            .start();
        let mut held = Vec::new();
        for i in 0..60u64 {
            let mut s = TcpStream::connect(&pair.users).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let payload = pattern(512, i);
            let mut back = vec![0u8; payload.len()];
            let done = s.write_all(&payload).and_then(|()| s.read_exact(&mut back));
            assert!(
                done.is_ok() && back == payload,
                "held connection {i} failed ({done:?})\n{}\n{}",
                pair.server.dump(),
                pair.client.dump()
            );
            held.push((s, payload));
        }
        for (i, (s, payload)) in held.iter_mut().enumerate() {
            let mut back = vec![0u8; payload.len()];
            s.write_all(payload)
                .and_then(|()| s.read_exact(&mut back))
                .unwrap_or_else(|e| panic!("held connection {i} stopped working: {e}"));
            assert_eq!(&back, payload);
        }
    });
}

/// The user half-closes; the answer must still arrive in full afterwards.
fn half_close_roundtrip(user: &str) {
    let mut s = TcpStream::connect(user).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let payload = pattern(300_000, 3);
    let mut w = s.try_clone().expect("clone");
    let p2 = payload.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&p2).expect("write");
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read to EOF");
    writer.join().expect("writer");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echo after half-close differs");
}

#[test]
fn half_close_over_tls0_and_tls1() {
    each_type(|ty| {
        for tls in [0, 1] {
            let pair = Spec::new(ty, tls).worker().start();
            half_close_roundtrip(&pair.users);
        }
    });
}

#[test]
fn reverse_tls1_tcp_udp_and_fingerprint_check() {
    each_type(|ty| {
        let pair = Spec::new(ty, 1).worker().start();
        let payload = pattern(1 << 20, 11);
        let back = echo_once(&pair.users, &payload, Duration::from_secs(10)).expect("echo");
        assert!(back == payload);
        let sock = wait_udp(&pair.users, UP, &[&pair.server, &pair.client]);
        assert_eq!(
            udp_echo(&sock, &pair.users, b"over tls").expect("udp"),
            b"over tls"
        );
        for p in [&pair.server, &pair.client] {
            p.wait_line("fingerprint verified", UP, |l| {
                l.contains("TLS certificate fingerprint verified: sha256:")
            });
            assert_eq!(p.count("fingerprint mismatch"), 0, "{}", p.dump());
        }
    });
}

#[test]
fn forward_mode_tls0() {
    each_type(|ty| {
        let echo = Echo::start();
        let tunnel = free_port();
        let user = free_port();
        // The server dials the echo target; the client listens for users.
        let server = Proc::worker(
            "server",
            &format!(
                "server://k@127.0.0.1:{tunnel}/{}?mode=2&type={ty}",
                echo.addr()
            ),
            &[],
        );
        server.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
        assert!(
            server
                .lines()
                .iter()
                .any(|l| l.contains("\"kind\":\"ready\"") && l.contains("\"mode\":2")),
            "{}",
            server.dump()
        );
        let client = Proc::worker(
            "client",
            &format!("client://k@127.0.0.1:{tunnel}/127.0.0.1:{user}"),
            &[],
        );
        let user = format!("127.0.0.1:{user}");
        wait_tunnel(&user, UP, &[&server, &client]);
        let payload = pattern(2 << 20, 5);
        assert!(echo_once(&user, &payload, Duration::from_secs(10)).expect("echo") == payload);
        half_close_roundtrip(&user);
        let sock = wait_udp(&user, UP, &[&server, &client]);
        assert_eq!(udp_echo(&sock, &user, b"fwd").expect("udp"), b"fwd");
    });
}

#[test]
fn tls2_with_a_test_ca() {
    each_type(|ty| {
        // The kit's pair makes a CA and a leaf for `tunnel.test` (Pki), gives the server
        // the leaf and the client `sni=tunnel.test` with the CA in SSL_CERT_FILE.
        let pair = Spec::new(ty, 2).worker().start();
        let payload = pattern(1 << 20, 13);
        assert!(
            echo_once(&pair.users, &payload, Duration::from_secs(10)).expect("echo") == payload
        );
        for p in [&pair.server, &pair.client] {
            p.wait_line("fingerprint verified", UP, |l| {
                l.contains("TLS certificate fingerprint verified: sha256:")
            });
        }
    });
}

#[test]
fn single_end_tcp_udp_with_failover() {
    let echo = Echo::start();
    let dead = free_port(); // nothing listens there
    let port = free_port();
    let client = Proc::worker(
        "single",
        &format!("client://127.0.0.1:{port}/127.0.0.1:{dead},{}", echo.addr()),
        &[],
    );
    client.wait_line("ready mode 1", UP, |l| {
        l.contains("\"kind\":\"ready\"") && l.contains("\"mode\":1")
    });
    let user = format!("127.0.0.1:{port}");
    // Every connection must work: the dead target is skipped by failover.
    for i in 0..6 {
        let payload = pattern(100_000, i + 20);
        let back = echo_once(&user, &payload, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", client.dump()));
        assert!(back == payload);
    }
    half_close_roundtrip(&user);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // Single target for UDP: the rotation may start at the dead one (no answer), so use a
    // second instance with the live target only.
    drop(client);
    let port2 = free_port();
    let client2 = Proc::worker(
        "single-udp",
        &format!("client://127.0.0.1:{port2}/{}", echo.addr()),
        &[],
    );
    client2.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let user2 = format!("127.0.0.1:{port2}");
    for i in 0..100 {
        let p = format!("single {i}");
        assert_eq!(
            udp_echo(&sock, &user2, p.as_bytes()).expect("udp echo"),
            p.as_bytes()
        );
    }
    client2.wait_line("stats with udp counted", UP, |l| {
        l.contains("\"kind\":\"stats\"") && !l.contains("\"udprx\":0")
    });
}

#[test]
fn report_lines_and_clean_stop() {
    let echo = Echo::start();
    let port = free_port();
    let mut client = Proc::worker(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1&log=info", echo.addr()),
        &[],
    );
    let ready = client.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let v: serde_json::Value = serde_json::from_str(&ready).expect("ready is JSON");
    assert_eq!(v["mode"], 1);
    assert_eq!(v["role"], "client");
    echo_once(
        &format!("127.0.0.1:{port}"),
        b"count me",
        Duration::from_secs(5),
    )
    .expect("echo");
    client.wait_line("stats counting the bytes", UP, |l| {
        l.contains("\"kind\":\"stats\"") && l.contains("\"tcprx\":8") && l.contains("\"tcptx\":8")
    });
    // Every stdout line is one JSON object (no interleaving, no stray text).
    for l in client.lines() {
        let v: serde_json::Value =
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
        assert!(v["kind"].is_string(), "{l}");
    }
    let code = client.terminate(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", client.dump());
    let last = client.lines().last().cloned().unwrap_or_default();
    assert!(
        last.contains("\"kind\":\"exit\"") && last.contains("\"error\":false"),
        "{}",
        client.dump()
    );
}

/// A server waiting for its client is healthy: once `ready`, it keeps reporting figures
/// every NP_REPORT_INTERVAL (ping and pool 0) so a master never takes it for a silent worker
/// (the master marks a worker `error` after 3 intervals without a report).
#[test]
fn a_server_waiting_for_its_client_keeps_reporting() {
    let target = free_port();
    let mut server = Proc::worker(
        "waiting",
        &format!(
            "server://k@127.0.0.1:{}/127.0.0.1:{target}?mode=1&log=info",
            free_port()
        ),
        &[("NP_REPORT_INTERVAL", "1s")],
    );
    server.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    // Three heartbeats with no client ever connecting.
    let deadline = std::time::Instant::now() + UP;
    while server.count("\"kind\":\"stats\"") < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no stats while waiting: {}",
            server.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = server
        .lines()
        .into_iter()
        .find(|l| l.contains("\"kind\":\"stats\""))
        .unwrap_or_default();
    assert!(
        stats.contains("\"ping\":0") && stats.contains("\"pool\":0"),
        "{stats}"
    );
    assert_eq!(
        server.terminate(Duration::from_secs(5)),
        Some(0),
        "{}",
        server.dump()
    );
}
