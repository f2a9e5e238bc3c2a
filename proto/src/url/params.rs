//! The query parameters of NodePass URLs, each described exactly once in the
//! `parameters!` table below: its name, the roles it means something for, its default
//! (and whether the reference master writes that default into `config`), the values it
//! accepts with their range, and the error text for any other value.
//!
//! Everything else is derived from that table: the [`TunnelParams`] struct (one
//! `Option` per parameter), the [`PARAMS`] descriptors that parsing, validation and
//! rendering walk, the name lists [`TUNNEL_PARAMS`] and [`MASTER_PARAMS`], the
//! `config` defaults of each role, and a typed accessor per parameter with a default
//! (`params.read()` is the `read` in effect, `params.read` what the URL said).
//! Adding a parameter is one entry here plus its row in the README's URL table.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::values::{
    BlockSet, DialSource, DnsSetting, LbStrategy, LogLevel, PoolType, RunMode, TlsMode,
};
use super::{valid_hostname, Role, UrlError};
use crate::duration::{format_go_duration, parse_go_duration};

/// Default pool minimum (client `min`).
pub const DEFAULT_MIN_POOL: u32 = 64;
/// Default pool maximum (server `max`).
pub const DEFAULT_MAX_POOL: u32 = 1024;
/// Default concurrent TCP connections + UDP sessions (`slot`).
pub const DEFAULT_SLOT: u32 = 65536;
/// Default DNS cache TTL (`dns`).
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(300);
// The limits below are written once, as literals in these macros, so that the checks and
// the "expected ..." texts of the parameter table (built with `concat!`) cannot disagree.
macro_rules! max_pool_limit {
    () => {
        1048576
    };
}
macro_rules! max_slot_limit {
    () => {
        16777216
    };
}
macro_rules! max_rate_mbps {
    () => {
        1000000
    };
}
/// Largest accepted `min`/`max` (2^20; a pool beyond this is a configuration mistake).
pub const MAX_POOL_LIMIT: u32 = max_pool_limit!();
/// Largest accepted `slot` (2^24).
pub const MAX_SLOT_LIMIT: u32 = max_slot_limit!();
/// Largest accepted `rate` in Mbps (1 Tbit/s).
pub const MAX_RATE_MBPS: u32 = max_rate_mbps!();

/// Where a parameter means something: the README's Roles column. Tunnel URLs of either
/// role still accept every parameter (a client's `max` is parsed and kept, then ignored);
/// the roles decide which parameters a master URL reads and which defaults the reference
/// master fills into a role's `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub server: bool,
    pub client: bool,
    pub master: bool,
}

impl Roles {
    pub const ALL: Roles = Roles::of(true, true, true);
    pub const TUNNEL: Roles = Roles::of(true, true, false);
    pub const SERVER: Roles = Roles::of(true, false, false);
    pub const CLIENT: Roles = Roles::of(false, true, false);
    pub const SERVER_MASTER: Roles = Roles::of(true, false, true);

    const fn of(server: bool, client: bool, master: bool) -> Roles {
        Roles {
            server,
            client,
            master,
        }
    }

    pub fn has(self, role: Role) -> bool {
        match role {
            Role::Server => self.server,
            Role::Client => self.client,
        }
    }
}

/// One query parameter as the `parameters!` table describes it. The three functions are
/// generated from the entry's parser, renderer and default; they reach the parameter's own
/// field of [`TunnelParams`] and no other.
#[derive(Clone, Copy)]
pub struct Param {
    /// The query key (`read`, `type`, ...).
    pub name: &'static str,
    pub roles: Roles,
    /// Whether the reference master writes the default into the `config` of the tunnel
    /// roles in `roles` when the URL does not give the parameter (REFERENCE.md 9.3).
    pub in_config: bool,
    /// What a valid value looks like: the end of the error for any other value.
    pub expected: &'static str,
    /// Every accepted value in canonical form, for a parameter whose values are a short
    /// closed list (the web console offers them as a select); empty otherwise.
    pub choices: &'static [&'static str],
    /// Parses a value and stores it; `None` when the value is not valid.
    store: fn(&mut TunnelParams, &str) -> Option<()>,
    /// The canonical text of the stored value, `None` when absent.
    text: fn(&TunnelParams) -> Option<String>,
    /// The canonical text of the default, `None` for a parameter without one.
    default_text: fn() -> Option<String>,
}

