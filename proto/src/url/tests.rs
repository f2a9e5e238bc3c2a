//! Unit tests of the URL grammar: every parameter (valid values, default when absent, each
//! kind of invalid value), addresses, keys, errors, inheritance from a master and rendering.
//! Vectors from the real Go master are in proto/tests/go_master_vectors.rs.

use super::*;
use std::time::Duration;

fn tunnel(s: &str) -> TunnelUrl {
    parse_tunnel_url(s).unwrap_or_else(|e| panic!("{s} should parse: {e}"))
}

fn err(s: &str) -> UrlError {
    match parse(s) {
        Ok(u) => panic!("{s} should be refused, parsed as {u:?}"),
        Err(e) => e,
    }
}

fn server_with(query: &str) -> Result<TunnelUrl, UrlError> {
    parse_tunnel_url(&format!(
        "server://k@127.0.0.1:10101/127.0.0.1:8080?{query}"
    ))
}

fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.to_string(),
        port,
    }
}

// ---------------------------------------------------------------- addresses and keys

#[test]
fn parses_server_and_client_with_ipv4_ipv6_hostnames_and_empty_hosts() {
    let s = tunnel("server://secret@0.0.0.0:10101/127.0.0.1:8080");
    assert_eq!(s.role, Role::Server);
    assert_eq!(s.key.as_str(), "secret");
    assert!(s.key_in_url);
    assert_eq!(s.tunnel, hp("0.0.0.0", 10101));
    assert_eq!(s.targets, vec![hp("127.0.0.1", 8080)]);

    let c = tunnel("client://k@[2001:db8::1]:443/[::1]:22");
    assert_eq!(c.role, Role::Client);
    assert_eq!(c.tunnel, hp("2001:db8::1", 443));
    assert_eq!(c.tunnel.to_string(), "[2001:db8::1]:443");
    assert_eq!(c.targets[0].to_string(), "[::1]:22");
    assert!(c.targets[0].is_loopback());

    let h = tunnel("client://server.example.com:10101/localhost:80");
    assert_eq!(h.tunnel.host, "server.example.com");
    assert_eq!(h.tunnel.ip(), None);
    assert_eq!(h.tunnel.socket_addr(), None);
    assert!(h.targets[0].is_loopback());
    // A trailing dot (fully qualified name) and underscores are fine.
    assert_eq!(
        tunnel("client://a_b.example.:1/x:2").tunnel.host,
        "a_b.example."
    );

    let e = tunnel("server://:10101/:8080");
    assert_eq!(e.tunnel, hp("", 10101));
    assert!(e.tunnel.is_unspecified());
    assert_eq!(
        e.tunnel.socket_addr(),
        Some(SocketAddr::from(([0, 0, 0, 0], 10101)))
    );
    assert_eq!(e.targets, vec![hp("", 8080)]);
    assert_eq!(e.to_url(), "server://:10101/:8080");
}

#[test]
fn several_targets_are_trimmed_and_empties_dropped() {
    let t = tunnel("server://:10101/10.0.0.1:80, 10.0.0.2:80 ,,[::2]:81,");
    assert_eq!(
        t.targets,
        vec![hp("10.0.0.1", 80), hp("10.0.0.2", 80), hp("::2", 81)]
    );
    // The Go master re-escapes a path with spaces as a whole (brackets too); parsing that
    // back is the same URL.
    let url = t.to_url();
    assert_eq!(
        url,
        "server://:10101/10.0.0.1:80,%2010.0.0.2:80%20,,%5B::2%5D:81,"
    );
    assert_eq!(tunnel(&url), t);
    // Percent-encoded targets decode before splitting.
    let t = tunnel("server://:1/%5B::1%5D:2%2C127.0.0.1:3");
    assert_eq!(t.targets, vec![hp("::1", 2), hp("127.0.0.1", 3)]);
}

#[test]
fn tunnel_key_is_the_decoded_username_else_the_fnv_hash_of_the_port() {
    // REFERENCE.md 2 and go-wire-capture.md: 10101 -> e68be2b4, 41060 -> 6e78ac54.
    assert_eq!(
        tunnel("server://:10101/127.0.0.1:80").key.as_str(),
        "e68be2b4"
    );
    assert_eq!(
        tunnel("client://127.0.0.1:41060/127.0.0.1:41001")
            .key
            .as_str(),
        "6e78ac54"
    );
    assert_eq!(TunnelKey::derived_from_port("").as_str(), "811c9dc5");
    let derived = tunnel("server://:10101/127.0.0.1:80");
    assert!(!derived.key_in_url);
    assert_eq!(derived.to_url(), "server://:10101/127.0.0.1:80");
    // An empty username also means "derive it".
    let empty = tunnel("server://@:10101/127.0.0.1:80");
    assert!(!empty.key_in_url);
    assert_eq!(empty.key.as_str(), "e68be2b4");
    // Percent-decoded; '+' is not a space in the userinfo; the password is not the key.
    assert_eq!(tunnel("server://a%40b+c@:1/x:2").key.as_str(), "a@b+c");
    let pw = tunnel("client://user:pass@127.0.0.1:1/x:2");
    assert_eq!(pw.key.as_str(), "user");
    assert_eq!(pw.to_url(), "client://user:pass@127.0.0.1:1/x:2");
    // The key never shows in debug output.
    assert!(!format!("{pw:?}").contains("user"));
    assert!(!format!("{pw:?}").contains("pass"));
}

