//! Maintenance due (SPEC §11): running hours since the last maintenance, `maintenance.due` and
//! a low-priority `maintenance` andon at `maintenance_interval_hours`, `maintenance/done`, and
//! the estimate of when the next one falls due from the running share of the last 7 days.
//!
//! Owns: the memory's [`Maintenance`] counter (persisted with the memory, so a restart loses no
//! running hours) and the `maintenance/done` command.
//!
//! Never does: count time that is not `running` (stopped, faulted, planned, changeover and
//! offline time never move the counter), read a clock.
//!
//! Invariants the tests defend: the counter grows by exactly the time observed `running`;
//! `maintenance.due` is emitted once per interval, stamped with the moment the counter reached
//! it; `maintenance/done` resets the counter and resolves the maintenance andon; a newer
//! `last_maintenance_date` in the configuration counts as maintenance done.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Machine;
use crate::clock::rfc3339_ms;
use crate::engine::event::{AndonCause, AndonRecord, Event};

const HOUR_MS: i64 = 3_600_000;
/// The running share behind `next_maintenance_due` is judged over this window.
const SHARE_WINDOW_MS: i64 = 7 * 24 * HOUR_MS;
/// The cause key of the maintenance andon (one open per equipment).
const CAUSE_KEY: &str = "maintenance";

/// Running time since the last maintenance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Maintenance {
    /// Milliseconds observed `running` since the last maintenance.
    pub run_ms: i64,
    /// When the last maintenance was done (command or configuration), if known.
    pub last_ms: Option<i64>,
    /// When the counter reached the interval (set once; cleared by `maintenance/done`).
    pub due_ms: Option<i64>,
    /// Whether `maintenance.due` for `due_ms` was emitted.
    pub due_sent: bool,
    /// Running milliseconds per hour slot over the last 7 days, oldest first.
    pub hours: VecDeque<(i64, i64)>,
    /// The first moment observed, for the share's denominator before 7 days have passed.
    pub observed_from: Option<i64>,
}

impl Machine {
    /// `[from, to)` was observed `running`: the counter, the hourly share and the due moment.
    pub(super) fn count_running(&mut self, from: i64, to: i64) {
        let interval = self.rules.maintenance_interval_ms;
        let m = &mut self.mem.maintenance;
        if interval.is_some_and(|i| m.run_ms < i && m.run_ms + (to - from) >= i) {
            m.due_ms = interval.map(|i| from + (i - m.run_ms));
        }
        m.run_ms += to - from;
        let mut t = from;
        while t < to {
            let slot = t.div_euclid(HOUR_MS) * HOUR_MS;
            let end = (slot + HOUR_MS).min(to);
            match m.hours.back_mut() {
                Some((s, ms)) if *s == slot => *ms += end - t,
                _ => m.hours.push_back((slot, end - t)),
            }
            t = end;
        }
        while m
            .hours
            .front()
            .is_some_and(|(s, _)| *s + HOUR_MS <= to - SHARE_WINDOW_MS)
        {
            m.hours.pop_front();
        }
    }

    /// Notes the first observation (the share's denominator starts there) and a
    /// `last_maintenance_date` from the configuration newer than what the counter knows.
    pub(super) fn maintenance_observed(&mut self, t: i64) {
        let m = &mut self.mem.maintenance;
        m.observed_from.get_or_insert(t);
        if let Some(cfg) = self.rules.last_maintenance_ms {
            if m.last_ms.is_none_or(|l| cfg > l) {
                *m = Maintenance {
                    last_ms: Some(cfg),
                    hours: std::mem::take(&mut m.hours),
                    observed_from: m.observed_from,
                    ..Maintenance::default()
                };
            }
        }
    }

