//! One equipment's rules: state, stops and downtime, andons, context and jobs, OEE buckets.
//!
//! Everything is driven by three inputs, each carrying its own time: a sample (the poll's
//! scheduled tick time), a tick (the core's clock, for rules that fire between samples) and a
//! command. Time-driven rules stamp their events with the exact moment the rule became true
//! (`stop start + micro_stop_s`, `raise + escalate_after_s`, …), not with the tick that noticed,
//! so the events do not depend on when ticks happen to arrive.
//!
//! Time attribution: the interval between two observations belongs to the state seen at the
//! first of them. The time of an unplanned stop is *held* until the stop is classified — a
//! minor stop (run time, SPEC §6) when it ends before `micro_stop_s`, unplanned downtime once it
//! reaches it — so every millisecond lands in exactly one class.
//!
//! Safety is never planned away (SPEC §7): a planned stop or a changeover suppresses the andons
//! of ordinary faults, never those of safety faults (category `safety` or severity
//! `critical`); raising one changes no time class. A planned stop started by command carries a
//! deadline in the memory and ends there by itself (`ended_by = "timeout"`).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::calendar::{Calendar, ShiftInstance};
use super::command::{Command, CommandKind};
use super::context::Context;
use super::counter::Counter;
use super::event::{AndonCause, AndonRecord, DowntimeRecord, Event, JobEvent, Reason};
use super::oee::{figures, minute_of, Buckets, TimeClass};
use super::state::MachineState;
use crate::clock::rfc3339_ms;
use crate::config::{Equipment, Fault, FaultCategory, Severity};
use crate::sample::{EngineSignals, SignalLayout};

const QUALITY_WINDOW_MS: i64 = 15 * 60_000;
const RATE_WINDOW_MS: i64 = 60_000;
const CLEAR_AFTER_MS: i64 = 60_000;
const QUALITY_MIN_UNITS: u64 = 20;
const RECENT_DOWNTIMES: usize = 64;
/// Minute buckets kept in memory: the longest shift plus the one before it.
const BUCKET_HORIZON_MS: i64 = 50 * 3_600_000;
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
    /// ([`super::Engine::set_max_planned_stop_ms`]).
    pub max_planned_stop_ms: i64,
}

impl Rules {
    /// Compiles the engine's view of one `[[equipment]]`.
    pub fn new(e: &Equipment) -> Rules {
        let a = &e.andon;
        Rules {
            code: e.code.clone(),
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

    fn ideal_cycle_s(&self) -> f64 {
        60.0 / self.ideal_rate_per_min
    }

    fn fault(&self, bit: u32) -> Option<&Fault> {
        self.faults.iter().find(|f| f.bit == bit)
    }

    fn priority(&self, severity: Severity) -> &'static str {
        let bumped = if self.criticality >= 5 {
            match severity {
                Severity::Low => Severity::Medium,
                Severity::Medium => Severity::High,
                _ => Severity::Critical,
            }
        } else {
            severity
        };
        severity_name(bumped)
    }
}

/// A fault that is never planned away (SPEC §7): category `safety` or severity `critical`.
fn is_safety(f: &Fault) -> bool {
    matches!(f.category, FaultCategory::Safety) || matches!(f.severity, Severity::Critical)
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

fn category_name(c: FaultCategory) -> &'static str {
    match c {
        FaultCategory::Mechanical => "mechanical",
        FaultCategory::Electrical => "electrical",
        FaultCategory::Material => "material",
        FaultCategory::Quality => "quality",
        FaultCategory::Safety => "safety",
        FaultCategory::Operator => "operator",
        FaultCategory::Other => "other",
    }
}

fn severity_index(s: Severity) -> usize {
    match s {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

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

/// A job on this equipment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub target_quantity: Option<u64>,
    pub started_ms: Option<i64>,
    pub good: u64,
    pub reject: u64,
}

/// An open changeover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeoverState {
    pub start_ms: i64,
    pub job_before: Option<String>,
    pub product_before: Option<String>,
    pub job_after: Option<String>,
    pub product_after: Option<String>,
}

/// Everything about one equipment that must survive a restart or a reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub state: MachineState,
    pub since_ms: i64,
    pub last_seen_ms: i64,
    pub first_sample_ms: Option<i64>,
    pub last_running: Option<bool>,
    pub good: Counter,
    pub reject: Counter,
    pub fault_since: BTreeMap<u32, i64>,
    pub stop: Option<Stop>,
    pub planned_by_command: Option<String>,
    /// When the planned stop started by command ends by itself (`ended_by = "timeout"`):
    /// its start + `max_planned_stop_ms`. Persisted so the deadline survives a restart; a
    /// memory written before this field existed gets one on restore ([`Machine::adopt`]).
    #[serde(default)]
    pub planned_deadline_ms: Option<i64>,
    pub changeover: Option<ChangeoverState>,
    pub andons: Vec<AndonRecord>,
    pub context: Context,
    pub job: Option<Job>,
    pub downtimes: VecDeque<DowntimeRecord>,
    pub quality_window: VecDeque<(i64, u64, u64)>,
    pub rate_window: VecDeque<(i64, u64)>,
    pub units_total: u64,
    pub speed_low_since: Option<i64>,
    pub speed_ok_since: Option<i64>,
    pub quality_ok_since: Option<i64>,
    pub next_id: u64,
    pub shift: Option<(String, i64, i64)>,
    pub last_snapshot_minute: Option<i64>,
    pub settled_until: i64,
    pub last_telemetry_ms: Option<i64>,
    /// Minute buckets not yet settled (persisted with the memory so a restart loses none).
    #[serde(default)]
    pub open_minutes: Vec<(i64, super::oee::Bucket)>,
}

