//! End to end for `GET /api/v1/metrics`: the built `nodepass master://...` process runs a
//! real server/client instance pair (reverse mode) with real traffic to a loopback echo
//! server; each scrape is parsed with a Prometheus text-format parser and compared with
//! GET /instances taken around it. Then a worker is killed (restart counted, exit code
//! 137, counters never go down) and the server's counters are reset (they start again from
//! 0, which Prometheus reads as a counter reset).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nodepass_testkit::api::{request, Api};
use nodepass_testkit::free_port;
use nodepass_testkit::master::MasterProc;
use nodepass_testkit::net::echo_server;
use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;

fn scrape(api: &Api) -> Scrape {
    let r = api.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    Scrape::parse(r.text().lines().map(|l| Ok(l.to_string()))).expect("parseable scrape")
}

/// The single value of `name` for the series whose labels include `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(hits.len(), 1, "one series of {name} {labels:?}: {hits:?}");
    match hits[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name} is not a single value: {other:?}"),
    }
}

/// The instances of GET /instances (the key record left out).
fn instances(api: &Api) -> Vec<Json> {
    let list = api.get("/instances").json();
    list.as_array().unwrap()[1..].to_vec()
}

/// A scrape with GET /instances unchanged around it (workers report every 500 ms, so a
/// quiet moment comes quickly), so the two can be compared exactly.
fn consistent_scrape(api: &Api) -> (Scrape, Vec<Json>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = instances(api);
        let s = scrape(api);
        let after = instances(api);
        if before == after {
            return (s, after);
        }
        assert!(Instant::now() < deadline, "the instances never held still");
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Every per-instance figure of the scrape equals GET /instances.
fn assert_matches(s: &Scrape, list: &[Json]) {
    for inst in list {
        let id = inst["id"].as_str().unwrap();
        let labels = [
            ("id", id),
            ("alias", inst["alias"].as_str().unwrap()),
            ("type", inst["type"].as_str().unwrap()),
        ];
        for (metric, field) in [
            ("nodepass_instance_tcp_rx_bytes_total", "tcprx"),
            ("nodepass_instance_tcp_tx_bytes_total", "tcptx"),
            ("nodepass_instance_udp_rx_bytes_total", "udprx"),
            ("nodepass_instance_udp_tx_bytes_total", "udptx"),
            ("nodepass_instance_tcp_connections", "tcps"),
            ("nodepass_instance_udp_sessions", "udps"),
            ("nodepass_instance_pool_connections", "pool"),
        ] {
            assert_eq!(
                value(s, metric, &labels),
                inst[field].as_f64().unwrap(),
                "{metric} of {id}: {inst}"
            );
        }
        assert_eq!(
            value(s, "nodepass_instance_ping_seconds", &labels),
            inst["ping"].as_f64().unwrap() / 1000.0,
            "ping of {id}"
        );
        let status = inst["status"].as_str().unwrap();
        let mut l = labels.to_vec();
        l.push(("status", status));
        assert_eq!(
            value(s, "nodepass_instance_status", &l),
            1.0,
            "{id} {status}"
        );
    }
}

fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot reach {port}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn echo(s: &mut TcpStream, n: usize) {
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    s.write_all(&data).unwrap();
    let mut back = vec![0u8; n];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, data, "echo through the tunnel");
}

