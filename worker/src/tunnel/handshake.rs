//! The HTTP handshake that opens a dual-end tunnel (REFERENCE.md 2), both sides. The bytes
//! themselves come from `nodepass_proto::wire`; this file only moves them.
//!
//! Server: serves plain HTTP on the tunnel port until one request is accepted. Each
//! connection is handled on its own task, so a client that connects and never speaks, or
//! speaks garbage, delays nobody; it is dropped after NP_HANDSHAKE_TIMEOUT. Pending
//! connections are admitted fairly ([`crate::admission`]): at most
//! [`MAX_PENDING_PER_SOURCE`] from one address and [`MAX_PENDING`] in all, and when there is
//! no room the oldest connection of the busiest address is closed, never the newcomer, so a
//! host that holds idle connections cannot keep the real client out. Refusals are logged at
//! most once per [`REFUSAL_LOG_INTERVAL`] with a count of those not logged, so a scanner
//! cannot flood the log (and, under a master, its log events). Rejected requests get the
//! reference's 405/404/401 answers, unparsable ones a 400, and the wait goes on; an address
//! that keeps sending wrong keys gets its 401s later and later ([`Failures`]), while a right
//! key is answered at once. The request head is parsed once its end (or its first line) has
//! arrived, so a byte-by-byte trickle costs linear work. The winner's IP is the only one
//! allowed to open pool connections; when the winner asked for entry proofs (our client
//! does, with [`nodepass_proto::wire::ENTRY_PROOF_HEADER`]) the answer carries a fresh
//! nonce and every pool connection of the session must also prove the key
//! ([`crate::transport::admission`]).
//!
//! Client: one `GET /` with the bearer token and the entry-proof request (over verified TLS
//! when the tunnel port is 443, for a TLS-terminating proxy in front), then the JSON config
//! (and, from a server of ours, the nonce) from the 200 answer,
//! all within NP_HANDSHAKE_TIMEOUT: a server that accepts and stays silent is an error,
//! and the role's restart loop tries again.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use nodepass_proto::url::{HostPort, TunnelKey};
use nodepass_proto::wire::{
    handshake_request_with_proof, handshake_response_with_proof, judge_handshake_request,
    parse_handshake_answer, request_wants_entry_proof, EntryProof, HandshakeVerdict, TunnelConfig,
    ENTRY_PROOF_NONCE_LEN, MAX_HANDSHAKE_HEAD,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admission::{Made, PendingTable};
use crate::transport::tls::ClientTls;

/// Connections on the tunnel port handled at once before a handshake is accepted.
pub const MAX_PENDING: usize = 64;

/// Of those, at most this many from one address.
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// Wrong keys from one address within [`FAILURE_WINDOW`] answered at once; later ones wait
/// 100 ms, doubling per failure, up to [`MAX_FAILURE_DELAY`].
pub const FREE_FAILURES: u32 = 3;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(5);
/// Addresses whose failures are remembered (the stalest is forgotten beyond this).
const FAILURE_SOURCES: usize = 4096;

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

/// Recent refused requests per source address, to slow down key guessing. Bounded: past
/// [`FAILURE_SOURCES`] addresses the stalest entry is forgotten.
#[derive(Default)]
struct Failures {
    by_source: std::collections::HashMap<IpAddr, (u32, Instant)>,
}

impl Failures {
    /// Counts a refusal from `ip` and returns how long to wait before answering it.
    fn refused(failures: &Mutex<Failures>, ip: IpAddr) -> Duration {
        let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if f.by_source.len() >= FAILURE_SOURCES && !f.by_source.contains_key(&ip) {
            f.by_source
                .retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
            if f.by_source.len() >= FAILURE_SOURCES {
                if let Some(stalest) = f
                    .by_source
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(ip, _)| *ip)
                {
                    f.by_source.remove(&stalest);
                }
            }
        }
        let entry = f.by_source.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        failure_delay(entry.0)
    }
}

/// The wait before the `n`th refusal of one address within the window is answered.
fn failure_delay(n: u32) -> Duration {
    if n <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (n - FREE_FAILURES - 1).min(16);
    (Duration::from_millis(100) * (1u32 << doublings)).min(MAX_FAILURE_DELAY)
}

/// The accepted handshake: who may open pool connections, and how they prove it.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The client's IP: pool connections from any other address are refused.
    pub client_ip: IpAddr,
    /// Set when the client asked for entry proofs (one of ours): every pool connection of
    /// the session must carry this proof before it gets an id. None for a Go client.
    pub proof: Option<EntryProof>,
}

