//! `[[equipment]]` with its `oee_targets`, `[[equipment.fault]]` table and `andon` rules.
//!
//! Owns the equipment's identity and line data, the PLC reference, OEE targets, fault bits and
//! codes, and andon timing. The signals themselves are checked in `signal`. Never decides
//! anything the engine decides: these are the numbers it runs on.
//!
//! ## Decisions where SPEC §2 leaves a choice
//!
//! - Required: `code`, `plc`, `line_id`, `ideal_rate_per_min` (greater than 0).
//! - Defaults: `name` = `code`, `position_in_line` 1, `primary` false, `type` production,
//!   `criticality` 3, `micro_stop_s` 30 (0..=3600); `oee_targets` 0.90/0.85/0.95 and `oee` =
//!   the product of the three; fault `description` = `code`, `category` other, `severity`
//!   medium, `andon` false.
//! - Equipment codes and fault codes are `[A-Za-z0-9._-]{1,64}` and unique (fault codes per
//!   equipment); `UNASSIGNED` is reserved for stops without an active fault.
//! - A fault `bit` must fit the `faults` signal: bit n of element k is fault
//!   `k × element bits + n`. Bits are unique per equipment.
//! - A reference to a PLC whose own table is broken is not reported twice.
//! - `escalate_after_s` is strictly increasing, at most 8 levels; `raise_after_s` is keyed by
//!   severity name.

use std::collections::HashMap;

use super::super::{
    AndonRules, Equipment, EquipmentType, Fault, FaultCategory, OeeTargets, Severity, Signal,
};
use super::signal::{element_bits, type_name};
use super::syntax::{check_name, Problem};
use super::walk::{Need, Table, Value};
use super::{Access, Compiler, Seen};

const RESERVED_FAULT_CODES: &[&str] = &["UNASSIGNED"];

