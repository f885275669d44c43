//! Shifts and OEE reporting: shift changes, `oee.snapshot` once a minute and at a shift's end,
//! the shift figures `status` shows, and `oee.minute` for minutes nothing can change any more.
//!
//! Owns: the memory's current shift, last snapshot minute and settled-until minute.
//!
//! Never does: attribute time or count units (the machine's inputs do, into the buckets);
//! judge a stop or an andon.
//!
//! Invariants: a minute is settled (and sent) only once it is before the last observation and
//! before any unplanned stop whose class is still held; the final snapshot of a shift is
//! stamped with the shift's end; figures cover `[max(shift start, first sample), end)`.

use serde_json::json;

use super::Machine;
use crate::clock::rfc3339_ms;
use crate::engine::calendar::{Calendar, ShiftInstance};
use crate::engine::event::Event;
use crate::engine::loss::window_fields;
use crate::engine::oee::minute_of;

impl Machine {
    /// Shift changes (a final snapshot of the shift that ended, `context.changed`) and the
    /// once-a-minute snapshot of the current shift, at `now`.
    pub(super) fn shift_rules(&mut self, now: i64, cal: &Calendar) -> Vec<Event> {
        let mut ev = Vec::new();
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
        let mut fields = window_fields(
            &b,
            self.rules.ideal_cycle_s(),
            &self.rules.targets,
            end - start,
            self.failures_in(start, end),
        );
        let mut data = serde_json::Map::new();
        data.insert("window".into(), json!("shift"));
        data.insert("shift".into(), json!(shift.name));
        data.insert("window_start".into(), json!(rfc3339_ms(start.max(first))));
        data.insert("window_end".into(), json!(rfc3339_ms(end)));
        data.append(&mut fields);
        Some(serde_json::Value::Object(data))
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
    pub(super) fn settle(&mut self) -> Vec<Event> {
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
}

#[cfg(test)]
mod tests {
    use crate::engine::testkit::*;

    #[test]
    fn a_snapshot_is_sent_every_minute_while_a_shift_is_current() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:30Z");
        d.run(300, true, [0, 0]);
        let snaps = d.named("oee.snapshot");
        let times: Vec<_> = snaps.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            times,
            (1..=5)
                .map(|m| ts("2026-11-25T07:00:00Z") + m * 60_000)
                .collect::<Vec<_>>()
        );
        assert!(snaps
            .iter()
            .all(|(_, s)| s["final"] == false && s["shift"] == "A"));
        assert_eq!(
            snaps[0].1["window_start"], "2026-11-25T07:00:30.000Z",
            "begins at the first sample"
        );
    }
}
