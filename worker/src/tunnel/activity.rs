//! Idle tracking for one UDP session, shared by the task that forwards the user's datagrams
//! and the task that carries the answers back. A session is idle only when no datagram
//! moved in either direction for NP_UDP_READ_TIMEOUT (a target that is slow to answer while
//! the user keeps sending must not lose its session), and once a session has decided to
//! end, no datagram is handed to it any more: the forwarder sees that and starts a new one.
//!
//! One atomic word holds a traffic tick and a "closed" bit, so the forwarder's "record
//! traffic, is the session still open?" and the timer's "nothing moved, close it" cannot
//! interleave badly: whichever comes first in the word's modification order wins, and the
//! hot path is a single `fetch_add` (no lock, no allocation).

use std::sync::atomic::{AtomicU64, Ordering};

const CLOSED: u64 = 1 << 63;

/// Traffic tick plus closed flag of one UDP session.
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a datagram is about to move through the session. Returns false when
    /// the session has already ended: the caller must not use it (start a new session).
    pub fn touch(&self) -> bool {
        self.0.fetch_add(1, Ordering::AcqRel) & CLOSED == 0
    }

    /// Called by a task whose idle timer fired. `seen` is the tick that task saw when it
    /// armed the timer; it is updated here. Returns true when the session is now over (it
    /// was closed, or nothing moved since `seen` and this call closed it), false when there
    /// was traffic and the timer must be armed again.
    pub fn expire(&self, seen: &mut u64) -> bool {
        let now = self.0.load(Ordering::Acquire);
        if now & CLOSED != 0 {
            return true;
        }
        if now != *seen {
            *seen = now;
            return false;
        }
        match self
            .0
            .compare_exchange(now, now | CLOSED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            // A datagram was recorded in between: it must get its answer, so re-arm.
            Err(v) => {
                *seen = v;
                v & CLOSED != 0
            }
        }
    }

    /// The current tick, to arm the first timer with.
    pub fn tick(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Ends the session for any other reason (error, cancel): later `touch` calls fail.
    pub fn close(&self) {
        self.0.fetch_or(CLOSED, Ordering::AcqRel);
    }

    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire) & CLOSED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_since_the_timer_was_armed_re_arms_it() {
        let a = Activity::new();
        let mut seen = a.tick();
        assert!(a.touch());
        assert!(!a.expire(&mut seen), "a datagram moved: not idle");
        assert!(!a.is_closed());
        // Nothing moved during the next period: now it ends.
        assert!(a.expire(&mut seen));
        assert!(a.is_closed());
    }

    #[test]
    fn a_closed_session_refuses_datagrams() {
        let a = Activity::new();
        let mut seen = a.tick();
        assert!(a.expire(&mut seen));
        assert!(!a.touch(), "the forwarder must start a new session");
        let mut other = 0;
        assert!(a.expire(&mut other), "every task sees the end");
        let b = Activity::new();
        b.close();
        assert!(!b.touch());
    }

    #[test]
    fn touch_and_expire_race_never_loses_a_datagram() {
        // Whichever wins, a datagram is never accepted by a session that the same round
        // of the timer ended.
        for _ in 0..2_000 {
            let a = std::sync::Arc::new(Activity::new());
            let mut seen = a.tick();
            let a2 = a.clone();
            let t = std::thread::spawn(move || a2.touch());
            let ended = a.expire(&mut seen);
            let accepted = t.join().expect("thread");
            assert!(
                !(ended && accepted),
                "a datagram went into an ending session"
            );
            assert!(ended || accepted);
        }
    }
}
