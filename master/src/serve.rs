//! The API's connection loop: hyper (HTTP/1.1 and HTTP/2) with a timer, so that a client
//! cannot hold a connection, or the master's file descriptors, without using them.
//!
//! Limits, each enforced here and nowhere else:
//! - at most [`ApiLimits::max_connections`] connections at a time (TLS handshakes included)
//!   and [`ApiLimits::max_per_source`] from one address; when there is no room the oldest
//!   connection of the busiest address (or of the newcomer's own, at its cap) is closed,
//!   never the newcomer, so one host can neither use up the descriptors that spawning
//!   workers needs nor lock other hosts out;
//! - a request's header must arrive within [`ApiLimits::header_read_timeout`] (HTTP/1.1,
//!   hyper's own timer; it also bounds the wait for the next request on a kept-alive
//!   connection);
//! - a connection that has not started a request within [`ApiLimits::header_read_timeout`]
//!   is closed (this also covers the HTTP/1-or-2 detection read, which has no timer of its
//!   own), and one with no request in progress for [`ApiLimits::idle_timeout`] after that
//!   (HTTP/2 without streams, a kept-alive connection). A request is in progress
//!   until its response body has been sent or dropped, so an SSE stream that is quiet for
//!   hours is never cut by this timer;
//! - a TLS handshake must finish within [`ApiLimits::tls_handshake_timeout`].
//!
//! On stop every connection is asked to finish gracefully (HTTP/1.1: after the current
//! response; HTTP/2: GOAWAY).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use nodepass_worker::admission::{Made, PendingTable};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The API's connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    pub max_connections: usize,
    /// Of those, at most this many from one address.
    pub max_per_source: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

impl ApiLimits {
    /// The limits in force: 10 s for a header and a TLS handshake (as the reference's own
    /// HTTP servers use), 60 s idle, and 1024 connections, but never more than a quarter of
    /// the descriptors this process may open, so workers can always be spawned.
    pub fn standard() -> Self {
        let fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let quarter = usize::try_from(fds / 4).unwrap_or(usize::MAX);
        ApiLimits {
            max_connections: quarter.clamp(16, 1024),
            max_per_source: (quarter.clamp(16, 1024) / 4).max(8),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true, then waits for the open connections
/// to finish gracefully.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: ApiLimits,
    mut stop: watch::Receiver<bool>,
) {
    // Connections are admitted fairly (the worker's admission.rs, shared like the
    // certificate code): one address holds at most `max_per_source`, and when all places
    // are taken the oldest connection of the busiest address is closed, never the
    // newcomer, so one host cannot lock the others out.
    let table = PendingTable::new(limits.max_per_source, limits.max_connections);
    let root = CancellationToken::new();
    let tls = tls.map(TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut last_warned: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let source = nodepass_worker::transport::canonical_ip(peer.ip());
        let (slot, made) = table.admit(source, &root);
        if made != Made::Room && last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            last_warned = Some(Instant::now());
            match made {
                Made::EvictedOwnOldest => tracing::warn!(
                    "API: {} connections open from {source} (the limit per address); its oldest was closed",
                    limits.max_per_source
                ),
                _ => tracing::warn!(
                    "API: {} connections open (the limit); the oldest of the busiest address was closed",
                    limits.max_connections
                ),
            }
        }
        let _ = tcp.set_nodelay(true);
        let (router, builder, tls, stop) =
            (router.clone(), builder.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let serve = async move {
                match tls {
                    None => serve_conn(tcp, router, &builder, limits, stop).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(
                            limits.tls_handshake_timeout,
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(io)) => serve_conn(io, router, &builder, limits, stop).await,
                            Ok(Err(e)) => {
                                tracing::debug!("TLS handshake with {peer} failed: {e}")
                            }
                            Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                        }
                    }
                }
            };
            tokio::select! {
                _ = slot.cancel.cancelled() => {}
                _ = serve => {}
            }
            drop(slot);
        });
    }
    // Every connection was told to finish (an SSE stream ends with the `shutdown` frame
    // already queued to it): wait until all have, so the last frames reach their clients
    // before the process exits. The caller bounds this wait.
    while !table.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// At most one warning about full connection places per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Requests of one connection that are in progress, and since when none is.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Whether any request has started: until one has, a connection gets only the header
    /// read timeout (the HTTP/1-or-2 detection read has no timer of its own).
    started: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection becomes too idle, if no request is in progress now.
    fn idle_deadline(&self, limits: &ApiLimits) -> Option<Instant> {
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        let idle = if self.started.load(Ordering::SeqCst) {
            limits.idle_timeout
        } else {
            limits.header_read_timeout
        };
        (self.in_flight.load(Ordering::SeqCst) == 0).then(|| since + idle)
    }
}

/// One request in progress; ends when its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in progress.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn serve_conn<I>(
    io: I,
    router: Router,
    builder: &auto::Builder<TokioExecutor>,
    limits: ApiLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
        started: std::sync::atomic::AtomicBool::new(false),
    });
    let tracker = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = tracker.begin();
        let router = router.clone();
        async move {
            let resp: Response = router.oneshot(req.map(Body::new)).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity
            .idle_deadline(&limits)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("API connection ended: {e}");
                }
                return;
            }
            _ = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline) => {
                // No request in progress for the whole idle time: nothing is lost by closing.
                if activity
                    .idle_deadline(&limits)
                    .is_some_and(|d| d <= Instant::now())
                {
                    return;
                }
            }
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
