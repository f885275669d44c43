//! The engine: pure domain logic. Samples, commands and time in; events and state out.
//!
//! Nothing here reads a clock, touches SQLite or awaits: every input carries its own time
//! (the scheduled tick time of the poll, UTC epoch milliseconds), so the same inputs always give
//! the same events and every rule can be unit-tested sample by sample.
//!
//! Invariants the tests defend:
//! - every equipment is in exactly one [`MachineState`] at any time, starting `offline`;
//! - each transition is one [`Event::StateChanged`] whose `at` is the observing poll's tick
//!   time, and a transition never goes back in time (a late or re-ordered input is clamped);
//! - telemetry is emitted at most once per `publish_interval_ms` boundary per equipment.

pub mod state;

use std::collections::BTreeMap;

use crate::acquire::{EquipmentSample, Quality, Value};
use crate::config::Config;

pub use state::MachineState;

/// Something the engine decided happened. The store persists it; the uplink publishes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `state.changed`
    StateChanged {
        equipment: String,
        from: MachineState,
        to: MachineState,
        at_ms: i64,
    },
    /// `telemetry`: every configured signal, engineering units, with quality.
    Telemetry {
        equipment: String,
        at_ms: i64,
        values: BTreeMap<String, Option<Value>>,
        quality: BTreeMap<String, Quality>,
    },
}

impl Event {
    /// The equipment the event belongs to.
    pub fn equipment(&self) -> &str {
        match self {
            Event::StateChanged { equipment, .. } | Event::Telemetry { equipment, .. } => equipment,
        }
    }

    /// When it happened.
    pub fn at_ms(&self) -> i64 {
        match self {
            Event::StateChanged { at_ms, .. } | Event::Telemetry { at_ms, .. } => *at_ms,
        }
    }
}

/// The outcome of one poll of one PLC, as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum PollInput {
    /// Every equipment of the PLC, read.
    Samples(Vec<EquipmentSample>),
    /// The poll failed; `consecutive` counts failures in a row, this one included.
    Failed { consecutive: u32 },
}

/// Per-equipment engine state.
#[derive(Debug, Clone)]
struct Machine {
    code: String,
    plc: String,
    state: MachineState,
    since_ms: i64,
    /// Fault bit numbers that count toward `faulted`; empty = any bit.
    fault_bits: Vec<u32>,
    fault_word_width: u32,
    last_telemetry_ms: Option<i64>,
    last_seen_ms: i64,
}

/// A read-only view of one equipment for `status` and the demo.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MachineView {
    pub equipment: String,
    pub state: MachineState,
    pub since_ms: i64,
}

/// The engine of one gateway.
#[derive(Debug, Clone)]
pub struct Engine {
    machines: Vec<Machine>,
    telemetry_interval_ms: i64,
    offline_after: BTreeMap<String, u32>,
}

impl Engine {
    /// Every equipment starts `offline` at `start_ms`: nothing has been observed yet.
    pub fn new(config: &Config, start_ms: i64) -> Self {
        let machines = config
            .equipment
            .iter()
            .map(|e| Machine {
                code: e.code.clone(),
                plc: e.plc.clone(),
                state: MachineState::Offline,
                since_ms: start_ms,
                fault_bits: e.faults.iter().map(|f| f.bit).collect(),
                fault_word_width: e
                    .signals
                    .faults
                    .as_ref()
                    .map(|s| u32::from(s.data_type.registers()) * 16)
                    .unwrap_or(16),
                last_telemetry_ms: None,
                last_seen_ms: start_ms,
            })
            .collect();
        Engine {
            machines,
            telemetry_interval_ms: config.telemetry.publish_interval_ms as i64,
            offline_after: config
                .plcs
                .iter()
                .map(|p| (p.name.clone(), p.offline_after_polls.max(1)))
                .collect(),
        }
    }

    /// Resumes from the states persisted by a previous run: each machine that was not offline
    /// goes `offline` at `last_seen_ms` (the daemon was not watching since then), which keeps
    /// the published state history continuous across restarts.
    pub fn restore(&mut self, previous: &[MachineView], last_seen_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        for view in previous {
            let Some(m) = self.machines.iter_mut().find(|m| m.code == view.equipment) else {
                continue;
            };
            m.state = view.state;
            m.since_ms = view.since_ms;
            m.last_seen_ms = last_seen_ms.max(view.since_ms);
            let at = m.last_seen_ms;
            events.extend(m.transition(MachineState::Offline, at));
        }
        events
    }

    /// Feeds one poll of `plc` stamped `at_ms`.
    pub fn on_poll(&mut self, plc: &str, at_ms: i64, input: &PollInput) -> Vec<Event> {
        let mut events = Vec::new();
        let interval = self.telemetry_interval_ms;
        match input {
            PollInput::Samples(samples) => {
                for sample in samples {
                    let Some(m) = self
                        .machines
                        .iter_mut()
                        .find(|m| m.code == sample.equipment)
                    else {
                        continue;
                    };
                    let at = at_ms.max(m.last_seen_ms);
                    m.last_seen_ms = at;
                    let next = state::classify(sample, &m.fault_bits, m.fault_word_width);
                    events.extend(m.transition(next, at));
                    if m.telemetry_due(at, interval) {
                        m.last_telemetry_ms = Some(at);
                        events.push(telemetry(sample, at));
                    }
                }
            }
            PollInput::Failed { consecutive } => {
                let threshold = self.offline_after.get(plc).copied().unwrap_or(3);
                if *consecutive >= threshold {
                    for m in self.machines.iter_mut().filter(|m| m.plc == plc) {
                        let at = at_ms.max(m.last_seen_ms);
                        m.last_seen_ms = at;
                        events.extend(m.transition(MachineState::Offline, at));
                    }
                }
            }
        }
        events
    }

    /// Current state of every equipment, in config order.
    pub fn views(&self) -> Vec<MachineView> {
        self.machines
            .iter()
            .map(|m| MachineView {
                equipment: m.code.clone(),
                state: m.state,
                since_ms: m.since_ms,
            })
            .collect()
    }
}

impl Machine {
    fn transition(&mut self, to: MachineState, at_ms: i64) -> Option<Event> {
        if to == self.state {
            return None;
        }
        let from = self.state;
        self.state = to;
        self.since_ms = at_ms.max(self.since_ms);
        Some(Event::StateChanged {
            equipment: self.code.clone(),
            from,
            to,
            at_ms: self.since_ms,
        })
    }

    fn telemetry_due(&self, at_ms: i64, interval_ms: i64) -> bool {
        match self.last_telemetry_ms {
            None => true,
            Some(_) if interval_ms <= 0 => true,
            Some(last) => at_ms.div_euclid(interval_ms) > last.div_euclid(interval_ms),
        }
    }
}

fn telemetry(sample: &EquipmentSample, at_ms: i64) -> Event {
    Event::Telemetry {
        equipment: sample.equipment.clone(),
        at_ms,
        values: sample
            .signals
            .iter()
            .map(|(name, r)| (name.clone(), r.value.clone()))
            .collect(),
        quality: sample
            .signals
            .iter()
            .map(|(name, r)| (name.clone(), r.quality))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