impl Compiler<'_, '_> {
    /// One equipment; `access` has every valid PLC, `declared` every `[[plc]]` name in the file
    /// (a reference to a PLC whose own table is broken is not reported twice).
    pub(super) fn equipment(
        &mut self,
        t: &Table<'_, '_>,
        access: &HashMap<String, Access>,
        declared: &[String],
    ) -> Option<Equipment> {
        self.cx.known_keys(
            t,
            &[
                "code",
                "name",
                "plc",
                "line_id",
                "position_in_line",
                "primary",
                "type",
                "criticality",
                "ideal_rate_per_min",
                "micro_stop_s",
                "location",
                "department",
                "maintenance_interval_hours",
                "last_maintenance_date",
                "oee_targets",
                "signals",
                "fault",
                "andon",
                "unit_id",
            ],
        );
        let code = self.name(t, "code", true);
        let name = self.cx.text(t, "name", Need::Optional);
        let plc_name = self.cx.str_(t, "plc", Need::Required);
        let acc = match &plc_name {
            None => Access::Unknown,
            Some(p) => match access.get(p) {
                Some(a) => *a,
                None => {
                    let span = t.span_of("plc");
                    let path = t.path_of("plc");
                    // A PLC whose own table had errors is not in `access`; only report truly
                    // undefined names here.
                    if !declared.contains(p) {
                        let names: Vec<String> = access.keys().cloned().collect();
                        let hint =
                            self.reference_hint(p, names.iter().map(String::as_str), "[[plc]]");
                        self.cx
                            .error_hint(&span, &path, format!("no [[plc]] named \"{p}\""), hint);
                    }
                    Access::Unknown
                }
            },
        };
        // SPEC §9: a Modbus gateway's (or bus's) unit per equipment, overriding the PLC's.
        let unit_id = match acc {
            Access::Logix | Access::OpcUa if t.has("unit_id") => {
                self.cx.error(
                    &t.key_span("unit_id"),
                    &t.path_of("unit_id"),
                    "\"unit_id\" applies to equipment on modbus-tcp and modbus-rtu PLCs only",
                );
                None
            }
            _ => self
                .cx
                .int(t, "unit_id", Need::Optional, 0..=255)
                .map(|u| u as u8),
        };
        let line_id = self.cx.text(t, "line_id", Need::Required);
        let position_in_line = self
            .cx
            .int(t, "position_in_line", Need::Optional, 1..=1000)
            .unwrap_or(1) as u32;
        let primary = self.cx.bool_(t, "primary", Need::Optional).unwrap_or(false);
        let kind = self
            .cx
            .choice(t, "type", Need::Optional, EquipmentType::NAMES)
            .unwrap_or(EquipmentType::Production);
        let criticality = self
            .cx
            .int(t, "criticality", Need::Optional, 1..=5)
            .unwrap_or(3) as u8;
        let ideal_rate_per_min = self
            .cx
            .num(t, "ideal_rate_per_min", Need::Required, 0.0..=1_000_000.0)
            .and_then(|r| {
                if r > 0.0 {
                    Some(r)
                } else {
                    self.cx.error(
                        &t.span_of("ideal_rate_per_min"),
                        &t.path_of("ideal_rate_per_min"),
                        "must be greater than 0",
                    );
                    None
                }
            });
        let micro_stop_s = self
            .cx
            .int(t, "micro_stop_s", Need::Optional, 0..=3600)
            .unwrap_or(30) as u64;
        let location = self.cx.text(t, "location", Need::Optional);
        let department = self.cx.text(t, "department", Need::Optional);
        let maintenance_interval_hours = self.cx.num(
            t,
            "maintenance_interval_hours",
            Need::Optional,
            0.01..=100_000.0,
        );
        let last_maintenance_ms = self.last_maintenance(t);
        let oee_targets = match self.cx.table(t, "oee_targets", Need::Optional) {
            Some(o) => self.oee_targets(&o),
            None => default_oee_targets(),
        };
        let fault_tables = self.cx.tables(t, "fault");
        let (signals, fault_word) = match self.cx.table(t, "signals", Need::Required) {
            Some(s) => self.signals(&s, acc, !fault_tables.is_empty()),
            None => (None, None),
        };
        let faults = self.faults(&fault_tables, fault_word.as_ref(), acc);
        let andon = match self.cx.table(t, "andon", Need::Optional) {
            Some(a) => self.andon(&a),
            None => Some(AndonRules::default()),
        };
        let code = code?;
        Some(Equipment {
            name: name.unwrap_or_else(|| code.clone()),
            code,
            plc: match acc {
                Access::Unknown => return None,
                _ => plc_name?,
            },
            unit_id,
            line_id: line_id?,
            position_in_line,
            primary,
            kind,
            criticality,
            ideal_rate_per_min: ideal_rate_per_min?,
            micro_stop_s,
            location,
            department,
            maintenance_interval_hours,
            last_maintenance_ms,
            oee_targets,
            signals: signals?,
            faults: faults?,
            andon: andon?,
        })
    }

    /// `last_maintenance_date`: an RFC 3339 date (its 00:00 UTC) or date-time, as a string or
    /// a TOML date/date-time.
    fn last_maintenance(&mut self, t: &Table<'_, '_>) -> Option<i64> {
        let key = "last_maintenance_date";
        let v = self.cx.value(t, key, Need::Optional)?;
        let text = match v.get_ref() {
            toml::de::DeValue::String(s) => s.to_string(),
            toml::de::DeValue::Datetime(d) => d.to_string(),
            _ => {
                self.cx.error(
                    &v.span(),
                    &t.path_of(key),
                    "expected an RFC 3339 date or date-time",
                );
                return None;
            }
        };
        let parsed = text
            .parse::<jiff::Timestamp>()
            .map(|ts| ts.as_millisecond())
            .or_else(|_| {
                text.parse::<jiff::civil::Date>().and_then(|d| {
                    d.to_zoned(jiff::tz::TimeZone::UTC)
                        .map(|z| z.timestamp().as_millisecond())
                })
            });
        match parsed {
            Ok(ms) => Some(ms),
            Err(_) => {
                self.cx.error_hint(
                    &v.span(),
                    &t.path_of(key),
                    format!("\"{text}\" is not an RFC 3339 date or date-time"),
                    Some("e.g. \"2026-11-01\" or \"2026-11-01T06:00:00Z\"".into()),
                );
                None
            }
        }
    }