/// One equipment in the engine.
#[derive(Debug, Clone)]
pub struct Machine {
    pub rules: Rules,
    pub mem: Memory,
    pub buckets: Buckets,
}

impl Machine {
    /// A machine never seen before: `offline` since `start_ms`.
    pub fn new(rules: Rules, start_ms: i64) -> Machine {
        let context = Context::new(&rules.line_id);
        Machine {
            rules,
            mem: Memory {
                state: MachineState::Offline,
                since_ms: start_ms,
                last_seen_ms: start_ms,
                first_sample_ms: None,
                last_running: None,
                good: Counter::default(),
                reject: Counter::default(),
                fault_since: BTreeMap::new(),
                stop: None,
                planned_by_command: None,
                planned_deadline_ms: None,
                changeover: None,
                andons: Vec::new(),
                context,
                job: None,
                downtimes: VecDeque::new(),
                quality_window: VecDeque::new(),
                rate_window: VecDeque::new(),
                units_total: 0,
                speed_low_since: None,
                speed_ok_since: None,
                quality_ok_since: None,
                next_id: 0,
                shift: None,
                last_snapshot_minute: None,
                settled_until: minute_of(start_ms),
                last_telemetry_ms: None,
                open_minutes: Vec::new(),
            },
            buckets: Buckets::default(),
        }
    }

    /// The memory as persisted: with the minute buckets that are not settled yet.
    pub fn persistable(&self) -> Memory {
        let mut m = self.mem.clone();
        m.open_minutes = self
            .buckets
            .minutes
            .range(self.mem.settled_until..)
            .map(|(k, b)| (*k, *b))
            .collect();
        m
    }

    /// Takes over a persisted memory (restart or reload). A commanded planned stop persisted
    /// without a deadline (by a version before `max_planned_stop_min`) gets one from its last
    /// observation, so it cannot stay open forever.
    pub fn adopt(&mut self, memory: Memory) {
        self.mem = memory;
        self.mem.context.line_id = self.rules.line_id.clone();
        if self.mem.planned_by_command.is_some() && self.mem.planned_deadline_ms.is_none() {
            self.mem.planned_deadline_ms =
                Some(self.mem.last_seen_ms + self.rules.max_planned_stop_ms);
        }
    }

    fn new_id(&mut self, kind: &str, at: i64) -> String {
        self.mem.next_id += 1;
        let name = format!("{}/{kind}/{at}/{}", self.rules.code, self.mem.next_id);
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
    }

