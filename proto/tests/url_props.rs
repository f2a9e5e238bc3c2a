//! Property tests of the URL grammar: for generated tunnel URLs of both roles (IPv4, IPv6,
//! host-name and empty hosts, several targets, explicit and derived keys, every parameter
//! with random valid values including DNS server lists, unknown parameters with arbitrary
//! text), rendering and parsing back gives the same value:
//! `parse(to_url(x)) == x` and `parse(to_config(x)) == x` with the role's defaults filled in,
//! and rendering what was parsed gives the same text again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use nodepass_proto::url::*;
use proptest::prelude::*;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

fn hostname() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}\\.[a-z][a-z0-9]{0,5}\\.?"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        ip().prop_map(|ip| ip.to_string()),
        hostname(),
        Just(String::new()),
        Just("localhost".to_string()),
    ]
}

fn host_port() -> impl Strategy<Value = HostPort> {
    (host(), 1u16..=65535).prop_map(|(host, port)| HostPort { host, port })
}

fn some<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(s)
}

/// Any text, including characters every part of a URL must escape.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9./_-]{1,12}",
        "\\PC{1,8}",
        "[ &=+%;#?@:/,\\[\\]!$'()*~\"<>\\\\]{1,6}",
        any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
    ]
}

fn dns() -> impl Strategy<Value = DnsSetting> {
    prop_oneof![
        (0u64..=i64::MAX as u64).prop_map(|ns| DnsSetting::Ttl(Duration::from_nanos(ns))),
        (0u64..=86_400).prop_map(|s| DnsSetting::Ttl(Duration::from_secs(s))),
        proptest::collection::vec(
            (ip(), prop_oneof![Just(53u16), 1u16..=65535])
                .prop_map(|(ip, port)| SocketAddr::new(ip, port)),
            1..4
        )
        .prop_map(DnsSetting::Servers),
    ]
}

fn params() -> impl Strategy<Value = TunnelParams> {
    let a = (
        some(prop::sample::select(LogLevel::ALL.to_vec())),
        some(prop_oneof![
            Just(TlsMode::Off),
            Just(TlsMode::SelfSigned),
            Just(TlsMode::Files)
        ]),
        some(text()),
        some(text()),
        some(dns()),
        some(prop_oneof![
            Just("none".to_string()),
            hostname(),
            ip().prop_map(|ip| ip.to_string())
        ]),
        some(prop_oneof![
            Just(LbStrategy::RoundRobin),
            Just(LbStrategy::LeastLatency),
            Just(LbStrategy::Failover)
        ]),
        some(1..=MAX_POOL_LIMIT),
        some(1..=MAX_POOL_LIMIT),
        some(prop_oneof![
            Just(RunMode::Auto),
            Just(RunMode::One),
            Just(RunMode::Two)
        ]),
    );
    let b = (
        some(prop_oneof![
            Just(PoolType::Tcp),
            Just(PoolType::Quic),
            Just(PoolType::WebSocket),
            Just(PoolType::Http2)
        ]),
        some(prop_oneof![
            Just(DialSource::Auto),
            ip().prop_map(DialSource::Ip)
        ]),
        some((0u64..=i64::MAX as u64).prop_map(Duration::from_nanos)),
        some(0..=MAX_RATE_MBPS),
        some(0..=MAX_SLOT_LIMIT),
        some(any::<bool>()),
        some(
            any::<(bool, bool, bool)>().prop_map(|(socks, http, tls)| BlockSet {
                socks,
                http,
                tls,
            }),
        ),
        some(any::<bool>()),
        some(any::<bool>()),
    );
    (a, b).prop_map(
        |(
            (log, tls, crt, key, dns, sni, lbs, min, max, mode),
            (pool_type, dial, read, rate, slot, proxy, block, notcp, noudp),
        )| TunnelParams {
            log,
            tls,
            crt,
            key,
            dns,
            sni,
            lbs,
            min,
            max,
            mode,
            pool_type,
            dial,
            read,
            rate,
            slot,
            proxy,
            block,
            notcp,
            noudp,
        },
    )
}

fn unknown() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map(
        prop_oneof![Just(String::new()), text()].prop_filter("not a known parameter", |k| {
            !TUNNEL_PARAMS.contains(&k.as_str())
        }),
        prop_oneof![Just(String::new()), text()],
        0..4,
    )
    .prop_map(|m| m.into_iter().collect())
}

prop_compose! {
    fn tunnel_url()(
        server in any::<bool>(),
        key in prop::option::of(text()),
        tunnel in host_port(),
        targets in proptest::collection::vec(host_port(), 1..4),
        params in params(),
        unknown in unknown(),
    ) -> TunnelUrl {
        // Keep clear of the tunnel-port conflict (tested on its own in the unit tests).
        let targets = targets
            .into_iter()
            .map(|mut t| {
                if t.port == tunnel.port {
                    t.port = if t.port == 65535 { 1 } else { t.port + 1 };
                }
                t
            })
            .collect();
        let key_in_url = key.is_some();
        TunnelUrl {
            role: if server { Role::Server } else { Role::Client },
            key: match key {
                Some(k) => TunnelKey::new(k),
                None => TunnelKey::derived_from_port(&tunnel.port.to_string()),
            },
            key_in_url,
            tunnel,
            targets,
            params,
            unknown,
            spelling: Spelling::default(),
        }
    }
}

