//! The hot path: moves bytes both ways between a user/target-side connection (side A, the
//! counted one) and the other end of a relay (a pool entry, or the target in single-end
//! mode), until both directions have ended.
//!
//! - TrafficCounters: bytes read from A go to `rx`, bytes written to A go to `tx` (REFERENCE.md
//!   4.6 counts exactly those sockets). One relaxed atomic add per chunk; no lock.
//! - Half-close: when one direction reads EOF, the destination's write side is shut down
//!   (TCP FIN, or TLS close_notify + FIN) and the other direction keeps flowing. The
//!   reference fully closes TLS entries here and so cuts the answer short; we do not.
//! - Zero copy: when both ends are plain TCP sockets the bytes go socket -> pipe -> socket
//!   with splice(2) and never enter user space; otherwise a buffered copy with one buffer
//!   per direction. That buffer exists only while bytes are moving: it is allocated when a
//!   direction becomes readable and given back when the direction is drained and its
//!   source has nothing more, so an idle held connection holds no copy buffer.
//! - Policies: `read` (idle timeout per direction) and `rate` (shared token buckets) are
//!   consulted per chunk through [`RelayPolicy`] without allocation or lock.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::policy::RelayPolicy;

/// Something the relay can move bytes through. `as_tcp` exposes a plain TCP socket (no
/// TLS or framing on top) so that the relay can splice.
pub trait RelayIo: AsyncRead + AsyncWrite + Unpin + Send {
    fn as_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl RelayIo for TcpStream {
    fn as_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

/// The counters of side A.
#[derive(Clone, Copy)]
pub struct TrafficCounters<'a> {
    /// Bytes read from side A.
    pub rx: &'a AtomicU64,
    /// Bytes written to side A.
    pub tx: &'a AtomicU64,
}

/// How a relay ended: bytes each way and whether a direction ended by the idle timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub timed_out: bool,
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes out, {} bytes back", self.a_to_b, self.b_to_a)?;
        if self.timed_out {
            f.write_str(" (read timeout)")?;
        }
        Ok(())
    }
}

/// Relays between `a` (counted) and `b` until both directions end. An I/O error in either
/// direction ends both (the connections are closed by the caller dropping them).
pub async fn relay<A: RelayIo, B: RelayIo>(
    a: &mut A,
    b: &mut B,
    counters: TrafficCounters<'_>,
    policy: &RelayPolicy,
    buf_size: usize,
) -> io::Result<Totals> {
    if let (Some(ta), Some(tb)) = (a.as_tcp(), b.as_tcp()) {
        return splice_relay(ta, tb, counters, policy).await;
    }
    buffered_relay(a, b, counters, policy, buf_size).await
}

// ---------------------------------------------------------------------------------------
// Buffered copy (TLS and every other transport).

/// One direction of a buffered relay.
struct Pump {
    /// The copy buffer while bytes are moving (see the module comment); `size` long.
    buf: Option<Box<[u8]>>,
    size: usize,
    /// What `size` may grow to while a bulk transfer runs (see [`BULK_BUF`]).
    max_size: usize,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    timed_out: bool,
    need_flush: bool,
    total: u64,
    /// Rate-limit pause, allocated the first time one is needed.
    pause: Option<Pin<Box<Sleep>>>,
    pausing: bool,
    /// Idle timer, only with a `read` timeout; re-armed lazily from `last_read`.
    idle: Option<Pin<Box<Sleep>>>,
    last_read: Instant,
}

/// The copy buffer a direction grows to while every read fills it (a bulk transfer): four
/// full TLS records, so one read and one write (a single writev of four records on TLS;
/// one WebSocket message or HTTP/2 data burst) move what took four of each. Measured on
/// TLS: 1.4-1.5x the throughput of a fixed 16 KiB buffer at the same CPU (benches/RESULTS.md).
/// Small exchanges never grow it, and an idle direction holds no buffer at all.
const BULK_BUF: usize = 64 * 1024;

/// The stack buffer an idle direction reads into (see [`Pump::take_probe`]).
const PROBE_SIZE: usize = 4096;

/// Which end of the pump is side A (counted).
#[derive(Clone, Copy)]
enum Counted {
    Source,
    Destination,
}

