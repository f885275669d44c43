//! Stops and downtime: opening and closing stops on state changes, minor stops, first-out
//! reasons, operator reasons, and planned stops (calendar windows and commanded ones, with the
//! commanded planned stop's timeout).
//!
//! Owns: [`Stop`] and its [`StopKind`], the memory's recent [`DowntimeRecord`]s, the state
//! [`Machine::transition`] that opens and closes stops, and the `planned-stop/*` and
//! `downtime/reason` commands.
//!
//! Never does: raise or resolve an andon (that is `andon`; closing a stop only links the open
//! fault andons to its downtime), count units, read a sample.
//!
//! Invariants the tests defend:
//! - an unplanned stop has no `downtime_id` until it reaches `micro_stop_s`: one that ends
//!   before is a minor stop reported at its end, one that reaches it starts downtime stamped
//!   with its original start, its held time becoming unplanned downtime;
//! - the first-out reason is the fault active earliest, the lowest bit on a tie; a fault
//!   appearing during an `UNASSIGNED` stop becomes its reason, never over an operator's reason;
//! - `stopped` ↔ `faulted` is one stop; planned stops and changeovers keep their own reason;
//! - a commanded planned stop ends by itself at start + `max_planned_stop_ms` with
//!   `ended_by = "timeout"` (a deadline that survives a restart); calendar planned stops never
//!   time out.

use serde::{Deserialize, Serialize};

use super::rules::category_name;
use super::Machine;
use crate::engine::calendar::Calendar;
use crate::engine::event::{AndonCause, DowntimeRecord, Event, Reason};
use crate::engine::oee::TimeClass;
use crate::engine::state::MachineState;

/// Closed downtimes remembered for `downtime/reason` after they ended.
const RECENT_DOWNTIMES: usize = 64;

/// Kind of an open stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StopKind {
    Unplanned,
    Planned { name: String },
    Changeover,
}

/// An open stop. `downtime_id` is `None` while an unplanned stop may still be a minor stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    pub kind: StopKind,
    pub start_ms: i64,
    pub downtime_id: Option<String>,
    pub reason: Reason,
    /// The fault bit behind `reason`, when it is a fault.
    pub reason_bit: Option<u32>,
    /// Who set the reason by command; an operator's reason is never overwritten by `auto`.
    pub reason_by: Option<String>,
    pub fault_bits: Vec<u32>,
}

impl Machine {
    fn stop_kind(
        state: MachineState,
        cal: &Calendar,
        t: i64,
        by_command: &Option<String>,
    ) -> Option<StopKind> {
        match state {
            MachineState::Stopped | MachineState::Faulted => Some(StopKind::Unplanned),
            MachineState::PlannedStop => Some(StopKind::Planned {
                name: by_command
                    .clone()
                    .or_else(|| cal.planned_at(t).map(|w| w.name))
                    .unwrap_or_else(|| "planned".into()),
            }),
            MachineState::Changeover => Some(StopKind::Changeover),
            MachineState::Running | MachineState::Offline => None,
        }
    }

    /// Moves to `to` at `t`; a stop this ends carries `ended_by` (see [`DowntimeRecord`]).
    pub(super) fn transition(
        &mut self,
        to: MachineState,
        t: i64,
        cal: &Calendar,
        ended_by: &str,
    ) -> Vec<Event> {
        let from = self.mem.state;
        if to == from {
            return Vec::new();
        }
        let mut ev = vec![Event::StateChanged {
            equipment: self.code(),
            from,
            to,
            at_ms: t,
        }];
        let same_stop = matches!(
            (from, to),
            (MachineState::Stopped, MachineState::Faulted)
                | (MachineState::Faulted, MachineState::Stopped)
        );
        if !same_stop {
            ev.extend(self.close_stop(t, cal, ended_by));
        }
        self.mem.state = to;
        self.mem.since_ms = t;
        if !same_stop {
            if let Some(kind) = Self::stop_kind(to, cal, t, &self.mem.planned_by_command) {
                ev.extend(self.open_stop(kind, t, cal));
            }
        }
        ev
    }

