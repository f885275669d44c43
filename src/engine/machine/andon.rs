//! Andons: raising, escalating, acknowledging and resolving the calls for help of SPEC §3 —
//! fault andons (the stop's first-out fault, and safety faults during planned stops and
//! changeovers), quality andons (reject rate) and speed andons (running slowly).
//!
//! Owns: the memory's open [`AndonRecord`]s, their levels, and the `andon/ack` and
//! `andon/resolve` commands.
//!
//! Never does: open, close or classify a stop, or change a time class — raising an andon
//! in a planned stop leaves that time planned.
//!
//! Invariants the tests defend:
//! - at most one open andon per cause key (fault code, `quality`, `speed`);
//! - a fault andon is raised at stop start + `raise_after_s[severity]` (at once for
//!   `critical` with the default 0 s), only for faults with `andon = true`; its priority is
//!   the severity, one level up at criticality 5;
//! - safety is never planned away (SPEC §7): in a planned stop or a changeover only safety
//!   faults (category `safety` or severity `critical`) raise, counted from when the stop and
//!   the fault were both there, and resolve as soon as the fault clears;
//! - an unacknowledged andon escalates one level per `escalate_after_s` step, each stamped with
//!   its exact moment; an acknowledged one stops escalating;
//! - quality (≥ 20 units over 15 min above the reject limit) and speed andons clear after 60 s
//!   of the condition being false.

use super::production::RATE_WINDOW_MS;
use super::rules::{is_safety, severity_index};
use super::{Machine, StopKind};
use crate::config::Fault;
use crate::engine::event::{AndonCause, AndonRecord, Event};
use crate::engine::state::MachineState;

/// Quality and speed andons clear after this long with the condition false.
const CLEAR_AFTER_MS: i64 = 60_000;
/// The quality rule judges a reject rate only over at least this many units.
const QUALITY_MIN_UNITS: u64 = 20;

impl Machine {
    /// Andon rules whose moment has come by `now` (raising, clearing, escalating), each event
    /// stamped with its own exact time.
    pub(super) fn andons_due(&mut self, now: i64) -> Vec<Event> {
        let mut ev = Vec::new();
        // A fault andon after raise_after_s[severity] of the stop.
        if let Some(stop) = self.mem.stop.clone() {
            if let Some(fault) = stop.reason_bit.and_then(|b| self.rules.fault(b)).cloned() {
                let due = stop.start_ms + self.rules.raise_after_ms[severity_index(fault.severity)];
                let open = self.mem.andons.iter().any(|a| a.cause_key == fault.code);
                if fault.andon && !open && now >= due && stop.kind == StopKind::Unplanned {
                    ev.push(self.raise_fault_andon(&fault, due, stop.downtime_id.clone()));
                }
            }
        }
        // Safety is never planned away (SPEC §7): during a planned stop or a changeover every
        // active safety fault raises its andon after raise_after_s[severity], counted from when
        // the stop and the fault were both there (the fault did not cause the stop). The time
        // stays planned / changeover time: only the andon is raised.
        if let Some(stop) = self.mem.stop.clone() {
            if stop.kind != StopKind::Unplanned {
                let mut due: Vec<(i64, u32, Fault)> = self
                    .mem
                    .fault_since
                    .iter()
                    .filter_map(|(bit, since)| {
                        let f = self.rules.fault(*bit).filter(|f| f.andon && is_safety(f))?;
                        let after = self.rules.raise_after_ms[severity_index(f.severity)];
                        Some(((*since).max(stop.start_ms) + after, *bit, f.clone()))
                    })
                    .collect();
                due.sort_by_key(|(at, bit, _)| (*at, *bit));
                for (at, _, fault) in due {
                    let open = self.mem.andons.iter().any(|a| a.cause_key == fault.code);
                    if !open && now >= at {
                        ev.push(self.raise_fault_andon(&fault, at, stop.downtime_id.clone()));
                    }
                }
            }
        }
        // Speed andon after speed_after_s below the ratio.
        if let Some(since) = self.mem.speed_low_since {
            let due = since + self.rules.speed_after_ms;
            if now >= due && !self.mem.andons.iter().any(|a| a.cause == AndonCause::Speed) {
                let andon = AndonRecord {
                    andon_id: self.new_id("andon", due),
                    cause: AndonCause::Speed,
                    cause_key: "speed".into(),
                    priority: "medium".into(),
                    level: 1,
                    reason_code: "SPEED_LOSS".into(),
                    description: format!(
                        "running below {:.0} % of the ideal rate",
                        self.rules.speed_ratio * 100.0
                    ),
                    downtime_id: None,
                    raised_ms: due,
                    acknowledged_by: None,
                };
                ev.push(self.raise(andon));
            }
        }
        // Quality and speed andons clear after 60 s of the condition being false.
        for (cause, since) in [
            (AndonCause::Quality, self.mem.quality_ok_since),
            (AndonCause::Speed, self.mem.speed_ok_since),
        ] {
            if let Some(since) = since {
                if now >= since + CLEAR_AFTER_MS {
                    let ids: Vec<String> = self
                        .mem
                        .andons
                        .iter()
                        .filter(|a| a.cause == cause)
                        .map(|a| a.andon_id.clone())
                        .collect();
                    for id in ids {
                        ev.extend(self.resolve(&id, "auto", since + CLEAR_AFTER_MS));
                    }
                    match cause {
                        AndonCause::Quality => self.mem.quality_ok_since = None,
                        _ => self.mem.speed_ok_since = None,
                    }
                }
            }
        }
        // Escalation of unacknowledged andons, one event per level reached.
        let steps = self.rules.escalate_after_ms.clone();
        let code = self.code();
        for a in self
            .mem
            .andons
            .iter_mut()
            .filter(|a| a.acknowledged_by.is_none())
        {
            while let Some(after) = steps.get(a.level as usize - 1) {
                let due = a.raised_ms + after;
                if now < due {
                    break;
                }
                a.level += 1;
                ev.push(Event::AndonEscalated {
                    equipment: code.clone(),
                    at_ms: due,
                    andon_id: a.andon_id.clone(),
                    level: a.level,
                    priority: a.priority.clone(),
                });
            }
        }
        ev
    }

