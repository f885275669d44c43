//! The engine: pure domain logic. Samples, commands and time in; events and state out.
//!
//! Nothing here reads a clock, touches SQLite or awaits: every input carries its own time (the
//! scheduled tick time of the poll, or the core's clock for ticks and commands, as UTC epoch
//! milliseconds), so the same inputs always give the same events and every rule can be tested
//! sample by sample.
//!
//! Samples arrive as [`crate::sample::EquipmentSample`]s; [`Engine::on_poll`] types each one's
//! engine signals once ([`crate::sample::EngineSignals`]) and no rule looks a signal up by
//! name. The engine never imports `acquire`.
//!
//! Module map: [`state`] (the machine states and their names), [`machine`] (one equipment's
//! rules, one file per concept: downtime, andons, production, jobs, changeovers, shifts,
//! command dispatch), [`oee`] (minute buckets and A/P/Q/OEE), [`loss`] (TEEP, MTBF/MTTR and the
//! six big losses of a window),
//! [`calendar`] (shifts and planned stops in the gateway's zone), [`counter`] (counter deltas
//! across resets and wraps), [`command`] (command parsing), [`event`] (what comes out, and its
//! wire form), [`context`] (production context).
//!
//! Invariants the tests defend:
//! - every equipment is in exactly one [`MachineState`] at any time, starting `offline`;
//! - each transition is one `state.changed` whose `at` is the observing poll's tick time, and
//!   time never goes backwards (a late input is clamped to the last time seen);
//! - every observed millisecond inside a shift lands in exactly one OEE class;
//! - a command either applies completely or changes nothing.

pub mod calendar;
pub mod command;
pub mod context;
pub mod counter;
pub mod event;
pub mod loss;
pub mod machine;
pub mod oee;
pub mod state;

use std::collections::BTreeMap;

use crate::config::Config;
use crate::sample::{EngineSignals, EquipmentSample};

pub use event::{DropClass, Event, Message};
pub use machine::BUCKET_HORIZON_MS;
pub use state::MachineState;

use calendar::Calendar;
use command::Command;
use machine::{Machine, Memory, Rules};

/// The outcome of one poll of one PLC, as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum PollInput {
    /// Every equipment of the PLC, read.
    Samples(Vec<EquipmentSample>),
    /// The poll failed; `consecutive` counts failures in a row, this one included.
    Failed { consecutive: u32 },
}

/// A read-only view of one equipment for `status` and the demo.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MachineView {
    pub equipment: String,
    pub state: MachineState,
    pub since_ms: i64,
}

/// The reply to a command: `Ok` with the events it caused, or why it did not apply.
pub type CommandResult = Result<Vec<Event>, String>;

/// The engine of one gateway.
#[derive(Debug, Clone)]
pub struct Engine {
    machines: Vec<Machine>,
    calendar: Calendar,
    telemetry_interval_ms: i64,
    offline_after: BTreeMap<String, u32>,
}

impl Engine {
    /// Every equipment starts `offline` at `start_ms`: nothing has been observed yet.
    pub fn new(config: &Config, start_ms: i64) -> Self {
        let mut engine = Engine {
            machines: config
                .equipment
                .iter()
                .map(|e| Machine::new(Rules::new(e), start_ms))
                .collect(),
            calendar: Calendar::new(
                &config.gateway.timezone,
                &config.shifts,
                &config.planned_stops,
            ),
            telemetry_interval_ms: config.telemetry.publish_interval_ms as i64,
            offline_after: config
                .plcs
                .iter()
                .map(|p| (p.name.clone(), p.offline_after_polls.max(1)))
                .collect(),
        };
        engine.set_max_planned_stop_ms(u64::from(config.commands.max_planned_stop_min) * 60_000);
        engine
    }

