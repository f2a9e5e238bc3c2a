//! The idle pool entries of one tunnel session, by id (REFERENCE.md 4.1): the transport
//! puts ready entries in, the incoming side takes any idle one (oldest first, "IncomingGet")
//! and names it in a signal, the outgoing side takes exactly the named one
//! ("OutgoingGet"), waiting for it to arrive if needed.
//!
//! One short mutex guards the map; it is taken per pool operation (a connection or a
//! signal), never per relayed chunk. Waiters sleep on a `Notify` woken by every `put`.
//!
//! An entry is an [`Entry`]: a bare TCP socket (so the relay can splice it) or any other
//! byte stream a transport makes ([`PoolStream`]: a TLS session, a QUIC stream, a WebSocket
//! connection, an HTTP/2 request body). This module owns that type so that the transports
//! depend on the pool, never the other way round.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use nodepass_proto::wire::PoolId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::relay::RelayIo;

/// A pool entry that is not a bare TCP socket: what a transport implements for its streams.
pub trait PoolStream: AsyncRead + AsyncWrite + Send + Unpin {
    /// True when the peer has closed this idle entry, so handing it out would only cost the
    /// peer a failed lookup. Must not wait, and must not lose data: bytes that are already
    /// pending (a TLS session ticket, early user bytes) mean alive. Called on idle entries
    /// only, just before one is taken.
    fn peer_closed(&mut self) -> bool;

    /// The peer's address as shown in logs (the underlying connection's).
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// DER of the peer's leaf certificate as this side saw it (a client's view of the
    /// server) for the fingerprint exchange (REFERENCE.md 5.4); None without TLS.
    fn peer_cert_der(&self) -> Option<Vec<u8>> {
        None
    }

    /// Moves the stream's sockets to the current runtime's reactor (see
    /// [`crate::background::rehome_tcp`]). Only streams of transports that open in the
    /// background implement it.
    fn rehome(&mut self) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this pool stream cannot move between runtimes",
        ))
    }
}

/// One pool entry (or the control channel, which is entry `00000000`).
pub enum Entry {
    /// A bare TCP socket (TCP pool with tls 0): the relay splices it.
    Tcp(TcpStream),
    /// Any other stream a transport makes.
    Stream(Box<dyn PoolStream>),
}

impl Entry {
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Entry::Tcp(s) => s.peer_addr(),
            Entry::Stream(s) => s.peer_addr(),
        }
    }

    /// See [`PoolStream::peer_cert_der`].
    pub fn peer_cert_der(&self) -> Option<Vec<u8>> {
        match self {
            Entry::Tcp(_) => None,
            Entry::Stream(s) => s.peer_cert_der(),
        }
    }

    /// Moves an entry opened on the background runtime to the runtime of `home` (see
    /// [`crate::background`]): its sockets are registered with that runtime's reactor.
    pub fn move_to(&mut self, home: &tokio::runtime::Handle) -> io::Result<()> {
        let _home = home.enter();
        match self {
            Entry::Tcp(s) => crate::background::rehome_tcp(s),
            Entry::Stream(s) => s.rehome(),
        }
    }

    /// See [`PoolStream::peer_closed`].
    pub fn peer_closed(&mut self) -> bool {
        match self {
            Entry::Tcp(s) => tcp_peer_closed(s),
            Entry::Stream(s) => s.peer_closed(),
        }
    }
}

