//! Bad input and faults on the WebSocket pool (type 2), with the built binary on loopback:
//! garbage, plain HTTP, a wrong method or path and a full pool on the pool port, an upgrade
//! from another address than the handshaking client, and either peer killed mid-stream
//! (the other side logs it and recovers by itself once the peer is back).
//!
//! (Frame-level faults, a text message, a short or replayed id, close codes, are unit
//! tests in worker/src/transport/ws.rs, where a WebSocket peer can be scripted.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nodepass_proto::url::TunnelKey;
use nodepass_proto::wire::handshake_request;
use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);

fn server(tunnel: u16, user: u16, q: &str) -> Proc {
    let s = Proc::worker(
        "server",
        &format!("server://right@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&type=2&log=debug{q}"),
        &[],
    );
    s.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    s
}

/// Sends raw bytes to the port from `src` and returns what the server answers within a
/// few seconds (all of it when it closes, else what came so far).
fn exchange(port: u16, src: &str, request: &[u8]) -> Vec<u8> {
    exchange_keep(port, src, request).0
}

/// [`exchange`], also handing back the connection (to keep a pool entry open).
fn exchange_keep(port: u16, src: &str, request: &[u8]) -> (Vec<u8>, std::net::TcpStream) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(format!("{src}:0").parse().expect("src"))
            .expect("bind source");
        let mut s = sock.connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // An upgraded connection stays open: stop reading once its id has come.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
                if id_after_upgrade(&out).is_some() {
                    break;
                }
            }
        })
        .await;
        (out, s.into_std().expect("std stream"))
    })
}

fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

/// The id a 101 answer carries: the 4-byte payload of the binary message after the head.
fn id_after_upgrade(answer: &[u8]) -> Option<[u8; 4]> {
    let text = String::from_utf8_lossy(answer);
    if !text.starts_with("HTTP/1.1 101 ") {
        return None;
    }
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    // Unmasked binary message, FIN, length 4.
    match &answer[end..] {
        [0x82, 0x04, a, b, c, d, ..] => Some([*a, *b, *c, *d]),
        _ => None,
    }
}

fn text(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer).to_string()
}

#[test]
fn bad_requests_full_pool_and_foreign_address_on_the_pool_port() {
    let (tunnel, user) = (free_port(), free_port());
    let srv = server(tunnel, user, "&max=2");
    // The handshake from 127.0.0.1 makes that the client address.
    let hs = text(&exchange(
        tunnel,
        "127.0.0.1",
        &handshake_request("none", &TunnelKey::new("right")),
    ));
    assert!(hs.contains("\"type\":\"2\""), "{hs:?}");

    let garbage = text(&exchange(
        tunnel,
        "127.0.0.1",
        b"\x16\x03\x01\x00\x10garbage\r\n\r\n",
    ));
    assert!(
        garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{garbage:?}"
    );
    let plain = text(&exchange(
        tunnel,
        "127.0.0.1",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ));
    assert!(
        plain.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{plain:?}"
    );
    let post = text(&exchange(
        tunnel,
        "127.0.0.1",
        &String::from_utf8(upgrade_request("/"))
            .expect("ascii")
            .replacen("GET", "POST", 1)
            .into_bytes(),
    ));
    assert!(
        post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{post:?}"
    );
    let path = text(&exchange(tunnel, "127.0.0.1", &upgrade_request("/stream")));
    assert!(path.starts_with("HTTP/1.1 404 Not Found\r\n"), "{path:?}");
    let foreign = text(&exchange(tunnel, "127.0.0.2", &upgrade_request("/")));
    assert!(
        foreign.starts_with("HTTP/1.1 403 Forbidden\r\n") && foreign.ends_with("unauthorized\n"),
        "{foreign:?}"
    );

    // Real upgrades: the first is the control channel, then random ids, until the pool
    // holds `max` idle entries and answers 503.
    // Every entry is kept open: the first one is the server's control channel now.
    let mut entries = Vec::new();
    let (first, conn) = exchange_keep(tunnel, "127.0.0.1", &upgrade_request("/"));
    assert_eq!(id_after_upgrade(&first), Some([0; 4]), "{}", text(&first));
    entries.push(conn);
    let deadline = Instant::now() + UP;
    let mut ids = 0;
    loop {
        let (answer, conn) = exchange_keep(tunnel, "127.0.0.1", &upgrade_request("/"));
        entries.push(conn);
        if let Some(id) = id_after_upgrade(&answer) {
            assert_ne!(id, [0; 4], "only the first entry is 00000000");
            ids += 1;
        } else {
            let t = text(&answer);
            assert!(
                t.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && t.ends_with("pool full\n"),
                "{t:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never full: {}", srv.dump());
    }
    assert!(ids >= 2, "a full pool after {ids} entries");
    // The server logged every refusal and never panicked.
    // The server's log reaches us through its stdout reader thread: wait for the line
    // rather than count what has arrived so far.
    srv.wait_line("the 403 refusal logged", UP, |l| {
        l.contains("refused: 403 unauthorized")
    });
    assert_eq!(srv.count("panicked"), 0, "{}", srv.dump());
}

#[test]
fn either_peer_killed_mid_stream_recovers_by_itself() {
    let echo = Echo::start();
    let (tunnel, user) = (free_port(), free_port());
    let server_url =
        format!("server://right@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&type=2&tls=1");
    let mut srv = Proc::worker("server", &server_url, &[]);
    srv.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let client_url = format!("client://right@127.0.0.1:{tunnel}/{}?mode=2", echo.addr());
    let mut client = Proc::worker("client", &client_url, &[]);
    let user_addr = format!("127.0.0.1:{user}");
    wait_tunnel(&user_addr, UP, &[&srv, &client]);

    // The client dies while a user connection is busy: that connection ends (no hang) and
    // the server starts over for the next client.
    let mut s = TcpStream::connect(&user_addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(&pattern(100_000, 1)).expect("write");
    let mut first = vec![0u8; 100_000];
    s.read_exact(&mut first).expect("echo before the crash");
    client.kill();
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    srv.wait_line("server restart", UP, |l| l.contains("Server restart"));
    client = Proc::worker("client 2", &client_url, &[]);
    wait_tunnel(&user_addr, UP, &[&srv, &client]);

    // The server dies: the client logs it, keeps retrying, and works again once a server
    // is back on the same port.
    srv.kill();
    client.wait_line("client error", UP, |l| l.contains("Client error"));
    srv = Proc::worker("server 2", &server_url, &[]);
    wait_tunnel(&user_addr, UP, &[&srv, &client]);
    let payload = pattern(1 << 20, 9);
    assert!(echo_once(&user_addr, &payload, Duration::from_secs(15)).expect("echo") == payload);
    for p in [&srv, &client] {
        assert_eq!(p.count("panicked"), 0, "{}", p.dump());
    }
}
