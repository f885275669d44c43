//! What the gateway tells a Sparkplug host, as plain data: the metric catalogue of the edge
//! node and its devices (names, datatypes, aliases) and the [`Recorder`] that turns engine
//! events into report-by-exception changes.
//!
//! Pure: no I/O, no clock. The store persists what the recorder stages in the transaction of
//! the events it came from ([`crate::store::sparkplug`]); the session only frames it.
//!
//! ## Invariants (unit tests below)
//! - Aliases are unique per edge node: node metrics `1..`, device `i` (file order, from 0)
//!   metric `j` (from 0) `(i + 1) << 16 | (j + 1)`; `Node Control/Rebirth` and `bdSeq` have none.
//! - A row holds only metrics whose value (or quality) differs from the last committed or
//!   staged value of that equipment; events of one equipment with one timestamp (one poll)
//!   make one row; rows come in the order of the events.
//! - Staged values become the reference only after [`Recorder::settle`] (the commit
//!   succeeded); [`Recorder::abandon`] forgets them, so a failed commit is recomputed whole.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::codec::{QUALITY_BAD, QUALITY_GOOD, QUALITY_STALE};
use super::proto::DataType;
use crate::config::{Config, DataType as SignalType, Signal};
use crate::engine::Event;
use crate::sample::Quality;

/// Node metrics (besides `bdSeq` and `Node Control/Rebirth`), with their aliases.
pub const NODE_METRICS: &[(&str, DataType, u64)] = &[
    ("Properties/version", DataType::String, 1),
    ("Outbox/depth", DataType::UInt64, 2),
    ("Outbox/oldest_age_s", DataType::Double, 3),
];

/// One metric of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    pub name: String,
    pub datatype: DataType,
    pub alias: u64,
}

/// The metrics of one equipment (a Sparkplug device).
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// The equipment code: the device id.
    pub code: String,
    pub metrics: Vec<MetricDef>,
    by_name: HashMap<String, usize>,
}

impl Device {
    /// The definition of `name`, if this device has it.
    pub fn get(&self, name: &str) -> Option<&MetricDef> {
        self.by_name.get(name).map(|&i| &self.metrics[i])
    }
}

/// The devices of one configuration, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    pub devices: Vec<Device>,
}

/// The Sparkplug datatype of a configured signal: its natural type, an array type for
/// `count > 1`, Double when it is scaled (a scaled value is a float).
pub fn signal_datatype(s: &Signal) -> DataType {
    let scalar = if s.scale != 1.0 || s.offset != 0.0 {
        DataType::Double
    } else {
        match s.data_type {
            SignalType::Bool => DataType::Boolean,
            SignalType::U16 => DataType::UInt16,
            SignalType::I16 => DataType::Int16,
            SignalType::U32 => DataType::UInt32,
            SignalType::I32 => DataType::Int32,
            SignalType::U64 => DataType::UInt64,
            SignalType::I64 => DataType::Int64,
            SignalType::F32 => DataType::Float,
            SignalType::F64 => DataType::Double,
            SignalType::I8 => DataType::Int8,
            SignalType::U8 => DataType::UInt8,
        }
    };
    if s.count > 1 {
        scalar.array_of().unwrap_or(scalar)
    } else {
        scalar
    }
}

