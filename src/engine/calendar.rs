//! Shift calendar and recurring planned stops, in the gateway's time zone.
//!
//! Pure: a timestamp in, the shift instance or planned-stop window that contains it out. Local
//! times are turned into instants with jiff's "compatible" disambiguation, so on the day
//! daylight-saving time starts a 22:00–06:00 shift lasts 7 h and on the day it ends 9 h — the
//! hours that really passed on the floor. Shifts may cross midnight; `start == end` is 24 h.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::config::{PlannedStop, Shift};

/// One occurrence of a shift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftInstance {
    pub name: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// One occurrence of a recurring planned stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWindow {
    pub name: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The calendar of one gateway.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    shifts: Vec<Shift>,
    planned: Vec<PlannedStop>,
}

fn local_ms(tz: &TimeZone, date: Date, minute_of_day: u32) -> Option<i64> {
    let dt: DateTime = date.at((minute_of_day / 60) as i8, (minute_of_day % 60) as i8, 0, 0);
    let zoned = dt.to_zoned(tz.clone()).ok()?;
    Some(zoned.timestamp().as_millisecond())
}

impl Calendar {
    /// Unknown zone names fall back to UTC (the config loader has already validated it).
    pub fn new(timezone: &str, shifts: &[Shift], planned: &[PlannedStop]) -> Self {
        Calendar {
            tz: TimeZone::get(timezone).unwrap_or(TimeZone::UTC),
            shifts: shifts.to_vec(),
            planned: planned.to_vec(),
        }
    }

    /// Whether any shift is configured. Without shifts, all time is scheduled.
    pub fn has_shifts(&self) -> bool {
        !self.shifts.is_empty()
    }

    fn local_date(&self, ms: i64) -> Option<Date> {
        let ts = Timestamp::from_millisecond(ms).ok()?;
        Some(ts.to_zoned(self.tz.clone()).date())
    }

    fn instances_around(&self, ms: i64) -> Vec<ShiftInstance> {
        let Some(today) = self.local_date(ms) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for day in [today.yesterday().ok(), Some(today)].into_iter().flatten() {
            for s in &self.shifts {
                let end_day = if s.end_min <= s.start_min {
                    day.tomorrow().ok()
                } else {
                    Some(day)
                };
                let (Some(start), Some(end)) = (
                    local_ms(&self.tz, day, s.start_min),
                    end_day.and_then(|d| local_ms(&self.tz, d, s.end_min)),
                ) else {
                    continue;
                };
                out.push(ShiftInstance {
                    name: s.name.clone(),
                    start_ms: start,
                    end_ms: end,
                });
            }
        }
        out
    }

    /// The instance of shift `name` that starts on local date `date` (for `report --shift`).
    pub fn shift_on(&self, name: &str, date: Date) -> Option<ShiftInstance> {
        let s = self.shifts.iter().find(|s| s.name == name)?;
        let end_day = if s.end_min <= s.start_min {
            date.tomorrow().ok()?
        } else {
            date
        };
        Some(ShiftInstance {
            name: s.name.clone(),
            start_ms: local_ms(&self.tz, date, s.start_min)?,
            end_ms: local_ms(&self.tz, end_day, s.end_min)?,
        })
    }

    /// The local date of `ms` in the gateway's zone.
    pub fn date_of(&self, ms: i64) -> Option<Date> {
        self.local_date(ms)
    }

    /// The shift instance containing `ms`. With no shifts configured: a 24 h "day" window from
    /// local midnight, so OEE still has a window.
    pub fn shift_at(&self, ms: i64) -> Option<ShiftInstance> {
        if self.shifts.is_empty() {
            let day = self.local_date(ms)?;
            return Some(ShiftInstance {
                name: "day".into(),
                start_ms: local_ms(&self.tz, day, 0)?,
                end_ms: local_ms(&self.tz, day.tomorrow().ok()?, 0)?,
            });
        }
        self.instances_around(ms)
            .into_iter()
            .find(|i| i.start_ms <= ms && ms < i.end_ms)
    }