    fn code(&self) -> String {
        self.rules.code.clone()
    }

    // ---------------------------------------------------------------- time attribution

    fn class_of_current(&self) -> Option<TimeClass> {
        Some(match self.mem.state {
            MachineState::Running => TimeClass::Run,
            MachineState::Offline => TimeClass::Offline,
            MachineState::PlannedStop => TimeClass::Planned,
            MachineState::Changeover => TimeClass::Unplanned,
            MachineState::Stopped | MachineState::Faulted => match &self.mem.stop {
                Some(s) if s.downtime_id.is_none() => return None,
                _ => TimeClass::Unplanned,
            },
        })
    }

    /// Attributes `[last_seen, t)` to the current state's class and advances `last_seen`.
    fn advance(&mut self, t: i64, cal: &Calendar) {
        let from = self.mem.last_seen_ms;
        if t > from {
            if let Some(class) = self.class_of_current() {
                self.buckets.add_time(from, t, class, cal);
            }
            self.mem.last_seen_ms = t;
        }
    }

    // ---------------------------------------------------------------- inputs

    /// A successful poll's sample at tick time `t`, its engine signals typed.
    pub fn on_sample(
        &mut self,
        t: i64,
        signals: &EngineSignals,
        cal: &Calendar,
        telemetry_interval_ms: i64,
    ) -> Vec<Event> {
        let t = t.max(self.mem.last_seen_ms);
        let mut ev = self.time_rules(t, cal);
        // Units counted now were made since the previous observation: they belong there.
        let produced_at = self.mem.last_seen_ms;
        self.advance(t, cal);
        self.mem.first_sample_ms.get_or_insert(t);

        let running = signals.running;
        self.mem.last_running = running;

        // Fault bits: remember when each configured bit became active (first-out).
        let active: Vec<u32> = signals
            .faults
            .iter()
            .flatten()
            .copied()
            .filter(|b| self.rules.faults.is_empty() || self.rules.fault(*b).is_some())
            .collect();
        self.mem.fault_since.retain(|b, _| active.contains(b));
        for b in &active {
            self.mem.fault_since.entry(*b).or_insert(t);
        }

        // Counters.
        let dg = signals
            .good_count
            .map(|c| self.mem.good.delta(c.value, c.max))
            .unwrap_or(0);
        let dr = signals
            .reject_count
            .map(|c| self.mem.reject.delta(c.value, c.max))
            .unwrap_or(0);
        self.buckets.add_counts(produced_at, dg, dr, cal);
        if dg + dr > 0 {
            self.mem.context.last_production_update = Some(t);
            // Units a poll reports were made since the previous poll: they count for a job
            // only when that interval began at or after the job's start.
            if let Some(job) = self
                .mem
                .job
                .as_mut()
                .filter(|j| j.started_ms.is_some_and(|s| produced_at >= s))
            {
                job.good += dg;
                job.reject += dr;
            }
        }
        self.update_job_figures(t);
        self.mem.units_total += dg + dr;
        // 10 s slots keep the window (and the persisted memory) small at any poll rate.
        let slot = t.div_euclid(10_000) * 10_000;
        match self.mem.quality_window.back_mut() {
            Some((at, g, r)) if *at == slot => {
                *g += dg;
                *r += dr;
            }
            _ => self.mem.quality_window.push_back((slot, dg, dr)),
        }
        while self
            .mem
            .quality_window
            .front()
            .is_some_and(|(at, _, _)| *at <= t - QUALITY_WINDOW_MS)
        {
            self.mem.quality_window.pop_front();
        }
        // One point per second is enough for a rate over 60 s.
        let several = self.mem.rate_window.len() > 1;
        match self.mem.rate_window.back_mut() {
            Some((at, units)) if several && at.div_euclid(1000) == t.div_euclid(1000) => {
                *at = t;
                *units = self.mem.units_total;
            }
            _ => self.mem.rate_window.push_back((t, self.mem.units_total)),
        }
        while self.mem.rate_window.len() > 2
            && self
                .mem
                .rate_window
                .get(1)
                .is_some_and(|(at, _)| *at <= t - RATE_WINDOW_MS)
        {
            self.mem.rate_window.pop_front();
        }

        let next = self.derive_state(running, !active.is_empty(), t, cal);
        ev.extend(self.transition(next, t, cal, "auto"));
        ev.extend(self.first_out(t));

        // Andon conditions that are judged on samples.
        ev.extend(self.sample_andons(t, running, signals.speed));
        ev.extend(self.time_rules(t, cal));

        if self.telemetry_due(t, telemetry_interval_ms) {
            self.mem.last_telemetry_ms = Some(t);
            ev.push(Event::Telemetry {
                equipment: self.code(),
                at_ms: t,
                values: signals
                    .telemetry
                    .iter()
                    .map(|(n, r)| (n.clone(), r.value.clone()))
                    .collect(),
                quality: signals
                    .telemetry
                    .iter()
                    .map(|(n, r)| (n.clone(), r.quality))
                    .collect(),
            });
        }
        ev.extend(self.settle());
        ev
    }

