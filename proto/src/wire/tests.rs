//! Unit tests of `wire`.

use super::*;

fn k() -> TunnelKey {
    TunnelKey::new("k")
}

fn remote(text: &str) -> RemoteAddr {
    RemoteAddr::parse(text)
}

fn pool_id(hex: &str) -> PoolId {
    PoolId::from_hex(hex).unwrap_or_else(|| panic!("{hex} is a pool id"))
}

// go-wire-capture.md section 1: HMAC-SHA256(key=b"k", msg=b"") checked with Python hmac.
#[test]
fn token_matches_capture() {
    assert_eq!(
        auth_token(&k()),
        "8bb990c40a7d61cb97597a942125025be50ac8beb74436e3735b98893a7f6620"
    );
    assert!(verify_auth_token(
        &k(),
        "8bb990c40a7d61cb97597a942125025be50ac8beb74436e3735b98893a7f6620"
    ));
    assert!(!verify_auth_token(&k(), "0000"));
    assert!(!verify_auth_token(&k(), "not hex"));
    assert!(!verify_auth_token(
        &TunnelKey::new("other"),
        &auth_token(&k())
    ));
}

// go-wire-capture.md section 1: the client's exact 173 request bytes.
#[test]
fn request_bytes_match_capture() {
    let want = b"GET / HTTP/1.1\r\nHost: none\r\nUser-Agent: Go-http-client/1.1\r\nAuthorization: Bearer 8bb990c40a7d61cb97597a942125025be50ac8beb74436e3735b98893a7f6620\r\nAccept-Encoding: gzip\r\n\r\n";
    let got = handshake_request("none", &k());
    assert_eq!(got.len(), 173);
    assert_eq!(got, want.to_vec());
}

/// Our request is the Go client's plus one header line; a Go server (which ignores
/// unknown headers) judges it the same; our server answers the nonce only when asked.
#[test]
fn entry_proofs_are_negotiated_by_one_header_each_way() {
    let plain = handshake_request("none", &k());
    let ours = handshake_request_with_proof("none", &k());
    assert_eq!(&ours[..plain.len() - 2], &plain[..plain.len() - 2]);
    assert_eq!(
        &ours[plain.len() - 2..],
        b"X-NodePass-Entry-Proof: 1\r\n\r\n"
    );
    assert!(request_wants_entry_proof(&ours));
    assert!(!request_wants_entry_proof(&plain));
    let verdict = |r: &[u8]| judge_handshake_request(r, &k()).map(|v| v.map(|(v, _)| v));
    assert_eq!(verdict(&ours), Ok(Some(HandshakeVerdict::Accept)));
    assert_eq!(verdict(&plain), Ok(Some(HandshakeVerdict::Accept)));
    let cfg = TunnelConfig {
        flow: Flow::Forward,
        max: 8,
        tls: TlsMode::SelfSigned,
        pool_type: PoolType::WebSocket,
    };
    let nonce = [7u8; ENTRY_PROOF_NONCE_LEN];
    let date = "Wed, 25 Nov 2026 07:31:23 GMT";
    let with = handshake_response_with_proof(&HandshakeVerdict::Accept, &cfg, date, Some(&nonce));
    assert_eq!(parse_handshake_answer(&with), Ok(Some((cfg, Some(nonce)))));
    assert_eq!(parse_handshake_response(&with), Ok(Some(cfg)));
    let without = handshake_response(&HandshakeVerdict::Accept, &cfg, date);
    assert_eq!(parse_handshake_answer(&without), Ok(Some((cfg, None))));
    // A refusal never carries the nonce.
    let refused =
        handshake_response_with_proof(&HandshakeVerdict::Unauthorized, &cfg, date, Some(&nonce));
    assert!(!String::from_utf8_lossy(&refused).contains(ENTRY_PROOF_HEADER));
}

#[test]
fn entry_proofs_depend_on_key_and_nonce_and_compare_exactly() {
    let a = EntryProof::new(&k(), &[1; 16]);
    assert_eq!(a, EntryProof::new(&k(), &[1; 16]));
    assert_ne!(a, EntryProof::new(&k(), &[2; 16]));
    assert_ne!(a, EntryProof::new(&TunnelKey::new("other"), &[1; 16]));
    assert!(a.verify(&a.bytes()));
    assert!(a.verify_hex(&a.to_hex()));
    let mut wrong = a.bytes();
    wrong[15] ^= 1;
    assert!(!a.verify(&wrong));
    assert!(!a.verify(&a.bytes()[..15]));
    assert!(!a.verify_hex("zz"));
    assert!(!a.verify_hex(""));
    assert_eq!(format!("{a:?}"), "EntryProof(..)");
}

