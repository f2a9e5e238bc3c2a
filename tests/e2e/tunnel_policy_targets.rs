//! Target-side policies through running tunnels: `dial=IP` (the target sees that source
//! address; an address that cannot be bound falls back to auto with one error log), `lbs`
//! 0 (round-robin over the live targets, a dead one skipped and taken back), 1 (the
//! target faster to connect is preferred, and a change is followed) and 2 (failover to
//! the next and back to the primary), for TCP connections and UDP sessions, and `notcp=1` / `noudp=1` (the protocol is neither listened for nor
//! forwarded).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodepass_testkit::pair::Spec;
use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);
/// No `ping` probes during the test: they would move the round-robin counter.
const QUIET: &[(&str, &str)] = &[("NP_REPORT_INTERVAL", "1h")];

/// An echo target on a fixed port (TCP and UDP) that records the source address of each
/// connection or datagram, and can be stopped (refusing connections) and started again.
struct Target {
    port: u16,
    hits: Arc<Mutex<Vec<IpAddr>>>,
    udp_hits: Arc<Mutex<Vec<IpAddr>>>,
    /// The stop flag of the serving threads; replaced on each revive.
    stop: Mutex<Arc<AtomicBool>>,
}

impl Target {
    fn start() -> Target {
        let port = free_port();
        let t = Target {
            port,
            hits: Arc::default(),
            udp_hits: Arc::default(),
            stop: Mutex::new(Arc::new(AtomicBool::new(true))),
        };
        t.revive();
        t
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serves on the port again (after `kill`).
    fn revive(&self) {
        let tcp = TcpListener::bind(("127.0.0.1", self.port)).expect("bind target");
        tcp.set_nonblocking(true).expect("nonblocking");
        let udp = UdpSocket::bind(("127.0.0.1", self.port)).expect("bind target udp");
        udp.set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let old = std::mem::replace(
            &mut *self.stop.lock().unwrap_or_else(|p| p.into_inner()),
            stop.clone(),
        );
        old.store(true, Ordering::Relaxed);
        let (hits, udp_hits, stop2) = (self.hits.clone(), self.udp_hits.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, peer)) => {
                        let hits = hits.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let mut buf = [0u8; 4096];
                            let mut counted = false;
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                                if !counted {
                                    hits.lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .push(peer.ip());
                                    counted = true;
                                }
                                if c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    udp_hits
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(from.ip());
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        // Wait until the port really answers.
        let deadline = Instant::now() + UP;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "target did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops serving: the port refuses connections (TCP) and drops datagrams.
    fn kill(&self) {
        self.stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .store(true, Ordering::Relaxed);
        // Let both threads see the flag and drop their sockets.
        std::thread::sleep(Duration::from_millis(100));
    }

    fn tcp_count(&self) -> usize {
        self.hits.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn udp_count(&self) -> usize {
        self.udp_hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// True when every TCP connection and UDP datagram came from `ip`.
    fn all_from(&self, ip: IpAddr) -> bool {
        let lock = |m: &Mutex<Vec<IpAddr>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
        lock(&self.hits)
            .iter()
            .chain(lock(&self.udp_hits).iter())
            .all(|a| *a == ip)
    }
}

/// One TCP exchange and one UDP session (a fresh socket) through `addr`.
fn one_each(addr: &str, procs: &[&Proc]) {
    let dumps = || dumps(procs);
    let back = echo_once(addr, b"hello", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("TCP through {addr}: {e}\n{}", dumps()));
    assert_eq!(back, b"hello");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(b) = udp_echo(&sock, addr, b"dgram") {
            assert_eq!(b, b"dgram");
            return;
        }
        assert!(Instant::now() < deadline, "UDP through {addr}\n{}", dumps());
    }
}

fn counts(ts: &[&Target]) -> (Vec<usize>, Vec<usize>) {
    (
        ts.iter().map(|t| t.tcp_count()).collect(),
        ts.iter().map(|t| t.udp_count()).collect(),
    )
}

fn delta(after: &[usize], before: &[usize]) -> Vec<usize> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[test]
fn dial_source_address_single_end_and_dual_end() {
    let t = Target::start();
    let port = free_port();
    let single = Proc::foreground(
        "single",
        &format!(
            "client://127.0.0.1:{port}/{}?mode=1&dial=127.0.0.2",
            t.addr()
        ),
        QUIET,
    );
    let addr = format!("127.0.0.1:{port}");
    wait_tunnel(&addr, UP, &[&single]);
    one_each(&addr, &[&single]);
    let want: IpAddr = "127.0.0.2".parse().expect("ip");
    assert!(t.all_from(want));
    assert!(t.udp_count() >= 1);

    // Dual-end reverse: the client dials the target from the source address.
    let t2 = Target::start();
    let pair = Spec::new(0, 0)
        .log("info")
        .target(&t2.addr())
        .client_q("&dial=127.0.0.2")
        .start();
    one_each(&pair.users, &[&pair.server, &pair.client]);
    assert!(t2.all_from(want));
    assert!(t2.tcp_count() >= 1 && t2.udp_count() >= 1);
}

#[test]
fn dial_address_that_cannot_be_bound_falls_back_once() {
    let t = Target::start();
    let port = free_port();
    // TEST-NET-1: not an address of this host, so binding it fails.
    let p = Proc::foreground(
        "single",
        &format!(
            "client://127.0.0.1:{port}/{}?mode=1&dial=192.0.2.7",
            t.addr()
        ),
        QUIET,
    );
    let addr = format!("127.0.0.1:{port}");
    wait_tunnel(&addr, UP, &[&p]);
    for _ in 0..3 {
        one_each(&addr, &[&p]);
    }
    let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
    assert!(t
        .hits
        .lock()
        .expect("hits")
        .iter()
        .all(|ip| *ip == loopback));
    assert_eq!(p.count("fallback to system auto"), 1, "{}", p.dump());
}

#[test]
fn lbs_round_robin_spreads_skips_the_dead_and_takes_it_back() {
    let ts = [Target::start(), Target::start(), Target::start()];
    let refs: Vec<&Target> = ts.iter().collect();
    let list: Vec<String> = ts.iter().map(Target::addr).collect();
    let port = free_port();
    let p = Proc::foreground(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1&lbs=0", list.join(",")),
        QUIET,
    );
    let addr = format!("127.0.0.1:{port}");
    wait_tunnel(&addr, UP, &[&p]);
    let before = counts(&refs);
    for _ in 0..6 {
        one_each(&addr, &[&p]);
    }
    let (tcp, udp) = counts(&refs);
    let (tcp, udp) = (delta(&tcp, &before.0), delta(&udp, &before.1));
    assert!(
        tcp.iter().all(|&n| n >= 1),
        "TCP spread {tcp:?}\n{}",
        p.dump()
    );
    assert!(
        udp.iter().all(|&n| n >= 1),
        "UDP spread {udp:?}\n{}",
        p.dump()
    );

    ts[1].kill();
    let before = counts(&refs);
    for _ in 0..6 {
        one_each(&addr, &[&p]);
    }
    let (tcp, udp) = counts(&refs);
    let (tcp, udp) = (delta(&tcp, &before.0), delta(&udp, &before.1));
    assert_eq!(tcp[1], 0, "dead target got TCP {tcp:?}");
    assert!(tcp[0] >= 1 && tcp[2] >= 1, "TCP over the live ones {tcp:?}");
    assert_eq!(udp[1], 0, "dead target got UDP {udp:?}");
    assert!(udp[0] >= 1 && udp[2] >= 1, "UDP over the live ones {udp:?}");

    ts[1].revive();
    let before = counts(&refs);
    for _ in 0..6 {
        one_each(&addr, &[&p]);
    }
    let (tcp, udp) = counts(&refs);
    let (tcp, udp) = (delta(&tcp, &before.0), delta(&udp, &before.1));
    assert!(tcp[1] >= 1, "revived target gets TCP again {tcp:?}");
    assert!(udp[1] >= 1, "revived target gets UDP again {udp:?}");
}

#[test]
fn lbs_failover_sticks_to_the_primary_fails_over_and_returns() {
    let ts = [Target::start(), Target::start(), Target::start()];
    let refs: Vec<&Target> = ts.iter().collect();
    let list: Vec<String> = ts.iter().map(Target::addr).collect();
    let port = free_port();
    let p = Proc::foreground(
        "single",
        &format!("client://127.0.0.1:{port}/{}?mode=1&lbs=2", list.join(",")),
        QUIET,
    );
    let addr = format!("127.0.0.1:{port}");
    wait_tunnel(&addr, UP, &[&p]);
    let step = |what: &str, want: usize| {
        let before = counts(&refs);
        for _ in 0..4 {
            one_each(&addr, &[&p]);
        }
        let (tcp, udp) = counts(&refs);
        let (tcp, udp) = (delta(&tcp, &before.0), delta(&udp, &before.1));
        let mut expect = vec![0; 3];
        expect[want] = 4;
        assert_eq!(tcp, expect, "{what}: TCP\n{}", p.dump());
        assert_eq!(udp, expect, "{what}: UDP\n{}", p.dump());
    };
    step("primary", 0);
    ts[0].kill();
    step("primary down", 1);
    ts[0].revive();
    step("primary back", 0);
}

/// Whether something still listens on TCP / holds UDP `port` on 127.0.0.1.
fn tcp_taken(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}
fn udp_taken(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_err()
}

#[test]
fn notcp_and_noudp_neither_listen_nor_forward() {
    let t = Target::start();
    // Single-end.
    let port = free_port();
    let p = Proc::worker(
        "single-notcp",
        &format!("client://127.0.0.1:{port}/{}?mode=1&notcp=1", t.addr()),
        QUIET,
    );
    p.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    assert!(!tcp_taken(port) && udp_taken(port), "{}", p.dump());
    wait_udp(&format!("127.0.0.1:{port}"), UP, &[&p]);
    let port = free_port();
    let p = Proc::worker(
        "single-noudp",
        &format!("client://127.0.0.1:{port}/{}?mode=1&noudp=1", t.addr()),
        QUIET,
    );
    p.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    assert!(tcp_taken(port) && !udp_taken(port), "{}", p.dump());

    // Dual-end: notcp on the server (it does not listen for TCP users) ...
    let (tunnel, uport) = (free_port(), free_port());
    let srv = Proc::foreground(
        "server-notcp",
        &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{uport}?mode=1&notcp=1"),
        &[],
    );
    let cli = Proc::foreground(
        "client",
        &format!("client://k@127.0.0.1:{tunnel}/{}?mode=2", t.addr()),
        &[],
    );
    wait_udp(&format!("127.0.0.1:{uport}"), UP, &[&srv, &cli]);
    assert!(!tcp_taken(uport), "{}", srv.dump());

    // ... and noudp on the client (the server listens, the client does not forward).
    let pair = Spec::new(0, 0)
        .log("info")
        .target(&t.addr())
        .client_q("&noudp=1")
        .start();
    let uaddr = pair.users.clone();
    let before = t.udp_count();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    for _ in 0..5 {
        assert!(udp_echo(&sock, &uaddr, b"x").is_err(), "UDP was forwarded");
    }
    assert_eq!(t.udp_count(), before, "the target got a datagram");
}

/// A TCP echo target whose connects can be made slow: while `slow` is set, its accept
/// queue (backlog 0: one connection) is kept full with a filler connection, so a SYN is
/// dropped; once a dialer's SYN_SENT socket shows up in /proc/net/tcp the filler is taken
/// out, and the dialer's retransmitted SYN (about 1 s later) gets in. Loopback has no
/// netem here; this makes a connect take about a second without any privilege.
struct SlowTarget {
    port: u16,
    slow: Arc<AtomicBool>,
    /// Set while the filler is in the queue (connects are slow from then on).
    armed: Arc<AtomicBool>,
    hits: Arc<Mutex<usize>>,
}

impl SlowTarget {
    fn start(start_slow: bool) -> SlowTarget {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(async {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.bind("127.0.0.1:0".parse().expect("addr"))?;
                s.listen(0)?.into_std()
            })
            .expect("listen with backlog 0");
        drop(rt);
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let t = SlowTarget {
            port,
            slow: Arc::new(AtomicBool::new(start_slow)),
            armed: Arc::default(),
            hits: Arc::default(),
        };
        let (slow, armed, hits) = (t.slow.clone(), t.armed.clone(), t.hits.clone());
        std::thread::spawn(move || {
            let mut filler: Option<TcpStream> = None;
            loop {
                if slow.load(Ordering::Relaxed) {
                    if filler.is_none() {
                        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                        match TcpStream::connect_timeout(&to, Duration::from_millis(100)) {
                            Ok(f) => {
                                filler = Some(f);
                                armed.store(true, Ordering::Relaxed);
                            }
                            Err(_) => {
                                // A dialer got into the queue first: serve it, refill after.
                                if let Ok((c, _)) = listener.accept() {
                                    serve(c, hits.clone());
                                }
                                continue;
                            }
                        }
                    }
                    if syn_waiting(port) {
                        // Take the filler out of the queue; the retransmitted SYN gets in.
                        while listener.accept().is_err() {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        filler = None;
                        armed.store(false, Ordering::Relaxed);
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while Instant::now() < deadline {
                            if let Ok((c, _)) = listener.accept() {
                                serve(c, hits.clone());
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                } else {
                    filler = None;
                    armed.store(false, Ordering::Relaxed);
                }
                match listener.accept() {
                    Ok((c, _)) => serve(c, hits.clone()),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        t.set_slow(start_slow);
        t
    }

    /// Makes connects slow (or fast again); returns once that holds.
    fn set_slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::Relaxed);
        let deadline = Instant::now() + UP;
        while slow && !self.armed.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "slow target never armed");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn hits(&self) -> usize {
        *self.hits.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Echoes one connection on a thread; counts it once it carries data (fillers never do).
fn serve(mut c: TcpStream, hits: Arc<Mutex<usize>>) {
    std::thread::spawn(move || {
        let _ = c.set_nonblocking(false);
        let mut buf = [0u8; 4096];
        let mut counted = false;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            if !counted {
                *hits.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                counted = true;
            }
            if c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

/// Whether a socket on this host is in SYN_SENT towards 127.0.0.1:`port`.
fn syn_waiting(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let want = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[2] == want && f[3] == "02"
    })
}

#[test]
fn lbs_least_latency_prefers_the_faster_and_follows_a_change() {
    let a = SlowTarget::start(true);
    let b = SlowTarget::start(false);
    let port = free_port();
    let p = Proc::foreground(
        "single",
        &format!(
            "client://127.0.0.1:{port}/{},{}?mode=1&lbs=1",
            a.addr(),
            b.addr()
        ),
        QUIET,
    );
    let addr = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    wait_tunnel(&addr, UP, &[&p]);
    eprintln!("up after {:?} a {} b {}", t0.elapsed(), a.hits(), b.hits());
    // The start-up `ping` probe dials alongside the first connections and can slip into
    // the slow target's queue when it is freed for another; start from figures that have
    // all expired instead.
    std::thread::sleep(Duration::from_millis(3300));
    let echo = || {
        let back = echo_once(&addr, b"which", Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("through the tunnel: {e}\n{}", p.dump()));
        assert_eq!(back, b"which");
    };
    // Each target gets measured once, then the fast one (b) takes the connections.
    // Returns the number of connections it took until `fast` took `run` in a row.
    let until_run = |fast: &SlowTarget, run: usize| {
        let mut in_row = 0;
        for i in 1..=40 {
            let before = fast.hits();
            echo();
            if fast.hits() > before {
                in_row += 1;
                if in_row == run {
                    return i;
                }
            } else {
                in_row = 0;
            }
        }
        panic!("the faster target never took {run} in a row\n{}", p.dump());
    };
    let started = Instant::now();
    until_run(&b, 5);
    eprintln!(
        "phase 1: {:?}, slow {} fast {}",
        started.elapsed(),
        a.hits(),
        b.hits()
    );
    assert!(a.hits() >= 2, "the slow target was never measured again");
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..5 {
        echo();
    }
    // Within the 3 s a measurement lasts, at most one re-measure of the slow one.
    assert!(
        a.hits() - a0 <= 1 && b.hits() - b0 >= 4,
        "slow {} fast {}",
        a.hits() - a0,
        b.hits() - b0
    );
    // Now a is fast and b slow: the connections move to a once the figures are renewed.
    a.set_slow(false);
    b.set_slow(true);
    let started = Instant::now();
    until_run(&a, 5);
    eprintln!(
        "phase 2: {:?}, a {} b {}",
        started.elapsed(),
        a.hits(),
        b.hits()
    );
}
