//! The instance URL grammar: `server://`, `client://` and `master://` URLs parsed into typed
//! values, validated, and rendered back as the reference master renders them (the stored
//! `url` and the canonical `config` string, REFERENCE.md 9.3).
//!
//! Parsing happens once, at the edge; the worker and master only ever see [`TunnelUrl`] and
//! [`MasterUrl`]. Every parameter is kept as `Option<T>` (given or not) so that rendering can
//! reproduce what the user wrote plus the defaults the reference adds; the `effective_*`
//! accessors give the value a running instance uses.
//!
//! The splitting into scheme, userinfo, host, path, query and fragment follows Go's
//! `net/url` (which the reference uses), so a URL the Go master accepts splits the same way
//! here. Where Go silently turns a bad value into zero or a default, we refuse it with an
//! error naming the parameter (see the README's list of deliberate differences). Rendering
//! follows Go's `url.String()` and `Values.Encode()`, and keeps the user's spelling of each
//! value (`read=1m` stays `1m`, not `1m0s`) as the Go master does, through [`Spelling`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::duration::{format_go_duration, parse_go_duration};

/// Default pool minimum (client `min`).
pub const DEFAULT_MIN_POOL: u32 = 64;
/// Default pool maximum (server `max`).
pub const DEFAULT_MAX_POOL: u32 = 1024;
/// Default concurrent TCP connections + UDP sessions (`slot`).
pub const DEFAULT_SLOT: u32 = 65536;
/// Default DNS cache TTL (`dns`).
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(300);
/// Largest accepted `min`/`max` (a pool beyond this is a configuration mistake).
pub const MAX_POOL_LIMIT: u32 = 1 << 20;
/// Largest accepted `slot`.
pub const MAX_SLOT_LIMIT: u32 = 1 << 24;
/// Largest accepted `rate` in Mbps (1 Tbit/s).
pub const MAX_RATE_MBPS: u32 = 1_000_000;

/// Every query parameter a tunnel URL understands, in the order of the README table.
pub const TUNNEL_PARAMS: &[&str] = &[
    "log", "tls", "crt", "key", "dns", "sni", "lbs", "min", "max", "mode", "type", "dial", "read",
    "rate", "slot", "proxy", "block", "notcp", "noudp",
];

/// The query parameters a master URL understands.
pub const MASTER_PARAMS: &[&str] = &["log", "tls", "crt", "key"];

/// A URL that could not be accepted, with what was wrong and what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("invalid URL {0:?}: expected scheme://[key@]host:port/target?params")]
    Syntax(String),
    #[error("unsupported scheme {0:?}: expected server://, client:// or master://")]
    Scheme(String),
    #[error("invalid {what} {value:?}: {reason}")]
    Address {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("no target address: add one after the tunnel address, e.g. server://key@:10101/127.0.0.1:8080")]
    NoTarget,
    #[error("tunnel port {port} conflicts with target address {target}: the tunnel would connect to itself")]
    TargetConflict { port: u16, target: String },
    #[error("invalid value {value:?} for {name}: expected {expected}")]
    Param {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("invalid percent-encoding in {0:?}: '%' must be followed by two hex digits, and the result must be UTF-8")]
    Escape(String),
}

