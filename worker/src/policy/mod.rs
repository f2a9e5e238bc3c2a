//! The per-instance policies applied to user traffic: the `slot` limit on concurrent TCP
//! connections + UDP sessions, the per-instance `rate` limit, and the `read` idle timeout.
//! The relay takes a [`RelayPolicy`] and consults it per chunk without locking; the UDP
//! loops pace each datagram through [`RelayPolicy::pace_read`] / [`RelayPolicy::pace_write`];
//! the accept loops take a [`SlotGuard`] per connection or session.

pub mod block;
pub mod proxy;
pub mod rate;
pub mod slot;

use std::sync::Arc;
use std::time::Duration;

pub use rate::RateLimiter;
pub use slot::{SlotGuard, SlotKind, Slots};

/// What the relay needs to know about policies for one connection.
#[derive(Clone, Default)]
pub struct RelayPolicy {
    /// Per-read idle timeout (`read`); None = wait forever.
    pub read_timeout: Option<Duration>,
    /// Shared limiter (`rate`); None = unlimited.
    pub rate: Option<Arc<RateLimiter>>,
}

impl RelayPolicy {
    /// Builds the policy from the URL's `read` and the rate in bytes/s (0 = unlimited).
    pub fn new(read: Duration, rate_bytes: u64) -> Self {
        RelayPolicy {
            read_timeout: (!read.is_zero()).then_some(read),
            rate: (rate_bytes > 0).then(|| Arc::new(RateLimiter::new(rate_bytes))),
        }
    }
}

impl RelayPolicy {
    /// Waits out the rate limit for a datagram of `n` bytes just read from a
    /// user/target-side UDP socket (at once when there is no limit).
    pub async fn pace_read(&self, n: usize) {
        if let Some(rl) = &self.rate {
            let pause = rl.charge_read(n);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Waits out the rate limit before writing a datagram of `n` bytes to a
    /// user/target-side UDP socket.
    pub async fn pace_write(&self, n: usize) {
        if let Some(rl) = &self.rate {
            let pause = rl.charge_write(n);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}
