//! One dual-end tunnel session after the handshake, shared by server and client
//! (REFERENCE.md 5): the control channel (pool entry `00000000`), its single writer and its
//! reader with the 3 x NP_REPORT_INTERVAL read deadline, the health loop (ping/pong, the
//! flush rule), the TLS fingerprint exchange, and the start of the incoming side's accept
//! loops. Any error ends the session; the role's restart loop takes it from there.
//!
//! The fingerprint exchange (5.4) follows the reference on the wire, without its
//! deadlock: in the reference both sides pick their `verify` entry from the same idle set
//! at the same tick and sometimes pick the same one, after which both wait for an entry
//! the other has already taken. Here the server sends its `verify` as soon as the control
//! channel is up, and our client never picks first: it sends its own `verify` only after
//! it has handled the server's, choosing an entry other than the one the server named.
//! Against a Go client our early pick is taken before its first tick, and the id it names
//! is excluded if it arrives first, so the two picks cannot collide there either.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::anyhow;
use nodepass_proto::url::TlsMode;
use nodepass_proto::wire::{
    cert_fingerprint, Flow, PoolId, PoolSignal, Signal, SignalError, MAX_SIGNAL_LINE,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::instance::Instance;
use crate::pool::Entry;
use crate::pool::Pool;

use super::session::{Session, UserListeners, Verifier};
use super::{incoming, outgoing};

/// What a role hands to [`run`].
pub struct SessionSpec {
    pub inst: Arc<Instance>,
    pub pool: Arc<Pool>,
    pub flow: Flow,
    pub is_server: bool,
    pub verifier: Verifier,
    /// The incoming side's listeners (None on the outgoing side).
    pub users: Option<UserListeners>,
}

/// Runs a session on `control` until an error or `cancel`.
pub async fn run(
    spec: SessionSpec,
    control: Entry,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let SessionSpec {
        inst,
        pool,
        flow,
        is_server,
        verifier,
        users,
    } = spec;
    let (tx, rx) = mpsc::channel(inst.tunables.semaphore_limit.max(1));
    let (verified, _) = watch::channel(false);
    let peer = control
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (rd, wr) = tokio::io::split(control);
    let sess = Arc::new(Session {
        inst,
        pool,
        flow,
        is_server,
        cancel: cancel.clone(),
        signals: tx,
        control_wr: tokio::sync::Mutex::new(Some(wr)),
        verifier,
        started: Instant::now(),
        checkpoint_ms: AtomicU64::new(0),
        heard_ms: AtomicU64::new(0),
        heard: tokio::sync::Notify::new(),
        probe_ms: AtomicU64::new(0),
        health_ping: AtomicU64::new(0),
        pings: AtomicU64::new(0),
        pongs: AtomicU64::new(0),
        ping_order: Mutex::new(()),
        pong: tokio::sync::Notify::new(),
        peer_verify_ids: Mutex::new(Vec::new()),
        own_verify_sent: AtomicBool::new(false),
        verified,
    });
    if sess.tls_on() {
        tracing::info!("TLS certificate fingerprint verifying...");
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(writer(sess.clone(), rx));
    // The outgoing side's per-session state.
    let udp = Arc::new(outgoing::UdpSessions::default());
    tasks.spawn(reader(sess.clone(), rd, udp));
    tasks.spawn(health(sess.clone()));
    if sess.tls_on() && sess.is_server {
        // The server picks first (see the module comment).
        let s = sess.clone();
        tasks.spawn(async move {
            s.incoming_verify().await?;
            // Done; the session goes on without this task.
            std::future::pending().await
        });
    }
    if let Some(users) = users {
        let s = sess.clone();
        tasks.spawn(async move {
            if s.tls_on() {
                let mut rx = s.verified.subscribe();
                if rx.wait_for(|v| *v).await.is_err() {
                    return Ok(());
                }
            }
            users.succession.publish(&s);
            let mut loops = tokio::task::JoinSet::new();
            if let Some(l) = users.tcp {
                loops.spawn(incoming::tcp_loop(s.clone(), l, users.succession.clone()));
            }
            if let Some(u) = users.udp {
                loops.spawn(incoming::udp_loop(s.clone(), u));
            }
            match loops.join_next().await {
                Some(Ok(r)) => r,
                Some(Err(e)) => Err(anyhow!("incoming loop failed: {e}")),
                None => std::future::pending().await,
            }
        });
    }
    tracing::debug!("Control channel with {peer} is up");
    let result = tokio::select! {
        _ = cancel.cancelled() => Err(anyhow!("context canceled")),
        Some(r) = tasks.join_next() => match r {
            Ok(Ok(())) => Err(anyhow!("control channel closed")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow!("session task failed: {e}")),
        },
    };
    cancel.cancel();
    tasks.abort_all();
    sess.pool.close();
    // Every holder of the lock gives it up on `cancel` (the writer task is aborted).
    sess.control_wr.lock().await.take();
    result
}

async fn writer(sess: Arc<Session>, mut rx: mpsc::Receiver<Signal>) -> anyhow::Result<()> {
    let key = sess.inst.url.key.clone();
    while let Some(sig) = rx.recv().await {
        let line = sig.encode(&key);
        let mut wr = sess.control_wr.lock().await;
        let Some(wr) = wr.as_mut() else {
            return Ok(());
        };
        if let Err(e) = wr.write_all(&line).await {
            return Err(anyhow!("startWriter: write failed: {e}"));
        }
        if rx.is_empty() {
            wr.flush()
                .await
                .map_err(|e| anyhow!("startWriter: write failed: {e}"))?;
        }
    }
    Ok(())
}

async fn reader(
    sess: Arc<Session>,
    rd: tokio::io::ReadHalf<Entry>,
    udp: Arc<outgoing::UdpSessions>,
) -> anyhow::Result<()> {
    let key = sess.inst.url.key.clone();
    // Two report intervals and a half second: a live peer is heard from at least once an
    // interval (its ping and its pong to ours), so one lost beat is tolerated and a silent
    // link (a dead path, a NAT that lost its state) ends the session within about two
    // intervals (the reference waits three).
    let deadline = sess.inst.tunables.report_interval * 2 + std::time::Duration::from_millis(500);
    let mut rd = BufReader::new(rd);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let mut limited = (&mut rd).take(MAX_SIGNAL_LINE as u64 + 1);
        let n = match tokio::time::timeout(deadline, limited.read_until(b'\n', &mut line)).await {
            Err(_) => return Err(anyhow!("commonQueue: read timeout after {deadline:?}")),
            Ok(Err(e)) => return Err(anyhow!("commonQueue: readBytes failed: {e}")),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(anyhow!("commonQueue: readBytes failed: EOF"));
        }
        sess.heard_now();
        match Signal::decode(&line, &key) {
            Ok(sig) => sess.dispatch(sig, &udp),
            Err(SignalError::PoolId { action, id }) => sess.unknown_pool_id(action, &id),
            Err(e) => tracing::error!("commonQueue: decode signal failed: {e}"),
        }
    }
}

async fn health(sess: Arc<Session>) -> anyhow::Result<()> {
    let mut tick = sess.inst.report_ticker();
    loop {
        tick.tick().await;
        let errors = sess.pool.error_count() as usize;
        if errors > sess.pool.idle_count() / 2 {
            sess.send(Signal::Flush);
            sess.pool.flush();
            sess.pool.reset_errors();
            tick.tick().await;
            tracing::debug!(
                "Tunnel pool flushed: {} active connections",
                sess.pool.idle_count()
            );
        }
        // Only on the side that hands entries out, and once the certificate check is
        // over: an entry the peer has closed may still be named by a signal on its way
        // (the peer closes its `verify` entry right after naming it, and the incoming
        // side's peer never names entries otherwise).
        if sess.is_incoming() && (!sess.tls_on() || *sess.verified.borrow()) {
            sess.pool.prune_closed();
        }
        if sess.refresh_due() {
            sess.refresh_pool().await;
        }
        sess.checkpoint_ms
            .store(sess.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        sess.send_health_ping();
    }
}

impl Session {
    /// Whether this side should refresh its idle pool now: it is the side that hands
    /// entries out, NP_POOL_REFRESH is on, the certificate check (which takes entries of
    /// its own) is over, and the oldest idle entry has waited NP_POOL_REFRESH.
    fn refresh_due(&self) -> bool {
        let limit = self.inst.tunables.pool_refresh;
        !limit.is_zero()
            && self.is_incoming()
            && (!self.tls_on() || *self.verified.borrow())
            && self.pool.oldest_idle_age().is_some_and(|age| age >= limit)
    }

    /// Replaces every idle entry before a middlebox with an idle timeout (a NAT, a load
    /// balancer, a proxy; keep-alive probes do not cross those that end TCP) forgets it:
    /// this side closes its idle entries and holds back new ones, sends `flush` (the peer
    /// closes its copies, and the client opens fresh ones) and a ping after it. The peer's
    /// pong says it has read the `flush`; of the entries that arrived meanwhile, those the
    /// peer closed are dropped (see [`crate::pool::Pool::unfence`]), and users are served
    /// again. No entry the peer flushed is handed out, so no user is lost to the refresh;
    /// users who arrive during it wait about one round trip. A peer that does not answer within two
    /// report intervals is left to the silence rules.
    async fn refresh_pool(&self) {
        let idle = self.pool.idle_count();
        self.pool.fence();
        self.send(Signal::Flush);
        let n = self.send_ping();
        // 0: the queue refused the ping (and so, most likely, the flush): nothing to wait for.
        let answered = n != 0
            && self
                .wait_pong(n, self.inst.tunables.report_interval * 2)
                .await;
        self.pool.unfence();
        tracing::debug!(
            "Tunnel pool refreshed: {idle} idle entries replaced (peer answered: {answered})"
        );
    }

    fn dispatch(self: &Arc<Self>, sig: Signal, udp: &Arc<outgoing::UdpSessions>) {
        let url = &self.inst.url;
        match sig {
            // The named entry is taken as the signal is read when it is already here, so a
            // `flush` read after this signal cannot close it first.
            Signal::Tcp { remote, id } => {
                if !url.params.notcp() {
                    let entry = self.pool.try_take(id);
                    tokio::spawn(outgoing::tcp(self.clone(), remote, id, entry));
                }
            }
            Signal::Udp { remote, id } => {
                if !url.params.noudp() {
                    let entry = self.pool.try_take(id);
                    tokio::spawn(outgoing::udp(self.clone(), udp.clone(), remote, id, entry));
                }
            }
            Signal::Ping => self.send(Signal::Pong),
            // Only the answer to the period's health ping reports (a pong to a ping of
            // `confirm_link` only says the link lives; the reader noted that already).
            Signal::Pong => {
                let n = self.pong_heard();
                if self
                    .health_ping
                    .compare_exchange(n, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    let now = self.started.elapsed().as_millis() as u64;
                    let ping = now.saturating_sub(self.checkpoint_ms.load(Ordering::Relaxed));
                    self.inst.publish_stats(ping, self.pool.idle_count() as u64);
                }
            }
            Signal::Flush => {
                self.pool.flush();
                self.pool.reset_errors();
                tracing::debug!("Tunnel pool flushed on the peer's request");
            }
            Signal::Verify { id, fp } => {
                if self.tls_on() {
                    let s = self.clone();
                    tokio::spawn(async move { s.outgoing_verify(id, fp).await });
                }
            }
            Signal::Unknown { action } => tracing::debug!("ignoring signal {action:?}"),
        }
    }

    /// A signal naming a pool id that no entry can have ends as if the named entry never
    /// came: a pool error for `tcp`/`udp` (when that traffic is on), a failed check for
    /// `verify` (when TLS is on).
    fn unknown_pool_id(&self, action: PoolSignal, id: &str) {
        let url = &self.inst.url;
        match action {
            PoolSignal::Tcp if !url.params.notcp() => {
                tracing::error!("commonTCPOnce: invalid pool id {id:?} in signal");
                self.pool.add_error();
            }
            PoolSignal::Udp if !url.params.noudp() => {
                tracing::error!("commonUDPOnce: invalid pool id {id:?} in signal");
                self.pool.add_error();
            }
            PoolSignal::Verify if self.tls_on() => {
                tracing::error!("outgoingVerify: invalid pool id {id:?}");
                self.cancel.cancel();
            }
            _ => {}
        }
    }

    /// Our certificate view of `entry` for the exchange.
    fn fingerprint_of(&self, entry: &Entry) -> String {
        match &self.verifier {
            Verifier::None => String::new(),
            Verifier::Server(tls) => tls.fingerprint(),
            Verifier::Client(_) => entry
                .peer_cert_der()
                .map(|d| cert_fingerprint(&d))
                .unwrap_or_default(),
        }
    }

    /// Takes an idle entry and names it in our `verify` with our fingerprint.
    async fn incoming_verify(&self) -> anyhow::Result<()> {
        if self.own_verify_sent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let exclude = self
            .peer_verify_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((id, entry)) = self
            .pool
            .incoming_get_excluding(self.inst.tunables.pool_get_timeout, &exclude)
            .await
        else {
            return Err(anyhow!(
                "incomingVerify: incomingGet failed: IncomingGet: insufficient pool connections"
            ));
        };
        let fp = self.fingerprint_of(&entry);
        self.send(Signal::Verify { id, fp });
        tracing::debug!("TLS verify signal: cid {id} ->");
        drop(entry);
        Ok(())
    }

    /// Checks the peer's `verify` against the named entry.
    async fn outgoing_verify(self: Arc<Self>, id: PoolId, fp: String) {
        self.peer_verify_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        tracing::debug!("TLS verify signal: cid {id} <-");
        let go_tls2_server = fp.is_empty()
            && !self.is_server
            && matches!(self.verifier, Verifier::Client(TlsMode::Files));
        if fp.is_empty() && !go_tls2_server {
            tracing::error!("outgoingVerify: no fingerprint in signal");
            self.cancel.cancel();
            return;
        }
        let Some(entry) = self
            .pool
            .outgoing_get(id, self.inst.tunables.pool_get_timeout)
            .await
        else {
            tracing::error!(
                "outgoingVerify: request timeout: OutgoingGet: pool connection not found"
            );
            self.cancel.cancel();
            return;
        };
        if go_tls2_server {
            // NodePass v1.14.0 with tls=2 cannot name its own certificate (REFERENCE.md
            // 5.4). The chain was verified for `sni` during the TLS handshake, so go on.
            tracing::warn!(
                "TLS verify: the server sent no fingerprint (a tls=2 server of the reference does that); relying on the verified certificate chain"
            );
        } else {
            let ours = self.fingerprint_of(&entry);
            let (server_fp, client_fp) = if self.is_server {
                (ours.as_str(), fp.as_str())
            } else {
                (fp.as_str(), ours.as_str())
            };
            if server_fp != client_fp {
                tracing::error!(
                    "outgoingVerify: certificate fingerprint mismatch: server: {server_fp} - client: {client_fp}"
                );
                self.cancel.cancel();
                return;
            }
            tracing::info!("TLS certificate fingerprint verified: {fp}");
        }
        drop(entry);
        if !self.is_server {
            // Our turn: the server's entry is out of our pool, so ours cannot collide.
            // A reference tls=2 server cancels on any `verify` it gets; when it does not
            // need ours (it is not the incoming side) we keep the tunnel up by not sending.
            let server_needs_ours = self.flow == Flow::Reverse;
            if !go_tls2_server || server_needs_ours {
                if let Err(e) = self.incoming_verify().await {
                    tracing::error!("{e:#}");
                    self.cancel.cancel();
                    return;
                }
            }
        }
        self.verified.send_replace(true);
    }
}
