//! UDP sessions, written once for every side: the table a receive loop keeps of its live
//! sessions by source address ([`Sessions`]), and the datagram loop that carries one
//! direction of a session until it is idle or broken ([`pump`]). The incoming side and
//! single-end forwarding keep a table (one listening socket, many sources); every side
//! pumps: answers back to the user (incoming, single-end), the user's datagrams into a pool
//! entry (incoming), and both ways between an entry and the target (outgoing).
//!
//! A session is idle only when nothing moved either way for NP_UDP_READ_TIMEOUT (the
//! pumps of one session share an [`Activity`]), and once it has decided to end no datagram
//! is handed to it any more: the table then starts a new session for that source.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::activity::Activity;
use crate::instance::Instance;
use crate::pool::Entry;

/// Where a pump reads datagrams. `Ok(None)`: the source ended (an entry's EOF, a closed
/// queue); a UDP socket never ends.
pub(crate) trait DatagramIn {
    /// What the source is, for error lines ("read from tunnel failed").
    const NAME: &'static str;
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
}

/// Where a pump writes datagrams; returns the bytes that went out.
pub(crate) trait DatagramOut {
    const NAME: &'static str;
    async fn send(&mut self, datagram: &[u8]) -> io::Result<usize>;
}

/// A pool entry's read half: each read is one datagram (the reference puts raw datagrams
/// on the entry, no framing).
impl DatagramIn for ReadHalf<Entry> {
    const NAME: &'static str = "tunnel";
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(Some(self.read(buf).await?).filter(|n| *n > 0))
    }
}

/// A pool entry's write half.
impl DatagramOut for WriteHalf<Entry> {
    const NAME: &'static str = "tunnel";
    async fn send(&mut self, datagram: &[u8]) -> io::Result<usize> {
        self.write_all(datagram).await?;
        self.flush().await?;
        Ok(datagram.len())
    }
}

/// A socket connected to the target.
impl DatagramIn for &UdpSocket {
    const NAME: &'static str = "target";
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        UdpSocket::recv(self, buf).await.map(Some)
    }
}

impl DatagramOut for &UdpSocket {
    const NAME: &'static str = "target";
    async fn send(&mut self, datagram: &[u8]) -> io::Result<usize> {
        UdpSocket::send(self, datagram).await
    }
}

/// The listening socket, answering one user.
pub(crate) struct ToUser<'a>(pub &'a UdpSocket, pub SocketAddr);

impl DatagramOut for ToUser<'_> {
    const NAME: &'static str = "UDP";
    async fn send(&mut self, datagram: &[u8]) -> io::Result<usize> {
        self.0.send_to(datagram, self.1).await
    }
}

/// The datagrams a receive loop queued for one session (already counted and paced there).
impl DatagramIn for mpsc::Receiver<Bytes> {
    const NAME: &'static str = "queue";
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(mpsc::Receiver::recv(self).await.map(|d| {
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            n
        }))
    }
}

/// How a pump accounts for what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// From the local side (user or target) into the tunnel: `udprx`, paced as a read.
    Rx,
    /// To the local side: paced as a write, `udptx`.
    Tx,
    /// Already counted and paced by whoever queued it.
    Counted,
}

/// Carries datagrams from `from` to `to` until the source ends, a read or write fails, or
/// the session is idle (nothing moved either way for NP_UDP_READ_TIMEOUT). `label` names
/// the loop in log lines, as the reference's logs do.
pub(crate) async fn pump<I: DatagramIn, O: DatagramOut>(
    inst: &Instance,
    activity: &Activity,
    way: Way,
    label: &str,
    mut from: I,
    mut to: O,
) {
    let idle = inst.tunables.udp_read_timeout;
    let figures = &inst.figures;
    let mut buf = vec![0u8; inst.udp_buf()];
    let mut seen = activity.tick();
    loop {
        let n = match tokio::time::timeout(idle, from.recv(&mut buf)).await {
            Err(_) if !activity.expire(&mut seen) => continue,
            Err(_) => {
                tracing::debug!("{label}: UDP session idle");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::error!("{label}: read from {} failed: {e}", I::NAME);
                return;
            }
            Ok(Ok(Some(n))) => n,
        };
        activity.touch();
        match way {
            Way::Rx => {
                figures.udprx.fetch_add(n as u64, Ordering::Relaxed);
                inst.policy.pace_read(n).await;
            }
            Way::Tx => inst.policy.pace_write(n).await,
            Way::Counted => {}
        }
        match to.send(&buf[..n]).await {
            Ok(m) if way == Way::Tx => {
                figures.udptx.fetch_add(m as u64, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("{label}: write to {} failed: {e}", O::NAME);
                return;
            }
        }
    }
}

/// A receive loop's live sessions by source address, each with a handle of the loop's
/// choice (a queue to the session's task, a socket to the target). Only the loop touches
/// the table; a session's task reports its end through the [`Ending`] it was given.
pub(crate) struct Sessions<H> {
    map: HashMap<SocketAddr, Live<H>>,
    generation: u64,
    /// One message per ended session; sessions are bounded by the slots and shares that
    /// admitted them, so this queue is too.
    ended_tx: mpsc::UnboundedSender<(SocketAddr, u64)>,
    ended_rx: mpsc::UnboundedReceiver<(SocketAddr, u64)>,
}

struct Live<H> {
    handle: H,
    /// So the end of an old session never removes a newer one of the same source.
    generation: u64,
    activity: Arc<Activity>,
}

/// Given to a session's task: its activity, and on drop the end of the session (closed for
/// datagrams at once, removed from the table when the loop reads the report).
pub(crate) struct Ending {
    pub activity: Arc<Activity>,
    peer: SocketAddr,
    generation: u64,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.activity.close();
        let _ = self.ended.send((self.peer, self.generation));
    }
}

impl<H> Sessions<H> {
    pub fn new() -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Sessions {
            map: HashMap::new(),
            generation: 0,
            ended_tx,
            ended_rx,
        }
    }

    /// Waits for a session to end and forgets it (cancel-safe: use it as a `select!` arm
    /// beside the socket's receive).
    pub async fn reap(&mut self) {
        if let Some((peer, generation)) = self.ended_rx.recv().await {
            if self
                .map
                .get(&peer)
                .is_some_and(|s| s.generation == generation)
            {
                self.map.remove(&peer);
            }
        }
    }

    /// The live session of `peer`, with a datagram recorded on it (its idle timer
    /// re-arms). A session that has already decided to end is forgotten: None, and the
    /// caller starts a new one.
    pub fn live(&mut self, peer: &SocketAddr) -> Option<&H> {
        if self.map.get(peer).is_some_and(|s| !s.activity.touch()) {
            self.map.remove(peer);
        }
        self.map.get(peer).map(|s| &s.handle)
    }

    /// Registers a new session of `peer` (replacing any entry of that source); its task
    /// holds the returned [`Ending`].
    pub fn open(&mut self, peer: SocketAddr, handle: H) -> Ending {
        self.generation += 1;
        let activity = Arc::new(Activity::new());
        activity.touch();
        self.map.insert(
            peer,
            Live {
                handle,
                generation: self.generation,
                activity: activity.clone(),
            },
        );
        Ending {
            activity,
            peer,
            generation: self.generation,
            ended: self.ended_tx.clone(),
        }
    }

    /// Forgets `peer`'s session (its task has gone, or the loop ended it).
    pub fn remove(&mut self, peer: &SocketAddr) {
        if let Some(s) = self.map.remove(peer) {
            s.activity.close();
        }
    }
}
