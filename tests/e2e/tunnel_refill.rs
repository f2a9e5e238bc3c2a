//! Pool replacements opened in the background (worker/src/background.rs): fresh user
//! connections one after another through a TCP pool, at tls 0 and 1 and in both flows, and
//! through a WebSocket pool. Every
//! user goes through, the pool is full again afterwards, and the replacements were opened
//! by both ends on their low-priority thread (a thread `np-refill` at nice 19 exists in
//! each process: it starts only when a replacement is opened in the background).

use std::time::{Duration, Instant};

use nodepass_testkit::pair::Spec;
use nodepass_testkit::{echo_once, Proc};

const UP: Duration = Duration::from_secs(20);

/// The nice value of each thread of `pid` named `name`.
fn thread_nices(pid: u32, name: &str) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut nices = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        // Field 19 of stat is the nice value; the command name (field 2) may hold spaces,
        // so count from its closing parenthesis.
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if let Some(nice) = after
            .split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok())
        {
            nices.push(nice);
        }
    }
    nices
}

/// The last `"pool":N` a worker reported.
fn last_pool(p: &Proc) -> Option<u64> {
    p.lines().iter().rev().find_map(|l| {
        let rest = l.split_once("\"pool\":")?.1;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

fn users_one_after_another(pool_type: u8, tls: u8, forward: bool) {
    let case = format!("type={pool_type} tls={tls} forward={forward}");
    let pair = Spec::new(pool_type, tls).worker().forward(forward).start();
    let users = 300;
    for i in 0..users {
        let payload = format!("user {i}");
        let got = echo_once(&pair.users, payload.as_bytes(), Duration::from_secs(10));
        assert_eq!(
            got.as_deref().ok(),
            Some(payload.as_bytes()),
            "{case}: user {i} failed: {got:?}\n{}",
            pair.dumps()
        );
    }
    // The client keeps at least min=64 idle entries: refilled after the users, in the
    // background while the pool is stocked.
    let deadline = Instant::now() + UP;
    while last_pool(&pair.client).unwrap_or(0) < 64 {
        assert!(
            Instant::now() < deadline,
            "{case}: the client's pool was not refilled (last figure {:?})\n{}",
            last_pool(&pair.client),
            pair.dumps()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (side, p) in [("server", &pair.server), ("client", &pair.client)] {
        let nices = thread_nices(p.child.id(), "np-refill");
        assert_eq!(
            nices.len(),
            1,
            "{case}: the {side} has {} background threads (opened nothing in the background?)",
            nices.len()
        );
        assert!(
            nices[0] >= 19,
            "{case}: the {side}'s background thread runs at nice {}",
            nices[0]
        );
    }
    eprintln!("{case}: {users} users one after another, pool full again, both ends refilled in the background");
}

#[test]
fn replacements_open_in_the_background_tls0() {
    users_one_after_another(0, 0, false);
}

#[test]
fn replacements_open_in_the_background_tls1() {
    users_one_after_another(0, 1, false);
}

#[test]
fn replacements_open_in_the_background_forward_tls1() {
    users_one_after_another(0, 1, true);
}

#[test]
fn replacements_open_in_the_background_websocket_tls1() {
    users_one_after_another(2, 1, false);
}
