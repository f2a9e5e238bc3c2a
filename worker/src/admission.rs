//! Fair admission of what a stranger can open without proving anything (a tunnel handshake
//! in progress, a pool connection from an address that is not the client's, a single-end
//! UDP session, an API connection of the master): a table with a cap per source address
//! and a global cap. When a source is at its cap,
//! its own oldest pending connection goes; when the table is full, the oldest connection of
//! the source holding the most goes. A newcomer is never the one refused, so one host that
//! keeps connections open (a scanner, an attacker on another address) can take at most its
//! share, and a real client that connects and speaks at once always gets through.
//!
//! A slot ([`PendingSlot`]) carries a cancellation token: the task serving the connection
//! selects on it and closes the connection when it fires. Dropping the slot frees it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Table {
    next: u64,
    count: usize,
    by_source: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
}

impl Table {
    /// Cancels and forgets the oldest pending connection of `ip`.
    fn evict_oldest_of(&mut self, ip: IpAddr) -> bool {
        let Some(q) = self.by_source.get_mut(&ip) else {
            return false;
        };
        let Some((_, token)) = q.pop_front() else {
            return false;
        };
        token.cancel();
        if q.is_empty() {
            self.by_source.remove(&ip);
        }
        self.count -= 1;
        true
    }
}

/// Pending connections, bounded per source and in all.
#[derive(Clone)]
pub struct PendingTable {
    table: Arc<Mutex<Table>>,
    per_source: usize,
    total: usize,
}

/// What [`PendingTable::admit`] had to do to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// There was room.
    Room,
    /// The newcomer's source was at its cap: its own oldest pending connection was closed.
    EvictedOwnOldest,
    /// The table was full: the oldest connection of the busiest source (this one) was closed.
    EvictedBusiest(IpAddr),
}

/// One admitted pending connection; frees its place when dropped.
pub struct PendingSlot {
    table: Arc<Mutex<Table>>,
    ip: IpAddr,
    id: u64,
    /// Fires when the connection was evicted to make room for another (or `parent` fired).
    pub cancel: CancellationToken,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *guard;
        if let Some(q) = t.by_source.get_mut(&self.ip) {
            if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
                q.remove(i);
                t.count -= 1;
                if q.is_empty() {
                    t.by_source.remove(&self.ip);
                }
            }
        }
    }
}

impl PendingTable {
    /// A table holding at most `per_source` connections of one address and `total` in all
    /// (both at least 1).
    pub fn new(per_source: usize, total: usize) -> Self {
        PendingTable {
            table: Arc::default(),
            per_source: per_source.max(1),
            total: total.max(1),
        }
    }

    /// Admits a connection from `ip`, making room as the module says. The slot's token is a
    /// child of `parent`, so it also fires when the caller's session ends.
    pub fn admit(&self, ip: IpAddr, parent: &CancellationToken) -> (PendingSlot, Made) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut made = Made::Room;
        let own = t.by_source.get(&ip).map_or(0, VecDeque::len);
        if own >= self.per_source {
            t.evict_oldest_of(ip);
            made = Made::EvictedOwnOldest;
        } else if t.count >= self.total {
            let busiest = t
                .by_source
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(ip, _)| *ip);
            if let Some(b) = busiest {
                t.evict_oldest_of(b);
                made = Made::EvictedBusiest(b);
            }
        }
        let id = t.next;
        t.next += 1;
        let cancel = parent.child_token();
        t.by_source
            .entry(ip)
            .or_default()
            .push_back((id, cancel.clone()));
        t.count += 1;
        drop(t);
        (
            PendingSlot {
                table: self.table.clone(),
                ip,
                id,
                cancel,
            },
            made,
        )
    }

    /// Pending connections now (all sources).
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_at_its_cap_loses_its_own_oldest() {
        let t = PendingTable::new(2, 10);
        let root = CancellationToken::new();
        let (a, _) = t.admit(ip(2), &root);
        let (b, _) = t.admit(ip(2), &root);
        let (c, made) = t.admit(ip(2), &root);
        assert_eq!(made, Made::EvictedOwnOldest);
        assert!(a.cancel.is_cancelled());
        assert!(!b.cancel.is_cancelled() && !c.cancel.is_cancelled());
        assert_eq!(t.len(), 2);
        drop(a);
        assert_eq!(t.len(), 2, "an evicted slot is already gone from the table");
    }

    #[test]
    fn a_full_table_evicts_from_the_busiest_source_never_the_newcomer() {
        let t = PendingTable::new(3, 4);
        let root = CancellationToken::new();
        let stranger: Vec<_> = (0..3).map(|_| t.admit(ip(2), &root).0).collect();
        let (_other, _) = t.admit(ip(3), &root);
        let (client, made) = t.admit(ip(1), &root);
        assert_eq!(made, Made::EvictedBusiest(ip(2)));
        assert!(stranger[0].cancel.is_cancelled());
        assert!(!client.cancel.is_cancelled());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn slots_free_their_place_and_follow_the_parent() {
        let t = PendingTable::new(1, 1);
        let root = CancellationToken::new();
        let (a, _) = t.admit(ip(2), &root);
        drop(a);
        assert!(t.is_empty());
        let (b, made) = t.admit(ip(2), &root);
        assert_eq!(made, Made::Room);
        root.cancel();
        assert!(b.cancel.is_cancelled());
    }
}
