//! Bad input and faults around a tunnel, each with the built binary on loopback: a wrong
//! tunnel key, garbage and wrong HTTP on the tunnel port, a client that never speaks, a
//! peer dying mid-stream, a refusing target, a busy tunnel port, unusable certificate
//! files, pool connections from a foreign address, and UDP sessions that must not leak.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use nodepass_proto::url::TunnelKey;
use nodepass_proto::wire::{handshake_request, parse_handshake_response};
use nodepass_testkit::pair::{each_type, Spec};
use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);

fn server(tunnel: u16, user: u16, q: &str) -> Proc {
    let s = Proc::worker(
        "server",
        &format!("server://right@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&log=debug{q}"),
        &[],
    );
    s.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    s
}

/// Sends raw bytes to the tunnel port and returns everything the server answers.
fn raw_exchange(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn wrong_key_gets_401_and_the_client_retries() {
    let echo = Echo::start();
    let (tunnel, user) = (free_port(), free_port());
    let srv = server(tunnel, user, "");
    let client = Proc::worker(
        "client",
        &format!("client://wrong@127.0.0.1:{tunnel}/{}?mode=2", echo.addr()),
        &[],
    );
    let deadline = Instant::now() + UP;
    while client.count("tunnelHandshake: status 401") < 2 {
        assert!(Instant::now() < deadline, "{}", client.dump());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(client.count("Client restart") >= 1, "{}", client.dump());
    // The server keeps waiting and serves a client with the right key afterwards.
    let good = Proc::worker(
        "good client",
        &format!("client://right@127.0.0.1:{tunnel}/{}?mode=2", echo.addr()),
        &[],
    );
    wait_tunnel(&format!("127.0.0.1:{user}"), UP, &[&srv, &good]);
}

#[test]
fn garbage_wrong_http_and_silent_clients_on_the_tunnel_port() {
    let echo = Echo::start();
    let (tunnel, user) = (free_port(), free_port());
    let srv = server(tunnel, user, "");
    // A client that connects and never speaks must not block anyone.
    let _silent = TcpStream::connect(("127.0.0.1", tunnel)).expect("silent connect");

    let garbage = raw_exchange(tunnel, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage:?}");
    let post = raw_exchange(tunnel, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
            && post.ends_with("\r\n\r\nMethod Not Allowed\n"),
        "{post:?}"
    );
    let key = TunnelKey::new("right");
    let good = String::from_utf8(handshake_request("none", &key)).expect("ascii");
    let wrong_path = raw_exchange(tunnel, good.replacen("GET / ", "GET /x ", 1).as_bytes());
    assert!(
        wrong_path.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{wrong_path:?}"
    );
    let wrong_key = raw_exchange(tunnel, &handshake_request("none", &TunnelKey::new("nope")));
    assert!(
        wrong_key.starts_with("HTTP/1.1 401 Unauthorized\r\n")
            && wrong_key.ends_with("Unauthorized\n"),
        "{wrong_key:?}"
    );
    // Still waiting for a real client, which works.
    let client = Proc::worker(
        "client",
        &format!("client://right@127.0.0.1:{tunnel}/{}?mode=2", echo.addr()),
        &[],
    );
    wait_tunnel(&format!("127.0.0.1:{user}"), UP, &[&srv, &client]);
}

#[test]
fn handshake_bytes_first_pool_id_and_foreign_pool_connections() {
    let (tunnel, user) = (free_port(), free_port());
    let srv = server(tunnel, user, "&max=8");
    let key = TunnelKey::new("right");
    let answer = raw_exchange(tunnel, &handshake_request("none", &key));
    assert!(
        answer.starts_with(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\nDate: "
        ),
        "{answer:?}"
    );
    assert!(
        answer.ends_with("\r\nContent-Length: 45\r\n\r\n{\"flow\":\"-\",\"max\":8,\"tls\":\"0\",\"type\":\"0\"}\n")
            || answer.ends_with("\r\nContent-Length: 42\r\n\r\n{\"flow\":\"-\",\"max\":8,\"tls\":\"0\",\"type\":\"0\"}\n"),
        "{answer:?}"
    );
    let cfg = parse_handshake_response(answer.as_bytes())
        .expect("parses")
        .expect("complete");
    assert_eq!(cfg.max, 8);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{tunnel}").parse().expect("addr");
        let pool_conn = |src: &'static str| async move {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(format!("{src}:0").parse().expect("src"))
                .expect("bind source");
            let mut s = sock.connect(addr).await.expect("connect");
            let mut id = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).await.is_ok() {
                    id.extend_from_slice(&b);
                }
            })
            .await;
            (s, id)
        };
        // The handshaking client's address gets the control channel id first.
        let (_control, id) = pool_conn("127.0.0.1").await;
        assert_eq!(id, vec![0, 0, 0, 0], "first pool id");
        // Another address gets nothing: closed without an id.
        let (_foreign, id) = pool_conn("127.0.0.2").await;
        assert!(id.is_empty(), "foreign address got id {id:?}");
        let (_second, id) = pool_conn("127.0.0.1").await;
        assert_eq!(id.len(), 4, "second pool entry gets a random id");
        assert_ne!(id, vec![0, 0, 0, 0]);
    });
    drop(srv);
}

