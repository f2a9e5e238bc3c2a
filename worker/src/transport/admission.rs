//! The pool port's admission rule, written once for every transport (REFERENCE.md 4.1 plus
//! what the reference lacks). Each transport calls these steps in this order and keeps only
//! how it says "no" on its own wire (a close, an HTTP status, a QUIC close):
//!
//! 1. [`PoolPortAdmission::admit`] at accept, before any TLS or HTTP work: the source
//!    address decides whose places the connection takes. The handshaking client's address
//!    has places of its own; every other address is answered from a small fair table
//!    ([`crate::admission`], the oldest stranger goes when it is full) and never takes the
//!    client's places.
//! 2. [`SessionEdge::check`]: the source is the client's, the pool has room (idle entries
//!    below `max`), and a data entry only while the control channel is up.
//! 3. [`SessionEdge::check_proof`] / [`SessionEdge::read_proof`]: when the session
//!    negotiated entry proofs (both ends ours, see [`EntryProof`]), the connection proves
//!    the key before it gets an id. Go peers never negotiate it and keep the reference's
//!    behaviour (the address is the only check).
//! 4. [`SessionEdge::assign`]: the id (`00000000` first), never one that is idle already.
//! 5. The transport sends the id its own way, then [`SessionEdge::enroll`] puts the entry
//!    in the pool.
//!
//! Every step is bounded in time by the transport's deadlines, and every connection's task
//! ends with the session ([`super::accept_each`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nodepass_proto::wire::{EntryProof, PoolId, ENTRY_PROOF_LEN};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_util::sync::CancellationToken;

use super::canonical_ip;
use crate::pool::{Entry, Pool};

/// How long a pool connection of the client's address may take to send its entry proof.
/// Our client sends it at once, right after the TLS handshake.
pub const PROOF_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may hold a place on a pool port that carries more than one step before an entry
/// exists (TLS, an HTTP upgrade, an HTTP/2 connection, a proof): the client's own address
/// has `client_places` of its own; every other address is only answered (a refusal on the
/// transport's own wire) from a small fair table ([`crate::admission`]) and never takes
/// the client's places.
pub(crate) struct PoolPortAdmission {
    clients: Arc<tokio::sync::Semaphore>,
    client_places: usize,
    strangers: crate::admission::PendingTable,
    /// How long a stranger's connection may live at most (None: its own deadlines).
    stranger_lifetime: Option<Duration>,
}

impl PoolPortAdmission {
    pub(crate) fn new(
        client_places: usize,
        per_stranger: usize,
        strangers: usize,
        stranger_lifetime: Option<Duration>,
    ) -> Self {
        PoolPortAdmission {
            clients: Arc::new(tokio::sync::Semaphore::new(client_places)),
            client_places,
            strangers: crate::admission::PendingTable::new(per_stranger, strangers),
            stranger_lifetime,
        }
    }

    /// The task for one accepted connection from `peer` (running `conn`), or None when it
    /// is closed at once (the client's places are all taken). The cheapest check comes
    /// first: the source address decides whose places it takes.
    pub(crate) fn admit<F>(
        &self,
        peer: SocketAddr,
        client_ip: IpAddr,
        session_end: &CancellationToken,
        what: &str,
        conn: F,
    ) -> Option<BoxFuture<'static, ()>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let source = canonical_ip(peer.ip());
        if source != client_ip {
            let (slot, made) = self.strangers.admit(source, session_end);
            if made != crate::admission::Made::Room {
                tracing::debug!("{what}: connections from other addresses pending: {made:?}");
            }
            let lifetime = self.stranger_lifetime.unwrap_or(Duration::MAX);
            return Some(Box::pin(async move {
                tokio::select! {
                    _ = slot.cancel.cancelled() => {}
                    _ = tokio::time::timeout(lifetime, conn) => {}
                }
            }));
        }
        let Ok(permit) = self.clients.clone().try_acquire_owned() else {
            tracing::debug!(
                "{what}: connection from {peer} closed: {} of the client's places in use",
                self.client_places
            );
            return None;
        };
        Some(Box::pin(async move {
            let _permit = permit;
            conn.await
        }))
    }
}

