//! The incoming side of a dual-end tunnel (REFERENCE.md 3, 4.6): accepts user TCP
//! connections and UDP datagrams on its target address, takes an idle pool entry for each
//! connection or UDP session, names it in a `tcp`/`udp` signal and relays at once (the
//! bytes may reach the peer before the signal does; the peer's pool entry buffers them).
//! UDP sessions are set up off the receive loop and may hold only a share of the pool
//! (see [`udp_loop`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut as _, Bytes, BytesMut};
use nodepass_proto::wire::Signal;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};

use super::activity::Activity;
use super::session::Session;
use crate::policy::{block, SlotKind};
use crate::pool::Entry;

pub async fn tcp_loop(sess: Arc<Session>, listener: Arc<TcpListener>) -> anyhow::Result<()> {
    let (inst, cancel) = (sess.inst.clone(), sess.cancel.clone());
    super::user::serve_tcp(
        inst,
        listener,
        "commonTCPLoop",
        cancel,
        Some(sess.clone()),
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
    let taken_ms = sess.now_ms();
    tracing::debug!(
        "Tunnel connection: get {id} <- pool active {}",
        sess.pool.idle_count()
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
    // An entry handed out while the link was already silent is as dead as the link: when
    // the session ends for that silence, its user is closed at once instead of hanging
    // until its own timeout.
    tokio::select! {
        _ = inst.relay_tcp(&mut user, &mut entry, &peer, &far) => {}
        _ = sess.ended_silent_since(taken_ms) => {
            tracing::warn!("commonTCPLoop: {peer} closed: its pool entry {far} belonged to a silent link");
        }
    }
}

/// Datagrams queued for one UDP session while it waits for its pool entry or for the
/// tunnel to take the previous ones; more are dropped (UDP may lose datagrams, but one
/// slow session must never hold up the others).
const UDP_SESSION_QUEUE: usize = 64;

/// The part of the pool that UDP sessions may hold at once (waiting for an entry or
/// using one): half of `max`, at least one. A flood of datagrams from new (possibly
/// spoofed) source addresses can then never take the entries TCP connections need.
fn udp_pool_share(pool_max: usize) -> usize {
    (pool_max / 2).max(1)
}

struct UdpSession {
    /// The user's datagrams, to the session's task.
    queue: mpsc::Sender<Bytes>,
    generation: u64,
    /// Traffic of both directions; once closed, the session is over even if its end
    /// message is still queued: the next datagram starts a new session.
    activity: Arc<Activity>,
}

/// Receives the user's datagrams and hands each to its source's session. This loop never
/// waits for the pool or the tunnel: a new source's session is set up in its own task
/// (which waits for a pool entry), and datagrams reach sessions through bounded queues.
pub async fn udp_loop(sess: Arc<Session>, socket: Arc<UdpSocket>) -> anyhow::Result<()> {
    let inst = sess.inst.clone();
    let mut sessions: HashMap<SocketAddr, UdpSession> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let share = Arc::new(Semaphore::new(udp_pool_share(sess.pool.max())));
    let mut generation = 0u64;
    let mut buf = BytesMut::new();
    loop {
        // One allocation serves many datagrams: `split` hands out the filled part and the
        // rest of the capacity is reused once earlier datagrams are gone.
        buf.reserve(inst.udp_buf());
        // At most NP_UDP_DATA_BUF_SIZE bytes per datagram, as with a plain buffer.
        let mut room = (&mut buf).limit(inst.udp_buf());
        let (n, peer) = tokio::select! {
            Some((key, gen)) = ended_rx.recv() => {
                if sessions.get(&key).is_some_and(|s| s.generation == gen) {
                    sessions.remove(&key);
                }
                continue;
            }
            r = socket.recv_buf_from(&mut room) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("commonUDPLoop: readFromUDP failed: {e}");
                    continue;
                }
            },
        };
        let datagram = buf.split().freeze();
        inst.figures.udprx.fetch_add(n as u64, Ordering::Relaxed);
        inst.policy.pace_read(n).await;
        // `touch` records the datagram (the idle timer re-arms) and tells whether the
        // session is still open; an ending session never gets it.
        if sessions.get(&peer).is_some_and(|s| !s.activity.touch()) {
            sessions.remove(&peer);
        }
        if let std::collections::hash_map::Entry::Vacant(vacant) = sessions.entry(peer) {
            let Ok(share_permit) = share.clone().try_acquire_owned() else {
                tracing::debug!(
                    "commonUDPLoop: datagram from {peer} dropped: UDP sessions hold their share of the pool"
                );
                continue;
            };
            let Some(slot) = super::user::slot(&inst, SlotKind::Udp, "commonUDPLoop") else {
                continue;
            };
            generation += 1;
            let gen = generation;
            let (queue, queued) = mpsc::channel(UDP_SESSION_QUEUE);
            let activity = Arc::new(Activity::new());
            activity.touch();
            let (s2, sock2, ended, activity2) = (
                sess.clone(),
                socket.clone(),
                ended_tx.clone(),
                activity.clone(),
            );
            tokio::spawn(async move {
                let _hold = (slot, share_permit);
                udp_session(&s2, queued, &sock2, peer, &activity2).await;
                activity2.close();
                let _ = ended.send((peer, gen));
            });
            vacant.insert(UdpSession {
                queue,
                generation: gen,
                activity,
            });
        }
        let Some(s) = sessions.get(&peer) else {
            continue;
        };
        match s.queue.try_send(datagram) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("commonUDPLoop: datagram from {peer} dropped: session queue full");
            }
            // The session's task is over; the next datagram starts a new one.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                sessions.remove(&peer);
            }
        }
    }
}

/// One UDP session: take a pool entry, name it in a `udp` signal, then carry the queued
/// datagrams to the tunnel and the answers back until the session is idle or broken.
async fn udp_session(
    sess: &Session,
    mut queued: mpsc::Receiver<Bytes>,
    socket: &UdpSocket,
    peer: SocketAddr,
    activity: &Activity,
) {
    let inst = &sess.inst;
    let Some((id, entry)) = sess.pool.incoming_get(inst.tunables.pool_get_timeout).await else {
        tracing::warn!(
            "commonUDPLoop: request timeout: IncomingGet: insufficient pool connections"
        );
        return;
    };
    let (from_tunnel, mut to_tunnel) = tokio::io::split(entry);
    sess.send(Signal::Udp {
        remote: peer.into(),
        id,
    });
    tracing::debug!("Starting transfer: {peer} over {id}");
    let forward = async {
        while let Some(datagram) = queued.recv().await {
            // Raw datagram, no framing: what the reference puts on the entry.
            if let Err(e) = to_tunnel.write_all(&datagram).await {
                tracing::error!("commonUDPLoop: write to tunnel failed: {e}");
                return;
            }
            let _ = to_tunnel.flush().await;
        }
    };
    tokio::select! {
        _ = forward => {}
        _ = replies(sess, from_tunnel, socket, peer, activity) => {}
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
