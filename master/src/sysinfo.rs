//! The host figures of `GET /info`, read from /proc exactly as the reference computes them
//! (REFERENCE.md 9.2): CPU busy percent over two /proc/stat samples 100 ms apart, memory and
//! swap from /proc/meminfo, network bytes from /proc/net/dev without virtual interfaces,
//! disk bytes from /proc/diskstats for whole physical disks, uptime from /proc/uptime.
//! Elsewhere than Linux every figure is 0 and `cpu` is -1, as in the reference.

use std::time::Duration;

/// The figures, in bytes and seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFigures {
    pub cpu: i32,
    pub mem_total: u64,
    pub mem_used: u64,
    pub swap_total: u64,
    pub swap_used: u64,
    pub netrx: u64,
    pub nettx: u64,
    pub diskr: u64,
    pub diskw: u64,
    pub sysup: u64,
}

impl Default for HostFigures {
    fn default() -> Self {
        HostFigures {
            cpu: -1,
            mem_total: 0,
            mem_used: 0,
            swap_total: 0,
            swap_used: 0,
            netrx: 0,
            nettx: 0,
            diskr: 0,
            diskw: 0,
            sysup: 0,
        }
    }
}

/// (idle, total) jiffies of the aggregate `cpu ` line; idle is the 4th field only.
pub fn parse_stat(text: &str) -> (u64, u64) {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let mut idle = 0;
    let mut total = 0u64;
    for (i, v) in line.split_whitespace().skip(1).enumerate() {
        let v: u64 = v.parse().unwrap_or(0);
        total = total.saturating_add(v);
        if i == 3 {
            idle = v;
        }
    }
    (idle, total)
}

/// (mem_total, mem_used, swap_total, swap_used) in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64, u64, u64) {
    let (mut total, mut avail, mut swap, mut swap_free) = (0u64, 0u64, 0u64, 0u64);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(name), Some(val)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(val) = val.parse::<u64>() else {
            continue;
        };
        let val = val.saturating_mul(1024);
        match name {
            "MemTotal:" => total = val,
            "MemAvailable:" => avail = val,
            "SwapTotal:" => swap = val,
            "SwapFree:" => swap_free = val,
            _ => {}
        }
    }
    (
        total,
        total.saturating_sub(avail),
        swap,
        swap.saturating_sub(swap_free),
    )
}

/// (rx, tx) bytes over real interfaces.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in text.lines().skip(2) {
        // "eth0: 123 ..." may have no space after the colon.
        let line = line.replacen(':', " ", 1);
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let name = f[0];
        if ["lo", "veth", "docker", "podman", "br-", "virbr"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        rx = rx.saturating_add(f[1].parse().unwrap_or(0));
        tx = tx.saturating_add(f[9].parse().unwrap_or(0));
    }
    (rx, tx)
}

/// (read, written) bytes over whole physical disks.
pub fn parse_diskstats(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 14 {
            continue;
        }
        let dev = f[2];
        if dev.contains("loop")
            || dev.contains("ram")
            || dev.starts_with("dm-")
            || dev.starts_with("md")
            || dev.ends_with(|c: char| c.is_ascii_digit())
        {
            continue;
        }
        r = r.saturating_add(f[5].parse::<u64>().unwrap_or(0).saturating_mul(512));
        w = w.saturating_add(f[9].parse::<u64>().unwrap_or(0).saturating_mul(512));
    }
    (r, w)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Collects the figures (takes about 100 ms for the CPU sample).
pub async fn collect() -> HostFigures {
    let mut h = HostFigures::default();
    if !cfg!(target_os = "linux") {
        return h;
    }
    let (idle1, total1) = parse_stat(&read("/proc/stat"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (idle2, total2) = parse_stat(&read("/proc/stat"));
    let dt = total2.saturating_sub(total1);
    let busy = dt.saturating_sub(idle2.saturating_sub(idle1));
    if let Some(pct) = busy.saturating_mul(100).checked_div(dt) {
        h.cpu = pct.min(100) as i32;
    }
    (h.mem_total, h.mem_used, h.swap_total, h.swap_used) = parse_meminfo(&read("/proc/meminfo"));
    (h.netrx, h.nettx) = parse_net_dev(&read("/proc/net/dev"));
    (h.diskr, h.diskw) = parse_diskstats(&read("/proc/diskstats"));
    h.sysup = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0);
    h
}

/// Go's GOOS name of this platform.
pub fn go_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// Go's GOARCH name of this platform.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_samples() {
        assert_eq!(
            parse_stat("cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 1 2 3 4\n"),
            (80, 100)
        );
        let mem = "MemTotal:       1000 kB\nMemFree: 1 kB\nMemAvailable:    400 kB\nSwapTotal: 10 kB\nSwapFree: 4 kB\n";
        assert_eq!(parse_meminfo(mem), (1_024_000, 614_400, 10_240, 6_144));
        let net = "Inter-|   Receive\n face |bytes\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0:200 2 0 0 0 0 0 0 300 3 0 0 0 0 0 0\ndocker0: 5 0 0 0 0 0 0 0 5 0 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(net), (200, 300));
        let disk = "   8       0 sda 1 0 10 0 2 0 20 0 0 0 0 0 0 0\n   8       1 sda1 1 0 99 0 2 0 99 0 0 0 0 0 0 0\n   7 0 loop0 1 0 5 0 1 0 5 0 0 0 0 0 0 0\n 259 0 nvme0n1 1 0 1 0 1 0 1 0 0 0 0 0 0 0\n";
        // nvme0n1 ends in a digit and is skipped, as in the reference.
        assert_eq!(parse_diskstats(disk), (5120, 10240));
    }

    #[test]
    fn go_names() {
        assert!(!go_os().is_empty());
        if cfg!(target_arch = "x86_64") {
            assert_eq!(go_arch(), "amd64");
        }
    }
}