    /// The first-out reason among active faults: earliest first, lowest bit on a tie.
    fn first_out_bit(&self) -> Option<u32> {
        self.mem
            .fault_since
            .iter()
            .filter(|(b, _)| self.rules.fault(**b).is_some())
            .min_by_key(|(b, since)| (**since, **b))
            .map(|(b, _)| *b)
    }

    fn fault_reason(&self, bit: u32) -> Reason {
        match self.rules.fault(bit) {
            Some(f) => Reason {
                code: f.code.clone(),
                description: f.description.clone(),
                category: category_name(f.category).into(),
            },
            None => Reason::unassigned(),
        }
    }

    fn open_stop(&mut self, kind: StopKind, t: i64, cal: &Calendar) -> Vec<Event> {
        let bit = if kind == StopKind::Unplanned {
            self.first_out_bit()
        } else {
            None
        };
        let reason = match (&kind, bit) {
            (StopKind::Unplanned, Some(b)) => self.fault_reason(b),
            (StopKind::Unplanned, None) => Reason::unassigned(),
            (StopKind::Planned { name }, _) => Reason {
                code: "PLANNED".into(),
                description: name.clone(),
                category: "planned".into(),
            },
            (StopKind::Changeover, _) => Reason {
                code: "CHANGEOVER".into(),
                description: "Changeover".into(),
                category: "changeover".into(),
            },
        };
        let immediate = kind != StopKind::Unplanned;
        let downtime_id = immediate.then(|| self.new_id("downtime", t));
        let stop = Stop {
            kind,
            start_ms: t,
            downtime_id,
            reason,
            reason_bit: bit,
            reason_by: None,
            fault_bits: self.mem.fault_since.keys().copied().collect(),
        };
        let mut ev = Vec::new();
        if immediate {
            ev.push(Event::DowntimeStarted {
                equipment: self.code(),
                at_ms: t,
                record: self.record_of(&stop, None, false),
            });
        }
        self.mem.stop = Some(stop);
        // micro_stop_s = 0 makes every stop downtime at once; critical andons raise at once.
        ev.extend(self.time_rules(t, cal));
        ev
    }

    fn record_of(&self, stop: &Stop, end_ms: Option<i64>, minor: bool) -> DowntimeRecord {
        DowntimeRecord {
            downtime_id: stop.downtime_id.clone().unwrap_or_default(),
            start_ms: stop.start_ms,
            end_ms,
            reason: stop.reason.clone(),
            planned: matches!(stop.kind, StopKind::Planned { .. }),
            fault_bits: stop.fault_bits.clone(),
            minor,
            closed_by: None,
            ended_by: None,
        }
    }

    pub(super) fn close_stop(&mut self, t: i64, cal: &Calendar, ended_by: &str) -> Vec<Event> {
        let Some(mut stop) = self.mem.stop.take() else {
            return Vec::new();
        };
        let minor = stop.downtime_id.is_none();
        if minor {
            // Ended before micro_stop_s: its held time is run time that lowers performance.
            self.buckets
                .add_time(stop.start_ms, t, TimeClass::MinorStop, cal);
            self.buckets.add_minor_stop(stop.start_ms, cal);
            stop.downtime_id = Some(self.new_id("minor-stop", stop.start_ms));
        }
        let mut record = self.record_of(&stop, Some(t), minor);
        record.ended_by = Some(ended_by.to_string());
        self.remember(record.clone());
        for a in self.mem.andons.iter_mut() {
            if a.downtime_id.is_none() && a.cause == AndonCause::Fault && !minor {
                a.downtime_id = stop.downtime_id.clone();
            }
        }
        vec![Event::DowntimeEnded {
            equipment: self.code(),
            at_ms: t,
            record,
        }]
    }

    /// Keeps the failure log's entry of an unplanned downtime current (see
    /// [`super::Memory::failure_log`]); minor stops, planned stops and changeovers are not in it.
    fn log_unplanned(&mut self, record: &DowntimeRecord) {
        if record.minor
            || record.planned
            || record.reason.category == "changeover"
            || record.downtime_id.is_empty()
        {
            return;
        }
        let log = &mut self.mem.failure_log;
        match log.iter_mut().find(|(id, _, _)| *id == record.downtime_id) {
            Some(entry) => entry.2 = record.reason.category.clone(),
            None => log.push_back((
                record.downtime_id.clone(),
                record.start_ms,
                record.reason.category.clone(),
            )),
        }
    }