    /// A failed poll: `offline` once `consecutive` reaches `threshold`.
    pub fn on_failed(
        &mut self,
        t: i64,
        consecutive: u32,
        threshold: u32,
        cal: &Calendar,
    ) -> Vec<Event> {
        if consecutive < threshold {
            return Vec::new();
        }
        let t = t.max(self.mem.last_seen_ms);
        let mut ev = self.time_rules(t, cal);
        self.advance(t, cal);
        self.mem.last_running = None;
        ev.extend(self.transition(MachineState::Offline, t, cal, "auto"));
        ev.extend(self.settle());
        ev
    }

    /// The equipment leaves the configuration at `at` (a reload removed it): its open stop ends
    /// with `closed_by = by` and its open andons resolve with `resolved_by = by` (SPEC §6
    /// "Reload"). Its state, context and counters are left as they are; nothing polls it again.
    pub fn retire(&mut self, at: i64, by: &str, cal: &Calendar) -> Vec<Event> {
        let at = at.max(self.mem.last_seen_ms);
        self.advance(at, cal);
        let mut events = self.close_stop(at, cal, by);
        for e in events.iter_mut() {
            if let Event::DowntimeEnded { record, .. } = e {
                record.closed_by = Some(by.to_string());
            }
        }
        let ids: Vec<String> = self.mem.andons.iter().map(|a| a.andon_id.clone()).collect();
        events.extend(ids.iter().filter_map(|id| self.resolve(id, by, at)));
        events
    }

    /// The daemon was not watching from `at` on: `offline` from then.
    pub fn went_away(&mut self, at: i64, cal: &Calendar) -> Vec<Event> {
        let at = at.max(self.mem.last_seen_ms);
        self.advance(at, cal);
        self.mem.last_running = None;
        self.transition(MachineState::Offline, at, cal, "auto")
    }

    fn telemetry_due(&self, at_ms: i64, interval_ms: i64) -> bool {
        match self.mem.last_telemetry_ms {
            None => true,
            Some(_) if interval_ms <= 0 => true,
            Some(last) => at_ms.div_euclid(interval_ms) > last.div_euclid(interval_ms),
        }
    }

    fn derive_state(
        &self,
        running: Option<bool>,
        faulted: bool,
        t: i64,
        cal: &Calendar,
    ) -> MachineState {
        match running {
            None => MachineState::Offline,
            Some(true) => MachineState::Running,
            Some(false) if self.mem.changeover.is_some() => MachineState::Changeover,
            Some(false) if self.mem.planned_by_command.is_some() || cal.planned_at(t).is_some() => {
                MachineState::PlannedStop
            }
            Some(false) if faulted => MachineState::Faulted,
            Some(false) => MachineState::Stopped,
        }
    }

