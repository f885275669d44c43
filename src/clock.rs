//! The one place the daemon reads clocks.
//!
//! Wall-clock timestamps are derived from the monotonic clock anchored once at start-up:
//! `wall = anchor_wall + (mono − anchor_mono)`. An NTP step therefore never makes a duration
//! negative or doubles time inside a run; a restart re-anchors. The engine never calls this:
//! it gets times as arguments.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic clock with a fixed wall-clock anchor. Cheap to clone.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor_mono: Instant,
    anchor_wall_ms: i64,
}

impl Clock {
    /// Anchors at the current system time.
    pub fn system() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock {
            anchor_mono: Instant::now(),
            anchor_wall_ms: i64::try_from(wall.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Current monotonic instant.
    pub fn mono_now(&self) -> Instant {
        Instant::now()
    }

    /// Wall time of a monotonic instant, UTC epoch milliseconds.
    pub fn wall_ms_at(&self, at: Instant) -> i64 {
        if at >= self.anchor_mono {
            self.anchor_wall_ms + at.duration_since(self.anchor_mono).as_millis() as i64
        } else {
            self.anchor_wall_ms - self.anchor_mono.duration_since(at).as_millis() as i64
        }
    }

    /// Current wall time, UTC epoch milliseconds (monotonic-derived).
    pub fn now_ms(&self) -> i64 {
        self.wall_ms_at(Instant::now())
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds (`2026-11-25T06:12:03.120Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => format!("{:.3}", ts).replace("+00:00", "Z"),
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_ms(1_764_051_123_120), "2025-11-25T06:12:03.120Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
