//! One human-readable line per committed engine event, for the demo view and tests
//! ([`super::DaemonView::recent`]).
//!
//! Owns only formatting: it never decides what is shown (the core passes what it committed,
//! telemetry excluded) and it reads no clock (times come from the events).

use crate::clock::rfc3339_ms;
use crate::engine::Event;

/// Lines kept in [`super::DaemonView::recent`], newest last.
pub(super) const RECENT_LINES: usize = 50;

/// `2026-12-01T09:00:00.000Z BP01.PACK.BAG1: Running → Stopped`, and the like.
pub(super) fn describe(e: &Event) -> String {
    let at = rfc3339_ms(e.at_ms());
    let eq = e.equipment();
    match e {
        Event::StateChanged { from, to, .. } => format!("{at} {eq}: {from} → {to}"),
        Event::DowntimeStarted { record, .. } => format!(
            "{at} {eq}: downtime started ({} {}, since {})",
            record.reason.code,
            record.reason.category,
            rfc3339_ms(record.start_ms)
        ),
        Event::DowntimeEnded { record, .. } => format!(
            "{at} {eq}: {} ended after {:.1} s ({})",
            if record.minor {
                "minor stop"
            } else {
                "downtime"
            },
            (record.end_ms.unwrap_or(record.start_ms) - record.start_ms) as f64 / 1000.0,
            record.reason.code
        ),
        Event::AndonRaised { andon, .. } => format!(
            "{at} {eq}: ANDON {} {} ({})",
            andon.priority, andon.reason_code, andon.description
        ),
        Event::AndonEscalated { level, .. } => {
            format!("{at} {eq}: andon escalated to level {level}")
        }
        Event::AndonResolved { resolved_by, .. } => {
            format!("{at} {eq}: andon resolved by {resolved_by}")
        }
        Event::OeeSnapshot { data, .. } => format!(
            "{at} {eq}: shift {} OEE {}",
            data["shift"].as_str().unwrap_or("-"),
            data["oee"]
                .as_f64()
                .map(|v| format!("{:.1} %", v * 100.0))
                .unwrap_or_else(|| "-".into())
        ),
        other => format!("{at} {eq}: {}", other.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MachineState;

    #[test]
    fn a_state_change_reads_as_from_arrow_to() {
        let e = Event::StateChanged {
            equipment: "E1".into(),
            from: MachineState::Running,
            to: MachineState::Stopped,
            at_ms: 0,
        };
        let line = describe(&e);
        assert!(line.starts_with("1970-01-01T00:00:00.000Z E1: "), "{line}");
        assert!(line.contains(" → "), "{line}");
    }
}
