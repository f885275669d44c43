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

    fn remember(&mut self, record: DowntimeRecord) {
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
            Some(id) => vec![Event::DowntimeReasonSet {
                equipment: self.code(),
                at_ms: t,
                downtime_id: id,
                reason,
                by: "auto".into(),
            }],
            None => Vec::new(),
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
