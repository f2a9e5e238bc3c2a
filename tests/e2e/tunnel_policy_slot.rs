//! `slot` counts UDP sessions together with TCP connections, through running tunnels
//! (single-end and the dual-end incoming side): while one UDP session holds the only
//! slot, a TCP connection is closed and a second UDP session gets no answer; when the
//! session has idled out (NP_UDP_READ_TIMEOUT, 2 s in the tests) the slot is free again.
//! `read` is not applied to UDP: the reference ends UDP sessions by NP_UDP_READ_TIMEOUT.

use std::io::Read;
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use nodepass_testkit::pair::Spec;
use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);

fn check_udp_holds_the_slot(addr: &str, logs: &Proc, procs: &[&Proc]) {
    let dumps = || dumps(procs);
    // One UDP session takes the slot.
    let first = wait_udp(addr, UP, procs);
    // A TCP connection over the limit is closed without an answer.
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = std::io::Write::write_all(&mut tcp, b"over");
    let mut b = [0u8; 4];
    assert_eq!(
        tcp.read(&mut b).unwrap_or(0),
        0,
        "TCP over the limit\n{}",
        dumps()
    );
    logs.wait_line("TCP slot log", UP, |l| {
        l.contains("TCP slot limit reached: 1/1")
    });
    // A second UDP session gets nothing back.
    let second = UdpSocket::bind("127.0.0.1:0").expect("bind");
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(udp_echo(&second, addr, b"two").is_err(), "{}", dumps());
    logs.wait_line("UDP slot log", UP, |l| {
        l.contains("UDP slot limit reached: 1/1")
    });
    // The first session still works, then idles out and frees the slot.
    assert_eq!(
        udp_echo(&first, addr, b"one").expect("first session"),
        b"one"
    );
    drop(first);
    let deadline = Instant::now() + UP;
    while echo_once(addr, b"tcp again", Duration::from_secs(2)).is_err() {
        assert!(Instant::now() < deadline, "slot never freed\n{}", dumps());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn slot_counts_udp_sessions_single_end() {
    let echo = Echo::start();
    let port = free_port();
    let p = Proc::foreground(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1&slot=1", echo.addr()),
        &[("NP_REPORT_INTERVAL", "1h")],
    );
    check_udp_holds_the_slot(&format!("127.0.0.1:{port}"), &p, &[&p]);
}

#[test]
fn slot_counts_udp_sessions_dual_end_incoming_side() {
    let pair = Spec::new(0, 0)
        .log("info")
        .server_q("&slot=1")
        .start_unchecked();
    check_udp_holds_the_slot(&pair.users, &pair.server, &[&pair.server, &pair.client]);
}