    // ---------------------------------------------------------------- stops

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
    fn transition(
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

    fn close_stop(&mut self, t: i64, cal: &Calendar, ended_by: &str) -> Vec<Event> {
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
    fn first_out(&mut self, t: i64) -> Vec<Event> {
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

    // ---------------------------------------------------------------- time-driven rules

    /// Rules whose moment has come by `now`, each stamped with its own exact time.
    fn time_rules(&mut self, now: i64, cal: &Calendar) -> Vec<Event> {
        // First, so that the rules below judge the stop that follows a timed-out planned stop.
        let mut ev = self.planned_timeout(now, cal);
        // An unplanned stop reaching micro_stop_s becomes downtime.
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

    /// A commanded planned stop whose deadline has come by `now` ends at the deadline
    /// (`ended_by = "timeout"`, SPEC §7); the state is then re-derived from the last sample.
    /// Calendar planned stops have no deadline: their window ends them.
    fn planned_timeout(&mut self, now: i64, cal: &Calendar) -> Vec<Event> {
        let Some(deadline) = self.mem.planned_deadline_ms.filter(|d| now >= *d) else {
            return Vec::new();
        };
        self.mem.planned_deadline_ms = None;
        self.mem.planned_by_command = None;
        self.rederive(deadline, cal, "timeout")
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

    fn raise(&mut self, andon: AndonRecord) -> Event {
        self.mem.andons.push(andon.clone());
        Event::AndonRaised {
            equipment: self.code(),
            at_ms: andon.raised_ms,
            andon,
        }
    }

    fn resolve(&mut self, andon_id: &str, by: &str, at: i64) -> Option<Event> {
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

    fn sample_andons(&mut self, t: i64, running: Option<bool>, speed: Option<f64>) -> Vec<Event> {
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

    // ---------------------------------------------------------------- ticks: shifts and OEE

    /// Time-driven rules between samples, shift changes and `oee.snapshot` on minute
    /// boundaries.
    pub fn on_tick(&mut self, now: i64, cal: &Calendar) -> Vec<Event> {
        let mut ev = self.time_rules(now, cal);
        let current = cal.shift_at(now);
        let key = current
            .as_ref()
            .map(|s| (s.name.clone(), s.start_ms, s.end_ms));
        if key != self.mem.shift {
            if let Some((name, start, end)) = self.mem.shift.clone() {
                if now >= end {
                    let prev = ShiftInstance {
                        name,
                        start_ms: start,
                        end_ms: end,
                    };
                    ev.extend(self.snapshot(&prev, end, true));
                }
            }
            self.mem.shift = key;
            let name = current.as_ref().map(|s| s.name.clone());
            if self.mem.context.shift != name {
                self.mem.context.shift = name;
                ev.push(self.context_changed(now, "shift_change", "auto"));
            }
            self.mem.last_snapshot_minute = Some(minute_of(now));
        } else if let Some(shift) = current {
            let minute = minute_of(now);
            if self.mem.last_snapshot_minute.is_none_or(|m| minute > m) {
                self.mem.last_snapshot_minute = Some(minute);
                ev.extend(self.snapshot(&shift, minute, false));
                // Keep the retained context's production figures current once a minute.
                if self
                    .mem
                    .job
                    .as_ref()
                    .is_some_and(|j| j.started_ms.is_some())
                {
                    ev.push(self.context_changed(now, "production_update", "auto"));
                }
            }
        }
        ev.extend(self.settle());
        self.buckets.prune(now - BUCKET_HORIZON_MS);
        ev
    }

    /// Shift OEE over `[max(shift start, first sample), end)`.
    pub fn shift_figures(&self, shift: &ShiftInstance, end: i64) -> Option<serde_json::Value> {
        let first = self.mem.first_sample_ms?;
        let start = shift.start_ms.max(minute_of(first));
        if end <= start {
            return None;
        }
        let b = self.buckets.sum(start, end);
        let f = figures(&b, self.rules.ideal_cycle_s());
        Some(json!({
            "window": "shift",
            "shift": shift.name,
            "window_start": rfc3339_ms(start.max(first)),
            "window_end": rfc3339_ms(end),
            "availability": f.availability,
            "performance": f.performance,
            "quality": f.quality,
            "oee": f.oee,
            "performance_over_ideal": f.performance_over_ideal,
            "planned_busy_time_s": (b.scheduled_ms - b.planned_ms - b.offline_ms) as f64 / 1000.0,
            "run_time_s": b.run_ms as f64 / 1000.0,
            "unplanned_downtime_s": b.unplanned_ms as f64 / 1000.0,
            "planned_downtime_s": b.planned_ms as f64 / 1000.0,
            "offline_s": b.offline_ms as f64 / 1000.0,
            "minor_stop_s": b.minor_stop_ms as f64 / 1000.0,
            "good_count": b.good,
            "reject_count": b.reject,
            "total_count": b.good + b.reject,
            "ideal_cycle_time_s": self.rules.ideal_cycle_s(),
            "targets": self.rules.targets,
        }))
    }

    fn snapshot(&self, shift: &ShiftInstance, end: i64, last: bool) -> Option<Event> {
        let mut data = self.shift_figures(shift, end)?;
        data["final"] = json!(last);
        Some(Event::OeeSnapshot {
            equipment: self.code(),
            at_ms: end,
            data,
        })
    }

    /// Emits minute buckets that nothing can change any more.
    fn settle(&mut self) -> Vec<Event> {
        let mut limit = self.mem.last_seen_ms;
        if let Some(stop) = self.mem.stop.as_ref().filter(|s| s.downtime_id.is_none()) {
            limit = limit.min(stop.start_ms);
        }
        let limit = minute_of(limit);
        if limit <= self.mem.settled_until {
            return Vec::new();
        }
        let code = self.code();
        let ev = self
            .buckets
            .minutes
            .range(self.mem.settled_until..limit)
            .map(|(m, b)| Event::OeeMinute {
                equipment: code.clone(),
                minute_ms: *m,
                bucket: *b,
            })
            .collect();
        self.mem.settled_until = limit;
        ev
    }

    // ---------------------------------------------------------------- context and commands

    fn update_job_figures(&mut self, t: i64) {
        let ideal = self.rules.ideal_cycle_s();
        let ctx = &mut self.mem.context;
        match &self.mem.job {
            Some(job) if job.started_ms.is_some() => {
                let total = job.good + job.reject;
                ctx.actual_quantity = job.good;
                ctx.quality_rate = (total > 0).then(|| job.good as f64 / total as f64);
                let elapsed_s = (t - job.started_ms.unwrap_or(t)) as f64 / 1000.0;
                ctx.production_efficiency =
                    (elapsed_s > 0.0).then(|| ideal * total as f64 / elapsed_s);
            }
            _ => {
                ctx.actual_quantity = 0;
                ctx.quality_rate = None;
                ctx.production_efficiency = None;
            }
        }
    }

    fn context_changed(&self, at: i64, reason: &str, by: &str) -> Event {
        Event::ContextChanged {
            equipment: self.code(),
            at_ms: at,
            context: Box::new(self.mem.context.clone()),
            change_reason: reason.into(),
            changed_by: by.into(),
        }
    }

    fn job_event(&self, at: i64, kind: JobEvent, job: &Job, by: &str) -> Event {
        Event::Job {
            equipment: self.code(),
            at_ms: at,
            kind,
            job_id: job.job_id.clone(),
            target_quantity: job.target_quantity,
            actual_quantity: job.good,
            by: by.into(),
        }
    }

    /// Re-derives the state after a command (or the planned-stop timeout) changed planned-stop
    /// or changeover status; a stop this ends carries `ended_by`.
    fn rederive(&mut self, now: i64, cal: &Calendar, ended_by: &str) -> Vec<Event> {
        if self.mem.state == MachineState::Offline {
            return Vec::new();
        }
        let t = now.max(self.mem.last_seen_ms);
        self.advance(t, cal);
        let faulted = !self.mem.fault_since.is_empty();
        let next = self.derive_state(self.mem.last_running, faulted, t, cal);
        self.transition(next, t, cal, ended_by)
    }

    /// Applies a command at `now`. `Err` = not applicable; nothing has changed then.
    pub fn on_command(
        &mut self,
        now: i64,
        cmd: &Command,
        cal: &Calendar,
    ) -> Result<Vec<Event>, String> {
        let by = cmd.by.as_str();
        let reason = cmd.note.clone().unwrap_or_else(|| "command".into());
        // A deadline that has passed ends its planned stop first (a `planned-stop/end` after it
        // then finds nothing to end); ticks normally get there before any command does.
        let mut ev = self.planned_timeout(now, cal);
        match &cmd.kind {
            CommandKind::Context(p) => {
                let c = &mut self.mem.context;
                if let Some(v) = &p.job_id {
                    c.job_id = v.clone();
                }
                if let Some(v) = &p.schedule_id {
                    c.schedule_id = v.clone();
                }
                if let Some(v) = &p.product_type_id {
                    c.product_type_id = v.clone();
                }
                if let Some(v) = &p.operator {
                    c.operator = v.clone();
                }
                if let Some(v) = p.target_speed {
                    c.target_speed = v;
                }
                if let Some(v) = p.target_quantity {
                    c.target_quantity = v;
                }
                ev.push(self.context_changed(now, &reason, by));
            }
            CommandKind::JobAssign {
                job_id,
                target_quantity,
                product_type_id,
                schedule_id,
                target_speed,
            } => {
                if let Some(j) = self.mem.job.as_ref().filter(|j| j.started_ms.is_some()) {
                    return Err(format!(
                        "job \"{}\" is running: complete or cancel it first",
                        j.job_id
                    ));
                }
                let job = Job {
                    job_id: job_id.clone(),
                    target_quantity: *target_quantity,
                    started_ms: None,
                    good: 0,
                    reject: 0,
                };
                let c = &mut self.mem.context;
                c.job_id = Some(job_id.clone());
                c.target_quantity = *target_quantity;
                if product_type_id.is_some() {
                    c.product_type_id = product_type_id.clone();
                }
                if schedule_id.is_some() {
                    c.schedule_id = schedule_id.clone();
                }
                if target_speed.is_some() {
                    c.target_speed = *target_speed;
                }
                ev.push(self.job_event(now, JobEvent::Assigned, &job, by));
                self.mem.job = Some(job);
                self.update_job_figures(now);
                ev.push(self.context_changed(now, &reason, by));
            }
            CommandKind::JobStart { job_id } => {
                let job = self.job_named(job_id)?;
                if job.started_ms.is_some() {
                    return Err(format!("job \"{}\" has already started", job.job_id));
                }
                let mut job = job.clone();
                job.started_ms = Some(now);
                ev.push(self.job_event(now, JobEvent::Started, &job, by));
                self.mem.job = Some(job);
                self.update_job_figures(now);
                ev.push(self.context_changed(now, &reason, by));
            }
            CommandKind::JobComplete { job_id } | CommandKind::JobCancel { job_id } => {
                let complete = matches!(cmd.kind, CommandKind::JobComplete { .. });
                let job = self.job_named(job_id)?.clone();
                if complete && job.started_ms.is_none() {
                    return Err(format!("job \"{}\" has not started", job.job_id));
                }
                let kind = if complete {
                    JobEvent::Completed
                } else {
                    JobEvent::Cancelled
                };
                ev.push(self.job_event(now, kind, &job, by));
                self.mem.job = None;
                self.mem.context.job_id = None;
                self.mem.context.target_quantity = None;
                self.update_job_figures(now);
                ev.push(self.context_changed(now, &reason, by));
            }
            CommandKind::ChangeoverStart {
                product_type_id,
                job_id,
            } => {
                if self.mem.changeover.is_some() {
                    return Err("a changeover is already in progress".into());
                }
                let co = ChangeoverState {
                    start_ms: now,
                    job_before: self.mem.context.job_id.clone(),
                    product_before: self.mem.context.product_type_id.clone(),
                    job_after: job_id.clone(),
                    product_after: product_type_id.clone(),
                };
                self.mem.context.changeover_status = "in_progress".into();
                self.mem.context.changeover_start_time = Some(now);
                self.mem.context.changeover_end_time = None;
                ev.push(changeover_event(&self.rules.code, &co, None, by));
                self.mem.changeover = Some(co);
                ev.extend(self.rederive(now, cal, by));
                ev.push(self.context_changed(now, &reason, by));
            }
            CommandKind::ChangeoverComplete { failed } => {
                let Some(co) = self.mem.changeover.take() else {
                    return Err("no changeover is in progress".into());
                };
                let c = &mut self.mem.context;
                c.changeover_status = if *failed { "failed" } else { "completed" }.into();
                c.changeover_end_time = Some(now);
                if !failed {
                    if co.product_after.is_some() {
                        c.product_type_id = co.product_after.clone();
                    }
                    if co.job_after.is_some() {
                        c.job_id = co.job_after.clone();
                    }
                }
                ev.push(changeover_event(&self.rules.code, &co, Some(now), by));
                ev.extend(self.rederive(now, cal, by));
                ev.push(self.context_changed(now, &reason, by));
            }
            CommandKind::PlannedStopStart { reason: why } => {
                if self.mem.planned_by_command.is_some() {
                    return Err("a planned stop is already active".into());
                }
                self.mem.planned_by_command =
                    Some(why.clone().unwrap_or_else(|| "planned stop".into()));
                self.mem.planned_deadline_ms =
                    Some(now.saturating_add(self.rules.max_planned_stop_ms));
                ev.extend(self.rederive(now, cal, by));
            }
            CommandKind::PlannedStopEnd => {
                if self.mem.planned_by_command.take().is_none() {
                    return Err("no planned stop was started by command".into());
                }
                self.mem.planned_deadline_ms = None;
                ev.extend(self.rederive(now, cal, by));
            }
            CommandKind::AndonAck { andon_id } => {
                let Some(a) = self.mem.andons.iter_mut().find(|a| &a.andon_id == andon_id) else {
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
                ev.push(Event::AndonAcknowledged {
                    equipment: self.code(),
                    at_ms: now,
                    andon_id: andon_id.clone(),
                    by: by.into(),
                });
            }
            CommandKind::AndonResolve { andon_id } => match self.resolve(andon_id, by, now) {
                Some(e) => ev.push(e),
                None => {
                    return Err(format!(
                        "no open andon \"{andon_id}\" on {}",
                        self.rules.code
                    ))
                }
            },
            CommandKind::DowntimeReason {
                downtime_id,
                reason_code,
            } => {
                let reason = match self.rules.faults.iter().find(|f| &f.code == reason_code) {
                    Some(f) => Reason {
                        code: f.code.clone(),
                        description: f.description.clone(),
                        category: category_name(f.category).into(),
                    },
                    None => Reason {
                        code: reason_code.clone(),
                        description: cmd.note.clone().unwrap_or_else(|| reason_code.clone()),
                        category: "operator".into(),
                    },
                };
                let open = self
                    .mem
                    .stop
                    .as_mut()
                    .filter(|s| s.downtime_id.as_deref() == Some(downtime_id.as_str()));
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
                    .find(|d| &d.downtime_id == downtime_id)
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
                ev.push(Event::DowntimeReasonSet {
                    equipment: self.code(),
                    at_ms: now,
                    downtime_id: downtime_id.clone(),
                    reason,
                    by: by.into(),
                });
            }
        }
        Ok(ev)
    }

    fn job_named(&self, job_id: &Option<String>) -> Result<&Job, String> {
        let Some(job) = self.mem.job.as_ref() else {
            return Err(format!("no job is assigned to {}", self.rules.code));
        };
        if let Some(id) = job_id {
            if id != &job.job_id {
                return Err(format!(
                    "job \"{id}\" is not the assigned job (\"{}\")",
                    job.job_id
                ));
            }
        }
        Ok(job)
    }
}

fn changeover_event(code: &str, co: &ChangeoverState, ended: Option<i64>, by: &str) -> Event {
    Event::Changeover {
        equipment: code.to_string(),
        at_ms: ended.unwrap_or(co.start_ms),
        completed: ended.is_some(),
        data: json!({
            "job_id_before": co.job_before,
            "product_type_id_before": co.product_before,
            "job_id_after": co.job_after,
            "product_type_id_after": co.product_after,
            "started_at": rfc3339_ms(co.start_ms),
            "ended_at": ended.map(rfc3339_ms),
            "by": by,
        }),
    }
}
