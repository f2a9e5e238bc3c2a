//! `block` through running tunnels, with the client's first bytes split into 1-byte
//! writes: SOCKS4, SOCKS4a, SOCKS5, several HTTP methods and a TLS ClientHello are
//! refused (the target never answers, the user sees the end) however they are split; a
//! prefix that still matches when the 1 s wait ends is refused; other protocols reach the
//! target byte-identical, split or not. Single-end and on the dual-end incoming side.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nodepass_testkit::pair::Spec;
use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);

/// Sends `bytes` one byte per write (each its own segment) and returns what comes back
/// before the end (an echo target answers every byte that reaches it).
fn trickle(addr: &str, bytes: &[u8], then_wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for b in bytes {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    std::thread::sleep(then_wait);
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    while back.len() < bytes.len() {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => back.extend_from_slice(&buf[..n]),
        }
    }
    back
}

fn blocked_cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut client_hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ];
    client_hello.extend_from_slice(&[0x11; 32]);
    vec![
        (
            "SOCKS4",
            vec![0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, b'u', 0],
        ),
        (
            "SOCKS4",
            // SOCKS4a: IP 0.0.0.1 and the host name after the user id.
            [
                &[0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, b'u', 0][..],
                b"example.com\0",
            ]
            .concat(),
        ),
        ("SOCKS5", vec![0x05, 0x01, 0x00]),
        ("SOCKS5", vec![0x05, 0x02, 0x00, 0x02]),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("HTTP", b"POST /x HTTP/1.1\r\n\r\n".to_vec()),
        ("HTTP", b"OPTIONS * HTTP/1.1\r\n\r\n".to_vec()),
        ("HTTP", b"CONNECT a:443 HTTP/1.1\r\n\r\n".to_vec()),
        ("TLS", client_hello),
    ]
}

fn check_blocking(addr: &str, logs: &Proc, procs: &[&Proc]) {
    let dumps = || dumps(procs);
    for (proto, bytes) in blocked_cases() {
        let before = logs.count(&format!("blocked {proto} protocol"));
        let back = trickle(addr, &bytes, Duration::ZERO);
        assert!(
            back.is_empty(),
            "{proto} {bytes:?} reached the target\n{}",
            dumps()
        );
        logs.wait_line("blocked log", UP, |_| {
            logs.count(&format!("blocked {proto} protocol")) > before
        });
    }
    // A prefix that could still be HTTP when the wait ends is refused.
    let back = trickle(addr, b"GE", Duration::from_millis(1500));
    assert!(
        back.is_empty(),
        "a lingering \"GE\" reached the target\n{}",
        dumps()
    );
    // Other protocols pass byte-identical, split or not.
    for allowed in [
        b"SSH-2.0-test\r\n".to_vec(),
        vec![0x05, 0x09, 0x00, 0xff, 0x10],
        b"Get lowercase method\r\n".to_vec(),
        b"ABCDEFGHIJ no method\r\n".to_vec(),
    ] {
        let back = trickle(addr, &allowed, Duration::ZERO);
        assert_eq!(back, allowed, "split {allowed:?}\n{}", dumps());
        let back = echo_once(addr, &allowed, Duration::from_secs(10)).expect("echo");
        assert_eq!(back, allowed, "whole {allowed:?}\n{}", dumps());
    }
}

#[test]
fn block_single_end_is_not_bypassed_by_split_writes() {
    let echo = Echo::start();
    let port = free_port();
    let p = Proc::foreground(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1&block=123", echo.addr()),
        &[],
    );
    let addr = format!("127.0.0.1:{port}");
    wait_tunnel(&addr, UP, &[&p]);
    check_blocking(&addr, &p, &[&p]);
}

#[test]
fn block_dual_end_incoming_side_is_not_bypassed_by_split_writes() {
    let pair = Spec::new(0, 0).log("info").server_q("&block=123").start();
    check_blocking(&pair.users, &pair.server, &[&pair.server, &pair.client]);
}