/// Waits for one accepted handshake on `listener`. Each connection gets `timeout`
/// (NP_HANDSHAKE_TIMEOUT) to send its request.
pub async fn serve(
    listener: &TcpListener,
    key: &TunnelKey,
    config: TunnelConfig,
    timeout: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<Accepted> {
    // A new nonce per handshake: proofs of an earlier session are worth nothing.
    let nonce: [u8; ENTRY_PROOF_NONCE_LEN] = rand::random();
    // Handshake tasks end with this token, whoever wins.
    let done = cancel.child_token();
    let _stop_tasks = done.clone().drop_guard();
    let (won_tx, mut won_rx) = mpsc::channel::<Accepted>(1);
    let pending = PendingTable::new(MAX_PENDING_PER_SOURCE, MAX_PENDING);
    let refusals = Arc::new(Mutex::new(RefusalLog::default()));
    let failures = Arc::new(Mutex::new(Failures::default()));
    let winner = loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => anyhow::bail!("tunnelHandshake: context canceled"),
            Some(won) = won_rx.recv() => break won,
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
        let source = crate::transport::canonical_ip(peer.ip());
        let (slot, made) = pending.admit(source, &done);
        match made {
            Made::Room => {}
            Made::EvictedOwnOldest => RefusalLog::refused(
                &refusals,
                format_args!(
                    "{MAX_PENDING_PER_SOURCE} connections pending from {source}, closed its oldest"
                ),
            ),
            Made::EvictedBusiest(ip) => RefusalLog::refused(
                &refusals,
                format_args!("{MAX_PENDING} connections pending, closed the oldest from {ip}"),
            ),
        }
        let (key, won_tx, refusals, failures) = (
            key.clone(),
            won_tx.clone(),
            refusals.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            let talk = answer(stream, peer, &key, config, &nonce, &refusals, &failures);
            tokio::select! {
                _ = slot.cancel.cancelled() => {}
                r = tokio::time::timeout(timeout, talk) => match r {
                    Ok(Ok(Some(wants_proof))) => {
                        let won = Accepted {
                            client_ip: crate::transport::canonical_ip(peer.ip()),
                            proof: wants_proof.then(|| EntryProof::new(&key, &nonce)),
                        };
                        let _ = won_tx.send(won).await;
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::debug!("tunnelHandshake: {peer}: {e:#}"),
                    Err(_) => tracing::debug!("tunnelHandshake: {peer} sent no request in time"),
                },
            }
        });
    };
    RefusalLog::finish(&refusals);
    Ok(winner)
}

/// Reads one request and answers it. `Some(wants_proof)` when it was the accepted
/// handshake (`wants_proof`: the client asked for entry proofs and got the nonce).
async fn answer(
    mut stream: TcpStream,
    peer: SocketAddr,
    key: &TunnelKey,
    config: TunnelConfig,
    nonce: &[u8; ENTRY_PROOF_NONCE_LEN],
    refusals: &Mutex<RefusalLog>,
    failures: &Mutex<Failures>,
) -> anyhow::Result<Option<bool>> {
    let mut buf = Vec::with_capacity(512);
    let mut head = HeadScan::default();
    let (verdict, head_len) = loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .context("reading the request")?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if !head.worth_parsing(&buf) && buf.len() <= MAX_HANDSHAKE_HEAD {
            continue;
        }
        match judge_handshake_request(&buf, key) {
            Ok(Some(judged)) => break judged,
            Ok(None) if buf.len() <= MAX_HANDSHAKE_HEAD => continue,
            Ok(None) | Err(_) => {
                let _ = stream.write_all(BAD_REQUEST).await;
                let _ = stream.shutdown().await;
                return Err(anyhow!("malformed handshake request"));
            }
        }
    };
    if verdict != HandshakeVerdict::Accept {
        let wait = Failures::refused(failures, crate::transport::canonical_ip(peer.ip()));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    let wants_proof = request_wants_entry_proof(&buf[..head_len]);
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let response =
        handshake_response_with_proof(&verdict, &config, &date, wants_proof.then_some(nonce));
    stream
        .write_all(&response)
        .await
        .context("writing the response")?;
    let _ = stream.shutdown().await;
    match verdict {
        HandshakeVerdict::Accept => {
            tracing::info!("Sending tunnel config: {}", config.log_form());
            if wants_proof {
                tracing::debug!("Pool connections of this session prove the key (entry proofs)");
            }
            Ok(Some(wants_proof))
        }
        other => {
            RefusalLog::refused(
                refusals,
                format_args!("refused a request from {peer}: {other:?}"),
            );
            Ok(None)
        }
    }
}