#[test]
fn bad_addresses_are_refused_with_the_reason() {
    let cases: &[(&str, &str)] = &[
        ("server://127.0.0.1/127.0.0.1:80", "missing port"),
        ("server://127.0.0.1:/127.0.0.1:80", "port must be a number"),
        ("server://127.0.0.1:0/127.0.0.1:80", "port must be a number"),
        (
            "server://127.0.0.1:65536/127.0.0.1:80",
            "port must be a number",
        ),
        (
            "server://127.0.0.1:http/127.0.0.1:80",
            "port must be a number",
        ),
        (
            "server://127.0.0.1:+80/127.0.0.1:80",
            "port must be a number",
        ),
        (
            "server://127.0.0.1:010101/127.0.0.1:80",
            "port must be a number",
        ),
        ("server://::1:10101/127.0.0.1:80", "needs brackets"),
        ("server://:10101/::1:80", "needs brackets"),
        ("server://[::1:10101/127.0.0.1:80", "missing ']'"),
        ("server://[::1]/127.0.0.1:80", "missing port"),
        ("server://[::1]x:1/127.0.0.1:80", "missing port"),
        ("server://[1.2.3.4]:1/127.0.0.1:80", "not an IPv6 address"),
        ("server://[fe80::1%25eth0]:1/127.0.0.1:80", "zone"),
        ("server://1.2.3.256:1/127.0.0.1:80", "not a valid host name"),
        ("server://010.0.0.1:1/127.0.0.1:80", "not a valid host name"),
        ("server://a..b:1/127.0.0.1:80", "not a valid host name"),
        ("server://a b:1/127.0.0.1:80", "not a valid host name"),
        ("server://:1/exa$mple.com:80", "not a valid host name"),
        ("server://:1/127.0.0.1", "missing port"),
    ];
    for (url, reason) in cases {
        let e = err(url);
        assert!(
            matches!(e, UrlError::Address { .. }),
            "{url}: {e:?} is not an address error"
        );
        assert!(e.to_string().contains(reason), "{url}: {e}");
    }
    assert_eq!(
        err("server://127.0.0.1:0/127.0.0.1:80").to_string(),
        "invalid tunnel address \"127.0.0.1:0\": the port must be a number from 1 to 65535"
    );
    assert_eq!(
        err("server://:1/::1:80").to_string(),
        "invalid target address \"::1:80\": an IPv6 address needs brackets: [addr]:port"
    );
}

#[test]
fn a_missing_target_is_refused() {
    for url in [
        "server://:10101",
        "server://:10101/",
        "server://:10101/?log=info",
        "client://k@1.2.3.4:10101/ , ,",
    ] {
        assert_eq!(err(url), UrlError::NoTarget, "{url}");
    }
}

#[test]
fn a_target_on_the_tunnel_port_that_loops_back_is_refused() {
    for url in [
        "server://127.0.0.1:10101/127.0.0.1:10101",
        "server://1.2.3.4:10101/localhost:10101",
        "server://0.0.0.0:10101/10.0.0.5:10101",
        "server://:10101/10.0.0.5:10101",
        "server://[::]:10101/10.0.0.5:10101",
        "client://1.2.3.4:10101/:10101",
        "client://1.2.3.4:10101/0.0.0.0:10101",
        "client://1.2.3.4:10101/10.0.0.1:1,[::1]:10101",
    ] {
        let e = err(url);
        assert!(
            matches!(e, UrlError::TargetConflict { port: 10101, .. }),
            "{url}: {e:?}"
        );
    }
    assert_eq!(
        err("server://127.0.0.1:10101/127.0.0.1:10101").to_string(),
        "tunnel port 10101 conflicts with target address 127.0.0.1:10101: the tunnel would connect to itself"
    );
    // Same port on another host, from a specific tunnel address: fine.
    tunnel("server://1.2.3.4:10101/10.0.0.5:10101");
}

