//! The incoming side of a dual-end tunnel (REFERENCE.md 3, 4.6): accepts user TCP
//! connections and UDP datagrams on its target address, takes an idle pool entry for each
//! connection or UDP session, names it in a `tcp`/`udp` signal and relays at once (the
//! bytes may reach the peer before the signal does; the peer's pool entry buffers them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nodepass_proto::wire::Signal;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::activity::Activity;
use super::control::Session;
use crate::policy::{block, SlotKind};
use crate::pool::Entry;

pub async fn tcp_loop(sess: Arc<Session>, listener: TcpListener) -> anyhow::Result<()> {
    let (inst, cancel) = (sess.inst.clone(), sess.cancel.clone());
    super::user::serve_tcp(
        inst,
        listener,
        "commonTCPLoop",
        cancel,
        move |user, peer, prefix| tcp_once(sess.clone(), user, peer, prefix),
    )
    .await
}

/// One admitted user connection: take an idle entry, name it in a `tcp` signal, relay.
async fn tcp_once(sess: Arc<Session>, mut user: TcpStream, peer: SocketAddr, prefix: Vec<u8>) {
    let inst = &sess.inst;
    let Some((id, mut entry)) = sess.pool.incoming_get(inst.tunables.pool_get_timeout).await else {
        tracing::warn!(
            "commonTCPLoop: request timeout: IncomingGet: insufficient pool connections"
        );
        return;
    };
    tracing::debug!(
        "Tunnel connection: get {id} <- pool active {}",
        sess.pool.active()
    );
    sess.send_now(Signal::Tcp {
        remote: peer.into(),
        id,
    })
    .await;
    if let Err(e) = block::forward(&prefix, &mut entry, &inst.figures.tcprx, &inst.policy).await {
        tracing::error!("commonTCPLoop: write to tunnel failed: {e}");
        return;
    }
    let far = entry.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    inst.relay_tcp(&mut user, &mut entry, &peer, &far).await;
}

struct UdpSession {
    to_tunnel: WriteHalf<Entry>,
    generation: u64,
    /// Traffic of both directions; once closed, the session is over even if its end
    /// message is still queued: the next datagram starts a new session.
    activity: Arc<Activity>,
}

pub async fn udp_loop(sess: Arc<Session>, socket: Arc<UdpSocket>) -> anyhow::Result<()> {
    let inst = sess.inst.clone();
    let mut sessions: HashMap<SocketAddr, UdpSession> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut generation = 0u64;
    let mut buf = vec![0u8; inst.udp_buf()];
    loop {
        let (n, peer) = tokio::select! {
            Some((key, gen)) = ended_rx.recv() => {
                if sessions.get(&key).is_some_and(|s| s.generation == gen) {
                    sessions.remove(&key);
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("commonUDPLoop: readFromUDP failed: {e}");
                    continue;
                }
            },
        };
        inst.figures.udprx.fetch_add(n as u64, Ordering::Relaxed);
        inst.policy.pace_read(n).await;
        // `touch` records the datagram (the idle timer re-arms) and tells whether the
        // session is still open; an ending session never gets it.
        if sessions.get(&peer).is_some_and(|s| !s.activity.touch()) {
            sessions.remove(&peer);
        }
        if let std::collections::hash_map::Entry::Vacant(vacant) = sessions.entry(peer) {
            let Some(slot) = super::user::slot(&inst, SlotKind::Udp, "commonUDPLoop") else {
                continue;
            };
            let Some((id, entry)) = sess.pool.incoming_get(inst.tunables.pool_get_timeout).await
            else {
                tracing::warn!(
                    "commonUDPLoop: request timeout: IncomingGet: insufficient pool connections"
                );
                continue;
            };
            let (from_tunnel, to_tunnel) = tokio::io::split(entry);
            generation += 1;
            let gen = generation;
            let (s2, sock2, ended) = (sess.clone(), socket.clone(), ended_tx.clone());
            let activity = Arc::new(Activity::new());
            activity.touch();
            let activity2 = activity.clone();
            tokio::spawn(async move {
                let _slot = slot;
                replies(&s2, from_tunnel, &sock2, peer, &activity2).await;
                activity2.close();
                let _ = ended.send((peer, gen));
            });
            vacant.insert(UdpSession {
                to_tunnel,
                generation: gen,
                activity,
            });
            sess.send(Signal::Udp {
                remote: peer.into(),
                id,
            });
            tracing::debug!("Starting transfer: {peer} over {id}");
        }
        let Some(s) = sessions.get_mut(&peer) else {
            continue;
        };
        // Raw datagram, no framing: what the reference puts on the entry.
        if let Err(e) = s.to_tunnel.write_all(&buf[..n]).await {
            tracing::error!("commonUDPLoop: write to tunnel failed: {e}");
            s.activity.close();
            sessions.remove(&peer);
            continue;
        }
        let _ = s.to_tunnel.flush().await;
    }
}

/// Carries what comes back on the entry to the user until no datagram moved either way
/// for NP_UDP_READ_TIMEOUT.
async fn replies(
    sess: &Session,
    mut from_tunnel: tokio::io::ReadHalf<Entry>,
    socket: &UdpSocket,
    peer: SocketAddr,
    activity: &Activity,
) {
    let inst = &sess.inst;
    let mut buf = vec![0u8; inst.udp_buf()];
    let mut seen = activity.tick();
    loop {
        let n =
            match tokio::time::timeout(inst.tunables.udp_read_timeout, from_tunnel.read(&mut buf))
                .await
            {
                Err(_) if !activity.expire(&mut seen) => continue,
                Err(_) => {
                    tracing::debug!("UDP session abort: {peer} idle");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!("commonUDPLoop: read from tunnel failed: {e}");
                    return;
                }
                Ok(Ok(0)) => return,
                Ok(Ok(n)) => n,
            };
        activity.touch();
        inst.policy.pace_write(n).await;
        match socket.send_to(&buf[..n], peer).await {
            Ok(m) => {
                inst.figures.udptx.fetch_add(m as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!("commonUDPLoop: writeToUDP failed: {e}");
                return;
            }
        }
    }
}