    /// Failures (SPEC §11) whose downtime started in `[from, to)`.
    pub(crate) fn failures_in(&self, from: i64, to: i64) -> u64 {
        self.mem
            .failure_log
            .iter()
            .filter(|(_, start, c)| {
                (from..to).contains(start) && crate::engine::loss::is_failure(c)
            })
            .count() as u64
    }

    fn remember(&mut self, record: DowntimeRecord) {
        self.log_unplanned(&record);
        if let Some(existing) = self
            .mem
            .downtimes
            .iter_mut()
            .find(|d| d.downtime_id == record.downtime_id)
        {
            *existing = record;
            return;
        }
        self.mem.downtimes.push_back(record);
        while self.mem.downtimes.len() > RECENT_DOWNTIMES {
            self.mem.downtimes.pop_front();
        }
    }

    /// A fault appearing during an `UNASSIGNED` stop becomes its reason (SPEC §6).
    pub(super) fn first_out(&mut self, t: i64) -> Vec<Event> {
        let Some(bit) = self.first_out_bit() else {
            return Vec::new();
        };
        let reason = self.fault_reason(bit);
        let Some(stop) = self.mem.stop.as_mut() else {
            return Vec::new();
        };
        if stop.kind != StopKind::Unplanned || stop.reason_bit.is_some() || stop.reason_by.is_some()
        {
            return Vec::new();
        }
        stop.reason = reason.clone();
        stop.reason_bit = Some(bit);
        if !stop.fault_bits.contains(&bit) {
            stop.fault_bits.push(bit);
        }
        match stop.downtime_id.clone() {
            Some(id) => {
                self.recategorise(&id, &reason.category);
                vec![Event::DowntimeReasonSet {
                    equipment: self.code(),
                    at_ms: t,
                    downtime_id: id,
                    reason,
                    by: "auto".into(),
                }]
            }
            None => Vec::new(),
        }
    }

    /// The failure log follows a downtime's new category.
    fn recategorise(&mut self, downtime_id: &str, category: &str) {
        if let Some(entry) = self
            .mem
            .failure_log
            .iter_mut()
            .find(|(id, _, _)| id == downtime_id)
        {
            entry.2 = category.to_string();
        }
    }

    /// An unplanned stop reaching `micro_stop_s` by `now` becomes downtime, stamped at
    /// start + `micro_stop_s`; the open fault andons get its `downtime_id`.
    pub(super) fn stop_due(&mut self, now: i64, cal: &Calendar) -> Vec<Event> {
        let mut ev = Vec::new();
        if let Some(stop) = &self.mem.stop {
            let due = stop.start_ms + self.rules.micro_stop_ms;
            if stop.kind == StopKind::Unplanned && stop.downtime_id.is_none() && now >= due {
                let start = stop.start_ms;
                let id = self.new_id("downtime", start);
                // The held time observed so far is unplanned downtime after all.
                let seen = self.mem.last_seen_ms;
                self.buckets
                    .add_time(start, seen.max(start), TimeClass::Unplanned, cal);
                if let Some(stop) = self.mem.stop.as_mut() {
                    stop.downtime_id = Some(id.clone());
                }
                for a in self.mem.andons.iter_mut() {
                    if a.cause == AndonCause::Fault && a.downtime_id.is_none() {
                        a.downtime_id = Some(id.clone());
                    }
                }
                if let Some(stop) = &self.mem.stop {
                    let record = self.record_of(stop, None, false);
                    self.remember(record.clone());
                    ev.push(Event::DowntimeStarted {
                        equipment: self.code(),
                        at_ms: due,
                        record,
                    });
                }
            }
        }
        ev
    }

    /// A commanded planned stop whose deadline has come by `now` ends at the deadline
    /// (`ended_by = "timeout"`, SPEC §7); the state is then re-derived from the last sample.
    /// Calendar planned stops have no deadline: their window ends them.
    pub(super) fn planned_timeout(&mut self, now: i64, cal: &Calendar) -> Vec<Event> {
        let Some(deadline) = self.mem.planned_deadline_ms.filter(|d| now >= *d) else {
            return Vec::new();
        };
        self.mem.planned_deadline_ms = None;
        self.mem.planned_by_command = None;
        self.rederive(deadline, cal, "timeout")
    }