#[test]
fn schemes_and_syntax() {
    assert_eq!(
        err("http://1.2.3.4:1/x:2"),
        UrlError::Scheme("http".to_string())
    );
    assert_eq!(
        err("http://1.2.3.4:1/x:2").to_string(),
        "unsupported scheme \"http\": expected server://, client:// or master://"
    );
    // Schemes are case-insensitive (Go lowercases them).
    assert_eq!(tunnel("SERVER://:1/x:2").role, Role::Server);
    for url in [
        "",
        "server",
        "127.0.0.1:10101/127.0.0.1:80",
        "server:127.0.0.1:10101",
        "://1.2.3.4:1/x:2",
        "1server://1.2.3.4:1/x:2",
        "ser ver://1.2.3.4:1/x:2",
    ] {
        assert!(matches!(err(url), UrlError::Syntax(_)), "{url}");
    }
    // A worker URL is not a master URL and the other way round.
    assert!(parse_tunnel_url("master://:9090").is_err());
    assert_eq!(
        parse_master_url("client://:1/x:2"),
        Err(UrlError::Scheme("client".to_string()))
    );
}

#[test]
fn bad_characters_and_escapes_are_refused() {
    let control = err("server://:1/x:2?log=info\n");
    assert!(
        control.to_string().contains("control character"),
        "{control}"
    );
    for url in [
        "server://:1/x:2%zz",
        "server://:1/x:2%4",
        "server://:1/x:2?sni=%",
        "server://:1/x:2?sni=%G1",
        "server://:1/x:2?%zz=1",
        "server://a%2@:1/x:2",
        "server://a:%@:1/x:2",
        "server://:1/x:2#%zz",
        "server://:1/x:2?sni=%ff",
    ] {
        assert!(matches!(err(url), UrlError::Escape(_)), "{url}");
    }
    let userinfo = err("server://a#b@:1/x:2");
    // '#' starts the fragment, so this URL has no host:port at all.
    assert!(matches!(userinfo, UrlError::Address { .. }), "{userinfo:?}");
    let userinfo = err("server://a\"b@:1/x:2");
    assert!(
        userinfo.to_string().contains("must be percent-encoded"),
        "{userinfo}"
    );
    let semi = err("server://:1/x:2?log=info;tls=1");
    assert!(semi.to_string().contains("use '&'"), "{semi}");
}

// ---------------------------------------------------------------- every parameter

/// (parameter, valid spellings and their canonical text, invalid values)
type ParamCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

const PARAM_CASES: &[ParamCase] = &[
    (
        "log",
        &[
            ("none", "none"),
            ("debug", "debug"),
            ("info", "info"),
            ("warn", "warn"),
            ("error", "error"),
            ("event", "event"),
        ],
        &["INFO", "trace", "0", " info"],
    ),
    (
        "tls",
        &[("0", "0"), ("1", "1"), ("2", "2")],
        &["7", "3", "-1", "01", "true", "on"],
    ),
    (
        "crt",
        &[("/etc/ssl/a.crt", "/etc/ssl/a.crt"), ("c d.pem", "c d.pem")],
        &[],
    ),
    ("key", &[("/etc/ssl/a.key", "/etc/ssl/a.key")], &[]),
    (
        "dns",
        &[
            ("5m", "5m0s"),
            ("30s", "30s"),
            ("1h30m", "1h30m0s"),
            ("0", "0s"),
            ("1.1.1.1", "1.1.1.1"),
            ("1.1.1.1:53", "1.1.1.1"),
            ("1.1.1.1,8.8.8.8:5353", "1.1.1.1,8.8.8.8:5353"),
            ("2606:4700::1111", "2606:4700::1111"),
            (
                "[2606:4700::1111]:5353, 9.9.9.9",
                "[2606:4700::1111]:5353,9.9.9.9",
            ),
        ],
        &[
            "-5m",
            "5",
            "5d",
            "dns.google",
            "1.1.1.1:0",
            "1.1.1.1:99999",
            ",",
            "1.1.1.1,x",
        ],
    ),
    (
        "sni",
        &[
            ("none", "none"),
            ("example.com", "example.com"),
            ("10.0.0.1", "10.0.0.1"),
            ("::1", "::1"),
        ],
        &["a b", "host:443", "x/y", "a..b", "1.2.3.256"],
    ),
    (
        "lbs",
        &[("0", "0"), ("1", "1"), ("2", "2")],
        &["3", "rr", "-1"],
    ),
    (
        "min",
        &[("1", "1"), ("64", "64"), ("1048576", "1048576")],
        &["0", "-1", "1048577", "1.5", "ten", "+5", "99999999999"],
    ),
    (
        "max",
        &[("1", "1"), ("1024", "1024"), ("1048576", "1048576")],
        &["0", "-1", "1048577", "1e3"],
    ),
    (
        "mode",
        &[("0", "0"), ("1", "1"), ("2", "2")],
        &["3", "auto", "-1"],
    ),
    (
        "type",
        &[("0", "0"), ("1", "1"), ("2", "2"), ("3", "3")],
        &["4", "tcp", "quic", "-1"],
    ),
    (
        "dial",
        &[
            ("auto", "auto"),
            ("192.168.1.2", "192.168.1.2"),
            ("fe80::1", "fe80::1"),
        ],
        &["AUTO", "eth0", "1.2.3.4:5", "[::1]", "999.1.1.1"],
    ),
    (
        "read",
        &[
            ("0", "0s"),
            ("30s", "30s"),
            ("1m", "1m0s"),
            ("1m30s", "1m30s"),
            ("500ms", "500ms"),
            ("1.5h", "1h30m0s"),
        ],
        &["-1s", "30", "1d", "fast", "1e3s"],
    ),
    (
        "rate",
        &[("0", "0"), ("100", "100"), ("1000000", "1000000")],
        &["-1", "1000001", "10mbps", "1.5"],
    ),
    (
        "slot",
        &[
            ("0", "0"),
            ("1", "1"),
            ("65536", "65536"),
            ("16777216", "16777216"),
        ],
        &["-1", "16777217", "many"],
    ),
    ("proxy", &[("0", "0"), ("1", "1")], &["2", "true", "v1"]),
    (
        "block",
        &[
            ("0", "0"),
            ("1", "1"),
            ("2", "2"),
            ("3", "3"),
            ("12", "12"),
            ("31", "13"),
            ("123", "123"),
            ("0123", "123"),
            ("11", "1"),
        ],
        &["4", "1,2", "socks", "-1", "1 2"],
    ),
    ("notcp", &[("0", "0"), ("1", "1")], &["2", "yes", "true"]),
    ("noudp", &[("0", "0"), ("1", "1")], &["2", "no", "false"]),
];

