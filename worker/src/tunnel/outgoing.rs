//! The outgoing side of a dual-end tunnel (REFERENCE.md 5.2, 4.6): on a `tcp`/`udp` signal
//! it takes the named pool entry, dials a target and relays. A named entry that does not
//! arrive in NP_POOL_GET_TIMEOUT counts as a pool error (the flush rule uses the count).
//!
//! UDP: the reference keeps one target socket per user address and lets a new session
//! share an old one's socket, so two sessions could steal each other's answers. Here a new
//! session for the same user address ends the old one and gets its own socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nodepass_proto::wire::{PoolId, RemoteAddr};
use tokio_util::sync::CancellationToken;

use super::activity::Activity;
use super::session::Session;
use super::udp::{pump, Way};
use super::user;
use crate::policy::SlotKind;
use crate::pool::Entry;

/// The named entry: `taken` when the control loop took it as it read the signal, else
/// waited for (it may arrive after its signal).
async fn take_entry(sess: &Session, id: PoolId, taken: Option<Entry>, what: &str) -> Option<Entry> {
    if taken.is_some() {
        return taken;
    }
    match sess
        .pool
        .outgoing_get(id, sess.inst.tunables.pool_get_timeout)
        .await
    {
        Some(c) => Some(c),
        None => {
            tracing::error!("{what}: request timeout: OutgoingGet: pool connection not found");
            sess.pool.add_error();
            None
        }
    }
}

pub async fn tcp(sess: Arc<Session>, remote: RemoteAddr, id: PoolId, taken: Option<Entry>) {
    let Some(mut entry) = take_entry(&sess, id, taken, "commonTCPOnce").await else {
        return;
    };
    let inst = &sess.inst;
    let Some(_slot) = user::slot(inst, SlotKind::Tcp, "commonTCPOnce") else {
        return;
    };
    let Some((mut target, shown)) = user::dial_target(inst, &remote, "commonTCPOnce").await else {
        return;
    };
    inst.relay_tcp(&mut target, &mut entry, &remote, &shown)
        .await;
}

/// The outgoing side's UDP sessions by user address, so a new one replaces an old one. One
/// per tunnel session, made by the control loops.
#[derive(Default)]
pub struct UdpSessions {
    by_remote: Mutex<HashMap<RemoteAddr, (u64, CancellationToken)>>,
    generation: AtomicU64,
}

pub async fn udp(
    sess: Arc<Session>,
    table: Arc<UdpSessions>,
    remote: RemoteAddr,
    id: PoolId,
    taken: Option<Entry>,
) {
    let Some(entry) = take_entry(&sess, id, taken, "commonUDPOnce").await else {
        return;
    };
    let inst = sess.inst.clone();
    // Replace an older session of the same user address.
    let token = CancellationToken::new();
    let generation = table.generation.fetch_add(1, Ordering::Relaxed);
    if let Some((_, old)) = table
        .by_remote
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(remote.clone(), (generation, token.clone()))
    {
        old.cancel();
    }
    let _cleanup = SessionCleanup {
        table: &table,
        remote: &remote,
        generation,
    };
    let Some(_slot) = user::slot(&inst, SlotKind::Udp, "commonUDPOnce") else {
        return;
    };
    let target = match inst.targets.dial_udp().await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("commonUDPOnce: dialWithRotation failed: {e:#}");
            return;
        }
    };
    tracing::debug!("Starting transfer: {remote} <-> {:?}", target.peer_addr());
    let (from_tunnel, to_tunnel) = tokio::io::split(entry);
    // The session is idle only when nothing moved either way for NP_UDP_READ_TIMEOUT: a
    // target slow to answer while the user keeps sending keeps it (and the reverse).
    let activity = Activity::new();
    let label = "commonUDPOnce";
    let tunnel_to_target = pump(&inst, &activity, Way::Tx, label, from_tunnel, &target);
    let target_to_tunnel = pump(&inst, &activity, Way::Rx, label, &target, to_tunnel);
    tokio::select! {
        _ = token.cancelled() => {}
        _ = sess.cancel.cancelled() => {}
        _ = tunnel_to_target => {}
        _ = target_to_tunnel => {}
    }
    tracing::debug!("UDP session ended: {remote}");
}

/// Removes this session from the map when it ends, unless a newer one replaced it.
struct SessionCleanup<'a> {
    table: &'a UdpSessions,
    remote: &'a RemoteAddr,
    generation: u64,
}

impl Drop for SessionCleanup<'_> {
    fn drop(&mut self) {
        let mut map = self
            .table
            .by_remote
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map
            .get(self.remote)
            .is_some_and(|(g, _)| *g == self.generation)
        {
            map.remove(self.remote);
        }
    }
}
