//! `GET {prefix}/v1/metrics` over real HTTP against an in-process master: the API key,
//! content negotiation (Prometheus text 0.0.4 by default, OpenMetrics when asked), every
//! metric family present and parseable by a Prometheus text-format parser, per-instance
//! values equal to GET /instances, requests counted by route template, SSE subscribers and
//! the events of one dropped for lagging, spawn failures (instances pointed at a worker
//! binary that does not exist), and the reset semantics of the traffic counters with a
//! real worker and real traffic (when the nodepass binary is built). The workspace's
//! tests/metrics_e2e.rs runs the same checks against the built master process, with a
//! worker crash and restart.

use std::time::Duration;

use crate::common::TestMaster;
use nodepass_testkit::api::{request, Sse};
use prometheus_parse::{Sample, Scrape, Value};

const CLIENT_URL: &str = "client://127.0.0.1:29141/127.0.0.1:41011?log=info";

fn scrape(tm: &TestMaster) -> Scrape {
    let r = tm.api.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(r.text().lines().map(|l| Ok(l.to_string()))).expect("parseable scrape")
}

/// The value of the one sample of `name` whose labels include all of `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "one sample of {name} {labels:?}: {found:?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is not a single value: {other:?}"),
    }
}

fn create(tm: &TestMaster, alias: &str) -> String {
    let r = tm.api.call(
        "POST",
        "/instances",
        Some(&format!(r#"{{"alias":"{alias}","url":"{CLIENT_URL}"}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn the_endpoint_needs_the_api_key() {
    let tm = TestMaster::start();
    let path = format!("{}/metrics", tm.api.base);
    let r = request(tm.api.addr, "GET", &path, &[], None);
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "{\"error\":\"Unauthorized: API key required\"}\n");
    let r = request(tm.api.addr, "GET", &path, &[("X-API-Key", "wrong")], None);
    assert_eq!(r.status, 401);
    let r = tm.api.call("POST", "/metrics", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    // With the key: the Prometheus text format.
    let s = scrape(&tm);
    assert!(!s.samples.is_empty());
}

#[test]
fn openmetrics_when_the_scraper_asks_for_it() {
    let tm = TestMaster::start();
    create(&tm, "om");
    // What Prometheus sends when it prefers OpenMetrics.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let path = format!("{}/metrics", tm.api.base);
    let r = request(
        tm.api.addr,
        "GET",
        &path,
        &[("X-API-Key", &tm.api.key), ("Accept", accept)],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // OpenMetrics names a counter family without `_total` and states units.
    assert!(text.contains("# TYPE nodepass_instance_tcp_rx_bytes counter\n"));
    assert!(text.contains("# UNIT nodepass_instance_tcp_rx_bytes bytes\n"));
    assert!(text.contains("nodepass_instance_tcp_rx_bytes_total{id=\""));
    // A plain scraper gets the classic text format, without `# EOF`.
    let r = request(
        tm.api.addr,
        "GET",
        &path,
        &[("X-API-Key", &tm.api.key), ("Accept", "text/plain")],
        None,
    );
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(!r.text().contains("# EOF"));
}

#[test]
fn every_family_is_present_and_matches_get_instances() {
    let tm = TestMaster::start();
    let a = create(&tm, "edge-a");
    let b = create(&tm, "edge-b");
    // The worker binary does not exist: both fail to spawn and show `error`.
    for id in [&a, &b] {
        tm.api
            .wait_instance(id, 10, "error", |v| v["status"] == "error");
    }
    let _sse = Sse::open(tm.api.addr, &format!("{}/events", tm.api.base), &tm.api.key);
    let s = scrape(&tm);
    let list = tm.api.get("/instances").json();
    let instances = list.as_array().unwrap();
    assert_eq!(instances.len(), 3, "key record and two instances");
    for inst in &instances[1..] {
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
                value(&s, metric, &labels),
                inst[field].as_f64().unwrap(),
                "{metric} of {id}"
            );
        }
        assert_eq!(
            value(&s, "nodepass_instance_ping_seconds", &labels),
            inst["ping"].as_f64().unwrap() / 1000.0
        );
        for status in ["running", "stopped", "error"] {
            let want = if inst["status"] == status { 1.0 } else { 0.0 };
            let mut l = labels.to_vec();
            l.push(("status", status));
            assert_eq!(value(&s, "nodepass_instance_status", &l), want);
        }
        // No worker ever ran: no exit code, no uptime, no restarts.
        assert_eq!(
            value(&s, "nodepass_instance_worker_restarts_total", &labels),
            0.0
        );
        assert!(!s.samples.iter().any(|x| x.labels.get("id") == Some(id)
            && (x.metric == "nodepass_instance_worker_last_exit_code"
                || x.metric == "nodepass_instance_worker_uptime_seconds")));
    }
    assert_eq!(value(&s, "nodepass_instances", &[("status", "error")]), 2.0);
    assert_eq!(
        value(&s, "nodepass_instances", &[("status", "running")]),
        0.0
    );
    assert_eq!(value(&s, "nodepass_sse_subscribers", &[]), 1.0);
    assert_eq!(value(&s, "nodepass_sse_dropped_events_total", &[]), 0.0);
    assert!(value(&s, "nodepass_worker_spawn_failures_total", &[]) >= 2.0);
    assert_eq!(value(&s, "nodepass_store_write_errors_total", &[]), 0.0);
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&s, "process_virtual_memory_bytes", &[]) > 0.0);
    assert!(value(&s, "process_open_fds", &[]) > 0.0);
    assert!(value(&s, "process_max_fds", &[]) > 0.0);
    assert!(value(&s, "process_threads", &[]) >= 1.0);
    assert!(value(&s, "process_cpu_seconds_total", &[]) >= 0.0);
    assert!(value(&s, "process_start_time_seconds", &[]) > 1.6e9);
    // Every family has its HELP text.
    for name in [
        "nodepass_instance_tcp_rx_bytes_total",
        "nodepass_api_requests_total",
        "nodepass_api_request_duration_seconds",
        "nodepass_instances",
    ] {
        assert!(s.docs.contains_key(name), "HELP for {name}");
    }
}