    /// Re-derives the state after a command (or the planned-stop timeout) changed planned-stop
    /// or changeover status; a stop this ends carries `ended_by`.
    pub(super) fn rederive(&mut self, now: i64, cal: &Calendar, ended_by: &str) -> Vec<Event> {
        if self.mem.state == MachineState::Offline {
            return Vec::new();
        }
        let t = now.max(self.mem.last_seen_ms);
        self.advance(t, cal);
        let faulted = !self.mem.fault_since.is_empty();
        let next = self.derive_state(self.mem.last_running, faulted, t, cal);
        self.transition(next, t, cal, ended_by)
    }

    /// `planned-stop/start`: a planned stop until `planned-stop/end`, or until its deadline.
    pub(super) fn start_planned_stop(
        &mut self,
        now: i64,
        why: &Option<String>,
        cal: &Calendar,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        if self.mem.planned_by_command.is_some() {
            return Err("a planned stop is already active".into());
        }
        self.mem.planned_by_command = Some(why.clone().unwrap_or_else(|| "planned stop".into()));
        self.mem.planned_deadline_ms = Some(now.saturating_add(self.rules.max_planned_stop_ms));
        Ok(self.rederive(now, cal, by))
    }

    /// `planned-stop/end`: ends the planned stop a command started.
    pub(super) fn end_planned_stop(
        &mut self,
        now: i64,
        cal: &Calendar,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        if self.mem.planned_by_command.take().is_none() {
            return Err("no planned stop was started by command".into());
        }
        self.mem.planned_deadline_ms = None;
        Ok(self.rederive(now, cal, by))
    }

    /// `downtime/reason`: an operator's reason for an open or a recent unplanned downtime; a
    /// code from the fault table takes its description and category, any other code is an
    /// `operator` reason described by `note`.
    pub(super) fn set_downtime_reason(
        &mut self,
        now: i64,
        downtime_id: &str,
        reason_code: &str,
        note: &Option<String>,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        let reason = match self.rules.faults.iter().find(|f| f.code == reason_code) {
            Some(f) => Reason {
                code: f.code.clone(),
                description: f.description.clone(),
                category: category_name(f.category).into(),
            },
            None => Reason {
                code: reason_code.to_string(),
                description: note.clone().unwrap_or_else(|| reason_code.to_string()),
                category: "operator".into(),
            },
        };
        let open = self
            .mem
            .stop
            .as_mut()
            .filter(|s| s.downtime_id.as_deref() == Some(downtime_id));
        if let Some(stop) = open {
            if !matches!(stop.kind, StopKind::Unplanned) {
                return Err("planned stops and changeovers keep their own reason".into());
            }
            stop.reason = reason.clone();
            stop.reason_by = Some(by.into());
            let snapshot = stop.clone();
            let record = self.record_of(&snapshot, None, false);
            self.remember(record);
        } else if let Some(d) = self
            .mem
            .downtimes
            .iter_mut()
            .find(|d| d.downtime_id == downtime_id)
        {
            if d.planned || d.reason.category == "changeover" {
                return Err("planned stops and changeovers keep their own reason".into());
            }
            d.reason = reason.clone();
            self.recategorise(downtime_id, &reason.category);
        } else {
            return Err(format!(
                "no recent downtime \"{downtime_id}\" on {}",
                self.rules.code
            ));
        }
        Ok(vec![Event::DowntimeReasonSet {
            equipment: self.code(),
            at_ms: now,
            downtime_id: downtime_id.to_string(),
            reason,
            by: by.into(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testkit::*;

    #[test]
    fn a_stop_shorter_than_micro_stop_is_a_minor_stop_reported_at_its_end() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(60, true, [0, 0]);
        d.run(29, false, [0, 0]);
        d.run(10, true, [0, 0]);
        assert!(
            d.named("downtime.started").is_empty(),
            "a minor stop never starts downtime"
        );
        let ended = d.named("downtime.ended");
        assert_eq!(ended.len(), 1);
        let (at, data) = &ended[0];
        assert_eq!(*at, ts("2026-11-25T07:01:29Z"));
        assert_eq!(data["minor"], true);
        assert_eq!(data["duration_s"], 29.0);
        assert_eq!(data["reason_code"], "UNASSIGNED");
    }

    #[test]
    fn a_stop_reaching_micro_stop_starts_downtime_with_its_original_start_time() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(60, true, [0, 0]);
        d.run(45, false, [1, 0]);
        d.run(5, true, [0, 0]);
        let started = d.named("downtime.started");
        assert_eq!(started.len(), 1);
        let (at, data) = &started[0];
        assert_eq!(
            *at,
            ts("2026-11-25T07:01:30Z"),
            "emitted when it reached 30 s"
        );
        assert_eq!(data["started_at"], "2026-11-25T07:01:00.000Z");
        assert_eq!(data["reason_code"], "FILM_BREAK");
        assert_eq!(data["category"], "material");
        assert_eq!(data["planned"], false);
        assert_eq!(data["fault_bits"], json!([0]));
        let ended = d.named("downtime.ended");
        assert_eq!(ended[0].1["duration_s"], 45.0);
        assert_eq!(ended[0].1["minor"], false);
        assert_eq!(ended[0].1["downtime_id"], data["downtime_id"]);
    }

    #[test]
    fn the_first_out_fault_is_the_one_active_earliest_not_the_lowest_bit() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 2]); // JAM (bit 17) active while still running
        d.run(2, true, [1, 2]); // FILM_BREAK (bit 0) joins
        d.run(40, false, [1, 2]);
        let started = d.named("downtime.started");
        assert_eq!(started[0].1["reason_code"], "JAM");
    }