    fn raise_fault_andon(&mut self, fault: &Fault, at: i64, downtime_id: Option<String>) -> Event {
        let andon = AndonRecord {
            andon_id: self.new_id("andon", at),
            cause: AndonCause::Fault,
            cause_key: fault.code.clone(),
            priority: self.rules.priority(fault.severity).into(),
            level: 1,
            reason_code: fault.code.clone(),
            description: fault.description.clone(),
            downtime_id,
            raised_ms: at,
            acknowledged_by: None,
        };
        self.raise(andon)
    }

    pub(super) fn raise(&mut self, andon: AndonRecord) -> Event {
        self.mem.andons.push(andon.clone());
        Event::AndonRaised {
            equipment: self.code(),
            at_ms: andon.raised_ms,
            andon,
        }
    }

    pub(super) fn resolve(&mut self, andon_id: &str, by: &str, at: i64) -> Option<Event> {
        let i = self
            .mem
            .andons
            .iter()
            .position(|a| a.andon_id == andon_id)?;
        let a = self.mem.andons.remove(i);
        let at = at.max(a.raised_ms);
        Some(Event::AndonResolved {
            equipment: self.code(),
            at_ms: at,
            andon_id: a.andon_id,
            resolved_by: by.into(),
            duration_s: (at - a.raised_ms) as f64 / 1000.0,
        })
    }

