//! One equipment's rules: state, stops and downtime, andons, context and jobs, OEE buckets.
//!
//! Everything is driven by three inputs, each carrying its own time: a sample (the poll's
//! scheduled tick time, its engine signals already typed, see [`crate::sample`]), a tick (the
//! core's clock, for rules that fire between samples) and a command. Time-driven rules stamp
//! their events with the exact moment the rule became true (`stop start + micro_stop_s`,
//! `raise + escalate_after_s`, …), not with the tick that noticed, so the events do not depend
//! on when ticks happen to arrive.
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
//!
//! This file owns the [`Machine`] and its [`Memory`], the inputs, the state rule
//! (`Machine::derive_state`) and time attribution; each concept has its own file, every one
//! an `impl Machine` over the same memory:
//! `rules` (the config, compiled; name tables), `downtime` (stops, minor stops, first-out,
//! planned stops and their timeout), `andon` (raise, escalate, acknowledge, resolve, safety
//! andons), `production` (units into buckets, the job and the windows), `job` (jobs and
//! the production context), `changeover`, `maintenance` (running hours, due, done), `shift` (shift changes, snapshots, settled
//! minutes) and `dispatch` (`on_command`).
//!
//! Never does: read a clock, touch SQLite, await, or look a signal up by name.

mod andon;
mod changeover;
mod dispatch;
mod downtime;
mod job;
mod maintenance;
mod production;
mod rules;
mod shift;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::calendar::Calendar;
use super::context::Context;
use super::counter::Counter;
use super::event::{AndonRecord, DowntimeRecord, Event};
use super::oee::{minute_of, Buckets, TimeClass};
use super::state::MachineState;
use crate::sample::EngineSignals;

pub use changeover::ChangeoverState;
pub use downtime::{Stop, StopKind};
pub use job::Job;
pub use maintenance::Maintenance;
pub use rules::{Rules, DEFAULT_MAX_PLANNED_STOP_MS};

