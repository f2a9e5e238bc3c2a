//! Healing, as users see it: a tunnel pair under a fault while users arrive every 100 ms.
//! Counts the user connections that failed and prints how long the tunnel took to carry
//! traffic again. The bound asserted is on lost users (none may be lost to a fault they
//! could outwait), not on time.

mod tunnel_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tunnel_support::{echo_once, free_port, wait_tunnel, Echo, Proc};

const UP: Duration = Duration::from_secs(20);

/// One user's try: when it started, when it ended, whether its bytes came back whole.
#[derive(Clone, Copy, Debug)]
struct Try {
    start: Instant,
    end: Instant,
    ok: bool,
}

/// Users connecting to `addr` every 100 ms, each in its own thread (so a user who waits does
/// not delay the next), each sending 4 KiB and reading the echo within 20 s.
struct Users {
    stop: Arc<AtomicBool>,
    tries: Arc<Mutex<Vec<Try>>>,
    driver: Option<std::thread::JoinHandle<Vec<std::thread::JoinHandle<()>>>>,
}

impl Users {
    fn start(addr: String) -> Users {
        let stop = Arc::new(AtomicBool::new(false));
        let tries = Arc::new(Mutex::new(Vec::new()));
        let (s, t) = (stop.clone(), tries.clone());
        let driver = std::thread::spawn(move || {
            let mut threads = Vec::new();
            let payload = tunnel_support::pattern(4096, 11);
            while !s.load(Ordering::SeqCst) {
                let (addr, t, payload) = (addr.clone(), t.clone(), payload.clone());
                threads.push(std::thread::spawn(move || {
                    let start = Instant::now();
                    let ok = echo_once(&addr, &payload, Duration::from_secs(20))
                        .is_ok_and(|back| back == payload);
                    let end = Instant::now();
                    t.lock().unwrap().push(Try { start, end, ok });
                }));
                std::thread::sleep(Duration::from_millis(100));
            }
            threads
        });
        Users {
            stop,
            tries,
            driver: Some(driver),
        }
    }

    /// Stops, waits for every user, and returns their tries in start order.
    fn finish(mut self) -> Vec<Try> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(d) = self.driver.take() {
            for t in d.join().expect("users") {
                let _ = t.join();
            }
        }
        let mut v = self.tries.lock().unwrap().clone();
        v.sort_by_key(|t| t.start);
        v
    }
}

/// Restarts the client of a reverse pair (users at the server) 1 s after killing it, with
/// the reference's default 3 s NP_SERVICE_COOLDOWN: the users who arrive at the server
/// meanwhile must wait and go through, none refused.
fn client_restart_loses_no_user(pool_type: u8, tls: u8) {
    let case = format!("client restart, type={pool_type} tls={tls}");
    let env = [("NP_SERVICE_COOLDOWN", "3s")];
    let echo = Echo::start();
    let (tunnel, uport) = (free_port(), free_port());
    let server = Proc::worker(
        "server",
        &format!(
            "server://k@127.0.0.1:{tunnel}/127.0.0.1:{uport}?mode=1&type={pool_type}&tls={tls}"
        ),
        &env,
    );
    server.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let client_url = format!("client://k@127.0.0.1:{tunnel}/{}?mode=2", echo.addr());
    let mut client = Proc::worker("client", &client_url, &env);
    let users_addr = format!("127.0.0.1:{uport}");
    wait_tunnel(&users_addr, UP, &[&server, &client]);

    let users = Users::start(users_addr);
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    client.kill();
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    let client2 = Proc::worker("client", &client_url, &env);
    std::thread::sleep(Duration::from_secs(6));
    let tries = users.finish();

    check(&case, &tries, killed, restarted, &server, &client2);
}

/// Restarts the server of a forward pair (users at the client) 1 s after killing it, with
/// the default 3 s cooldown: the client keeps its user listener and retries the handshake
/// with a short backoff, so the users who arrive meanwhile wait and go through.
fn server_restart_loses_no_user(pool_type: u8, tls: u8) {
    let case = format!("server restart, type={pool_type} tls={tls}");
    let env = [("NP_SERVICE_COOLDOWN", "3s")];
    let echo = Echo::start();
    let (tunnel, uport) = (free_port(), free_port());
    let server_url = format!(
        "server://k@127.0.0.1:{tunnel}/{}?mode=2&type={pool_type}&tls={tls}",
        echo.addr()
    );
    let mut server = Proc::worker("server", &server_url, &env);
    server.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let client = Proc::worker(
        "client",
        &format!("client://k@127.0.0.1:{tunnel}/127.0.0.1:{uport}?mode=2"),
        &env,
    );
    let users_addr = format!("127.0.0.1:{uport}");
    wait_tunnel(&users_addr, UP, &[&server, &client]);

    let users = Users::start(users_addr);
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    server.kill();
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    let server2 = Proc::worker("server", &server_url, &env);
    std::thread::sleep(Duration::from_secs(6));
    let tries = users.finish();
    check(&case, &tries, killed, restarted, &server2, &client);
}

/// Every user who arrived after the kill went through (users mid-transfer through the
/// killed process cannot be saved); prints the figures for the note.
fn check(case: &str, tries: &[Try], killed: Instant, restarted: Instant, a: &Proc, b: &Proc) {
    let after: Vec<&Try> = tries
        .iter()
        .filter(|t| t.start > killed + Duration::from_millis(20))
        .collect();
    let failed: Vec<&Try> = after.iter().copied().filter(|t| !t.ok).collect();
    let back = after
        .iter()
        .filter(|t| t.ok)
        .map(|t| t.end)
        .min()
        .map(|e| e.saturating_duration_since(restarted));
    eprintln!(
        "{case}: {} users after the kill, {} failed; first user through {:?} after the restart; longest wait {:?}",
        after.len(),
        failed.len(),
        back,
        after.iter().map(|t| t.end - t.start).max()
    );
    assert!(
        after.len() >= 40,
        "{case}: users kept arriving: {}",
        after.len()
    );
    assert!(
        failed.is_empty(),
        "{case}: {} of {} users who arrived after the kill failed:\n{failed:?}\n{}\n{}",
        failed.len(),
        after.len(),
        a.dump(),
        b.dump()
    );
}

#[test]
fn a_server_restart_loses_no_user_on_tcp() {
    server_restart_loses_no_user(0, 0);
}

#[test]
fn a_server_restart_loses_no_user_on_websocket_with_tls() {
    server_restart_loses_no_user(2, 1);
}

#[test]
fn a_server_restart_loses_no_user_on_http2() {
    server_restart_loses_no_user(3, 0);
}

#[test]
fn a_client_restart_loses_no_user_on_tcp() {
    client_restart_loses_no_user(0, 0);
}

#[test]
fn a_client_restart_loses_no_user_on_tcp_with_tls() {
    client_restart_loses_no_user(0, 1);
}

#[test]
fn a_client_restart_loses_no_user_on_websocket() {
    client_restart_loses_no_user(2, 0);
}

#[test]
fn a_client_restart_loses_no_user_on_http2() {
    client_restart_loses_no_user(3, 1);
}

// QUIC (type 1) is not here yet: a killed client sends no CONNECTION_CLOSE, so the server
// keeps handing users streams of the dead connection until its idle timeout (3 report
// intervals); 14 of 69 users failed in that window when measured (issue 18 goes on).