#[test]
fn peer_dying_mid_stream_ends_the_user_connection_and_the_server_recovers() {
    each_type(peer_dying_on);
}

fn peer_dying_on(pool_type: u8) {
    let echo = Echo::start();
    let (tunnel, user) = (free_port(), free_port());
    let srv = server(tunnel, user, &format!("&type={pool_type}"));
    let client_url = format!("client://right@127.0.0.1:{tunnel}/{}?mode=2", echo.addr());
    let mut client = Proc::worker("client", &client_url, &[]);
    let user_addr = format!("127.0.0.1:{user}");
    wait_tunnel(&user_addr, UP, &[&srv, &client]);

    let mut s = TcpStream::connect(&user_addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(&pattern(100_000, 1)).expect("write");
    let mut first = vec![0u8; 100_000];
    s.read_exact(&mut first).expect("echo before the crash");
    client.kill(); // SIGKILL: no goodbye on any connection
                   // The user connection must end (EOF or reset), not hang.
    let mut buf = [0u8; 1024];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) => continue,
        }
    };
    assert!(ended);
    srv.wait_line("server restart", UP, |l| l.contains("Server restart"));
    let client2 = Proc::worker("client 2", &client_url, &[]);
    wait_tunnel(&user_addr, UP, &[&srv, &client2]);
}

#[test]
fn refusing_target_closes_the_user_connection_only() {
    each_type(refusing_target_on);
}

fn refusing_target_on(pool_type: u8) {
    let dead = free_port();
    let (tunnel, user) = (free_port(), free_port());
    let srv = server(tunnel, user, &format!("&type={pool_type}"));
    let client = Proc::worker(
        "client",
        &format!("client://right@127.0.0.1:{tunnel}/127.0.0.1:{dead}?mode=2"),
        &[],
    );
    client.wait_line("control channel up", UP, |l| {
        l.contains("\"kind\":\"stats\"")
    });
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", user)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let _ = s.write_all(b"hello?");
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a refused target must close the user connection");
    }
    client.wait_line("dial error logged", UP, |l| {
        l.contains("dialWithRotation failed")
    });
    // The tunnel itself stays up: pings keep coming, no restart.
    let stats_before = client.count("\"kind\":\"stats\"");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        client.count("\"kind\":\"stats\"") > stats_before,
        "{}",
        client.dump()
    );
    assert_eq!(client.count("Client restart"), 0, "{}", client.dump());
    drop(srv);
}

#[test]
fn busy_tunnel_port_is_a_clear_error_with_nonzero_exit() {
    let busy = nodepass_testkit::net::listen();
    let port = busy.local_addr().expect("addr").port();
    let echo = Echo::start();
    for url in [
        format!("server://k@127.0.0.1:{port}/127.0.0.1:{}", free_port()),
        format!("client://127.0.0.1:{port}/{}?mode=1", echo.addr()),
    ] {
        let mut p = Proc::foreground("busy", &url, &[]);
        let code = p.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(1), "{}", p.dump());
        assert!(p.count("Address already in use") >= 1, "{}", p.dump());
    }
    // In report mode the reason also arrives as an exit report.
    let mut w = Proc::worker(
        "busy worker",
        &format!("server://k@127.0.0.1:{port}/127.0.0.1:{}", free_port()),
        &[],
    );
    assert_eq!(
        w.wait_exit(Duration::from_secs(10)),
        Some(1),
        "{}",
        w.dump()
    );
    assert!(
        w.lines().iter().any(|l| l.contains("\"kind\":\"exit\"")
            && l.contains("\"error\":true")
            && l.contains("Address already in use")),
        "{}",
        w.dump()
    );
}