/// Where the request head's parse is worth trying: once its first line has ended (so
/// garbage is answered at once) and then once the blank line that ends the head arrived.
/// Only the new bytes are scanned, so the work stays linear in the head's size however it
/// trickles in.
#[derive(Default)]
struct HeadScan {
    /// Bytes already scanned.
    scanned: usize,
    first_line_parsed: bool,
}

impl HeadScan {
    fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        // Three bytes of overlap find a "\r\n\r\n" split across reads.
        let from = self.scanned.saturating_sub(3);
        self.scanned = buf.len();
        let new = &buf[from..];
        if !self.first_line_parsed && new.contains(&b'\n') {
            self.first_line_parsed = true;
            return true;
        }
        new.windows(4).any(|w| w == b"\r\n\r\n") || new.windows(2).any(|w| w == b"\n\n")
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
) -> anyhow::Result<(TunnelConfig, Option<EntryProof>)> {
    let addr = dns.resolve(server).await?;
    let tcp = tokio::time::timeout(dial_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("tunnelHandshake: dial tcp {addr}: i/o timeout"),
            )
        })?
        .with_context(|| format!("tunnelHandshake: dial tcp {addr}"))?;
    let req = handshake_request_with_proof(host_header, key);
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
    let (config, nonce) = tokio::time::timeout(timeout, talk).await.map_err(|_| {
        anyhow!("tunnelHandshake: no answer from {addr} within {timeout:?} (NP_HANDSHAKE_TIMEOUT)")
    })??;
    // A server that answered the nonce is one of ours: prove the key on every entry.
    Ok((config, nonce.map(|n| EntryProof::new(key, &n))))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> anyhow::Result<(TunnelConfig, Option<[u8; ENTRY_PROOF_NONCE_LEN]>)> {
    s.write_all(req).await.context("tunnelHandshake: write")?;
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.context("tunnelHandshake: read")?;
        buf.extend_from_slice(&chunk[..n]);
        match parse_handshake_answer(&buf) {
            Ok(Some(cfg)) => return Ok(cfg),
            Ok(None) if n > 0 => continue,
            Ok(None) => anyhow::bail!("tunnelHandshake: unexpected EOF"),
            Err(e) => return Err(anyhow!(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickled_head_is_parsed_a_bounded_number_of_times() {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}Authorization: Bearer y\r\n\r\n",
            "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(300)
        );
        let mut scan = HeadScan::default();
        let mut buf = Vec::new();
        let mut parses = 0;
        for b in head.bytes() {
            buf.push(b);
            if scan.worth_parsing(&buf) {
                parses += 1;
            }
        }
        // The first line and the end of the head: two parses for ~11 KiB sent byte by byte.
        assert_eq!(parses, 2);
    }

    #[test]
    fn refusals_slow_down_per_source_and_are_bounded() {
        assert_eq!(failure_delay(1), Duration::ZERO);
        assert_eq!(failure_delay(FREE_FAILURES), Duration::ZERO);
        assert_eq!(failure_delay(FREE_FAILURES + 1), Duration::from_millis(100));
        assert_eq!(failure_delay(FREE_FAILURES + 2), Duration::from_millis(200));
        assert_eq!(failure_delay(u32::MAX), MAX_FAILURE_DELAY);
        let f = Mutex::new(Failures::default());
        let a = IpAddr::from([127, 0, 0, 2]);
        let b = IpAddr::from([127, 0, 0, 3]);
        for _ in 0..FREE_FAILURES {
            assert!(Failures::refused(&f, a).is_zero());
        }
        assert!(!Failures::refused(&f, a).is_zero());
        assert!(
            Failures::refused(&f, b).is_zero(),
            "another source is not slowed"
        );
        for i in 0..(FAILURE_SOURCES as u32 + 10) {
            Failures::refused(&f, IpAddr::from(i.to_be_bytes()));
        }
        assert!(f.lock().unwrap().by_source.len() <= FAILURE_SOURCES);
    }
}