impl Catalogue {
    /// The catalogue of `config`'s equipment.
    pub fn of(config: &Config) -> Catalogue {
        let devices = config
            .equipment
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut defs: Vec<(String, DataType)> = e
                    .signals
                    .all()
                    .into_iter()
                    .map(|(name, s)| (format!("Signals/{name}"), signal_datatype(s)))
                    .collect();
                use DataType as D;
                for (name, dt) in [
                    ("State/state", D::String),
                    ("Downtime/active", D::Boolean),
                    ("Downtime/reason_code", D::String),
                    ("Downtime/category", D::String),
                    ("Andon/open", D::Int32),
                    ("Andon/highest_priority", D::String),
                    ("OEE/availability", D::Double),
                    ("OEE/performance", D::Double),
                    ("OEE/quality", D::Double),
                    ("OEE/oee", D::Double),
                    ("Production/good_count", D::UInt64),
                    ("Production/reject_count", D::UInt64),
                    ("Context/job_id", D::String),
                    ("Context/product_type_id", D::String),
                    ("Context/operator", D::String),
                    ("Context/actual_quantity", D::UInt64),
                ] {
                    defs.push((name.to_string(), dt));
                }
                let base = (i as u64 + 1) << 16;
                let metrics: Vec<MetricDef> = defs
                    .into_iter()
                    .enumerate()
                    .map(|(j, (name, datatype))| MetricDef {
                        name,
                        datatype,
                        alias: base | (j as u64 + 1),
                    })
                    .collect();
                let by_name = metrics
                    .iter()
                    .enumerate()
                    .map(|(j, m)| (m.name.clone(), j))
                    .collect();
                Device {
                    code: e.code.clone(),
                    metrics,
                    by_name,
                }
            })
            .collect();
        Catalogue { devices }
    }

    /// The device of equipment `code`.
    pub fn device(&self, code: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.code == code)
    }
}

/// One metric's value: JSON `null` is sent as `is_null`; `q` is the `quality` property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub v: Json,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<i32>,
}

/// The current values of one equipment, as persisted (`spb_current`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Values {
    pub metrics: BTreeMap<String, Reading>,
    /// Open andons: id → priority (for `Andon/open` and `Andon/highest_priority`).
    #[serde(default)]
    pub andons: BTreeMap<String, String>,
}

/// One DDATA to be: the changed metrics of one equipment at one time (the poll's tick).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub equipment: String,
    pub time_ms: i64,
    pub metrics: Vec<(String, Reading)>,
}

/// Report-by-exception over committed values (module doc).
#[derive(Debug, Default)]
pub struct Recorder {
    committed: BTreeMap<String, Values>,
    staged: BTreeMap<String, Values>,
}

