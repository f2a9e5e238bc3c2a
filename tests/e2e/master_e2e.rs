//! End to end with the built binary: a real `nodepass master://...` process, real workers
//! (`nodepass worker <url>`) spawned by it, real traffic through a single-end client
//! instance to a loopback echo server, SSE read as a client, kill -9 of a worker and of the
//! master, and a dashboard session as spec/CLIENTS.md describes it.
//! Intervals are shortened through the NP_* variables so each test takes seconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nodepass_testkit::api::{Api, Sse};
use nodepass_testkit::free_port;
use nodepass_testkit::master::MasterProc;
use nodepass_testkit::net::echo_server;

fn spawn_master(state: &Path, port: u16) -> MasterProc {
    // The master refuses a state directory other users can reach.
    std::fs::set_permissions(state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    MasterProc::spawn(
        Path::new(env!("CARGO_BIN_EXE_nodepass")),
        state,
        port,
        &[
            ("NP_REPORT_INTERVAL", "500ms"),
            ("NP_SHUTDOWN_TIMEOUT", "2s"),
        ],
    )
}

/// True while `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn wait_dead(pid: i32, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `n` bytes through `via` and reads them back.
fn echo_through(via: u16, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", via)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot reach the instance on {via}: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    s.write_all(&data).unwrap();
    let mut back = vec![0u8; n];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, data, "echo through the tunnel");
}

