//! Traffic totals of one instance across worker restarts and resets.
//!
//! A worker reports cumulative counters that start at zero with each process. The API
//! shows totals that survive restarts until a `reset`: total = base + reported - offset,
//! where `base` is the total when the current worker started and `offset` the worker's own
//! figure at the last reset.

/// tcprx, tcptx, udprx, udptx.
pub type Traffic = [u64; 4];

/// The traffic accounting of one instance. Only [`crate::state`] holds one, and these three
/// methods are the only way its figures change.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrafficCounters {
    base: Traffic,
    offset: Traffic,
    last: Traffic,
}

impl TrafficCounters {
    /// A new worker starts counting from zero; `totals` are the figures shown until now.
    pub fn worker_started(&mut self, totals: Traffic) {
        self.base = totals;
        self.offset = [0; 4];
        self.last = [0; 4];
    }

    /// Takes a worker's cumulative report; returns the totals to show.
    pub fn apply(&mut self, reported: Traffic) -> Traffic {
        let mut totals = [0u64; 4];
        for i in 0..4 {
            if reported[i] < self.offset[i] {
                // Cannot happen within one worker's life; keep counting forward.
                self.offset[i] = 0;
            }
            self.last[i] = reported[i];
            totals[i] = self.base[i].saturating_add(reported[i] - self.offset[i]);
        }
        totals
    }

    /// Zeroes the totals: later reports count from the worker's current figures.
    pub fn reset(&mut self) {
        self.offset = self.last;
        self.base = [0; 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_survive_restarts_until_a_reset() {
        let mut c = TrafficCounters::default();
        c.worker_started([0; 4]);
        assert_eq!(c.apply([10, 20, 0, 0]), [10, 20, 0, 0]);
        // The worker restarts with the totals shown so far.
        c.worker_started([10, 20, 0, 0]);
        assert_eq!(c.apply([5, 0, 1, 0]), [15, 20, 1, 0]);
        c.reset();
        assert_eq!(c.apply([5, 0, 1, 0]), [0; 4]);
        assert_eq!(c.apply([7, 3, 1, 2]), [2, 3, 0, 2]);
    }
}