impl Param {
    /// The descriptor of a query key, if it is a parameter.
    pub fn find(name: &str) -> Option<&'static Param> {
        PARAMS.iter().find(|p| p.name == name)
    }

    /// Validates `value` and stores it in `params`, or says what would have been valid.
    pub fn set(&self, params: &mut TunnelParams, value: &str) -> Result<(), UrlError> {
        (self.store)(params, value).ok_or_else(|| UrlError::Param {
            name: self.name,
            value: value.to_string(),
            expected: self.expected,
        })
    }

    /// The canonical text of the value in `params`: Go's duration form, the block digits in
    /// order, DNS servers without a `:53`. `None` when not given.
    pub fn text(&self, params: &TunnelParams) -> Option<String> {
        (self.text)(params)
    }

    /// The canonical text of `value`, if it is valid.
    pub fn canonical(&self, value: &str) -> Option<String> {
        let mut params = TunnelParams::default();
        (self.store)(&mut params, value)?;
        (self.text)(&params)
    }

    /// The canonical text of the default in effect when the URL does not give this
    /// parameter; `None` for a parameter without one (the web console shows it).
    pub fn default_text(&self) -> Option<String> {
        (self.default_text)()
    }

    /// The text the reference master fills into the `config` of `role` when the URL does
    /// not give this parameter; `None` when it fills in nothing.
    pub fn config_default(&self, role: Role) -> Option<String> {
        if self.in_config && self.roles.has(role) {
            (self.default_text)()
        } else {
            None
        }
    }
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Param")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("in_config", &self.in_config)
            .field("default", &(self.default_text)())
            .field("expected", &self.expected)
            .finish()
    }
}

/// `Some(default)` for an entry that has one, else `None`.
macro_rules! optional {
    () => {
        None
    };
    ($value:expr) => {
        Some($value)
    };
}

/// Declares every parameter from one entry each:
///
/// ```text
/// /// doc of the field
/// field: Type = "name" {
///     roles: Roles::..., expected: "error text",
///     parse: fn(&str) -> Option<Type>, render: fn(&Type) -> String,
///     default: value,          // optional; generates `TunnelParams::field()`
///     choices: ["a", "b"],     // optional; every value of a closed list
///     in_config: bool,
/// }
/// ```
macro_rules! parameters {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $name:literal {
            roles: $roles:expr,
            expected: $expected:expr,
            parse: $parse:expr,
            render: $render:expr,
            $(default: $default:expr,)?
            $(choices: [$($choice:literal),* $(,)?],)?
            in_config: $in_config:expr $(,)?
        }
    )*) => {
        /// Every query parameter of a tunnel URL, `None` when not given (or given empty,
        /// which the reference also treats as not given). The methods of the same names
        /// give the value in effect: the given one, else the default.
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct TunnelParams {
            $( $(#[doc = $doc])* pub $field: Option<$ty>, )*
        }

        impl TunnelParams {
            $($(
                #[doc = concat!("The `", $name, "` in effect: the given one, else `",
                    stringify!($default), "`.")]
                pub fn $field(&self) -> $ty {
                    self.$field.as_ref().map_or_else(|| $default, Clone::clone)
                }
            )?)*
        }

        /// Every parameter, in the order of the README table.
        pub const PARAMS: &[Param] = &[$(
            Param {
                name: $name,
                roles: $roles,
                in_config: $in_config,
                expected: $expected,
                choices: &[$($($choice),*)?],
                store: |params, value| {
                    let parse: fn(&str) -> Option<$ty> = $parse;
                    params.$field = Some(parse(value)?);
                    Some(())
                },
                text: |params| {
                    let render: fn(&$ty) -> String = $render;
                    params.$field.as_ref().map(render)
                },
                default_text: || {
                    let render: fn(&$ty) -> String = $render;
                    let default: Option<$ty> = optional!($($default)?);
                    default.as_ref().map(render)
                },
            },
        )*];

        /// Every query parameter a tunnel URL understands, in the order of the README table.
        pub const TUNNEL_PARAMS: &[&str] = &[$($name),*];
    };
}

