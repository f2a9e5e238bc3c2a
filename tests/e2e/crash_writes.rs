//! Acknowledged writes survive crashes. Client threads run creates, alias patches and
//! deletes against a real master while the test kills it with SIGKILL at random moments
//! and starts it again, round after round. After each restart every change the master
//! answered with 2xx must be there, and nothing else: an instance may only be in a state
//! that an acknowledged change, or the one request still unanswered when the master died,
//! put it in.
//!
//! The random moments come from a seed printed at the start (set CRASH_WRITES_SEED to
//! replay a run).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodepass_testkit::api::try_call;
use nodepass_testkit::free_port;
use nodepass_testkit::master::{private_state_dir, MasterProc};

const ROUNDS: usize = 8;
const CLIENTS: usize = 3;

/// What the master may hold for one instance after a crash.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    /// Acknowledged: present with this alias.
    Present(String),
    /// Acknowledged deleted.
    Absent,
}

/// One instance as the clients know it: the last acknowledged state, and the state the
/// unanswered request (if any) would have made.
#[derive(Debug, Clone)]
struct Entry {
    acked: Known,
    pending: Option<Known>,
}

#[derive(Default)]
struct Ledger {
    instances: HashMap<String, Entry>,
    /// Aliases of creates the master never answered: such an instance may exist.
    pending_creates: Vec<String>,
    acknowledged: usize,
}

/// xorshift64*: enough randomness for kill moments and operation choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One client's loop for a round: its own instances only, so no two requests race on one
/// instance and each instance has at most one unanswered request.
fn client(
    addr: std::net::SocketAddr,
    key: String,
    who: usize,
    round: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut rng = Rng(seed | 1);
    let mut seq = 0usize;
    let mine = |l: &Ledger| -> Vec<(String, String)> {
        l.instances
            .iter()
            .filter(|(_, e)| e.pending.is_none())
            .filter_map(|(id, e)| match &e.acked {
                Known::Present(alias)
                    if alias.starts_with(&format!("c{who}-"))
                        || alias.starts_with(&format!("p{who}-")) =>
                {
                    Some((id.clone(), alias.clone()))
                }
                _ => None,
            })
            .collect()
    };
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let tag = format!("{who}-{round}-{seq}");
        let owned = mine(&ledger.lock().unwrap());
        let choice = rng.below(3);
        if owned.is_empty() || choice == 0 {
            let alias = format!("c{tag}");
            let body = format!(
                r#"{{"alias":"{alias}","url":"client://127.0.0.1:{}/127.0.0.1:9"}}"#,
                free_port()
            );
            ledger.lock().unwrap().pending_creates.push(alias.clone());
            match try_call(addr, &key, "POST", "/instances", Some(&body)) {
                Some((status, text)) if (200..300).contains(&status) => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let id = v["id"].as_str().unwrap().to_string();
                    let mut l = ledger.lock().unwrap();
                    l.pending_creates.retain(|a| a != &alias);
                    l.instances.insert(
                        id,
                        Entry {
                            acked: Known::Present(alias),
                            pending: None,
                        },
                    );
                    l.acknowledged += 1;
                }
                _ => return,
            }
            continue;
        }
        let (id, old) = &owned[rng.below(owned.len() as u64) as usize];
        let (method, body, after) = if choice == 1 {
            let alias = format!("p{tag}");
            (
                "PATCH",
                Some(format!(r#"{{"alias":"{alias}"}}"#)),
                Known::Present(alias),
            )
        } else {
            ("DELETE", None, Known::Absent)
        };
        ledger
            .lock()
            .unwrap()
            .instances
            .get_mut(id)
            .unwrap()
            .pending = Some(after.clone());
        match try_call(
            addr,
            &key,
            method,
            &format!("/instances/{id}"),
            body.as_deref(),
        ) {
            Some((status, _)) if (200..300).contains(&status) => {
                let mut l = ledger.lock().unwrap();
                let e = l.instances.get_mut(id).unwrap();
                e.acked = after;
                e.pending = None;
                l.acknowledged += 1;
            }
            Some((status, text)) => {
                panic!("{method} {id} (alias {old}) answered {status}: {text}")
            }
            None => return,
        }
    }
}

/// Compares what the restarted master holds with the ledger, then makes the ledger exact
/// (each unanswered request resolved to what the master did with it).
fn check(ledger: &mut Ledger, listed: &[serde_json::Value], round: usize) {
    let mut present: HashMap<String, String> = listed
        .iter()
        .filter(|i| i["id"] != "********")
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["alias"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (id, e) in ledger.instances.iter_mut() {
        let actual = match present.remove(id) {
            Some(alias) => Known::Present(alias),
            None => Known::Absent,
        };
        let allowed = actual == e.acked || e.pending.as_ref() == Some(&actual);
        assert!(
            allowed,
            "round {round}: instance {id} is {actual:?} after the crash, but the last \
             acknowledged change made it {:?} (unanswered: {:?})",
            e.acked, e.pending
        );
        e.acked = actual;
        e.pending = None;
    }
    // What is left must come from a create that was never answered.
    for (id, alias) in present {
        let pos = ledger.pending_creates.iter().position(|a| *a == alias);
        assert!(
            pos.is_some(),
            "round {round}: instance {id} (alias {alias:?}) is there, but no request made it"
        );
        ledger.instances.insert(
            id,
            Entry {
                acked: Known::Present(alias),
                pending: None,
            },
        );
    }
    ledger.pending_creates.clear();
    ledger.instances.retain(|_, e| e.acked != Known::Absent);
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let seed = std::env::var("CRASH_WRITES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("CRASH_WRITES_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let (_dir, root) = private_state_dir();
    let port = free_port();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut key = String::new();

    for round in 0..=ROUNDS {
        let mut m = MasterProc::launch_fast(&root, port, &[]);
        let loaded = m.wait_ready();
        if round == 0 {
            key = loaded;
        } else {
            assert_eq!(loaded, key, "round {round}: the API key changed");
            let (status, body) = try_call(m.addr, &key, "GET", "/instances", None)
                .expect("the restarted master answers");
            assert_eq!(status, 200, "{body}");
            let listed: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
            check(&mut ledger.lock().unwrap(), &listed, round);
        }
        if round == ROUNDS {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|who| {
                let (addr, key, stop, ledger) = (m.addr, key.clone(), stop.clone(), ledger.clone());
                let seed = rng.next();
                std::thread::spawn(move || client(addr, key, who, round, seed, stop, ledger))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("a client thread failed");
        }
    }
    let l = ledger.lock().unwrap();
    println!(
        "{} acknowledged changes over {ROUNDS} kills; {} instances at the end",
        l.acknowledged,
        l.instances.len()
    );
    assert!(l.acknowledged > 0, "no change was ever acknowledged");
}
