//! The host figures of `GET /info` as the reference computes them (REFERENCE.md 9.2).
//! Memory, swap, uptime and network bytes come from the `sysinfo` crate, whose Linux figures
//! are the same quantities as the reference's (checked against sysinfo 0.37's source, see the
//! comments in `collect_blocking`). Two figures stay on hand-read /proc files because sysinfo
//! measures something else there: `cpu` (/proc/stat, the reference's own idle/total
//! definition) and `diskr`/`diskw` (/proc/diskstats over whole disks). Elsewhere than Linux
//! every figure is 0 and `cpu` is -1, as in the reference.

use std::time::Duration;

use sysinfo::{Networks, System};

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

/// Whether the reference counts an interface in `netrx`/`nettx`: loopback and virtual
/// interfaces (names starting with lo, veth, docker, podman, br-, virbr) are left out.
pub fn is_counted_interface(name: &str) -> bool {
    !["lo", "veth", "docker", "podman", "br-", "virbr"]
        .iter()
        .any(|p| name.starts_with(p))
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

/// Collects the figures (takes about 100 ms for the CPU sample). The file and sysfs reads run
/// on the blocking pool; the 100 ms wait between the two CPU samples is an async sleep.
pub async fn collect() -> HostFigures {
    if !cfg!(target_os = "linux") {
        return HostFigures::default();
    }
    let first = tokio::task::spawn_blocking(|| parse_stat(&read("/proc/stat")))
        .await
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(move || collect_blocking(first))
        .await
        .unwrap_or_default()
}

/// Everything after the 100 ms wait; `(idle1, total1)` is the first /proc/stat sample.
fn collect_blocking((idle1, total1): (u64, u64)) -> HostFigures {
    let mut h = HostFigures::default();

    // CPU stays on /proc/stat: the reference's figure is (d_total - d_idle) * 100 / d_total
    // in integers, where total sums EVERY field of the `cpu ` line (guest and guest_nice
    // included, although the kernel already counts them in user and nice) and idle is the 4th
    // field alone, so iowait counts as busy. sysinfo's global_cpu_usage() is an f32 that
    // counts idle + iowait as idle and takes guest/guest_nice out of user/nice
    // (linux/cpu.rs: CpuValues::set, idle_time, CpuUsage::set), measured between its own
    // refreshes: a different quantity whenever the host has I/O wait or guest time.
    let (idle2, total2) = parse_stat(&read("/proc/stat"));
    let dt = total2.saturating_sub(total1);
    let busy = dt.saturating_sub(idle2.saturating_sub(idle1));
    if let Some(pct) = busy.saturating_mul(100).checked_div(dt) {
        h.cpu = pct.min(100) as i32;
    }

    // sysinfo 0.37 on Linux reads /proc/meminfo (KiB x 1024; linux/system.rs,
    // refresh_memory_specifics): used_memory() = MemTotal - MemAvailable and used_swap() =
    // SwapTotal - SwapFree, the reference's figures. (Only kernels before 3.14 lack
    // MemAvailable; there sysinfo estimates it where the reference would take 0.)
    let mut sys = System::new();
    sys.refresh_memory();
    h.mem_total = sys.total_memory();
    h.mem_used = sys.used_memory();
    h.swap_total = sys.total_swap();
    h.swap_used = sys.used_swap();

    // sysinfo reads /sys/class/net/<if>/statistics/{rx,tx}_bytes (linux/network.rs): the same
    // kernel counters (dev_get_stats) that /proc/net/dev prints, for the interfaces of this
    // network namespace. total_received/total_transmitted are those counters themselves, not
    // deltas since a previous refresh.
    let networks = Networks::new_with_refreshed_list();
    for (name, data) in networks.iter() {
        if is_counted_interface(name) {
            h.netrx = h.netrx.saturating_add(data.total_received());
            h.nettx = h.nettx.saturating_add(data.total_transmitted());
        }
    }

    // Disk bytes stay on /proc/diskstats: the reference sums sectors x 512 over every WHOLE
    // device listed there (its name filter drops partitions, loop, ram, dm-, md), mounted or
    // not. sysinfo's Disks are the mounted file systems of /proc/mounts (linux/disk.rs), each
    // with the counters of its mounted device, usually a partition (sda1) or a dm- device:
    // neither the same devices nor the same sums (and a device mounted twice counts twice).
    (h.diskr, h.diskw) = parse_diskstats(&read("/proc/diskstats"));

    // sysinfo's uptime() is the integer part of /proc/uptime (linux/system.rs), as is the
    // reference's uint64(float) truncation.
    h.sysup = System::uptime();
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
        for name in ["eth0", "ens3", "wlan0", "ifb0", "tun0"] {
            assert!(is_counted_interface(name), "{name}");
        }
        for name in ["lo", "veth1a2b", "docker0", "podman1", "br-0f3a", "virbr0"] {
            assert!(!is_counted_interface(name), "{name}");
        }
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
