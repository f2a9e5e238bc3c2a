//! The web console with many instances: page weight and time to first render.
//!
//! `cargo bench --bench console` (release build). Starts a master with
//! NODEPASS_BENCH_INSTANCES (default 1000) single-end client instances (each a real worker
//! process listening on its own loopback port), waits until all run, then opens the console
//! in headless Chromium (Debian's chromium + chromedriver) three times and reads the page's
//! own User Timing entries: `np-render` (rows in the table) and `np-flush` (one batched DOM
//! update). Prints the bytes transferred for the page, the time from navigation start until
//! every row is in the table, and the longest batched update while the instances report.
//! Not a test: it asserts nothing about time.

use std::time::{Duration, Instant};

use nodepass_testkit::api::try_call;
use nodepass_testkit::browser::{browser, browser_present, js, wait_true};
use nodepass_testkit::free_port;
use nodepass_testkit::master::MasterProc;
use serde_json::Value;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !browser_present() {
        return;
    }
    let n: usize = std::env::var("NODEPASS_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut m = MasterProc::launch_fast(&state, free_port(), &[("NP_REPORT_INTERVAL", "5s")]);
    let key = m.wait_ready();
    let made = Instant::now();
    for i in 0..n {
        let body = format!(
            r#"{{"alias":"bench-{i:04}","url":"client://127.0.0.1:{}/127.0.0.1:9?mode=1"}}"#,
            free_port()
        );
        let (status, text) =
            try_call(m.addr, &key, "POST", "/instances", Some(&body)).expect("the master answers");
        assert_eq!(status, 201, "{text}");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, list) = try_call(m.addr, &key, "GET", "/instances", None).expect("list");
        let running = list.matches("\"status\":\"running\"").count();
        if running >= n {
            break;
        }
        assert!(Instant::now() < deadline, "only {running} of {n} running");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{n} instances created and running in {:.1} s",
        made.elapsed().as_secs_f64()
    );

    let (_driver, c) = browser(1400, 1000).await;
    let page = format!("http://{}/api/console/", m.addr);
    c.goto(&page).await.expect("open");
    c.execute(
        "sessionStorage.setItem('nodepass-api-key', arguments[0]);",
        vec![Value::String(key.clone())],
    )
    .await
    .expect("set the key");
    let mut firsts = Vec::new();
    for run in 0..3 {
        c.goto(&page).await.expect("open");
        wait_true(
            &c,
            "every row",
            60,
            &format!("document.querySelectorAll('#rows tr').length >= {n}"),
        )
        .await;
        let first = js(
            &c,
            &format!(
                "performance.getEntriesByName('np-render').find(e => e.detail.rows >= {n}).startTime"
            ),
        )
        .await;
        let first = first.as_f64().unwrap_or(f64::NAN);
        let stream = js(&c, "performance.getEntriesByName('np-stream')[0].startTime")
            .await
            .as_f64()
            .unwrap_or(f64::NAN);
        let rows1 = js(&c, "performance.getEntriesByName('np-render')[0].startTime")
            .await
            .as_f64()
            .unwrap_or(f64::NAN);
        let weight = js(
            &c,
            "[...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]\
             .filter(e => !e.name.includes('/v1/')).map(e => [e.name.split('/').pop() || 'index', e.transferSize, e.encodedBodySize])",
        )
        .await;
        let flush_load = js(
            &c,
            "Math.max(...performance.getEntriesByName('np-flush').map(e => e.duration))",
        )
        .await;
        println!(
            "run {run}: event stream open after {stream:.0} ms, first rows after {rows1:.0} ms, all {n} rows after {first:.0} ms from navigation start; longest batched update while loading {:.1} ms; page files {weight}",
            flush_load.as_f64().unwrap_or(f64::NAN)
        );
        firsts.push(first);
    }
    // Steady state: every instance reports each 5 s; the updates are batched per frame.
    let before = js(&c, "performance.getEntriesByName('np-flush').length")
        .await
        .as_u64()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let steady = js(
        &c,
        &format!(
            "(() => {{ const d = performance.getEntriesByName('np-flush').slice({before}).map(e => e.duration).sort((a, b) => a - b); \
             return d.length ? [d.length, d[Math.floor(d.length / 2)], d[d.length - 1]] : [0, 0, 0]; }})()"
        ),
    )
    .await;
    firsts.sort_by(|a, b| a.total_cmp(b));
    println!(
        "first render with {n} instances: median {:.0} ms (runs {firsts:.0?}); steady state [updates, median ms, max ms]: {steady}",
        firsts[firsts.len() / 2]
    );
    let _ = c.close().await;
}