#[test]
fn the_case_table_covers_every_parameter() {
    let names: Vec<&str> = PARAM_CASES.iter().map(|c| c.0).collect();
    assert_eq!(names, TUNNEL_PARAMS);
}

#[test]
fn every_parameter_accepts_its_values_and_renders_them() {
    for (name, valid, _) in PARAM_CASES {
        for (value, canonical) in *valid {
            let encoded = go_escape(value, Enc::QueryComponent);
            let t = server_with(&format!("{name}={encoded}"))
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
            assert_eq!(
                t.params.text(name).as_deref(),
                Some(*canonical),
                "{name}={value}"
            );
            assert!(t.unknown.is_empty());
            // The stored url keeps the value as the user wrote it, as the Go master does.
            assert!(
                t.to_url().ends_with(&format!("?{name}={encoded}")),
                "{name}={value}: {}",
                t.to_url()
            );
            // ... and the canonical text means the same.
            assert_eq!(canonical_text(name, canonical).as_deref(), Some(*canonical));
        }
    }
}

#[test]
fn every_parameter_refuses_bad_values_naming_parameter_and_value() {
    for (name, _, invalid) in PARAM_CASES {
        for value in *invalid {
            let encoded = go_escape(value, Enc::QueryComponent);
            match server_with(&format!("{name}={encoded}")) {
                Err(UrlError::Param {
                    name: got,
                    value: v,
                    ..
                }) => {
                    assert_eq!(got, *name);
                    assert_eq!(v, *value);
                }
                other => panic!("{name}={value}: {other:?}"),
            }
        }
    }
    assert_eq!(
        server_with("tls=7").unwrap_err().to_string(),
        "invalid value \"7\" for tls: expected 0, 1 or 2"
    );
    assert_eq!(
        server_with("type=9").unwrap_err().to_string(),
        "invalid value \"9\" for type: expected 0 (tcp), 1 (quic), 2 (websocket) or 3 (http2)"
    );
    assert_eq!(
        server_with("read=30").unwrap_err().to_string(),
        "invalid value \"30\" for read: expected a duration such as 0, 30s or 1m30s"
    );
}

#[test]
fn an_empty_value_means_absent_and_is_kept_in_the_url() {
    for name in TUNNEL_PARAMS {
        let t = server_with(&format!("{name}=")).unwrap();
        assert_eq!(t.params, TunnelParams::default(), "{name}");
        assert!(t.to_url().ends_with(&format!("?{name}=")), "{}", t.to_url());
    }
    // Only the first value counts, as Go's Query().Get: a later bad one is not read.
    let t = server_with("tls=1&tls=7").unwrap();
    assert_eq!(t.params.tls, Some(TlsMode::SelfSigned));
    assert!(t.to_url().ends_with("?tls=1&tls=7"));
    let t = server_with("rate=&rate=5").unwrap();
    assert_eq!(t.params.rate, None);
}

