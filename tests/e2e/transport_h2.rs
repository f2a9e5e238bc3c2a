//! Bad input on the HTTP/2 pool (type 3), against the built binary on loopback: plain TCP
//! and garbage on the pool port, TLS without ALPN `h2` or with another protocol, a wrong
//! path or method, streams from another address (127.0.0.2), the stream limit, ids that
//! must not repeat (the control id `00000000` is given once per session), and a peer
//! killed mid-stream (SIGKILL) that the other side recovers from by itself.
//!
//! The test itself plays the client for the transport checks: it does the handshake over
//! HTTP/1.1, then speaks HTTP/2 over TLS like a pool client would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use nodepass_proto::url::{TlsMode, TunnelKey};
use nodepass_proto::wire::{handshake_request, parse_handshake_response};
use nodepass_testkit::*;
use nodepass_worker::transport::tls::ClientTls;

const UP: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(10);

/// Our server with the HTTP/2 pool, after a completed handshake from 127.0.0.1.
fn server_after_handshake(q: &str) -> (Proc, u16) {
    let (tunnel, user) = (free_port(), free_port());
    let srv = Proc::worker(
        "server",
        &format!("server://right@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&type=3&log=debug{q}"),
        // The test does not answer pings on the control channel: give it time.
        &[("NP_REPORT_INTERVAL", "5s")],
    );
    srv.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let mut s = TcpStream::connect(("127.0.0.1", tunnel)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(&handshake_request("none", &TunnelKey::new("right")))
        .expect("write handshake");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let cfg = parse_handshake_response(&answer)
        .expect("handshake answer parses")
        .expect("complete handshake answer");
    // Type 3 always runs TLS: tls 0 in the URL is announced as 1.
    assert_eq!(cfg.tls, TlsMode::SelfSigned);
    (srv, tunnel)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// TLS to the pool port from `src`, offering `alpn`.
async fn tls_from(src: &str, tunnel: u16, alpn: &[&[u8]]) -> std::io::Result<Box<dyn Io>> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{src}:0").parse().expect("source address"))?;
    let addr: SocketAddr = format!("127.0.0.1:{tunnel}").parse().expect("address");
    let tcp = sock.connect(addr).await?;
    let tls = ClientTls::with_alpn(TlsMode::SelfSigned, "", alpn)
        .expect("client TLS")
        .expect("tls 1 config");
    let stream = tls.connector.connect(tls.server_name.clone(), tcp).await?;
    Ok(Box::new(stream))
}

/// The client TLS stream, boxed (its type belongs to tokio-rustls).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// An HTTP/2 connection to the pool port from `src`.
async fn h2_from(src: &str, tunnel: u16) -> h2::client::SendRequest<Bytes> {
    let tls = tls_from(src, tunnel, &[b"h2"])
        .await
        .expect("TLS with ALPN h2");
    let (send, conn) = h2::client::handshake(tls).await.expect("HTTP/2 preface");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One request as a pool client makes it (opening byte included): the status and the
/// first `want` body bytes (or all of a short refusal body).
async fn request(
    h2c: &mut h2::client::SendRequest<Bytes>,
    method: http::Method,
    path: &str,
    want: usize,
) -> (u16, Vec<u8>, h2::SendStream<Bytes>, h2::RecvStream) {
    try_request(h2c, method, path, want)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`request`] that reports a failure instead of panicking.
async fn try_request(
    h2c: &mut h2::client::SendRequest<Bytes>,
    method: http::Method,
    path: &str,
    want: usize,
) -> Result<(u16, Vec<u8>, h2::SendStream<Bytes>, h2::RecvStream), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://none{path}"))
        .body(())
        .expect("request");
    let ready = h2c.clone().ready().await;
    *h2c = ready.map_err(|e| format!("connection not ready: {e}"))?;
    let (resp, mut send) = h2c
        .send_request(req, false)
        .map_err(|e| format!("send request: {e}"))?;
    send.send_data(Bytes::from_static(&[0]), false)
        .map_err(|e| format!("opening byte: {e}"))?;
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(WAIT, body.data()).await {
            Ok(Some(Ok(d))) => {
                let _ = body.flow_control().release_capacity(d.len());
                got.extend_from_slice(&d);
            }
            _ => break,
        }
    }
    Ok((status, got, send, body))
}

#[test]
fn plain_tcp_garbage_and_wrong_alpn_are_dropped_and_the_port_keeps_working() {
    let (srv, tunnel) = server_after_handshake("");
    // Plain TCP bytes: the TLS handshake fails and the connection is closed.
    let mut s = TcpStream::connect(("127.0.0.1", tunnel)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"POST /stream HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage")
        .expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        !out.windows(4).any(|w| w == b"HTTP"),
        "no HTTP answer on the pool port: {out:?}"
    );
    srv.wait_line("the TLS failure", WAIT, |l| {
        l.contains("HTTP/2 pool: connection from") && l.contains("TLS handshake failed")
    });
    runtime().block_on(async {
        use tokio::io::AsyncReadExt;
        // TLS with another protocol only: no common ALPN, the handshake fails.
        assert!(
            tls_from("127.0.0.1", tunnel, &[b"http/1.1"]).await.is_err(),
            "TLS offering only http/1.1 must fail"
        );
        // TLS without ALPN: accepted by TLS, then closed without a byte.
        let mut plain = tls_from("127.0.0.1", tunnel, &[])
            .await
            .expect("TLS without ALPN");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, plain.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "no bytes for a connection without ALPN h2");
        // A proper client still gets the control channel id.
        let mut h2c = h2_from("127.0.0.1", tunnel).await;
        let (status, id, _s, _r) = request(&mut h2c, http::Method::POST, "/stream", 4).await;
        assert_eq!((status, id), (200, vec![0, 0, 0, 0]));
    });
    srv.wait_line("the ALPN refusal", WAIT, |l| {
        l.contains("did not negotiate ALPN h2")
    });
    assert_eq!(srv.count("panicked"), 0, "{}", srv.dump());
}