// go-wire-capture.md section 1: the server's exact 172 response bytes.
#[test]
fn response_bytes_match_capture() {
    let cfg = TunnelConfig {
        flow: Flow::Reverse,
        max: 1024,
        tls: TlsMode::Off,
        pool_type: PoolType::Tcp,
    };
    let want = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\nDate: Wed, 25 Nov 2026 07:31:23 GMT\r\nContent-Length: 45\r\n\r\n{\"flow\":\"-\",\"max\":1024,\"tls\":\"0\",\"type\":\"0\"}\n";
    let got = handshake_response(
        &HandshakeVerdict::Accept,
        &cfg,
        "Wed, 25 Nov 2026 07:31:23 GMT",
    );
    assert_eq!(got.len(), 172);
    assert_eq!(got, want.to_vec());
    assert_eq!(parse_handshake_response(want), Ok(Some(cfg)));
    // Partial input asks for more.
    assert_eq!(parse_handshake_response(&want[..100]), Ok(None));
    assert_eq!(parse_handshake_response(&want[..170]), Ok(None));
    let tls1 = TunnelConfig {
        tls: TlsMode::SelfSigned,
        ..cfg
    };
    assert_eq!(
        tls1.to_body(),
        "{\"flow\":\"-\",\"max\":1024,\"tls\":\"1\",\"type\":\"0\"}\n"
    );
}

// go-wire-capture.md section 1: error responses and the check order.
#[test]
fn error_responses_match_capture() {
    let cfg = TunnelConfig {
        flow: Flow::Reverse,
        max: 1024,
        tls: TlsMode::Off,
        pool_type: PoolType::Tcp,
    };
    let date = "X";
    let unauthorized = handshake_response(&HandshakeVerdict::Unauthorized, &cfg, date);
    assert_eq!(
        unauthorized,
        b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nDate: X\r\nContent-Length: 13\r\n\r\nUnauthorized\n".to_vec()
    );
    let nf = handshake_response(&HandshakeVerdict::NotFound, &cfg, date);
    assert!(nf.ends_with(b"Content-Length: 10\r\n\r\nNot Found\n"));
    let mna = handshake_response(&HandshakeVerdict::MethodNotAllowed, &cfg, date);
    assert!(mna.ends_with(b"Content-Length: 19\r\n\r\nMethod Not Allowed\n"));

    let token = auth_token(&k());
    let judge = |req: String| {
        judge_handshake_request(req.as_bytes(), &k())
            .unwrap()
            .unwrap()
            .0
    };
    assert_eq!(
        judge("GET / HTTP/1.1\r\nAuthorization: Bearer 0000\r\n\r\n".into()),
        HandshakeVerdict::Unauthorized
    );
    assert_eq!(
        judge(format!(
            "GET /x HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )),
        HandshakeVerdict::NotFound
    );
    assert_eq!(
        judge("POST /x HTTP/1.1\r\n\r\n".into()),
        HandshakeVerdict::MethodNotAllowed
    );
    assert_eq!(
        judge(format!(
            "GET / HTTP/1.1\r\nHost: whatever\r\nAuthorization: Bearer {token}\r\n\r\n"
        )),
        HandshakeVerdict::Accept
    );
    // Go checks r.URL.Path: a query string or an absolute-form target still means "/".
    for target in ["/?x=1", "http://10.0.0.1:10101/", "https://h/?a"] {
        assert_eq!(
            judge(format!(
                "GET {target} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"
            )),
            HandshakeVerdict::Accept,
            "{target}"
        );
    }
    for target in ["/x?", "http://h", "http://h/x", "//"] {
        assert_eq!(
            judge(format!(
                "GET {target} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"
            )),
            HandshakeVerdict::NotFound,
            "{target}"
        );
    }
    assert_eq!(
        judge_handshake_request(b"GET / HTTP/1.1\r\n", &k()),
        Ok(None)
    );
    assert!(judge_handshake_request(b"\x16\x03\x01\x00garbage\r\n\r\n", &k()).is_err());
}

#[test]
fn non_200_is_status_error() {
    let resp = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\nUnauthorized\n";
    assert_eq!(
        parse_handshake_response(resp),
        Err(HandshakeError::Status(401))
    );
    assert_eq!(
        HandshakeError::Status(401).to_string(),
        "tunnelHandshake: status 401"
    );
}

// go-wire-capture.md section 3: every control line of the capture, key "k".
#[test]
fn signals_match_capture() {
    let vectors: &[(&str, Signal)] = &[
        ("EEkKCB8CBAVJUUkbAgUMSRY=", Signal::Ping),
        ("EEkKCB8CBAVJUUkbBAUMSRY=", Signal::Pong),
        (
            "EEkKCB8CBAVJUUkfCBtJR0kZDgYEHw5JUUlaWVxFW0VbRVpRX1xYW11JR0kCD0lRSVxSU1pYCllTSRY=",
            Signal::Tcp {
                remote: remote("127.0.0.1:47306"),
                id: pool_id("79813a28"),
            },
        ),
        (
            "EEkKCB8CBAVJUUkeDxtJR0kZDgYEHw5JUUlaWVxFW0VbRVpRXlJSWlJJR0kCD0lRSVJfU15cCAhdSRY=",
            Signal::Udp {
                remote: remote("127.0.0.1:59919"),
                id: pool_id("94857cc6"),
            },
        ),
    ];
    for (line, signal) in vectors {
        let mut wire = line.as_bytes().to_vec();
        wire.push(b'\n');
        assert_eq!(signal.encode(&k()), wire, "{signal:?}");
        assert_eq!(Signal::decode(&wire, &k()).as_ref(), Ok(signal));
    }
}

// Vectors computed outside this code, with Python:
//   import base64,json; k=b"k"
//   base64.b64encode(bytes(c ^ k[i % len(k)] for i,c in enumerate(b'{"action":"flush"}')))
//   -> b'EEkKCB8CBAVJUUkNBx4YA0kW'
//   ... b'{"action":"verify","id":"00000000","fp":"sha256:AB"}' with key b"secret"
//   -> b'CEcCEREdHAtBSEcCFhcKFBxWX0cKFkdOUVVTQlVEQ1VTUElWFRVBSEcHGwRRR1NOMidBDw=='
#[test]
fn signals_match_python_vectors() {
    assert_eq!(
        Signal::Flush.encode(&k()),
        b"EEkKCB8CBAVJUUkNBx4YA0kW\n".to_vec()
    );
    let verify = Signal::Verify {
        id: pool_id("00000000"),
        fp: "sha256:AB".into(),
    };
    let key = TunnelKey::new("secret");
    assert_eq!(
        verify.to_json(),
        r#"{"action":"verify","id":"00000000","fp":"sha256:AB"}"#
    );
    let line = verify.encode(&key);
    assert_eq!(
        line,
        b"CEcCEREdHAtBSEcCFhcKFBxWX0cKFkdOUVVTQlVEQ1VTUElWFRVBSEcHGwRRR1NOMidBDw==\n".to_vec()
    );
    assert_eq!(Signal::decode(&line, &key), Ok(verify));
}

#[test]
fn decoding_is_tolerant_like_go() {
    let plain = br#"{"ACTION":"tcp","Remote":"1.2.3.4:5","id":"0a0b0c0d","extra":1}"#;
    assert_eq!(
        Signal::from_json(plain),
        Ok(Signal::Tcp {
            remote: remote("1.2.3.4:5"),
            id: pool_id("0a0b0c0d")
        })
    );
    assert_eq!(
        Signal::from_json(br#"{"action":"dance"}"#),
        Ok(Signal::Unknown {
            action: "dance".into()
        })
    );
    assert_eq!(
        Signal::from_json(br#"{"id":"x"}"#),
        Err(SignalError::NoAction)
    );
    assert!(Signal::decode(b"!!!!\n", &k()).is_err());
    assert!(Signal::decode(b"\n", &k()).is_err());
}

#[test]
fn go_escapes_html_characters() {
    let s = Signal::Tcp {
        remote: remote("<a&b>\"\n"),
        id: pool_id("0a0b0c0d"),
    };
    assert_eq!(
        s.to_json(),
        r#"{"action":"tcp","remote":"\u003ca\u0026b\u003e\"\n","id":"0a0b0c0d"}"#
    );
}

#[test]
fn remote_addresses_are_typed_and_other_text_is_kept() {
    assert_eq!(
        remote("127.0.0.1:5"),
        RemoteAddr::Socket(SocketAddr::from(([127, 0, 0, 1], 5)))
    );
    assert_eq!(remote("[::1]:5").to_string(), "[::1]:5");
    assert_eq!(remote("[::1]:5").socket_addr(), "[::1]:5".parse().ok());
    // Go names an IPv6 zone by interface; that is no SocketAddr, but it still shows.
    let zoned = remote("[fe80::1%eth0]:5");
    assert_eq!(zoned, RemoteAddr::Other("[fe80::1%eth0]:5".into()));
    assert_eq!(zoned.socket_addr(), None);
    assert_eq!(zoned.to_string(), "[fe80::1%eth0]:5");
    // A missing remote is empty text, and stays out of the JSON (omitempty).
    let plain = br#"{"action":"udp","id":"0a0b0c0d"}"#;
    let s = Signal::from_json(plain).unwrap();
    assert_eq!(
        s,
        Signal::Udp {
            remote: RemoteAddr::Other(String::new()),
            id: pool_id("0a0b0c0d")
        }
    );
    assert_eq!(s.to_json().as_bytes(), plain);
    // What a peer may write differently (a padded address, an upper-case id) decodes
    // to the same value as our form, so a decoded signal re-encodes to one that
    // decodes to it again.
    let odd = br#"{"action":"tcp","remote":"[::0001]:05","id":"0A0B0C0D"}"#;
    let ours = br#"{"action":"tcp","remote":"[::1]:5","id":"0a0b0c0d"}"#;
    let s = Signal::from_json(odd).unwrap();
    assert_eq!(s.to_json().as_bytes(), ours);
    assert_eq!(Signal::from_json(ours), Ok(s));
}

#[test]
fn a_pool_id_that_cannot_be_one_is_refused_naming_the_signal() {
    let cases = [
        (
            r#"{"action":"tcp","remote":"1.2.3.4:5","id":"xyz"}"#,
            PoolSignal::Tcp,
            "xyz",
        ),
        (
            r#"{"action":"udp","remote":"1.2.3.4:5"}"#,
            PoolSignal::Udp,
            "",
        ),
        (
            r#"{"action":"verify","id":"0a0b0c0d0e","fp":"x"}"#,
            PoolSignal::Verify,
            "0a0b0c0d0e",
        ),
    ];
    for (json, action, id) in cases {
        let want = SignalError::PoolId {
            action,
            id: id.to_string(),
        };
        assert_eq!(Signal::from_json(json.as_bytes()), Err(want), "{json}");
    }
    let err = SignalError::PoolId {
        action: PoolSignal::Tcp,
        id: "xyz".into(),
    };
    assert_eq!(
        err.to_string(),
        "tcp signal names pool id \"xyz\": expected 8 hex digits"
    );
}

// Computed with Go's own encoder (go1.27.3, the toolchain the reference binary was built
// with), using the reference's Signal struct and its encode(): json.Marshal, XOR with the
// key bytes, base64.StdEncoding. The program, run with `go run`:
//   type Signal struct {
//     ActionType string `json:"action"`; RemoteAddr string `json:"remote,omitempty"`
//     PoolConnID string `json:"id,omitempty"`; Fingerprint string `json:"fp,omitempty"` }
//   data, _ := json.Marshal(s); for i := range data { data[i] ^= key[i%len(key)] }
//   fmt.Println(string(jsonOf(s)), base64.StdEncoding.EncodeToString(data))
// Re-run with go1.27.3 when pool ids became typed: the escape vector now carries an id,
// and a verify with an empty fp shows `omitempty`.
#[test]
fn signals_match_go_encoder_vectors() {
    let fp = "sha256:BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD";
    let vectors: Vec<(&str, Signal, &str, &str)> = vec![
        (
            // A multi-byte UTF-8 key: XOR runs over its bytes.
            "ключ-🔑",
            Signal::Tcp {
                remote: remote("[::1]:50000"),
                id: pool_id("0a0b0c0d"),
            },
            r#"{"action":"tcp","remote":"[::1]:50000","id":"0a0b0c0d"}"#,
            "q5ix2KXnvukPyr3g8qCY/Jmj67zoWZW9rrOLgOqKjLTktx3Ar7a98tO0meus4eYdkq/3obSYrQ==",
        ),
        (
            // The derived key of port 10101 and a full-length fingerprint.
            "e68be2b4",
            Signal::Verify {
                id: pool_id("4f3c2b1a"),
                fp: fp.into(),
            },
            r#"{"action":"verify","id":"4f3c2b1a","fp":"sha256:BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"}"#,
            "HhRZARFbDVpHDBoUAEALUhwUFEAMVkAORwJeUQYAAAUEFBRAA0JADkdFUANXB1QOJ3cCVV0IUwJfdH5YXXRYBFQMeyRfdyMOUQcCVlQIVgRfcn1YUHZYdSAMClBfAFEOJwYCUlYIVAVfdwtYXARYBVIMDyNfCyEOJwICU1UIJHJfAAlYIwBYBFUMCVdfcyYWGA==",
        ),
        (
            // Every escape Go's encoder makes.
            "k",
            Signal::Udp {
                remote: remote("a\u{8}\u{c}\u{0}\u{1f}<>&\u{2028}\u{2029}\"\\\n\r\té"),
                id: pool_id("0a0b0c0d"),
            },
            r#"{"action":"udp","remote":"a\b\f\u0000\u001f\u003c\u003e\u0026\u2028\u2029\"\\\n\r\té","id":"0a0b0c0d"}"#,
            "EEkKCB8CBAVJUUkeDxtJR0kZDgYEHw5JUUkKNwk3DTceW1tbWzceW1taDTceW1tYCDceW1tYDjceW1tZXTceWVtZUzceWVtZUjdJNzc3BTcZNx+owklHSQIPSVFJWwpbCVsIWw9JFg==",
        ),
        (
            // An empty fingerprint left out.
            "k",
            Signal::Verify {
                id: PoolId::CONTROL,
                fp: String::new(),
            },
            r#"{"action":"verify","id":"00000000"}"#,
            "EEkKCB8CBAVJUUkdDhkCDRJJR0kCD0lRSVtbW1tbW1tbSRY=",
        ),
        (
            // A key longer than the message.
            "a-much-longer-key-than-the-message-itself-0123456789",
            Signal::Flush,
            r#"{"action":"flush"}"#,
            "Gg8MFhcBQgJNVEUDHlgYDVtQ",
        ),
    ];
    for (key, signal, json, line) in vectors {
        let key = TunnelKey::new(key);
        assert_eq!(signal.to_json(), json);
        let mut wire = line.as_bytes().to_vec();
        wire.push(b'\n');
        assert_eq!(signal.encode(&key), wire, "{signal:?}");
        assert_eq!(Signal::decode(&wire, &key), Ok(signal));
    }
    // Go leaves an empty id out; no pool entry has that id, so the line is refused.
    let mut no_id = b"EEkKCB8CBAVJUUkeDxtJR0kZDgYEHw5JUUkKNwk3DTceW1tbWzceW1taDTceW1tYCDceW1tYDjceW1tZXTceWVtZUzceWVtZUjdJNzc3BTcZNx+owkkW".to_vec();
    no_id.push(b'\n');
    let want = SignalError::PoolId {
        action: PoolSignal::Udp,
        id: String::new(),
    };
    assert_eq!(Signal::decode(&no_id, &k()), Err(want));
}

// Python: hmac.new("e68be2b4".encode(), b"", hashlib.sha256).hexdigest() and the same
// for "ключ-🔑".encode() (UTF-8 bytes).
#[test]
fn tokens_of_derived_and_unicode_keys() {
    assert_eq!(
        auth_token(&TunnelKey::derived_from_port("10101")),
        "8940572756af096447802f92b4c843ac61de93b80af9d37a85ed994508656d7e"
    );
    assert_eq!(
        auth_token(&TunnelKey::new("ключ-🔑")),
        "524dd22dd3f927e58fabdf46842d702b72e9a0bfc8af400ae31eee7c7246b10f"
    );
}

// Python: json.dumps({"flow":"+","max":1,"tls":"2","type":"3"}, separators=(",",":"))
// -> {"flow":"+","max":1,"tls":"2","type":"3"} (Go's encoder adds the trailing newline).
#[test]
fn forward_flow_body() {
    let cfg = TunnelConfig {
        flow: Flow::Forward,
        max: 1,
        tls: TlsMode::Files,
        pool_type: PoolType::Http2,
    };
    assert_eq!(
        cfg.to_body(),
        "{\"flow\":\"+\",\"max\":1,\"tls\":\"2\",\"type\":\"3\"}\n"
    );
    assert_eq!(TunnelConfig::from_body(cfg.to_body().as_bytes()), Ok(cfg));
    assert_eq!(cfg.log_form(), "FLOW=+|MAX=1|TLS=2|TYPE=3");
}

#[test]
fn pool_ids() {
    assert_eq!(PoolId([0x79, 0x81, 0x3a, 0x28]).to_hex(), "79813a28");
    assert_eq!(PoolId::CONTROL.to_hex(), "00000000");
    assert_eq!(
        PoolId::from_hex("94857cc6"),
        Some(PoolId([0x94, 0x85, 0x7c, 0xc6]))
    );
    assert_eq!(PoolId::from_hex("94857cc"), None);
    assert_eq!(PoolId::from_hex("zz857cc6"), None);
}

// Python: "sha256:" + ":".join("%02X" % b for b in hashlib.sha256(b"abc").digest())
#[test]
fn fingerprint_format() {
    let fp = cert_fingerprint(b"abc");
    assert_eq!(
        fp,
        "sha256:BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
    );
    assert_eq!(fp.len(), 7 + 95);
}
