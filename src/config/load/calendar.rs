//! `[[shift]]` and `[[planned_stop]]`: the shift calendar of the line.
//!
//! Owns times of day, shift names and the overlap check, and resolves each planned stop's
//! `shifts` against the shifts defined. Never reads the clock: times are minutes after local
//! midnight in `gateway.timezone`, interpreted by the engine.
//!
//! ## Invariants
//!
//! - Compiled shifts do not share a minute of the day (`start == end` is 24 h; shifts may wrap
//!   midnight). Shifts that failed their own checks are left out of the overlap check.
//! - Every name in a planned stop's `shifts` is a defined shift.
//!
//! ## Decisions where SPEC §2 leaves a choice
//!
//! - A time may be a string `"06:00"` or a TOML local time `06:00:00` (no date, no seconds).
//! - Shift names are at most 64 characters and unique; `duration_min` is 1..=1440.
//! - Overlapping shifts are reported at the header of the later shift.

use std::collections::HashMap;

use toml::de::DeValue;

use super::super::{PlannedStop, Shift};
use super::syntax::{fmt_hhmm, parse_hhmm};
use super::walk::{Need, Table};
use super::{Compiler, Seen};

impl Compiler<'_, '_> {
    /// A time of day as `"HH:MM"` or a TOML local time, in minutes after midnight.
    fn time_of_day(&mut self, t: &Table<'_, '_>, key: &str) -> Option<u32> {
        let v = self.cx.value(t, key, Need::Required)?;
        let path = t.path_of(key);
        match v.get_ref() {
            DeValue::Datetime(dt) => match (&dt.date, &dt.time, &dt.offset) {
                (None, Some(tm), None)
                    if tm.second.unwrap_or(0) == 0 && tm.nanosecond.unwrap_or(0) == 0 =>
                {
                    Some(u32::from(tm.hour) * 60 + u32::from(tm.minute))
                }
                _ => {
                    self.cx.error_hint(
                        &v.span(),
                        &path,
                        format!("expected a time of day \"HH:MM\", found {dt}"),
                        Some("times are local to gateway.timezone, without date or seconds".into()),
                    );
                    None
                }
            },
            _ => {
                let s = self.cx.as_str(v, &path)?;
                match parse_hhmm(&s) {
                    Ok(m) => Some(m),
                    Err(p) => {
                        self.problem(&v.span(), &path, p);
                        None
                    }
                }
            }
        }
    }

    /// The shift calendar. Shifts that failed validation are left out (their errors are
    /// recorded), so overlap checks only see well-formed shifts.
    pub(super) fn shifts(&mut self, root: &Table<'_, '_>) -> Vec<Shift> {
        let mut names: HashMap<String, Seen> = HashMap::new();
        let mut shifts: Vec<Shift> = Vec::new();
        for t in self.cx.tables(root, "shift") {
            self.cx.known_keys(&t, &["name", "start", "end"]);
            let name = self.cx.text(&t, "name", Need::Required);
            if let Some(n) = &name {
                if n.chars().count() > 64 {
                    self.cx.error(
                        &t.span_of("name"),
                        &t.path_of("name"),
                        "must be at most 64 characters",
                    );
                }
                self.unique(&mut names, n, &t, "name", "shift name");
            }
            let start = self.time_of_day(&t, "start");
            let end = self.time_of_day(&t, "end");
            if let (Some(name), Some(start_min), Some(end_min)) = (name, start, end) {
                let s = Shift {
                    name,
                    start_min,
                    end_min,
                };
                for other in &shifts {
                    if shifts_overlap(other, &s) {
                        self.cx.error(
                            &t.span,
                            &t.path,
                            format!(
                                "shift \"{}\" ({}–{}) overlaps shift \"{}\" ({}–{})",
                                s.name,
                                fmt_hhmm(s.start_min),
                                fmt_hhmm(s.end_min),
                                other.name,
                                fmt_hhmm(other.start_min),
                                fmt_hhmm(other.end_min)
                            ),
                        );
                    }
                }
                shifts.push(s);
            }
        }
        shifts
    }