#[test]
fn wrong_path_method_foreign_address_and_ids() {
    let (srv, tunnel) = server_after_handshake("");
    runtime().block_on(async {
        let mut h2c = h2_from("127.0.0.1", tunnel).await;
        let (status, body, _s, _r) = request(&mut h2c, http::Method::GET, "/stream", 64).await;
        assert_eq!((status, body.as_slice()), (404, &b"not found\n"[..]));
        let (status, body, _s, _r) = request(&mut h2c, http::Method::POST, "/other", 64).await;
        assert_eq!((status, body.as_slice()), (404, &b"not found\n"[..]));
        // Another address than the handshaking client: 403 per stream.
        let mut foreign = h2_from("127.0.0.2", tunnel).await;
        let (status, body, _s, _r) = request(&mut foreign, http::Method::POST, "/stream", 64).await;
        assert_eq!((status, body.as_slice()), (403, &b"unauthorized\n"[..]));
        // Refusals give out no id: the first real entry is the control channel.
        let (status, first, _s1, _r1) = request(&mut h2c, http::Method::POST, "/stream", 4).await;
        assert_eq!((status, first), (200, vec![0, 0, 0, 0]));
        let mut ids = std::collections::HashSet::new();
        let mut keep = Vec::new();
        for _ in 0..5 {
            let (status, id, s, r) = request(&mut h2c, http::Method::POST, "/stream", 4).await;
            assert_eq!(status, 200);
            assert_eq!(id.len(), 4);
            assert_ne!(id, vec![0, 0, 0, 0], "the control id is given once");
            assert!(ids.insert(id), "ids do not repeat");
            keep.push((s, r));
        }
        // A second connection (a restarted client) does not get the control id again.
        let mut again = h2_from("127.0.0.1", tunnel).await;
        let (status, id, _s, _r) = request(&mut again, http::Method::POST, "/stream", 4).await;
        assert_eq!(status, 200);
        assert_ne!(
            id,
            vec![0, 0, 0, 0],
            "no second control channel in a session"
        );
    });
    for needle in ["refused (404)", "refused (403)"] {
        assert!(srv.count(needle) >= 1, "{needle}\n{}", srv.dump());
    }
}

/// The connection's stream limit is the pool's `max` (idle entries) plus `slot` (entries in
/// use by user connections): the reference's MaxConcurrentStreams of `max` alone leaves no
/// stream for the pool once about `max` user connections are held
/// (tests/tunnel_e2e.rs `more_held_connections_than_max`).
#[test]
fn the_stream_limit_is_the_pool_max_plus_the_slots() {
    let (srv, tunnel) = server_after_handshake("&max=2&slot=3");
    runtime().block_on(async {
        let mut h2c = h2_from("127.0.0.1", tunnel).await;
        // The first answer means the server's SETTINGS have arrived.
        let (status, _, _s, _r) = request(&mut h2c, http::Method::POST, "/stream", 4).await;
        assert_eq!(status, 200);
        assert_eq!(h2c.current_max_send_streams(), 5, "{}", srv.dump());
    });
}

#[test]
fn a_killed_peer_is_survived_by_the_other_side() {
    let echo = Echo::start();
    let (tunnel, user) = (free_port(), free_port());
    let server_url =
        format!("server://right@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&type=3&log=debug");
    let fast = [("NP_REPORT_INTERVAL", "1s")];
    let mut srv = Proc::worker("server", &server_url, &fast);
    let client_url = format!(
        "client://right@127.0.0.1:{tunnel}/{}?mode=2&log=debug",
        echo.addr()
    );
    let mut client = Proc::worker("client", &client_url, &fast);
    let user_addr = format!("127.0.0.1:{user}");
    wait_tunnel(&user_addr, UP, &[&srv, &client]);
    let mut s = TcpStream::connect(&user_addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(&pattern(200_000, 7)).expect("write");
    let mut first = vec![0u8; 200_000];
    s.read_exact(&mut first).expect("echo before the kill");
    srv.kill(); // SIGKILL: no GOAWAY, no END_STREAM
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    client.wait_line("the client noticing", UP, |l| l.contains("Client error"));
    let srv2 = Proc::worker("server 2", &server_url, &fast);
    wait_tunnel(&user_addr, Duration::from_secs(40), &[&srv2, &client]);
    let back = echo_once(&user_addr, &pattern(300_000, 8), Duration::from_secs(15))
        .expect("echo after the restart");
    assert!(back == pattern(300_000, 8));
    assert_eq!(client.count("panicked"), 0, "{}", client.dump());

    // Now the other way round: the client dies, the server restarts its session and
    // serves a new client.
    client.kill();
    srv2.wait_line("the server noticing", UP, |l| l.contains("Server restart"));
    let client2 = Proc::worker("client 2", &client_url, &fast);
    wait_tunnel(&user_addr, Duration::from_secs(40), &[&srv2, &client2]);
    assert_eq!(srv2.count("panicked"), 0, "{}", srv2.dump());
}
