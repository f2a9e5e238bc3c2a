//! Outside test vectors for URL rendering: what the real Go master (NodePass v1.14.0) stored
//! as `url` and `config` for each instance URL it was given.
//!
//! `data/go-master-urls.json` was recorded on loopback by starting the Go binary as three
//! masters (`?log=debug&tls=2&crt=..&key=..` with a real certificate pair, plain, and
//! `?tls=1`), POSTing each input URL to `/api/v1/instances`, and keeping the `url` and
//! `config` of the 201 answer. Each record: `master`, `input`, `status`, `url`, `config`.
//! The same is checked against the transcript in shared/spec/go-master-transcript.md.
//!
//! `data/go-net-url.json` widens this to odd inputs: 380 URLs from the fuzz corpus that we
//! accept (odd escapes, repeated and empty parameters, spaces, fragments, IPv6, several
//! targets), with `url` and `config` computed by Go 1.27's `net/url` doing what the master's
//! enhanceURL/generateConfigURL do for a master without log or TLS: `u, _ := url.Parse(in);
//! u.RawQuery = u.Query().Encode(); url := u.String()`, then each role default set where
//! `q.Get(k) == ""`, `Encode()`, `String()` again.

use nodepass_proto::url::{parse_master_url, parse_tunnel_url};

#[derive(serde::Deserialize)]
struct Record {
    master: String,
    input: String,
    status: u16,
    url: Option<String>,
    config: Option<String>,
}

fn records() -> Vec<Record> {
    serde_json::from_str(include_str!("data/go-master-urls.json")).expect("vector file is JSON")
}

#[test]
fn url_and_config_match_the_go_master() {
    let records = records();
    assert_eq!(records.len(), 60);
    for r in records {
        assert_eq!(r.status, 201, "{}", r.input);
        let master = parse_master_url(&r.master).expect("master URL parses");
        let mut t =
            parse_tunnel_url(&r.input).unwrap_or_else(|e| panic!("{} should parse: {e}", r.input));
        t.inherit(&master.inherited());
        assert_eq!(
            Some(t.to_url()),
            r.url,
            "url of {} under {}",
            r.input,
            r.master
        );
        assert_eq!(
            Some(t.to_config()),
            r.config,
            "config of {} under {}",
            r.input,
            r.master
        );
        // The stored url, given back to us, means the same and renders the same.
        let again = parse_tunnel_url(&t.to_url()).expect("our url parses");
        assert_eq!(again, t);
        assert_eq!(again.to_url(), t.to_url());
    }
}

// shared/spec/go-master-transcript.md: master `?log=info`, single-end clients; the JSON
// there escapes `&` as \u0026.
#[test]
fn config_matches_the_transcript() {
    let master = parse_master_url("master://127.0.0.1:42100/api?log=info").unwrap();
    for port in ["42110", "42111", "29130"] {
        let mut t = parse_tunnel_url(&format!(
            "client://127.0.0.1:{port}/127.0.0.1:41001?log=info"
        ))
        .unwrap();
        t.inherit(&master.inherited());
        assert_eq!(
            t.to_url(),
            format!("client://127.0.0.1:{port}/127.0.0.1:41001?log=info")
        );
        assert_eq!(
            t.to_config(),
            format!("client://127.0.0.1:{port}/127.0.0.1:41001?block=0&dial=auto&dns=5m0s&log=info&min=64&mode=0&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&sni=none")
        );
    }
    // The transcript's url without a log parameter gets the master's.
    let mut t = parse_tunnel_url("client://127.0.0.1:42113/127.0.0.1:41001").unwrap();
    t.inherit(&master.inherited());
    assert_eq!(
        t.to_url(),
        "client://127.0.0.1:42113/127.0.0.1:41001?log=info"
    );
}

#[derive(serde::Deserialize)]
struct NetUrlRecord {
    input: String,
    url: String,
    config: String,
}

#[test]
fn odd_inputs_render_as_go_net_url_renders_them() {
    let records: Vec<NetUrlRecord> =
        serde_json::from_str(include_str!("data/go-net-url.json")).expect("vector file is JSON");
    assert_eq!(records.len(), 380);
    for r in records {
        let t = parse_tunnel_url(&r.input)
            .unwrap_or_else(|e| panic!("{:?} should parse: {e}", r.input));
        assert_eq!(t.to_url(), r.url, "url of {:?}", r.input);
        assert_eq!(t.to_config(), r.config, "config of {:?}", r.input);
    }
}