fn create(api: &Api, url: &str) -> String {
    let r = api.call("POST", "/instances", Some(&format!(r#"{{"url":"{url}"}}"#)));
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["restart"], true);
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn traffic_counters_crash_restart_and_master_kill() {
    let state = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let port = free_port();
    let mut master = spawn_master(state.path(), port);
    let api = master.api.clone();
    let mut sse = Sse::open(api.addr, "/api/v1/events", &api.key);
    assert_eq!(sse.status, 200);

    let listen = free_port();
    let id = create(&api, &format!("client://127.0.0.1:{listen}/{echo}?mode=1"));
    api.wait_instance(&id, 15, "running", |v| v["status"] == "running");
    assert_eq!(api.instance(&id)["mode"], 1);

    // Real traffic; the counters move in GET and over SSE.
    echo_through(listen, 100_000);
    let v = api.wait_instance(&id, 10, "tcp counters", |v| {
        v["tcprx"].as_u64() >= Some(100_000) && v["tcptx"].as_u64() >= Some(100_000)
    });
    assert!(v["tcprx"].is_u64());
    let ev = sse.wait_for(Duration::from_secs(10), |e| {
        e.kind() == "update"
            && e.id() == id
            && e.data["instance"]["tcprx"].as_u64() >= Some(100_000)
    });
    assert_eq!(ev.data["instance"]["status"], "running");

    // kill -9 the worker: error, then an automatic restart with the counters kept.
    let pid1 = master.wait_worker_pid(&id, 1);
    send_signal(pid1, "KILL");
    sse.wait_for(Duration::from_secs(10), |e| {
        e.kind() == "update" && e.id() == id && e.data["instance"]["status"] == "error"
    });
    let log = sse.wait_for(Duration::from_secs(10), |e| {
        e.kind() == "log" && e.id() == id
    });
    let text = log.data["logs"].as_str().unwrap().to_string();
    assert!(text.contains("restarting in"), "{text}");
    let pid2 = master.wait_worker_pid(&id, 2);
    assert_ne!(pid1, pid2);
    api.wait_instance(&id, 15, "running again", |v| v["status"] == "running");
    echo_through(listen, 1000);
    let before_kill = api.wait_instance(&id, 10, "counters after restart", |v| {
        v["tcprx"].as_u64() >= Some(101_000)
    });

    // Metadata that must survive the master's death.
    let r = api.call(
        "PATCH",
        &format!("/instances/{id}"),
        Some(r#"{"alias":"kept","meta":{"tags":{"env":"e2e"}}}"#),
    );
    assert_eq!(r.status, 200);
    let stopped_id = create(
        &api,
        &format!("client://127.0.0.1:{}/{echo}?mode=1", free_port()),
    );
    api.wait_instance(&stopped_id, 15, "running", |v| v["status"] == "running");
    let r = api.call(
        "PATCH",
        &format!("/instances/{stopped_id}"),
        Some(r#"{"restart":false,"action":"stop"}"#),
    );
    assert_eq!(r.status, 200);
    api.wait_instance(&stopped_id, 10, "stopped", |v| v["status"] == "stopped");
    // Let the periodic save (every NP_REPORT_INTERVAL) see the latest counters.
    std::thread::sleep(Duration::from_millis(1500));

    // kill -9 the master: its worker dies with it (PR_SET_PDEATHSIG).
    master.kill9();
    wait_dead(pid2, 10);

    let mut master2 = spawn_master(state.path(), port);
    let api2 = master2.api.clone();
    assert_eq!(api2.key, api.key, "the API key survives");
    let v = api2.wait_instance(&id, 15, "running after master restart", |v| {
        v["status"] == "running"
    });
    assert_eq!(v["alias"], "kept");
    assert_eq!(v["meta"]["tags"]["env"], "e2e");
    assert_eq!(v["restart"], true);
    assert!(
        v["tcprx"].as_u64() >= before_kill["tcprx"].as_u64(),
        "counters survive: {v} vs {before_kill}"
    );
    let s = api2.instance(&stopped_id);
    assert_eq!(s["status"], "stopped", "restart:false stays stopped");
    assert_eq!(s["restart"], false);
    echo_through(listen, 500);
    let pid3 = master2.wait_worker_pid(&id, 1);
    assert!(alive(pid3));

    // SIGTERM: the worker is stopped and the master exits cleanly.
    let status = master2.terminate();
    assert!(status.success(), "master exit: {status:?}");
    wait_dead(pid3, 5);
    master2.wait_line(1, |l| l.contains("Master shutdown complete"));
}

/// Sends a signal with kill(1) (by pid, to processes this test's master started).
fn send_signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The session a dashboard (NodePassDash) plays, per spec/CLIENTS.md, with its time limits
/// as the failure bounds.
#[test]
fn dashboard_session() {
    let state = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let master = spawn_master(state.path(), free_port());
    let api = master.api.clone();

    // Connect SSE: 200, exactly text/event-stream, an event within 10 s.
    let mut sse = Sse::open(api.addr, "/api/v1/events", &api.key);
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let first = sse.next_event(Duration::from_secs(10)).unwrap();
    assert_eq!(first.kind(), "initial");
    let ver = api.get("/info").json()["ver"].as_str().unwrap().to_string();
    let nums: Vec<u32> = ver
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(nums >= vec![1, 10, 0], "ver {ver} must be >= 1.10.0");

    // Create: a `create` event within 3 s, then running.
    let listen = free_port();
    let id = create(&api, &format!("client://127.0.0.1:{listen}/{echo}?mode=1"));
    sse.wait_for(Duration::from_secs(3), |e| {
        e.kind() == "create" && e.id() == id
    });
    sse.wait_for(Duration::from_secs(5), |e| {
        e.kind() == "update" && e.id() == id && e.data["instance"]["status"] == "running"
    });
    let path = format!("/instances/{id}");
    let status_event = |sse: &mut Sse, status: &str, secs: u64| {
        sse.wait_for(Duration::from_secs(secs), |e| {
            e.kind() == "update" && e.id() == id && e.data["instance"]["status"] == status
        })
    };
    // stop / start: an update with the new status within 3 s each.
    assert_eq!(
        api.call("PATCH", &path, Some(r#"{"action":"stop"}"#))
            .status,
        200
    );
    status_event(&mut sse, "stopped", 3);
    assert_eq!(
        api.call("PATCH", &path, Some(r#"{"action":"start"}"#))
            .status,
        200
    );
    status_event(&mut sse, "running", 3);
    // restart: stopped then running, each within 5 s.
    assert_eq!(
        api.call("PATCH", &path, Some(r#"{"action":"restart"}"#))
            .status,
        200
    );
    status_event(&mut sse, "stopped", 5);
    status_event(&mut sse, "running", 5);
    echo_through(listen, 2000);
    // Periodic updates while running (the traffic history relies on them).
    status_event(&mut sse, "running", 5);

    // Peer and tags in separate PATCHes.
    let sid = "3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
    let r = api.call(
        "PATCH",
        &path,
        Some(&format!(
            r#"{{"meta":{{"peer":{{"sid":"{sid}","type":"0","alias":"edge"}}}}}}"#
        )),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api.call("PATCH", &path, Some(r#"{"meta":{"tags":{"site":"a"}}}"#));
    let v = r.json();
    assert_eq!(v["meta"]["peer"]["sid"], sid);
    assert_eq!(v["meta"]["tags"]["site"], "a");
    // tcping as the dashboard calls it.
    let t = api.get(&format!("/tcping?target={echo}")).json();
    assert_eq!(t["connected"], true);
    assert!(t["latency"].is_i64());

    // Key regeneration closes the stream; the new key is read from `url`.
    let r = api.call(
        "PATCH",
        "/instances/********",
        Some(r#"{"action":"restart"}"#),
    );
    let new_key = r.json()["url"].as_str().unwrap().to_string();
    sse.wait_for(Duration::from_secs(5), |e| e.kind() == "shutdown");
    assert!(sse.ends(Duration::from_secs(5)));
    let mut api2 = api.clone();
    api2.key = new_key;

    // Delete: 204 empty; the worker is gone.
    let pid = master.wait_worker_pid(&id, 1);
    let r = api2.call("DELETE", &path, None);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(api2.get(&path).status, 404);
    let pids = master.worker_pids(&id);
    for p in pids.into_iter().chain([pid]) {
        wait_dead(p, 5);
    }
}

/// A worker that stops reporting (SIGSTOP) turns `error` after 3 report intervals and back
/// to `running` when it reports again (SIGCONT); a worker that ignores SIGTERM (stopped) is
/// killed after NP_SHUTDOWN_TIMEOUT.
#[test]
fn stale_worker_and_forced_stop() {
    let state = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let master = spawn_master(state.path(), free_port());
    let api = master.api.clone();
    let mut sse = Sse::open(api.addr, "/api/v1/events", &api.key);
    let id = create(
        &api,
        &format!("client://127.0.0.1:{}/{echo}?mode=1", free_port()),
    );
    api.wait_instance(&id, 15, "running", |v| v["status"] == "running");
    let pid = master.wait_worker_pid(&id, 1);

    send_signal(pid, "STOP");
    sse.wait_for(Duration::from_secs(10), |e| {
        e.kind() == "update" && e.id() == id && e.data["instance"]["status"] == "error"
    });
    let log = sse.wait_for(Duration::from_secs(5), |e| {
        e.kind() == "log" && e.id() == id
    });
    assert!(
        log.data["logs"]
            .as_str()
            .unwrap()
            .contains("stopped reporting"),
        "{}",
        log.data["logs"]
    );
    send_signal(pid, "CONT");
    api.wait_instance(&id, 10, "running again", |v| v["status"] == "running");
    assert_eq!(master.worker_pids(&id).len(), 1, "no restart was needed");

    // SIGTERM cannot reach a stopped process: the master escalates to SIGKILL.
    send_signal(pid, "STOP");
    let r = api.call(
        "PATCH",
        &format!("/instances/{id}"),
        Some(r#"{"action":"stop"}"#),
    );
    assert_eq!(r.status, 200);
    api.wait_instance(&id, 15, "stopped", |v| v["status"] == "stopped");
    master.wait_line(5, |l| l.contains(&format!("Instance force killed [{id}]")));
    wait_dead(pid, 5);
}

/// The restart policy travels with the supervisor's commands: after `PATCH {"restart":
/// false}` a crashed worker is not started again (the log says so and the instance stays
/// `error`); after `{"restart": true}` the next crash is restarted.
#[test]
fn a_crash_follows_the_restart_policy_set_by_patch() {
    let state = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let master = spawn_master(state.path(), free_port());
    let api = master.api.clone();
    let mut sse = Sse::open(api.addr, "/api/v1/events", &api.key);
    let listen = free_port();
    let id = create(&api, &format!("client://127.0.0.1:{listen}/{echo}?mode=1"));
    api.wait_instance(&id, 15, "running", |v| v["status"] == "running");
    let r = api.call(
        "PATCH",
        &format!("/instances/{id}"),
        Some(r#"{"restart":false}"#),
    );
    assert_eq!(r.status, 200);
    // The supervisor's line about a crash of this instance.
    let failure_line = |sse: &mut Sse| {
        let log = sse.wait_for(Duration::from_secs(10), |e| {
            e.kind() == "log"
                && e.id() == id
                && e.data["logs"]
                    .as_str()
                    .is_some_and(|t| t.contains("Instance failed"))
        });
        log.data["logs"].as_str().unwrap_or_default().to_string()
    };
    let pid1 = master.wait_worker_pid(&id, 1);
    send_signal(pid1, "KILL");
    let text = failure_line(&mut sse);
    assert!(text.contains("restart is off"), "{text}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.instance(&id)["status"], "error", "not restarted");

    // Policy back on, started by hand, crashed again: restarted this time.
    let on = api.call(
        "PATCH",
        &format!("/instances/{id}"),
        Some(r#"{"restart":true,"action":"start"}"#),
    );
    assert_eq!(on.status, 200);
    let pid2 = master.wait_worker_pid(&id, 2);
    api.wait_instance(&id, 15, "running again", |v| v["status"] == "running");
    send_signal(pid2, "KILL");
    let text = failure_line(&mut sse);
    assert!(text.contains("restarting in"), "{text}");
    master.wait_worker_pid(&id, 3);
}
