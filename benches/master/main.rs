//! Master benchmark (run by hand; numbers go to benches/RESULTS.md):
//!
//!     cargo build --release --bin nodepass
//!     cargo bench -p nodepass-master --bench master
//!
//! Drives the release `nodepass` binary as a separate process over real loopback HTTP:
//! 1. GET /instances latency (p50/p99, a new connection per request) with 1000 instances
//!    in the store, and the master's RSS with them;
//!    then GET /metrics (the Prometheus scrape) p50/p99 with the same 1000 instances, and
//!    GET /instances p99 without and with a scraper hitting /metrics once a second
//!    (alternating rounds, so both see the same machine load);
//! 2. SSE fan-out: 100 subscribers, 200 update events; time from the PATCH answer to the
//!    event reaching the last subscriber (p50/p99);
//! 3. 100 running single-end client workers: the master's RSS and the workers' idle RSS.
//! 4. Scale (BENCH_SCALE instances, default 1000; BENCH_SCALE=0 skips it): single-end
//!    workers POSTed one after the other (BENCH_SCALE_CONCURRENCY=8: from 8 clients at
//!    once); the time from the first POST until all are
//!    `running`, each worker's PSS (from /proc/<pid>/smaps_rollup: shared pages counted
//!    once across the processes that map them), the master's RSS; then the master is
//!    stopped (SIGTERM, which stops its workers) and started again on the same state, and
//!    the time until all are `running` again.
//!
//! NODEPASS_BIN overrides the binary path (default: target/release/nodepass beside this
//! bench executable).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nodepass_master::model::{Instance, InstanceKind, InstanceStatus, Meta};
use nodepass_master::store::{MasterRecord, Store, StoredInstance};
use nodepass_testkit::api::{Api, Sse};
use nodepass_testkit::free_port;
use nodepass_testkit::master::MasterProc;
use nodepass_testkit::net::echo_server;

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NODEPASS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("nodepass");
    assert!(
        p.exists(),
        "{} not found: run `cargo build --release --bin nodepass` first",
        p.display()
    );
    p
}

fn spawn_master(state: &Path) -> MasterProc {
    MasterProc::spawn(&binary(), state, free_port(), &[])
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Proportional set size of `pid` in KiB (0 when it is gone).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Worker pids the master has logged as started.
fn worker_pids(master: &MasterProc) -> Vec<u32> {
    master
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("Instance starting: "))
        .filter_map(|l| l.rsplit("(pid ").next()?.trim_end_matches(')').parse().ok())
        .collect()
}

/// Polls GET /instances until `n` are running or `limit` passes; returns how many were.
fn wait_running(api: &Api, n: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let all = api.get("/instances");
        let running = if all.status == 200 {
            all.json()
                .as_array()
                .map(|a| a.iter().filter(|v| v["status"] == "running").count())
                .unwrap_or(0)
        } else {
            0
        };
        if running >= n || Instant::now() > deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Step 4: `n` single-end workers, started through the API, then a master restart.
fn scale(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let echo = echo_server();
    let master = spawn_master(&state);
    let api = master.api.clone();
    // BENCH_SCALE_CONCURRENCY POSTs in flight (default 1: one after the other, as a shell
    // loop of curl calls would send them).
    let clients: usize = std::env::var("BENCH_SCALE_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for chunk in ports.chunks(n.div_ceil(clients).max(1)) {
            let api = api.clone();
            s.spawn(move || {
                for port in chunk {
                    let r = api.call(
                        "POST",
                        "/instances",
                        Some(&format!(
                            r#"{{"url":"client://127.0.0.1:{port}/{echo}?mode=1"}}"#
                        )),
                    );
                    assert_eq!(r.status, 201, "{}", r.text());
                }
            });
        }
    });
    let posted = t0.elapsed();
    println!("scale: {n} POSTs from {clients} client(s) at once");
    let running = wait_running(&api, n, Duration::from_secs(300));
    let started = t0.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let mut pss: Vec<u64> = worker_pids(&master)
        .iter()
        .map(|p| pss_kib(*p))
        .filter(|k| *k > 0)
        .collect();
    pss.sort();
    let master_rss = rss_kib(master.child.id());
    println!(
        "scale: {running} of {n} single-end workers running {:.1} s after the first POST (the {n} POSTs took {:.1} s)",
        started.as_secs_f64(),
        posted.as_secs_f64()
    );
    if !pss.is_empty() {
        println!(
            "scale: worker PSS median {} KiB (min {}, max {}), sum {} KiB over {} workers; master RSS {} KiB",
            pss[pss.len() / 2],
            pss[0],
            pss[pss.len() - 1],
            pss.iter().sum::<u64>(),
            pss.len(),
            master_rss
        );
    }
    drop(master); // SIGTERM: the master stops its workers and saves the store
    let t1 = Instant::now();
    let master = spawn_master(&state);
    let running = wait_running(&master.api, n, Duration::from_secs(300));
    println!(
        "scale: {running} of {n} running again {:.1} s after the master was started again",
        t1.elapsed().as_secs_f64()
    );
    drop(master);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn preload(state: &Path, n: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opened = Store::open(state).unwrap();
    let store = opened.store;
    store.put_master(&MasterRecord::generate()).unwrap();
    for i in 0..n {
        let url = format!(
            "client://127.0.0.1:{}/127.0.0.1:9?log=info&mode=1",
            20000 + i
        );
        let config = nodepass_proto::url::parse_tunnel_url(&url)
            .unwrap()
            .to_config();
        let mut tags = std::collections::BTreeMap::new();
        tags.insert("bench".to_string(), format!("{i}"));
        store
            .put_instance(&StoredInstance {
                instance: Instance {
                    id: format!("{i:08x}"),
                    alias: format!("instance-{i}"),
                    kind: InstanceKind::Client,
                    status: InstanceStatus::Stopped,
                    url,
                    config,
                    restart: false,
                    meta: Meta {
                        peer: Default::default(),
                        tags,
                    },
                    mode: 1,
                    ping: 0,
                    pool: 0,
                    tcps: 0,
                    udps: 0,
                    tcprx: 123_456_789,
                    tcptx: 987_654_321,
                    udprx: 0,
                    udptx: 0,
                },
                pid: None,
            })
            .unwrap();
    }
    rt.block_on(store.flush()).unwrap();
}