parameters! {
    /// `log`: that level and above are shown.
    log: LogLevel = "log" {
        roles: Roles::ALL,
        expected: "none, debug, info, warn, error or event",
        parse: LogLevel::parse,
        render: |level| level.as_str().to_string(),
        default: LogLevel::Info,
        choices: ["none", "debug", "info", "warn", "error", "event"],
        in_config: false,
    }
    /// `tls`: how pool connections are encrypted (see `TunnelUrl::effective_tls`).
    tls: TlsMode = "tls" {
        roles: Roles::SERVER_MASTER,
        expected: "0, 1 or 2",
        parse: TlsMode::from_code,
        render: |mode| mode.code().to_string(),
        default: TlsMode::Off,
        choices: ["0", "1", "2"],
        in_config: false,
    }
    /// `crt`: certificate file for `tls=2`.
    crt: String = "crt" {
        roles: Roles::SERVER_MASTER,
        expected: "a file path",
        parse: non_empty,
        render: String::clone,
        in_config: false,
    }
    /// `key`: private key file for `tls=2`.
    key: String = "key" {
        roles: Roles::SERVER_MASTER,
        expected: "a file path",
        parse: non_empty,
        render: String::clone,
        in_config: false,
    }
    /// `dns`: resolve-cache TTL or DNS servers.
    dns: DnsSetting = "dns" {
        roles: Roles::TUNNEL,
        expected: "a cache TTL such as 5m or 0 (no cache), or DNS servers as IP[:port] \
                   separated by commas",
        parse: DnsSetting::parse,
        render: DnsSetting::render,
        default: DnsSetting::Ttl(DEFAULT_DNS_TTL),
        in_config: true,
    }
    /// `sni`: TLS server name and handshake `Host:`. The default `none` is what the
    /// reference master writes into a client's `config`; a running client with a host name
    /// as its tunnel address uses that name (see `TunnelUrl::effective_sni`).
    sni: String = "sni" {
        roles: Roles::CLIENT,
        expected: "a host name, an IP address or none",
        parse: parse_sni,
        render: String::clone,
        default: "none".to_string(),
        in_config: true,
    }
    /// `lbs`: how a connection picks among several targets (our extension, so the
    /// reference master writes no default for it).
    lbs: LbStrategy = "lbs" {
        roles: Roles::TUNNEL,
        expected: "0 (round robin), 1 (least latency) or 2 (failover)",
        parse: LbStrategy::from_code,
        render: |strategy| strategy.code().to_string(),
        default: LbStrategy::RoundRobin,
        choices: ["0", "1", "2"],
        in_config: false,
    }
    /// `min`: client pool minimum.
    min: u32 = "min" {
        roles: Roles::CLIENT,
        expected: concat!("a whole number from 1 to ", max_pool_limit!()),
        parse: |v| whole_number(v, 1..=MAX_POOL_LIMIT),
        render: u32::to_string,
        default: DEFAULT_MIN_POOL,
        in_config: true,
    }
    /// `max`: server pool cap (sent to the client in the handshake).
    max: u32 = "max" {
        roles: Roles::SERVER,
        expected: concat!("a whole number from 1 to ", max_pool_limit!()),
        parse: |v| whole_number(v, 1..=MAX_POOL_LIMIT),
        render: u32::to_string,
        default: DEFAULT_MAX_POOL,
        in_config: true,
    }
    /// `mode`: which end listens on the target (0 decides at start).
    mode: RunMode = "mode" {
        roles: Roles::TUNNEL,
        expected: "0, 1 or 2",
        parse: RunMode::from_code,
        render: |mode| mode.code().to_string(),
        default: RunMode::Auto,
        choices: ["0", "1", "2"],
        in_config: true,
    }
    /// `type`: the pool transport (a client learns it in the handshake).
    pool_type: PoolType = "type" {
        roles: Roles::SERVER,
        expected: "0 (tcp), 1 (quic), 2 (websocket) or 3 (http2)",
        parse: PoolType::from_code,
        render: |pool_type| pool_type.code().to_string(),
        default: PoolType::Tcp,
        choices: ["0", "1", "2", "3"],
        in_config: true,
    }
    /// `dial`: source address for target dials.
    dial: DialSource = "dial" {
        roles: Roles::TUNNEL,
        expected: "auto or a local IP address",
        parse: DialSource::parse,
        render: |source| source.render(),
        default: DialSource::Auto,
        in_config: true,
    }
    /// `read`: per-read idle timeout of TCP relays; zero means none.
    read: Duration = "read" {
        roles: Roles::TUNNEL,
        expected: "a duration such as 0, 30s or 1m30s",
        parse: |v| parse_go_duration(v).ok(),
        render: |d| format_go_duration(*d),
        default: Duration::ZERO,
        in_config: true,
    }
    /// `rate`: bandwidth limit in Mbps per direction; zero means unlimited.
    rate: u32 = "rate" {
        roles: Roles::TUNNEL,
        expected: concat!(
            "a whole number of Mbps from 0 to ",
            max_rate_mbps!(),
            " (0 = unlimited)"
        ),
        parse: |v| whole_number(v, 0..=MAX_RATE_MBPS),
        render: u32::to_string,
        default: 0,
        in_config: true,
    }
    /// `slot`: most TCP connections + UDP sessions at once; zero means unlimited.
    slot: u32 = "slot" {
        roles: Roles::TUNNEL,
        expected: concat!(
            "a whole number from 0 to ",
            max_slot_limit!(),
            " (0 = unlimited)"
        ),
        parse: |v| whole_number(v, 0..=MAX_SLOT_LIMIT),
        render: u32::to_string,
        default: DEFAULT_SLOT,
        in_config: true,
    }
    /// `proxy`: send a PROXY protocol v1 line to the target first.
    proxy: bool = "proxy" {
        roles: Roles::TUNNEL,
        expected: "0 or 1",
        parse: parse_flag,
        render: |on| flag_text(*on),
        default: false,
        choices: ["0", "1"],
        in_config: true,
    }
    /// `block`: protocols the incoming side refuses.
    block: BlockSet = "block" {
        roles: Roles::TUNNEL,
        expected: "0, or any of the digits 1 (socks), 2 (http), 3 (tls), e.g. 13",
        parse: BlockSet::parse,
        render: |set| set.render(),
        default: BlockSet::default(),
        in_config: true,
    }
    /// `notcp`: no TCP on this side.
    notcp: bool = "notcp" {
        roles: Roles::TUNNEL,
        expected: "0 or 1",
        parse: parse_flag,
        render: |on| flag_text(*on),
        default: false,
        choices: ["0", "1"],
        in_config: true,
    }
    /// `noudp`: no UDP on this side.
    noudp: bool = "noudp" {
        roles: Roles::TUNNEL,
        expected: "0 or 1",
        parse: parse_flag,
        render: |on| flag_text(*on),
        default: false,
        choices: ["0", "1"],
        in_config: true,
    }
}