    /// The recurring planned stop whose window contains `ms`, if any (and if it applies to the
    /// current shift).
    pub fn planned_at(&self, ms: i64) -> Option<PlannedWindow> {
        let today = self.local_date(ms)?;
        let shift = self.shift_at(ms).map(|s| s.name);
        for day in [today.yesterday().ok(), Some(today)].into_iter().flatten() {
            for p in &self.planned {
                let Some(start) = local_ms(&self.tz, day, p.start_min) else {
                    continue;
                };
                let end = start + i64::from(p.duration_min) * 60_000;
                if start <= ms && ms < end {
                    let applies =
                        p.shifts.is_empty() || shift.as_ref().is_some_and(|s| p.shifts.contains(s));
                    if applies {
                        return Some(PlannedWindow {
                            name: p.name.clone(),
                            start_ms: start,
                            end_ms: end,
                        });
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shift(name: &str, start: u32, end: u32) -> Shift {
        Shift {
            name: name.into(),
            start_min: start,
            end_min: end,
        }
    }

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn abc() -> Vec<Shift> {
        vec![
            shift("A", 360, 840),
            shift("B", 840, 1320),
            shift("C", 1320, 360),
        ]
    }

    #[test]
    fn a_night_shift_crosses_midnight() {
        let cal = Calendar::new("UTC", &abc(), &[]);
        let s = cal.shift_at(ms("2026-11-25T02:00:00Z")).unwrap();
        assert_eq!(s.name, "C");
        assert_eq!(s.start_ms, ms("2026-11-24T22:00:00Z"));
        assert_eq!(s.end_ms, ms("2026-11-25T06:00:00Z"));
    }

    #[test]
    fn the_night_shift_is_seven_hours_when_clocks_go_forward() {
        // Europe/London: 2026-03-29 01:00 GMT → 02:00 BST.
        let cal = Calendar::new("Europe/London", &abc(), &[]);
        let s = cal.shift_at(ms("2026-03-29T03:00:00Z")).unwrap();
        assert_eq!(s.name, "C");
        assert_eq!(s.end_ms - s.start_ms, 7 * 3_600_000);
    }

    #[test]
    fn the_night_shift_is_nine_hours_when_clocks_go_back() {
        // Europe/London: 2026-10-25 02:00 BST → 01:00 GMT.
        let cal = Calendar::new("Europe/London", &abc(), &[]);
        let s = cal.shift_at(ms("2026-10-25T03:00:00Z")).unwrap();
        assert_eq!(s.name, "C");
        assert_eq!(s.end_ms - s.start_ms, 9 * 3_600_000);
    }

    #[test]
    fn time_outside_every_shift_has_no_shift() {
        let cal = Calendar::new("UTC", &[shift("A", 360, 840)], &[]);
        assert!(cal.shift_at(ms("2026-11-25T15:00:00Z")).is_none());
    }

    #[test]
    fn a_shift_whose_start_equals_its_end_lasts_a_day() {
        let cal = Calendar::new("UTC", &[shift("D", 360, 360)], &[]);
        let s = cal.shift_at(ms("2026-11-25T05:00:00Z")).unwrap();
        assert_eq!(s.end_ms - s.start_ms, 24 * 3_600_000);
        assert_eq!(s.start_ms, ms("2026-11-24T06:00:00Z"));
    }

    #[test]
    fn a_planned_break_applies_only_to_its_shifts() {
        let breaks = vec![PlannedStop {
            name: "break".into(),
            start_min: 600,
            duration_min: 20,
            shifts: vec!["A".into()],
        }];
        let cal = Calendar::new("UTC", &abc(), &breaks);
        let w = cal.planned_at(ms("2026-11-25T10:05:00Z")).unwrap();
        assert_eq!(w.start_ms, ms("2026-11-25T10:00:00Z"));
        assert_eq!(w.end_ms, ms("2026-11-25T10:20:00Z"));
        assert!(cal.planned_at(ms("2026-11-25T10:20:00Z")).is_none());
        let other = vec![PlannedStop {
            shifts: vec!["B".into()],
            ..breaks[0].clone()
        }];
        assert!(Calendar::new("UTC", &abc(), &other)
            .planned_at(ms("2026-11-25T10:05:00Z"))
            .is_none());
    }
}
