//! Broker reconnect backoff: capped exponential growth with decorrelated jitter.
//!
//! ## Design constraints
//! - **No storms.** After a broker restart, a fleet of gateways must not reconnect in lock-step:
//!   each delay is drawn uniformly from `[base, 3 × previous]` ("decorrelated jitter"), capped
//!   at `mqtt.reconnect_max_s` (SPEC §7, default 5 s), so retries spread out and grow roughly
//!   exponentially, and a broker that comes back is reconnected within one capped step.
//! - **Reset only after a connection stayed up** for [`STABLE_AFTER`]: a broker that accepts
//!   and then drops us at once (bad ACL, a flapping load balancer) keeps the delay growing
//!   instead of being hammered every `base`.
//! - Pure: the random source and the connection's uptime are arguments, so it is unit-tested.

use std::time::Duration;

/// First delay and the floor of every delay.
pub const BASE: Duration = Duration::from_millis(500);
/// The default cap (SPEC §7 `reconnect_max_s = 5`).
pub const CAP: Duration = Duration::from_secs(5);
/// A connection that lasted this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Backoff state between reconnect attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    previous: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::with_cap(CAP)
    }
}

impl Backoff {
    /// A backoff whose delays never exceed `cap` (at least [`BASE`]).
    pub fn with_cap(cap: Duration) -> Self {
        Backoff {
            previous: BASE,
            cap: cap.max(BASE),
        }
    }

    /// Starts over from [`BASE`].
    pub fn reset(&mut self) {
        self.previous = BASE;
    }

    /// The delay before the next attempt. `connected_for` is how long the session that just
    /// ended stayed connected (`None` if it never was); `rand(lo, hi)` returns a value in
    /// `lo..hi` milliseconds.
    pub fn next(
        &mut self,
        connected_for: Option<Duration>,
        mut rand: impl FnMut(u64, u64) -> u64,
    ) -> Duration {
        if connected_for.is_some_and(|d| d >= STABLE_AFTER) {
            self.previous = BASE;
        }
        let lo = BASE.as_millis() as u64;
        let hi = (self.previous.as_millis() as u64)
            .saturating_mul(3)
            .max(lo + 1);
        let delay = Duration::from_millis(rand(lo, hi)).min(self.cap);
        self.previous = delay;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max(lo: u64, hi: u64) -> u64 {
        let _ = lo;
        hi - 1
    }

    #[test]
    fn delays_grow_until_the_cap_when_every_attempt_fails() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.next(None, max)).collect();
        assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), CAP);
        assert!(delays[0] < Duration::from_secs(2));
    }

    #[test]
    fn every_delay_stays_between_base_and_cap_whatever_the_randomness() {
        let mut b = Backoff::default();
        for i in 0..200 {
            let d = b.next(None, |lo, hi| fastrand::u64(lo..hi));
            assert!(d >= BASE && d <= CAP, "attempt {i}: {d:?}");
        }
    }

    #[test]
    fn a_short_lived_connection_does_not_reset_the_backoff() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next(None, max);
        }
        let d = b.next(Some(Duration::from_secs(5)), max);
        assert_eq!(
            d, CAP,
            "a connection dropped after 5 s keeps the long delay"
        );
    }

    #[test]
    fn the_cap_is_the_configured_reconnect_max() {
        let cap = Duration::from_secs(30);
        let mut b = Backoff::with_cap(cap);
        let last = (0..20).map(|_| b.next(None, max)).last().unwrap();
        assert_eq!(last, cap);
    }

    #[test]
    fn a_connection_that_stayed_up_resets_the_backoff() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next(None, max);
        }
        let d = b.next(Some(STABLE_AFTER), max);
        assert!(d <= BASE * 3, "{d:?}");
    }
}