/// `n` GET /instances latencies, sorted.
fn list_latencies(api: &Api, n: usize) -> Vec<Duration> {
    let mut lat: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = api.get("/instances");
            let d = t.elapsed();
            assert_eq!(r.status, 200);
            d
        })
        .collect();
    lat.sort();
    lat
}

/// The scrape at 1000 instances, and whether a 1/s scraper slows GET /instances.
fn scrape_bench(api: &Api) {
    let r = api.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    let size = r.body.len();
    let series = r.text().lines().filter(|l| !l.starts_with('#')).count();
    for _ in 0..20 {
        api.get("/metrics");
    }
    let mut lat: Vec<Duration> = (0..500)
        .map(|_| {
            let t = Instant::now();
            let r = api.get("/metrics");
            let d = t.elapsed();
            assert_eq!(r.status, 200);
            d
        })
        .collect();
    lat.sort();
    println!(
        "GET /metrics (1000 instances, {series} series, {size} bytes), 500 scrapes: p50 {} p99 {} max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );

    // Alternate rounds without and with a scraper, 5 of each, 2000 requests per round.
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut scrapes = 0;
    for _ in 0..5 {
        without.extend(list_latencies(api, 2000));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = {
            let api = api.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    assert_eq!(api.get("/metrics").status, 200);
                    n += 1;
                    while t.elapsed() < Duration::from_secs(1)
                        && !stop.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                n
            })
        };
        with.extend(list_latencies(api, 2000));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        scrapes += scraper.join().unwrap();
    }
    without.sort();
    with.sort();
    println!(
        "GET /instances, 10000 requests each: without a scraper p50 {} p99 {}; with a 1/s scraper ({scrapes} scrapes) p50 {} p99 {}",
        ms(percentile(&without, 0.5)),
        ms(percentile(&without, 0.99)),
        ms(percentile(&with, 0.5)),
        ms(percentile(&with, 0.99)),
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: only run
    // when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("master bench: run with `cargo bench -p nodepass-master --bench master`");
        return;
    }
    let scale_n: usize = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    if std::env::var_os("BENCH_SCALE_ONLY").is_some() {
        scale(scale_n);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    preload(&state, 1000);
    let master = spawn_master(&state);
    let api = master.api.clone();

    // 1. GET /instances with 1000 instances.
    let r = api.get("/instances");
    assert_eq!(r.status, 200);
    let count = r.json().as_array().unwrap().len();
    let body_len = r.body.len();
    for _ in 0..50 {
        api.get("/instances");
    }
    let mut lat = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        let r = api.get("/instances");
        lat.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    lat.sort();
    let rss_1000 = rss_kib(master.child.id());
    println!(
        "GET /instances ({count} instances, {body_len} bytes): p50 {} p99 {} max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    println!(
        "master RSS with {count} instances (stopped): {} KiB",
        rss_1000
    );
    scrape_bench(&api);

    // 2. SSE fan-out to 100 subscribers.
    let target = "00000000";
    let (tx, rx) = mpsc::channel::<(usize, String, Instant)>();
    let mut readers = Vec::new();
    for s in 0..100 {
        let tx = tx.clone();
        let api = api.clone();
        readers.push(std::thread::spawn(move || {
            let mut sse = Sse::open(api.addr, "/api/v1/events", &api.key);
            assert_eq!(sse.status, 200);
            tx.send((s, "ready".into(), Instant::now())).unwrap();
            // Raw frames and a substring search: keep the client's own cost out of the
            // measurement as far as possible.
            while let Some(frame) = sse.next_frame(Duration::from_secs(60)) {
                let at = Instant::now();
                let marker = "\"alias\":\"fan-";
                if let Some(i) = frame.find(marker) {
                    let rest = &frame[i + marker.len() - 4..];
                    let alias = rest[..rest.find('"').unwrap()].to_string();
                    let done = alias == "fan-199";
                    tx.send((s, alias, at)).unwrap();
                    if done {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    for _ in 0..100 {
        rx.recv().unwrap();
    }
    let mut sent = Vec::new();
    let t0 = Instant::now();
    for n in 0..200 {
        let started = Instant::now();
        let r = api.call(
            "PATCH",
            &format!("/instances/{target}"),
            Some(&format!(r#"{{"alias":"fan-{n}"}}"#)),
        );
        assert_eq!(r.status, 200);
        sent.push(started);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut last = vec![None::<Instant>; 200];
    let mut got = 0usize;
    while let Ok((_, alias, at)) = rx.recv_timeout(Duration::from_secs(30)) {
        let n: usize = alias.trim_start_matches("fan-").parse().unwrap();
        last[n] = Some(last[n].map_or(at, |l: Instant| l.max(at)));
        got += 1;
        if got == 200 * 100 {
            break;
        }
    }
    let total = t0.elapsed();
    let mut fan: Vec<Duration> = last
        .iter()
        .zip(&sent)
        .filter_map(|(l, s)| l.map(|l| l.saturating_duration_since(*s)))
        .collect();
    fan.sort();
    println!(
        "SSE fan-out: 100 subscribers x 200 events, {got} deliveries in {} ; PATCH sent -> event at the last subscriber p50 {} p99 {}",
        ms(total), ms(percentile(&fan, 0.5)), ms(percentile(&fan, 0.99))
    );
    for r in readers {
        let _ = r.join();
    }
    drop(master);

    // 3. 100 running workers.
    let dir2 = tempfile::tempdir().unwrap();
    let master = spawn_master(&dir2.path().join("state"));
    let api = master.api.clone();
    let echo = echo_server();
    let rss_empty = rss_kib(master.child.id());
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = api.call(
            "POST",
            "/instances",
            Some(&format!(
                r#"{{"url":"client://127.0.0.1:{}/{echo}?mode=1"}}"#,
                free_port()
            )),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = api.get("/instances").json();
        let running = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["status"] == "running")
            .count();
        if running == 100 {
            break;
        }
        if Instant::now() > deadline {
            // A port picked as free may have been taken meanwhile by another program.
            println!("note: only {running} of 100 instances reached running");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let rss_100 = rss_kib(master.child.id());
    let pids: Vec<u32> = master
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("Instance starting: "))
        .filter_map(|l| l.rsplit("(pid ").next()?.trim_end_matches(')').parse().ok())
        .collect();
    let mut worker_rss: Vec<u64> = pids
        .iter()
        .map(|p| rss_kib(*p))
        .filter(|r| *r > 0)
        .collect();
    worker_rss.sort();
    println!("master RSS: empty {rss_empty} KiB, with 100 running workers {rss_100} KiB");
    println!(
        "worker idle RSS ({} workers): median {} KiB, min {} KiB, max {} KiB, sum {} KiB",
        worker_rss.len(),
        worker_rss[worker_rss.len() / 2],
        worker_rss[0],
        worker_rss[worker_rss.len() - 1],
        worker_rss.iter().sum::<u64>()
    );
    drop(master);

    // 4. Scale.
    if scale_n > 0 {
        scale(scale_n);
    }
}