    #[test]
    fn faults_appearing_in_the_same_poll_go_to_the_lowest_bit() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(40, false, [1 | 8, 0]);
        assert_eq!(
            d.named("downtime.started")[0].1["reason_code"],
            "FILM_BREAK"
        );
    }

    #[test]
    fn a_fault_appearing_after_an_unassigned_downtime_start_sets_the_reason_automatically() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(35, false, [0, 0]);
        d.run(10, false, [0, 2]);
        let started = d.named("downtime.started");
        assert_eq!(started[0].1["reason_code"], "UNASSIGNED");
        assert_eq!(started[0].1["category"], "unassigned");
        let set = d.named("downtime.reason_set");
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].1["reason_code"], "JAM");
        assert_eq!(set[0].1["by"], "auto");
        assert_eq!(set[0].0, ts("2026-11-25T07:00:45Z"));
    }

    #[test]
    fn an_operator_can_set_the_reason_of_an_unassigned_downtime_and_auto_does_not_override_it() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(35, false, [0, 0]);
        let id = d.named("downtime.started")[0].1["downtime_id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = d.command(
            "BAG1/downtime/reason",
            json!({"request_id":"r1","by":"jsmith","downtime_id": id,"reason_code":"NO_OPERATOR"}),
        );
        assert!(r.is_ok(), "{r:?}");
        d.run(10, false, [0, 2]);
        let set = d.named("downtime.reason_set");
        assert_eq!(
            set.len(),
            1,
            "auto never overrides an operator's reason: {set:?}"
        );
        assert_eq!(set[0].1["reason_code"], "NO_OPERATOR");
        assert_eq!(set[0].1["category"], "operator");
        assert_eq!(set[0].1["by"], "jsmith");
    }

    #[test]
    fn a_commanded_planned_stop_ends_with_ended_by_timeout_exactly_at_start_plus_max() {
        let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
        d.engine.set_max_planned_stop_ms(10 * 60_000);
        d.run(10, true, NONE);
        start_planned_stop(&mut d); // at 07:00:10
        d.run(600, false, NONE); // samples up to 07:10:09
        assert!(d.named("downtime.ended").is_empty());
        // A tick that arrives late still stamps the end with the deadline itself.
        let events = d.engine.on_tick(ts("2026-11-25T07:10:10.700Z"));
        d.events.extend(events.clone());
        let ended: Vec<_> = events
            .iter()
            .filter(|e| e.name() == "downtime.ended")
            .filter_map(|e| e.message().map(|m| (e.at_ms(), m.data)))
            .collect();
        assert_eq!(ended.len(), 1, "{events:?}");
        assert_eq!(ended[0].0, ts("2026-11-25T07:10:10Z"));
        assert_eq!(ended[0].1["ended_by"], "timeout");
        assert_eq!(ended[0].1["planned"], true);
        assert_eq!(ended[0].1["duration_s"], 600.0);
        assert_eq!(
            states(&events),
            vec![(
                MachineState::PlannedStop,
                MachineState::Stopped,
                ts("2026-11-25T07:10:10Z")
            )]
        );
        // Still stopped: from the deadline on it is an ordinary stop, downtime after micro_stop_s.
        d.t = ts("2026-11-25T07:10:11Z");
        d.run(60, false, NONE);
        let started = d.named("downtime.started");
        assert_eq!(started.len(), 2);
        assert_eq!(started[1].1["planned"], false);
        assert_eq!(started[1].1["started_at"], "2026-11-25T07:10:10.000Z");
        assert!(
            d.command(
                "BAG1/planned-stop/end",
                json!({"request_id":"r","by":"lead"})
            )
            .is_err(),
            "nothing left to end"
        );
    }

    #[test]
    fn a_planned_stop_ended_by_command_before_the_deadline_ends_normally_and_no_timeout_follows() {
        let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
        d.engine.set_max_planned_stop_ms(10 * 60_000);
        d.run(10, true, NONE);
        start_planned_stop(&mut d);
        d.run(300, false, NONE);
        d.command(
            "BAG1/planned-stop/end",
            json!({"request_id":"r","by":"jsmith"}),
        )
        .unwrap();
        d.run(40, false, NONE);
        d.run(1200, true, NONE);
        let ended = d.named("downtime.ended");
        assert_eq!(ended.len(), 2, "{ended:?}");
        assert_eq!(ended[0].1["planned"], true);
        assert_eq!(ended[0].1["ended_by"], "jsmith");
        assert_eq!(ended[0].0, ts("2026-11-25T07:05:10Z"));
        assert_eq!(ended[1].1["planned"], false);
        assert_eq!(ended[1].1["ended_by"], "auto", "the machine ran again");
        assert!(ended.iter().all(|(_, e)| e["ended_by"] != "timeout"));
        assert_eq!(
            d.engine.machine("BAG1").unwrap().mem.planned_deadline_ms,
            None
        );
    }

    #[test]
    fn a_calendar_planned_stop_never_times_out() {
        let mut d = Drive::new(&safety_config(), "2026-11-25T09:59:00Z");
        d.engine.set_max_planned_stop_ms(60_000);
        d.run(60, true, NONE);
        d.run(1200, false, NONE);
        assert!(
            d.named("downtime.ended").is_empty(),
            "the 20 min break runs its course"
        );
    }

    #[test]
    fn the_planned_stop_deadline_survives_a_save_and_restore_of_the_engine_memory() {
        let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
        d.engine.set_max_planned_stop_ms(10 * 60_000);
        d.run(10, true, NONE);
        start_planned_stop(&mut d);
        d.run(120, false, NONE);
        let (code, json_memory) = d.engine.memories().remove(0);
        assert!(json_memory.contains("planned_deadline_ms"), "{json_memory}");
        let memory: machine::Memory = serde_json::from_str(&json_memory).unwrap();
        // The restarted daemon's engine has the default maximum: the persisted deadline holds.
        let last_seen = d.t - 1000;
        let mut fresh = Engine::new(&safety_config(), d.t + 30_000);
        let restored = fresh.restore_memory(&code, memory, Vec::new(), last_seen);
        assert_eq!(
            states(&restored),
            vec![(MachineState::PlannedStop, MachineState::Offline, last_seen)]
        );
        d.engine = fresh;
        d.events.clear();
        d.t += 30_000;
        d.run(600, false, NONE); // back at 07:02:40, still stopped, until 07:12:39
        let timeouts: Vec<_> = d
            .named("downtime.ended")
            .into_iter()
            .filter(|(_, e)| e["ended_by"] == "timeout")
            .collect();
        assert_eq!(timeouts.len(), 1, "{:?}", d.named("downtime.ended"));
        assert_eq!(timeouts[0].0, ts("2026-11-25T07:10:10Z"));
        assert_eq!(timeouts[0].1["started_at"], "2026-11-25T07:02:40.000Z");
    }
}
