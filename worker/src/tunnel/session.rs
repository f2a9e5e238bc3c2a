//! One dual-end tunnel session's shared state (a leaf: it names no other part of the
//! tunnel): the instance, the pool, the flow and role, the control channel's writer and
//! signal queue, and the certificate-verification state the control loops keep. The
//! control loops (control.rs), the incoming side (incoming.rs) and the outgoing side
//! (outgoing.rs) all use it; none of them is imported by this module, so the three only
//! meet here and in control.rs, which starts the other two.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodepass_proto::url::TlsMode;
use nodepass_proto::wire::{Flow, PoolId, Signal};
use tokio::io::{AsyncWriteExt as _, WriteHalf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::instance::Instance;
use crate::pool::{Entry, Pool};
use crate::transport::tls::ServerTls;

/// How this side proves the certificate in the `verify` exchange.
pub enum Verifier {
    /// tls=0: no exchange.
    None,
    /// The server: compares against its own certificate.
    Server(Arc<ServerTls>),
    /// The client: compares against the certificate it saw on the named entry.
    Client(TlsMode),
}

/// The incoming side's user-facing sockets (the target address of its side), kept across
/// sessions, with the [`Succession`] of the sessions that serve them.
#[derive(Default, Clone)]
pub struct UserListeners {
    pub tcp: Option<Arc<TcpListener>>,
    pub udp: Option<Arc<UdpSocket>>,
    pub succession: Arc<Succession>,
}

/// The session currently serving a side's users, so a user accepted by a session whose link
/// went silent can wait for the next one instead of failing.
#[derive(Default)]
pub struct Succession(watch::Sender<Option<std::sync::Weak<Session>>>);

impl Succession {
    /// `sess` serves the users from now on.
    pub fn publish(&self, sess: &Arc<Session>) {
        self.0.send_replace(Some(Arc::downgrade(sess)));
    }

    /// The session after `old`, once one serves and its link is fresh; None when none comes
    /// within `limit`.
    pub async fn after(&self, old: &Arc<Session>, limit: Duration) -> Option<Arc<Session>> {
        let mut rx = self.0.subscribe();
        let wait = async {
            loop {
                let next = rx
                    .borrow_and_update()
                    .as_ref()
                    .and_then(std::sync::Weak::upgrade)
                    .filter(|s| !Arc::ptr_eq(s, old) && !s.cancel.is_cancelled());
                if let Some(next) = next {
                    if next.wait_link_fresh().await {
                        return Some(next);
                    }
                    continue;
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.ok().flatten()
    }
}

/// One session's shared state: what the control loops, the incoming side and the
/// outgoing side all use. Each side keeps its own per-session state (the outgoing side's
/// UDP table lives in [`super::outgoing::UdpSessions`]).
pub struct Session {
    pub inst: Arc<Instance>,
    pub pool: Arc<Pool>,
    pub flow: Flow,
    pub is_server: bool,
    pub cancel: CancellationToken,
    pub(super) signals: mpsc::Sender<Signal>,
    /// The control channel's write side, shared by the writer task (queued signals) and
    /// [`Session::send_now`] (a `tcp` signal written by the task that accepted the user).
    /// Taken out when the session ends, so the channel closes even while relays that hold
    /// the session go on.
    pub(super) control_wr: tokio::sync::Mutex<Option<WriteHalf<Entry>>>,
    pub(super) verifier: Verifier,
    pub(super) started: Instant,
    /// ms since `started` when the last ping was sent.
    pub(super) checkpoint_ms: AtomicU64,
    /// ms since `started` when the last line came in on the control channel (each side
    /// pings every report interval and answers the peer's pings, so a live link is heard
    /// from at least once an interval).
    pub(super) heard_ms: AtomicU64,
    /// Woken each time a line is heard (after `heard_ms` moved), for the users who wait for
    /// the link ([`Session::wait_heard_since`]) instead of polling it.
    pub(super) heard: tokio::sync::Notify,
    /// When this side last sent a ping to confirm the link for a user (ms since start).
    pub(super) probe_ms: AtomicU64,
    /// The number (see `pings`) of the period's health ping while its pong is awaited, 0
    /// otherwise: only that pong reports a CHECK_POINT (the pongs of
    /// [`Session::confirm_link`]'s pings are not the period's figure).
    pub(super) health_ping: AtomicU64,
    /// Pings this side has queued, and pongs it has read: the peer answers every ping in
    /// order (ours and the reference alike), so once `pongs` reaches a ping's number the
    /// peer has read everything sent before that ping (a refresh's `flush`).
    pub(super) pings: AtomicU64,
    pub(super) pongs: AtomicU64,
    /// Held while a ping is numbered and queued (see [`Session::send_ping`]).
    pub(super) ping_order: Mutex<()>,
    pub(super) pong: tokio::sync::Notify,
    /// Ids the peer has named in its `verify` (never pick one of those for ours).
    pub(super) peer_verify_ids: Mutex<Vec<PoolId>>,
    pub(super) own_verify_sent: AtomicBool,
    /// Flips to true once the peer's certificate fingerprint has been verified.
    pub(super) verified: watch::Sender<bool>,
}

impl Session {
    /// True when this side accepts the user traffic.
    pub fn is_incoming(&self) -> bool {
        match self.flow {
            Flow::Reverse => self.is_server,
            Flow::Forward => !self.is_server,
        }
    }

    /// Queues a signal for the writer; a full queue drops it with a log line, as the
    /// reference does.
    pub fn send(&self, s: Signal) {
        if let Err(e) = self.signals.try_send(s) {
            match e {
                mpsc::error::TrySendError::Full(_) => tracing::error!(
                    "signal queue limit reached: {}",
                    self.inst.tunables.semaphore_limit
                ),
                mpsc::error::TrySendError::Closed(_) => {}
            }
        }
    }

    /// Writes `s` on the control channel from the calling task, without the hop through
    /// the writer task: on a loaded machine each task hand-off can wait for a runtime
    /// thread, and this one is on every fresh connection's path. A write error ends the
    /// session, as it does in the writer.
    pub async fn send_now(&self, s: Signal) {
        let line = s.encode(&self.inst.url.key);
        let mut wr = self.control_wr.lock().await;
        let Some(wr) = wr.as_mut() else {
            return; // the session is over
        };
        let written = async {
            wr.write_all(&line).await?;
            wr.flush().await
        };
        let result = tokio::select! {
            _ = self.cancel.cancelled() => return,
            r = written => r,
        };
        if let Err(e) = result {
            tracing::error!("startWriter: write failed: {e}");
            self.cancel.cancel();
        }
    }

    /// Whether the control channel was heard from lately (within 1.5 report intervals).
    /// While it is not, the incoming side stops accepting users: they wait in the listen
    /// backlog for the link to answer again or for the next session, instead of being
    /// handed pool entries that may be as dead as the silent link.
    pub fn link_fresh(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let heard = self.heard_ms.load(Ordering::Relaxed);
        let limit = self.inst.tunables.report_interval.as_millis() as u64 * 3 / 2 + 250;
        now.saturating_sub(heard) <= limit
    }

    /// ms since the session started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Resolves when the session has ended with its link silent (nothing heard on the
    /// control channel for more than a report interval, whatever ended it: the read
    /// deadline, a transport's own keep-alive) and the entry was taken after the last line
    /// was heard, or less than half an interval before (`heard_ms` is when this side read
    /// the line, which on a loaded machine can be well after the link carried it): such an
    /// entry belongs to the dead link, and its relay can only hang. Never resolves
    /// otherwise, so relays that began earlier (and may be on healthy entries) go on.
    pub async fn ended_silent_since(&self, taken_ms: u64) {
        self.cancel.cancelled().await;
        let heard = self.heard_ms.load(Ordering::Relaxed);
        let interval = self.inst.tunables.report_interval.as_millis() as u64;
        if self.now_ms().saturating_sub(heard) > interval
            && heard.saturating_sub(interval / 2) <= taken_ms
        {
            return;
        }
        std::future::pending().await
    }

    /// Before a user is handed a pool entry: true when the peer was heard from a moment ago
    /// (a quarter interval, 100 ms to 1 s), else after a ping (one per that time, whoever
    /// asks) is answered within half an interval (200 ms to 2 s). False means the link is
    /// in doubt: the user waits (see [`Session::wait_heard_since`] and [`Succession`])
    /// instead of being given an entry that is likely as dead as the link, with none of its
    /// bytes sent. Both implementations answer `ping` with `pong` (REFERENCE.md), so this
    /// works with the Go peer as well.
    pub async fn confirm_link(&self) -> bool {
        let interval = self.inst.tunables.report_interval.as_millis() as u64;
        let trust = (interval / 4).clamp(100, 1000);
        let now = self.now_ms();
        if now.saturating_sub(self.heard_ms.load(Ordering::Relaxed)) <= trust {
            return true;
        }
        let last = self.probe_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= trust)
            && self
                .probe_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.send_ping();
        }
        let bound = Duration::from_millis((interval / 2).clamp(200, 2000));
        tokio::time::timeout(bound, self.wait_heard_since(now))
            .await
            .unwrap_or(false)
    }

    /// Waits until a line is heard from the peer at or after `since` (ms since start);
    /// false when the session ends first.
    pub async fn wait_heard_since(&self, since: u64) -> bool {
        self.wait_until(&self.heard, &self.heard_ms, since).await
    }

    /// Waits until `value` reaches `at_least`, woken by `moved` (notified after each
    /// change); false when the session ends first.
    async fn wait_until(
        &self,
        moved: &tokio::sync::Notify,
        value: &AtomicU64,
        at_least: u64,
    ) -> bool {
        loop {
            // Registered before the check, so a change in between still wakes us.
            let woken = moved.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if value.load(Ordering::Acquire) >= at_least {
                return true;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = woken => {}
            }
        }
    }

    /// Queues a ping; returns its number (see `pings`), or 0 when the queue refused it.
    pub(super) fn send_ping(&self) -> u64 {
        self.queue_ping(false)
    }

    /// Queues the period's health ping, noting its number first so that its pong is
    /// known when it comes (see `health_ping`).
    pub(super) fn send_health_ping(&self) {
        self.queue_ping(true);
    }

    /// Numbers and queues one ping. Numbering and queueing happen under one lock, and a
    /// ping the queue refuses gives its number back, so the n-th ping queued is the n-th on
    /// the wire and the peer's n-th pong answers it.
    fn queue_ping(&self, health: bool) -> u64 {
        let _order = self.ping_order.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.pings.load(Ordering::Acquire) + 1;
        if health {
            self.health_ping.store(n, Ordering::Release);
        }
        if self.signals.try_send(Signal::Ping).is_err() {
            if health {
                self.health_ping.store(0, Ordering::Release);
            }
            tracing::error!(
                "signal queue limit reached: {} (a ping was not sent)",
                self.inst.tunables.semaphore_limit
            );
            return 0;
        }
        self.pings.store(n, Ordering::Release);
        n
    }

    /// Records a pong read from the peer, wakes who waits for one, and returns its number:
    /// the peer answers pings in order, so the n-th pong answers the n-th ping.
    pub(super) fn pong_heard(&self) -> u64 {
        let n = self.pongs.fetch_add(1, Ordering::AcqRel) + 1;
        self.pong.notify_waiters();
        n
    }

    /// Waits until the peer has answered ping number `n`; false when the session ends or
    /// `limit` passes first.
    pub(super) async fn wait_pong(&self, n: u64, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait_until(&self.pong, &self.pongs, n))
            .await
            .unwrap_or(false)
    }

    /// Records that a line was just read from the peer and wakes who waits for one.
    pub(super) fn heard_now(&self) {
        self.heard_ms.store(self.now_ms(), Ordering::Relaxed);
        self.heard.notify_waiters();
    }

    /// Waits until [`Session::link_fresh`] (checked every 50 ms); returns false when the
    /// session ends first.
    pub async fn wait_link_fresh(&self) -> bool {
        while !self.link_fresh() {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        true
    }

    pub(super) fn tls_on(&self) -> bool {
        !matches!(self.verifier, Verifier::None)
    }
}
