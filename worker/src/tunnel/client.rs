//! The client role's dual-end mode (REFERENCE.md 3, 4.1): handshake with the server, keep
//! a pool of pre-established entries with the reference's adaptive capacity and interval,
//! take `00000000` as the control channel and run the session. In flow `+` the client is
//! the incoming side and binds its first target address after the control channel is up.
//! It reports `ready` once all that is done, not before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nodepass_proto::url::TlsMode;
use nodepass_proto::wire::Flow;
use tokio_util::sync::CancellationToken;

use super::control;
use super::session::Verifier;
use super::{bind_users, handshake, take_control, AbortOnDrop};
use crate::background::{self, Background};
use crate::instance::Instance;
use crate::pool::Entry;
use crate::pool::{stocked, Pool};
use crate::transport::{self, PoolClient};
use nodepass_proto::wire::PoolId;

/// Adaptive pool sizing step (REFERENCE.md 4.1).
const INTERVAL_STEP: Duration = Duration::from_millis(100);

/// One start of the dual-end client; returns when the session ends.
/// One start of the dual-end client; returns when the session ends. The user listeners of
/// flow `+` are bound on the first session that needs them and kept in `users_kept`.
pub async fn start(
    inst: &Arc<Instance>,
    cancel: &CancellationToken,
    users_kept: &mut Option<super::session::UserListeners>,
) -> anyhow::Result<()> {
    let url = &inst.url;
    inst.set_mode(2);
    tracing::info!("Pending tunnel handshake...");
    let began = Instant::now();
    let sni = url.effective_sni();
    let (config, proof) = tokio::select! {
        _ = cancel.cancelled() => anyhow::bail!("tunnelHandshake: context canceled"),
        c = handshake::request(
            &inst.dns,
            &url.tunnel,
            &sni,
            &url.key,
            inst.tunables.tcp_dial_timeout,
            inst.tunables.handshake_timeout,
        ) => c?,
    };
    tracing::info!("Loading tunnel config: {}", config.log_form());
    let mut ctx = super::transport_context(inst, config.tls, None);
    ctx.max = config.max as usize;
    // Set when the server is one of ours: every pool entry then proves the key.
    ctx.proof = proof;
    let opener = transport::client_for(config.pool_type, ctx)?;
    let verifier = match config.tls {
        TlsMode::Off => Verifier::None,
        m => Verifier::Client(m),
    };
    let pool = Arc::new(Pool::new(config.max as usize));
    // The last failed pool open, to say why the pool could not be filled.
    let last_error = Arc::new(std::sync::Mutex::new(None::<anyhow::Error>));
    let manager = tokio::spawn(manage(
        pool.clone(),
        opener,
        last_error.clone(),
        (url.params.min() as usize, config.max as usize),
        (
            inst.tunables.min_pool_interval,
            inst.tunables.max_pool_interval,
        ),
        cancel.clone(),
        background::shared,
    ));
    let _stop_manager = AbortOnDrop(manager);
    tracing::info!("Getting tunnel pool ready...");
    let control_conn = take_control(inst, &pool, cancel).await.map_err(|e| {
        let last = last_error.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (e.downcast_ref::<super::ControlTimeout>(), last) {
            (Some(_), Some(cause)) => cause.context(super::ControlTimeout),
            _ => e,
        }
    })?;
    tracing::info!(
        "Marking tunnel handshake as complete in {}ms",
        began.elapsed().as_millis()
    );
    // Bound once and kept for the next sessions (see server::Bound): users who arrive
    // while the tunnel is rebuilt wait in the backlog instead of being refused.
    let users = if config.flow == Flow::Forward {
        Some(match users_kept {
            Some(u) => u.clone(),
            None => users_kept
                .insert(bind_users(inst).await.context("commonStart")?)
                .clone(),
        })
    } else {
        None
    };
    // Only now can the tunnel carry traffic: handshake done, control channel up, the
    // user listeners bound (flow `+`). Reporting `ready` earlier would show a client that
    // cannot reach its server as `running`.
    let listen = users
        .as_ref()
        .map(super::listen_list_users)
        .unwrap_or_default();
    inst.announce_ready(listen);
    control::run(
        control::SessionSpec {
            inst: inst.clone(),
            pool,
            flow: config.flow,
            is_server: false,
            verifier,
            users,
        },
        control_conn,
        cancel.clone(),
    )
    .await
}

