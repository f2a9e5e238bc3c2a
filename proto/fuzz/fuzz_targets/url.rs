//! Fuzz target: any string through the URL parser. It must never panic, and whatever it
//! accepts must render to URLs that parse back to the same value (to_url and to_config,
//! also after inheriting from a master), and render the same text again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodepass_proto::url::{self, Inherited, LogLevel, NodeUrl, TlsMode};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(NodeUrl::Tunnel(t)) = url::parse(input) else {
        return;
    };
    check(&t);
    let mut inherited = t.clone();
    inherited.inherit(&Inherited {
        log: Some(LogLevel::Debug),
        tls: Some(TlsMode::Files),
        crt: Some("/c rt".to_string()),
        key: Some("k&y".to_string()),
    });
    check(&inherited);
});

fn check(t: &url::TunnelUrl) {
    let rendered = t.to_url();
    let again = url::parse_tunnel_url(&rendered)
        .unwrap_or_else(|e| panic!("to_url {rendered:?} does not parse: {e}"));
    assert_eq!(&again, t, "to_url {rendered:?}");
    assert_eq!(again.to_url(), rendered);
    assert_eq!(again.key.as_str(), t.key.as_str());
    let config = t.to_config();
    let from_config = url::parse_tunnel_url(&config)
        .unwrap_or_else(|e| panic!("to_config {config:?} does not parse: {e}"));
    assert_eq!(from_config.to_config(), config);
    assert_eq!(from_config.to_url(), config);
    assert_eq!(from_config.targets, t.targets);
    assert_eq!(from_config.key.as_str(), t.key.as_str());
}
