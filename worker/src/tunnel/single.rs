//! Single-end forwarding (client mode 1, REFERENCE.md 6): the client listens on its tunnel
//! address and relays TCP connections and UDP sessions straight to the target(s); no
//! server, no pool. Every NP_REPORT_INTERVAL (first at once) it measures a TCP connect to
//! the next target and publishes the figures.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use nodepass_proto::wire::RemoteAddr;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::admission::{Made, PendingTable};
use crate::instance::Instance;
use crate::policy::{block, SlotKind};
use crate::tunnel;
use crate::tunnel::udp::{pump, Sessions, ToUser, Way};
use crate::tunnel::user;

/// The sockets of a single-end instance.
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub udp: Option<Arc<UdpSocket>>,
}

impl Listeners {
    pub fn addrs(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(Ok(a)) = self.tcp.as_ref().map(|l| l.local_addr()) {
            v.push(format!("tcp://{a}"));
        }
        if let Some(Ok(a)) = self.udp.as_ref().map(|u| u.local_addr()) {
            v.push(format!("udp://{a}"));
        }
        v
    }
}

/// Binds the tunnel address (TCP unless notcp, UDP unless noudp).
pub async fn bind(inst: &Instance) -> anyhow::Result<Listeners> {
    let addr = tunnel::listen_addr(&inst.url.tunnel).await?;
    let tcp = if inst.url.params.notcp() {
        None
    } else {
        Some(
            tunnel::bind_tcp(addr)
                .with_context(|| format!("initTunnelListener: listen tcp {addr}"))?,
        )
    };
    let udp = if inst.url.params.noudp() {
        None
    } else {
        Some(Arc::new(UdpSocket::bind(addr).await.with_context(
            || format!("initTunnelListener: listen udp {addr}"),
        )?))
    };
    Ok(Listeners { tcp, udp })
}

/// Serves until `cancel` fires or a listener fails.
pub async fn run(
    inst: Arc<Instance>,
    listeners: Listeners,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    inst.set_mode(1);
    inst.announce_ready(listeners.addrs());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(stats_loop(inst.clone(), cancel.clone()));
    if let Some(l) = listeners.tcp {
        tasks.spawn(tcp_loop(inst.clone(), l, cancel.clone()));
    }
    if let Some(u) = listeners.udp {
        tasks.spawn(udp_loop(inst.clone(), u, cancel.clone()));
    }
    let res = tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("singleControl: task failed: {e}")),
        },
    };
    tasks.abort_all();
    res
}

async fn stats_loop(inst: Arc<Instance>, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut tick = inst.report_ticker();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let ping = inst.targets.probe(inst.tunables.report_interval).await;
        inst.publish_stats(ping, 0);
    }
}

async fn tcp_loop(
    inst: Arc<Instance>,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let i2 = inst.clone();
    user::serve_tcp(
        inst,
        Arc::new(listener),
        "singleTCPLoop",
        cancel,
        None,
        move |user, peer, prefix| tcp_once(i2.clone(), user, peer, prefix),
    )
    .await
}

/// One admitted user connection: dial a target and relay.
async fn tcp_once(inst: Arc<Instance>, mut user: TcpStream, peer: SocketAddr, prefix: Vec<u8>) {
    let src = RemoteAddr::from(peer);
    let Some((mut target, shown)) = user::dial_target(&inst, &src, "singleTCPLoop").await else {
        return;
    };
    if let Err(e) = block::forward(&prefix, &mut target, &inst.figures.tcprx, &inst.policy).await {
        tracing::error!("singleTCPLoop: write to target failed: {e}");
        return;
    }
    inst.relay_tcp(&mut user, &mut target, &peer, &shown).await;
}

async fn udp_loop(
    inst: Arc<Instance>,
    listener: Arc<UdpSocket>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // Each session's handle is its socket connected to the target.
    let mut sessions: Sessions<Arc<UdpSocket>> = Sessions::new();
    // Every new source port opens a session (a slot, a socket, a buffer): UDP may hold at
    // most half the slots, one address at most an eighth of those (16 to 1024), and when
    // either is full the oldest session of that address (or of the busiest one) ends to
    // make room, so one host can neither take every slot from TCP nor lock other hosts out.
    let (per_source, total) =
        udp_session_limits(usize::try_from(inst.slots.limit()).unwrap_or(usize::MAX));
    let admission = PendingTable::new(per_source, total);
    let mut evictions = RefusalCount::default();
    let mut buf = vec![0u8; inst.udp_buf()];
    loop {
        let (n, peer) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = sessions.reap() => continue,
            r = listener.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; they are not fatal.
                    tracing::debug!("singleUDPLoop: recv failed: {e}");
                    continue;
                }
            },
        };
        inst.figures
            .udprx
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        inst.policy.pace_read(n).await;
        let target = match sessions.live(&peer) {
            Some(target) => target.clone(),
            None => {
                let (admitted, made) = admission.admit(peer.ip(), &cancel);
                if made != Made::Room {
                    evictions.count(peer, total, per_source);
                }
                let Some(slot) = user::slot(&inst, SlotKind::Udp, "singleUDPLoop") else {
                    continue;
                };
                let target = match inst.targets.dial_udp().await {
                    Ok(t) => Arc::new(t),
                    Err(e) => {
                        tracing::error!("singleUDPLoop: dialWithRotation failed: {e:#}");
                        continue;
                    }
                };
                tracing::debug!("Starting transfer: {peer} <-> {:?}", target.peer_addr());
                let ending = sessions.open(peer, target.clone());
                let (inst2, listener2, cancel2, target2) = (
                    inst.clone(),
                    listener.clone(),
                    cancel.clone(),
                    target.clone(),
                );
                tokio::spawn(async move {
                    let _slot = slot;
                    let answers = pump(
                        &inst2,
                        &ending.activity,
                        Way::Tx,
                        "singleUDPLoop",
                        &*target2,
                        ToUser(&listener2, peer),
                    );
                    tokio::select! {
                        // Evicted to make room for a newer session.
                        _ = admitted.cancel.cancelled() => {}
                        _ = cancel2.cancelled() => {}
                        _ = answers => {}
                    }
                    drop(admitted);
                    drop(ending);
                });
                target
            }
        };
        if let Err(e) = target.send(&buf[..n]).await {
            tracing::error!("singleUDPLoop: write to target failed: {e}");
            sessions.remove(&peer);
        }
    }
}

/// UDP sessions allowed from one address and in all, for `slots` slots.
fn udp_session_limits(slots: usize) -> (usize, usize) {
    let total = (slots / 2).max(1);
    ((total / 8).clamp(16, 1024).min(total), total)
}

/// Sessions ended to make room, logged at most once per 10 s with the count since.
#[derive(Default)]
struct RefusalCount {
    last: Option<std::time::Instant>,
    since: u64,
}

impl RefusalCount {
    fn count(&mut self, peer: SocketAddr, total: usize, per_source: usize) {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10))
        {
            return;
        }
        self.last = Some(std::time::Instant::now());
        tracing::warn!(
            "singleUDPLoop: UDP sessions full ({total} in all, {per_source} per address): \
             the oldest made room for {peer} ({} sessions ended so in the last 10 s)",
            std::mem::take(&mut self.since)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::udp_session_limits;

    #[test]
    fn udp_takes_half_the_slots_and_one_address_a_share_of_those() {
        assert_eq!(udp_session_limits(65536), (1024, 32768));
        assert_eq!(udp_session_limits(2000), (125, 1000));
        assert_eq!(udp_session_limits(40), (16, 20));
        assert_eq!(udp_session_limits(1), (1, 1));
    }
}