#[test]
fn defaults_when_absent() {
    let s = tunnel("server://:10101/127.0.0.1:80");
    assert_eq!(s.params, TunnelParams::default());
    assert_eq!(s.params.log(), LogLevel::Info);
    assert_eq!(s.effective_tls(), TlsMode::Off);
    assert_eq!(s.params.dns(), DnsSetting::Ttl(Duration::from_secs(300)));
    assert_eq!(s.params.lbs(), LbStrategy::RoundRobin);
    assert_eq!(s.params.min(), 64);
    assert_eq!(s.params.max(), 1024);
    assert_eq!(s.params.mode(), RunMode::Auto);
    assert_eq!(s.params.pool_type(), PoolType::Tcp);
    assert_eq!(s.params.dial(), DialSource::Auto);
    assert_eq!(s.params.read(), Duration::ZERO);
    assert_eq!(s.effective_rate_bytes(), 0);
    assert_eq!(s.params.slot(), 65536);
    assert!(!s.params.proxy());
    assert!(s.params.block().is_empty());
    assert!(!s.params.notcp());
    assert!(!s.params.noudp());
    assert_eq!(s.effective_sni(), "none");
    assert_eq!(
        s.to_config(),
        "server://:10101/127.0.0.1:80?block=0&dial=auto&dns=5m0s&max=1024&mode=0&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&type=0"
    );
    let c = tunnel("client://:10101/127.0.0.1:80");
    assert_eq!(
        c.to_config(),
        "client://:10101/127.0.0.1:80?block=0&dial=auto&dns=5m0s&min=64&mode=0&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&sni=none"
    );
}

#[test]
fn effective_values_of_given_parameters() {
    let t = server_with(
        "log=event&dns=1.1.1.1,[::1]:5353&lbs=2&min=8&max=16&mode=2&type=2&dial=10.0.0.1&read=1m&rate=100&slot=7&proxy=1&block=31&notcp=1&noudp=1",
    )
    .unwrap();
    assert_eq!(t.params.log(), LogLevel::Event);
    assert_eq!(
        t.params.dns(),
        DnsSetting::Servers(vec![
            "1.1.1.1:53".parse().unwrap(),
            "[::1]:5353".parse().unwrap()
        ])
    );
    assert_eq!(t.params.lbs(), LbStrategy::Failover);
    assert_eq!((t.params.min(), t.params.max()), (8, 16));
    assert_eq!(t.params.mode(), RunMode::Two);
    assert_eq!(t.params.pool_type(), PoolType::WebSocket);
    assert_eq!(t.params.dial(), DialSource::Ip("10.0.0.1".parse().unwrap()));
    assert_eq!(t.params.read(), Duration::from_secs(60));
    assert_eq!(t.effective_rate_bytes(), 12_500_000);
    assert_eq!(t.params.slot(), 7);
    assert!(t.params.proxy() && t.params.notcp() && t.params.noudp());
    assert_eq!(
        t.params.block(),
        BlockSet {
            socks: true,
            http: false,
            tls: true
        }
    );
}

#[test]
fn quic_and_http2_pools_force_tls() {
    for (q, tls) in [
        ("type=1", TlsMode::SelfSigned),
        ("type=3", TlsMode::SelfSigned),
        ("type=3&tls=0", TlsMode::SelfSigned),
        ("type=1&tls=2", TlsMode::Files),
        ("type=2", TlsMode::Off),
        ("type=0&tls=1", TlsMode::SelfSigned),
    ] {
        assert_eq!(server_with(q).unwrap().effective_tls(), tls, "{q}");
    }
}

#[test]
fn sni_defaults_to_the_tunnel_host_name_or_none() {
    assert_eq!(
        tunnel("client://srv.example.com:1/x:2").effective_sni(),
        "srv.example.com"
    );
    assert_eq!(tunnel("client://1.2.3.4:1/x:2").effective_sni(), "none");
    assert_eq!(tunnel("client://[::1]:1/x:2").effective_sni(), "none");
    assert_eq!(tunnel("client://:1/x:2").effective_sni(), "none");
    assert_eq!(
        tunnel("client://1.2.3.4:1/x:2?sni=a.example").effective_sni(),
        "a.example"
    );
    // The config always shows sni=none when it was not given, even for a host name.
    assert!(tunnel("client://srv.example.com:1/x:2")
        .to_config()
        .ends_with("&sni=none"));
}

