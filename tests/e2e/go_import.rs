//! `nodepass import`: the Go master's state file taken over by ours, with the built binary.
//!
//! - The committed fixture (master/tests/fixtures/go-state/, written by the real Go master
//!   v1.14.0; its README says how) is imported and a real master started on it answers
//!   GET /instances field by field as the Go master did, with the same API key and master id.
//! - The import is all or nothing and only reads the Go file: a truncated or foreign file, a
//!   state that already holds instances, a master running on the state: each refused with a
//!   message naming the problem, and the state as it was.
//! - Live, when NODEPASS_GO_BIN names the Go binary: the Go master makes a tunnel pair through
//!   its API and carries traffic, stops; ours imports, answers the same, accepts the same key
//!   and the imported tunnel carries traffic again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nodepass_testkit::api::request;
use nodepass_testkit::free_port;
use nodepass_testkit::go::GoMaster;
use nodepass_testkit::master::MasterProc;
use nodepass_testkit::net::echo_server;
use serde_json::Value;

const FIXTURE_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/master/tests/fixtures/go-state"
);
const FIXTURE_KEY: &str = "ed8f296e079d1419bbc9e1abb863c737";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodepass"))
}

fn import(gob: &Path, state: &Path, replace: bool) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("import").arg(gob).arg("--state").arg(state);
    if replace {
        cmd.arg("--replace");
    }
    cmd.output().expect("run nodepass import")
}

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    dir
}

fn start_ours(state: &Path) -> MasterProc {
    MasterProc::spawn(
        bin(),
        state,
        free_port(),
        &[
            ("NP_REPORT_INTERVAL", "500ms"),
            ("NP_SHUTDOWN_TIMEOUT", "2s"),
        ],
    )
}

/// The fields an import carries over (status and the live gauges belong to the running
/// process, not to the state).
const CARRIED: &[&str] = &[
    "id", "alias", "type", "url", "config", "restart", "meta", "tcprx", "tcptx", "udprx", "udptx",
];

fn by_id(list: &Value) -> std::collections::BTreeMap<String, Value> {
    list.as_array()
        .expect("an array of instances")
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i.clone()))
        .collect()
}

/// Every carried field of every instance the Go master answered is the same in ours, and
/// ours has no other instance.
fn assert_same_instances(go: &Value, ours: &Value) {
    let (go, ours) = (by_id(go), by_id(ours));
    assert_eq!(
        go.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>(),
        "the same instance ids"
    );
    for (id, g) in &go {
        for field in CARRIED {
            assert_eq!(g[field], ours[id][field], "instance {id}: field {field}");
        }
    }
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn the_go_fixture_is_imported_field_by_field() {
    let fixture = Path::new(FIXTURE_DIR);
    let go_answer: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("instances.json")).unwrap()).unwrap();
    // Import from a copy, to check the file is only read.
    let work = tempfile::tempdir().unwrap();
    let gob = work.path().join("nodepass.gob");
    std::fs::copy(fixture.join("nodepass.gob"), &gob).unwrap();
    let before = sha(&gob);
    let state = private_dir();
    let out = import(&gob, state.path(), false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Imported 4 instance(s)"), "{stdout}");
    assert!(stdout.contains("3 start with the master"), "{stdout}");
    assert_eq!(sha(&gob), before, "the Go file is unchanged");

    let master = start_ours(state.path());
    assert_eq!(
        master.api.key, FIXTURE_KEY,
        "the Go master's API key is kept"
    );
    master.wait_line(5, |l| l.contains(&format!("API Key loaded: {FIXTURE_KEY}")));
    let r = master.api.get("/instances");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_same_instances(&go_answer, &r.json());

    // The master id and alias come along (GET /info).
    let info = master.api.get("/info").json();
    assert_eq!(info["mid"], "dec18d573a56e23d");
    assert_eq!(info["alias"], "go-master-fixture");

    // restart: true instances are started by the master; the one the Go user had stopped
    // with restart off stays stopped.
    for id in ["c6b7a8a7", "58fd3cb3", "cd6f6a43"] {
        master
            .api
            .wait_instance(id, 20, "started", |v| v["status"] != "stopped");
    }
    assert_eq!(master.api.instance("458c24ef")["status"], "stopped");
    assert_eq!(master.api.instance("458c24ef")["restart"], false);
    // A key the Go master never had is refused as before.
    let wrong = request(
        master.api.addr,
        "GET",
        "/api/v1/instances",
        &[("X-API-Key", "00000000000000000000000000000000")],
        None,
    );
    assert_eq!(wrong.status, 401);
}