    /// How long a planned stop started by command lasts before it ends by itself with
    /// `ended_by = "timeout"` (`[commands] max_planned_stop_min` × 60 000; SPEC §7). [`Engine::new`]
    /// sets it from the config; call it again right after [`Engine::new`], before restoring memories: it applies to
    /// planned stops started from then on and to persisted ones that have no deadline yet;
    /// a persisted deadline is kept as it was set.
    pub fn set_max_planned_stop_ms(&mut self, ms: u64) {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX / 2);
        for m in &mut self.machines {
            m.rules.max_planned_stop_ms = ms;
        }
    }

    /// Resumes from the states persisted by a previous run (without full memories): each
    /// machine that was not offline goes `offline` at `last_seen_ms`.
    pub fn restore(&mut self, previous: &[MachineView], last_seen_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        for view in previous {
            let Some(m) = machine_mut(&mut self.machines, &view.equipment) else {
                continue;
            };
            m.mem.state = view.state;
            m.mem.since_ms = view.since_ms;
            m.mem.last_seen_ms = last_seen_ms.max(view.since_ms);
            events.extend(m.went_away(last_seen_ms, &self.calendar));
        }
        events
    }

    /// Resumes one equipment from its full persisted memory and minute buckets; it then goes
    /// `offline` at `last_seen_ms` (the daemon was not watching since). Unknown codes are
    /// ignored (equipment removed from the config).
    pub fn restore_memory(
        &mut self,
        code: &str,
        memory: Memory,
        minutes: Vec<(i64, oee::Bucket)>,
        last_seen_ms: i64,
    ) -> Vec<Event> {
        let Some(m) = machine_mut(&mut self.machines, code) else {
            return Vec::new();
        };
        take_over(m, memory, minutes);
        m.went_away(last_seen_ms, &self.calendar)
    }

    /// Resumes one equipment from the memory the previous pipeline of *this* process committed
    /// a moment ago (a configuration reload). Unlike [`Engine::restore_memory`] the equipment
    /// does not go `offline`: the daemon never stopped watching, so open downtime, andons,
    /// context and jobs carry on as if nothing happened. Unknown codes are ignored.
    pub fn resume_memory(&mut self, code: &str, memory: Memory, minutes: Vec<(i64, oee::Bucket)>) {
        if let Some(m) = machine_mut(&mut self.machines, code) {
            take_over(m, memory, minutes);
        }
    }

    /// Closes what is open on equipment that a reload removes (`codes` not in the new
    /// configuration): open downtime ends with `closed_by = "reload"`, open andons resolve with
    /// `resolved_by = "reload"`, at `now_ms`. Codes this engine does not know are ignored.
    pub fn retire(&mut self, codes: &[String], now_ms: i64) -> Vec<Event> {
        let cal = &self.calendar;
        self.machines
            .iter_mut()
            .filter(|m| codes.contains(&m.rules.code))
            .flat_map(|m| m.retire(now_ms, "reload", cal))
            .collect()
    }

    /// Feeds one poll of `plc` stamped `at_ms`.
    pub fn on_poll(&mut self, plc: &str, at_ms: i64, input: &PollInput) -> Vec<Event> {
        let mut events = Vec::new();
        match input {
            PollInput::Samples(samples) => {
                for sample in samples {
                    let Some(m) = machine_mut(&mut self.machines, &sample.equipment) else {
                        continue;
                    };
                    // The boundary: the sample's engine signals are typed here, once.
                    let signals = EngineSignals::read(sample, &m.rules.layout);
                    events.extend(m.on_sample(
                        at_ms,
                        &signals,
                        &self.calendar,
                        self.telemetry_interval_ms,
                    ));
                }
            }
            PollInput::Failed { consecutive } => {
                let threshold = self.offline_after.get(plc).copied().unwrap_or(3);
                for m in self.machines.iter_mut().filter(|m| m.rules.plc == plc) {
                    events.extend(m.on_failed(at_ms, *consecutive, threshold, &self.calendar));
                }
            }
        }
        events
    }

    /// Time-driven rules (downtime, andon timing, escalation, shifts, OEE snapshots) at `now_ms`.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<Event> {
        let cal = &self.calendar;
        self.machines
            .iter_mut()
            .flat_map(|m| m.on_tick(now_ms, cal))
            .collect()
    }

    /// Applies a parsed command at `now_ms`. Unknown equipment and commands that do not apply
    /// change nothing.
    pub fn on_command(&mut self, now_ms: i64, cmd: &Command) -> CommandResult {
        let cal = &self.calendar;
        let Some(m) = machine_mut(&mut self.machines, &cmd.equipment) else {
            return Err(format!("unknown equipment \"{}\"", cmd.equipment));
        };
        // Apply to a copy: a command either applies completely or not at all.
        let mut trial = m.clone();
        let events = trial.on_command(now_ms, cmd, cal)?;
        *m = trial;
        Ok(events)
    }

    /// Current state of every equipment, in config order.
    pub fn views(&self) -> Vec<MachineView> {
        self.machines
            .iter()
            .map(|m| MachineView {
                equipment: m.rules.code.clone(),
                state: m.mem.state,
                since_ms: m.mem.since_ms,
            })
            .collect()
    }

    /// Full memories for persistence, as JSON: `(code, memory)`.
    pub fn memories(&self) -> Vec<(String, String)> {
        self.machines
            .iter()
            .map(|m| {
                (
                    m.rules.code.clone(),
                    serde_json::to_string(&m.persistable()).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Equipment codes in config order.
    pub fn codes(&self) -> Vec<String> {
        self.machines.iter().map(|m| m.rules.code.clone()).collect()
    }

    /// One equipment's machine, for `status` and tests.
    pub fn machine(&self, code: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.rules.code == code)
    }

    /// Current-shift OEE of every equipment at `now_ms` (for `status`).
    pub fn current_oee(&self, now_ms: i64) -> Vec<(String, Option<serde_json::Value>)> {
        self.machines
            .iter()
            .map(|m| {
                let figures = self
                    .calendar
                    .shift_at(now_ms)
                    .and_then(|s| m.shift_figures(&s, now_ms));
                (m.rules.code.clone(), figures)
            })
            .collect()
    }
}

/// The machine of equipment `code`, if the configuration has it (the one place machines are
/// looked up by code; [`Engine::machine`] is its read-only twin).
fn machine_mut<'a>(machines: &'a mut [Machine], code: &str) -> Option<&'a mut Machine> {
    machines.iter_mut().find(|m| m.rules.code == code)
}

