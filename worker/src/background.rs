//! Work that must not delay users: opening pool entries ahead of need.
//!
//! Each user connection takes a pool entry and the pool opens a replacement at once. That
//! opening (a TCP handshake, with tls 1/2 a TLS handshake, the proof and the id, on both
//! ends) competed with the user's own first round trip for the same cores and threads: at
//! tls=1 a fresh connection through the tunnel took 531-596 us (median, 2 cores,
//! connections one after another, three runs in benches/RESULTS.md), 407-445 us with the
//! replacements opened here.
//!
//! So replacements are opened here, on a runtime of their own on one thread that the kernel
//! schedules at the lowest normal priority ([`NICE`]): they use the time users leave. The
//! client opens the entry here (its socket registered with this runtime) and the server
//! admits it here (TLS handshake, proof, id); then the entry moves to the runtime that will
//! relay it ([`rehome_tcp`]), so its readiness never waits for this thread. The server's
//! relay runtime only accepts the connection and hands it over; nothing there waits for
//! the admission. Only replacements go this way, while the pool is stocked
//! ([`crate::pool::Pool::stocked`]), and a few at a time (`PoolClient::background_opens`): a
//! drained pool is refilled in the foreground, users may be waiting for it (see the
//! client's manager and `transport::admit_connection`).
//!
//! The thread starts on first use (only the TCP and WebSocket pools, whose entries are
//! connections of their own, open here) and lives as long as the process.

use std::future::Future;
use std::io;
use std::sync::OnceLock;

use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// The nice value of the background thread: the lowest normal priority (a weight of 15
/// against 1024 when the cores are contended; all the idle time otherwise). A pool that
/// drains because this thread cannot keep up is refilled in the foreground.
pub const NICE: i32 = 19;

/// A low-priority runtime on a thread of its own.
pub struct Background {
    handle: Handle,
}

impl Background {
    /// Starts the thread and its runtime.
    pub fn start(name: &str, nice: i32) -> io::Result<Background> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                lower_priority(nice);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                if tx.send(Ok(rt.handle().clone())).is_err() {
                    return;
                }
                rt.block_on(std::future::pending::<()>());
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("the background thread ended at its start"))??;
        Ok(Background { handle })
    }

    /// Runs `fut` on this runtime and waits for its output. Dropping the returned future
    /// aborts `fut` (a pool round that is cancelled leaves nothing running here).
    pub async fn run<F>(&self, fut: F) -> io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut task = AbortOnDrop(self.handle.spawn(fut));
        (&mut task.0)
            .await
            .map_err(|e| io::Error::other(format!("background task: {e}")))
    }

    /// Blocks the thread (for tests) until the returned sender is used or dropped; returns
    /// once it is blocked.
    #[cfg(test)]
    pub async fn stall(&self) -> std::sync::mpsc::Sender<()> {
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let (blocked_tx, blocked) = tokio::sync::oneshot::channel::<()>();
        self.handle.spawn(async move {
            let _ = blocked_tx.send(());
            let _ = stuck.recv();
        });
        blocked
            .await
            .expect("the background thread took the blocking task");
        release
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// The process's background runtime, started on first use; None when no thread could be
/// started (then the caller does the work in the foreground).
pub fn shared() -> Option<&'static Background> {
    static SHARED: OnceLock<Option<Background>> = OnceLock::new();
    SHARED
        .get_or_init(|| match Background::start("np-refill", NICE) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!(
                    "No background thread for pool opens ({e}); opening in the foreground"
                );
                None
            }
        })
        .as_ref()
}

/// Moves a socket that was registered with another runtime to the current runtime's reactor
/// (the one entered: `Handle::enter` to move it to another): a duplicate of its descriptor
/// is registered here and the old registration is dropped.
pub fn rehome_tcp(s: &mut TcpStream) -> io::Result<()> {
    let dup = socket2::SockRef::from(&*s).try_clone()?;
    let fresh = TcpStream::from_std(std::net::TcpStream::from(dup))?;
    // The old stream deregisters from the background reactor and closes its descriptor;
    // the connection lives on in the duplicate.
    *s = fresh;
    Ok(())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux: a nice value is per
/// thread); never raises it (a process started niced stays as low).
fn lower_priority(nice: i32) {
    // SAFETY: gettid has no preconditions; getpriority and setpriority only read their
    // integer arguments.
    let r = unsafe {
        let tid = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, nice.max(now) as libc::c_int)
    };
    if r != 0 {
        tracing::debug!(
            "Could not lower the background thread's priority: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A socket connected on the background runtime and moved here keeps working when the
    /// background thread is stuck: its readiness comes from this runtime's reactor.
    #[tokio::test]
    async fn a_rehomed_socket_does_not_depend_on_the_background_thread() {
        let bg = Background::start("np-test-bg", NICE).expect("background thread");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut s = bg
            .run(async move { TcpStream::connect(addr).await })
            .await
            .expect("ran")
            .expect("connected");
        let (mut peer, _) = listener.accept().await.expect("accept");
        rehome_tcp(&mut s).expect("rehome");

        // Block the background thread until the end of the test, and wait until it is.
        let release = bg.stall().await;

        let round_trip = async {
            peer.write_all(b"ping").await?;
            let mut got = [0u8; 4];
            s.read_exact(&mut got).await?;
            s.write_all(b"pong").await?;
            peer.read_exact(&mut got).await?;
            Ok::<_, io::Error>(got)
        };
        let got = tokio::time::timeout(std::time::Duration::from_secs(20), round_trip).await;
        let _ = release.send(());
        assert_eq!(
            &got.expect("no round trip while the thread was stuck")
                .expect("io"),
            b"pong"
        );
    }

    /// Dropping the waiting future aborts the background task.
    #[tokio::test]
    async fn dropping_the_wait_aborts_the_task() {
        let bg = Background::start("np-test-bg", NICE).expect("background thread");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = bg.run(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        // Give the task a moment to start, then drop the wait.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), waiting).await;
        // The task's end drops its sender: the receiver sees the channel closed.
        tokio::time::timeout(std::time::Duration::from_secs(20), rx)
            .await
            .expect("the background task was not aborted")
            .expect_err("nothing is ever sent");
    }

    #[test]
    fn the_thread_runs_at_the_lower_priority() {
        let bg = Background::start("np-test-bg", NICE).expect("background thread");
        let (tx, rx) = std::sync::mpsc::channel();
        bg.handle().spawn(async move {
            // SAFETY: getpriority reads its integer arguments only.
            let nice =
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            let _ = tx.send(nice);
        });
        let nice = rx.recv().expect("answer");
        // The test process may already run niced; the thread is never above NICE.
        assert!(nice >= NICE, "background thread at nice {nice}");
    }
}
