//! The target addresses of an instance and how a connection reaches them: each dial
//! starts at the next target in turn (an atomic counter) and fails over through the rest
//! in order; a single target is dialed directly (REFERENCE.md 1, `dialWithRotation`).
//!
//! `lbs` (our extension) changes the order: 1 tries the target with the lowest measured
//! connect time first, 2 always starts at the first target (primary/backup). A connect
//! time older than [`LATENCY_TTL`] counts as unmeasured, so a target that was slow (or
//! down) is tried again now and then and least-latency follows a change.
//!
//! UDP has no connect to fail: a UDP dial follows the same order but puts last the
//! targets whose latest TCP dial failed (when the instance carries TCP too).
//!
//! `dial=<ip>` binds the local source address; the first failure with it logs once and
//! turns it off for the life of the process, as the reference does.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use nodepass_proto::url::{DialSource, HostPort, LbStrategy};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::dns::Dns;

/// Latency figure of a target whose last dial failed: sorts after every working one.
const FAILED: u64 = u64::MAX / 2;
/// How long a measured connect time (or failure) ranks a target under `lbs=1`.
pub const LATENCY_TTL: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct Targets {
    addrs: Vec<HostPort>,
    lbs: LbStrategy,
    dns: Arc<Dns>,
    /// Smoothed connect time per target in microseconds (0 = not measured yet).
    latency: Vec<AtomicU64>,
    /// When each latency was measured, ms since `epoch`.
    measured_at: Vec<AtomicU64>,
    epoch: Instant,
    next: AtomicU64,
    source: Option<IpAddr>,
    source_failed: AtomicBool,
    tcp_timeout: Duration,
    udp_timeout: Duration,
}

impl Targets {
    pub fn new(
        addrs: Vec<HostPort>,
        lbs: LbStrategy,
        dns: Arc<Dns>,
        dial: DialSource,
        tcp_timeout: Duration,
        udp_timeout: Duration,
    ) -> Self {
        Targets {
            latency: addrs.iter().map(|_| AtomicU64::new(0)).collect(),
            measured_at: addrs.iter().map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            addrs,
            lbs,
            dns,
            next: AtomicU64::new(0),
            source: match dial {
                DialSource::Auto => None,
                DialSource::Ip(ip) => Some(ip),
            },
            source_failed: AtomicBool::new(false),
            tcp_timeout,
            udp_timeout,
        }
    }

    pub fn first(&self) -> Option<&HostPort> {
        self.addrs.first()
    }

