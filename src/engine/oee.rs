//! OEE: minute buckets are the single source of truth (SPEC §3).
//!
//! Every stretch of observed time is attributed to exactly one class and split at minute
//! boundaries; counts land in the minute of the sample that saw them. A shift, a job or a
//! rolling window is a sum of buckets, so all figures agree with each other. Time is kept in
//! milliseconds so sums are exact; it is reported in seconds.
//!
//! Invariants: `run ⊇ minor_stop`; `unplanned ⊇ setup` (changeover time, SPEC §3 setup
//! loss); `scheduled = run + unplanned + planned + offline`;
//! therefore PBT = scheduled − planned − offline = run + unplanned, and
//! OEE = ideal cycle time × good / PBT whenever PBT > 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::calendar::Calendar;

/// What a stretch of time was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeClass {
    Run,
    /// A stop shorter than `micro_stop_s`: run time that lowers performance.
    MinorStop,
    Unplanned,
    /// A changeover: unplanned downtime that is a setup loss (ISO 22400 setup time).
    Changeover,
    Planned,
    Offline,
}

/// One equipment-minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub scheduled_ms: i64,
    pub run_ms: i64,
    pub minor_stop_ms: i64,
    pub unplanned_ms: i64,
    pub planned_ms: i64,
    pub offline_ms: i64,
    pub good: u64,
    pub reject: u64,
    /// Changeover time, part of `unplanned_ms` (the setup loss). Zero in rows and memories
    /// written before loss figures existed.
    #[serde(default)]
    pub setup_ms: i64,
    /// Minor stops that began in this minute (counted once classified).
    #[serde(default)]
    pub minor_stops: u64,
}

impl Bucket {
    /// Adds another bucket's figures.
    pub fn add(&mut self, o: &Bucket) {
        self.scheduled_ms += o.scheduled_ms;
        self.run_ms += o.run_ms;
        self.minor_stop_ms += o.minor_stop_ms;
        self.unplanned_ms += o.unplanned_ms;
        self.planned_ms += o.planned_ms;
        self.offline_ms += o.offline_ms;
        self.good += o.good;
        self.reject += o.reject;
        self.setup_ms += o.setup_ms;
        self.minor_stops += o.minor_stops;
    }

    fn add_time(&mut self, ms: i64, class: TimeClass) {
        self.scheduled_ms += ms;
        match class {
            TimeClass::Run => self.run_ms += ms,
            TimeClass::MinorStop => {
                self.run_ms += ms;
                self.minor_stop_ms += ms;
            }
            TimeClass::Unplanned => self.unplanned_ms += ms,
            TimeClass::Changeover => {
                self.unplanned_ms += ms;
                self.setup_ms += ms;
            }
            TimeClass::Planned => self.planned_ms += ms,
            TimeClass::Offline => self.offline_ms += ms,
        }
    }
}

/// Start of the minute containing `ms`.
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

/// The minute buckets of one equipment.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    pub minutes: BTreeMap<i64, Bucket>,
}

impl Buckets {
    /// Attributes `[from, to)` to `class`, minute by minute, only where a shift is scheduled.
    pub fn add_time(&mut self, from: i64, to: i64, class: TimeClass, cal: &Calendar) {
        let mut t = from;
        while t < to {
            let minute = minute_of(t);
            let end = (minute + 60_000).min(to);
            if cal.shift_at(minute).is_some() {
                self.minutes
                    .entry(minute)
                    .or_default()
                    .add_time(end - t, class);
            }
            t = end;
        }
    }

    /// Counts seen by the sample at `at`; outside every shift they count nowhere.
    pub fn add_counts(&mut self, at: i64, good: u64, reject: u64, cal: &Calendar) {
        if good == 0 && reject == 0 {
            return;
        }
        let minute = minute_of(at);
        if cal.shift_at(minute).is_some() {
            let b = self.minutes.entry(minute).or_default();
            b.good += good;
            b.reject += reject;
        }
    }