fn create(api: &Api, alias: &str, url: &str) -> String {
    let r = api.call(
        "POST",
        "/instances",
        Some(&format!(r#"{{"alias":"{alias}","url":"{url}"}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn scrape_matches_get_instances_through_traffic_a_crash_and_a_reset() {
    let state = tempfile::tempdir().unwrap();
    let echo_addr = echo_server();
    let master = MasterProc::spawn(
        Path::new(env!("CARGO_BIN_EXE_nodepass")),
        state.path(),
        free_port(),
        &[
            ("NP_REPORT_INTERVAL", "500ms"),
            ("NP_SHUTDOWN_TIMEOUT", "2s"),
        ],
    );
    let api = master.api.clone();

    // Without the key: 401.
    let r = request(api.addr, "GET", "/api/v1/metrics", &[], None);
    assert_eq!(r.status, 401);

    // A reverse-mode pair: users dial the server's port, the client dials the echo server.
    let tunnel = free_port();
    let user = free_port();
    let server = create(
        &api,
        "edge-server",
        &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1"),
    );
    let client = create(
        &api,
        "edge-client",
        &format!("client://k@127.0.0.1:{tunnel}/{echo_addr}?mode=2"),
    );
    for id in [&server, &client] {
        api.wait_instance(id, 20, "running with a pool", |v| {
            v["status"] == "running" && v["pool"].as_i64() > Some(0)
        });
    }

    // Real traffic, with one connection kept open so the connection gauges show it.
    let mut held = connect(user);
    echo(&mut held, 300_000);
    api.wait_instance(&server, 10, "traffic counted", |v| {
        v["tcprx"].as_u64() >= Some(300_000) && v["tcps"].as_i64() >= Some(1)
    });
    let (s, list) = consistent_scrape(&api);
    assert_matches(&s, &list);
    let server_labels = [("id", server.as_str())];
    assert!(value(&s, "nodepass_instance_tcp_connections", &server_labels) >= 1.0);
    assert!(value(&s, "nodepass_instance_tcp_rx_bytes_total", &server_labels) >= 300_000.0);
    assert_eq!(
        value(&s, "nodepass_instances", &[("status", "running")]),
        2.0
    );
    assert!(
        value(
            &s,
            "nodepass_instance_worker_uptime_seconds",
            &server_labels
        ) > 0.0
    );
    assert_eq!(
        value(
            &s,
            "nodepass_instance_worker_restarts_total",
            &server_labels
        ),
        0.0
    );
    assert!(
        value(
            &s,
            "nodepass_api_requests_total",
            &[
                ("route", "/api/v1/instances"),
                ("method", "POST"),
                ("status", "201")
            ]
        ) >= 2.0
    );
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0);
    drop(held);

    // kill -9 the client's worker: a restart is counted, the exit code is 137, and the
    // traffic counters carry over (never down).
    let client_labels = [("id", client.as_str())];
    let rx_before = value(&s, "nodepass_instance_tcp_rx_bytes_total", &client_labels);
    let pid = master.wait_worker_pid(&client, 1);
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(killed, "kill -9 {pid}");
    master.wait_worker_pid(&client, 2);
    api.wait_instance(&client, 20, "running again", |v| {
        v["status"] == "running" && v["pool"].as_i64() > Some(0)
    });
    let mut c = connect(user);
    echo(&mut c, 1000);
    drop(c);
    api.wait_instance(&client, 10, "new traffic counted", |v| {
        v["tcprx"].as_f64() >= Some(rx_before + 1000.0)
    });
    let (s, list) = consistent_scrape(&api);
    assert_matches(&s, &list);
    assert_eq!(
        value(
            &s,
            "nodepass_instance_worker_restarts_total",
            &client_labels
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "nodepass_instance_worker_last_exit_code",
            &client_labels
        ),
        137.0
    );
    assert!(value(&s, "nodepass_instance_tcp_rx_bytes_total", &client_labels) >= rx_before);

    // Reset the server's counters: the scrape drops to what GET shows, counting from 0.
    let server_rx = value(&s, "nodepass_instance_tcp_rx_bytes_total", &server_labels);
    let r = api.call(
        "PATCH",
        &format!("/instances/{server}"),
        Some(r#"{"action":"reset"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (s, list) = consistent_scrape(&api);
    assert_matches(&s, &list);
    let after = value(&s, "nodepass_instance_tcp_rx_bytes_total", &server_labels);
    assert!(after < server_rx, "{after} after resetting {server_rx}");
    let mut c = connect(user);
    echo(&mut c, 5000);
    drop(c);
    api.wait_instance(&server, 10, "traffic after the reset", |v| {
        v["tcprx"].as_f64() >= Some(after + 5000.0)
    });
    let (s, list) = consistent_scrape(&api);
    assert_matches(&s, &list);
    let later = value(&s, "nodepass_instance_tcp_rx_bytes_total", &server_labels);
    assert!(later >= after + 5000.0 && later < server_rx, "{later}");
}
