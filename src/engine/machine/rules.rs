//! What the configuration says about one equipment, compiled once for the engine.
//!
//! Owns: [`Rules`] (thresholds in milliseconds, the fault table, andon timing, OEE targets) and
//! the name tables of the configuration enums the engine reports (severity, fault category):
//! one table per enum, read by every direction the engine needs.
//!
//! Never does: change at run time (except [`Rules::max_planned_stop_ms`], set by the engine
//! before any input), read a sample, emit an event.
//!
//! Invariants: a fault's andon priority is its severity, one level higher (capped at
//! `critical`) on equipment of criticality 5; a severity's index is its `raise_after_s` slot.

use serde_json::json;

use crate::config::{Equipment, Fault, FaultCategory, Severity};
use crate::sample::SignalLayout;

/// How long a planned stop started by command lasts at most unless told otherwise
/// (`[commands] max_planned_stop_min`, SPEC §7): 120 min.
pub const DEFAULT_MAX_PLANNED_STOP_MS: i64 = 120 * 60_000;

/// What the config says about one equipment, compiled for the engine.
#[derive(Debug, Clone)]
pub struct Rules {
    pub code: String,
    pub plc: String,
    pub line_id: String,
    pub ideal_rate_per_min: f64,
    pub micro_stop_ms: i64,
    pub criticality: u8,
    pub faults: Vec<Fault>,
    /// How this equipment's engine signals are read (fault word width, counter wrap points).
    pub layout: SignalLayout,
    pub has_speed_signal: bool,
    pub raise_after_ms: [i64; 4],
    pub escalate_after_ms: Vec<i64>,
    pub quality_reject_rate: f64,
    pub speed_ratio: f64,
    pub speed_after_ms: i64,
    pub targets: serde_json::Value,
    /// A planned stop started by command ends by itself this long after its start (SPEC §7).
    /// Not part of `[[equipment]]`: the engine sets it for every machine
    /// ([`crate::engine::Engine::set_max_planned_stop_ms`]).
    pub max_planned_stop_ms: i64,
    /// `maintenance_interval_hours` in ms of running time (SPEC §11).
    pub maintenance_interval_ms: Option<i64>,
    /// `last_maintenance_date` (UTC epoch ms).
    pub last_maintenance_ms: Option<i64>,
}

impl Rules {
    /// Compiles the engine's view of one `[[equipment]]`.
    pub fn new(e: &Equipment) -> Rules {
        let a = &e.andon;
        Rules {
            code: e.code.clone(),
            maintenance_interval_ms: e
                .maintenance_interval_hours
                .map(|h| (h * 3_600_000.0).round() as i64),
            last_maintenance_ms: e.last_maintenance_ms,
            plc: e.plc.clone(),
            line_id: e.line_id.clone(),
            ideal_rate_per_min: e.ideal_rate_per_min,
            micro_stop_ms: e.micro_stop_s as i64 * 1000,
            criticality: e.criticality,
            faults: e.faults.clone(),
            layout: SignalLayout::of(&e.signals),
            has_speed_signal: e.signals.speed.is_some(),
            raise_after_ms: a.raise_after_s.map(|s| s as i64 * 1000),
            escalate_after_ms: a
                .escalate_after_s
                .iter()
                .map(|s| *s as i64 * 1000)
                .collect(),
            quality_reject_rate: a.quality_reject_rate,
            speed_ratio: a.speed_ratio,
            speed_after_ms: a.speed_after_s as i64 * 1000,
            targets: json!({
                "availability": e.oee_targets.availability,
                "performance": e.oee_targets.performance,
                "quality": e.oee_targets.quality,
                "oee": e.oee_targets.oee,
            }),
            max_planned_stop_ms: DEFAULT_MAX_PLANNED_STOP_MS,
        }
    }

    /// Seconds one unit takes at the ideal rate.
    pub fn ideal_cycle_s(&self) -> f64 {
        60.0 / self.ideal_rate_per_min
    }

    /// The fault-table entry of `bit`, if the table has one.
    pub(super) fn fault(&self, bit: u32) -> Option<&Fault> {
        self.faults.iter().find(|f| f.bit == bit)
    }

    /// The andon priority of a fault of `severity`: one level higher on equipment of
    /// criticality 5, never above `critical`.
    pub(super) fn priority(&self, severity: Severity) -> &'static str {
        let i = severity_index(severity);
        let bumped = if self.criticality >= 5 {
            (i + 1).min(SEVERITIES.len() - 1)
        } else {
            i
        };
        SEVERITIES[bumped].1
    }
}

/// A fault that is never planned away (SPEC §7): category `safety` or severity `critical`.
pub(super) fn is_safety(f: &Fault) -> bool {
    matches!(f.category, FaultCategory::Safety) || matches!(f.severity, Severity::Critical)
}

/// Each severity with its reported name, in rising order: the position is the severity's
/// `raise_after_s` slot and the step of a criticality bump.
const SEVERITIES: [(Severity, &str); 4] = [
    (Severity::Low, "low"),
    (Severity::Medium, "medium"),
    (Severity::High, "high"),
    (Severity::Critical, "critical"),
];

/// Each fault category with the name downtime events report.
const CATEGORIES: [(FaultCategory, &str); 7] = [
    (FaultCategory::Mechanical, "mechanical"),
    (FaultCategory::Electrical, "electrical"),
    (FaultCategory::Material, "material"),
    (FaultCategory::Quality, "quality"),
    (FaultCategory::Safety, "safety"),
    (FaultCategory::Operator, "operator"),
    (FaultCategory::Other, "other"),
];

/// The `raise_after_s` slot of `s` (0 = low … 3 = critical).
pub(super) fn severity_index(s: Severity) -> usize {
    SEVERITIES.iter().position(|(v, _)| *v == s).unwrap_or(0)
}

/// The name a fault category is reported under.
pub(super) fn category_name(c: FaultCategory) -> &'static str {
    CATEGORIES
        .iter()
        .find(|(v, _)| *v == c)
        .map_or("other", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_rise_in_raise_after_order() {
        let names: Vec<_> = [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .map(|s| (severity_index(s), SEVERITIES[severity_index(s)].1))
        .collect();
        assert_eq!(
            names,
            [(0, "low"), (1, "medium"), (2, "high"), (3, "critical")]
        );
    }

    #[test]
    fn every_fault_category_has_its_own_name() {
        let mut names: Vec<_> = CATEGORIES.iter().map(|(c, _)| category_name(*c)).collect();
        names.dedup();
        assert_eq!(names.len(), 7);
        assert_eq!(category_name(FaultCategory::Safety), "safety");
    }
}