    fn oee_targets(&mut self, t: &Table<'_, '_>) -> OeeTargets {
        self.cx
            .known_keys(t, &["availability", "performance", "quality", "oee"]);
        let d = default_oee_targets();
        let availability = self
            .cx
            .num(t, "availability", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.availability);
        let performance = self
            .cx
            .num(t, "performance", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.performance);
        let quality = self
            .cx
            .num(t, "quality", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.quality);
        let oee = self
            .cx
            .num(t, "oee", Need::Optional, 0.0..=1.0)
            .unwrap_or(availability * performance * quality);
        OeeTargets {
            availability,
            performance,
            quality,
            oee,
        }
    }

    fn faults(
        &mut self,
        tables: &[Table<'_, '_>],
        word: Option<&Signal>,
        acc: Access,
    ) -> Option<Vec<Fault>> {
        let capacity = word.map(|w| element_bits(w.data_type) * u32::from(w.count));
        let mut out = Some(Vec::new());
        let mut bits: HashMap<String, Seen> = HashMap::new();
        let mut codes: HashMap<String, Seen> = HashMap::new();
        for t in tables {
            self.cx.known_keys(
                t,
                &[
                    "bit",
                    "code",
                    "description",
                    "category",
                    "severity",
                    "andon",
                ],
            );
            let bit = self.cx.int(t, "bit", Need::Required, 0..=127_999).and_then(|b| {
                let b = b as u32;
                match (capacity, word) {
                    (Some(cap), Some(w)) if b >= cap => {
                        let ty = type_name(w.data_type, matches!(acc, Access::Logix));
                        self.cx.error(
                            &t.span_of("bit"),
                            &t.path_of("bit"),
                            format!("bit {b} does not fit the faults signal: {} × {ty} holds bits 0..={}", w.count, cap - 1),
                        );
                        None
                    }
                    _ => Some(b),
                }
            });
            if let Some(b) = bit {
                self.unique(&mut bits, &b.to_string(), t, "bit", "fault bit");
            }
            let code = self.cx.str_(t, "code", Need::Required).and_then(|c| {
                let checked = match check_name(&c, true) {
                    Err(p) => Err(Problem {
                        message: p.message.replace("name", "fault code"),
                        hint: None,
                    }),
                    Ok(()) if RESERVED_FAULT_CODES.contains(&c.as_str()) => Err(Problem {
                        message: format!("\"{c}\" is reserved for stops without an active fault"),
                        hint: None,
                    }),
                    Ok(()) => Ok(c),
                };
                checked
                    .map_err(|p| self.problem(&t.span_of("code"), &t.path_of("code"), p))
                    .ok()
            });
            if let Some(c) = &code {
                self.unique(&mut codes, c, t, "code", "fault code");
            }
            let description = self.cx.text(t, "description", Need::Optional);
            let category = self
                .cx
                .choice(t, "category", Need::Optional, FaultCategory::NAMES)
                .unwrap_or(FaultCategory::Other);
            let severity = self
                .cx
                .choice(t, "severity", Need::Optional, Severity::NAMES)
                .unwrap_or(Severity::Medium);
            let andon = self.cx.bool_(t, "andon", Need::Optional).unwrap_or(false);
            match (bit, code) {
                (Some(bit), Some(code)) => {
                    if let Some(v) = out.as_mut() {
                        v.push(Fault {
                            bit,
                            description: description.unwrap_or_else(|| code.clone()),
                            code,
                            category,
                            severity,
                            andon,
                        });
                    }
                }
                _ => out = None,
            }
        }
        out
    }

