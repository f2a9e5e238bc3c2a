//! The incoming side of a dual-end tunnel (REFERENCE.md 3, 4.6): accepts user TCP
//! connections and UDP datagrams on its target address, takes an idle pool entry for each
//! connection or UDP session, names it in a `tcp`/`udp` signal and relays at once (the
//! bytes may reach the peer before the signal does; the peer's pool entry buffers them).
//! UDP sessions are set up off the receive loop and may hold only a share of the pool
//! (see [`udp_loop`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut as _, Bytes, BytesMut};
use nodepass_proto::wire::Signal;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};

use super::activity::Activity;
use super::session::{Session, Succession};
use super::udp::{pump, Sessions, ToUser, Way};
use crate::policy::{block, SlotKind};

pub async fn tcp_loop(
    sess: Arc<Session>,
    listener: Arc<TcpListener>,
    succession: Arc<Succession>,
) -> anyhow::Result<()> {
    let (inst, cancel) = (sess.inst.clone(), sess.cancel.clone());
    super::user::serve_tcp(
        inst,
        listener,
        "commonTCPLoop",
        cancel,
        Some(sess.clone()),
        move |user, peer, prefix| tcp_once(sess.clone(), succession.clone(), user, peer, prefix),
    )
    .await
}

/// One admitted user connection: take an idle entry, name it in a `tcp` signal, relay.
///
/// The entry is taken only on a link confirmed a moment ago ([`Session::confirm_link`]): a
/// user who arrives while the link is in doubt waits, none of its bytes sent, until the
/// peer is heard again or, once the silent session has ended, the next one serves (at most
/// NP_POOL_GET_TIMEOUT after that end), instead of being handed an entry of a dead link.
async fn tcp_once(
    sess: Arc<Session>,
    succession: Arc<Succession>,
    mut user: TcpStream,
    peer: SocketAddr,
    prefix: Vec<u8>,
) {
    let limit = sess.inst.tunables.pool_get_timeout;
    let Some(sess) = confirmed(sess, &succession, limit).await else {
        tracing::warn!(
            "commonTCPLoop: {peer} closed: the tunnel was not back within {limit:?} of its link going silent (NP_POOL_GET_TIMEOUT)"
        );
        return;
    };
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

/// The session whose link is confirmed now: `sess`, once its peer answers, or the next one
/// if `sess` ends first (a silent link ends it within its read deadline, two report
/// intervals and a half second); None when no next session serves within `limit` of that.
async fn confirmed(
    mut sess: Arc<Session>,
    succession: &Succession,
    limit: std::time::Duration,
) -> Option<Arc<Session>> {
    loop {
        if sess.confirm_link().await {
            return Some(sess);
        }
        tracing::debug!("commonTCPLoop: the link is in doubt; a user waits for it");
        let asked = sess.now_ms();
        if sess.wait_heard_since(asked).await {
            continue;
        }
        sess = succession.after(&sess, limit).await?;
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

/// Receives the user's datagrams and hands each to its source's session. This loop never
/// waits for the pool or the tunnel: a new source's session is set up in its own task
/// (which waits for a pool entry), and datagrams reach sessions through bounded queues.
pub async fn udp_loop(sess: Arc<Session>, socket: Arc<UdpSocket>) -> anyhow::Result<()> {
    let inst = sess.inst.clone();
    // Each session's handle is the queue to its task.
    let mut sessions: Sessions<mpsc::Sender<Bytes>> = Sessions::new();
    let share = Arc::new(Semaphore::new(udp_pool_share(sess.pool.max())));
    let mut buf = BytesMut::new();
    loop {
        // One allocation serves many datagrams: `split` hands out the filled part and the
        // rest of the capacity is reused once earlier datagrams are gone.
        buf.reserve(inst.udp_buf());
        // At most NP_UDP_DATA_BUF_SIZE bytes per datagram, as with a plain buffer.
        let mut room = (&mut buf).limit(inst.udp_buf());
        let (n, peer) = tokio::select! {
            _ = sessions.reap() => continue,
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
        let queue = match sessions.live(&peer) {
            Some(queue) => queue.clone(),
            None => {
                let Ok(share_permit) = share.clone().try_acquire_owned() else {
                    tracing::debug!(
                        "commonUDPLoop: datagram from {peer} dropped: UDP sessions hold their share of the pool"
                    );
                    continue;
                };
                let Some(slot) = super::user::slot(&inst, SlotKind::Udp, "commonUDPLoop") else {
                    continue;
                };
                let (queue, queued) = mpsc::channel(UDP_SESSION_QUEUE);
                let ending = sessions.open(peer, queue.clone());
                let (s2, sock2) = (sess.clone(), socket.clone());
                tokio::spawn(async move {
                    let _hold = (slot, share_permit);
                    udp_session(&s2, queued, &sock2, peer, &ending.activity).await;
                    drop(ending);
                });
                queue
            }
        };
        match queue.try_send(datagram) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("commonUDPLoop: datagram from {peer} dropped: session queue full");
            }
            // The session's task is over; the next datagram starts a new one.
            Err(mpsc::error::TrySendError::Closed(_)) => sessions.remove(&peer),
        }
    }
}

/// One UDP session: take a pool entry, name it in a `udp` signal, then carry the queued
/// datagrams to the tunnel and the answers back until the session is idle or broken.
async fn udp_session(
    sess: &Session,
    queued: mpsc::Receiver<Bytes>,
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
    let (from_tunnel, to_tunnel) = tokio::io::split(entry);
    sess.send(Signal::Udp {
        remote: peer.into(),
        id,
    });
    tracing::debug!("Starting transfer: {peer} over {id}");
    let label = "commonUDPLoop";
    tokio::select! {
        _ = pump(inst, activity, Way::Counted, label, queued, to_tunnel) => {}
        _ = pump(inst, activity, Way::Tx, label, from_tunnel, ToUser(socket, peer)) => {}
    }
    tracing::debug!("UDP session ended: {peer}");
}