impl Pump {
    fn new(buf_size: usize, policy: &RelayPolicy) -> Self {
        let now = Instant::now();
        Pump {
            buf: None,
            size: buf_size.max(1024),
            max_size: buf_size.max(BULK_BUF),
            pos: 0,
            cap: 0,
            eof: false,
            done: false,
            timed_out: false,
            need_flush: false,
            total: 0,
            pause: None,
            pausing: false,
            idle: policy
                .read_timeout
                .map(|t| Box::pin(tokio::time::sleep_until(now + t))),
            last_read: now,
        }
    }

    fn start_pause(&mut self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let deadline = Instant::now() + d;
        match &mut self.pause {
            Some(s) => s.as_mut().reset(deadline),
            None => self.pause = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.pausing = true;
    }

    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        counted: Counted,
        counters: TrafficCounters<'_>,
        policy: &RelayPolicy,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.pausing {
                if let Some(p) = &mut self.pause {
                    ready!(p.as_mut().poll(cx));
                }
                self.pausing = false;
            }
            while self.pos < self.cap {
                let Some(buf) = &self.buf else {
                    return Poll::Ready(Err(io::Error::other("relay buffer missing")));
                };
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &buf[self.pos..self.cap]))?;
                self.wrote(n, counted, counters)?;
                self.pos += n;
            }
            if self.eof {
                ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                // Half-close: the peer sees EOF in this direction only. A peer that has
                // already gone makes shutdown fail; the direction is over either way.
                let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            // Without a buffer (the direction was idle) read into a small stack buffer, so
            // a direction that is polled but has nothing costs no allocation. Under a rate
            // limit one read takes at most a small chunk, so a burst of queued bytes is
            // paced instead of passed on at once.
            let limit = policy.rate.as_ref().map_or(usize::MAX, |rl| rl.chunk());
            let mut probe = [0u8; PROBE_SIZE];
            if self.buf.as_ref().is_some_and(|b| b.len() < self.size) {
                // Grown after a full read (the old bytes are all written by now).
                self.buf = Some(vec![0u8; self.size].into_boxed_slice());
            }
            let probing = self.buf.is_none();
            let mut rb = ReadBuf::new(match &mut self.buf {
                Some(buf) => {
                    let want = buf.len().min(limit);
                    &mut buf[..want]
                }
                None => {
                    let want = probe.len().min(limit);
                    &mut probe[..want]
                }
            });
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Everything read has been written: the buffer holds nothing, so an
                    // idle direction gives it back (the next burst allocates a new one).
                    self.buf = None;
                    if self.need_flush {
                        ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    if let (Some(idle), Some(limit)) = (&mut self.idle, policy.read_timeout) {
                        // The timer was armed at the first read; data since then only moved
                        // `last_read`, so re-arm from there instead of on every chunk.
                        while idle.as_mut().poll(cx).is_ready() {
                            let deadline = self.last_read + limit;
                            if deadline <= Instant::now() {
                                self.timed_out = true;
                                self.eof = true;
                                break;
                            }
                            idle.as_mut().reset(deadline);
                        }
                        if self.eof {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
                // A TLS peer that closes without close_notify (the reference does when
                // it tears a relay down) has still finished sending: treat it as EOF.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.eof = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                        continue;
                    }
                    self.pos = 0;
                    self.cap = n;
                    if !probing
                        && limit == usize::MAX
                        && n == rb.capacity()
                        && self.size < self.max_size
                    {
                        // A full read: a bulk transfer. The buffer is replaced by a
                        // larger one before the next read, once these bytes are written.
                        self.size = (self.size * 2).min(self.max_size);
                    }
                    if self.idle.is_some() {
                        self.last_read = Instant::now();
                    }
                    let mut pause = Duration::ZERO;
                    match counted {
                        Counted::Source => {
                            counters.rx.fetch_add(n as u64, Ordering::Relaxed);
                            if let Some(rl) = &policy.rate {
                                pause = rl.charge_read(n);
                            }
                        }
                        Counted::Destination => {
                            if let Some(rl) = &policy.rate {
                                pause = rl.charge_write(n);
                            }
                        }
                    }
                    self.start_pause(pause);
                    if probing {
                        self.take_probe(cx, &probe[..n], dst, counted, counters)?;
                    }
                }
            }
        }
    }

    /// Counts `n` bytes just written to the destination.
    fn wrote(
        &mut self,
        n: usize,
        counted: Counted,
        counters: TrafficCounters<'_>,
    ) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.total += n as u64;
        self.need_flush = true;
        if let Counted::Destination = counted {
            counters.tx.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Bytes read into the stack probe: written straight on when the destination takes
    /// them all (the common case for small messages: no allocation at all), else what is
    /// left moves to a heap buffer, as does a full probe (a burst is starting).
    fn take_probe<W>(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        dst: &mut W,
        counted: Counted,
        counters: TrafficCounters<'_>,
    ) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut sent = 0;
        if !self.pausing && data.len() < PROBE_SIZE {
            if let Poll::Ready(r) = Pin::new(&mut *dst).poll_write(cx, data) {
                sent = r?;
                self.wrote(sent, counted, counters)?;
            }
        }
        let rest = &data[sent..];
        if rest.is_empty() {
            self.pos = 0;
            self.cap = 0;
        } else {
            let mut buf = vec![0u8; self.size.max(rest.len())].into_boxed_slice();
            buf[..rest.len()].copy_from_slice(rest);
            self.buf = Some(buf);
            self.pos = 0;
            self.cap = rest.len();
        }
        Ok(())
    }
}