/// Which end of a tunnel a URL describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    /// The scheme and the master's instance `type`: `server` or `client`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// A host and port. `host` is stored as written, without IPv6 brackets. An empty host (as in
/// `:10101`) means all interfaces when listening and this machine when dialing, as in Go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// The host as an IP literal, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The socket address when the host is an IP literal (or empty: unspecified IPv4).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        if self.host.is_empty() {
            return Some(SocketAddr::from(([0, 0, 0, 0], self.port)));
        }
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// True when the host is a loopback literal or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost") || self.ip().is_some_and(|ip| ip.is_loopback())
    }

    /// True when the host is empty or an unspecified literal (`0.0.0.0`, `::`).
    pub fn is_unspecified(&self) -> bool {
        self.host.is_empty() || self.ip().is_some_and(|ip| ip.is_unspecified())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The shared secret of a tunnel pair: the URL userinfo, else derived from the port.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TunnelKey(String);

impl TunnelKey {
    pub fn new(key: impl Into<String>) -> Self {
        TunnelKey(key.into())
    }

    /// The key used when the URL has none: lowercase hex of the 32-bit FNV-1a hash of the
    /// port string (REFERENCE.md 2; port 10101 gives `e68be2b4`, no port `811c9dc5`).
    pub fn derived_from_port(port: &str) -> Self {
        let mut hash: u32 = 0x811c_9dc5;
        for b in port.bytes() {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        TunnelKey(format!("{hash:08x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for TunnelKey {
    // Keys are secrets: never print them in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelKey(***)")
    }
}

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
    fn render(&self) -> String {
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

    fn render(self) -> String {
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

    fn render(self) -> String {
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

/// Every query parameter of a tunnel URL, `None` when not given (or given empty, which the
/// reference also treats as not given).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelParams {
    pub log: Option<LogLevel>,
    pub tls: Option<TlsMode>,
    pub crt: Option<String>,
    pub key: Option<String>,
    pub dns: Option<DnsSetting>,
    pub sni: Option<String>,
    pub lbs: Option<LbStrategy>,
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub mode: Option<RunMode>,
    pub pool_type: Option<PoolType>,
    pub dial: Option<DialSource>,
    pub read: Option<Duration>,
    pub rate: Option<u32>,
    pub slot: Option<u32>,
    pub proxy: Option<bool>,
    pub block: Option<BlockSet>,
    pub notcp: Option<bool>,
    pub noudp: Option<bool>,
}

impl TunnelParams {
    /// Validates `value` for the parameter `name` and stores it. `Ok(false)`: not a
    /// parameter we know (the caller keeps it as unknown).
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool, UrlError> {
        fn check<T>(
            name: &'static str,
            value: &str,
            expected: &'static str,
            parsed: Option<T>,
        ) -> Result<Option<T>, UrlError> {
            parsed.map(Some).ok_or_else(|| UrlError::Param {
                name,
                value: value.to_string(),
                expected,
            })
        }
        let v = value;
        match name {
            "log" => self.log = check("log", v, EXPECT_LOG, LogLevel::parse(v))?,
            "tls" => self.tls = check("tls", v, EXPECT_TLS, TlsMode::from_code(v))?,
            "crt" => self.crt = check("crt", v, EXPECT_FILE, non_empty(v))?,
            "key" => self.key = check("key", v, EXPECT_FILE, non_empty(v))?,
            "dns" => self.dns = check("dns", v, EXPECT_DNS, parse_dns(v))?,
            "sni" => self.sni = check("sni", v, EXPECT_SNI, parse_sni(v))?,
            "lbs" => self.lbs = check("lbs", v, EXPECT_LBS, LbStrategy::from_code(v))?,
            "min" => self.min = check("min", v, EXPECT_POOL, parse_pool_size(v))?,
            "max" => self.max = check("max", v, EXPECT_POOL, parse_pool_size(v))?,
            "mode" => self.mode = check("mode", v, EXPECT_MODE, RunMode::from_code(v))?,
            "type" => self.pool_type = check("type", v, EXPECT_TYPE, PoolType::from_code(v))?,
            "dial" => self.dial = check("dial", v, EXPECT_DIAL, DialSource::parse(v))?,
            "read" => self.read = check("read", v, EXPECT_READ, parse_go_duration(v).ok())?,
            "rate" => {
                let n = parse_uint(v).filter(|n| *n <= MAX_RATE_MBPS);
                self.rate = check("rate", v, EXPECT_RATE, n)?;
            }
            "slot" => {
                let n = parse_uint(v).filter(|n| *n <= MAX_SLOT_LIMIT);
                self.slot = check("slot", v, EXPECT_SLOT, n)?;
            }
            "proxy" => self.proxy = check("proxy", v, EXPECT_FLAG, parse_flag(v))?,
            "block" => self.block = check("block", v, EXPECT_BLOCK, BlockSet::parse(v))?,
            "notcp" => self.notcp = check("notcp", v, EXPECT_FLAG, parse_flag(v))?,
            "noudp" => self.noudp = check("noudp", v, EXPECT_FLAG, parse_flag(v))?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The canonical text of a given parameter (`None` when not given or not a parameter):
    /// Go's duration form, the block digits in order, DNS servers without a `:53`.
    pub fn text(&self, name: &str) -> Option<String> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        match name {
            "log" => self.log.map(|l| l.as_str().to_string()),
            "tls" => self.tls.map(|t| t.code().to_string()),
            "crt" => self.crt.clone(),
            "key" => self.key.clone(),
            "dns" => self.dns.as_ref().map(DnsSetting::render),
            "sni" => self.sni.clone(),
            "lbs" => self.lbs.map(|l| l.code().to_string()),
            "min" => self.min.map(|n| n.to_string()),
            "max" => self.max.map(|n| n.to_string()),
            "mode" => self.mode.map(|m| m.code().to_string()),
            "type" => self.pool_type.map(|t| t.code().to_string()),
            "dial" => self.dial.map(DialSource::render),
            "read" => self.read.map(format_go_duration),
            "rate" => self.rate.map(|n| n.to_string()),
            "slot" => self.slot.map(|n| n.to_string()),
            "proxy" => self.proxy.map(flag),
            "block" => self.block.map(BlockSet::render),
            "notcp" => self.notcp.map(flag),
            "noudp" => self.noudp.map(flag),
            _ => None,
        }
    }
}

const EXPECT_LOG: &str = "none, debug, info, warn, error or event";
const EXPECT_TLS: &str = "0, 1 or 2";
const EXPECT_FILE: &str = "a file path";
const EXPECT_DNS: &str =
    "a cache TTL such as 5m or 0 (no cache), or DNS servers as IP[:port] separated by commas";
const EXPECT_SNI: &str = "a host name, an IP address or none";
const EXPECT_LBS: &str = "0 (round robin), 1 (least latency) or 2 (failover)";
const EXPECT_POOL: &str = "a whole number from 1 to 1048576";
const EXPECT_MODE: &str = "0, 1 or 2";
const EXPECT_TYPE: &str = "0 (tcp), 1 (quic), 2 (websocket) or 3 (http2)";
const EXPECT_DIAL: &str = "auto or a local IP address";
const EXPECT_READ: &str = "a duration such as 0, 30s or 1m30s";
const EXPECT_RATE: &str = "a whole number of Mbps from 0 to 1000000 (0 = unlimited)";
const EXPECT_SLOT: &str = "a whole number from 0 to 16777216 (0 = unlimited)";
const EXPECT_FLAG: &str = "0 or 1";
const EXPECT_BLOCK: &str = "0, or any of the digits 1 (socks), 2 (http), 3 (tls), e.g. 13";

/// How a URL was written, where the reference master keeps the writing in the `url` and
/// `config` it stores: each value as typed (`read=1m`, `block=31`), repeated and empty
/// parameters, a password after the key, the path's percent-encoding, a fragment.
///
/// It never changes what a URL means, so it takes no part in equality: two URLs that
/// differ only in spelling are equal. Rendering uses a spelled value only while it still
/// means the current typed value, so editing the typed fields is always safe.
#[derive(Clone, Default)]
pub struct Spelling {
    /// Query pairs as decoded, in order, repeats and empty values included.
    query: Vec<(String, String)>,
    /// Decoded username and password (the password only when a `:` was written).
    userinfo: Option<(String, Option<String>)>,
    /// The path as written (still percent-encoded), with its leading `/`.
    path: Option<String>,
    /// The fragment as written (still percent-encoded), without the `#`.
    fragment: Option<String>,
    /// The URL ended in a lone `?` (Go keeps it).
    force_query: bool,
}

impl Spelling {
    fn values(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl PartialEq for Spelling {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Spelling {}

impl fmt::Debug for Spelling {
    // The userinfo holds secrets; the rest is noise in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Spelling { .. }")
    }
}

/// A parsed `server://` or `client://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelUrl {
    pub role: Role,
    /// The tunnel key: the userinfo, else derived from the port (see [`TunnelKey`]).
    pub key: TunnelKey,
    /// Whether the key was written in the URL (rendering keeps a derived key implicit).
    pub key_in_url: bool,
    /// Server: where it listens for the handshake and pool. Client: the server to dial, or
    /// (single-end) where it listens.
    pub tunnel: HostPort,
    /// One or more target addresses, in order.
    pub targets: Vec<HostPort>,
    pub params: TunnelParams,
    /// Query parameters we do not know: the first value of each, sorted by key. They are
    /// ignored, and kept so rendering loses nothing.
    pub unknown: Vec<(String, String)>,
    /// How the URL was written (see [`Spelling`]); `Spelling::default()` when built by hand.
    pub spelling: Spelling,
}

/// What a master hands down to the instances it creates (REFERENCE.md 9.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inherited {
    /// The master's own `log` parameter, if it had one.
    pub log: Option<LogLevel>,
    /// The master's effective TLS mode.
    pub tls: Option<TlsMode>,
    pub crt: Option<String>,
    pub key: Option<String>,
}
impl TunnelUrl {
    pub fn effective_log(&self) -> LogLevel {
        self.params.log.unwrap_or(LogLevel::Info)
    }

    /// TLS as the server runs it: QUIC/HTTP2 pools force at least mode 1.
    pub fn effective_tls(&self) -> TlsMode {
        let tls = self.params.tls.unwrap_or(TlsMode::Off);
        if tls == TlsMode::Off && self.effective_pool_type().requires_tls() {
            TlsMode::SelfSigned
        } else {
            tls
        }
    }

    pub fn effective_dns(&self) -> DnsSetting {
        self.params
            .dns
            .clone()
            .unwrap_or(DnsSetting::Ttl(DEFAULT_DNS_TTL))
    }

    /// The TLS server name: `sni`, else the tunnel hostname, else `none` for an IP or
    /// empty host. Also the `Host:` header of the handshake.
    pub fn effective_sni(&self) -> String {
        if let Some(sni) = &self.params.sni {
            return sni.clone();
        }
        if self.tunnel.host.is_empty() || self.tunnel.ip().is_some() {
            "none".to_string()
        } else {
            self.tunnel.host.clone()
        }
    }

    pub fn effective_lbs(&self) -> LbStrategy {
        self.params.lbs.unwrap_or(LbStrategy::RoundRobin)
    }

    pub fn effective_min(&self) -> u32 {
        self.params.min.unwrap_or(DEFAULT_MIN_POOL)
    }

    pub fn effective_max(&self) -> u32 {
        self.params.max.unwrap_or(DEFAULT_MAX_POOL)
    }

    pub fn effective_mode(&self) -> RunMode {
        self.params.mode.unwrap_or(RunMode::Auto)
    }

    pub fn effective_pool_type(&self) -> PoolType {
        self.params.pool_type.unwrap_or(PoolType::Tcp)
    }

    pub fn effective_dial(&self) -> DialSource {
        self.params.dial.unwrap_or(DialSource::Auto)
    }

    /// Per-read idle timeout of TCP relays; zero means none.
    pub fn effective_read(&self) -> Duration {
        self.params.read.unwrap_or(Duration::ZERO)
    }

    /// Rate limit in bytes per second (Mbps x 125000); zero means unlimited.
    pub fn effective_rate_bytes(&self) -> u64 {
        u64::from(self.params.rate.unwrap_or(0)) * 125_000
    }

    /// Concurrent TCP connections + UDP sessions; zero means unlimited.
    pub fn effective_slot(&self) -> u32 {
        self.params.slot.unwrap_or(DEFAULT_SLOT)
    }

    pub fn effective_proxy(&self) -> bool {
        self.params.proxy.unwrap_or(false)
    }

    pub fn effective_block(&self) -> BlockSet {
        self.params.block.unwrap_or_default()
    }

    pub fn effective_notcp(&self) -> bool {
        self.params.notcp.unwrap_or(false)
    }

    pub fn effective_noudp(&self) -> bool {
        self.params.noudp.unwrap_or(false)
    }

    /// Adds what a master hands down: `log` when absent; for servers when the master runs
    /// TLS, `tls` when absent, and with master tls 2 also `crt`/`key` when absent.
    pub fn inherit(&mut self, from: &Inherited) {
        if self.params.log.is_none() {
            self.params.log = from.log;
        }
        if self.role == Role::Server {
            if let Some(tls) = from.tls.filter(|t| *t != TlsMode::Off) {
                if self.params.tls.is_none() {
                    self.params.tls = Some(tls);
                }
                if tls == TlsMode::Files {
                    if self.params.crt.is_none() {
                        self.params.crt = from.crt.clone();
                    }
                    if self.params.key.is_none() {
                        self.params.key = from.key.clone();
                    }
                }
            }
        }
    }

    /// The URL with only the parameters that were given, keys sorted (the master's stored
    /// `url`, what a worker is started with).
    pub fn to_url(&self) -> String {
        self.render(false)
    }

    /// The canonical `config` string: every parameter of the role filled in with its
    /// default, keys sorted, as the reference master builds it (REFERENCE.md 9.3).
    pub fn to_config(&self) -> String {
        self.render(true)
    }

    /// The defaults the reference master fills into `config` for this role.
    fn config_defaults(&self) -> Vec<(&'static str, String)> {
        let mut d = vec![
            ("block", "0".to_string()),
            ("dial", "auto".to_string()),
            ("dns", format_go_duration(DEFAULT_DNS_TTL)),
            ("mode", "0".to_string()),
            ("notcp", "0".to_string()),
            ("noudp", "0".to_string()),
            ("proxy", "0".to_string()),
            ("rate", "0".to_string()),
            ("read", format_go_duration(Duration::ZERO)),
            ("slot", DEFAULT_SLOT.to_string()),
        ];
        match self.role {
            Role::Client => {
                d.push(("min", DEFAULT_MIN_POOL.to_string()));
                d.push(("sni", "none".to_string()));
            }
            Role::Server => {
                d.push(("max", DEFAULT_MAX_POOL.to_string()));
                d.push(("type", "0".to_string()));
            }
        }
        d
    }

    /// Go's `url.String()` after the master rewrote the query with `Values.Encode()`.
    fn render(&self, fill_defaults: bool) -> String {
        let sp = &self.spelling;
        // Key -> values, sorted by key as Go's Encode does; values keep their order.
        let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for &name in TUNNEL_PARAMS {
            let spelled = sp.values(name);
            match self.params.text(name) {
                Some(canonical) => {
                    let keep = spelled.first().is_some_and(|first| {
                        !first.is_empty() && canonical_text(name, first) == Some(canonical.clone())
                    });
                    let values = if keep {
                        spelled.iter().map(|v| v.to_string()).collect()
                    } else {
                        vec![canonical]
                    };
                    query.insert(name.to_string(), values);
                }
                // Given empty: the reference keeps `name=` in the url and treats it as absent.
                None if spelled.first().is_some_and(|v| v.is_empty()) => {
                    query.insert(
                        name.to_string(),
                        spelled.iter().map(|v| v.to_string()).collect(),
                    );
                }
                None => {}
            }
        }
        for (k, v) in &self.unknown {
            if TUNNEL_PARAMS.contains(&k.as_str()) {
                continue;
            }
            let spelled = sp.values(k);
            let values = if spelled.first() == Some(&v.as_str()) {
                spelled.iter().map(|v| v.to_string()).collect()
            } else {
                vec![v.clone()]
            };
            query.insert(k.clone(), values);
        }
        if fill_defaults {
            for (name, default) in self.config_defaults() {
                let absent = query
                    .get(name)
                    .is_none_or(|vs| vs.first().is_none_or(|v| v.is_empty()));
                if absent {
                    query.insert(name.to_string(), vec![default]);
                }
            }
        }

        let mut out = format!("{}://", self.role.as_str());
        let password = |pw: &Option<String>| match pw {
            Some(pw) => format!(":{}", go_escape(pw, Enc::UserPassword)),
            None => String::new(),
        };
        match &sp.userinfo {
            Some((user, pw)) if self.key_in_url && user == self.key.as_str() => {
                out.push_str(&go_escape(user, Enc::UserPassword));
                out.push_str(&password(pw));
                out.push('@');
            }
            Some((user, pw)) if !self.key_in_url && user.is_empty() => {
                out.push_str(&password(pw));
                out.push('@');
            }
            _ if self.key_in_url => {
                out.push_str(&go_escape(self.key.as_str(), Enc::UserPassword));
                out.push('@');
            }
            _ => {}
        }
        out.push_str(&self.tunnel.to_string());
        let spelled_path = sp.path.as_deref().filter(|raw| {
            percent_decode(raw, false)
                .ok()
                .and_then(|p| parse_targets(&p).ok())
                .as_ref()
                == Some(&self.targets)
        });
        match spelled_path {
            Some(raw) if valid_encoded(raw, Enc::Path) => out.push_str(raw),
            Some(raw) => {
                let decoded = percent_decode(raw, false).unwrap_or_default();
                out.push_str(&go_escape(&decoded, Enc::Path));
            }
            None => {
                // As if written canonically: host names and IP literals need no escaping.
                out.push('/');
                let joined: Vec<String> = self.targets.iter().map(ToString::to_string).collect();
                out.push_str(&joined.join(","));
            }
        }
        if !query.is_empty() || sp.force_query {
            out.push('?');
            out.push_str(&encode_query(&query));
        }
        if let Some(raw) = &sp.fragment {
            let decoded = percent_decode(raw, false).unwrap_or_default();
            if !decoded.is_empty() {
                out.push('#');
                if valid_encoded(raw, Enc::Fragment) {
                    out.push_str(raw);
                } else {
                    out.push_str(&go_escape(&decoded, Enc::Fragment));
                }
            }
        }
        out
    }
}

/// The canonical text of `value` for parameter `name`, if it is valid.
fn canonical_text(name: &str, value: &str) -> Option<String> {
    let mut p = TunnelParams::default();
    match p.set(name, value) {
        Ok(true) => p.text(name),
        _ => None,
    }
}

/// A parsed `master://host:port/prefix?log=&tls=&crt=&key=` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterUrl {
    /// Listen address; an empty host listens on all interfaces.
    pub listen: HostPort,
    /// API prefix without trailing slash, default `/api`.
    pub prefix: String,
    pub log: Option<LogLevel>,
    pub tls: Option<TlsMode>,
    pub crt: Option<String>,
    pub key: Option<String>,
    pub unknown: Vec<(String, String)>,
}

impl MasterUrl {
    /// The API base path: prefix + `/v1`.
    pub fn api_base(&self) -> String {
        format!("{}/v1", self.prefix)
    }

    pub fn effective_log(&self) -> LogLevel {
        self.log.unwrap_or(LogLevel::Info)
    }

    pub fn effective_tls(&self) -> TlsMode {
        self.tls.unwrap_or(TlsMode::Off)
    }

    /// What instances created by this master inherit.
    pub fn inherited(&self) -> Inherited {
        Inherited {
            log: self.log,
            tls: Some(self.effective_tls()),
            crt: self.crt.clone(),
            key: self.key.clone(),
        }
    }
}

/// Any NodePass URL.
// Parsed once per process or API call, so the size difference of the variants costs nothing;
// boxing would change the public shape others match on.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeUrl {
    Tunnel(TunnelUrl),
    Master(MasterUrl),
}

/// Parses any NodePass URL (`server://`, `client://`, `master://`).
pub fn parse(input: &str) -> Result<NodeUrl, UrlError> {
    let raw = RawUrl::split(input)?;
    match raw.scheme.as_str() {
        "server" => parse_tunnel(raw, Role::Server).map(NodeUrl::Tunnel),
        "client" => parse_tunnel(raw, Role::Client).map(NodeUrl::Tunnel),
        "master" => parse_master(&raw).map(NodeUrl::Master),
        _ => Err(UrlError::Scheme(raw.scheme.clone())),
    }
}

/// Parses a `server://` or `client://` URL.
pub fn parse_tunnel_url(input: &str) -> Result<TunnelUrl, UrlError> {
    match parse(input)? {
        NodeUrl::Tunnel(t) => Ok(t),
        NodeUrl::Master(_) => Err(UrlError::Scheme("master".to_string())),
    }
}

/// Parses a `master://` URL.
pub fn parse_master_url(input: &str) -> Result<MasterUrl, UrlError> {
    match parse(input)? {
        NodeUrl::Master(m) => Ok(m),
        NodeUrl::Tunnel(t) => Err(UrlError::Scheme(t.role.as_str().to_string())),
    }
}

/// The pieces of a URL before any NodePass meaning is given to them, split as Go's
/// `url.Parse` splits them.
struct RawUrl {
    scheme: String,
    userinfo: Option<(String, Option<String>)>,
    host: String,
    /// Decoded path and the path as written.
    path: String,
    raw_path: String,
    query: Vec<(String, String)>,
    fragment: Option<String>,
    force_query: bool,
}

impl RawUrl {
    fn split(input: &str) -> Result<Self, UrlError> {
        let syntax = || UrlError::Syntax(input.to_string());
        if input.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(UrlError::Address {
                what: "URL",
                value: input.to_string(),
                reason: "it contains a control character (percent-encode it, e.g. %0A)".to_string(),
            });
        }
        // Go cuts the fragment first, then the scheme, then the query.
        let (rest, fragment) = match input.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (input, None),
        };
        let (scheme, rest) = rest.split_once("://").ok_or_else(syntax)?;
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(syntax());
        }
        let scheme = scheme.to_ascii_lowercase();
        let (rest, query, force_query) = if rest.ends_with('?') && rest.matches('?').count() == 1 {
            (&rest[..rest.len() - 1], "", true)
        } else {
            let (r, q) = rest.split_once('?').unwrap_or((rest, ""));
            (r, q, false)
        };
        let (authority, raw_path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, host) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let userinfo = match userinfo {
            Some(u) => Some(split_userinfo(u)?),
            None => None,
        };
        if let Some(f) = fragment {
            percent_decode(f, false)?;
        }
        Ok(RawUrl {
            scheme,
            userinfo,
            host: host.to_string(),
            path: percent_decode(raw_path, false)?,
            raw_path: raw_path.to_string(),
            query: parse_query(query)?,
            fragment: fragment.map(str::to_string),
            force_query,
        })
    }

    /// First value of a parameter; an empty value counts as absent, as in the reference.
    fn get(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn unknown_params(&self, known: &[&str]) -> Vec<(String, String)> {
        let mut seen = BTreeMap::new();
        for (k, v) in &self.query {
            if !known.contains(&k.as_str()) {
                seen.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        seen.into_iter().collect()
    }
}

/// Go's userinfo rules: a limited character set, then `user[:password]`, each decoded.
fn split_userinfo(u: &str) -> Result<(String, Option<String>), UrlError> {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | ':'
                    | '~'
                    | '!'
                    | '$'
                    | '&'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | ';'
                    | '='
                    | '%'
                    | '@'
            )
    };
    if !u.chars().all(allowed) {
        return Err(UrlError::Address {
            what: "tunnel key",
            value: u.to_string(),
            reason: "it contains a character that must be percent-encoded (e.g. %23 for #)"
                .to_string(),
        });
    }
    Ok(match u.split_once(':') {
        Some((user, pw)) => (
            percent_decode(user, false)?,
            Some(percent_decode(pw, false)?),
        ),
        None => (percent_decode(u, false)?, None),
    })
}

fn parse_tunnel(raw: RawUrl, role: Role) -> Result<TunnelUrl, UrlError> {
    let tunnel = parse_host_port(&raw.host, "tunnel address")?;
    let user = raw.userinfo.as_ref().map(|(u, _)| u.as_str());
    let key_in_url = user.is_some_and(|u| !u.is_empty());
    let key = match user.filter(|u| !u.is_empty()) {
        Some(u) => TunnelKey::new(u),
        // Ports are refused with leading zeros, so this is the port string as written.
        None => TunnelKey::derived_from_port(&tunnel.port.to_string()),
    };
    let targets = parse_targets(&raw.path)?;
    if targets.is_empty() {
        return Err(UrlError::NoTarget);
    }
    for t in &targets {
        // Dialing an empty or unspecified host reaches this machine, like loopback.
        let local = t.is_loopback() || t.is_unspecified();
        if t.port == tunnel.port && (local || tunnel.is_unspecified()) {
            return Err(UrlError::TargetConflict {
                port: tunnel.port,
                target: t.to_string(),
            });
        }
    }
    let mut params = TunnelParams::default();
    for &name in TUNNEL_PARAMS {
        if let Some(v) = raw.get(name) {
            params.set(name, v)?;
        }
    }
    let unknown = raw.unknown_params(TUNNEL_PARAMS);
    Ok(TunnelUrl {
        role,
        key,
        key_in_url,
        tunnel,
        targets,
        params,
        unknown,
        spelling: Spelling {
            query: raw.query,
            userinfo: raw.userinfo,
            path: Some(raw.raw_path),
            fragment: raw.fragment,
            force_query: raw.force_query,
        },
    })
}

/// The target list of a decoded path: `/a:1,b:2`, each trimmed, empty entries dropped.
fn parse_targets(path: &str) -> Result<Vec<HostPort>, UrlError> {
    let list = path.strip_prefix('/').unwrap_or(path);
    let mut targets = Vec::new();
    for t in list.split(',') {
        let t = t.trim();
        if !t.is_empty() {
            targets.push(parse_host_port(t, "target address")?);
        }
    }
    Ok(targets)
}

fn parse_master(raw: &RawUrl) -> Result<MasterUrl, UrlError> {
    let listen = parse_host_port(&raw.host, "master address")?;
    let trimmed = raw.path.trim_end_matches('/');
    let prefix = if trimmed.is_empty() {
        "/api".to_string()
    } else {
        trimmed.to_string()
    };
    let mut p = TunnelParams::default();
    for &name in MASTER_PARAMS {
        if let Some(v) = raw.get(name) {
            p.set(name, v)?;
        }
    }
    Ok(MasterUrl {
        listen,
        prefix,
        log: p.log,
        tls: p.tls,
        crt: p.crt,
        key: p.key,
        unknown: raw.unknown_params(MASTER_PARAMS),
    })
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn parse_uint(v: &str) -> Option<u32> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_pool_size(v: &str) -> Option<u32> {
    parse_uint(v).filter(|n| (1..=MAX_POOL_LIMIT).contains(n))
}

fn parse_flag(v: &str) -> Option<bool> {
    match v {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// `none`, a host name or an IP literal: it becomes the handshake's `Host:` header and the
/// TLS server name, so nothing else is let through.
fn parse_sni(v: &str) -> Option<String> {
    (v == "none" || v.parse::<IpAddr>().is_ok() || valid_hostname(v)).then(|| v.to_string())
}

fn parse_dns(v: &str) -> Option<DnsSetting> {
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

/// `host:port`, `[v6]:port` or `:port`.
fn parse_host_port(s: &str, what: &'static str) -> Result<HostPort, UrlError> {
    let bad = |reason: &str| UrlError::Address {
        what,
        value: s.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("missing ']' after an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("missing port (write [ipv6]:port)"))?;
        if h.contains('%') {
            return Err(bad("IPv6 zone ids (%25...) are not supported"));
        }
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address inside [ ]"));
        }
        (h, port)
    } else {
        let (h, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("missing port (write host:port)"))?;
        if h.contains(':') {
            return Err(bad("an IPv6 address needs brackets: [addr]:port"));
        }
        (h, port)
    };
    let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let port: u16 = match port.parse() {
        // A leading zero would change the derived tunnel key (the hash of the port as
        // written), so `010101` is refused rather than silently read as 10101.
        Ok(p) if port_ok && p > 0 && !port.starts_with('0') => p,
        _ => return Err(bad("the port must be a number from 1 to 65535")),
    };
    if !host.is_empty() && host.parse::<IpAddr>().is_err() && !valid_hostname(host) {
        return Err(bad("not a valid host name or IP address"));
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Letters, digits, `-` and `_` in dot-separated labels (one trailing dot allowed); the
/// last label must not be all digits, so a mistyped IPv4 address (`1.2.3.256`, `010.0.0.1`)
/// is refused instead of being looked up as a name.
fn valid_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    let labels_ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    labels_ok
        && !h
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

/// Go's `url.ParseQuery`: pairs split on `&`, `key=value`, `+` is a space.
fn parse_query(q: &str) -> Result<Vec<(String, String)>, UrlError> {
    let mut out = Vec::new();
    for pair in q.split('&') {
        if pair.is_empty() {
            continue;
        }
        if pair.contains(';') {
            // Go drops such a pair without a word; a silently lost setting is worse.
            return Err(UrlError::Address {
                what: "query parameter",
                value: pair.to_string(),
                reason: "';' does not separate parameters: use '&' (or %3B inside a value)"
                    .to_string(),
            });
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Ok(out)
}

fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, UrlError> {
    if !s.contains(['%', '+']) {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| UrlError::Escape(s.to_string()))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Escape(s.to_string()))
}

/// The parts of a URL Go escapes differently (`encodePath`, ... in `net/url`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Enc {
    Path,
    UserPassword,
    QueryComponent,
    Fragment,
}

/// Go's `shouldEscape` for the modes we render.
fn should_escape(c: u8, mode: Enc) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => return false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => {
            return match mode {
                Enc::Path => c == b'?',
                Enc::UserPassword => matches!(c, b'@' | b'/' | b'?' | b':'),
                Enc::QueryComponent => true,
                Enc::Fragment => false,
            };
        }
        _ => {}
    }
    !(mode == Enc::Fragment && matches!(c, b'!' | b'(' | b')' | b'*'))
}

/// Go's `escape`: `%XX` in upper case, and a space as `+` in query components.
fn go_escape(s: &str, mode: Enc) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b == b' ' && mode == Enc::QueryComponent {
            out.push('+');
        } else if should_escape(b, mode) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Go's `validEncoded`: whether a path or fragment as written can be kept as is.
fn valid_encoded(s: &str, mode: Enc) -> bool {
    s.bytes().all(|b| {
        matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'['
                | b']'
                | b'%'
        ) || !should_escape(b, mode)
    })
}

/// Go's `url.Values.Encode`: keys sorted, each value `QueryEscape`d.
fn encode_query(query: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::new();
    for (k, values) in query {
        for v in values {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&go_escape(k, Enc::QueryComponent));
            out.push('=');
            out.push_str(&go_escape(v, Enc::QueryComponent));
        }
    }
    out
}

#[cfg(test)]
#[path = "url_tests.rs"]
mod tests;
