//! The live figures of one instance: current TCP connections and UDP sessions and the four
//! cumulative byte counters, as the reference counts them (REFERENCE.md 4.6: bytes read
//! from / written to the user- or target-side sockets only, never the pool connections).
//!
//! Plain atomics with relaxed ordering: the relay adds to them once per chunk, the stats
//! ticker reads them; no reader needs them to agree with each other to the byte.

use std::sync::atomic::{AtomicU64, Ordering};

use nodepass_proto::report::Stats;

#[derive(Debug, Default)]
pub struct Figures {
    pub tcps: AtomicU64,
    pub udps: AtomicU64,
    pub tcprx: AtomicU64,
    pub tcptx: AtomicU64,
    pub udprx: AtomicU64,
    pub udptx: AtomicU64,
}

impl Figures {
    /// One `stats` report of these figures with the given mode, ping and pool size.
    pub fn snapshot(&self, mode: u8, ping: u64, pool: u64) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            mode,
            ping,
            pool,
            tcps: get(&self.tcps),
            udps: get(&self.udps),
            tcprx: get(&self.tcprx),
            tcptx: get(&self.tcptx),
            udprx: get(&self.udprx),
            udptx: get(&self.udptx),
        }
    }
}
