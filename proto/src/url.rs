//! The instance URL grammar: `server://`, `client://` and `master://` URLs parsed into typed
//! values, validated, and rendered back as the reference master renders them (the stored
//! `url` and the canonical `config` string, REFERENCE.md 9.3).
//!
//! Parsing happens once, at the edge; the worker and master only ever see [`TunnelUrl`] and
//! [`MasterUrl`]. Every parameter is kept as `Option<T>` (given or not) so that rendering can
//! reproduce what the user wrote plus the defaults the reference adds; the `effective_*`
//! accessors give the value a running instance uses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
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
    #[error("invalid percent-encoding in {0:?}")]
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

/// A host and port. `host` is stored without IPv6 brackets; an empty host means "all
/// interfaces" (listening) and is only valid for the tunnel or master address.
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

/// The `dns` parameter: a resolve-cache TTL (the reference's meaning) or a list of DNS
/// servers to resolve with (the API document's second meaning; our extension).
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
}

/// The `dial` parameter: source IP for target dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialSource {
    Auto,
    Ip(IpAddr),
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

/// Every query parameter of a tunnel URL, `None` when not given.
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
    /// Query parameters we do not know, kept (sorted by key) so rendering loses nothing.
    pub unknown: Vec<(String, String)>,
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

    fn render(&self, fill_defaults: bool) -> String {
        let p = &self.params;
        let mut pairs: Vec<(String, String)> = Vec::new();
        let server = self.role == Role::Server;
        let client = !server;
        let mut put = |name: &str, value: Option<String>, default: Option<String>| {
            if let Some(v) = value.or(if fill_defaults { default } else { None }) {
                pairs.push((name.to_string(), v));
            }
        };
        let on = |b: bool| if b { "1" } else { "0" }.to_string();
        put(
            "block",
            p.block.map(BlockSet::render),
            Some("0".to_string()),
        );
        put("crt", p.crt.clone(), None);
        put(
            "dial",
            p.dial.map(|d| match d {
                DialSource::Auto => "auto".to_string(),
                DialSource::Ip(ip) => ip.to_string(),
            }),
            Some("auto".to_string()),
        );
        put(
            "dns",
            p.dns.as_ref().map(DnsSetting::render),
            Some(format_go_duration(DEFAULT_DNS_TTL)),
        );
        put("key", p.key.clone(), None);
        put("lbs", p.lbs.map(|l| l.code().to_string()), None);
        put("log", p.log.map(|l| l.as_str().to_string()), None);
        put(
            "max",
            p.max.map(|v| v.to_string()),
            server.then(|| DEFAULT_MAX_POOL.to_string()),
        );
        put(
            "min",
            p.min.map(|v| v.to_string()),
            client.then(|| DEFAULT_MIN_POOL.to_string()),
        );
        put(
            "mode",
            p.mode.map(|m| m.code().to_string()),
            Some("0".to_string()),
        );
        put("noudp", p.noudp.map(on), Some("0".to_string()));
        put("notcp", p.notcp.map(on), Some("0".to_string()));
        put("proxy", p.proxy.map(on), Some("0".to_string()));
        put("rate", p.rate.map(|v| v.to_string()), Some("0".to_string()));
        put(
            "read",
            p.read.map(format_go_duration),
            Some("0s".to_string()),
        );
        put(
            "slot",
            p.slot.map(|v| v.to_string()),
            Some(DEFAULT_SLOT.to_string()),
        );
        put("sni", p.sni.clone(), client.then(|| "none".to_string()));
        put("tls", p.tls.map(|t| t.code().to_string()), None);
        put(
            "type",
            p.pool_type.map(|t| t.code().to_string()),
            server.then(|| "0".to_string()),
        );
        pairs.extend(self.unknown.iter().cloned());
        pairs.sort_by(|a, b| a.0.cmp(&b.0));

        let mut out = format!("{}://", self.role.as_str());
        if self.key_in_url {
            out.push_str(&escape_userinfo(self.key.as_str()));
            out.push('@');
        }
        out.push_str(&self.tunnel.to_string());
        out.push('/');
        out.push_str(
            &self
                .targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        if !pairs.is_empty() {
            out.push('?');
            out.push_str(&encode_query(&pairs));
        }
        out
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeUrl {
    Tunnel(TunnelUrl),
    Master(MasterUrl),
}

/// Parses any NodePass URL (`server://`, `client://`, `master://`).
pub fn parse(input: &str) -> Result<NodeUrl, UrlError> {
    let raw = RawUrl::split(input)?;
    match raw.scheme.as_str() {
        "server" => parse_tunnel(&raw, Role::Server).map(NodeUrl::Tunnel),
        "client" => parse_tunnel(&raw, Role::Client).map(NodeUrl::Tunnel),
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

/// The pieces of a URL before any NodePass meaning is given to them.
struct RawUrl {
    scheme: String,
    userinfo: Option<String>,
    host: String,
    path: String,
    query: Vec<(String, String)>,
}

impl RawUrl {
    fn split(input: &str) -> Result<Self, UrlError> {
        let syntax = || UrlError::Syntax(input.to_string());
        if input.chars().any(|c| c.is_control() || c == ' ') {
            return Err(syntax());
        }
        let (scheme, rest) = input.split_once("://").ok_or_else(syntax)?;
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(syntax());
        }
        let scheme = scheme.to_ascii_lowercase();
        // A fragment is never meaningful here; drop it as Go's url.Parse does.
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let (userinfo, host) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let userinfo = match userinfo {
            Some(u) => {
                let user = u.split_once(':').map_or(u, |(user, _)| user);
                Some(percent_decode(user, false)?)
            }
            None => None,
        };
        let path = percent_decode(path, false)?;
        Ok(RawUrl {
            scheme,
            userinfo,
            host: host.to_string(),
            path,
            query: parse_query(query)?,
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
}

const TUNNEL_PARAMS: &[&str] = &[
    "log", "tls", "crt", "key", "dns", "sni", "lbs", "min", "max", "mode", "type", "dial", "read",
    "rate", "slot", "proxy", "block", "notcp", "noudp",
];
const MASTER_PARAMS: &[&str] = &["log", "tls", "crt", "key"];

fn unknown_params(raw: &RawUrl, known: &[&str]) -> Vec<(String, String)> {
    let mut seen = std::collections::BTreeMap::new();
    for (k, v) in &raw.query {
        if !known.contains(&k.as_str()) && !k.is_empty() {
            seen.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    seen.into_iter().collect()
}

fn parse_tunnel(raw: &RawUrl, role: Role) -> Result<TunnelUrl, UrlError> {
    let tunnel = parse_host_port(&raw.host, "tunnel address", true)?;
    let key_in_url = raw.userinfo.as_deref().is_some_and(|u| !u.is_empty());
    let key = match raw.userinfo.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => TunnelKey::new(u),
        None => TunnelKey::derived_from_port(&tunnel.port.to_string()),
    };
    let target_str = raw.path.strip_prefix('/').unwrap_or(&raw.path);
    let mut targets = Vec::new();
    for t in target_str.split(',') {
        let t = t.trim();
        if t.is_empty() {
            continue;
        }
        targets.push(parse_host_port(t, "target address", false)?);
    }
    if targets.is_empty() {
        return Err(UrlError::NoTarget);
    }
    for t in &targets {
        if t.port == tunnel.port && (t.is_loopback() || tunnel.is_unspecified()) {
            return Err(UrlError::TargetConflict {
                port: tunnel.port,
                target: t.to_string(),
            });
        }
    }
    let params = parse_tunnel_params(raw)?;
    Ok(TunnelUrl {
        role,
        key,
        key_in_url,
        tunnel,
        targets,
        params,
        unknown: unknown_params(raw, TUNNEL_PARAMS),
    })
}

fn parse_tunnel_params(raw: &RawUrl) -> Result<TunnelParams, UrlError> {
    let mut p = TunnelParams {
        log: parse_log(raw)?,
        tls: parse_tls(raw)?,
        crt: raw.get("crt").map(str::to_string),
        key: raw.get("key").map(str::to_string),
        ..TunnelParams::default()
    };
    if let Some(v) = raw.get("dns") {
        p.dns = Some(parse_dns(v)?);
    }
    p.sni = raw.get("sni").map(str::to_string);
    p.lbs = opt(raw, "lbs", "0, 1 or 2", |v| match v {
        "0" => Some(LbStrategy::RoundRobin),
        "1" => Some(LbStrategy::LeastLatency),
        "2" => Some(LbStrategy::Failover),
        _ => None,
    })?;
    p.min = opt(raw, "min", "a whole number from 1 to 1048576", |v| {
        parse_uint(v).filter(|n| (1..=MAX_POOL_LIMIT).contains(n))
    })?;
    p.max = opt(raw, "max", "a whole number from 1 to 1048576", |v| {
        parse_uint(v).filter(|n| (1..=MAX_POOL_LIMIT).contains(n))
    })?;
    p.mode = opt(raw, "mode", "0, 1 or 2", |v| match v {
        "0" => Some(RunMode::Auto),
        "1" => Some(RunMode::One),
        "2" => Some(RunMode::Two),
        _ => None,
    })?;
    p.pool_type = opt(
        raw,
        "type",
        "0 (tcp), 1 (quic), 2 (websocket) or 3 (http2)",
        |v| PoolType::from_code(v),
    )?;
    p.dial = opt(raw, "dial", "auto or a local IP address", |v| {
        if v == "auto" {
            Some(DialSource::Auto)
        } else {
            v.parse().ok().map(DialSource::Ip)
        }
    })?;
    p.read = opt(raw, "read", "a duration such as 0, 30s or 1m30s", |v| {
        parse_go_duration(v).ok()
    })?;
    p.rate = opt(
        raw,
        "rate",
        "a whole number of Mbps from 0 to 1000000 (0 = unlimited)",
        |v| parse_uint(v).filter(|n| *n <= MAX_RATE_MBPS),
    )?;
    p.slot = opt(
        raw,
        "slot",
        "a whole number from 0 to 16777216 (0 = unlimited)",
        |v| parse_uint(v).filter(|n| *n <= MAX_SLOT_LIMIT),
    )?;
    p.proxy = opt(raw, "proxy", "0 or 1", parse_flag)?;
    p.block = opt(
        raw,
        "block",
        "0, or any of the digits 1 (socks), 2 (http), 3 (tls), e.g. 13",
        |v| parse_block(v),
    )?;
    p.notcp = opt(raw, "notcp", "0 or 1", parse_flag)?;
    p.noudp = opt(raw, "noudp", "0 or 1", parse_flag)?;
    Ok(p)
}

fn parse_master(raw: &RawUrl) -> Result<MasterUrl, UrlError> {
    let listen = parse_host_port(&raw.host, "master address", true)?;
    let prefix = if raw.path.is_empty() || raw.path == "/" {
        "/api".to_string()
    } else {
        let trimmed = raw.path.trim_end_matches('/');
        if trimmed.is_empty() {
            "/api".to_string()
        } else {
            trimmed.to_string()
        }
    };
    Ok(MasterUrl {
        listen,
        prefix,
        log: parse_log(raw)?,
        tls: parse_tls(raw)?,
        crt: raw.get("crt").map(str::to_string),
        key: raw.get("key").map(str::to_string),
        unknown: unknown_params(raw, MASTER_PARAMS),
    })
}

fn parse_log(raw: &RawUrl) -> Result<Option<LogLevel>, UrlError> {
    opt(
        raw,
        "log",
        "none, debug, info, warn, error or event",
        LogLevel::parse,
    )
}

fn parse_tls(raw: &RawUrl) -> Result<Option<TlsMode>, UrlError> {
    opt(raw, "tls", "0, 1 or 2", TlsMode::from_code)
}

fn opt<T>(
    raw: &RawUrl,
    name: &'static str,
    expected: &'static str,
    f: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, UrlError> {
    match raw.get(name) {
        None => Ok(None),
        Some(v) => f(v).map(Some).ok_or_else(|| UrlError::Param {
            name,
            value: v.to_string(),
            expected,
        }),
    }
}

fn parse_uint(v: &str) -> Option<u32> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_flag(v: &str) -> Option<bool> {
    match v {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn parse_block(v: &str) -> Option<BlockSet> {
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

fn parse_dns(v: &str) -> Result<DnsSetting, UrlError> {
    if let Ok(d) = parse_go_duration(v) {
        return Ok(DnsSetting::Ttl(d));
    }
    let err = || UrlError::Param {
        name: "dns",
        value: v.to_string(),
        expected: "a cache TTL such as 5m, or DNS servers as IP[:port] separated by commas",
    };
    let mut servers = Vec::new();
    for part in v.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let addr = if let Ok(ip) = part.parse::<IpAddr>() {
            SocketAddr::new(ip, 53)
        } else {
            part.parse::<SocketAddr>().map_err(|_| err())?
        };
        if addr.port() == 0 {
            return Err(err());
        }
        servers.push(addr);
    }
    if servers.is_empty() {
        return Err(err());
    }
    Ok(DnsSetting::Servers(servers))
}

/// `host:port`, `[v6]:port` or `:port` (when `allow_empty_host`).
fn parse_host_port(
    s: &str,
    what: &'static str,
    allow_empty_host: bool,
) -> Result<HostPort, UrlError> {
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
        if h.parse::<std::net::Ipv6Addr>().is_err() {
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
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(bad("the port must be a number from 1 to 65535")),
    };
    if host.is_empty() {
        if !allow_empty_host {
            return Err(bad("missing host"));
        }
    } else if host.parse::<IpAddr>().is_err() && !valid_hostname(host) {
        return Err(bad("not a valid hostname or IP address"));
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_query(q: &str) -> Result<Vec<(String, String)>, UrlError> {
    let mut out = Vec::new();
    for pair in q.split('&') {
        if pair.is_empty() || pair.contains(';') {
            // Go drops pairs with ';' (and reports an error we ignore, like Query() does).
            continue;
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

/// Go's `url.QueryEscape`: unreserved bytes kept, space as `+`, the rest `%XX`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's userinfo escaping: unreserved and sub-delims kept.
fn escape_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'$'
            | b'&'
            | b'+'
            | b','
            | b';'
            | b'='
            | b'!'
            | b'*'
            | b'\''
            | b'('
            | b')' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.Values.Encode` for pairs already sorted by key.
fn encode_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}