/// Keeps the pool filled: each round adjusts the interval by how idle the pool is, opens
/// what is missing (in the background while the pool is stocked, see the round), adjusts
/// the capacity by how many of them worked, then sleeps the interval (REFERENCE.md 4.1),
/// or less when users take entries.
async fn manage(
    pool: Arc<Pool>,
    opener: Arc<dyn PoolClient>,
    last_error: Arc<std::sync::Mutex<Option<anyhow::Error>>>,
    (min, max): (usize, usize),
    (min_interval, max_interval): (Duration, Duration),
    cancel: CancellationToken,
    // The background runtime, started on first use: the process's shared one.
    background_runtime: impl Fn() -> Option<&'static Background> + Send,
) {
    let (mut lo, mut hi) = (min.max(1), max.max(1));
    if lo > hi {
        std::mem::swap(&mut lo, &mut hi);
    }
    let or_second = |d: Duration| {
        if d.is_zero() {
            Duration::from_secs(1)
        } else {
            d
        }
    };
    let (mut ilo, mut ihi) = (or_second(min_interval), or_second(max_interval));
    if ilo > ihi {
        std::mem::swap(&mut ilo, &mut ihi);
    }
    let mut capacity = lo;
    let mut interval = ilo;
    // Opens under way, including those of rounds the manager stopped waiting for.
    let opening = Arc::new(AtomicUsize::new(0));
    // Background opens run `background_opens` at a time, across rounds too (a round the
    // manager stopped waiting for goes on beside the next): each resumes a TLS session an
    // earlier one was given a ticket for (opened together, most would make a full
    // handshake, a certificate signature each). Foreground opens go together.
    let background_turns = Arc::new(tokio::sync::Semaphore::new(
        opener.background_opens().max(1),
    ));
    // Whether this round was started by the timer (the reference's only kind of round) or
    // early, because users took entries.
    let mut timed = true;
    loop {
        if pool.is_closed() {
            return; // the session is over; the next one has its own manager
        }
        let idle = pool.idle_count();
        if timed {
            if idle < (capacity as f64 * 0.2) as usize && interval > ilo {
                interval = interval.saturating_sub(INTERVAL_STEP).max(ilo);
            }
            if idle > (capacity as f64 * 0.8) as usize && interval < ihi {
                interval = (interval + INTERVAL_STEP).min(ihi);
            }
        }
        // Refilling. While the pool is stocked (half its capacity or more idle), nobody
        // waits for the replacements: they open at a low priority, in the time users leave
        // (crate::background), up to the capacity; opens an earlier round left running
        // count as coming. Below half, the foreground tops the pool up to the half mark:
        // one open per entry taken, never a burst on the users' cores (the background
        // ones, still under way, bring it further). An empty pool (a session's start, a
        // burst that took everything) is filled at once in the foreground.
        let half = capacity.div_ceil(2);
        let (background, need) = if idle == 0 || opener.background_opens() == 0 {
            (None, capacity.saturating_sub(idle))
        } else if stocked(idle, capacity) {
            let need = capacity.saturating_sub(idle + opening.load(Ordering::Acquire));
            // The thread starts with the first replacement (none for a pool never used).
            // Without it they open in place.
            ((need > 0).then(&background_runtime).flatten(), need)
        } else {
            (None, half.saturating_sub(idle))
        };
        let mut created = 0usize;
        let mut look_again = false;
        if need > 0 {
            let opens: Vec<_> = (0..need)
                .map(|_| {
                    let (pool, opener, last_error) =
                        (pool.clone(), opener.clone(), last_error.clone());
                    let _opening = Opening::count(&opening);
                    let turns = background.map(|_| background_turns.clone());
                    async move {
                        let _opening = _opening;
                        let _turn = match &turns {
                            Some(turns) => turns.acquire().await.ok(),
                            None => None,
                        };
                        match open_entry(opener, background).await {
                            Ok((id, conn)) => pool.put(id, conn).is_ok(),
                            Err(e) => {
                                tracing::debug!("Pool connection failed: {e:#}");
                                *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                false
                            }
                        }
                    }
                })
                .collect();
            let mut round = futures::future::join_all(opens);
            let results = tokio::select! {
                _ = cancel.cancelled() => return,
                r = &mut round => Some(r),
                // Background opens get only the time users leave: when the pool drains
                // below half meanwhile, they go on by themselves and the next round tops
                // it up in the foreground.
                _ = drained(&pool, capacity), if background.is_some() => None,
            };
            match results {
                Some(r) => {
                    created = r.into_iter().filter(|ok| *ok).count();
                    // Waiting for the drain took the wake-ups of entries taken meanwhile:
                    // look again at once rather than sleep on them (unless nothing opened,
                    // so a failing server is not asked again without a pause).
                    look_again = background.is_some() && created > 0;
                }
                None => {
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = round => {}
                        }
                    });
                    timed = false;
                    continue;
                }
            }
        }
        // The capacity follows the reference's rule on timed rounds only: early rounds
        // replace what users just took and say nothing about how busy the pool is.
        // Its ratio is the share of the capacity that was missing, scaled by how many of
        // this round's opens worked: what the reference's "created / capacity" is when a
        // round opens everything that is missing (this one may open only part of it).
        if timed {
            let missing = capacity.saturating_sub(idle) as f64;
            let worked = if need > 0 {
                created as f64 / need as f64
            } else {
                1.0
            };
            let ratio = worked * missing / capacity as f64;
            if ratio < 0.2 && capacity > lo {
                capacity -= 1;
            }
            if ratio > 0.8 && capacity < hi {
                capacity += 1;
            }
        }
        if look_again {
            timed = false;
            continue;
        }
        // Sleep the interval, but replace taken entries at once: the reference waits the
        // full interval (up to NP_MAX_POOL_INTERVAL), so a burst of new connections finds the
        // pool empty and each waits for the next round.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => timed = true,
            _ = pool.entry_taken() => timed = false,
        }
    }
}