    pub(super) fn sample_andons(
        &mut self,
        t: i64,
        running: Option<bool>,
        speed: Option<f64>,
    ) -> Vec<Event> {
        let mut ev = Vec::new();
        // Fault andons resolve when their fault has cleared and the machine runs again — or,
        // in a planned stop or a changeover, where nobody expects it to run, as soon as the
        // fault has cleared (a safety andon raised there would otherwise stay open until the
        // machine next runs).
        let not_expected_to_run = matches!(
            self.mem.state,
            MachineState::PlannedStop | MachineState::Changeover
        );
        if running == Some(true) || not_expected_to_run {
            let cleared: Vec<String> =
                self.mem
                    .andons
                    .iter()
                    .filter(|a| a.cause == AndonCause::Fault)
                    .filter(|a| {
                        !self.rules.faults.iter().any(|f| {
                            f.code == a.cause_key && self.mem.fault_since.contains_key(&f.bit)
                        })
                    })
                    .map(|a| a.andon_id.clone())
                    .collect();
            for id in cleared {
                ev.extend(self.resolve(&id, "auto", t));
            }
        }
        // Quality: reject rate over the last 15 min, with at least 20 units.
        let (g, r) = self
            .mem
            .quality_window
            .iter()
            .fold((0u64, 0u64), |(g, r), (_, dg, dr)| (g + dg, r + dr));
        let total = g + r;
        let bad_quality = total >= QUALITY_MIN_UNITS
            && (r as f64 / total as f64) > self.rules.quality_reject_rate;
        let open_quality = self
            .mem
            .andons
            .iter()
            .any(|a| a.cause == AndonCause::Quality);
        if bad_quality {
            self.mem.quality_ok_since = None;
            if !open_quality {
                let andon = AndonRecord {
                    andon_id: self.new_id("andon", t),
                    cause: AndonCause::Quality,
                    cause_key: "quality".into(),
                    priority: "high".into(),
                    level: 1,
                    reason_code: "QUALITY".into(),
                    description: format!(
                        "reject rate {:.1} % over the last 15 min (limit {:.1} %)",
                        100.0 * r as f64 / total as f64,
                        100.0 * self.rules.quality_reject_rate
                    ),
                    downtime_id: None,
                    raised_ms: t,
                    acknowledged_by: None,
                };
                ev.push(self.raise(andon));
            }
        } else if open_quality {
            self.mem.quality_ok_since.get_or_insert(t);
        }
        // Speed: the speed signal, else the unit rate over the last 60 s.
        let rate = if self.rules.has_speed_signal {
            speed
        } else {
            match (self.mem.rate_window.front(), self.mem.rate_window.back()) {
                (Some((t0, u0)), Some((t1, u1))) if t1 - t0 >= RATE_WINDOW_MS => {
                    Some((u1 - u0) as f64 * 60_000.0 / (t1 - t0) as f64)
                }
                _ => None,
            }
        };
        let slow = running == Some(true)
            && rate.is_some_and(|r| r < self.rules.speed_ratio * self.rules.ideal_rate_per_min);
        if slow {
            self.mem.speed_ok_since = None;
            self.mem.speed_low_since.get_or_insert(t);
        } else {
            self.mem.speed_low_since = None;
            if self.mem.andons.iter().any(|a| a.cause == AndonCause::Speed) {
                self.mem.speed_ok_since.get_or_insert(t);
            }
        }
        ev
    }

    /// `andon/ack`: stops the andon's escalation; it stays open.
    pub(super) fn acknowledge(
        &mut self,
        now: i64,
        andon_id: &str,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        let Some(a) = self.mem.andons.iter_mut().find(|a| a.andon_id == andon_id) else {
            return Err(format!(
                "no open andon \"{andon_id}\" on {}",
                self.rules.code
            ));
        };
        if let Some(who) = &a.acknowledged_by {
            return Err(format!(
                "andon \"{andon_id}\" was already acknowledged by {who}"
            ));
        }
        a.acknowledged_by = Some(by.into());
        Ok(vec![Event::AndonAcknowledged {
            equipment: self.code(),
            at_ms: now,
            andon_id: andon_id.to_string(),
            by: by.into(),
        }])
    }

