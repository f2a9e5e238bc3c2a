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
//!
//! The files: this one holds the URL types, the address and key rules and rendering;
//! `params.rs` describes every query parameter once (name, roles, default, range, error
//! text) and derives the parameter struct and its parsing from that; `values.rs` has the
//! parameter value types; `gourl.rs` emulates the parts of Go's `net/url` we follow.

mod gourl;
mod params;
mod values;

pub use params::{
    Param, Roles, TunnelParams, DEFAULT_DNS_TTL, DEFAULT_MAX_POOL, DEFAULT_MIN_POOL, DEFAULT_SLOT,
    MASTER_PARAMS, MAX_POOL_LIMIT, MAX_RATE_MBPS, MAX_SLOT_LIMIT, PARAMS, TUNNEL_PARAMS,
};
pub use values::{
    BlockSet, DialSource, DnsSetting, LbStrategy, LogLevel, PoolType, RunMode, TlsMode,
};

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use gourl::{encode_query, go_escape, percent_decode, valid_encoded, Enc, RawUrl};

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
    // Values that depend on more than one parameter or on the addresses. A single
    // parameter's value in effect (its default applied) is `self.params.<name>()`, from
    // the parameter table (params.rs).

    /// TLS as the server runs it: QUIC/HTTP2 pools force at least mode 1.
    pub fn effective_tls(&self) -> TlsMode {
        let tls = self.params.tls();
        if tls == TlsMode::Off && self.params.pool_type().requires_tls() {
            TlsMode::SelfSigned
        } else {
            tls
        }
    }

    /// The TLS server name: `sni`, else the tunnel hostname, else `none` (the default)
    /// for an IP or empty host. Also the `Host:` header of the handshake.
    pub fn effective_sni(&self) -> String {
        if self.params.sni.is_none() && !self.tunnel.host.is_empty() && self.tunnel.ip().is_none() {
            return self.tunnel.host.clone();
        }
        self.params.sni()
    }

    /// Rate limit in bytes per second (Mbps x 125000); zero means unlimited.
    pub fn effective_rate_bytes(&self) -> u64 {
        u64::from(self.params.rate()) * 125_000
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

    /// Go's `url.String()` after the master rewrote the query with `Values.Encode()`.
    fn render(&self, fill_defaults: bool) -> String {
        let sp = &self.spelling;
        // Key -> values, sorted by key as Go's Encode does; values keep their order.
        let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for param in PARAMS {
            let name = param.name;
            let spelled = sp.values(name);
            match param.text(&self.params) {
                Some(canonical) => {
                    let keep = spelled.first().is_some_and(|first| {
                        !first.is_empty() && param.canonical(first) == Some(canonical.clone())
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
            for param in PARAMS {
                let Some(default) = param.config_default(self.role) else {
                    continue;
                };
                let absent = query
                    .get(param.name)
                    .is_none_or(|vs| vs.first().is_none_or(|v| v.is_empty()));
                if absent {
                    query.insert(param.name.to_string(), vec![default]);
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
#[cfg(test)]
fn canonical_text(name: &str, value: &str) -> Option<String> {
    Param::find(name)?.canonical(value)
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
    for param in PARAMS {
        if let Some(v) = raw.get(param.name) {
            param.set(&mut params, v)?;
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
    for param in PARAMS.iter().filter(|p| p.roles.master) {
        if let Some(v) = raw.get(param.name) {
            param.set(&mut p, v)?;
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

/// The form of an instance URL that the API's OpenAPI document states (`url`'s `pattern`):
/// `server://` or `client://`, an optional key, the tunnel address, one to eight targets and
/// up to four parameters with closed value lists ([`Param::choices`]), written so that every
/// URL it describes parses: ports 1-65535 without a leading zero, dotted IPv4, host names
/// whose last label is not all digits, bracketed IPv6. The grammar accepts more (any
/// parameter, other key characters); one rule no pattern can state is left to the server:
/// a target on this host may not use the tunnel's own port.
pub fn url_pattern() -> String {
    const PORT: &str =
        "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
    const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    const LABEL: &str = "[A-Za-z0-9_-]{1,63}";
    // The last label of a name has a character that is not a digit.
    const LAST: &str = "[A-Za-z0-9_-]{0,30}[A-Za-z_-][A-Za-z0-9_-]{0,30}";
    const H16: &str = "[0-9A-Fa-f]{1,4}";
    let ipv4 = format!("({OCTET}\\.){{3}}{OCTET}");
    let name = format!("({LABEL}\\.){{0,3}}{LAST}\\.?");
    // Full and compressed IPv6 forms (no zone id, which the grammar refuses).
    let ipv6 = [
        format!("({H16}:){{7}}{H16}"),
        format!("({H16}:){{1,7}}:"),
        format!("({H16}:){{1,6}}:{H16}"),
        format!("({H16}:){{1,5}}(:{H16}){{1,2}}"),
        format!("({H16}:){{1,4}}(:{H16}){{1,3}}"),
        format!("({H16}:){{1,3}}(:{H16}){{1,4}}"),
        format!("({H16}:){{1,2}}(:{H16}){{1,5}}"),
        format!("{H16}:(:{H16}){{1,6}}"),
        format!(":(:{H16}){{1,7}}"),
        "::".to_string(),
    ]
    .join("|");
    let host_port = format!("({ipv4}|{name}|\\[({ipv6})\\])?:{PORT}");
    let pairs: Vec<String> = PARAMS
        .iter()
        .filter(|p| !p.choices.is_empty())
        .map(|p| format!("{}=({})", p.name, p.choices.join("|")))
        .collect();
    let pair = format!("({})", pairs.join("|"));
    format!(
        "^(server|client)://([A-Za-z0-9._~-]{{1,64}}@)?{host_port}/{host_port}(,{host_port}){{0,7}}(\\?{pair}(&{pair}){{0,3}})?$"
    )
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

#[cfg(test)]
mod tests;
