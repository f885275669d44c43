//! Machine state from one sample.
//!
//! `running` decides running vs. not; a stopped machine with a configured fault bit active is
//! `faulted`. A `running` signal that could not be read makes the state unknowable, which is
//! `offline` (SPEC §3: "PLC unreachable or a read failed").

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::acquire::{EquipmentSample, Quality};

/// The states of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Running,
    Stopped,
    Faulted,
    PlannedStop,
    Changeover,
    Offline,
}

impl MachineState {
    /// The name used in events, the database and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Running => "running",
            MachineState::Stopped => "stopped",
            MachineState::Faulted => "faulted",
            MachineState::PlannedStop => "planned_stop",
            MachineState::Changeover => "changeover",
            MachineState::Offline => "offline",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => MachineState::Running,
            "stopped" => MachineState::Stopped,
            "faulted" => MachineState::Faulted,
            "planned_stop" => MachineState::PlannedStop,
            "changeover" => MachineState::Changeover,
            "offline" => MachineState::Offline,
            _ => return None,
        })
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Active fault bit numbers in fault words (bit n of word k is fault `width·k + n`).
pub fn active_bits(words: &[u64], width: u32) -> Vec<u32> {
    let mut bits = Vec::new();
    for (k, word) in words.iter().enumerate() {
        for n in 0..width.min(64) {
            if word >> n & 1 == 1 {
                bits.push(k as u32 * width + n);
            }
        }
    }
    bits
}

/// The state one sample shows. `fault_bits` are the configured fault bits (empty: any bit);
/// `word_width` is the bit width of one fault word (16 for Modbus registers, 32 for DINTs).
pub fn classify(sample: &EquipmentSample, fault_bits: &[u32], word_width: u32) -> MachineState {
    let running = sample
        .signals
        .get("running")
        .filter(|r| r.quality == Quality::Good)
        .and_then(|r| r.value.as_ref())
        .and_then(|v| v.as_bool());
    match running {
        None => MachineState::Offline,
        Some(true) => MachineState::Running,
        Some(false) => {
            let words = sample
                .signals
                .get("faults")
                .and_then(|r| r.value.as_ref())
                .map(|v| v.as_words())
                .unwrap_or_default();
            let active = active_bits(&words, word_width);
            let faulted = if fault_bits.is_empty() {
                !active.is_empty()
            } else {
                active.iter().any(|b| fault_bits.contains(b))
            };
            if faulted {
                MachineState::Faulted
            } else {
                MachineState::Stopped
            }
        }
    }
}