#[test]
fn unknown_parameters_are_kept_sorted_and_ignored() {
    let t = server_with("zeta=1&alpha=x+y&zeta=2&flag&=v").unwrap();
    assert_eq!(t.params, TunnelParams::default());
    assert_eq!(
        t.unknown,
        vec![
            ("".to_string(), "v".to_string()),
            ("alpha".to_string(), "x y".to_string()),
            ("flag".to_string(), "".to_string()),
            ("zeta".to_string(), "1".to_string()),
        ]
    );
    assert_eq!(
        t.to_url(),
        "server://k@127.0.0.1:10101/127.0.0.1:8080?=v&alpha=x+y&flag=&zeta=1&zeta=2"
    );
}

// ---------------------------------------------------------------- rendering

#[test]
fn the_users_spelling_survives_but_never_a_stale_one() {
    let mut t = server_with("read=1m&block=31&dns=1.1.1.1:53").unwrap();
    assert_eq!(
        t.to_url(),
        "server://k@127.0.0.1:10101/127.0.0.1:8080?block=31&dns=1.1.1.1%3A53&read=1m"
    );
    // Equality is about meaning: the canonical spelling is the same URL.
    let canonical =
        tunnel("server://k@127.0.0.1:10101/127.0.0.1:8080?read=1m0s&block=13&dns=1.1.1.1");
    assert_eq!(t, canonical);
    // Changing a typed value renders the new value, not the old text.
    t.params.read = Some(Duration::from_secs(90));
    t.params.block = None;
    assert_eq!(
        t.to_url(),
        "server://k@127.0.0.1:10101/127.0.0.1:8080?dns=1.1.1.1%3A53&read=1m30s"
    );
    // A hand-built value renders canonically.
    t.params.dns = Some(DnsSetting::Servers(vec!["[::1]:53".parse().unwrap()]));
    assert!(t.to_url().contains("dns=%3A%3A1&"), "{}", t.to_url());
    // A changed key or target list drops the old writing of the userinfo and path.
    let mut t = tunnel("client://user:pw@1.2.3.4:1/%5B::1%5D:2");
    t.key = TunnelKey::new("new key");
    t.targets.push(hp("h", 3));
    assert_eq!(t.to_url(), "client://new%20key@1.2.3.4:1/[::1]:2,h:3");
}

#[test]
fn keys_are_escaped_as_go_escapes_userinfo() {
    // Go keeps $&+,;= and escapes everything else that is not unreserved.
    let t = TunnelUrl {
        role: Role::Client,
        key: TunnelKey::new("a!b*c'd(e)f$g&h+i,j;k=l:m/n?o@p q~"),
        key_in_url: true,
        tunnel: hp("127.0.0.1", 1),
        targets: vec![hp("127.0.0.1", 2)],
        params: TunnelParams::default(),
        unknown: vec![],
        spelling: Spelling::default(),
    };
    let url = t.to_url();
    assert_eq!(
        url,
        "client://a%21b%2Ac%27d%28e%29f$g&h+i,j;k=l%3Am%2Fn%3Fo%40p%20q~@127.0.0.1:1/127.0.0.1:2"
    );
    assert_eq!(tunnel(&url), t);
}

#[test]
fn fragments_and_a_lone_question_mark_are_kept_like_go() {
    let t = tunnel("server://:1/x:2#frag");
    assert_eq!(t.to_url(), "server://:1/x:2#frag");
    assert_eq!(
        t.to_config(),
        "server://:1/x:2?block=0&dial=auto&dns=5m0s&max=1024&mode=0&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&type=0#frag"
    );
    assert_eq!(tunnel("server://:1/x:2#").to_url(), "server://:1/x:2");
    assert_eq!(tunnel("server://:1/x:2?").to_url(), "server://:1/x:2?");
    assert_eq!(tunnel("server://:1/x:2??").to_url(), "server://:1/x:2?%3F=");
}

// ---------------------------------------------------------------- inheritance

fn master(q: &str) -> MasterUrl {
    parse_master_url(&format!("master://127.0.0.1:9090/api?{q}")).unwrap()
}

