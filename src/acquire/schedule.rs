//! Absolute poll schedule: tick `n` is due at `start + n × interval`, never drifting.
//!
//! Unlike tokio's default `Interval` (which bursts to catch up after a stall), a tick whose
//! time has already passed by more than one interval is skipped and counted: a late cycle
//! must never produce a bunch of samples stamped at the wrong time.

use std::time::{Duration, Instant};

/// The next tick to wait for and how many were skipped to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub at: Instant,
    pub index: u64,
    pub skipped: u64,
}

/// Deterministic tick generator; time is passed in.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    next: u64,
}

impl Schedule {
    /// The first tick is due at `start`.
    pub fn new(start: Instant, interval: Duration) -> Self {
        Schedule {
            start,
            interval: interval.max(Duration::from_millis(1)),
            next: 0,
        }
    }

    /// The next tick not yet in the past at `now` (a tick due now or within the current interval
    /// still runs, late); earlier unserved ticks are skipped.
    pub fn next_tick(&mut self, now: Instant) -> Tick {
        let mut skipped = 0;
        let mut at = self.at(self.next);
        // A tick is "missed" if the following tick is already due: running it now would bunch.
        while now >= self.at(self.next + 1) {
            self.next += 1;
            skipped += 1;
            at = self.at(self.next);
        }
        let tick = Tick {
            at,
            index: self.next,
            skipped,
        };
        self.next += 1;
        tick
    }

    fn at(&self, n: u64) -> Instant {
        let nanos = self.interval.as_nanos().saturating_mul(u128::from(n));
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_evenly_spaced_from_the_start_without_drift() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_millis(100));
        for n in 0..1000u64 {
            let now = t0 + Duration::from_millis(100 * n) + Duration::from_millis(7);
            let tick = s.next_tick(now);
            assert_eq!(tick.at, t0 + Duration::from_millis(100 * n));
            assert_eq!(tick.skipped, 0);
        }
    }

    #[test]
    fn a_stall_skips_missed_ticks_instead_of_bunching_them() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_millis(100));
        assert_eq!(s.next_tick(t0).index, 0);
        // Stalled for 350 ms: ticks 1 and 2 are gone, tick 3 (due at 300 ms) runs late.
        let tick = s.next_tick(t0 + Duration::from_millis(350));
        assert_eq!(tick.index, 3);
        assert_eq!(tick.skipped, 2);
        assert_eq!(tick.at, t0 + Duration::from_millis(300));
        assert_eq!(s.next_tick(t0 + Duration::from_millis(360)).index, 4);
    }

    #[test]
    fn an_early_caller_waits_for_the_next_tick() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_millis(100));
        s.next_tick(t0);
        let tick = s.next_tick(t0 + Duration::from_millis(10));
        assert_eq!(tick.at, t0 + Duration::from_millis(100));
        assert_eq!(tick.skipped, 0);
    }
}