/// Opens one entry, on the background runtime when given one; it is moved to this runtime
/// there, so this runtime's threads do nothing for it but take it.
async fn open_entry(
    opener: Arc<dyn PoolClient>,
    background: Option<&'static Background>,
) -> anyhow::Result<(PoolId, Entry)> {
    let Some(bg) = background else {
        return opener.open().await;
    };
    let home = tokio::runtime::Handle::current();
    bg.run(async move {
        let (id, mut entry) = opener.open().await?;
        entry
            .move_to(&home)
            .context("moving a pool entry off the background thread")?;
        Ok((id, entry))
    })
    .await?
}

/// Returns once the pool is no longer stocked for `capacity` (see [`Pool::stocked`]).
async fn drained(pool: &Pool, capacity: usize) {
    while pool.stocked(capacity) {
        pool.entry_taken().await;
    }
}

/// One pool open under way, counted while it lives.
struct Opening(Arc<AtomicUsize>);

impl Opening {
    fn count(counter: &Arc<AtomicUsize>) -> Opening {
        counter.fetch_add(1, Ordering::AcqRel);
        Opening(counter.clone())
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Opens real loopback connections (kept open by an accept loop) and numbers them;
    /// records which thread each open ran on and the most opens at once.
    struct Loopback {
        addr: SocketAddr,
        next: AtomicU32,
        now: AtomicUsize,
        most: AtomicUsize,
        threads: Mutex<Vec<String>>,
    }

    impl Loopback {
        async fn start() -> Arc<Loopback> {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = listener.accept().await {
                    held.push(s);
                }
            });
            Arc::new(Loopback {
                addr,
                next: AtomicU32::new(1),
                now: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                threads: Mutex::new(Vec::new()),
            })
        }

        /// Forgets what was recorded so far.
        fn reset(&self) {
            self.most.store(0, Ordering::SeqCst);
            self.threads.lock().expect("lock").clear();
        }