    /// `andon/resolve`: closes an open andon by hand.
    pub(super) fn resolve_by_command(
        &mut self,
        now: i64,
        andon_id: &str,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        match self.resolve(andon_id, by, now) {
            Some(e) => Ok(vec![e]),
            None => Err(format!(
                "no open andon \"{andon_id}\" on {}",
                self.rules.code
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testkit::*;

    #[test]
    fn a_high_fault_raises_an_andon_after_its_delay_which_escalates_until_acknowledged() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(400, false, [1, 0]);
        let raised = d.named("andon.raised");
        assert_eq!(raised.len(), 1);
        assert_eq!(
            raised[0].0,
            ts("2026-11-25T07:01:10Z"),
            "raise_after_s.high = 60"
        );
        assert_eq!(raised[0].1["priority"], "high");
        assert_eq!(raised[0].1["level"], 1);
        assert_eq!(raised[0].1["cause"], "fault");
        assert_eq!(raised[0].1["reason_code"], "FILM_BREAK");
        assert!(raised[0].1["downtime_id"].is_string());
        let escalated = d.named("andon.escalated");
        assert_eq!(escalated.len(), 1);
        assert_eq!(escalated[0].0, ts("2026-11-25T07:06:10Z"));
        assert_eq!(escalated[0].1["level"], 2);
        let id = raised[0].1["andon_id"].as_str().unwrap().to_string();
        d.command(
            "BAG1/andon/ack",
            json!({"request_id":"r","by":"lead","andon_id": id}),
        )
        .unwrap();
        d.run(900, false, [1, 0]);
        assert_eq!(
            d.named("andon.escalated").len(),
            1,
            "an acknowledged andon does not escalate"
        );
        d.run(5, true, [0, 0]);
        let resolved = d.named("andon.resolved");
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].1["resolved_by"], "auto");
    }

    #[test]
    fn a_critical_fault_raises_its_andon_at_once_before_the_stop_is_downtime() {
        let mut c = line_config();
        c.equipment[0].faults[0].severity = Severity::Critical;
        let mut d = Drive::new(&c, "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(1, false, [1, 0]);
        let raised = d.named("andon.raised");
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].0, ts("2026-11-25T07:00:10Z"));
        assert!(raised[0].1["downtime_id"].is_null(), "not downtime yet");
        assert_eq!(raised[0].1["priority"], "critical");
    }

    #[test]
    fn criticality_five_raises_the_priority_one_level() {
        let mut c = line_config();
        c.equipment[0].criticality = 5;
        let mut d = Drive::new(&c, "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(400, false, [0, 2]);
        assert_eq!(
            d.named("andon.raised")[0].1["priority"],
            "high",
            "medium JAM → high"
        );
    }

    #[test]
    fn a_fault_without_andon_never_raises_one() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(900, false, [8, 0]);
        assert!(d.named("andon.raised").is_empty());
    }

