//! Where the tunnel key may and may not show up, with real processes: not in a worker's
//! command line (what `ps` shows every local user), not in any log line of the master or
//! the worker, not in the text of a `log` event; but in the API's `url` field, which
//! dashboards need. `nodepass worker <url>` still works by hand. And a master pointed at a
//! state directory other users can reach refuses to start, leaving the directory as it is.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodepass_testkit::api::try_call;
use nodepass_testkit::api::Sse;
use nodepass_testkit::free_port;
use nodepass_testkit::master::{private_state_dir, MasterProc};

const KEY: &str = "Tunnel-Key-9f3a71c2";

#[test]
fn tunnel_key_stays_out_of_ps_logs_and_log_events() {
    let (_dir, root) = private_state_dir();
    let mut m = MasterProc::launch_fast(&root, free_port(), &[]);
    let api_key = m.wait_ready();
    let mut sse = Sse::open(m.addr, "/api/v1/events", &api_key);
    assert_eq!(sse.status, 200);

    let url = format!(
        "server://{KEY}@127.0.0.1:{}/127.0.0.1:9?log=debug",
        free_port()
    );
    let (status, body) = try_call(
        m.addr,
        &api_key,
        "POST",
        "/instances",
        Some(&format!(r#"{{"url":"{url}"}}"#)),
    )
    .expect("the master answers");
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    // The API keeps the key: a dashboard builds the client end from it.
    assert!(created["url"].as_str().unwrap().contains(KEY), "{created}");

    // The worker's "Server started" line, relayed as a log event: key masked, while the
    // instance in the same event still carries it.
    let started = sse.wait_for(Duration::from_secs(20), |e| {
        e.kind() == "log"
            && e.data["logs"]
                .as_str()
                .unwrap_or("")
                .contains("Server started")
    });
    let logs = started.data["logs"].as_str().unwrap();
    assert!(logs.contains("server://****@127.0.0.1:"), "{logs}");
    assert!(started.data["instance"]["url"]
        .as_str()
        .unwrap()
        .contains(KEY));

    // The worker's command line, as `ps` reads it.
    let line = m.wait_line(10, |l| l.contains("Instance starting: ") && l.contains(&id));
    let pid: u32 = line
        .rsplit("(pid ")
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(&args[1..], ["worker", "-"], "worker command line {args:?}");
    let ps = Command::new("ps")
        .args(["-ww", "-o", "args=", "-p", &pid.to_string()])
        .output();
    if let Ok(ps) = ps {
        let shown = String::from_utf8_lossy(&ps.stdout);
        assert!(!shown.contains(KEY), "ps shows the key: {shown}");
    }

    // A restart of the instance starts a new worker the same way.
    let (status, body) = try_call(
        m.addr,
        &api_key,
        "PATCH",
        &format!("/instances/{id}"),
        Some(r#"{"action":"restart"}"#),
    )
    .expect("the master answers");
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.output().matches("Instance starting: ").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the restarted worker never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sse.wait_for(Duration::from_secs(20), |e| {
        e.kind() == "log"
            && e.data["logs"]
                .as_str()
                .unwrap_or("")
                .contains("Server started")
            && e.data["time"] != started.data["time"]
    });

    // Every line the master printed: its own (Instance created/starting) and the workers'.
    let out = m.output();
    assert!(out.contains("Instance created: server://****@"), "{out}");
    assert!(out.contains("Instance starting: server://****@"), "{out}");
    assert!(out.contains("Server started: server://****@"), "{out}");
    assert!(
        !out.contains(KEY),
        "the key is in the master's output:\n{out}"
    );
    // And every log event received.
    let raw = String::from_utf8_lossy(&sse.raw).into_owned();
    let mut log_events = 0;
    for frame in raw.split("\n\n") {
        let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        if v["type"] == "log" {
            log_events += 1;
            let text = v["logs"].as_str().unwrap();
            assert!(!text.contains(KEY), "log event with the key: {text}");
        }
    }
    assert!(log_events >= 2, "{log_events} log events");
}

/// Runs `nodepass <args>` with `stdin`, collects stdout lines until one matches `until`,
/// then ends it; returns stdout and stderr lines.
fn run_until(args: &[&str], stdin: Option<&str>, until: &str) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodepass"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nodepass");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l2 = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lines.lock().unwrap().iter().any(|l| l.contains(until)) {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let mut all = lines.lock().unwrap().clone();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
    all.extend(err.lines().map(String::from));
    all
}

#[test]
fn worker_takes_the_url_as_argument_or_on_stdin_and_masks_the_key() {
    let url = format!("server://{KEY}@127.0.0.1:{}/127.0.0.1:9", free_port());
    // By hand, as before.
    let by_arg = run_until(&["worker", &url], None, "\"kind\":\"ready\"");
    assert!(
        by_arg.iter().any(|l| l.contains("\"kind\":\"ready\"")),
        "{by_arg:#?}"
    );
    // Through stdin, as the master does.
    let url = format!("server://{KEY}@127.0.0.1:{}/127.0.0.1:9", free_port());
    let by_stdin = run_until(
        &["worker", "-"],
        Some(&format!("{url}\n")),
        "\"kind\":\"ready\"",
    );
    assert!(
        by_stdin.iter().any(|l| l.contains("\"kind\":\"ready\"")),
        "{by_stdin:#?}"
    );
    // Foreground mode, human lines.
    let url = format!("server://{KEY}@127.0.0.1:{}/127.0.0.1:9", free_port());
    let foreground = run_until(&[&url], None, "Server started");
    for lines in [&by_arg, &by_stdin, &foreground] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Server started: server://****@127.0.0.1:")),
            "{lines:#?}"
        );
        assert!(!lines.iter().any(|l| l.contains(KEY)), "{lines:#?}");
    }
    // Nothing on stdin: a clear error, status 2.
    let out = Command::new(env!("CARGO_BIN_EXE_nodepass"))
        .args(["worker", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin"));
}

#[test]
fn master_refuses_a_state_dir_open_to_other_users() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut m = MasterProc::launch_fast(&shared, free_port(), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = m.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the master started on a shared directory"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    // The reader threads may still be draining the pipes.
    let out = m.wait_line(5, |l| l.contains("chmod 700"));
    assert!(out.contains(&shared.display().to_string()), "{out}");
    assert!(out.contains("0755"), "{out}");
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "the shared directory's mode was changed");
    m.kill9();
}

/// A worker left running by a master that died without taking it along (no
/// PR_SET_PDEATHSIG, e.g. in some containers) is found by the instance named in its
/// environment, now that its command line no longer holds the URL, and ended.
#[test]
fn stray_worker_of_a_previous_run_is_found_without_the_url_in_its_command_line() {
    use nodepass_master::model::{Instance, InstanceKind, InstanceStatus};
    use nodepass_master::store::{MasterRecord, Snapshot, StoredInstance};

    let url = format!("server://{KEY}@127.0.0.1:{}/127.0.0.1:9", free_port());
    let mut stray = Command::new(env!("CARGO_BIN_EXE_nodepass"))
        .args(["worker", "-"])
        .env("NODEPASS_INSTANCE", "5afe0001")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    stray
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{url}\n").as_bytes())
        .unwrap();
    let mut first = String::new();
    BufReader::new(stray.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"kind\""), "the stray worker runs: {first}");

    // The previous run's state names that pid for the instance.
    let (_dir, root) = private_state_dir();
    let snap = Snapshot {
        master: Some(MasterRecord::generate()),
        instances: vec![StoredInstance {
            instance: Instance {
                id: "5afe0001".into(),
                kind: InstanceKind::Server,
                status: InstanceStatus::Running,
                url,
                restart: false,
                ..Instance::default()
            },
            pid: Some(stray.id()),
        }],
    };
    std::fs::write(root.join("backup.json"), serde_json::to_vec(&snap).unwrap()).unwrap();
    let mut m = MasterProc::launch_fast(&root, free_port(), &[]);
    m.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stray.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the stray worker still runs; master output:\n{}",
            m.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        m.output()
            .contains(&format!("Ending stray worker pid {}", stray.id())),
        "{}",
        m.output()
    );
}
