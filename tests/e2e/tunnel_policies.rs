//! The per-instance policies of the URL, end to end with the built binary: `proxy` (PROXY
//! v1 line before the data, also through a dual-end tunnel), `block` (HTTP refused, other
//! protocols through), `slot` (the connection over the limit is closed) and `read` (an idle
//! relay is closed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use nodepass_testkit::pair::Spec;
use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);

/// A target that reads the first line of each connection and sends it back, then echoes.
fn line_target() -> (TcpListener, String) {
    let l = nodepass_testkit::net::listen();
    let addr = l.local_addr().expect("addr").to_string();
    (l, addr)
}

/// The first line of the next connection that sends one (the single-end `ping` probe
/// connects and closes without a byte; those are skipped).
fn accept_first_line(l: &TcpListener) -> (TcpStream, String) {
    loop {
        let (s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("first line");
        if !line.is_empty() {
            return (s, line);
        }
    }
}

#[test]
fn proxy_v1_line_single_end_and_dual_end() {
    let (target, target_addr) = line_target();
    // Single-end: the source is the accepted user.
    let port = free_port();
    let single = Proc::worker(
        "single",
        &format!("client://127.0.0.1:{port}/{target_addr}?mode=1&proxy=1"),
        &[],
    );
    single.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let mut user = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    user.write_all(b"payload\n").expect("write");
    let user_port = user.local_addr().expect("addr").port();
    let (_t, line) = accept_first_line(&target);
    let target_port = target.local_addr().expect("addr").port();
    assert_eq!(
        line,
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {user_port} {target_port}\r\n")
    );

    // Dual-end reverse: the server names the user in the signal, the client writes it.
    let pair = Spec::new(0, 0)
        .worker()
        .log("info")
        .target(&target_addr)
        .client_q("&proxy=1")
        .start_unchecked();
    pair.client.wait_line("control channel up", UP, |l| {
        l.contains("\"kind\":\"stats\"")
    });
    let mut user = TcpStream::connect(&pair.users).expect("connect");
    user.write_all(b"payload\n").expect("write");
    let user_port = user.local_addr().expect("addr").port();
    let (_t, line) = accept_first_line(&target);
    assert!(
        line.starts_with(&format!("PROXY TCP4 127.0.0.1 127.0.0.1 {user_port} ")),
        "{line:?}\n{}",
        pair.dumps()
    );
}

#[test]
fn block_refuses_http_and_lets_others_through() {
    let echo = Echo::start();
    let port = free_port();
    let p = Proc::worker(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1&block=2", echo.addr()),
        &[],
    );
    p.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let addr = format!("127.0.0.1:{port}");
    let mut http = TcpStream::connect(&addr).expect("connect");
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 64];
    assert_eq!(http.read(&mut buf).unwrap_or(0), 0, "HTTP must be refused");
    p.wait_line("blocked log", UP, |l| l.contains("blocked HTTP protocol"));
    let ssh = b"SSH-2.0-test\r\n";
    assert_eq!(
        echo_once(&addr, ssh, Duration::from_secs(10)).expect("echo"),
        ssh
    );
}

#[test]
fn slot_limit_closes_the_connection_over_the_limit() {
    let echo = Echo::start();
    let port = free_port();
    let p = Proc::worker(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1&slot=1", echo.addr()),
        &[],
    );
    p.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let addr = format!("127.0.0.1:{port}");
    let mut first = TcpStream::connect(&addr).expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    first.write_all(b"one").expect("write");
    let mut b = [0u8; 3];
    first.read_exact(&mut b).expect("first is relayed");
    let mut second = TcpStream::connect(&addr).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = second.write_all(b"two");
    assert_eq!(second.read(&mut b).unwrap_or(0), 0, "over the limit");
    p.wait_line("slot log", UP, |l| l.contains("slot limit reached: 1/1"));
    drop(first);
    // The slot comes back once the first connection is gone.
    let deadline = std::time::Instant::now() + UP;
    while echo_once(&addr, b"three", Duration::from_secs(2)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", p.dump());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn read_timeout_closes_an_idle_relay() {
    let echo = Echo::start();
    let port = free_port();
    let p = Proc::worker(
        "single",
        &format!(
            "client://127.0.0.1:{port}/{}?mode=1&read=300ms",
            echo.addr()
        ),
        &[],
    );
    p.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(b"hi").expect("write");
    let mut b = [0u8; 2];
    s.read_exact(&mut b).expect("echo");
    // Then silence: the relay gives up on its own and the user sees the end.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    p.wait_line("timeout noted", UP, |l| l.contains("read timeout"));
}