    /// One minor stop that began at `at` (in a scheduled minute; elsewhere it counts nowhere).
    pub fn add_minor_stop(&mut self, at: i64, cal: &Calendar) {
        let minute = minute_of(at);
        if cal.shift_at(minute).is_some() {
            self.minutes.entry(minute).or_default().minor_stops += 1;
        }
    }

    /// Sum over minutes in `[from, to)`.
    pub fn sum(&self, from: i64, to: i64) -> Bucket {
        let mut total = Bucket::default();
        for (_, b) in self.minutes.range(minute_of(from)..to) {
            total.add(b);
        }
        total
    }

    /// Forgets minutes before `before` (they are persisted).
    pub fn prune(&mut self, before: i64) {
        self.minutes = self.minutes.split_off(&minute_of(before));
    }
}

/// A/P/Q/OEE of a window, per SPEC §3 and §6.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    pub availability: Option<f64>,
    pub performance: Option<f64>,
    pub quality: Option<f64>,
    pub oee: Option<f64>,
    pub performance_over_ideal: bool,
}

/// Computes the figures of a summed window; `null` (None) for zero denominators.
pub fn figures(b: &Bucket, ideal_cycle_s: f64) -> Figures {
    let pbt = (b.scheduled_ms - b.planned_ms - b.offline_ms) as f64 / 1000.0;
    let run = b.run_ms as f64 / 1000.0;
    let total = (b.good + b.reject) as f64;
    if pbt <= 0.0 {
        return Figures {
            availability: None,
            performance: None,
            quality: None,
            oee: None,
            performance_over_ideal: false,
        };
    }
    let performance = (run > 0.0).then(|| ideal_cycle_s * total / run);
    Figures {
        availability: Some(run / pbt),
        performance,
        quality: (total > 0.0).then(|| b.good as f64 / total),
        oee: Some(ideal_cycle_s * b.good as f64 / pbt),
        performance_over_ideal: performance.is_some_and(|p| p > 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal() -> Calendar {
        Calendar::new("UTC", &[], &[])
    }

    #[test]
    fn time_is_split_at_minute_boundaries() {
        let mut b = Buckets::default();
        b.add_time(30_000, 150_000, TimeClass::Run, &cal());
        assert_eq!(b.minutes[&0].run_ms, 30_000);
        assert_eq!(b.minutes[&60_000].run_ms, 60_000);
        assert_eq!(b.minutes[&120_000].run_ms, 30_000);
        assert_eq!(b.sum(0, 180_000).run_ms, 120_000);
    }

    #[test]
    fn a_machine_that_never_ran_has_oee_zero_and_no_performance_or_quality() {
        let b = Bucket {
            scheduled_ms: 60_000,
            unplanned_ms: 60_000,
            ..Bucket::default()
        };
        let f = figures(&b, 0.5);
        assert_eq!(f.availability, Some(0.0));
        assert_eq!(f.performance, None);
        assert_eq!(f.quality, None);
        assert_eq!(f.oee, Some(0.0));
    }

    #[test]
    fn a_window_with_no_planned_busy_time_has_only_nulls() {
        let b = Bucket {
            scheduled_ms: 60_000,
            planned_ms: 60_000,
            ..Bucket::default()
        };
        assert_eq!(figures(&b, 0.5).oee, None);
        assert_eq!(figures(&b, 0.5).availability, None);
    }

    #[test]
    fn minor_stops_count_as_run_time_and_lower_performance_not_availability() {
        let b = Bucket {
            scheduled_ms: 60_000,
            run_ms: 60_000,
            minor_stop_ms: 10_000,
            good: 100,
            ..Bucket::default()
        };
        let f = figures(&b, 0.5);
        assert_eq!(f.availability, Some(1.0));
        assert!((f.performance.unwrap() - 50.0 / 60.0).abs() < 1e-12);
    }

    #[test]
    fn performance_above_one_is_reported_and_flagged() {
        let b = Bucket {
            scheduled_ms: 60_000,
            run_ms: 60_000,
            good: 150,
            ..Bucket::default()
        };
        let f = figures(&b, 0.5);
        assert_eq!(f.performance, Some(1.25));
        assert!(f.performance_over_ideal);
    }
}