    #[test]
    fn there_is_at_most_one_open_andon_per_cause() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(100, false, [1, 0]);
        d.run(1, false, [0, 0]);
        d.run(100, false, [1, 0]);
        assert_eq!(d.named("andon.raised").len(), 1);
    }

    #[test]
    fn a_high_reject_rate_raises_a_quality_andon_that_clears_after_a_minute_of_good_quality() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.reject_every = 5; // 0.2 rejects per 2 good: 9 % > 5 %
        d.run(60, true, [0, 0]);
        let raised = d.named("andon.raised");
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].1["cause"], "quality");
        assert_eq!(raised[0].1["priority"], "high");
        // Good quality again: the 15-minute rate falls under 5 % once enough good units dilute it.
        d.reject_every = 1_000_000;
        d.run(1800, true, [0, 0]);
        let resolved = d.named("andon.resolved");
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].1["resolved_by"], "auto");
    }

    #[test]
    fn the_quality_rule_needs_twenty_units() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.per_second = 0;
        d.reject_every = 1;
        d.run(19, true, [0, 0]);
        assert!(d.named("andon.raised").is_empty());
    }

    #[test]
    fn running_slowly_for_speed_after_s_raises_a_medium_speed_andon() {
        let mut c = line_config();
        c.equipment[0].signals.speed = None; // speed from counts over 60 s
        let mut d = Drive::new(&c, "2026-11-25T07:00:00Z");
        d.per_second = 1; // 60/min < 0.8 × 150
        d.run(400, true, [0, 0]);
        let raised = d.named("andon.raised");
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].1["cause"], "speed");
        assert_eq!(raised[0].1["priority"], "medium");
        d.per_second = 3;
        d.run(200, true, [0, 0]);
        assert_eq!(d.named("andon.resolved").len(), 1);
    }

    #[test]
    fn a_critical_fault_during_a_calendar_planned_stop_raises_its_andon_at_raise_after_s_critical()
    {
        let mut d = Drive::new(&safety_config(), "2026-11-25T09:59:00Z");
        d.run(60, true, NONE);
        d.run(30, false, NONE); // the break from 10:00
        d.run(600, false, OVERTEMP); // from 10:00:30
        let started = d.named("downtime.started");
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].1["planned"], true);
        let raised = d.named("andon.raised");
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(
            raised[0].0,
            ts("2026-11-25T10:00:35Z"),
            "5 s after the fault appeared in the stop"
        );
        assert_eq!(raised[0].1["priority"], "critical");
        assert_eq!(raised[0].1["reason_code"], "OVERTEMP");
        assert_eq!(raised[0].1["level"], 1);
        assert_eq!(
            raised[0].1["downtime_id"], started[0].1["downtime_id"],
            "it names the planned downtime it happened in"
        );
        let escalated = d.named("andon.escalated");
        assert_eq!(
            escalated[0].0,
            ts("2026-11-25T10:05:35Z"),
            "escalate_after_s[0] = 300"
        );
        assert!(
            d.named("downtime.ended").is_empty(),
            "the planned stop stays a planned stop"
        );
        assert_eq!(
            d.engine.machine("BAG1").unwrap().mem.state,
            MachineState::PlannedStop
        );
    }

    #[test]
    fn a_safety_category_low_severity_fault_during_a_changeover_raises_its_andon() {
        let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, NONE);
        d.command(
            "BAG1/changeover/start",
            json!({"request_id":"r","by":"lead","product_type_id":"BAG-2KG"}),
        )
        .unwrap();
        d.run(700, false, GUARD_OPEN);
        let raised = d.named("andon.raised");
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(
            raised[0].0,
            ts("2026-11-25T07:10:10Z"),
            "raise_after_s.low = 600 from the changeover start"
        );
        assert_eq!(raised[0].1["priority"], "low");
        assert_eq!(raised[0].1["reason_code"], "GUARD_OPEN");
        assert_eq!(d.named("downtime.started")[0].1["category"], "changeover");
    }

    #[test]
    fn a_high_fault_that_is_not_safety_raises_nothing_during_a_planned_stop() {
        let mut d = Drive::new(&safety_config(), "2026-11-25T09:59:00Z");
        d.run(60, true, NONE);
        d.run(1190, false, FILM_BREAK); // the whole break, and 30 s of the first FILM_BREAK
        assert!(d.named("andon.raised").is_empty());
        // Nor during a commanded one, nor during a changeover.
        let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, NONE);
        start_planned_stop(&mut d);
        d.run(900, false, FILM_BREAK);
        d.command(
            "BAG1/planned-stop/end",
            json!({"request_id":"r","by":"lead"}),
        )
        .unwrap();
        d.run(10, true, NONE);
        d.command(
            "BAG1/changeover/start",
            json!({"request_id":"r","by":"lead"}),
        )
        .unwrap();
        d.run(900, false, FILM_BREAK);
        assert!(d.named("andon.raised").is_empty());
    }

    /// 09:59–10:00 running, the break stopped (with `faults` shown from 10:00:30 until 10:19:50),
    /// then running until 10:30; the shift figures at 10:30.
    fn break_with(faults: [u64; 2]) -> (Drive, serde_json::Value) {
        let mut d = Drive::new(&safety_config(), "2026-11-25T09:59:00Z");
        d.run(60, true, NONE);
        d.run(30, false, NONE);
        d.run(1160, false, faults);
        d.run(10, false, NONE);
        d.run(600, true, NONE);
        d.finish(true);
        let figures = d
            .engine
            .current_oee(d.t)
            .into_iter()
            .find_map(|(code, f)| (code == "BAG1").then_some(f).flatten())
            .expect("shift A figures");
        (d, figures)
    }

    #[test]
    fn planned_stop_time_with_a_safety_andon_is_still_planned_downtime() {
        let (with, figures) = break_with(OVERTEMP);
        assert_eq!(with.named("andon.raised").len(), 1);
        let (without, plain) = break_with(NONE);
        assert!(without.named("andon.raised").is_empty());
        assert_eq!(figures["planned_downtime_s"], 1200.0, "{figures}");
        assert_eq!(figures["unplanned_downtime_s"], 0.0, "{figures}");
        assert_eq!(figures, plain, "the andon changes no OEE bucket");
    }

    #[test]
    fn a_safety_andon_raised_in_a_planned_stop_resolves_when_its_fault_clears_though_still_stopped()
    {
        let (d, _) = break_with(OVERTEMP);
        let resolved = d.named("andon.resolved");
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].0, ts("2026-11-25T10:19:50Z"));
        assert_eq!(resolved[0].1["resolved_by"], "auto");
    }
}