/// What the reference master's config adds for the role.
fn with_defaults(x: &TunnelUrl) -> TunnelUrl {
    let mut y = x.clone();
    let p = &mut y.params;
    p.block.get_or_insert(BlockSet::default());
    p.dial.get_or_insert(DialSource::Auto);
    p.dns.get_or_insert(DnsSetting::Ttl(DEFAULT_DNS_TTL));
    p.mode.get_or_insert(RunMode::Auto);
    p.notcp.get_or_insert(false);
    p.noudp.get_or_insert(false);
    p.proxy.get_or_insert(false);
    p.rate.get_or_insert(0);
    p.read.get_or_insert(Duration::ZERO);
    p.slot.get_or_insert(DEFAULT_SLOT);
    match y.role {
        Role::Client => {
            p.min.get_or_insert(DEFAULT_MIN_POOL);
            p.sni.get_or_insert_with(|| "none".to_string());
        }
        Role::Server => {
            p.max.get_or_insert(DEFAULT_MAX_POOL);
            p.pool_type.get_or_insert(PoolType::Tcp);
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn url_roundtrips(x in tunnel_url()) {
        let url = x.to_url();
        let parsed = parse_tunnel_url(&url);
        prop_assert_eq!(parsed.as_ref(), Ok(&x), "url {}", url);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.to_url(), url);
        prop_assert_eq!(parsed.key.as_str(), x.key.as_str());
    }

    #[test]
    fn config_roundtrips_with_defaults_filled(x in tunnel_url()) {
        let config = x.to_config();
        let parsed = parse_tunnel_url(&config);
        prop_assert_eq!(parsed.as_ref(), Ok(&with_defaults(&x)), "config {}", config);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.to_config(), config.clone());
        // Filling defaults twice changes nothing.
        prop_assert_eq!(parsed.to_url(), config);
    }

    #[test]
    fn inheriting_then_rendering_roundtrips(
        x in tunnel_url(),
        log in some(prop::sample::select(LogLevel::ALL.to_vec())),
        tls in prop_oneof![Just(TlsMode::Off), Just(TlsMode::SelfSigned), Just(TlsMode::Files)],
        crt in some(text()),
        key in some(text()),
    ) {
        let mut y = x.clone();
        y.inherit(&Inherited { log, tls: Some(tls), crt, key });
        prop_assert_eq!(parse_tunnel_url(&y.to_url()), Ok(y.clone()));
        if x.params.log.is_some() {
            prop_assert_eq!(y.params.log, x.params.log);
        }
        if x.role == Role::Client {
            prop_assert_eq!((&y.params.tls, &y.params.crt), (&x.params.tls, &x.params.crt));
        }
    }
}

/// The OpenAPI document's `url` pattern without its anchors (proptest generates from it).
fn pattern_body() -> String {
    let p = url_pattern();
    p.trim_start_matches('^').trim_end_matches('$').to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every URL the OpenAPI pattern describes is accepted by the grammar, but for the one
    /// rule a pattern cannot state (a target on this host with the tunnel's own port).
    #[test]
    fn every_url_of_the_openapi_pattern_parses(
        url in proptest::string::string_regex(&pattern_body()).expect("the pattern compiles"),
    ) {
        prop_assert!(
            nodepass_proto::go_url::check_instance_url(&url).is_ok(),
            "{url:?} matches the pattern but the Go master's first checks refuse it"
        );
        match parse_tunnel_url(&url) {
            Ok(_) | Err(UrlError::TargetConflict { .. }) => {}
            Err(e) => prop_assert!(false, "{url:?} matches the pattern but is refused: {e}"),
        }
    }
}

/// The pattern describes the URLs people write: the README's and the API document's
/// examples match it; what the grammar refuses first does not.
#[test]
fn the_openapi_pattern_matches_the_usual_urls_and_not_the_broken_ones() {
    let re = regex::Regex::new(&url_pattern()).expect("the pattern compiles");
    for ok in [
        "server://127.0.0.1:10101/127.0.0.1:8080",
        "client://127.0.0.1:10101/127.0.0.1:8081?mode=2",
        "server://secret@0.0.0.0:10101/127.0.0.1:8080?tls=1&type=2",
        "server://:10101/:8080",
        "client://key@tunnel.example.com:10101/10.0.0.5:22,10.0.0.6:22?lbs=1&log=debug",
        "server://k@[::]:443/[2001:db8::1]:8443",
        "client://[::1]:10101/localhost.:80?notcp=1",
    ] {
        assert!(re.is_match(ok), "{ok} does not match");
        assert!(parse_tunnel_url(ok).is_ok(), "{ok} is refused");
    }
    for bad in [
        "server://",
        "master://127.0.0.1:9090/api",
        "server://127.0.0.1:0/127.0.0.1:8080",
        "server://127.0.0.1:65536/127.0.0.1:8080",
        "server://127.0.0.1:010101/127.0.0.1:8080",
        "server://127.0.0.1:10101",
        "server://1.2.3.256:10101/127.0.0.1:80",
        "server://[fe80::1%25eth0]:10101/127.0.0.1:80",
        "server://127.0.0.1:10101/127.0.0.1:80?tls=3",
    ] {
        assert!(!re.is_match(bad), "{bad} matches");
        assert!(parse_tunnel_url(bad).is_err(), "{bad} is accepted");
    }
}