    fn andon(&mut self, t: &Table<'_, '_>) -> Option<AndonRules> {
        self.cx.known_keys(
            t,
            &[
                "raise_after_s",
                "escalate_after_s",
                "quality_reject_rate",
                "speed_ratio",
                "speed_after_s",
            ],
        );
        let d = AndonRules::default();
        let mut raise_after_s = d.raise_after_s;
        if let Some(r) = self.cx.table(t, "raise_after_s", Need::Optional) {
            // Keyed by severity name; `raise_after_s[i]` is the i-th severity, low first.
            let levels: Vec<&str> = Severity::NAMES.iter().map(|(n, _)| *n).collect();
            self.cx.known_keys(&r, &levels);
            for (i, level) in levels.iter().enumerate() {
                if let Some(s) = self.cx.int(&r, level, Need::Optional, 0..=86_400) {
                    raise_after_s[i] = s as u64;
                }
            }
        }
        let mut escalate_after_s = Some(d.escalate_after_s);
        if let Some(v) = t.get("escalate_after_s") {
            let path = t.path_of("escalate_after_s");
            escalate_after_s = self.escalation(v, &path);
        }
        let quality_reject_rate = self
            .cx
            .num(t, "quality_reject_rate", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.quality_reject_rate);
        let speed_ratio = self
            .cx
            .num(t, "speed_ratio", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.speed_ratio);
        let speed_after_s = self
            .cx
            .int(t, "speed_after_s", Need::Optional, 0..=86_400)
            .map_or(d.speed_after_s, |s| s as u64);
        Some(AndonRules {
            raise_after_s,
            escalate_after_s: escalate_after_s?,
            quality_reject_rate,
            speed_ratio,
            speed_after_s,
        })
    }

    /// `escalate_after_s = [300, 900]`: strictly increasing, at most 8 levels.
    fn escalation(&mut self, v: &Value<'_>, path: &str) -> Option<Vec<u64>> {
        let items = self.cx.as_array(v, path)?;
        if items.len() > 8 {
            self.cx.error(
                &v.span(),
                path,
                format!("at most 8 escalation levels, found {}", items.len()),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match self.cx.as_int(item, &item_path, 1..=604_800) {
                Some(s) => {
                    if out.last().is_some_and(|&last| s as u64 <= last) {
                        self.cx.error(
                            &item.span(),
                            &item_path,
                            "escalation times must increase: each is counted from the raise",
                        );
                        ok = false;
                    }
                    out.push(s as u64);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

fn default_oee_targets() -> OeeTargets {
    let (a, p, q) = (0.90, 0.85, 0.95);
    OeeTargets {
        availability: a,
        performance: p,
        quality: q,
        oee: a * p * q,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, loaded, with};

    #[test]
    fn unassigned_is_reserved_for_stops_without_a_fault() {
        let text = with(
            "faults = { address = \"hr:10\" }\n\n[[equipment.fault]]\nbit = 0\ncode = \"UNASSIGNED\"\n",
        );
        let e = error_at(&text, "equipment[0].fault[0].code");
        assert_eq!(
            e.message,
            "\"UNASSIGNED\" is reserved for stops without an active fault"
        );
    }

    #[test]
    fn raise_after_s_is_keyed_by_severity_name_low_first() {
        let text = with("\n[equipment.andon.raise_after_s]\nlow = 1\ncritical = 4\n");
        let e = &loaded(&text).config.equipment[0];
        assert_eq!(e.andon.raise_after_s, [1, 300, 60, 4]);
        let e = error_at(
            &with("\n[equipment.andon.raise_after_s]\nmedum = 5\n"),
            "equipment[0].andon.raise_after_s.medum",
        );
        assert_eq!(e.hint.as_deref(), Some("did you mean \"medium\"?"));
    }
}