#[test]
fn requests_are_counted_by_route_template_not_path() {
    let tm = TestMaster::start();
    let id = create(&tm, "r");
    let base = tm.api.base.clone();
    assert_eq!(tm.api.get(&format!("/instances/{id}")).status, 200);
    assert_eq!(tm.api.get("/instances/00000000").status, 404);
    assert_eq!(tm.api.get("/instances/11111111").status, 404);
    let unknown = format!("{base}/no/such/{id}");
    assert_eq!(request(tm.api.addr, "GET", &unknown, &[], None).status, 404);
    assert_eq!(
        request(tm.api.addr, "GET", &format!("{base}/info"), &[], None).status,
        401
    );
    let s = scrape(&tm);
    let item = format!("{base}/instances/:id");
    let count = |route: &str, method: &str, status: &str| {
        value(
            &s,
            "nodepass_api_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(count(&item, "GET", "200"), 1.0);
    assert_eq!(count(&item, "GET", "404"), 2.0);
    assert_eq!(count(&format!("{base}/instances"), "POST", "201"), 1.0);
    assert_eq!(count("unmatched", "GET", "404"), 1.0);
    assert_eq!(count(&format!("{base}/info"), "GET", "401"), 1.0);
    // No raw path (with an id in it) ever becomes a label.
    assert!(!s
        .samples
        .iter()
        .any(|x| x.labels.get("route").is_some_and(|r| r.contains(&id))));
    // The latency histogram counts the same requests.
    let hist = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "nodepass_api_request_duration_seconds"
                && x.labels.get("route") == Some(item.as_str())
                && x.labels.get("method") == Some("GET")
        })
        .expect("latency histogram of the item route");
    match &hist.value {
        Value::Histogram(buckets) => {
            let inf = buckets.last().expect("buckets");
            assert!(inf.less_than.is_infinite());
            assert_eq!(inf.count, 3.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

/// Sends `n` bytes through the instance listening on `port` and reads them back.
fn echo_through(port: u16, n: usize) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot reach the instance on {port}: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data = vec![7u8; n];
    s.write_all(&data).unwrap();
    let mut back = vec![0u8; n];
    s.read_exact(&mut back).unwrap();
}

#[test]
fn a_reset_starts_the_counters_again_from_zero() {
    let Some(exe) = nodepass_testkit::proc::bin_if_built() else {
        eprintln!(
            "skipping: the nodepass binary is not built (cargo build, or set NODEPASS_WORKER_EXE)"
        );
        return;
    };
    let tm = TestMaster::start_with("master://127.0.0.1:0/api?log=warn", exe);
    let echo = nodepass_testkit::net::echo_server();
    let port = nodepass_testkit::free_port();
    let url = format!("client://127.0.0.1:{port}/{echo}?mode=1");
    let r = tm.api.call(
        "POST",
        "/instances",
        Some(&format!(r#"{{"alias":"reset","url":"{url}"}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    tm.api
        .wait_instance(&id, 15, "running", |v| v["status"] == "running");
    echo_through(port, 200_000);
    let before = tm.api.wait_instance(&id, 10, "traffic counted", |v| {
        v["tcprx"].as_u64() >= Some(200_000)
    });
    let s = scrape(&tm);
    let rx = |s: &Scrape| value(s, "nodepass_instance_tcp_rx_bytes_total", &[("id", &id)]);
    let first = rx(&s);
    assert!(first >= before["tcprx"].as_f64().unwrap());

    let r = tm.api.call(
        "PATCH",
        &format!("/instances/{id}"),
        Some(r#"{"action":"reset"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The drop Prometheus reads as a counter reset: back to what GET shows, from 0.
    let after_reset = rx(&scrape(&tm));
    assert!(
        after_reset < first,
        "{after_reset} after a reset from {first}"
    );
    assert_eq!(after_reset, tm.api.instance(&id)["tcprx"].as_f64().unwrap());

    // Counting goes on from 0 and only upwards.
    echo_through(port, 10_000);
    tm.api.wait_instance(&id, 10, "new traffic counted", |v| {
        v["tcprx"].as_u64() >= Some(10_000)
    });
    let mut last = after_reset;
    for _ in 0..5 {
        let now = rx(&scrape(&tm));
        assert!(
            now >= last,
            "counter went down without a reset: {last} -> {now}"
        );
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last >= 10_000.0 && last < first, "{last}");
}

#[test]
fn a_subscriber_dropped_for_lagging_is_counted() {
    let tm = TestMaster::start();
    let id = create(&tm, "busy");
    // A subscriber that reads nothing while ~40 MB of events are published: the socket
    // buffers fill, it falls more than the ring's 1024 events behind and is disconnected.
    let mut sse = Sse::open(tm.api.addr, &format!("{}/events", tm.api.base), &tm.api.key);
    assert_eq!(sse.status, 200);
    assert_eq!(value(&scrape(&tm), "nodepass_sse_subscribers", &[]), 1.0);
    let value_250 = "v".repeat(250);
    for n in 0..1500 {
        let tags: Vec<String> = (0..100)
            .map(|t| format!(r#""t{t}":"{n}{value_250}""#))
            .collect();
        let body = format!(r#"{{"meta":{{"tags":{{{}}}}}}}"#, tags.join(","));
        let r = tm
            .api
            .call("PATCH", &format!("/instances/{id}"), Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Reading again, the subscriber finds its stream ended.
    assert!(sse.ends(Duration::from_secs(60)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(&tm);
        let dropped = value(&s, "nodepass_sse_dropped_events_total", &[]);
        if dropped > 0.0 && value(&s, "nodepass_sse_subscribers", &[]) == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dropped events {dropped}, subscribers {}",
            value(&s, "nodepass_sse_subscribers", &[])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
