//! Loss figures of a window (SPEC §10, §11): TEEP, failures, MTBF, MTTR, minor stops and the
//! six big losses in seconds, from the summed minute buckets and the window's failure count.
//!
//! Owns: the one function that turns a summed [`Bucket`] into the flat figure fields of
//! `oee.snapshot`, `query/oee` and `report` ([`window_fields`]), so that the three can never
//! disagree; and the rule of which downtime is a failure ([`is_failure`]).
//!
//! Never does: sum buckets, read SQLite, know about shifts.
//!
//! The six big losses split planned busy time exactly (docs/decisions.md "Loss figures"):
//! - breakdowns = unplanned downtime − setup (every unplanned stop that is not a changeover),
//! - setup = changeover time,
//! - minor stops = minor-stop time (part of run time),
//! - speed loss = (run time − minor-stop time) − ideal cycle × total count (negative when the
//!   machine ran above its ideal rate, as measured),
//! - rejects = ideal cycle × reject count,
//! - planned = planned downtime (outside PBT, reported beside it),
//!
//! so breakdowns + setup + minor stops + speed + rejects + valuable operating time = PBT, with
//! valuable operating time = ideal cycle × good, hence OEE = valuable operating time / PBT and
//! TEEP = valuable operating time / calendar time. The tests defend these identities.

use serde_json::{json, Map, Value};

use super::oee::{figures, Bucket};

/// Downtime categories that count as failures for MTBF and MTTR (SPEC §11).
pub const FAILURE_CATEGORIES: [&str; 3] = ["mechanical", "electrical", "unassigned"];

/// Whether an unplanned downtime of `category` is a failure.
pub fn is_failure(category: &str) -> bool {
    FAILURE_CATEGORIES.contains(&category)
}

/// The loss figures of one window, in seconds where they are times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    pub calendar_s: f64,
    pub planned_busy_time_s: f64,
    pub valuable_operating_time_s: f64,
    pub breakdown_s: f64,
    pub setup_s: f64,
    pub minor_stop_s: f64,
    pub speed_s: f64,
    pub reject_s: f64,
    pub planned_s: f64,
    pub teep: Option<f64>,
    pub failures: u64,
    pub mtbf_s: Option<f64>,
    pub mttr_s: Option<f64>,
    pub minor_stops: u64,
}

/// The losses of a window of `calendar_ms` whose buckets sum to `b`, with `failures` failures.
pub fn losses(b: &Bucket, ideal_cycle_s: f64, calendar_ms: i64, failures: u64) -> Losses {
    let s = |ms: i64| ms as f64 / 1000.0;
    let pbt = s(b.scheduled_ms - b.planned_ms - b.offline_ms);
    let total = (b.good + b.reject) as f64;
    let vot = ideal_cycle_s * b.good as f64;
    let f = figures(b, ideal_cycle_s);
    let calendar = s(calendar_ms);
    Losses {
        calendar_s: calendar,
        planned_busy_time_s: pbt,
        valuable_operating_time_s: vot,
        breakdown_s: s(b.unplanned_ms - b.setup_ms),
        setup_s: s(b.setup_ms),
        minor_stop_s: s(b.minor_stop_ms),
        speed_s: s(b.run_ms - b.minor_stop_ms) - ideal_cycle_s * total,
        reject_s: ideal_cycle_s * b.reject as f64,
        planned_s: s(b.planned_ms),
        teep: f
            .oee
            .filter(|_| calendar > 0.0)
            .map(|oee| oee * pbt / calendar),
        failures,
        mtbf_s: (failures > 0).then(|| s(b.run_ms) / failures as f64),
        mttr_s: (failures > 0).then(|| s(b.unplanned_ms) / failures as f64),
        minor_stops: b.minor_stops,
    }
}

