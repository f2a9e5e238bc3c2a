//! The `slot` limit: at most `slot` TCP connections + UDP sessions at once (0 = no limit).
//! A [`SlotGuard`] holds one slot and keeps the TCPS/UDPS figures; dropping it releases
//! both. Unlike the reference, the figures are kept even when there is no limit, so TCPS
//! and UDPS are true with `slot=0` too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::figures::Figures;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Tcp,
    Udp,
}

/// The slot accounting of one instance.
#[derive(Debug, Clone)]
pub struct Slots {
    limit: u64,
    figures: Arc<Figures>,
}

impl Slots {
    pub fn new(limit: u32, figures: Arc<Figures>) -> Self {
        Slots {
            limit: u64::from(limit),
            figures,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn counter(&self, kind: SlotKind) -> &AtomicU64 {
        match kind {
            SlotKind::Tcp => &self.figures.tcps,
            SlotKind::Udp => &self.figures.udps,
        }
    }

    /// Takes a slot, or None when tcp + udp already reach the limit.
    pub fn try_acquire(&self, kind: SlotKind) -> Option<SlotGuard> {
        if self.limit > 0 {
            let used = self.figures.tcps.load(Ordering::Relaxed)
                + self.figures.udps.load(Ordering::Relaxed);
            if used >= self.limit {
                return None;
            }
        }
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        Some(SlotGuard {
            slots: self.clone(),
            kind,
        })
    }

    /// Current use, for the `slot limit reached: n/limit` message.
    pub fn used(&self) -> u64 {
        self.figures.tcps.load(Ordering::Relaxed) + self.figures.udps.load(Ordering::Relaxed)
    }
}

/// One held slot.
#[derive(Debug)]
pub struct SlotGuard {
    slots: Slots,
    kind: SlotKind,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots
            .counter(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_counts_tcp_and_udp_together() {
        let figures = Arc::new(Figures::default());
        let slots = Slots::new(2, figures.clone());
        let a = slots.try_acquire(SlotKind::Tcp).expect("first slot");
        let b = slots.try_acquire(SlotKind::Udp).expect("second slot");
        assert!(slots.try_acquire(SlotKind::Tcp).is_none());
        assert_eq!(figures.tcps.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(slots.try_acquire(SlotKind::Tcp).is_some());
        drop(b);
        assert_eq!(slots.used(), 0);
    }

    #[test]
    fn zero_means_unlimited_but_still_counted() {
        let figures = Arc::new(Figures::default());
        let slots = Slots::new(0, figures.clone());
        let guards: Vec<_> = (0..100)
            .map(|_| slots.try_acquire(SlotKind::Tcp).expect("unlimited"))
            .collect();
        assert_eq!(figures.tcps.load(Ordering::Relaxed), 100);
        drop(guards);
        assert_eq!(figures.tcps.load(Ordering::Relaxed), 0);
    }
}