/// Liveness of an idle TCP socket: a non-blocking peek sees EOF or an error. Pending data
/// means alive. For transports whose entries sit on a TCP socket of their own.
pub fn tcp_peer_closed(s: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // tokio sockets are non-blocking, so this peek never waits.
    match socket2::SockRef::from(s).peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

impl AsyncRead for Entry {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Entry::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Entry::Stream(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Entry {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Entry::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Entry::Stream(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Entry::Tcp(s) => Pin::new(s).poll_flush(cx),
            Entry::Stream(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Entry::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Entry::Stream(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl RelayIo for Entry {
    fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            Entry::Tcp(s) => Some(s),
            Entry::Stream(_) => None,
        }
    }
}

#[derive(Default)]
struct State {
    idle: HashMap<PoolId, Entry>,
    /// Arrival order of the ids in `idle`, with when each arrived (may hold ids already
    /// taken; skipped lazily).
    order: VecDeque<(PoolId, Instant)>,
    closed: bool,
    /// While a refresh waits for the peer to confirm its flush (see [`Pool::fence`]): no
    /// entry is handed out, and the entries that arrive are held back.
    fenced: bool,
    /// The most entries that were idle at once in this session: about the capacity the
    /// client keeps (the server never learns it otherwise).
    peak: usize,
}

pub struct Pool {
    state: Mutex<State>,
    arrived: Notify,
    /// Signalled whenever an entry leaves the pool, so the client's manager can top it
    /// up before its next timed round.
    taken: Notify,
    /// Idle entries allowed at once: the server's `max` (the client learns it in the
    /// handshake).
    max: usize,
    errors: AtomicU32,
    /// Set once `00000000` has been taken as the control channel: a second entry with that
    /// id in the same session (a restarted peer's first entry) must never become a data
    /// entry, or user bytes would land on the peer's control channel.
    control_taken: std::sync::atomic::AtomicBool,
    /// Set once an id has been handed out: the first one of a session is `00000000`.
    first_given: std::sync::atomic::AtomicBool,
}

/// Why an entry was not taken into the pool.
#[derive(Debug, PartialEq, Eq)]
pub enum PutError {
    Full,
    Duplicate,
    Closed,
}

impl Pool {
    pub fn new(max: usize) -> Self {
        Pool {
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            taken: Notify::new(),
            max: max.max(1),
            errors: AtomicU32::new(0),
            control_taken: std::sync::atomic::AtomicBool::new(false),
            first_given: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters (each operation is one insert or remove), so recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Idle entries now (the `pool` figure).
    pub fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }

    /// Whether at least half of `capacity` entries are idle (and one at least): then a
    /// replacement for a taken entry is awaited by nobody and may be opened or admitted at
    /// a low priority (see [`crate::background`]). The one rule for both ends: the client
    /// asks with its capacity, the server with [`well_stocked`](Self::well_stocked).
    pub fn stocked(&self, capacity: usize) -> bool {
        stocked(self.idle_count(), capacity)
    }

    /// [`stocked`](Self::stocked) for the server, which never learns the client's
    /// capacity: measured against the most entries this session has held at once, and only
    /// while fewer are idle (users took some; the first fill is never stocked).
    pub fn well_stocked(&self) -> bool {
        let st = self.lock();
        st.idle.len() < st.peak && stocked(st.idle.len(), st.peak)
    }

    /// Whether the pool holds `max` idle entries: a new entry is refused (REFERENCE.md 4.1;
    /// entries in use do not count).
    pub fn is_full(&self) -> bool {
        self.idle_count() >= self.max
    }

    /// Whether the session's control channel is up: `00000000` has been taken and the
    /// session has not ended. Pool connections of a Go client are authenticated only by its IP,
    /// so a transport admits none but the one that becomes the control channel while this
    /// is false (before the control channel, and once the session is over).
    pub fn control_up(&self) -> bool {
        self.control_taken.load(Ordering::Acquire) && !self.lock().closed
    }

    /// Whether a transport should go on with a new pool connection at all (before spending
    /// a TLS handshake on it): the session's first one, or any while the control channel is
    /// up (see [`Pool::control_up`]).
    pub fn admits(&self) -> bool {
        !self.first_given.load(Ordering::Acquire) || self.control_up()
    }

    /// The id for a pool connection a transport has accepted (REFERENCE.md 4.1), the one
    /// place the rule lives for every transport: `00000000` for the session's first (it
    /// becomes the control channel), a random one after that while the control channel is
    /// up, and None otherwise: a Go client's pool connections are authenticated only by its IP,
    /// so none but the control channel is admitted while no control channel is up.
    pub fn assign_id(&self) -> Option<PoolId> {
        if !self.first_given.swap(true, Ordering::AcqRel) {
            return Some(PoolId::CONTROL);
        }
        self.control_up().then(|| PoolId(rand::random()))
    }

    /// As [`Pool::assign_id`], but an entry that arrives before the control channel is taken
    /// waits for it (up to `limit`) instead of being refused. For multiplexed transports
    /// whose peers give up the whole connection when one stream's id exchange fails (the
    /// reference's QUIC client does): refusing there would also drop the control stream.
    pub async fn assign_id_waiting(&self, limit: Duration) -> Option<PoolId> {
        if !self.first_given.swap(true, Ordering::AcqRel) {
            return Some(PoolId::CONTROL);
        }
        let deadline = Instant::now() + limit;
        while !self.control_up() {
            if self.lock().closed || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Some(PoolId(rand::random()))
    }

    /// Whether `id` is idle in the pool now.
    pub fn contains(&self, id: PoolId) -> bool {
        self.lock().idle.contains_key(&id)
    }

    /// Adds a ready entry; on refusal the connection is handed back to be closed.
    pub fn put(&self, id: PoolId, conn: Entry) -> Result<(), (PutError, Entry)> {
        let mut st = self.lock();
        if st.closed {
            return Err((PutError::Closed, conn));
        }
        if st.idle.len() >= self.max {
            return Err((PutError::Full, conn));
        }
        if st.idle.contains_key(&id)
            || (id == PoolId::CONTROL && self.control_taken.load(Ordering::Relaxed))
        {
            return Err((PutError::Duplicate, conn));
        }
        st.idle.insert(id, conn);
        st.order.push_back((id, Instant::now()));
        st.peak = st.peak.max(st.idle.len());
        drop(st);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Takes the oldest idle entry that is still alive (not in `exclude`), waiting up to
    /// `timeout` for one.
    pub async fn incoming_get(&self, timeout: Duration) -> Option<(PoolId, Entry)> {
        self.get_with(timeout, |st| take_oldest(st, &[])).await
    }

    /// Like [`incoming_get`](Self::incoming_get) but never returns an id in `exclude`.
    pub async fn incoming_get_excluding(
        &self,
        timeout: Duration,
        exclude: &[PoolId],
    ) -> Option<(PoolId, Entry)> {
        self.get_with(timeout, |st| take_oldest(st, exclude)).await
    }

    /// Takes the entry named `id`, waiting up to `timeout` for it to arrive.
    pub async fn outgoing_get(&self, id: PoolId, timeout: Duration) -> Option<Entry> {
        let got = self
            .get_with(timeout, |st| take_by_id(st, id).map(|c| (id, c)))
            .await
            .map(|(_, c)| c);
        self.taken_by_id(id, got)
    }

    /// Notes that the entry named `id` was taken by name (the control channel's id marks
    /// the control channel up).
    fn taken_by_id(&self, id: PoolId, got: Option<Entry>) -> Option<Entry> {
        if got.is_some() && id == PoolId::CONTROL {
            self.control_taken.store(true, Ordering::Release);
        }
        got
    }

    async fn get_with(
        &self,
        timeout: Duration,
        mut take: impl FnMut(&mut State) -> Option<(PoolId, Entry)>,
    ) -> Option<(PoolId, Entry)> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            // Register before looking, so a put between the look and the wait wakes us.
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                if let Some(found) = take(&mut st) {
                    drop(st);
                    self.taken.notify_one();
                    return Some(found);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Waits until an entry has been taken since the last call (a permit is kept if no one
    /// was waiting).
    pub async fn entry_taken(&self) {
        self.taken.notified().await;
    }

    /// Closes every idle entry (in-use entries and the control channel are not here).
    pub fn flush(&self) {
        self.drain();
        // The client's manager refills at once instead of at its next timed round.
        self.taken.notify_one();
    }

    fn drain(&self) {
        let drained: Vec<Entry> = {
            let mut st = self.lock();
            st.order.clear();
            st.idle.drain().map(|(_, c)| c).collect()
        };
        drop(drained);
    }

    /// Whether the session of this pool is over ([`Pool::close`]).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// How long the oldest idle entry has been waiting (None when the pool is empty).
    pub fn oldest_idle_age(&self) -> Option<Duration> {
        let st = self.lock();
        st.order
            .iter()
            .find(|(id, _)| st.idle.contains_key(id))
            .map(|(_, at)| at.elapsed())
    }

    /// Starts a refresh on the side that hands entries out: closes every idle entry (as
    /// [`Pool::flush`]) and hands none out until [`Pool::unfence`]; entries that arrive in
    /// between are held back. The caller sends `flush` and then waits for the peer's answer
    /// to a ping sent after it, so no entry is handed out that the peer may be flushing.
    pub fn fence(&self) {
        self.lock().fenced = true;
        self.flush();
    }

    /// Ends a refresh once the peer has answered. An entry that arrived while it was on
    /// may have been in the peer's pool when the peer read the `flush`: the peer closed it
    /// then, before it wrote its pong (ours drops them as it reads the signal, and on a
    /// multiplexed transport the stream resets travel ahead of the pong on the same
    /// connection), so those show as closed now and are dropped here. The others are the
    /// peer's fresh ones and are kept: closing them too would leave the peer holding dead
    /// entries it still counts as idle, and the pool empty until it notices. An entry
    /// whose close is still on its way is caught at hand-out (see `take_oldest`).
    pub fn unfence(&self) {
        {
            let mut st = self.lock();
            if !st.fenced {
                return;
            }
            st.fenced = false;
        }
        self.prune_closed();
        self.arrived.notify_waiters();
    }

    /// Closes the idle entries whose peer has closed them, so they do not hold a place in
    /// the pool. Only for the side that hands entries out, after the certificate check: a
    /// closed entry may still be named by a signal on its way (the peer closes its
    /// `verify` entry right after naming it; the outgoing side's entries are all named by
    /// `tcp`/`udp` signals, and a short user's is closed right after). Returns how many.
    pub fn prune_closed(&self) -> usize {
        let dead: Vec<Entry> = {
            let mut st = self.lock();
            let ids: Vec<PoolId> = st
                .idle
                .iter_mut()
                .filter_map(|(id, e)| e.peer_closed().then_some(*id))
                .collect();
            ids.iter()
                .filter_map(|id| take_by_id(&mut st, *id))
                .collect()
        };
        let n = dead.len();
        drop(dead);
        if n > 0 {
            self.taken.notify_one();
        }
        n
    }

    /// Takes the entry named `id` if it is idle now, without waiting: the outgoing side
    /// takes a signal's entry as it reads the signal, so a `flush` read after it cannot
    /// close that entry first.
    pub fn try_take(&self, id: PoolId) -> Option<Entry> {
        let got = take_by_id(&mut self.lock(), id);
        if got.is_some() {
            self.taken.notify_one();
        }
        self.taken_by_id(id, got)
    }

    /// Flushes and refuses further entries; wakes every waiter (they get None).
    pub fn close(&self) {
        self.lock().closed = true;
        // No refill wake-up: a manager woken now would open entries for a session that is
        // over, and those could reach the server's next session ahead of the client's own.
        self.drain();
        self.arrived.notify_waiters();
    }

    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error_count(&self) -> u32 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn reset_errors(&self) {
        self.errors.store(0, Ordering::Relaxed);
    }
}

/// Removes the entry `id`. Its id stays in `order` (removing it there would be a scan), so
/// `order` is compacted once it holds more than twice the idle ids plus a margin: the
/// outgoing side, which only ever takes by id, keeps memory proportional to what is idle,
/// not to how many entries a session has used.
/// See [`Pool::stocked`].
pub(crate) fn stocked(idle: usize, capacity: usize) -> bool {
    idle > 0 && idle * 2 >= capacity
}

fn take_by_id(st: &mut State, id: PoolId) -> Option<Entry> {
    let conn = st.idle.remove(&id)?;
    if st.order.len() > 2 * st.idle.len() + ORDER_SLACK {
        let State { idle, order, .. } = st;
        order.retain(|(i, _)| idle.contains_key(i));
    }
    Some(conn)
}

/// Stale ids `order` may hold beyond twice the idle count before it is compacted.
const ORDER_SLACK: usize = 64;

/// Pops the oldest idle id not in `exclude`, skipping (and closing) entries whose peer has
/// already closed them: handing those out would only cost the peer a failed lookup.
fn take_oldest(st: &mut State, exclude: &[PoolId]) -> Option<(PoolId, Entry)> {
    if st.fenced {
        return None;
    }
    let mut i = 0;
    while i < st.order.len() {
        let (id, _) = st.order[i];
        if exclude.contains(&id) {
            i += 1;
            continue;
        }
        let _ = st.order.remove(i);
        if let Some(mut conn) = st.idle.remove(&id) {
            if conn.peer_closed() {
                continue;
            }
            return Some((id, conn));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn conn() -> (Entry, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(a), l.accept());
        (Entry::Tcp(c.expect("connect")), s.expect("accept").0)
    }

    #[tokio::test]
    async fn taking_by_id_keeps_the_bookkeeping_bounded() {
        let pool = Pool::new(16);
        let mut peers = Vec::new();
        for n in 1..=2000u32 {
            let id = PoolId(n.to_be_bytes());
            let (e, peer) = conn().await;
            peers.push(peer);
            assert!(pool.put(id, e).is_ok());
            assert!(pool
                .outgoing_get(id, Duration::from_millis(10))
                .await
                .is_some());
            if peers.len() > 8 {
                peers.clear();
            }
            let st = pool.lock();
            assert!(
                st.order.len() <= 2 * st.idle.len() + ORDER_SLACK + 1,
                "{} ids kept for {} idle entries after {n} uses",
                st.order.len(),
                st.idle.len()
            );
        }
    }

    /// Stocked: fewer than the most entries held at once (the server's estimate of the
    /// client's capacity) but at least half of them are idle; never during the first fill
    /// or when empty.
    #[tokio::test]
    async fn stocked_is_half_of_the_peak() {
        let pool = Pool::new(16);
        assert!(!pool.well_stocked(), "empty");
        let mut keep = Vec::new();
        for n in 1..=4u8 {
            let (c, far) = conn().await;
            keep.push(far);
            assert!(pool.put(PoolId([0, 0, 0, n]), c).is_ok());
        }
        assert!(!pool.well_stocked(), "4 of a peak of 4: the first fill");
        assert!(pool.incoming_get(Duration::from_millis(10)).await.is_some());
        assert!(pool.well_stocked(), "3 of a peak of 4");
        assert!(pool.incoming_get(Duration::from_millis(10)).await.is_some());
        assert!(pool.well_stocked(), "2 of a peak of 4");
        assert!(pool.incoming_get(Duration::from_millis(10)).await.is_some());
        assert!(!pool.well_stocked(), "1 of a peak of 4");
        let (c, far) = conn().await;
        keep.push(far);
        assert!(pool.put(PoolId([0, 0, 0, 9]), c).is_ok());
        assert!(pool.well_stocked(), "2 of a peak of 4 again");
    }

    #[tokio::test]
    async fn control_is_up_from_its_taking_to_the_end_of_the_session() {
        let pool = Pool::new(4);
        assert!(!pool.control_up(), "no control channel yet");
        let (c, _far) = conn().await;
        assert!(pool.put(PoolId::CONTROL, c).is_ok());
        assert!(
            !pool.control_up(),
            "arrived, not yet taken as the control channel"
        );
        let _control = pool
            .outgoing_get(PoolId::CONTROL, Duration::from_secs(5))
            .await
            .expect("the control entry");
        assert!(pool.control_up());
        pool.close();
        assert!(!pool.control_up(), "the session is over");
    }

    #[tokio::test]
    async fn incoming_takes_oldest_outgoing_waits_for_its_id() {
        let pool = std::sync::Arc::new(Pool::new(4));
        let mut keep = Vec::new();
        for i in 1..=2u8 {
            let (c, far) = conn().await;
            keep.push(far);
            assert!(pool.put(PoolId([i; 4]), c).is_ok());
        }
        let (id, _c) = pool
            .incoming_get(Duration::from_millis(10))
            .await
            .expect("one idle");
        assert_eq!(id, PoolId([1; 4]));
        // The named id arrives later: outgoing_get waits for it.
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move {
            p2.outgoing_get(PoolId([9; 4]), Duration::from_secs(5))
                .await
                .is_some()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (c, far) = conn().await;
        keep.push(far);
        assert!(pool.put(PoolId([9; 4]), c).is_ok());
        assert!(waiter.await.expect("join"));
        assert!(pool
            .outgoing_get(PoolId([7; 4]), Duration::from_millis(10))
            .await
            .is_none());
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn full_duplicate_and_dead_entries() {
        let pool = Pool::new(1);
        let (c1, far1) = conn().await;
        let (c2, _far2) = conn().await;
        assert!(pool.put(PoolId([1; 4]), c1).is_ok());
        assert_eq!(
            pool.put(PoolId([2; 4]), c2).err().map(|e| e.0),
            Some(PutError::Full)
        );
        // The peer of the idle entry goes away: incoming_get skips it.
        drop(far1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.incoming_get(Duration::from_millis(10)).await.is_none());
        assert_eq!(pool.idle_count(), 0);
        let (c3, _far3) = conn().await;
        let (c4, _far4) = conn().await;
        assert!(pool.put(PoolId([3; 4]), c3).is_ok());
        pool.flush();
        assert!(
            pool.put(PoolId([3; 4]), c4).is_ok(),
            "flush empties the pool"
        );
        pool.close();
        let (c5, _far5) = conn().await;
        assert_eq!(
            pool.put(PoolId([5; 4]), c5).err().map(|e| e.0),
            Some(PutError::Closed)
        );
    }

    /// A refresh: nothing is handed out while fenced; of the entries that arrived meanwhile,
    /// the one the peer closed is dropped at the end and the live one is handed out. The
    /// outgoing side's idle entries whose peer closed them are pruned.
    #[tokio::test]
    async fn a_refresh_hands_out_nothing_until_the_peer_answered() {
        use tokio::io::AsyncReadExt as _;
        let pool = Pool::new(8);
        let (old, mut far_old) = conn().await;
        assert!(pool.put(PoolId([1; 4]), old).is_ok());
        assert!(pool.oldest_idle_age().is_some());
        pool.fence();
        assert_eq!(pool.idle_count(), 0, "the fence closes the idle entries");
        let mut b = [0u8; 1];
        assert_eq!(far_old.read(&mut b).await.expect("eof"), 0);
        let (during, mut far_during) = conn().await;
        assert!(pool.put(PoolId([2; 4]), during).is_ok());
        assert!(pool.incoming_get(Duration::from_millis(30)).await.is_none());
        let (flushed, far_flushed) = conn().await;
        assert!(pool.put(PoolId([3; 4]), flushed).is_ok());
        // The peer flushed this one before answering: its close has arrived.
        drop(far_flushed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        pool.unfence();
        assert_eq!(
            pool.idle_count(),
            1,
            "the closed one is dropped, the fresh one kept"
        );
        let (id, _) = pool
            .incoming_get(Duration::from_millis(100))
            .await
            .expect("served again");
        assert_eq!(id, PoolId([2; 4]));
        let _ = &mut far_during;

        let (a, far_a) = conn().await;
        let (b2, _far_b) = conn().await;
        assert!(pool.put(PoolId([4; 4]), a).is_ok());
        assert!(pool.put(PoolId([5; 4]), b2).is_ok());
        drop(far_a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.prune_closed(), 1);
        assert!(pool.try_take(PoolId([5; 4])).is_some());
        assert!(pool.try_take(PoolId([4; 4])).is_none());
    }

    /// A flush wakes the client's manager to refill at once; closing the pool at the end of
    /// a session does not (a manager woken then would open entries for a session that is
    /// over, which could reach the server's next session ahead of the client's own).
    #[tokio::test]
    async fn a_flush_wakes_the_refill_a_close_does_not() {
        let pool = Pool::new(4);
        let (c, _far) = conn().await;
        assert!(pool.put(PoolId([1; 4]), c).is_ok());
        pool.flush();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), pool.entry_taken())
                .await
                .is_ok(),
            "a flush asks for a refill"
        );
        let (c, _far) = conn().await;
        assert!(pool.put(PoolId([2; 4]), c).is_ok());
        pool.close();
        assert!(pool.is_closed());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), pool.entry_taken())
                .await
                .is_err(),
            "closing asks for no refill"
        );
    }
}