fn priority_rank(p: &str) -> u8 {
    match p {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
}

fn quality_code(q: Quality) -> i32 {
    match q {
        Quality::Good => QUALITY_GOOD,
        Quality::Bad => QUALITY_BAD,
        Quality::Stale => QUALITY_STALE,
    }
}

fn text(s: &Option<String>) -> Json {
    s.as_ref().map_or(Json::Null, |s| json!(s))
}

impl Recorder {
    /// A recorder resuming from the persisted values.
    pub fn with(committed: BTreeMap<String, Values>) -> Recorder {
        Recorder {
            committed,
            staged: BTreeMap::new(),
        }
    }

    /// The rows `events` cause; their values are staged until [`Recorder::settle`].
    pub fn stage(&mut self, events: &[Event]) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        let mut at: HashMap<(String, i64), usize> = HashMap::new();
        for e in events {
            let changes = self.changes_of(e);
            if changes.is_empty() {
                continue;
            }
            let code = e.equipment().to_string();
            let values = match self.staged.get_mut(&code) {
                Some(v) => v,
                None => {
                    let v = self.committed.get(&code).cloned().unwrap_or_default();
                    self.staged.entry(code.clone()).or_insert(v)
                }
            };
            let mut changed = Vec::new();
            for (name, reading) in changes {
                if values.metrics.get(&name) != Some(&reading) {
                    values.metrics.insert(name.clone(), reading.clone());
                    changed.push((name, reading));
                }
            }
            if changed.is_empty() {
                continue;
            }
            let key = (code.clone(), e.at_ms());
            match at.get(&key) {
                Some(&i) => {
                    let row = &mut rows[i];
                    for (name, reading) in changed {
                        match row.metrics.iter_mut().find(|(n, _)| *n == name) {
                            Some(slot) => slot.1 = reading,
                            None => row.metrics.push((name, reading)),
                        }
                    }
                }
                None => {
                    at.insert(key, rows.len());
                    rows.push(Row {
                        equipment: code,
                        time_ms: e.at_ms(),
                        metrics: changed,
                    });
                }
            }
        }
        rows
    }

    /// The equipment whose values the staged rows changed, with their new values.
    pub fn staged(&self) -> impl Iterator<Item = (&String, &Values)> {
        self.staged.iter()
    }

    /// The commit succeeded: the staged values are the reference now.
    pub fn settle(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        self.committed.extend(staged);
    }

    /// The commit failed: forget what was staged.
    pub fn abandon(&mut self) {
        self.staged.clear();
    }

    /// The current value of every metric of `code`, committed.
    pub fn current(&self, code: &str) -> Option<&Values> {
        self.committed.get(code)
    }

    /// The readings an event sets (not yet compared); updates the open-andon bookkeeping
    /// of the staged values.
    fn changes_of(&mut self, e: &Event) -> Vec<(String, Reading)> {
        let good = |v: Json| Reading { v, q: None };
        let mut out = Vec::new();
        match e {
            Event::Telemetry {
                values, quality, ..
            } => {
                for (name, value) in values {
                    let q = quality.get(name).copied().unwrap_or(Quality::Good);
                    let v = match (value, q) {
                        (Some(v), Quality::Good) => serde_json::to_value(v).unwrap_or(Json::Null),
                        _ => Json::Null,
                    };
                    let q = if v.is_null() && q == Quality::Good {
                        QUALITY_BAD
                    } else {
                        quality_code(q)
                    };
                    out.push((format!("Signals/{name}"), Reading { v, q: Some(q) }));
                }
            }
            Event::StateChanged { to, .. } => {
                out.push(("State/state".into(), good(json!(to.as_str()))));
            }
            Event::DowntimeStarted { record, .. } => {
                out.push(("Downtime/active".into(), good(json!(true))));
                out.push((
                    "Downtime/reason_code".into(),
                    good(json!(record.reason.code)),
                ));
                out.push((
                    "Downtime/category".into(),
                    good(json!(record.reason.category)),
                ));
            }
            Event::DowntimeEnded { .. } => {
                out.push(("Downtime/active".into(), good(json!(false))));
                out.push(("Downtime/reason_code".into(), good(json!(""))));
                out.push(("Downtime/category".into(), good(json!(""))));
            }
            Event::DowntimeReasonSet { reason, .. } => {
                out.push(("Downtime/reason_code".into(), good(json!(reason.code))));
                out.push(("Downtime/category".into(), good(json!(reason.category))));
            }
            Event::AndonRaised { andon, .. } => {
                return self.andons(e.equipment(), |a| {
                    a.insert(andon.andon_id.clone(), andon.priority.clone());
                });
            }
            Event::AndonEscalated {
                andon_id, priority, ..
            } => {
                return self.andons(e.equipment(), |a| {
                    a.insert(andon_id.clone(), priority.clone());
                });
            }
            Event::AndonResolved { andon_id, .. } => {
                return self.andons(e.equipment(), |a| {
                    a.remove(andon_id);
                });
            }
            Event::OeeSnapshot { data, .. } => {
                for key in ["availability", "performance", "quality", "oee"] {
                    let v = data.get(key).cloned().unwrap_or(Json::Null);
                    out.push((format!("OEE/{key}"), good(v)));
                }
                for key in ["good_count", "reject_count"] {
                    if let Some(v) = data.get(key) {
                        out.push((format!("Production/{key}"), good(v.clone())));
                    }
                }
            }
            Event::ContextChanged { context, .. } => {
                out.push(("Context/job_id".into(), good(text(&context.job_id))));
                out.push((
                    "Context/product_type_id".into(),
                    good(text(&context.product_type_id)),
                ));
                out.push(("Context/operator".into(), good(text(&context.operator))));
                out.push((
                    "Context/actual_quantity".into(),
                    good(json!(context.actual_quantity)),
                ));
            }
            Event::Job {
                actual_quantity, ..
            } => {
                out.push((
                    "Context/actual_quantity".into(),
                    good(json!(actual_quantity)),
                ));
            }
            Event::AndonAcknowledged { .. }
            | Event::OeeMinute { .. }
            | Event::Changeover { .. }
            | Event::Maintenance { .. } => {}
        }
        out
    }

    /// Applies `f` to the open andons of `code` (staged) and returns the two andon metrics.
    fn andons(
        &mut self,
        code: &str,
        f: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Vec<(String, Reading)> {
        if !self.staged.contains_key(code) {
            let v = self.committed.get(code).cloned().unwrap_or_default();
            self.staged.insert(code.to_string(), v);
        }
        let Some(values) = self.staged.get_mut(code) else {
            return Vec::new();
        };
        f(&mut values.andons);
        let highest = values
            .andons
            .values()
            .max_by_key(|p| priority_rank(p))
            .cloned()
            .unwrap_or_default();
        vec![
            (
                "Andon/open".into(),
                Reading {
                    v: json!(values.andons.len()),
                    q: None,
                },
            ),
            (
                "Andon/highest_priority".into(),
                Reading {
                    v: json!(highest),
                    q: None,
                },
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MachineState;
    use crate::sample::Value;

    fn telemetry(at_ms: i64, speed: Option<f64>, q: Quality) -> Event {
        Event::Telemetry {
            equipment: "EQ".into(),
            at_ms,
            values: [
                ("running".to_string(), Some(Value::Bool(true))),
                ("speed".to_string(), speed.map(Value::Float)),
            ]
            .into_iter()
            .collect(),
            quality: [
                ("running".to_string(), Quality::Good),
                ("speed".to_string(), q),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn only_changes_are_rows_and_one_poll_is_one_row() {
        let mut r = Recorder::default();
        let rows = r.stage(&[
            telemetry(1, Some(1.0), Quality::Good),
            Event::StateChanged {
                equipment: "EQ".into(),
                from: MachineState::Offline,
                to: MachineState::Running,
                at_ms: 1,
            },
        ]);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].metrics.len(), 3);
        r.settle();
        let rows = r.stage(&[telemetry(2, Some(2.0), Quality::Good)]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].metrics.len(), 1, "only the speed changed");
        assert_eq!(rows[0].metrics[0].0, "Signals/speed");
        r.abandon();
        let again = r.stage(&[telemetry(2, Some(2.0), Quality::Good)]);
        assert_eq!(again, rows, "an abandoned stage is recomputed whole");
        r.settle();
        assert!(r
            .stage(&[telemetry(3, Some(2.0), Quality::Good)])
            .is_empty());
    }

    #[test]
    fn a_bad_reading_is_null_with_its_quality() {
        let mut r = Recorder::default();
        let rows = r.stage(&[telemetry(1, None, Quality::Stale)]);
        let speed = rows[0]
            .metrics
            .iter()
            .find(|(n, _)| n == "Signals/speed")
            .map(|(_, r)| r.clone());
        assert_eq!(
            speed,
            Some(Reading {
                v: Json::Null,
                q: Some(QUALITY_STALE)
            })
        );
    }

    #[test]
    fn aliases_are_unique_per_edge_node() {
        let text = crate::demo::config_text(1502, 1503, "/tmp/unused", None);
        let config = crate::config::load_str(&text, "t.toml").unwrap().config;
        let c = Catalogue::of(&config);
        assert!(c.devices.len() >= 2);
        let mut seen: Vec<u64> = NODE_METRICS.iter().map(|m| m.2).collect();
        for d in &c.devices {
            seen.extend(d.metrics.iter().map(|m| m.alias));
        }
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n);
    }
}
