//! `dns=IP:port,...`: names in targets and the client's tunnel address resolve through the
//! given DNS servers, not the system's. A DNS stub on 127.0.0.1 (hand-built answers) knows
//! `echo.test.` and `tunnel.test.`; real TCP traffic then flows through the built binary.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);

/// Answers every A query with 127.0.0.1 (TTL 30 s), every other query with no records,
/// and remembers the names it was asked for.
struct DnsStub {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl DnsStub {
    fn start() -> DnsStub {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind dns stub");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (asked2, stop2) = (asked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((name, reply)) = answer(&buf[..n]) {
                    asked2.lock().expect("lock").push(name);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        DnsStub { port, asked, stop }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The queried name and a response: header (same id, QR+RA, RD copied, NOERROR), the
/// question, and for an A query one answer 127.0.0.1 pointing back at the question name.
fn answer(query: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut labels = Vec::new();
    let mut end = 12;
    loop {
        let len = *query.get(end)? as usize;
        end += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(end..end + len)?).to_lowercase());
        end += len;
    }
    let is_a = query.get(end..end + 2)? == [0, 1];
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[
        0x80 | (query[2] & 1),
        0x80,
        0,
        1,
        0,
        u8::from(is_a),
        0,
        0,
        0,
        0,
    ]);
    out.extend_from_slice(query.get(12..end + 4)?);
    if is_a {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
    }
    Some((labels.join("."), out))
}

#[test]
fn single_end_target_name_resolves_through_the_given_server() {
    let echo = Echo::start();
    let stub = DnsStub::start();
    let port = free_port();
    let single = Proc::worker(
        "single",
        &format!(
            "client://127.0.0.1:{port}/echo.test:{}?mode=1&log=debug&dns=127.0.0.1:{}",
            echo.port, stub.port
        ),
        FAST_ENV,
    );
    single.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let addr = format!("127.0.0.1:{port}");
    wait_tunnel(&addr, UP, &[&single]);
    let payload = pattern(64 * 1024, 7);
    let back = echo_once(&addr, &payload, Duration::from_secs(10)).expect("echo");
    assert!(back == payload, "the echo came back different");
    assert!(
        stub.asked().iter().any(|n| n == "echo.test"),
        "the stub was not asked: {:?}\n{}",
        stub.asked(),
        single.dump()
    );
}

#[test]
fn client_tunnel_host_and_target_resolve_through_the_given_server() {
    let echo = Echo::start();
    let stub = DnsStub::start();
    let (tunnel, user) = (free_port(), free_port());
    let srv = Proc::worker(
        "server",
        &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1"),
        FAST_ENV,
    );
    let client = Proc::worker(
        "client",
        &format!(
            "client://k@tunnel.test:{tunnel}/echo.test:{}?mode=2&dns=127.0.0.1:{}",
            echo.port, stub.port
        ),
        FAST_ENV,
    );
    wait_tunnel(&format!("127.0.0.1:{user}"), UP, &[&srv, &client]);
    let asked = stub.asked();
    assert!(
        asked.iter().any(|n| n == "tunnel.test") && asked.iter().any(|n| n == "echo.test"),
        "the stub was not asked for both names: {asked:?}\n{}",
        client.dump()
    );
}
