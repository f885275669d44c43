//! The memory queue for events the database refused (disk full, SPEC §6).
//!
//! ## Design constraints
//! - Bounded: at most [`PENDING_CAP`] events (SPEC: at least 10 000) wait in memory.
//! - On overflow the oldest telemetry goes first, then the oldest of anything: the same order as
//!   the outbox bound, so a long disk-full period loses the least valuable messages.
//! - Every event shed is counted (by drop class, with its outbox byte estimate); the store
//!   writes the counts into the drop ledger with the first commit that succeeds again
//!   ([`super::Store::note_losses`]).

use super::outbox::{self, Kind};
use crate::engine::Event;

/// Events that may wait in memory while the database refuses writes.
pub const PENDING_CAP: usize = 10_000;

/// Losses by drop class: (kind, count, bytes).
pub type Losses = Vec<(i64, u64, u64)>;

/// Sheds events beyond `cap`, telemetry first, oldest first; returns what was lost.
pub fn shed(pending: &mut Vec<Event>, cap: usize) -> Losses {
    if pending.len() <= cap {
        return Vec::new();
    }
    let mut lost: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
    let mut count = |e: &Event| {
        let (kind, _, topic, data, _) = outbox::describe(e);
        let entry = lost.entry(kind as i64).or_default();
        entry.0 += 1;
        entry.1 += outbox::estimate_bytes(&topic, &data.to_string()) as u64;
    };
    for class in [Kind::Telemetry, Kind::OeeSnapshot] {
        let mut excess = pending.len().saturating_sub(cap);
        if excess == 0 {
            break;
        }
        pending.retain(|e| {
            if excess > 0 && outbox::describe(e).0 == class {
                excess -= 1;
                count(e);
                false
            } else {
                true
            }
        });
    }
    if pending.len() > cap {
        let n = pending.len() - cap;
        for e in pending.drain(..n) {
            count(&e);
        }
    }
    lost.into_iter().map(|(k, (c, b))| (k, c, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MachineState;

    fn telemetry(at_ms: i64) -> Event {
        Event::Telemetry {
            equipment: "E1".into(),
            at_ms,
            values: Default::default(),
            quality: Default::default(),
        }
    }

    fn change(at_ms: i64) -> Event {
        Event::StateChanged {
            equipment: "E1".into(),
            from: MachineState::Running,
            to: MachineState::Stopped,
            at_ms,
        }
    }

    #[test]
    fn an_overflowing_queue_sheds_the_oldest_telemetry_before_any_state_change() {
        let mut q: Vec<Event> = (0..6)
            .map(|i| if i % 2 == 0 { telemetry(i) } else { change(i) })
            .collect();
        let lost = shed(&mut q, 4);
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].0, lost[0].1), (Kind::Telemetry as i64, 2));
        let kept: Vec<i64> = q.iter().map(|e| e.at_ms()).collect();
        assert_eq!(kept, vec![1, 3, 4, 5], "telemetry 0 and 2 went first");
    }

    #[test]
    fn with_no_telemetry_left_the_oldest_events_are_shed() {
        let mut q: Vec<Event> = (0..5).map(change).collect();
        let lost = shed(&mut q, 3);
        assert_eq!((lost[0].0, lost[0].1), (Kind::Event as i64, 2));
        assert_eq!(q.first().map(|e| e.at_ms()), Some(2));
    }

    #[test]
    fn a_queue_under_its_cap_loses_nothing() {
        let mut q = vec![telemetry(1)];
        assert!(shed(&mut q, 10).is_empty());
        assert_eq!(q.len(), 1);
    }
}
