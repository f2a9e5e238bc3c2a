//! The typed values of the query parameters (`log=info` is [`LogLevel::Info`], `type=3`
//! is [`PoolType::Http2`], ...): each type parses the text a URL may carry and renders its
//! canonical text. Which parameter uses which type, with its default, range and error
//! text, is described once in `params.rs`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::duration::{format_go_duration, parse_go_duration};

/// The `log` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Event,
    None,
}

impl LogLevel {
    pub const ALL: [LogLevel; 6] = [
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
        LogLevel::Event,
        LogLevel::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Event => "event",
            LogLevel::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// The `tls` parameter: 0 plain, 1 self-signed in memory, 2 certificate files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    Off,
    SelfSigned,
    Files,
}

impl TlsMode {
    pub fn code(self) -> u8 {
        match self {
            TlsMode::Off => 0,
            TlsMode::SelfSigned => 1,
            TlsMode::Files => 2,
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "0" => Some(TlsMode::Off),
            "1" => Some(TlsMode::SelfSigned),
            "2" => Some(TlsMode::Files),
            _ => None,
        }
    }
}

/// The `mode` parameter. Server: 1 reverse (listen on target), 2 forward (dial target).
/// Client: 1 single-end forwarding, 2 dual-end. 0 decides at start by trying to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunMode {
    Auto,
    One,
    Two,
}

impl RunMode {
    pub fn code(self) -> u8 {
        match self {
            RunMode::Auto => 0,
            RunMode::One => 1,
            RunMode::Two => 2,
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "0" => Some(RunMode::Auto),
            "1" => Some(RunMode::One),
            "2" => Some(RunMode::Two),
            _ => None,
        }
    }
}

/// The `type` parameter: the pool transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolType {
    Tcp,
    Quic,
    WebSocket,
    Http2,
}

impl PoolType {
    pub fn code(self) -> u8 {
        match self {
            PoolType::Tcp => 0,
            PoolType::Quic => 1,
            PoolType::WebSocket => 2,
            PoolType::Http2 => 3,
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "0" => Some(PoolType::Tcp),
            "1" => Some(PoolType::Quic),
            "2" => Some(PoolType::WebSocket),
            "3" => Some(PoolType::Http2),
            _ => None,
        }
    }

    /// QUIC and HTTP/2 pools cannot run without TLS: the reference upgrades tls 0 to 1.
    pub fn requires_tls(self) -> bool {
        matches!(self, PoolType::Quic | PoolType::Http2)
    }
}

/// The `dns` parameter: a resolve-cache TTL (the reference's meaning; zero = no cache) or
/// a list of DNS servers to resolve with (the API document's second meaning; our
/// extension). A server without a port uses port 53.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DnsSetting {
    Ttl(Duration),
    Servers(Vec<SocketAddr>),
}

impl DnsSetting {
    /// A Go duration (the TTL), else a comma-separated list of `IP` or `IP:port` (spaces
    /// around entries and empty entries ignored; port 0 refused).
    pub(super) fn parse(v: &str) -> Option<Self> {
        if let Ok(d) = parse_go_duration(v) {
            return Some(DnsSetting::Ttl(d));
        }
        let mut servers = Vec::new();
        for part in v.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let addr = match part.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, 53),
                Err(_) => part.parse::<SocketAddr>().ok()?,
            };
            if addr.port() == 0 {
                return None;
            }
            servers.push(addr);
        }
        (!servers.is_empty()).then_some(DnsSetting::Servers(servers))
    }

    pub(super) fn render(&self) -> String {
        match self {
            DnsSetting::Ttl(d) => format_go_duration(*d),
            DnsSetting::Servers(list) => list
                .iter()
                .map(|a| {
                    if a.port() == 53 {
                        a.ip().to_string()
                    } else {
                        a.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The `lbs` parameter: how a connection picks among several targets (our extension; the
/// reference v1.14.0 always rotates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LbStrategy {
    /// 0: start at the next target in turn, fail over through the rest.
    RoundRobin,
    /// 1: prefer the target with the lowest measured connect latency.
    LeastLatency,
    /// 2: always the first healthy target in list order (primary/backup).
    Failover,
}

impl LbStrategy {
    pub fn code(self) -> u8 {
        match self {
            LbStrategy::RoundRobin => 0,
            LbStrategy::LeastLatency => 1,
            LbStrategy::Failover => 2,
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "0" => Some(LbStrategy::RoundRobin),
            "1" => Some(LbStrategy::LeastLatency),
            "2" => Some(LbStrategy::Failover),
            _ => None,
        }
    }
}

/// The `dial` parameter: source IP for target dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialSource {
    Auto,
    Ip(IpAddr),
}

impl DialSource {
    /// `auto` or an IP literal (IPv4, or IPv6 without brackets, as Go's `net.ParseIP`).
    pub fn parse(v: &str) -> Option<Self> {
        if v == "auto" {
            Some(DialSource::Auto)
        } else {
            v.parse().ok().map(DialSource::Ip)
        }
    }

    pub(super) fn render(self) -> String {
        match self {
            DialSource::Auto => "auto".to_string(),
            DialSource::Ip(ip) => ip.to_string(),
        }
    }
}

/// The `block` parameter: which protocols the incoming side refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlockSet {
    pub socks: bool,
    pub http: bool,
    pub tls: bool,
}

impl BlockSet {
    pub fn is_empty(self) -> bool {
        !(self.socks || self.http || self.tls)
    }

    /// `0`, or any combination of the digits 1 (SOCKS), 2 (HTTP) and 3 (TLS), in any order
    /// and repeated or mixed with 0 as the reference tolerates (`31`, `103`); nothing else.
    pub fn parse(v: &str) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        let mut set = BlockSet::default();
        for c in v.chars() {
            match c {
                '0' => {}
                '1' => set.socks = true,
                '2' => set.http = true,
                '3' => set.tls = true,
                _ => return None,
            }
        }
        Some(set)
    }

    pub(super) fn render(self) -> String {
        let mut s = String::new();
        if self.socks {
            s.push('1');
        }
        if self.http {
            s.push('2');
        }
        if self.tls {
            s.push('3');
        }
        if s.is_empty() {
            s.push('0');
        }
        s
    }
}
