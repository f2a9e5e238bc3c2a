//! Our client against a scripted server that speaks the reference's wire protocol byte by
//! byte (built from `nodepass_proto::wire`, whose vectors come from the Go capture in
//! shared/spec/go-wire-capture.md): the exact handshake request, raw 4-byte pool ids with
//! `00000000` as the control channel, ping/pong, a `tcp` and a `udp` signal carried on the
//! named entries, and the flush rule (pool errors > idle / 2 -> a `flush` signal).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodepass_proto::url::{PoolType, TlsMode, TunnelKey};
use nodepass_proto::wire::{
    handshake_request, handshake_request_with_proof, handshake_response, judge_handshake_request,
    Flow, HandshakeVerdict, PoolId, RemoteAddr, Signal, TunnelConfig,
};
use nodepass_testkit::*;

const UP: Duration = Duration::from_secs(20);

/// Reads one control line and decodes it.
fn read_signal(r: &mut BufReader<TcpStream>, key: &TunnelKey) -> Signal {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).expect("control line");
    assert!(line.ends_with(b"\n"), "control closed: {line:?}");
    Signal::decode(&line, key).expect("a valid signal line")
}

/// Reads signals until one satisfies `pred` (answering pings on the way).
fn wait_signal(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    key: &TunnelKey,
    pred: impl Fn(&Signal) -> bool,
) -> Signal {
    let deadline = Instant::now() + UP;
    loop {
        assert!(Instant::now() < deadline, "signal not seen in time");
        let s = read_signal(r, key);
        if pred(&s) {
            return s;
        }
        if s == Signal::Ping {
            w.write_all(&Signal::Pong.encode(key)).expect("pong");
        }
    }
}

#[test]
fn our_client_speaks_the_reference_wire_protocol() {
    let echo = Echo::start();
    let key = TunnelKey::new("k");
    let listener = nodepass_testkit::net::listen();
    let port = listener.local_addr().expect("addr").port();
    let client = Proc::worker(
        "client",
        &format!("client://k@127.0.0.1:{port}/{}?mode=2&min=4", echo.addr()),
        &[("NP_POOL_GET_TIMEOUT", "300ms")],
    );

    // 1. The handshake: exactly the Go client's request (Host = sni default `none`), plus
    //    the one header that asks a server of ours for entry proofs (a Go server ignores it
    //    and, like this one, answers without a nonce, so no proof is sent below).
    let (mut hs, _) = listener.accept().expect("handshake connection");
    hs.set_read_timeout(Some(UP)).expect("timeout");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = hs.read(&mut buf).expect("request");
        assert!(n > 0, "client closed during the handshake");
        head.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        head,
        handshake_request_with_proof("none", &key),
        "request bytes"
    );
    let go = handshake_request("none", &key);
    assert_eq!(
        head[..go.len() - 2],
        go[..go.len() - 2],
        "the Go client's bytes come first"
    );
    let (verdict, _) = judge_handshake_request(&head, &key)
        .expect("parses")
        .expect("complete");
    assert_eq!(verdict, HandshakeVerdict::Accept);
    let config = TunnelConfig {
        flow: Flow::Reverse,
        max: 16,
        tls: TlsMode::Off,
        pool_type: PoolType::Tcp,
    };
    hs.write_all(&handshake_response(
        &verdict,
        &config,
        "Wed, 25 Nov 2026 07:31:23 GMT",
    ))
    .expect("response");
    drop(hs);

    // 2. Pool connections: we send the raw ids, the first one is the control channel.
    let pool: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    {
        let pool = pool.clone();
        std::thread::spawn(move || {
            for (i, c) in listener.incoming().enumerate() {
                let Ok(mut c) = c else { continue };
                let id = if i == 0 {
                    [0u8; 4]
                } else {
                    [0xa0, 0, 0, i as u8]
                };
                if c.write_all(&id).is_ok() {
                    pool.lock().expect("pool").push(c);
                }
            }
        });
    }
    let deadline = Instant::now() + UP;
    while pool.lock().expect("pool").len() < 4 {
        assert!(Instant::now() < deadline, "{}", client.dump());
        std::thread::sleep(Duration::from_millis(10));
    }
    let control = pool.lock().expect("pool")[0].try_clone().expect("clone");
    control.set_read_timeout(Some(UP)).expect("timeout");
    let mut w = control.try_clone().expect("clone");
    let mut r = BufReader::new(control);

    // 3. The client pings at once; our pong yields a stats report.
    let first = read_signal(&mut r, &key);
    assert_eq!(first, Signal::Ping);
    w.write_all(&Signal::Pong.encode(&key)).expect("pong");
    client.wait_line("stats after pong", UP, |l| l.contains("\"kind\":\"stats\""));
    w.write_all(&Signal::Ping.encode(&key)).expect("ping");
    wait_signal(&mut r, &mut w, &key, |s| *s == Signal::Pong);

    // 4. A `tcp` signal naming entry 1: the client dials the echo target and relays.
    let mut entry = pool.lock().expect("pool")[1].try_clone().expect("clone");
    entry.set_read_timeout(Some(UP)).expect("timeout");
    w.write_all(
        &Signal::Tcp {
            remote: RemoteAddr::parse("127.0.0.1:5555"),
            id: PoolId::from_hex("a0000001").expect("a pool id"),
        }
        .encode(&key),
    )
    .expect("tcp signal");
    entry.write_all(b"hello-nodepass\n").expect("data");
    let mut back = [0u8; 15];
    entry.read_exact(&mut back).expect("echo over the entry");
    assert_eq!(&back, b"hello-nodepass\n");

    // 5. A `udp` signal naming entry 2: raw datagram bytes, no framing.
    let mut uentry = pool.lock().expect("pool")[2].try_clone().expect("clone");
    uentry.set_read_timeout(Some(UP)).expect("timeout");
    w.write_all(
        &Signal::Udp {
            remote: RemoteAddr::parse("127.0.0.1:5556"),
            id: PoolId::from_hex("a0000002").expect("a pool id"),
        }
        .encode(&key),
    )
    .expect("udp signal");
    uentry.write_all(b"udp-hello").expect("datagram");
    let mut dgram = [0u8; 9];
    uentry.read_exact(&mut dgram).expect("datagram back");
    assert_eq!(&dgram, b"udp-hello");

    // 6. Signals naming entries that never come are pool errors; more errors than half the
    //    idle entries make the client flush and tell us so. Half of them name an id no
    //    entry can have (not hex), which counts the same.
    // Python: base64.b64encode(bytes(c ^ ord("k") for c in
    //   b'{"action":"tcp","remote":"127.0.0.1:5557","id":"not-hex!"}'))
    let not_hex =
        b"EEkKCB8CBAVJUUkfCBtJR0kZDgYEHw5JUUlaWVxFW0VbRVpRXl5eXElHSQIPSVFJBQQfRgMOE0pJFg==\n";
    for _ in 0..4 {
        w.write_all(
            &Signal::Tcp {
                remote: RemoteAddr::parse("127.0.0.1:5557"),
                id: PoolId::from_hex("deadbeef").expect("a pool id"),
            }
            .encode(&key),
        )
        .expect("bogus signal");
        w.write_all(not_hex).expect("signal with a bad id");
    }
    wait_signal(&mut r, &mut w, &key, |s| *s == Signal::Flush);
    client.wait_line("errors logged", UP, |l| {
        l.contains("OutgoingGet: pool connection not found")
    });
    client.wait_line("bad ids logged", UP, |l| {
        l.contains("invalid pool id") && l.contains("not-hex!")
    });
}