#[test]
fn servers_inherit_log_tls_and_files_from_the_master() {
    let m = master("log=debug&tls=2&crt=/c.pem&key=/k.pem");
    let mut s = tunnel("server://:1/x:2");
    s.inherit(&m.inherited());
    assert_eq!(s.params.log, Some(LogLevel::Debug));
    assert_eq!(s.params.tls, Some(TlsMode::Files));
    assert_eq!(s.params.crt.as_deref(), Some("/c.pem"));
    assert_eq!(s.params.key.as_deref(), Some("/k.pem"));
    assert_eq!(
        s.to_url(),
        "server://:1/x:2?crt=%2Fc.pem&key=%2Fk.pem&log=debug&tls=2"
    );

    // What the instance says wins; the files follow the master's tls, not the instance's.
    let mut s = tunnel("server://:1/x:2?log=warn&tls=0&crt=/mine.pem");
    s.inherit(&m.inherited());
    assert_eq!(s.params.log, Some(LogLevel::Warn));
    assert_eq!(s.params.tls, Some(TlsMode::Off));
    assert_eq!(s.params.crt.as_deref(), Some("/mine.pem"));
    assert_eq!(s.params.key.as_deref(), Some("/k.pem"));

    // Clients take only the log level (their TLS comes from the handshake).
    let mut c = tunnel("client://:1/x:2");
    c.inherit(&m.inherited());
    assert_eq!(c.params.log, Some(LogLevel::Debug));
    assert_eq!((c.params.tls, c.params.crt.clone()), (None, None));

    // tls=1: no files; tls=0 or absent: nothing but the log level.
    let mut s = tunnel("server://:1/x:2");
    s.inherit(&master("tls=1&crt=/c.pem&key=/k.pem").inherited());
    assert_eq!(s.params.tls, Some(TlsMode::SelfSigned));
    assert_eq!(s.params.crt, None);
    let mut s = tunnel("server://:1/x:2");
    s.inherit(&master("").inherited());
    assert_eq!(s.params, TunnelParams::default());
    assert_eq!(s.to_url(), "server://:1/x:2");
}

// ---------------------------------------------------------------- master URLs

#[test]
fn master_urls() {
    let m =
        parse_master_url("master://0.0.0.0:9090/admin/?log=warn&tls=2&crt=a&key=b&x=1").unwrap();
    assert_eq!(m.listen, hp("0.0.0.0", 9090));
    assert_eq!(m.prefix, "/admin");
    assert_eq!(m.api_base(), "/admin/v1");
    assert_eq!(m.effective_log(), LogLevel::Warn);
    assert_eq!(m.effective_tls(), TlsMode::Files);
    assert_eq!((m.crt.as_deref(), m.key.as_deref()), (Some("a"), Some("b")));
    assert_eq!(m.unknown, vec![("x".to_string(), "1".to_string())]);
    for (url, prefix) in [
        ("master://:9090", "/api"),
        ("master://:9090/", "/api"),
        ("master://:9090/api", "/api"),
        ("master://[::1]:9090/a/b//", "/a/b"),
    ] {
        assert_eq!(parse_master_url(url).unwrap().prefix, prefix, "{url}");
    }
    let d = parse_master_url("master://:9090").unwrap();
    assert_eq!(
        (d.effective_log(), d.effective_tls()),
        (LogLevel::Info, TlsMode::Off)
    );
    assert_eq!(d.inherited().log, None);
    assert!(matches!(
        parse_master_url("master://:9090?tls=3"),
        Err(UrlError::Param { name: "tls", .. })
    ));
    assert!(matches!(
        parse_master_url("master://:9090?log=loud"),
        Err(UrlError::Param { name: "log", .. })
    ));
    assert!(matches!(
        parse_master_url("master://localhost/api"),
        Err(UrlError::Address { .. })
    ));
    // A master ignores tunnel parameters (they are not its own): kept as unknown.
    let m = parse_master_url("master://:9090?rate=abc").unwrap();
    assert_eq!(m.unknown, vec![("rate".to_string(), "abc".to_string())]);
}

// ---------------------------------------------------------------- documentation

