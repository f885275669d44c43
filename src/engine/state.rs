//! The machine states of SPEC §3 and their names.
//!
//! Owns: [`MachineState`] and its one name table (events, the database and `status` use the
//! same names, and the serde form agrees with it). Never does: decide a state — that rule
//! lives with the machine (`machine::Machine::derive_state`): `running` decides running vs.
//! not, then changeover, planned stop, faulted (a configured fault bit active), stopped; an
//! unreadable `running` is `offline` (SPEC §3: "PLC unreachable or a read failed").

use std::fmt;

use serde::{Deserialize, Serialize};

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

/// Each state with the name used in events, the database and `status`: the one table both
/// [`MachineState::as_str`] and [`MachineState::parse`] read.
const NAMES: [(MachineState, &str); 6] = [
    (MachineState::Running, "running"),
    (MachineState::Stopped, "stopped"),
    (MachineState::Faulted, "faulted"),
    (MachineState::PlannedStop, "planned_stop"),
    (MachineState::Changeover, "changeover"),
    (MachineState::Offline, "offline"),
];

impl MachineState {
    /// The name used in events, the database and `status`.
    pub fn as_str(self) -> &'static str {
        NAMES
            .iter()
            .find(|(state, _)| *state == self)
            .map_or("offline", |(_, name)| name)
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        NAMES
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(state, _)| *state)
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_name_parses_back_to_its_state_and_matches_its_serde_name() {
        for (state, name) in NAMES {
            assert_eq!(state.as_str(), name);
            assert_eq!(MachineState::parse(name), Some(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{name}\"")
            );
        }
        assert_eq!(MachineState::parse("idle"), None);
    }
}
