//! The target addresses of an instance and how a connection reaches them: each dial
//! starts at the next target in turn (an atomic counter) and fails over through the rest
//! in order; a single target is dialed directly (REFERENCE.md 1, `dialWithRotation`).
//!
//! `dial=<ip>` binds the local source address; the first failure with it logs once and
//! turns it off for the life of the process, as the reference does.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use nodepass_proto::url::{DialSource, HostPort};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Resolves a host:port (IP literals without a lookup).
pub async fn resolve(hp: &HostPort) -> anyhow::Result<SocketAddr> {
    if let Some(sa) = hp.socket_addr() {
        return Ok(sa);
    }
    let mut addrs = tokio::net::lookup_host((hp.host.as_str(), hp.port))
        .await
        .with_context(|| format!("cannot resolve {hp}"))?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("{hp} resolves to no address"))
}

#[derive(Debug)]
pub struct Targets {
    addrs: Vec<HostPort>,
    next: AtomicU64,
    source: Option<IpAddr>,
    source_failed: AtomicBool,
    tcp_timeout: Duration,
    udp_timeout: Duration,
}

impl Targets {
    pub fn new(
        addrs: Vec<HostPort>,
        dial: DialSource,
        tcp_timeout: Duration,
        udp_timeout: Duration,
    ) -> Self {
        Targets {
            addrs,
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
        let addr = resolve(hp).await?;
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
        let addr = resolve(hp).await?;
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
        let start = self.next_index();
        let mut last = None;
        for i in 0..self.addrs.len() {
            let hp = &self.addrs[(start + i) % self.addrs.len()];
            match self.tcp_to(hp).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(self.all_failed(last))
    }

    /// Opens a connected UDP socket to the targets with rotation and failover.
    pub async fn dial_udp(&self) -> anyhow::Result<UdpSocket> {
        if self.addrs.len() == 1 {
            return self.udp_to(&self.addrs[0]).await;
        }
        let start = self.next_index();
        let mut last = None;
        for i in 0..self.addrs.len() {
            let hp = &self.addrs[(start + i) % self.addrs.len()];
            match self.udp_to(hp).await {
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
        let Some(hp) = self.get(self.next_index()) else {
            return 0;
        };
        let started = std::time::Instant::now();
        let Ok(addr) = resolve(hp).await else {
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
        let t = Targets::new(
            vec![hp(&dead_addr.to_string()), hp(&live_addr.to_string())],
            DialSource::Auto,
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        for _ in 0..4 {
            let s = t.dial_tcp().await.expect("one target is alive");
            assert_eq!(s.peer_addr().expect("peer"), live_addr);
        }
        let only_dead = Targets::new(
            vec![hp(&dead_addr.to_string()), hp(&dead_addr.to_string())],
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
