//! The API port against clients that do not play along: half-sent requests are closed by
//! the header timeout while the API keeps answering, one host holding silent connections
//! can neither take every place nor keep them past the header timeout, a key rotation ends the old streams
//! before anything carries the new key, and methods a path does not declare are 405 on
//! every path, the public ones included.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::TestMaster;
use nodepass_testkit::api::Sse;

/// Half-sent requests (a header that never ends) on this many connections.
const HALF_OPEN: usize = 200;

#[test]
fn half_sent_requests_are_closed_while_the_api_keeps_working() {
    let tm = TestMaster::start();
    // A quiet event stream outlives the header timeout (it is a request in progress).
    let mut sse = Sse::open(tm.api.addr, "/api/v1/events", &tm.api.key);
    assert_eq!(sse.status, 200);
    let _initial = sse
        .next_event(Duration::from_secs(5))
        .expect("initial event");
    let mut idle: Vec<TcpStream> = (0..HALF_OPEN)
        .map(|_| {
            let mut s = TcpStream::connect(tm.api.addr).expect("connect to the API");
            s.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\nX-Partial: ")
                .unwrap();
            s
        })
        .collect();

    // Meanwhile the API answers, and creating an instance works.
    assert_eq!(tm.api.get("/info").status, 200);
    let r = tm.api.call(
        "POST",
        "/instances",
        Some(r#"{"url":"client://127.0.0.1:29141/127.0.0.1:41041"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // Every half-sent request is closed by the server (EOF or reset), within a bound far
    // above the header timeout.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, s) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // an error answer may come first; the close follows
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("half-sent request {i} of {HALF_OPEN} still open after 60 s")
                }
                Err(_) => break, // reset: closed too
            }
        }
    }
    assert_eq!(tm.api.get("/info").status, 200);
    let r = tm.api.call(
        "POST",
        "/instances",
        Some(r#"{"url":"client://127.0.0.1:29142/127.0.0.1:41042"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    sse.wait_for(Duration::from_secs(10), |e| {
        e.kind() == "create" && e.id() == id
    });
}

#[test]
fn key_rotation_ends_old_streams_before_publishing_the_new_key() {
    let tm = TestMaster::start();
    let old_key = tm.api.key.clone();
    let mut sse = Sse::open(tm.api.addr, "/api/v1/events", &old_key);
    assert_eq!(sse.status, 200);
    let _initial = sse
        .next_event(Duration::from_secs(5))
        .expect("initial event");

    let r = tm.api.call(
        "PATCH",
        "/instances/********",
        Some(r#"{"action":"restart"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let new_key = r.json()["url"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key);

    // The old stream's remaining events: `shutdown`, then the end; never the new key.
    let mut kinds = Vec::new();
    while let Some(e) = sse.next_event(Duration::from_secs(10)) {
        assert!(
            !e.data.to_string().contains(&new_key),
            "a stream opened with the old key received the new key: {}",
            e.data
        );
        kinds.push(e.kind().to_string());
    }
    assert_eq!(kinds, ["shutdown"]);

    // A stream opened with the new key sees the rotation's `initial` record as usual.
    let mut fresh = Sse::open(tm.api.addr, "/api/v1/events", &new_key);
    assert_eq!(fresh.status, 200);
    let first = fresh.next_event(Duration::from_secs(5)).expect("initial");
    assert_eq!(first.data["instance"]["url"], new_key.as_str());
}

#[test]
fn undeclared_methods_are_405_on_every_path() {
    let tm = TestMaster::start();
    let paths = [
        ("POST", "/openapi.json"),
        ("DELETE", "/openapi.json"),
        ("PUT", "/docs"),
        ("POST", "/docs/index.html"),
        ("PATCH", "/events"),
        ("PUT", "/info"),
        ("POST", "/tcping"),
        ("PUT", "/instances"),
    ];
    for (method, path) in paths {
        let r = tm.api.call(method, path, Some("{}"));
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert!(
            r.header("allow").is_some(),
            "{method} {path}: no Allow header"
        );
    }
    assert_eq!(tm.api.get("/openapi.json").status, 200);
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

#[test]
fn one_host_holding_silent_connections_cannot_lock_others_out() {
    let tm = TestMaster::start();
    // More silent connections from 127.0.0.2 than the master has places in all.
    let silent: Vec<TcpStream> = (0..1100)
        .filter_map(|_| connect_from([127, 0, 0, 2], tm.api.addr).ok())
        .collect();
    assert_eq!(silent.len(), 1100, "the stranger could not connect");
    // Another host is served at once meanwhile (before, it waited in the backlog until a
    // silent connection's 60 s ran out).
    let mut s = TcpStream::connect(tm.api.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        format!(
            "GET /api/v1/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nConnection: close\r\n\r\n",
            tm.api.key
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another host was not served while one held 1100 connections: {answer:?}"
    );
    // Connections that never start a request are closed after the header timeout (10 s),
    // not the 60 s idle timeout.
    let deadline = Instant::now() + Duration::from_secs(25);
    for (i, mut c) in silent.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match c.read(&mut [0u8; 64]) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("silent connection {i} still open after 25 s")
            }
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("silent connection {i} got {n} bytes instead of a close"),
        }
    }
}

/// A client looping on actions faster than the worker can stop: each instance's command
/// queue is bounded, so once it is full the API answers 503 "busy" (nothing changed), and
/// once the worker caught up the same request works again. The worker here is a script
/// that ignores SIGTERM, so every stop takes the whole NP_SHUTDOWN_TIMEOUT (2 s here).
#[test]
fn actions_beyond_the_command_queue_are_refused_as_busy_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = dir.path().join("stubborn-worker");
    std::fs::write(
        &worker,
        "#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 1; done\n",
    )
    .expect("write the worker script");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
    }
    let tm = TestMaster::start_with("master://127.0.0.1:0/api?log=warn", worker);
    let r = tm.api.call(
        "POST",
        "/instances",
        Some(r#"{"url":"client://127.0.0.1:29151/127.0.0.1:41051"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let path = format!("/instances/{id}");
    // A restart: its stop waits 2 s for the stubborn worker; the stops sent meanwhile queue.
    let r = tm.api.call("PATCH", &path, Some(r#"{"action":"restart"}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut busy = None;
    for i in 0..200 {
        let r = tm.api.call("PATCH", &path, Some(r#"{"action":"stop"}"#));
        match r.status {
            200 => continue,
            503 => {
                busy = Some((i, r.json()));
                break;
            }
            other => panic!("PATCH {i}: {other} {}", r.text()),
        }
    }
    let (i, body) = busy.expect("200 stops in a row never filled the queue");
    assert!(i >= 30, "refused after only {i} actions");
    let text = body["error"].as_str().unwrap_or_default();
    assert!(text.starts_with("Instance busy"), "{body}");
    // A refused PATCH changed nothing, not even the parts before the action; one that
    // queues no command (an alias alone) is not held up.
    let r = tm
        .api
        .call("PATCH", &path, Some(r#"{"alias":"first","action":"stop"}"#));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(tm.api.instance(&id)["alias"], "");
    let r = tm.api.call("PATCH", &path, Some(r#"{"alias":"second"}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["alias"], "second");
    // The queue drains once the worker is gone (a stop of a stopped instance is at once).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = tm.api.call(
            "PATCH",
            &path,
            Some(r#"{"alias":"third","action":"start"}"#),
        );
        if r.status == 200 {
            assert_eq!(r.json()["alias"], "third");
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "the queue never drained");
        std::thread::sleep(Duration::from_millis(200));
    }
}