#[test]
fn a_bad_file_or_a_used_state_is_refused_and_nothing_changes() {
    let fixture = Path::new(FIXTURE_DIR).join("nodepass.gob");
    let bytes = std::fs::read(&fixture).unwrap();
    let work = tempfile::tempdir().unwrap();

    // Truncated, foreign, empty, a directory, a missing file: exit 1, one clear line, and no
    // state written.
    let cases: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("truncated", Some(bytes[..bytes.len() / 2].to_vec())),
        ("json", Some(br#"{"instances":[]}"#.to_vec())),
        ("empty", Some(Vec::new())),
        (
            "random",
            Some((0..4096u32).map(|i| (i * 7919 % 251) as u8).collect()),
        ),
        ("missing", None),
    ];
    for (name, content) in cases {
        let path = work.path().join(name);
        if let Some(c) = content {
            std::fs::write(&path, c).unwrap();
        }
        let state = work.path().join(format!("state-{name}"));
        let out = import(&path, &state, false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.starts_with("nodepass: "), "{name}: {err}");
        assert!(
            err.contains(&path.display().to_string()),
            "{name}: names the file: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(!state.exists(), "{name}: no state was made");
    }
    let dir_out = import(work.path(), &work.path().join("state-dir"), false);
    assert_eq!(dir_out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dir_out.stderr).contains("not a regular file"));

    // A state that holds instances: refused without --replace, and left as it was.
    let state = private_dir();
    let master = start_ours(state.path());
    let created = master.api.call(
        "POST",
        "/instances",
        Some(r#"{"alias":"mine","url":"client://127.0.0.1:10999/127.0.0.1:9"}"#),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let own_key = master.api.key.clone();
    // While the master runs on it, the state is locked: a clear refusal.
    let out = import(&fixture, state.path(), true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stop it first"), "{err}");
    drop(master);

    let out = import(&fixture, state.path(), false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("already holds 1 instance(s)") && err.contains("--replace"),
        "{err}"
    );
    let master = start_ours(state.path());
    assert_eq!(master.api.key, own_key, "our key is untouched");
    let list = master.api.get("/instances").json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    drop(master);

    // With --replace the Go state replaces ours as a whole.
    let out = import(&fixture, state.path(), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let master = start_ours(state.path());
    assert_eq!(master.api.key, FIXTURE_KEY);
    let ids: Vec<String> = by_id(&master.api.get("/instances").json())
        .into_keys()
        .collect();
    let mut expected: Vec<&str> = FIXTURE_IDS.to_vec();
    expected.push("********");
    expected.sort();
    assert_eq!(ids, expected, "exactly the Go master's instances");
}

const FIXTURE_IDS: &[&str] = &["c6b7a8a7", "58fd3cb3", "458c24ef", "cd6f6a43"];

// ---- live, against the Go master ----

fn go_call(
    go: &GoMaster,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> nodepass_testkit::api::Resp {
    request(
        go.addr,
        method,
        &format!("/api/v1{path}"),
        &[("X-API-Key", &go.key)],
        body.map(str::as_bytes),
    )
}

/// Sends `n` bytes through `addr` and reads them back; true when they all came back.
fn echo_through(addr: SocketAddr, n: usize) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    if s.write_all(&data).is_err() {
        return false;
    }
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).is_ok() && got == data
}

fn wait_echo(addr: SocketAddr, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !echo_through(addr, n) {
        assert!(Instant::now() < deadline, "no traffic through {addr}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn live_switch_from_the_go_master() {
    let Some(go_bin) = std::env::var_os("NODEPASS_GO_BIN").map(PathBuf::from) else {
        eprintln!("skipping: set NODEPASS_GO_BIN to the Go nodepass binary to import live");
        return;
    };
    if !go_bin.exists() {
        eprintln!(
            "skipping: NODEPASS_GO_BIN={} does not exist",
            go_bin.display()
        );
        return;
    }
    let echo = echo_server();
    let (tunnel, user) = (free_port(), free_port());
    let go = GoMaster::start(&go_bin);
    let mk = |alias: &str, url: String| -> String {
        let r = go_call(
            &go,
            "POST",
            "/instances",
            Some(&format!(r#"{{"alias":"{alias}","url":"{url}"}}"#)),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    };
    let server = mk(
        "live server",
        format!("server://livekey@127.0.0.1:{tunnel}/127.0.0.1:{user}?log=info"),
    );
    // The Go master starts instances at once and a client in mode 0 whose server does not
    // listen yet takes the tunnel port as single-end: wait for the server first.
    let tunnel_addr: SocketAddr = format!("127.0.0.1:{tunnel}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(tunnel_addr).is_err() {
        assert!(Instant::now() < deadline, "the Go server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = mk(
        "live client",
        format!("client://livekey@127.0.0.1:{tunnel}/{echo}?log=info"),
    );
    let r = go_call(
        &go,
        "PATCH",
        &format!("/instances/{server}"),
        Some(r#"{"meta":{"peer":{"sid":"","type":"2","alias":"peer-a"},"tags":{"env":"live"}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let user_addr: SocketAddr = format!("127.0.0.1:{user}").parse().unwrap();
    wait_echo(user_addr, 200_000);
    // Let the Go master see the traffic in a report, then take its answer.
    let deadline = Instant::now() + Duration::from_secs(15);
    let go_answer = loop {
        let v = go_call(&go, "GET", "/instances", None).json();
        if by_id(&v)[&server]["tcprx"].as_u64().unwrap_or(0) > 0 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the Go master never counted the traffic"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Make the Go master write its state now, with these totals: at SIGTERM it saves again,
    // but a save that finds another one in progress (stopping each instance saves too) is
    // a silent no-op in the reference (REFERENCE.md 9.1), so the file could otherwise keep
    // an older state and the comparison below would fail for the Go program's reason.
    let r = go_call(
        &go,
        "PATCH",
        &format!("/instances/{server}"),
        Some(r#"{"meta":{"tags":{"env":"live"}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    let go_key = go.key.clone();
    let gob = go.dir.path().join("gob").join("nodepass.gob");
    let mut go = go;
    // SIGTERM: the Go master stops its instances and saves its state.
    let _ = Command::new("kill")
        .args(["-TERM", &go.child.id().to_string()])
        .status();
    let _ = go.child.wait();
    assert!(gob.exists(), "the Go master wrote no state file");
    // The Go master's instances are gone: the user port is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(user_addr).is_ok() {
        assert!(Instant::now() < deadline, "the Go tunnel still runs");
        std::thread::sleep(Duration::from_millis(100));
    }

    let state = private_dir();
    let out = import(&gob, state.path(), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = start_ours(state.path());
    assert_eq!(ours.api.key, go_key, "the dashboard's key keeps working");
    // The totals at the Go master's last save are at least what it answered before.
    let list = ours.api.get("/instances").json();
    let (g, o) = (by_id(&go_answer), by_id(&list));
    for (id, gi) in &g {
        for field in ["id", "alias", "type", "url", "config", "restart", "meta"] {
            assert_eq!(gi[field], o[id][field], "instance {id}: field {field}");
        }
        for field in ["tcprx", "tcptx", "udprx", "udptx"] {
            assert!(
                o[id][field].as_u64() >= gi[field].as_u64(),
                "instance {id}: {field} {} < {}",
                o[id][field],
                gi[field]
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while ours.api.instance(&server)["status"] != "running" {
        assert!(
            Instant::now() < deadline,
            "the imported server never ran; master output:\n{}",
            ours.lines.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ours.api
        .wait_instance(&client, 20, "running", |v| v["status"] == "running");
    wait_echo(user_addr, 200_000);
}

#[test]
fn an_import_as_root_into_a_service_users_state_leaves_the_files_to_that_user() {
    use std::os::unix::fs::MetadataExt;
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    {
        eprintln!("skipping: this test needs to run as root (it imports as root into another user's directory)");
        return;
    }
    let state = private_dir();
    // The service's user (here `nobody`) owns the state directory.
    std::os::unix::fs::chown(state.path(), Some(65534), Some(65534)).unwrap();
    let out = import(
        &Path::new(FIXTURE_DIR).join("nodepass.gob"),
        state.path(),
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stack = vec![state.path().to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(
                p.metadata().unwrap().uid(),
                65534,
                "{} stays root's",
                p.display()
            );
            seen += 1;
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    assert!(seen >= 2, "the import wrote the database and the backup");
}