    pub fn list(&self) -> String {
        self.addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index the next dial starts at.
    pub fn next_index(&self) -> usize {
        if self.addrs.len() <= 1 {
            return 0;
        }
        (self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len() as u64) as usize
    }

    pub fn get(&self, i: usize) -> Option<&HostPort> {
        self.addrs.get(i)
    }

    /// The order in which one dial tries the targets.
    fn order(&self) -> Vec<usize> {
        let n = self.addrs.len();
        match self.lbs {
            LbStrategy::RoundRobin => {
                let start = self.next_index();
                (0..n).map(|i| (start + i) % n).collect()
            }
            LbStrategy::Failover => (0..n).collect(),
            LbStrategy::LeastLatency => {
                let mut v: Vec<usize> = (0..n).collect();
                // Unmeasured (or stale) targets first, so each gets measured again.
                v.sort_by_key(|&i| self.ranked_latency(i));
                v
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The latency a target ranks with: 0 when never measured or measured too long ago.
    fn ranked_latency(&self, i: usize) -> u64 {
        let at = self.measured_at[i].load(Ordering::Relaxed);
        if self.now_ms().saturating_sub(at) > LATENCY_TTL.as_millis() as u64 {
            return 0;
        }
        self.latency[i].load(Ordering::Relaxed)
    }

    /// Whether the latest TCP dial of target `i` failed.
    fn failed(&self, i: usize) -> bool {
        self.latency[i].load(Ordering::Relaxed) >= FAILED
    }

    fn record(&self, i: usize, took: Option<Duration>) {
        let Some(slot) = self.latency.get(i) else {
            return;
        };
        self.measured_at[i].store(self.now_ms(), Ordering::Relaxed);
        match took {
            None => slot.store(FAILED, Ordering::Relaxed),
            Some(d) => {
                let new = (d.as_micros() as u64).max(1);
                let old = slot.load(Ordering::Relaxed);
                let v = if old == 0 || old >= FAILED {
                    new
                } else {
                    (old * 3 + new) / 4
                };
                slot.store(v, Ordering::Relaxed);
            }
        }
    }

    fn source(&self) -> Option<IpAddr> {
        self.source
            .filter(|_| !self.source_failed.load(Ordering::Relaxed))
    }

    /// Turns the source address off after its first failure; true if this call did it.
    fn drop_source(&self, err: &anyhow::Error) -> bool {
        if self.source().is_some() && !self.source_failed.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "dialWithRotation: fallback to system auto due to dialer failure: {err:#}"
            );
            return true;
        }
        false
    }

    async fn tcp_once(
        &self,
        addr: SocketAddr,
        source: Option<IpAddr>,
    ) -> anyhow::Result<TcpStream> {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("cannot create a TCP socket")?;
        if let Some(ip) = source {
            sock.bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("cannot bind source address {ip}"))?;
        }
        let stream = tokio::time::timeout(self.tcp_timeout, sock.connect(addr))
            .await
            .map_err(|_| anyhow!("dial tcp {addr}: i/o timeout"))?
            .with_context(|| format!("dial tcp {addr}"))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn tcp_to(&self, hp: &HostPort) -> anyhow::Result<TcpStream> {
        let addr = self.dns.resolve(hp).await?;
        match self.tcp_once(addr, self.source()).await {
            Err(e) if self.drop_source(&e) => self.tcp_once(addr, None).await,
            other => other,
        }
    }

    async fn udp_once(
        &self,
        addr: SocketAddr,
        source: Option<IpAddr>,
    ) -> anyhow::Result<UdpSocket> {
        let local = match (source, addr) {
            (Some(ip), _) => SocketAddr::new(ip, 0),
            (None, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
            (None, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
        };
        let sock = UdpSocket::bind(local)
            .await
            .with_context(|| format!("cannot bind UDP socket on {local}"))?;
        tokio::time::timeout(self.udp_timeout, sock.connect(addr))
            .await
            .map_err(|_| anyhow!("dial udp {addr}: i/o timeout"))?
            .with_context(|| format!("dial udp {addr}"))?;
        Ok(sock)
    }

    async fn udp_to(&self, hp: &HostPort) -> anyhow::Result<UdpSocket> {
        let addr = self.dns.resolve(hp).await?;
        match self.udp_once(addr, self.source()).await {
            Err(e) if self.drop_source(&e) => self.udp_once(addr, None).await,
            other => other,
        }
    }

    /// Dials a TCP connection to the targets with rotation and failover.
    pub async fn dial_tcp(&self) -> anyhow::Result<TcpStream> {
        if self.addrs.len() == 1 {
            return self.tcp_to(&self.addrs[0]).await;
        }
        let mut last = None;
        for i in self.order() {
            let started = Instant::now();
            match self.tcp_to(&self.addrs[i]).await {
                Ok(s) => {
                    self.record(i, Some(started.elapsed()));
                    return Ok(s);
                }
                Err(e) => {
                    self.record(i, None);
                    last = Some(e);
                }
            }
        }
        Err(self.all_failed(last))
    }

    /// Opens a connected UDP socket to the targets with rotation and failover.
    pub async fn dial_udp(&self) -> anyhow::Result<UdpSocket> {
        if self.addrs.len() == 1 {
            return self.udp_to(&self.addrs[0]).await;
        }
        let mut last = None;
        let mut order = self.order();
        // Known-dead targets last (stable: the strategy's order otherwise).
        order.sort_by_key(|&i| self.failed(i));
        for i in order {
            match self.udp_to(&self.addrs[i]).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(self.all_failed(last))
    }

    fn all_failed(&self, last: Option<anyhow::Error>) -> anyhow::Error {
        let n = self.addrs.len();
        match last {
            Some(e) => e.context(format!("dialWithRotation: all {n} targets failed")),
            None => anyhow!("dialWithRotation: no target address"),
        }
    }

    /// The single-end `ping`: ms to TCP-connect to the next target (0 on failure),
    /// with `timeout` (the report interval).
    pub async fn probe(&self, timeout: Duration) -> u64 {
        let Some(&i) = self.order().first() else {
            return 0;
        };
        let Some(hp) = self.get(i) else {
            return 0;
        };
        let started = std::time::Instant::now();
        let Ok(addr) = self.dns.resolve(hp).await else {
            return 0;
        };
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => started.elapsed().as_millis() as u64,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        let (h, p) = s.rsplit_once(':').expect("host:port");
        HostPort {
            host: h.to_string(),
            port: p.parse().expect("port"),
        }
    }

    #[tokio::test]
    async fn fails_over_to_a_live_target() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_addr = live.local_addr().expect("addr");
        // A port that refuses: bind then drop.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        let dns = Arc::new(Dns::new(&nodepass_proto::url::DnsSetting::Ttl(
            Duration::ZERO,
        )));
        let t = Targets::new(
            vec![hp(&dead_addr.to_string()), hp(&live_addr.to_string())],
            LbStrategy::RoundRobin,
            dns.clone(),
            DialSource::Auto,
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        for _ in 0..4 {
            let s = t.dial_tcp().await.expect("one target is alive");
            assert_eq!(s.peer_addr().expect("peer"), live_addr);
        }
        for lbs in [LbStrategy::LeastLatency, LbStrategy::Failover] {
            let t = Targets::new(
                vec![hp(&dead_addr.to_string()), hp(&live_addr.to_string())],
                lbs,
                dns.clone(),
                DialSource::Auto,
                Duration::from_secs(2),
                Duration::from_secs(2),
            );
            for _ in 0..3 {
                let s = t.dial_tcp().await.expect("one target is alive");
                assert_eq!(s.peer_addr().expect("peer"), live_addr);
            }
        }
        let only_dead = Targets::new(
            vec![hp(&dead_addr.to_string()), hp(&dead_addr.to_string())],
            LbStrategy::RoundRobin,
            dns,
            DialSource::Auto,
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        let err = only_dead.dial_tcp().await.expect_err("all dead");
        assert!(
            format!("{err:#}").contains("all 2 targets failed"),
            "{err:#}"
        );
    }
}