    pub(super) fn planned_stops(
        &mut self,
        root: &Table<'_, '_>,
        shifts: &[Shift],
    ) -> Option<Vec<PlannedStop>> {
        let mut out = Some(Vec::new());
        for t in self.cx.tables(root, "planned_stop") {
            self.cx
                .known_keys(&t, &["name", "start", "duration_min", "shifts"]);
            let name = self.cx.text(&t, "name", Need::Required);
            let start = self.time_of_day(&t, "start");
            let duration = self.cx.int(&t, "duration_min", Need::Required, 1..=1440);
            let mut refs = Some(Vec::new());
            if let Some(v) = t.get("shifts") {
                let path = t.path_of("shifts");
                if let Some(items) = self.cx.as_array(v, &path) {
                    for (i, item) in items.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        let Some(s) = self.cx.as_str(item, &item_path) else {
                            refs = None;
                            continue;
                        };
                        if shifts.iter().any(|sh| sh.name == s) {
                            if let Some(r) = refs.as_mut() {
                                r.push(s);
                            }
                        } else {
                            let hint = self.reference_hint(
                                &s,
                                shifts.iter().map(|sh| sh.name.as_str()),
                                "[[shift]]",
                            );
                            self.cx.error_hint(
                                &item.span(),
                                &item_path,
                                format!("no [[shift]] named \"{s}\""),
                                hint,
                            );
                            refs = None;
                        }
                    }
                } else {
                    refs = None;
                }
            }
            match (name, start, duration, refs) {
                (Some(name), Some(start_min), Some(d), Some(shifts)) => {
                    if let Some(v) = out.as_mut() {
                        v.push(PlannedStop {
                            name,
                            start_min,
                            duration_min: d as u32,
                            shifts,
                        });
                    }
                }
                _ => out = None,
            }
        }
        out
    }
}

/// Whether two shifts share any minute of the day. `start == end` means 24 h; shifts may wrap.
fn shifts_overlap(a: &Shift, b: &Shift) -> bool {
    const DAY: u32 = 1440;
    let len = |s: &Shift| {
        if s.start_min == s.end_min {
            DAY
        } else {
            (s.end_min + DAY - s.start_min) % DAY
        }
    };
    let (la, lb) = (len(a), len(b));
    (b.start_min + DAY - a.start_min) % DAY < la || (a.start_min + DAY - b.start_min) % DAY < lb
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, loaded, with};
    use super::*;

    const SHIFT_A: &str = "\n[[shift]]\nname = \"A\"\nstart = 06:00:00\nend = \"14:00\"\n";

    #[test]
    fn a_time_may_be_a_string_or_a_toml_local_time() {
        let shifts = loaded(&with(SHIFT_A)).config.shifts;
        assert_eq!((shifts[0].start_min, shifts[0].end_min), (360, 840));
    }

    #[test]
    fn a_planned_stop_naming_an_undefined_shift_is_refused_at_the_name() {
        let text = with(&format!(
            "{SHIFT_A}\n[[planned_stop]]\nname = \"b\"\nstart = \"10:00\"\nduration_min = 20\nshifts = [\"A\", \"night\"]\n"
        ));
        let e = error_at(&text, "planned_stop[0].shifts[1]");
        assert_eq!(e.message, "no [[shift]] named \"night\"");
    }

    fn shift(start: &str, end: &str) -> Shift {
        Shift {
            name: String::new(),
            start_min: parse_hhmm(start).unwrap(),
            end_min: parse_hhmm(end).unwrap(),
        }
    }

    #[test]
    fn adjacent_shifts_do_not_overlap_even_across_midnight() {
        let (a, b, c) = (
            shift("06:00", "14:00"),
            shift("14:00", "22:00"),
            shift("22:00", "06:00"),
        );
        for (x, y) in [(&a, &b), (&b, &c), (&c, &a), (&a, &c)] {
            assert!(!shifts_overlap(x, y));
        }
    }

    #[test]
    fn shifts_sharing_a_minute_overlap() {
        assert!(shifts_overlap(
            &shift("06:00", "14:00"),
            &shift("13:59", "22:00")
        ));
        assert!(shifts_overlap(
            &shift("22:00", "06:00"),
            &shift("05:00", "07:00")
        ));
        assert!(shifts_overlap(
            &shift("22:00", "06:00"),
            &shift("23:00", "23:30")
        ));
    }

    #[test]
    fn a_24_hour_shift_overlaps_every_other_shift() {
        assert!(shifts_overlap(
            &shift("06:00", "06:00"),
            &shift("01:00", "02:00")
        ));
        assert!(shifts_overlap(
            &shift("01:00", "02:00"),
            &shift("06:00", "06:00")
        ));
    }
}