async fn buffered_relay<A: RelayIo, B: RelayIo>(
    a: &mut A,
    b: &mut B,
    counters: TrafficCounters<'_>,
    policy: &RelayPolicy,
    buf_size: usize,
) -> io::Result<Totals> {
    let mut ab = Pump::new(buf_size, policy);
    let mut ba = Pump::new(buf_size, policy);
    std::future::poll_fn(|cx| {
        if !ab.done {
            if let Poll::Ready(Err(e)) =
                ab.poll_pump(cx, &mut *a, &mut *b, Counted::Source, counters, policy)
            {
                return Poll::Ready(Err(e));
            }
        }
        if !ba.done {
            if let Poll::Ready(Err(e)) =
                ba.poll_pump(cx, &mut *b, &mut *a, Counted::Destination, counters, policy)
            {
                return Poll::Ready(Err(e));
            }
        }
        if ab.done && ba.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await?;
    Ok(Totals {
        a_to_b: ab.total,
        b_to_a: ba.total,
        timed_out: ab.timed_out || ba.timed_out,
    })
}

// ---------------------------------------------------------------------------------------
// splice(2) between two plain TCP sockets.

/// Pipe capacity asked for (the usual unprivileged maximum): fewer, larger splices.
/// The pages are the kernel's and only exist while bytes are in flight.
const PIPE_SIZE: usize = 1 << 20;
/// What a pipe holds when the kernel refuses the larger size.
const DEFAULT_PIPE_SIZE: usize = 1 << 16;

/// A pipe for one direction and how many bytes it holds.
fn new_pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
    let size = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_PIPE_SIZE);
    Ok((r, w, size))
}

async fn splice_relay(
    a: &TcpStream,
    b: &TcpStream,
    counters: TrafficCounters<'_>,
    policy: &RelayPolicy,
) -> io::Result<Totals> {
    let ab = splice_dir(a, b, Some(counters.rx), None, policy, true);
    let ba = splice_dir(b, a, None, Some(counters.tx), policy, false);
    let ((a_to_b, t1), (b_to_a, t2)) = tokio::try_join!(ab, ba)?;
    Ok(Totals {
        a_to_b,
        b_to_a,
        timed_out: t1 || t2,
    })
}

/// What a read without a pipe may take; a read that fills it starts a burst, and the pipe
/// is made for the rest.
const SMALL_READ: usize = 16 * 1024;

/// The outcome of [`copy_small`].
struct Small {
    /// Bytes read (0 at EOF).
    read: usize,
    /// Bytes the destination took at once.
    written: usize,
    /// All bytes read, when the destination did not take them all at once (rare: its
    /// send buffer is full); the tail from `written` on is still to be sent.
    rest: Option<Vec<u8>>,
}

/// Reads what `src` has (up to [`SMALL_READ`]) into a stack buffer and writes it straight
/// to `dst`: two syscalls instead of a pipe, two fcntls and two splices, for the small
/// messages most connections start with (and all of a request/response exchange). Not
/// async, so the buffer never lives in the relay's future. WouldBlock when `src` had
/// nothing after all. Reads at most `max` bytes (the rate limit's chunk).
fn copy_small(src: &TcpStream, dst: &TcpStream, max: usize) -> io::Result<Small> {
    let mut buf = [0u8; SMALL_READ];
    let want = SMALL_READ.min(max);
    let read = src.try_read(&mut buf[..want])?;
    if read == 0 {
        return Ok(Small {
            read,
            written: 0,
            rest: None,
        });
    }
    let written = match dst.try_write(&buf[..read]) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    let rest = (written < read).then(|| buf[..read].to_vec());
    Ok(Small {
        read,
        written,
        rest,
    })
}