    /// `maintenance.due` and the maintenance andon once the counter has reached the interval.
    pub(super) fn maintenance_due(&mut self) -> Vec<Event> {
        let (Some(interval), Some(at)) = (
            self.rules.maintenance_interval_ms,
            self.mem.maintenance.due_ms,
        ) else {
            return Vec::new();
        };
        if self.mem.maintenance.due_sent {
            return Vec::new();
        }
        self.mem.maintenance.due_sent = true;
        let m = &self.mem.maintenance;
        let data = json!({
            "run_hours": m.run_ms as f64 / HOUR_MS as f64,
            "interval_hours": interval as f64 / HOUR_MS as f64,
            "last_maintenance_at": m.last_ms.map(rfc3339_ms),
            "due_at": rfc3339_ms(at),
        });
        let mut ev = vec![Event::Maintenance {
            equipment: self.code(),
            at_ms: at,
            done: false,
            data,
        }];
        if !self.mem.andons.iter().any(|a| a.cause_key == CAUSE_KEY) {
            let andon = AndonRecord {
                andon_id: self.new_id("andon", at),
                cause: AndonCause::Maintenance,
                cause_key: CAUSE_KEY.into(),
                priority: "low".into(),
                level: 1,
                reason_code: "MAINTENANCE_DUE".into(),
                description: format!(
                    "Maintenance due after {} running hours",
                    interval as f64 / HOUR_MS as f64
                ),
                downtime_id: None,
                raised_ms: at,
                acknowledged_by: None,
            };
            ev.push(self.raise(andon));
        }
        ev.push(self.context_changed(at, "maintenance_due", "auto"));
        ev
    }

    /// `maintenance/done`: records the maintenance, resets the counter, resolves the andon.
    pub(super) fn maintenance_done(
        &mut self,
        now: i64,
        note: &Option<String>,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        let m = &mut self.mem.maintenance;
        let data = json!({
            "run_hours": m.run_ms as f64 / HOUR_MS as f64,
            "interval_hours": self.rules.maintenance_interval_ms.map(|i| i as f64 / HOUR_MS as f64),
            "last_maintenance_at": m.last_ms.map(rfc3339_ms),
            "done_at": rfc3339_ms(now),
            "by": by,
            "note": note,
        });
        *m = Maintenance {
            last_ms: Some(now),
            hours: std::mem::take(&mut m.hours),
            observed_from: m.observed_from,
            ..Maintenance::default()
        };
        let mut ev = vec![Event::Maintenance {
            equipment: self.code(),
            at_ms: now,
            done: true,
            data,
        }];
        let open: Vec<String> = self
            .mem
            .andons
            .iter()
            .filter(|a| a.cause_key == CAUSE_KEY)
            .map(|a| a.andon_id.clone())
            .collect();
        ev.extend(open.iter().filter_map(|id| self.resolve(id, by, now)));
        ev.push(self.context_changed(now, "maintenance_done", by));
        Ok(ev)
    }

    /// Running hours since the last maintenance.
    pub fn run_hours_since_maintenance(&self) -> f64 {
        self.mem.maintenance.run_ms as f64 / HOUR_MS as f64
    }

    /// When the interval will be reached at the running share of the last 7 days (since the
    /// first observation when younger): `None` without an interval or without running time.
    pub fn next_maintenance_due(&self, now: i64) -> Option<i64> {
        let interval = self.rules.maintenance_interval_ms?;
        let m = &self.mem.maintenance;
        if let Some(due) = m.due_ms {
            return Some(due);
        }
        let from = (now - SHARE_WINDOW_MS).max(m.observed_from?);
        let span = now - from;
        let ran: i64 = m
            .hours
            .iter()
            .filter(|(s, _)| *s + HOUR_MS > from)
            .map(|(_, ms)| *ms)
            .sum();
        if span <= 0 || ran <= 0 {
            return None;
        }
        let share = ran as f64 / span as f64;
        let remaining = (interval - m.run_ms).max(0) as f64;
        Some(now + (remaining / share).round() as i64)
    }

