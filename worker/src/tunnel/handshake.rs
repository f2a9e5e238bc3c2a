//! The HTTP handshake that opens a dual-end tunnel (REFERENCE.md 2), both sides. The bytes
//! themselves come from `nodepass_proto::wire`; this file only moves them.
//!
//! Server: serves plain HTTP on the tunnel port until one request is accepted. Each
//! connection is handled on its own task, so a client that connects and never speaks, or
//! speaks garbage, delays nobody; it is dropped after NP_HANDSHAKE_TIMEOUT. At most
//! [`MAX_PENDING`] connections are handled at once (more are closed at once), and refusals
//! are logged at most once per [`REFUSAL_LOG_INTERVAL`] with a count of those not logged,
//! so a scanner cannot flood the log (and, under a master, its log events). Rejected
//! requests get the reference's 405/404/401 answers, unparsable ones a 400, and the wait
//! goes on. The winner's IP is the only one allowed to open pool connections.
//!
//! Client: one `GET /` with the bearer token (over verified TLS when the tunnel port is
//! 443, for a TLS-terminating proxy in front), then the JSON config from the 200 answer,
//! all within NP_HANDSHAKE_TIMEOUT: a server that accepts and stays silent is an error,
//! and the role's restart loop tries again.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use nodepass_proto::url::{HostPort, TunnelKey};
use nodepass_proto::wire::{
    handshake_request, handshake_response, judge_handshake_request, parse_handshake_response,
    HandshakeVerdict, TunnelConfig, MAX_HANDSHAKE_HEAD,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::transport::tls::ClientTls;

/// Connections on the tunnel port handled at once before a handshake is accepted.
pub const MAX_PENDING: usize = 64;

/// At most one refusal WARN line per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request";

/// Rate limit of the refusal WARN lines, shared by the connection tasks.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// Logs a refusal, or counts it when one was logged less than
    /// [`REFUSAL_LOG_INTERVAL`] ago.
    fn refused(log: &Mutex<RefusalLog>, what: std::fmt::Arguments<'_>) {
        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if l.last
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            l.suppressed += 1;
            return;
        }
        l.last = Some(now);
        match std::mem::take(&mut l.suppressed) {
            0 => tracing::warn!("tunnelHandshake: {what}"),
            n => tracing::warn!("tunnelHandshake: {what} ({n} more refusals not logged)"),
        }
    }

    /// Says how many refusals were not logged, once the handshake is over.
    fn finish(log: &Mutex<RefusalLog>) {
        let n = std::mem::take(&mut log.lock().unwrap_or_else(|p| p.into_inner()).suppressed);
        if n > 0 {
            tracing::warn!("tunnelHandshake: {n} more refusals not logged");
        }
    }
}

/// Waits for one accepted handshake on `listener`; returns the client's IP. Each
/// connection gets `timeout` (NP_HANDSHAKE_TIMEOUT) to send its request.
pub async fn serve(
    listener: &TcpListener,
    key: &TunnelKey,
    config: TunnelConfig,
    timeout: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<IpAddr> {
    // Handshake tasks end with this token, whoever wins.
    let done = cancel.child_token();
    let _stop_tasks = done.clone().drop_guard();
    let (won_tx, mut won_rx) = mpsc::channel::<IpAddr>(1);
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let refusals = Arc::new(Mutex::new(RefusalLog::default()));
    let winner = loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => anyhow::bail!("tunnelHandshake: context canceled"),
            Some(ip) = won_rx.recv() => break ip,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("tunnelHandshake: accept failed: {e}");
                tokio::time::sleep(super::RETRY_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = pending.clone().try_acquire_owned() else {
            RefusalLog::refused(
                &refusals,
                format_args!("{MAX_PENDING} connections pending, closed the one from {peer}"),
            );
            continue;
        };
        let (key, won_tx, done, refusals) =
            (key.clone(), won_tx.clone(), done.clone(), refusals.clone());
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = done.cancelled() => {}
                r = tokio::time::timeout(timeout, answer(stream, peer, &key, config, &refusals)) => match r {
                    Ok(Ok(true)) => {
                        let _ = won_tx.send(crate::transport::canonical_ip(peer.ip())).await;
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::debug!("tunnelHandshake: {peer}: {e:#}"),
                    Err(_) => tracing::debug!("tunnelHandshake: {peer} sent no request in time"),
                },
            }
        });
    };
    RefusalLog::finish(&refusals);
    Ok(winner)
}

/// Reads one request and answers it; true when it was the accepted handshake.
async fn answer(
    mut stream: TcpStream,
    peer: SocketAddr,
    key: &TunnelKey,
    config: TunnelConfig,
    refusals: &Mutex<RefusalLog>,
) -> anyhow::Result<bool> {
    let mut buf = Vec::with_capacity(512);
    let verdict = loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .context("reading the request")?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
        match judge_handshake_request(&buf, key) {
            Ok(Some((v, _))) => break v,
            Ok(None) if buf.len() <= MAX_HANDSHAKE_HEAD => continue,
            Ok(None) | Err(_) => {
                let _ = stream.write_all(BAD_REQUEST).await;
                let _ = stream.shutdown().await;
                return Err(anyhow!("malformed handshake request"));
            }
        }
    };
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let response = handshake_response(&verdict, &config, &date);
    stream
        .write_all(&response)
        .await
        .context("writing the response")?;
    let _ = stream.shutdown().await;
    match verdict {
        HandshakeVerdict::Accept => {
            tracing::info!("Sending tunnel config: {}", config.log_form());
            Ok(true)
        }
        other => {
            RefusalLog::refused(
                refusals,
                format_args!("refused a request from {peer}: {other:?}"),
            );
            Ok(false)
        }
    }
}

/// Client: performs the handshake with the server at `server`: the dial within
/// `dial_timeout` (NP_TCP_DIAL_TIMEOUT), then the exchange within `timeout`
/// (NP_HANDSHAKE_TIMEOUT).
pub async fn request(
    dns: &crate::dns::Dns,
    server: &HostPort,
    host_header: &str,
    key: &TunnelKey,
    dial_timeout: Duration,
    timeout: Duration,
) -> anyhow::Result<TunnelConfig> {
    let addr = dns.resolve(server).await?;
    let tcp = tokio::time::timeout(dial_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("tunnelHandshake: dial tcp {addr}: i/o timeout"))?
        .with_context(|| format!("tunnelHandshake: dial tcp {addr}"))?;
    let req = handshake_request(host_header, key);
    let talk = async {
        if server.port == 443 {
            let tls = ClientTls::verified(&server.host)?;
            let s = tls
                .connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .with_context(|| format!("tunnelHandshake: TLS with {addr}"))?;
            exchange(s, &req).await
        } else {
            exchange(tcp, &req).await
        }
    };
    tokio::time::timeout(timeout, talk).await.map_err(|_| {
        anyhow!("tunnelHandshake: no answer from {addr} within {timeout:?} (NP_HANDSHAKE_TIMEOUT)")
    })?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> anyhow::Result<TunnelConfig> {
    s.write_all(req).await.context("tunnelHandshake: write")?;
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.context("tunnelHandshake: read")?;
        buf.extend_from_slice(&chunk[..n]);
        match parse_handshake_response(&buf) {
            Ok(Some(cfg)) => return Ok(cfg),
            Ok(None) if n > 0 => continue,
            Ok(None) => anyhow::bail!("tunnelHandshake: unexpected EOF"),
            Err(e) => return Err(anyhow!(e)),
        }
    }
}