#[test]
fn unusable_certificate_files_are_a_clear_error_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crt = dir.path().join("c.pem");
    let key = dir.path().join("k.pem");
    let url = |c: &std::path::Path, k: &std::path::Path| {
        format!(
            "server://k@127.0.0.1:{}/127.0.0.1:{}?tls=2&crt={}&key={}",
            free_port(),
            free_port(),
            c.display(),
            k.display()
        )
    };
    let mut missing = Proc::foreground("missing", &url(&crt, &key), &[]);
    assert_eq!(missing.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(
        missing.count("cannot read the certificate file") >= 1,
        "{}",
        missing.dump()
    );
    std::fs::write(&crt, "this is not a certificate\n").expect("write");
    std::fs::write(&key, "junk").expect("write");
    let mut junk = Proc::foreground("junk", &url(&crt, &key), &[]);
    assert_eq!(junk.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(
        junk.count("holds no PEM certificate") >= 1,
        "{}",
        junk.dump()
    );
}

#[test]
fn udp_sessions_do_not_leak() {
    let echo = Echo::start();
    // Single-end: 10k short sessions, each from its own source port.
    let port = free_port();
    let single = Proc::worker(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1", echo.addr()),
        &[("NP_UDP_READ_TIMEOUT", "1s")],
    );
    single.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let addr = format!("127.0.0.1:{port}");
    for i in 0..10_000u32 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let p = i.to_le_bytes();
        assert_eq!(udp_echo(&s, &addr, &p).expect("echo"), p);
    }
    single.wait_line("all sessions gone", UP, |l| {
        l.contains("\"kind\":\"stats\"")
            && l.contains("\"udps\":0")
            && l.contains("\"udprx\":40000")
    });

    // Dual-end: 500 sessions, each on its own pool entry.
    let pair = Spec::new(0, 0)
        .worker()
        .log("info")
        .target(&echo.addr())
        .env("NP_UDP_READ_TIMEOUT", "1s")
        .start_unchecked();
    let (uaddr, srv, client) = pair.into_parts();
    let _ = wait_udp(&uaddr, UP, &[&srv, &client]);
    for i in 0..500u32 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let p = i.to_le_bytes();
        assert_eq!(
            udp_echo(&s, &uaddr, &p)
                .unwrap_or_else(|e| panic!("session {i}: {e}\n{}", client.dump())),
            p
        );
    }
    for p in [&srv, &client] {
        p.wait_line("all sessions gone", UP, |l| {
            l.contains("\"kind\":\"stats\"")
                && l.contains("\"udps\":0")
                && !l.contains("\"udprx\":0,")
        });
    }
}

/// A UDP target that answers every datagram only after `delay`, from its own thread.
struct SlowUdpTarget {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowUdpTarget {
    fn start(delay: Duration) -> SlowUdpTarget {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind slow target");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let (answer, sock) = (buf[..n].to_vec(), sock.try_clone().expect("clone"));
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _ = sock.send_to(&answer, from);
                });
            }
        });
        SlowUdpTarget { addr, stop }
    }
}

impl Drop for SlowUdpTarget {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A session whose target answers slowly while the user keeps sending must not be ended
/// by the idle timer between a datagram and its answer: each datagram here is sent 1.2 s
/// after the previous answer and answered 1.2 s later, so the target is silent for 2.4 s,
/// longer than NP_UDP_READ_TIMEOUT (2 s), while the session was never idle that long.
/// (When only the target's answers counted, the second answer of each session was lost.)
#[test]
fn udp_session_with_a_slow_target_keeps_its_answers() {
    let delay = Duration::from_millis(1200);
    let target = SlowUdpTarget::start(delay);
    let env = [("NP_UDP_READ_TIMEOUT", "2s")];
    let exchange = |addr: &str, procs: &[&Proc]| {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        for round in 0..3u8 {
            let p = [b's', b'l', b'o', b'w', round];
            let got = udp_echo(&s, addr, &p).unwrap_or_else(|e| {
                let logs: Vec<String> = procs.iter().map(|p| p.dump()).collect();
                panic!("round {round}: no answer: {e}\n{}", logs.join("\n"))
            });
            assert_eq!(got, p);
            std::thread::sleep(delay);
        }
    };

    let port = free_port();
    let single = Proc::worker(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1&log=debug", target.addr),
        &env,
    );
    single.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    exchange(&format!("127.0.0.1:{port}"), &[&single]);

    let mut spec = Spec::new(0, 0).worker().target(&target.addr);
    for (k, v) in &env {
        spec = spec.env(k, v);
    }
    let pair = spec.start_unchecked();
    pair.client
        .wait_line("handshake", UP, |l| l.contains("Loading tunnel config"));
    exchange(&pair.users, &[&pair.server, &pair.client]);
}