/// The query parameters a master URL understands: those whose roles include the master.
pub const MASTER_PARAMS: &[&str] = &master_params::<MASTER_PARAM_COUNT>();

const MASTER_PARAM_COUNT: usize = {
    let mut count = 0;
    let mut i = 0;
    while i < PARAMS.len() {
        if PARAMS[i].roles.master {
            count += 1;
        }
        i += 1;
    }
    count
};

const fn master_params<const N: usize>() -> [&'static str; N] {
    let mut names = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < PARAMS.len() {
        if PARAMS[i].roles.master {
            names[n] = PARAMS[i].name;
            n += 1;
        }
        i += 1;
    }
    names
}

impl TunnelParams {
    /// Validates `value` for the parameter `name` and stores it. `Ok(false)`: not a
    /// parameter we know (the caller keeps it as unknown).
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool, UrlError> {
        match Param::find(name) {
            Some(param) => param.set(self, value).map(|()| true),
            None => Ok(false),
        }
    }

    /// The canonical text of a given parameter (`None` when not given or not a parameter):
    /// Go's duration form, the block digits in order, DNS servers without a `:53`.
    pub fn text(&self, name: &str) -> Option<String> {
        Param::find(name).and_then(|param| param.text(self))
    }
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

/// Decimal digits only (no sign, no spaces), within `range`.
fn whole_number(v: &str, range: RangeInclusive<u32>) -> Option<u32> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|n| range.contains(n))
}

fn parse_flag(v: &str) -> Option<bool> {
    match v {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn flag_text(on: bool) -> String {
    if on { "1" } else { "0" }.to_string()
}

/// `none`, a host name or an IP literal: it becomes the handshake's `Host:` header and the
/// TLS server name, so nothing else is let through.
fn parse_sni(v: &str) -> Option<String> {
    (v == "none" || v.parse::<IpAddr>().is_ok() || valid_hostname(v)).then(|| v.to_string())
}
