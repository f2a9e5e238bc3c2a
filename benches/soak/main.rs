//! Soak: a tunnel pair under mixed load with a fault every minute, for half an hour.
//!
//! `cargo bench --bench soak` (release build). The client reaches the server through the
//! test kit's fault relay; users connect to the server every 100 ms (4 KiB echoed each) and
//! one UDP flow sends a numbered datagram every 20 ms. Every SOAK_FAULT_SECS (60) one fault,
//! in turn: every open link goes silent (no FIN, no RST: a NAT that lost its state), or the
//! client is killed (SIGKILL) and started again 1 s later. Each period prints the server's
//! PSS, RSS and open descriptors, the client's descriptors, and the users who failed; the
//! end prints the totals: growth of the server's memory and descriptors (none expected),
//! TCP users failed, bytes that did not come back, UDP datagrams unanswered.
//!
//! Settings (environment): SOAK_MINUTES (30), SOAK_FAULT_SECS (60), SOAK_TYPE (pool type,
//! 0), SOAK_TLS (0), NP_REPORT_INTERVAL (the tunnel's, default 5s: the silent-link
//! detection takes two of them). Not a test: it asserts nothing about time.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodepass_testkit::fault::{Relay, Users};
use nodepass_testkit::{free_port, wait_tunnel, Echo, Proc};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (PSS KiB, RSS KiB, open descriptors) of a process.
fn footprint(pid: u32) -> (u64, u64, usize) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (field(&rollup, "Pss:"), field(&rollup, "Rss:"), fds)
}

/// One UDP flow: a numbered datagram every 20 ms; counts the answers.
struct Udp {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
}

impl Udp {
    fn start(addr: String) -> Udp {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.connect(&addr).expect("connect");
        let rx = sock.try_clone().expect("clone");
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let (s, a) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    if n == 8 {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let (s, n) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send(&i.to_le_bytes());
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Udp {
            stop,
            sent,
            answered,
        }
    }
}

fn main() {
    let minutes: u64 = env_or("SOAK_MINUTES", 30);
    let period = Duration::from_secs(env_or("SOAK_FAULT_SECS", 60));
    let (pool_type, tls): (u8, u8) = (env_or("SOAK_TYPE", 0), env_or("SOAK_TLS", 0));
    let report = std::env::var("NP_REPORT_INTERVAL").unwrap_or_else(|_| "5s".into());
    let env = [
        ("NP_REPORT_INTERVAL", report.as_str()),
        ("NP_SERVICE_COOLDOWN", "3s"),
    ];
    let echo = Echo::start();
    let (tunnel, uport) = (free_port(), free_port());
    let users_addr = format!("127.0.0.1:{uport}");
    let relay = Relay::start(tunnel);
    let server = Proc::worker(
        "server",
        &format!(
            "server://k@127.0.0.1:{tunnel}/{users_addr}?mode=1&type={pool_type}&tls={tls}&log=warn"
        ),
        &env,
    );
    server.wait_line("ready", Duration::from_secs(20), |l| {
        l.contains("\"kind\":\"ready\"")
    });
    let client_url = format!(
        "client://k@127.0.0.1:{}/{}?mode=2&log=warn",
        relay.port,
        echo.addr()
    );
    let mut client = Proc::worker("client", &client_url, &env);
    wait_tunnel(&users_addr, Duration::from_secs(30), &[&server, &client]);
    let spid = server.child.id();
    let start_fp = footprint(spid);
    println!(
        "soak: type={pool_type} tls={tls} report interval {report}, {minutes} min, a fault every {period:?}"
    );
    println!(
        "start: server PSS {} KiB, RSS {} KiB, {} fds; client {} fds",
        start_fp.0,
        start_fp.1,
        start_fp.2,
        footprint(client.child.id()).2
    );
    println!("| min | fault | users ok | users failed | server PSS KiB | server RSS KiB | server fds | client fds |");
    println!("|---|---|---|---|---|---|---|---|");
    let udp = Udp::start(users_addr.clone());
    let began = Instant::now();
    let (mut ok_total, mut failed_total) = (0usize, 0usize);
    let rounds = (minutes * 60) / period.as_secs().max(1);
    for round in 0..rounds {
        let users = Users::start(users_addr.clone());
        // The fault at the start of the period, then the rest of it under load.
        std::thread::sleep(Duration::from_secs(2));
        let fault = if round % 2 == 0 {
            relay.cut();
            "silent link"
        } else {
            client.kill();
            std::thread::sleep(Duration::from_secs(1));
            client = Proc::worker("client", &client_url, &env);
            "client killed"
        };
        std::thread::sleep(period.saturating_sub(Duration::from_secs(3)));
        let tries = users.finish();
        let ok = tries.iter().filter(|t| t.ok).count();
        let failed = tries.len() - ok;
        ok_total += ok;
        failed_total += failed;
        let fp = footprint(spid);
        println!(
            "| {:.1} | {fault} | {ok} | {failed} | {} | {} | {} | {} |",
            began.elapsed().as_secs_f64() / 60.0,
            fp.0,
            fp.1,
            fp.2,
            footprint(client.child.id()).2
        );
    }
    // A last quiet minute's worth of settling before the end figures.
    std::thread::sleep(Duration::from_secs(10));
    udp.stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let end_fp = footprint(spid);
    let (sent, answered) = (
        udp.sent.load(Ordering::Relaxed),
        udp.answered.load(Ordering::Relaxed),
    );
    println!(
        "end: server PSS {} KiB (start {}), RSS {} KiB (start {}), {} fds (start {})",
        end_fp.0, start_fp.0, end_fp.1, start_fp.1, end_fp.2, start_fp.2
    );
    println!(
        "users: {ok_total} ok, {failed_total} failed ({} bytes did not come back); UDP: {sent} sent, {answered} answered ({} unanswered)",
        failed_total * 4096,
        sent.saturating_sub(answered)
    );
}