    /// What `status` shows of maintenance.
    pub fn maintenance_json(&self, now: i64) -> serde_json::Value {
        json!({
            "interval_hours": self.rules.maintenance_interval_ms.map(|i| i as f64 / HOUR_MS as f64),
            "run_hours_since_maintenance": self.run_hours_since_maintenance(),
            "last_maintenance_at": self.mem.maintenance.last_ms.map(rfc3339_ms),
            "next_maintenance_due": self.next_maintenance_due(now).map(rfc3339_ms),
            "due": self.mem.maintenance.due_ms.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testkit::*;

    fn maintained(hours: f64) -> Config {
        let mut c = line_config();
        c.equipment[0].maintenance_interval_hours = Some(hours);
        c
    }

    #[test]
    fn maintenance_falls_due_after_the_running_time_with_stopped_time_not_counted() {
        // Interval 0.5 h = 1 800 s of running. 1 000 s running, 600 s stopped (not counted),
        // 800 s running: the counter reaches 1 800 s at 07:00:00 + 1 000 + 600 + 800 s.
        let mut d = Drive::new(&maintained(0.5), "2026-11-25T07:00:00Z");
        d.run(1000, true, [0, 0]);
        d.run(600, false, [0, 2]);
        d.run(799, true, [0, 0]);
        assert!(d.named("maintenance.due").is_empty(), "not yet");
        d.run(3, true, [0, 0]);
        let due = d.named("maintenance.due");
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].0, ts("2026-11-25T07:40:00Z"));
        assert_eq!(due[0].1["run_hours"], 0.5);
        assert_eq!(due[0].1["interval_hours"], 0.5);
        let raised: Vec<_> = d
            .named("andon.raised")
            .into_iter()
            .filter(|(_, a)| a["cause"] == "maintenance")
            .collect();
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].1["priority"], "low");
        let andon_id = raised[0].1["andon_id"].as_str().unwrap().to_string();

        d.run(100, true, [0, 0]);
        assert_eq!(d.named("maintenance.due").len(), 1, "once per interval");
        d.command(
            "BAG1/maintenance/done",
            json!({"request_id":"m1","by":"fitter","note":"bearings"}),
        )
        .unwrap();
        let done = d.named("maintenance.done");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1["by"], "fitter");
        let resolved = d.named("andon.resolved");
        assert!(resolved
            .iter()
            .any(|(_, r)| r["andon_id"] == andon_id.as_str()));
        let m = d.engine.machine("BAG1").unwrap();
        assert_eq!(m.run_hours_since_maintenance(), 0.0, "reset");
        let ctx = d.named("context.changed").last().unwrap().1.clone();
        assert_eq!(ctx["run_hours_since_maintenance"], 0.0);
    }

    #[test]
    fn a_restart_in_between_loses_no_running_hours() {
        // 1 000 s running, then the daemon stops; the memory it persisted is restored an hour
        // later (offline meanwhile, not counted); 800 s more running make 1 800 s = due.
        let config = maintained(0.5);
        let mut d = Drive::new(&config, "2026-11-25T07:00:00Z");
        d.run(1000, true, [0, 0]);
        let (code, memory) = d.engine.memories().remove(0);
        let memory: machine::Memory = serde_json::from_str(&memory).unwrap();
        let last_seen = memory.last_seen_ms;
        let restart = d.t + 3_600_000;
        let mut engine = Engine::new(&config, restart);
        engine.restore_memory(&code, memory, Vec::new(), last_seen);
        d.engine = engine;
        d.t = restart;
        assert_eq!(
            d.engine.machine("BAG1").unwrap().mem.maintenance.run_ms,
            999_000,
            "the 999 s between the first and the last sample before the restart"
        );
        d.run(802, true, [0, 0]);
        let due = d.named("maintenance.due");
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].0, restart + 801_000);
    }

    #[test]
    fn the_next_due_date_follows_the_running_share_and_the_context_carries_it() {
        // Interval 2 h; running half of the 2 h observed (4 × 15 min): 1 h run, 1 h left at a
        // share of 0.5 → due 2 h after now.
        let mut d = Drive::new(&maintained(2.0), "2026-11-25T07:00:00Z");
        for _ in 0..4 {
            d.run(900, true, [0, 0]);
            d.run(900, false, [0, 0]);
        }
        let m = d.engine.machine("BAG1").unwrap();
        let now = d.t;
        assert_eq!(m.run_hours_since_maintenance(), 1.0);
        assert_eq!(m.next_maintenance_due(now), Some(now + 7_200_000));
        d.command(
            "BAG1/context",
            json!({"request_id":"c","by":"x","operator":"ann"}),
        )
        .unwrap();
        let ctx = d.named("context.changed").last().unwrap().1.clone();
        assert!(ctx["next_maintenance_due"].is_string(), "{ctx}");
        assert!(ctx["run_hours_since_maintenance"].as_f64().unwrap() > 0.99);
    }

    #[test]
    fn without_an_interval_nothing_falls_due() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(100, true, [0, 0]);
        let m = d.engine.machine("BAG1").unwrap();
        assert_eq!(m.next_maintenance_due(d.t), None);
        assert!(
            m.run_hours_since_maintenance() > 0.0,
            "counted all the same"
        );
    }
}