/// The flat figure fields of a window (`oee.snapshot` without `window`, `shift`, the window's
/// bounds and `final`): A/P/Q/OEE, the times and counts of §4, and the loss figures.
pub fn window_fields(
    b: &Bucket,
    ideal_cycle_s: f64,
    targets: &Value,
    calendar_ms: i64,
    failures: u64,
) -> Map<String, Value> {
    let f = figures(b, ideal_cycle_s);
    let l = losses(b, ideal_cycle_s, calendar_ms, failures);
    let v = json!({
        "availability": f.availability,
        "performance": f.performance,
        "quality": f.quality,
        "oee": f.oee,
        "performance_over_ideal": f.performance_over_ideal,
        "planned_busy_time_s": l.planned_busy_time_s,
        "run_time_s": b.run_ms as f64 / 1000.0,
        "unplanned_downtime_s": b.unplanned_ms as f64 / 1000.0,
        "planned_downtime_s": l.planned_s,
        "offline_s": b.offline_ms as f64 / 1000.0,
        "minor_stop_s": l.minor_stop_s,
        "good_count": b.good,
        "reject_count": b.reject,
        "total_count": b.good + b.reject,
        "ideal_cycle_time_s": ideal_cycle_s,
        "targets": targets,
        "calendar_time_s": l.calendar_s,
        "teep": l.teep,
        "failures": l.failures,
        "mtbf_s": l.mtbf_s,
        "mttr_s": l.mttr_s,
        "minor_stops": l.minor_stops,
        "valuable_operating_time_s": l.valuable_operating_time_s,
        "breakdown_loss_s": l.breakdown_s,
        "setup_loss_s": l.setup_s,
        "minor_stop_loss_s": l.minor_stop_s,
        "speed_loss_s": l.speed_s,
        "reject_loss_s": l.reject_s,
        "planned_loss_s": l.planned_s,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_window_with_a_changeover_a_breakdown_and_minor_stops_splits_pbt_exactly() {
        // One hour, ideal cycle 0.5 s: 600 s planned, 300 s changeover, 240 s breakdown,
        // run 2 460 s of which 60 s in 3 minor stops; 4 000 good and 100 rejects, 2 failures.
        let b = Bucket {
            scheduled_ms: 3_600_000,
            run_ms: 2_460_000,
            minor_stop_ms: 60_000,
            unplanned_ms: 540_000,
            setup_ms: 300_000,
            planned_ms: 600_000,
            good: 4_000,
            reject: 100,
            minor_stops: 3,
            ..Bucket::default()
        };
        let l = losses(&b, 0.5, 3_600_000, 2);
        // PBT = 3 600 − 600 = 3 000 s; VOT = 0.5 × 4 000 = 2 000 s.
        assert_eq!(l.planned_busy_time_s, 3_000.0);
        assert_eq!(l.valuable_operating_time_s, 2_000.0);
        assert_eq!(l.breakdown_s, 240.0);
        assert_eq!(l.setup_s, 300.0);
        assert_eq!(l.minor_stop_s, 60.0);
        // Speed: (2 460 − 60) − 0.5 × 4 100 = 2 400 − 2 050 = 350 s; rejects 0.5 × 100 = 50 s.
        assert_eq!(l.speed_s, 350.0);
        assert_eq!(l.reject_s, 50.0);
        // 240 + 300 + 60 + 350 + 50 + 2 000 = 3 000 = PBT.
        assert_eq!(l.planned_s, 600.0);
        // TEEP = 2 000 / 3 600; MTBF = 2 460 / 2; MTTR = 540 / 2.
        assert!((l.teep.unwrap() - 2_000.0 / 3_600.0).abs() < 1e-12);
        assert_eq!(l.mtbf_s, Some(1_230.0));
        assert_eq!(l.mttr_s, Some(270.0));
        assert_eq!(l.minor_stops, 3);
    }

    #[test]
    fn without_failures_mtbf_and_mttr_are_null_and_without_pbt_teep_is_null() {
        let b = Bucket {
            scheduled_ms: 60_000,
            planned_ms: 60_000,
            ..Bucket::default()
        };
        let l = losses(&b, 0.5, 60_000, 0);
        assert_eq!((l.mtbf_s, l.mttr_s, l.teep), (None, None, None));
        let fields = window_fields(&b, 0.5, &Value::Null, 60_000, 0);
        assert!(fields["mtbf_s"].is_null() && fields["teep"].is_null());
    }

    #[test]
    fn failures_are_mechanical_electrical_and_unassigned_downtime_only() {
        for c in ["mechanical", "electrical", "unassigned"] {
            assert!(is_failure(c), "{c}");
        }
        for c in [
            "material",
            "quality",
            "operator",
            "changeover",
            "planned",
            "safety",
        ] {
            assert!(!is_failure(c), "{c}");
        }
    }

    fn bucket() -> impl Strategy<Value = Bucket> {
        (
            0i64..3_000_000,
            0i64..1_000_000,
            0i64..1_000_000,
            0i64..1_000_000,
            0u64..20_000,
            0u64..2_000,
            0u64..50,
        )
            .prop_flat_map(|(run, unplanned, planned, offline, good, reject, n)| {
                (0..=run, 0..=unplanned).prop_map(move |(minor, setup)| Bucket {
                    scheduled_ms: run + unplanned + planned + offline,
                    run_ms: run,
                    minor_stop_ms: minor,
                    unplanned_ms: unplanned,
                    setup_ms: setup,
                    planned_ms: planned,
                    offline_ms: offline,
                    good,
                    reject,
                    minor_stops: n,
                })
            })
    }

    proptest! {
        #[test]
        fn the_six_losses_and_valuable_time_add_up_to_pbt_and_oee_is_valuable_time_over_pbt(
            b in bucket(), ideal in 0.01f64..5.0, extra in 0i64..1_000_000, failures in 0u64..20,
        ) {
            let calendar = b.scheduled_ms + extra;
            let l = losses(&b, ideal, calendar, failures);
            let sum = l.breakdown_s + l.setup_s + l.minor_stop_s + l.speed_s + l.reject_s
                + l.valuable_operating_time_s;
            prop_assert!((sum - l.planned_busy_time_s).abs() < 1e-6, "{} vs {}", sum, l.planned_busy_time_s);
            let f = figures(&b, ideal);
            if l.planned_busy_time_s > 0.0 {
                let oee = f.oee.unwrap();
                prop_assert!((oee - l.valuable_operating_time_s / l.planned_busy_time_s).abs() < 1e-9);
                if calendar > 0 {
                    let teep = l.teep.unwrap();
                    prop_assert!((teep - l.valuable_operating_time_s / l.calendar_s).abs() < 1e-9);
                    prop_assert!(teep <= oee + 1e-12, "TEEP never above OEE");
                }
            } else {
                prop_assert!(l.teep.is_none());
            }
            let scheduled = l.planned_busy_time_s + l.planned_s + b.offline_ms as f64 / 1000.0;
            prop_assert!((scheduled - b.scheduled_ms as f64 / 1000.0).abs() < 1e-6);
            prop_assert_eq!(l.mtbf_s.is_some(), failures > 0);
        }
    }
}