        fn threads(&self) -> Vec<String> {
            self.threads.lock().expect("lock").clone()
        }
    }

    impl PoolClient for Loopback {
        fn open(&self) -> BoxFuture<'_, anyhow::Result<(PoolId, Entry)>> {
            Box::pin(async move {
                let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                let name = std::thread::current().name().unwrap_or("").to_string();
                self.threads.lock().expect("lock").push(name);
                let tcp = TcpStream::connect(self.addr).await;
                // Long enough for opens of one round to overlap if they run together.
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.now.fetch_sub(1, Ordering::SeqCst);
                let id = self.next.fetch_add(1, Ordering::SeqCst).to_be_bytes();
                Ok((PoolId(id), Entry::Tcp(tcp?)))
            })
        }

        fn background_opens(&self) -> usize {
            2
        }
    }

    const BG: &str = "np-test-refill";

    /// Starts a manager of capacity 8 with its own background runtime; returns once the
    /// first fill is in.
    async fn managed() -> (
        Arc<Pool>,
        Arc<Loopback>,
        &'static Background,
        CancellationToken,
    ) {
        let bg: &'static Background = Box::leak(Box::new(
            Background::start(BG, background::NICE).expect("background thread"),
        ));
        let (pool, opener) = (Arc::new(Pool::new(64)), Loopback::start().await);
        let cancel = CancellationToken::new();
        tokio::spawn(manage(
            pool.clone(),
            opener.clone(),
            Arc::new(std::sync::Mutex::new(None)),
            (8, 8),
            (Duration::from_secs(60), Duration::from_secs(60)),
            cancel.clone(),
            move || Some(bg),
        ));
        until(&pool, 8).await;
        (pool, opener, bg, cancel)
    }

    async fn until(pool: &Pool, idle: usize) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while pool.idle_count() < idle {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the pool stayed at {} of {idle}", pool.idle_count()));
    }

    async fn take(pool: &Pool, n: usize) -> Vec<Entry> {
        let mut taken = Vec::new();
        for _ in 0..n {
            let (_, e) = pool
                .incoming_get(Duration::from_secs(5))
                .await
                .expect("an idle entry");
            taken.push(e);
        }
        taken
    }

    /// Replacements for a stocked pool are opened on the background thread, at most
    /// `background_opens` at a time (each resumes TLS with an earlier one's ticket); the
    /// first fill is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replacements_open_on_the_background_thread_a_few_at_a_time() {
        let (pool, opener, _bg, cancel) = managed().await;
        assert!(
            opener.threads().iter().all(|t| t != BG),
            "the first fill ran in the background: {:?}",
            opener.threads()
        );
        assert!(
            opener.most.load(Ordering::SeqCst) > 1,
            "the first fill opens at once"
        );
        opener.reset();
        // Four of eight: the pool stays stocked (half), so all four go to the background.
        let _taken = take(&pool, 4).await;
        until(&pool, 8).await;
        let threads = opener.threads();
        assert!(
            !threads.is_empty() && threads.iter().all(|t| t == BG),
            "{threads:?}"
        );
        let most = opener.most.load(Ordering::SeqCst);
        assert!(
            (1..=opener.background_opens()).contains(&most),
            "{most} background opens at once"
        );
        cancel.cancel();
    }

    /// With the background thread stuck, a pool drained below half is topped up to half
    /// in the foreground: users are never left waiting for the background.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drained_pool_is_topped_up_in_the_foreground_when_the_background_is_stuck() {
        let (pool, opener, bg, cancel) = managed().await;
        let release = bg.stall().await;
        opener.reset();
        // One at a time: the first replacements go to the (stuck) background thread, then
        // the pool falls below half.
        let mut taken = Vec::new();
        for _ in 0..6 {
            taken.extend(take(&pool, 1).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until(&pool, 4).await;
        let threads = opener.threads();
        let _ = release.send(());
        assert!(
            threads.iter().any(|t| t != BG),
            "nothing opened in the foreground: {threads:?}"
        );
        cancel.cancel();
    }
}
