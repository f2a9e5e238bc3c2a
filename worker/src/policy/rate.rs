//! The `rate` limit: one limiter per process shared by every connection, with separate
//! read and write buckets of `rate` bytes/s each and a burst of one second's worth
//! (REFERENCE.md 4.6). Reads are charged after reading, writes before writing.
//!
//! Each bucket is a GCRA ("virtual scheduling") meter kept in one atomic: the theoretical
//! time at which the bucket would be empty again. Charging n bytes moves that time
//! forward by n/rate and says how long the caller must wait; no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A read and a write bucket of the same rate.
#[derive(Debug)]
pub struct RateLimiter {
    read: Bucket,
    write: Bucket,
}

impl RateLimiter {
    /// `bytes_per_sec` must be > 0.
    pub fn new(bytes_per_sec: u64) -> Self {
        let epoch = Instant::now();
        RateLimiter {
            read: Bucket::new(bytes_per_sec, epoch),
            write: Bucket::new(bytes_per_sec, epoch),
        }
    }

    /// Charges `n` bytes just read; returns how long to pause before going on.
    pub fn charge_read(&self, n: usize) -> Duration {
        self.read.charge(n as u64)
    }

    /// Charges `n` bytes about to be written; returns how long to wait before writing.
    pub fn charge_write(&self, n: usize) -> Duration {
        self.write.charge(n as u64)
    }
}

#[derive(Debug)]
struct Bucket {
    /// Nanoseconds per byte, scaled by 2^16 to keep precision at high rates.
    ns_per_byte_x65536: u64,
    /// Burst tolerance in ns (one second).
    tolerance_ns: u64,
    /// Theoretical arrival time, ns since `epoch`.
    tat_ns: AtomicU64,
    epoch: Instant,
}

impl Bucket {
    fn new(bytes_per_sec: u64, epoch: Instant) -> Self {
        let bps = bytes_per_sec.max(1) as u128;
        Bucket {
            ns_per_byte_x65536: ((1_000_000_000u128 << 16) / bps).max(1) as u64,
            tolerance_ns: 1_000_000_000,
            tat_ns: AtomicU64::new(0),
            epoch,
        }
    }

    fn charge(&self, n: u64) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let cost = ((n as u128 * self.ns_per_byte_x65536 as u128) >> 16) as u64;
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            // An idle bucket refills up to the burst: TAT never lags `now - tolerance`.
            let base = tat.max(now.saturating_sub(self.tolerance_ns));
            let new_tat = base.saturating_add(cost);
            match self.tat_ns.compare_exchange_weak(
                tat,
                new_tat,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    // Allowed once the bucket holds at most one second of backlog.
                    let allowed_at = new_tat.saturating_sub(self.tolerance_ns);
                    return Duration::from_nanos(allowed_at.saturating_sub(now));
                }
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_free_then_waits_scale_with_bytes() {
        let rl = RateLimiter::new(1_000_000);
        // One second's worth passes at once.
        assert_eq!(rl.charge_read(1_000_000), Duration::ZERO);
        // The next 500 kB must wait about half a second.
        let wait = rl.charge_read(500_000);
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // The write bucket is independent.
        assert_eq!(rl.charge_write(1000), Duration::ZERO);
    }
}