/// Minute buckets kept in memory: the longest shift plus the one before it.
pub const BUCKET_HORIZON_MS: i64 = 50 * 3_600_000;

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
    /// Unplanned downtimes (not minor stops, not changeovers) of the last
    /// [`BUCKET_HORIZON_MS`] as `(downtime_id, start_ms, category)`, category kept current:
    /// the failure count of a window (SPEC §11) without a 64-record limit.
    #[serde(default)]
    pub failure_log: VecDeque<(String, i64, String)>,
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
    /// Running time since the last maintenance (SPEC §11).
    #[serde(default)]
    pub maintenance: Maintenance,
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
                failure_log: VecDeque::new(),
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
                maintenance: Maintenance::default(),
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
            MachineState::Changeover => TimeClass::Changeover,
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
            if self.mem.state == MachineState::Running {
                self.count_running(from, t);
            }
            self.mem.last_seen_ms = t;
        }
    }

    // ---------------------------------------------------------------- inputs

    /// A successful poll's sample at tick time `t`, its engine signals typed.
    pub fn on_sample(
        &mut self,
        t: i64,
        signals: &EngineSignals<'_>,
        cal: &Calendar,
        telemetry_interval_ms: i64,
    ) -> Vec<Event> {
        let t = t.max(self.mem.last_seen_ms);
        self.maintenance_observed(t);
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
        self.count_units(produced_at, t, dg, dr, cal);

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
                    .map(|(n, r)| (n.to_string(), r.value.clone()))
                    .collect(),
                quality: signals
                    .telemetry
                    .iter()
                    .map(|(n, r)| (n.to_string(), r.quality))
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

    /// Time-driven rules between samples, shift changes and `oee.snapshot` on minute
    /// boundaries.
    pub fn on_tick(&mut self, now: i64, cal: &Calendar) -> Vec<Event> {
        let mut ev = self.time_rules(now, cal);
        ev.extend(self.shift_rules(now, cal));
        ev.extend(self.settle());
        self.buckets.prune(now - BUCKET_HORIZON_MS);
        while self
            .mem
            .failure_log
            .front()
            .is_some_and(|(_, start, _)| *start < now - BUCKET_HORIZON_MS)
        {
            self.mem.failure_log.pop_front();
        }
        ev
    }

    fn telemetry_due(&self, at_ms: i64, interval_ms: i64) -> bool {
        match self.mem.last_telemetry_ms {
            None => true,
            Some(_) if interval_ms <= 0 => true,
            Some(last) => at_ms.div_euclid(interval_ms) > last.div_euclid(interval_ms),
        }
    }

    /// The state the last observation shows: `running` decides running vs. not; a stopped
    /// machine is in a changeover, then in a planned stop (commanded or calendar), then
    /// `faulted` when a configured fault bit is active, else `stopped`. An unreadable
    /// `running` is `offline`.
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

    /// Rules whose moment has come by `now`, each stamped with its own exact time.
    fn time_rules(&mut self, now: i64, cal: &Calendar) -> Vec<Event> {
        // First, so that the rules below judge the stop that follows a timed-out planned stop.
        let mut ev = self.planned_timeout(now, cal);
        ev.extend(self.stop_due(now, cal));
        ev.extend(self.andons_due(now));
        ev.extend(self.maintenance_due());
        ev
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testkit::*;

    #[test]
    fn the_first_sample_takes_a_machine_out_of_offline_at_its_tick_time() {
        let mut engine = Engine::new(&config(1000), 0);
        let events = engine.on_poll("bagger", 5_000, &sample(true, [0, 0]));
        assert_eq!(
            states(&events),
            vec![(MachineState::Offline, MachineState::Running, 5_000)]
        );
    }

    #[test]
    fn an_unchanged_state_emits_no_state_event() {
        let mut engine = Engine::new(&config(1000), 0);
        engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
        let events = engine.on_poll("bagger", 2_000, &sample(true, [0, 0]));
        assert!(states(&events).is_empty());
    }

    #[test]
    fn a_stop_without_a_configured_fault_is_stopped() {
        let mut engine = Engine::new(&config(1000), 0);
        engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
        // Bit 0 is active but not in the fault table: not a fault of this machine.
        let events = engine.on_poll("bagger", 2_000, &sample(false, [1, 0]));
        assert_eq!(
            states(&events),
            vec![(MachineState::Running, MachineState::Stopped, 2_000)]
        );
    }

    #[test]
    fn a_stop_with_a_configured_fault_bit_in_the_second_word_is_faulted() {
        let mut engine = Engine::new(&config(1000), 0);
        engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
        // Bit 17 = bit 1 of word 1.
        let events = engine.on_poll("bagger", 2_000, &sample(false, [0, 2]));
        assert_eq!(
            states(&events),
            vec![(MachineState::Running, MachineState::Faulted, 2_000)]
        );
    }

    #[test]
    fn a_running_machine_with_a_fault_bit_is_still_running() {
        let mut engine = Engine::new(&config(1000), 0);
        let events = engine.on_poll("bagger", 1_000, &sample(true, [0, 2]));
        assert_eq!(states(&events)[0].1, MachineState::Running);
    }

    #[test]
    fn equipment_goes_offline_only_after_the_configured_number_of_failed_polls() {
        let mut engine = Engine::new(&config(1000), 0);
        engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
        for n in 1..=2 {
            let events = engine.on_poll(
                "bagger",
                1_000 + n * 1_000,
                &PollInput::Failed {
                    consecutive: n as u32,
                },
            );
            assert!(
                states(&events).is_empty(),
                "offline after only {n} failures"
            );
        }
        let events = engine.on_poll("bagger", 4_000, &PollInput::Failed { consecutive: 3 });
        assert_eq!(
            states(&events),
            vec![(MachineState::Running, MachineState::Offline, 4_000)]
        );
        let events = engine.on_poll("bagger", 5_000, &sample(true, [0, 0]));
        assert_eq!(
            states(&events),
            vec![(MachineState::Offline, MachineState::Running, 5_000)]
        );
    }

    #[test]
    fn an_unreadable_running_signal_means_offline() {
        let mut engine = Engine::new(&config(1000), 0);
        engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
        let mut bad = EquipmentSample {
            equipment: "BAG1".into(),
            signals: BTreeMap::new(),
        };
        bad.signals.insert(
            "running".into(),
            SignalReading {
                value: None,
                quality: Quality::Bad,
            },
        );
        let events = engine.on_poll("bagger", 2_000, &PollInput::Samples(vec![bad]));
        assert_eq!(states(&events)[0].1, MachineState::Offline);
    }

    #[test]
    fn a_sample_stamped_before_the_last_one_never_moves_time_backwards() {
        let mut engine = Engine::new(&config(1000), 0);
        engine.on_poll("bagger", 10_000, &sample(true, [0, 0]));
        let events = engine.on_poll("bagger", 9_000, &sample(false, [0, 0]));
        assert_eq!(
            states(&events),
            vec![(MachineState::Running, MachineState::Stopped, 10_000)]
        );
    }

    #[test]
    fn telemetry_is_emitted_once_per_publish_interval_boundary() {
        let mut engine = Engine::new(&config(1000), 0);
        let mut telemetry_times = Vec::new();
        for t in (0..3_000).step_by(250) {
            for e in engine.on_poll("bagger", 10_000 + t, &sample(true, [0, 0])) {
                if let Event::Telemetry { at_ms, .. } = e {
                    telemetry_times.push(at_ms);
                }
            }
        }
        assert_eq!(telemetry_times, vec![10_000, 11_000, 12_000]);
    }

    #[test]
    fn telemetry_publishes_every_signal_as_read_not_as_the_engine_typed_it() {
        let mut engine = Engine::new(&config(0), 0);
        let reading = |value: Option<Value>, quality| SignalReading { value, quality };
        let signals: BTreeMap<crate::sample::SignalName, SignalReading> = [
            ("running", reading(Some(Value::UInt(1)), Quality::Good)),
            ("good_count", reading(None, Quality::Bad)),
            ("faults", reading(None, Quality::Stale)),
            (
                "zone_temp",
                reading(Some(Value::Float(21.5)), Quality::Good),
            ),
        ]
        .into_iter()
        .map(|(n, r)| (n.into(), r))
        .collect();
        let input = PollInput::Samples(vec![EquipmentSample {
            equipment: "BAG1".into(),
            signals: signals.clone(),
        }]);
        let events = engine.on_poll("bagger", 1_000, &input);
        let Some(Event::Telemetry {
            values, quality, ..
        }) = events.iter().find(|e| matches!(e, Event::Telemetry { .. }))
        else {
            panic!("no telemetry in {events:?}");
        };
        let as_read: BTreeMap<_, _> = signals
            .iter()
            .map(|(n, r)| (n.to_string(), r.value.clone()))
            .collect();
        assert_eq!(values, &as_read, "the running 1 stays a number");
        assert_eq!(quality["good_count"], Quality::Bad);
        assert_eq!(quality["faults"], Quality::Stale);
        assert_eq!(states(&events)[0].1, MachineState::Running);
    }

    #[test]
    fn a_zero_publish_interval_sends_telemetry_every_poll() {
        let mut engine = Engine::new(&config(0), 0);
        let count = (0..5)
            .flat_map(|n| engine.on_poll("bagger", n * 100, &sample(true, [0, 0])))
            .filter(|e| matches!(e, Event::Telemetry { .. }))
            .count();
        assert_eq!(count, 5);
    }

    #[test]
    fn wall_clock_steps_backwards_never_produce_negative_durations() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.t -= 60_000; // NTP stepped the clock back a minute
        d.run(40, false, [0, 0]);
        d.run(5, true, [0, 0]);
        for (_, e) in d.named("downtime.ended") {
            assert!(e["duration_s"].as_f64().unwrap() >= 0.0, "{e}");
        }
    }
}