fn splice_flags() -> nix::fcntl::SpliceFFlags {
    nix::fcntl::SpliceFFlags::SPLICE_F_MOVE | nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Waits until `s` is readable, or the idle timeout passes (returns false then).
async fn wait_readable(s: &TcpStream, idle: Option<Duration>) -> io::Result<bool> {
    match idle {
        None => s.readable().await.map(|_| true),
        Some(t) => match tokio::time::timeout(t, s.readable()).await {
            Ok(r) => r.map(|_| true),
            Err(_) => Ok(false),
        },
    }
}

/// One direction: src -> pipe -> dst until EOF on src, then shut down dst's write side.
/// Returns bytes moved and whether it ended by the idle timeout.
async fn splice_dir(
    src: &TcpStream,
    dst: &TcpStream,
    rx: Option<&AtomicU64>,
    tx: Option<&AtomicU64>,
    policy: &RelayPolicy,
    src_counted: bool,
) -> io::Result<(u64, bool)> {
    // Created for the first burst (see [`copy_small`]): an idle held connection, or one
    // that only exchanges small messages, costs no pipe.
    let mut pipe: Option<(OwnedFd, OwnedFd, usize)> = None;
    // Under a rate limit one splice takes at most a small chunk (see policy::rate).
    let limit = policy.rate.as_ref().map_or(usize::MAX, |rl| rl.chunk());
    let mut total = 0u64;
    let mut timed_out = false;
    loop {
        // Fill the (empty) pipe from the source, or move a small read straight on.
        let mut small: Option<Small> = None;
        let n = loop {
            if pipe.is_none() {
                if !wait_readable(src, policy.read_timeout).await? {
                    timed_out = true;
                    break 0;
                }
                match copy_small(src, dst, limit) {
                    Ok(s) => {
                        let n = s.read;
                        if n == SMALL_READ {
                            pipe = Some(new_pipe()?);
                        }
                        small = Some(s);
                        break n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            let Some((_, pw, size)) = &pipe else {
                return Err(io::Error::other("relay pipe missing"));
            };
            match src.try_io(Interest::READABLE, || {
                let want = (*size).min(limit);
                nix::fcntl::splice(src.as_fd(), None, pw.as_fd(), None, want, splice_flags())
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_readable(src, policy.read_timeout).await? {
                        timed_out = true;
                        break 0;
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            break;
        }
        if let Some(rx) = rx {
            rx.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(rl) = &policy.rate {
            let pause = if src_counted {
                rl.charge_read(n)
            } else {
                rl.charge_write(n)
            };
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        if let Some(s) = small {
            // Already written: `s.written` bytes; what the socket did not take waits in
            // `s.rest` for it to become writable.
            let mut done = s.written;
            total += done as u64;
            if let Some(rest) = s.rest {
                while done < rest.len() {
                    dst.writable().await?;
                    match dst.try_write(&rest[done..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(m) => {
                            done += m;
                            total += m as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if let Some(tx) = tx {
                tx.fetch_add(n as u64, Ordering::Relaxed);
            }
            continue;
        }
        // Drain the pipe into the destination.
        let Some((pr, _, _)) = &pipe else {
            return Err(io::Error::other("relay pipe missing"));
        };
        let mut left = n;
        while left > 0 {
            match dst.try_io(Interest::WRITABLE, || {
                nix::fcntl::splice(pr.as_fd(), None, dst.as_fd(), None, left, splice_flags())
                    .map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    left -= m;
                    total += m as u64;
                    if let Some(tx) = tx {
                        tx.fetch_add(m as u64, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dst.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    // Half-close; a peer that already went away makes this fail harmlessly.
    let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
    Ok((total, timed_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A pair of connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    /// Wraps a TcpStream so the relay cannot see it is TCP: forces the buffered path.
    struct Opaque(TcpStream);
    impl AsyncRead for Opaque {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    impl AsyncWrite for Opaque {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
    impl RelayIo for Opaque {}

    /// Sends `payload` from the user end, half-closes, and checks the echo comes back in
    /// full after the half-close (the other direction must survive it).
    async fn half_close_echo(opaque: bool) {
        let (mut user, a) = pair().await;
        let (b, mut far) = pair().await;
        let rx = AtomicU64::new(0);
        let tx = AtomicU64::new(0);
        let policy = RelayPolicy::default();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let far_task = tokio::spawn(async move {
            // Read everything until EOF, then answer with it: only works if the half-close
            // did not also close the way back.
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.expect("far read");
            far.write_all(&got).await.expect("far write");
            got.len()
        });
        let user_task = tokio::spawn(async move {
            user.write_all(&payload).await.expect("user write");
            user.shutdown().await.expect("user shutdown");
            let mut back = Vec::new();
            user.read_to_end(&mut back).await.expect("user read");
            back
        });
        let totals = if opaque {
            let (mut a, mut b) = (Opaque(a), Opaque(b));
            relay(
                &mut a,
                &mut b,
                TrafficCounters { rx: &rx, tx: &tx },
                &policy,
                16384,
            )
            .await
        } else {
            let (mut a, mut b) = (a, b);
            relay(
                &mut a,
                &mut b,
                TrafficCounters { rx: &rx, tx: &tx },
                &policy,
                16384,
            )
            .await
        }
        .expect("relay");
        assert_eq!(far_task.await.expect("far"), expected.len());
        assert_eq!(user_task.await.expect("user"), expected);
        assert_eq!(totals.a_to_b, expected.len() as u64);
        assert_eq!(totals.b_to_a, expected.len() as u64);
        assert_eq!(rx.load(Ordering::Relaxed), expected.len() as u64);
        assert_eq!(tx.load(Ordering::Relaxed), expected.len() as u64);
    }

    #[tokio::test]
    async fn splice_path_half_close_and_counters() {
        half_close_echo(false).await;
    }

    #[tokio::test]
    async fn buffered_path_half_close_and_counters() {
        half_close_echo(true).await;
    }

    #[tokio::test]
    async fn idle_timeout_ends_a_silent_relay() {
        for opaque in [false, true] {
            let (_user, a) = pair().await;
            let (b, _far) = pair().await;
            let rx = AtomicU64::new(0);
            let tx = AtomicU64::new(0);
            let policy = RelayPolicy::new(Duration::from_millis(100), 0);
            let counters = TrafficCounters { rx: &rx, tx: &tx };
            let totals = if opaque {
                let (mut a, mut b) = (Opaque(a), Opaque(b));
                relay(&mut a, &mut b, counters, &policy, 4096).await
            } else {
                let (mut a, mut b) = (a, b);
                relay(&mut a, &mut b, counters, &policy, 4096).await
            }
            .expect("relay");
            assert!(totals.timed_out, "opaque={opaque}");
        }
    }

    /// A source that returns at most `chunk` bytes per read, `total` in all, then EOF.
    struct Trickle {
        chunk: usize,
        left: usize,
    }
    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.chunk.min(self.left).min(buf.remaining());
            buf.put_slice(&vec![7u8; n]);
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }

    /// Runs one pump direction from `src` into a sink until EOF; returns its buffer size.
    async fn pumped(mut src: Trickle, policy: &RelayPolicy) -> (usize, u64) {
        let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut pump = Pump::new(16 * 1024, policy);
        let mut sink = tokio::io::sink();
        std::future::poll_fn(|cx| {
            pump.poll_pump(
                cx,
                &mut src,
                &mut sink,
                Counted::Source,
                TrafficCounters { rx: &rx, tx: &tx },
                policy,
            )
        })
        .await
        .expect("pump");
        (pump.size, rx.load(Ordering::Relaxed))
    }

    /// A bulk transfer (every read fills the buffer) grows the copy buffer from 16 KiB to
    /// BULK_BUF; small reads, and any read under a rate limit, leave it as it was.
    #[tokio::test]
    async fn the_copy_buffer_grows_only_for_bulk_transfers() {
        let none = RelayPolicy::default();
        let bulk = Trickle {
            chunk: usize::MAX,
            left: 4 << 20,
        };
        assert_eq!(pumped(bulk, &none).await, (BULK_BUF, 4 << 20));
        let small = Trickle {
            chunk: 1000,
            left: 1 << 20,
        };
        assert_eq!(pumped(small, &none).await, (16 * 1024, 1 << 20));
        let limited = RelayPolicy::new(Duration::ZERO, 1 << 30);
        let bulk = Trickle {
            chunk: usize::MAX,
            left: 1 << 20,
        };
        assert_eq!(pumped(bulk, &limited).await.0, 16 * 1024);
    }
}