/// Takes over a persisted memory and its minute buckets: the buckets the memory kept open
/// and the ones the fresh machine had are kept beside the settled ones.
fn take_over(m: &mut Machine, memory: Memory, minutes: Vec<(i64, oee::Bucket)>) {
    let open = std::mem::take(&mut m.mem.open_minutes);
    m.adopt(memory);
    m.buckets.minutes.extend(minutes);
    m.buckets.minutes.extend(
        open.into_iter()
            .chain(std::mem::take(&mut m.mem.open_minutes)),
    );
}

/// What `status` shows of one equipment, from its persisted memory and minute buckets: open
/// downtime with its reason, open andons with their level, the production context and the
/// current shift's A/P/Q/OEE against the targets.
pub fn summary(
    config: &Config,
    code: &str,
    memory: Option<Memory>,
    minutes: Vec<(i64, oee::Bucket)>,
    now_ms: i64,
) -> serde_json::Value {
    use crate::clock::rfc3339_ms;
    use serde_json::json;
    let Some(equipment) = config.equipment.iter().find(|e| e.code == code) else {
        return serde_json::Value::Null;
    };
    let Some(mut memory) = memory else {
        return json!({ "open_downtime": null, "andons": [], "context": null, "oee": null });
    };
    let mut m = Machine::new(Rules::new(equipment), now_ms);
    m.buckets.minutes.extend(minutes);
    m.buckets
        .minutes
        .extend(std::mem::take(&mut memory.open_minutes));
    m.mem = memory;
    let cal = Calendar::new(
        &config.gateway.timezone,
        &config.shifts,
        &config.planned_stops,
    );
    let open = m.mem.stop.as_ref().map(|s| {
        json!({
            "downtime_id": s.downtime_id,
            "started_at": rfc3339_ms(s.start_ms),
            "duration_s": (now_ms - s.start_ms).max(0) as f64 / 1000.0,
            "reason_code": s.reason.code,
            "reason": s.reason.description,
            "category": s.reason.category,
            "minor_so_far": s.downtime_id.is_none(),
        })
    });
    let andons: Vec<_> = m
        .mem
        .andons
        .iter()
        .map(|a| {
            json!({
                "andon_id": a.andon_id,
                "cause": a.cause,
                "priority": a.priority,
                "level": a.level,
                "reason_code": a.reason_code,
                "description": a.description,
                "raised_at": rfc3339_ms(a.raised_ms),
                "acknowledged_by": a.acknowledged_by,
            })
        })
        .collect();
    let oee = cal
        .shift_at(now_ms)
        .and_then(|shift| m.shift_figures(&shift, now_ms));
    json!({
        "open_downtime": open,
        "andons": andons,
        "context": m.mem.context.to_json(),
        "oee": oee,
        "maintenance": m.maintenance_json(now_ms),
    })
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
