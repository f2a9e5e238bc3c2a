//! The user-facing steps every mode shares, written once: accept a user's TCP connection,
//! take a slot, sniff for blocked protocols ([`serve_tcp`]), and on the other end dial the
//! next target and send the PROXY v1 line ([`dial_target`]). What sits between the two (a
//! pool entry and a signal in dual-end mode, nothing in single-end mode) is the caller's.
//!
//! `what` names the reference function whose log lines these are (`commonTCPLoop`,
//! `singleTCPLoop`, `commonTCPOnce`, ...), so the messages stay the reference's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use nodepass_proto::wire::RemoteAddr;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::session::Session;
use crate::instance::Instance;
use crate::policy::{block, proxy, SlotGuard, SlotKind};
use crate::transport::RETRY_PAUSE;

/// How often the accept loop of a tunnel's users looks at the link while no user comes.
const LINK_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Takes a slot of `kind`, or logs the reference's limit line and returns None.
pub fn slot(inst: &Instance, kind: SlotKind, what: &str) -> Option<SlotGuard> {
    let got = inst.slots.try_acquire(kind);
    if got.is_none() {
        let name = match kind {
            SlotKind::Tcp => "TCP",
            SlotKind::Udp => "UDP",
        };
        tracing::error!(
            "{what}: {name} slot limit reached: {}/{}",
            inst.slots.used(),
            inst.slots.limit()
        );
    }
    got
}

/// Accepts user TCP connections on `listener` until `cancel` fires. Each one runs in its own
/// task: it takes a TCP slot (held until `handle` returns), turns off Nagle, passes the
/// block sniff, and is then given to `handle` with the user's address and the bytes the
/// sniff read (empty when `block=0`), which `handle` forwards first with [`block::forward`]
/// once it has the far side.
pub async fn serve_tcp<F, Fut>(
    inst: Arc<Instance>,
    listener: Arc<TcpListener>,
    what: &'static str,
    cancel: CancellationToken,
    link: Option<Arc<Session>>,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(TcpStream, SocketAddr, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    loop {
        // A tunnel whose control channel went silent takes no new users until it answers
        // again or the next session takes over (see Session::link_fresh).
        if let Some(s) = &link {
            if !s.wait_link_fresh().await {
                return Ok(());
            }
        }
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            a = listener.accept() => a,
            // Look at the link again at least every 100 ms while no user comes.
            _ = tokio::time::sleep(LINK_RECHECK), if link.is_some() => continue,
        };
        match accepted {
            Ok((mut user, peer)) => {
                let (inst, handle) = (inst.clone(), handle.clone());
                tokio::spawn(async move {
                    let Some(_slot) = slot(&inst, SlotKind::Tcp, what) else {
                        return;
                    };
                    let _ = user.set_nodelay(true);
                    let prefix = match block::sniff(inst.url.params.block(), &mut user).await {
                        block::Verdict::Allow(prefix) => prefix,
                        block::Verdict::Block(p) => {
                            tracing::warn!("{what}: blocked {p} protocol from {peer}");
                            return;
                        }
                    };
                    handle(user, peer, prefix).await;
                });
            }
            Err(e) => {
                // Out of fds and the like: say so and pause instead of spinning.
                tracing::error!("{what}: accept failed: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Dials the next target (with the instance's rotation and failover) and, when `proxy=1`,
/// writes the PROXY v1 line naming `src` (the user's address) first. Returns the target
/// and its address as shown in logs; None after logging the failure.
pub async fn dial_target(
    inst: &Instance,
    src: &RemoteAddr,
    what: &str,
) -> Option<(TcpStream, String)> {
    let mut target = match inst.targets.dial_tcp().await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{what}: dialWithRotation failed: {e:#}");
            return None;
        }
    };
    let target_addr = target.peer_addr().ok();
    if inst.url.params.proxy() {
        let Some(dst) = target_addr else {
            tracing::error!("{what}: sendProxyV1Header failed: the target connection is gone");
            return None;
        };
        let Some(src) = src.socket_addr() else {
            tracing::error!(
                "{what}: sendProxyV1Header failed: cannot parse remote {:?}",
                src.to_string()
            );
            return None;
        };
        if let Err(e) = target.write_all(proxy::v1_line(src, dst).as_bytes()).await {
            tracing::error!("{what}: sendProxyV1Header failed: {e}");
            return None;
        }
    }
    let shown = target_addr.map(|a| a.to_string()).unwrap_or_default();
    Some((target, shown))
}