/// Why a pool connection or stream was not admitted. Each transport says it on its wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not from the handshaking client's address.
    Stranger,
    /// The pool holds `max` idle entries.
    PoolFull,
    /// A data entry while no control channel is up (before it, or after the session).
    NoControl,
    /// The session negotiated entry proofs and this connection's was missing or wrong.
    BadProof,
    /// The id drawn is idle already (the reference drops such a connection).
    Duplicate,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Stranger => "not from the handshaking client's address",
            Refused::PoolFull => "the pool is full",
            Refused::NoControl => "no control channel is up",
            Refused::BadProof => "no valid entry proof",
            Refused::Duplicate => "the id drawn is idle already",
        })
    }
}

/// One session's side of the rule: what a transport's server needs to admit entries.
/// Made by the server role after each handshake.
pub struct SessionEdge {
    /// The session's pool (with the first-id rule).
    pub pool: Arc<Pool>,
    /// The handshaking client's address (canonical form).
    pub client_ip: IpAddr,
    /// The session's entry proof, when the client negotiated one.
    pub proof: Option<EntryProof>,
    /// Fires when the session ends; every connection's task ends with it.
    pub cancel: CancellationToken,
}

impl SessionEdge {
    pub fn new(
        pool: Arc<Pool>,
        client_ip: IpAddr,
        proof: Option<EntryProof>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(SessionEdge {
            pool,
            client_ip: canonical_ip(client_ip),
            proof,
            cancel,
        })
    }

    /// Whether `peer` is the handshaking client's address.
    pub fn from_client(&self, peer: SocketAddr) -> bool {
        canonical_ip(peer.ip()) == self.client_ip
    }

    /// Step 2: the cheap checks, before a TLS handshake or an HTTP upgrade is spent on it.
    pub fn check(&self, peer: SocketAddr) -> Result<(), Refused> {
        if !self.from_client(peer) {
            return Err(Refused::Stranger);
        }
        self.check_room()
    }

    /// The pool-room and control-channel part of [`check`](Self::check), for a transport
    /// that checked the address earlier (a stream on an admitted connection).
    pub fn check_room(&self) -> Result<(), Refused> {
        if self.pool.is_full() {
            return Err(Refused::PoolFull);
        }
        if !self.pool.admits() {
            return Err(Refused::NoControl);
        }
        Ok(())
    }

    /// Step 3 for a proof carried in a header (WebSocket, HTTP/2): always Ok when the
    /// session has no proof.
    pub fn check_proof(&self, presented_hex: Option<&str>) -> Result<(), Refused> {
        match &self.proof {
            None => Ok(()),
            Some(p) if presented_hex.is_some_and(|h| p.verify_hex(h)) => Ok(()),
            Some(_) => Err(Refused::BadProof),
        }
    }

    /// Step 3 for a proof carried in-band (TCP, QUIC): reads the 16 proof bytes (within
    /// [`PROOF_TIMEOUT`]) when the session has a proof, nothing otherwise.
    pub async fn read_proof<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<(), Refused> {
        let Some(proof) = &self.proof else {
            return Ok(());
        };
        let mut presented = [0u8; ENTRY_PROOF_LEN];
        match tokio::time::timeout(PROOF_TIMEOUT, r.read_exact(&mut presented)).await {
            Ok(Ok(_)) if proof.verify(&presented) => Ok(()),
            _ => Err(Refused::BadProof),
        }
    }

    /// Step 4: the entry's id. Refuses when the control channel went down meanwhile or
    /// the id drawn is idle already.
    pub fn assign(&self) -> Result<PoolId, Refused> {
        let id = self.pool.assign_id().ok_or(Refused::NoControl)?;
        self.unique(id)
    }

    /// As [`assign`](Self::assign), but waits (up to `limit`) for the control channel
    /// instead of refusing, for a multiplexed transport whose peer drops the whole
    /// connection when one stream gets no id (see [`Pool::assign_id_waiting`]).
    pub async fn assign_waiting(&self, limit: Duration) -> Result<PoolId, Refused> {
        let id = self
            .pool
            .assign_id_waiting(limit)
            .await
            .ok_or(Refused::NoControl)?;
        self.unique(id)
    }

    fn unique(&self, id: PoolId) -> Result<PoolId, Refused> {
        if self.pool.contains(id) {
            return Err(Refused::Duplicate);
        }
        Ok(id)
    }

    /// Step 5, once the id was sent: the entry joins the pool (or is dropped, with the
    /// reason logged, when the pool filled or the session ended meanwhile).
    pub fn enroll(&self, id: PoolId, entry: Entry, peer: SocketAddr, what: &str) {
        if let Err((why, _entry)) = self.pool.put(id, entry) {
            tracing::debug!("{what}: entry {id} from {peer} dropped: {why:?}");
        }
    }
}