#[test]
fn the_readme_examples_parse() {
    for url in [
        "server://s3cret@:10101/:8080?tls=1&mode=1",
        "client://s3cret@server.example.com:10101/127.0.0.1:80?min=16",
        "server://[::]:10101/db.internal:5432?type=1&mode=2",
        "client://[2001:db8::1]:10101/127.0.0.1:5432",
        "client://:8443/10.0.0.5:443,10.0.0.6:443?mode=1&lbs=2&rate=100&noudp=1&read=1m",
        "server://:10101/app.internal:80?dns=10.0.0.53,10.0.1.53:5353&block=12",
        "master://:9090/admin?tls=2&crt=/etc/np/cert.pem&key=/etc/np/key.pem",
        "server://secret@:10101/127.0.0.1:8080?tls=1",
        "client://secret@server.example.com:10101/127.0.0.1:8080",
        "server://:10101/10.0.0.5:80,10.0.0.6:80?lbs=2&read=1m",
        "client://127.0.0.1:1080/10.0.0.5:80",
        "master://0.0.0.0:9090/api?log=info",
    ] {
        parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    assert_eq!(
        parse_master_url("master://:9090/admin").unwrap().api_base(),
        "/admin/v1"
    );
}

// ---------------------------------------------------------------- the parameter table

#[test]
fn master_urls_read_the_parameters_whose_roles_include_the_master() {
    assert_eq!(MASTER_PARAMS, ["log", "tls", "crt", "key"]);
    let names: Vec<&str> = PARAMS.iter().map(|p| p.name).collect();
    assert_eq!(names, TUNNEL_PARAMS);
}

#[test]
fn config_defaults_per_role_come_from_the_table() {
    let defaults = |role| -> Vec<(&str, String)> {
        PARAMS
            .iter()
            .filter_map(|p| p.config_default(role).map(|d| (p.name, d)))
            .collect()
    };
    let common = [
        ("dns", "5m0s"),
        ("mode", "0"),
        ("dial", "auto"),
        ("read", "0s"),
        ("rate", "0"),
        ("slot", "65536"),
        ("proxy", "0"),
        ("block", "0"),
        ("notcp", "0"),
        ("noudp", "0"),
    ];
    let mut server: Vec<(&str, String)> = common.iter().map(|(n, d)| (*n, d.to_string())).collect();
    let mut client = server.clone();
    server.extend([("max", "1024".to_string()), ("type", "0".to_string())]);
    client.extend([("sni", "none".to_string()), ("min", "64".to_string())]);
    let sorted = |mut v: Vec<(&'static str, String)>| {
        v.sort();
        v
    };
    assert_eq!(sorted(defaults(Role::Server)), sorted(server));
    assert_eq!(sorted(defaults(Role::Client)), sorted(client));
    // Every default is a valid value of its parameter, already in canonical form.
    for p in PARAMS {
        for role in [Role::Server, Role::Client] {
            if let Some(d) = p.config_default(role) {
                assert_eq!(p.canonical(&d).as_deref(), Some(d.as_str()), "{}", p.name);
            }
        }
    }
}

#[test]
fn the_readme_url_table_has_the_roles_of_the_parameter_table() {
    let readme = include_str!("../../../README.md");
    let mut rows = 0;
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name`[, `name`] | roles | default | values | meaning |
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let names: Vec<&str> = cells[1].split(", ").map(|n| n.trim_matches('`')).collect();
        let Some(first) = Param::find(names[0]) else {
            continue;
        };
        let roles = first.roles;
        let written = match cells[2] {
            "all" => Roles::ALL,
            "server, client" => Roles::TUNNEL,
            "server, master" => Roles::SERVER_MASTER,
            "server" => Roles::SERVER,
            "client" => Roles::CLIENT,
            other => panic!("README roles {other:?} of {names:?}"),
        };
        for name in names {
            let param = Param::find(name).unwrap_or_else(|| panic!("README names {name}"));
            assert_eq!(param.roles, written, "{name}");
            assert_eq!(param.roles, roles, "{name}");
            rows += 1;
        }
    }
    assert_eq!(rows, PARAMS.len(), "every parameter has a README row");
}

#[test]
fn typed_accessors_give_the_default_until_a_value_is_given() {
    let mut p = TunnelParams::default();
    assert_eq!(p.read(), Duration::ZERO);
    assert_eq!(p.slot(), DEFAULT_SLOT);
    assert_eq!(p.sni(), "none");
    p.set("read", "1m").unwrap();
    p.set("slot", "7").unwrap();
    assert_eq!(
        (p.read(), p.read),
        (Duration::from_secs(60), Some(Duration::from_secs(60)))
    );
    assert_eq!(p.slot(), 7);
    assert_eq!(p.set("nope", "1"), Ok(false));
    assert_eq!(p.text("nope"), None);
    let err = Param::find("slot").unwrap().set(&mut p, "x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value \"x\" for slot: expected a whole number from 0 to 16777216 (0 = unlimited)"
    );
}

#[test]
fn the_closed_value_lists_are_exactly_what_the_parser_accepts() {
    for p in super::PARAMS {
        for c in p.choices {
            assert_eq!(
                p.canonical(c).as_deref(),
                Some(*c),
                "{}: {c} is canonical",
                p.name
            );
        }
        if p.choices.is_empty() {
            continue;
        }
        // Nothing outside the list: other numbers, words, durations.
        for probe in ["4", "9", "12", "-1", "zz", "5m", "true"] {
            let accepted = p.canonical(probe);
            assert!(
                accepted.is_none() || p.choices.contains(&accepted.as_deref().unwrap_or("")),
                "{}: {probe} is accepted as {accepted:?} but is not in {:?}",
                p.name,
                p.choices
            );
        }
    }
    let with: Vec<&str> = super::PARAMS
        .iter()
        .filter(|p| !p.choices.is_empty())
        .map(|p| p.name)
        .collect();
    assert_eq!(
        with,
        ["log", "tls", "lbs", "mode", "type", "proxy", "notcp", "noudp"]
    );
}
