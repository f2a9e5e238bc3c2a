//! Unit tests of `ws`.

use super::*;
use crate::pool::Pool;
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_util::sync::CancellationToken;

fn ctx(port: u16, tls: TlsMode) -> Context {
    crate::transport::test_context(port, tls, None, 8)
}

/// Our server on a loopback port, admitting 127.0.0.1 into `pool`.
async fn serve() -> (u16, Arc<Pool>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let pool = Arc::new(Pool::new(8));
    let cancel = CancellationToken::new();
    let server = Arc::new(WsServer::new(ctx(port, TlsMode::Off)));
    let edge = SessionEdge::new(
        pool.clone(),
        "127.0.0.1".parse().expect("ip"),
        None,
        cancel.clone(),
    );
    tokio::spawn(server.serve(Arc::new(listener), edge));
    (port, pool, cancel)
}

/// A plain WebSocket client as the reference's is: no half-close header.
async fn go_style_client(port: u16) -> (WebSocketStream<TcpStream>, PoolId) {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!("ws://127.0.0.1:{port}/")
        .into_client_request()
        .expect("request");
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("upgrade");
    assert!(response.headers().get(HALF_CLOSE_HEADER).is_none());
    let id = match ws.next().await {
        Some(Ok(Message::Binary(b))) if b.len() == 4 => PoolId([b[0], b[1], b[2], b[3]]),
        other => panic!("no id message: {other:?}"),
    };
    (ws, id)
}

async fn take(pool: &Pool, id: PoolId) -> Entry {
    pool.outgoing_get(id, Duration::from_secs(5))
        .await
        .expect("entry in the pool")
}

#[tokio::test]
async fn go_style_peer_message_boundaries_empty_messages_and_close_frames() {
    let (port, pool, cancel) = serve().await;
    let (mut peer, id) = go_style_client(port).await;
    assert_eq!(id, PoolId::CONTROL);
    peer.send(Message::Binary(Bytes::new()))
        .await
        .expect("send");
    peer.send(Message::Binary(Bytes::from_static(b"abc")))
        .await
        .expect("send");
    peer.send(Message::Binary(Bytes::from_static(b"defg")))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut entry = take(&pool, id).await;
    assert!(!entry.peer_closed(), "pending messages mean alive");
    // One message per read, the empty one skipped.
    let mut buf = [0u8; 64];
    let n = entry.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"abc");
    let n = entry.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"defg");
    // One write is one message.
    entry.write_all(b"xyz").await.expect("write");
    entry.flush().await.expect("flush");
    match peer.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"xyz"),
        other => panic!("expected one binary message: {other:?}"),
    }
    // Without the half-close header, shutdown is a close frame 1000 ...
    entry.shutdown().await.expect("shutdown");
    match peer.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected a close frame 1000: {other:?}"),
    }
    // ... and the peer's answering close reads as EOF.
    let _ = peer.flush().await;
    let n = tokio::time::timeout(Duration::from_secs(5), entry.read(&mut buf))
        .await
        .expect("EOF in time")
        .expect("EOF, not an error");
    assert_eq!(n, 0);
    cancel.cancel();
}

#[tokio::test]
async fn text_messages_and_abnormal_closes_are_errors() {
    let (port, pool, cancel) = serve().await;
    let (mut peer, id) = go_style_client(port).await;
    let mut entry = take(&pool, id).await;
    peer.send(Message::Text("hello".into()))
        .await
        .expect("send");
    let mut buf = [0u8; 16];
    let err = entry.read(&mut buf).await.expect_err("text is an error");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    match peer.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Unsupported),
        other => panic!("expected a close frame 1003: {other:?}"),
    }

    let (mut peer, id) = go_style_client(port).await;
    let mut entry = take(&pool, id).await;
    peer.close(Some(CloseFrame {
        code: CloseCode::Error,
        reason: "boom".into(),
    }))
    .await
    .expect("close");
    let err = entry.read(&mut buf).await.expect_err("1011 is an error");
    assert!(err.to_string().contains("1011 (boom)"), "{err}");

    // An idle entry whose peer said goodbye reads as closed.
    let (mut peer, id) = go_style_client(port).await;
    peer.close(None).await.expect("close");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(take(&pool, id).await.peer_closed());
    cancel.cancel();
}

#[tokio::test]
async fn our_peers_half_close_and_keep_message_boundaries() {
    let (port, pool, cancel) = serve().await;
    let client = WsClient::new(ctx(port, TlsMode::Off)).expect("client");
    let (_control, _) = client.open().await.expect("control entry");
    // Data entries are admitted only while a session holds the control channel.
    let _control_taken = take(&pool, PoolId::CONTROL).await;
    let (id, mut c) = client.open().await.expect("entry");
    let mut s = take(&pool, id).await;
    c.write_all(b"one").await.expect("write");
    c.write_all(b"two!!").await.expect("write");
    c.flush().await.expect("flush");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"one");
    let n = s.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"two!!");
    // The client is done sending; the server still answers.
    c.shutdown().await.expect("shutdown");
    assert_eq!(s.read(&mut buf).await.expect("EOF"), 0);
    s.write_all(b"late answer")
        .await
        .expect("write after peer EOF");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.expect("read to EOF");
    assert_eq!(rest, b"late answer");
    cancel.cancel();
}

/// A scripted server: the handshake, then `script` on the upgraded connection.
async fn fake_server(script: Vec<Message>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                for m in script {
                    let _ = ws.send(m).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_short_text_or_replayed_id_is_refused_clearly() {
    let port = fake_server(vec![
        Message::Binary(Bytes::from_static(&[1, 2, 3])),
        Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })),
    ])
    .await;
    let client = WsClient::new(ctx(port, TlsMode::Off)).expect("client");
    let err = client.open().await.err().expect("3 bytes are no id");
    assert!(
        format!("{err:#}").contains("reading the pool id"),
        "{err:#}"
    );

    let port = fake_server(vec![Message::Text("00000000".into())]).await;
    let client = WsClient::new(ctx(port, TlsMode::Off)).expect("client");
    let err = client.open().await.err().expect("a text id");
    assert!(format!("{err:#}").contains("text message"), "{err:#}");

    // A server that hands out 00000000 twice: the pool takes the first only.
    let port = fake_server(vec![Message::Binary(Bytes::from_static(&[0; 4]))]).await;
    let client = WsClient::new(ctx(port, TlsMode::Off)).expect("client");
    let pool = Pool::new(4);
    let (id1, e1) = client.open().await.expect("first");
    let (id2, e2) = client.open().await.expect("second");
    assert_eq!((id1, id2), (PoolId::CONTROL, PoolId::CONTROL));
    assert!(pool.put(id1, e1).is_ok());
    assert_eq!(
        pool.put(id2, e2).err().map(|e| e.0),
        Some(crate::pool::PutError::Duplicate)
    );
}

#[tokio::test]
async fn refused_upgrade_names_the_status() {
    // max 8 idle entries: fill them, the next open gets 503 `pool full`.
    let (port, pool, cancel) = serve().await;
    let client = WsClient::new(ctx(port, TlsMode::Off)).expect("client");
    // Data entries are admitted only while a session holds the control channel.
    let control = client.open().await.expect("control entry");
    let _control_taken = take(&pool, PoolId::CONTROL).await;
    let mut kept = vec![control];
    let err = loop {
        match client.open().await {
            Ok(e) => kept.push(e),
            Err(e) => break e,
        }
        assert!(kept.len() <= 9, "never refused");
    };
    assert!(
        format!("{err:#}").contains("status 503 pool full"),
        "{err:#}"
    );
    cancel.cancel();
}
