//! The host figures of `GET /info` on this machine, checked against the kernel files the
//! reference reads (REFERENCE.md 9.2): /proc/meminfo, /proc/net/dev (with the reference's
//! interface filter), /proc/diskstats and /proc/uptime, each read independently here just
//! before and just after the figures are taken, so growing counters are bracketed rather than
//! compared for equality. Once through the library function, once through the real HTTP API,
//! and, when NODEPASS_GO_BIN names the Go nodepass binary, the same checks on the Go master's
//! /info (so the checks are the reference's behaviour, not just ours).

use std::path::PathBuf;

use crate::common::TestMaster;
use nodepass_master::sysinfo::{self, HostFigures};
use nodepass_testkit::api::request;
use nodepass_testkit::go::GoMaster;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A /proc/meminfo value in bytes.
fn meminfo(field: &str) -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(field)).then(|| f.next().and_then(|v| v.parse::<u64>().ok()))?
        })
        .unwrap_or_else(|| panic!("{field} missing from /proc/meminfo"))
        * 1024
}

/// (rx, tx) bytes summed over the interfaces the reference counts, parsed here on its own
/// (the master reads these counters through the sysinfo crate, from sysfs).
fn net_dev() -> (u64, u64) {
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in read("/proc/net/dev").lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if ["lo", "veth", "docker", "podman", "br-", "virbr"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().expect("a /proc/net/dev counter"))
            .collect();
        rx += f[0];
        tx += f[8];
    }
    (rx, tx)
}

/// Whole seconds of /proc/uptime.
fn uptime() -> u64 {
    read("/proc/uptime")
        .split('.')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number in /proc/uptime")
}

fn disk() -> (u64, u64) {
    sysinfo::parse_diskstats(&read("/proc/diskstats"))
}

/// The kernel's figures before and after `take`, checked against what `take` returned.
fn check_against_proc(take: impl FnOnce() -> HostFigures) {
    let mem_total = meminfo("MemTotal:");
    let swap_total = meminfo("SwapTotal:");
    let (up0, net0, disk0) = (uptime(), net_dev(), disk());
    let h = take();
    let (up1, net1, disk1) = (uptime(), net_dev(), disk());

    assert!(mem_total > 0);
    assert_eq!(h.mem_total, mem_total, "{h:?}");
    assert!(h.mem_used > 0 && h.mem_used <= h.mem_total, "{h:?}");
    assert_eq!(h.swap_total, swap_total, "{h:?}");
    assert!(h.swap_used <= h.swap_total, "{h:?}");
    assert!(up0 <= h.sysup && h.sysup <= up1, "{up0} <= {h:?} <= {up1}");
    assert!(
        net0.0 <= h.netrx && h.netrx <= net1.0,
        "rx {net0:?} .. {net1:?}: {h:?}"
    );
    assert!(
        net0.1 <= h.nettx && h.nettx <= net1.1,
        "tx {net0:?} .. {net1:?}: {h:?}"
    );
    assert!(
        disk0.0 <= h.diskr && h.diskr <= disk1.0,
        "{disk0:?} .. {disk1:?}: {h:?}"
    );
    assert!(
        disk0.1 <= h.diskw && h.diskw <= disk1.1,
        "{disk0:?} .. {disk1:?}: {h:?}"
    );
    assert!((0..=100).contains(&h.cpu), "{h:?}");
}

#[test]
fn host_figures_match_the_kernel() {
    if !cfg!(target_os = "linux") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert_eq!(rt.block_on(sysinfo::collect()), HostFigures::default());
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    check_against_proc(|| rt.block_on(sysinfo::collect()));
}

#[test]
fn info_route_reports_the_kernel_figures() {
    if !cfg!(target_os = "linux") {
        println!("skipped: the host figures are zeros outside Linux (covered above)");
        return;
    }
    let tm = TestMaster::start();
    check_against_proc(|| figures(&tm.api.get("/info").json()));
}

/// The host figures of an /info answer.
fn figures(v: &serde_json::Value) -> HostFigures {
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} must be a non-negative integer: {v}"))
    };
    HostFigures {
        cpu: v["cpu"].as_i64().expect("cpu is a number") as i32,
        mem_total: n("mem_total"),
        mem_used: n("mem_used"),
        swap_total: n("swap_total"),
        swap_used: n("swap_used"),
        netrx: n("netrx"),
        nettx: n("nettx"),
        diskr: n("diskr"),
        diskw: n("diskw"),
        sysup: n("sysup"),
    }
}

/// The Go master as a child process, killed on drop.
#[test]
fn go_master_passes_the_same_checks() {
    let Some(bin) = std::env::var_os("NODEPASS_GO_BIN").map(PathBuf::from) else {
        eprintln!("skipping: set NODEPASS_GO_BIN to the Go nodepass binary to compare /info");
        return;
    };
    if !bin.exists() || !cfg!(target_os = "linux") {
        eprintln!(
            "skipping: NODEPASS_GO_BIN={} is absent or not on Linux",
            bin.display()
        );
        return;
    }
    let go = GoMaster::start(&bin);
    let (addr, key) = (go.addr, go.key.clone());
    let go_info = || {
        let r = request(addr, "GET", "/api/v1/info", &[("X-API-Key", &key)], None);
        assert_eq!(r.status, 200, "{}", r.text());
        figures(&r.json())
    };
    check_against_proc(go_info);

    // And side by side: ours between two answers of the Go master.
    let tm = TestMaster::start();
    let before = go_info();
    let ours = figures(&tm.api.get("/info").json());
    let after = go_info();
    assert_eq!(ours.mem_total, before.mem_total);
    assert_eq!(ours.swap_total, before.swap_total);
    for (name, b, o, a) in [
        ("netrx", before.netrx, ours.netrx, after.netrx),
        ("nettx", before.nettx, ours.nettx, after.nettx),
        ("diskr", before.diskr, ours.diskr, after.diskr),
        ("diskw", before.diskw, ours.diskw, after.diskw),
        ("sysup", before.sysup, ours.sysup, after.sysup),
    ] {
        assert!(b <= o && o <= a, "{name}: Go {b} .. {a}, ours {o}");
    }
}
