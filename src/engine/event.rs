//! The events the engine emits, and how each one looks on the wire (SPEC §4).
//!
//! The payload shape is domain knowledge, so it lives here: [`Event::message`] gives the
//! CloudEvents `type`, the topic below `topic_prefix`, the `data` member, the retain flag and
//! the drop class. The store persists events; the uplink only frames and sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::context::Context;
use super::oee::Bucket;
use super::state::MachineState;
use crate::clock::rfc3339_ms;
use crate::sample::{Quality, Value};

/// Why a machine is down: a fault from the table, an operator reason, planned, changeover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub code: String,
    pub description: String,
    pub category: String,
}

impl Reason {
    /// No fault and no operator reason yet.
    pub fn unassigned() -> Reason {
        Reason {
            code: "UNASSIGNED".into(),
            description: "Unassigned".into(),
            category: "unassigned".into(),
        }
    }
}

/// A stop as reported: open (no end) or closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DowntimeRecord {
    pub downtime_id: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub reason: Reason,
    pub planned: bool,
    pub fault_bits: Vec<u32>,
    pub minor: bool,
    /// Who closed it when not the machine itself: `"reload"` when a configuration reload
    /// removed the equipment while the downtime was open (SPEC §6 "Reload").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// What ended it (set when it ends; `downtime.ended` always carries it): `"timeout"` for a
    /// commanded planned stop that reached `max_planned_stop_min`, the command's `by` when a
    /// command ended it (`planned-stop/*`, `changeover/*`), `"reload"` with `closed_by`, and
    /// `"auto"` when the machine itself did (it ran again, went offline, a calendar window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
}

impl DowntimeRecord {
    fn data(&self, ended: bool) -> Json {
        let mut d = json!({
            "downtime_id": self.downtime_id,
            "started_at": rfc3339_ms(self.start_ms),
            "reason_code": self.reason.code,
            "reason": self.reason.description,
            "category": self.reason.category,
            "planned": self.planned,
            "fault_bits": self.fault_bits,
        });
        if ended {
            let end = self.end_ms.unwrap_or(self.start_ms);
            d["ended_at"] = json!(rfc3339_ms(end));
            d["duration_s"] = json!((end - self.start_ms) as f64 / 1000.0);
            d["minor"] = json!(self.minor);
            d["ended_by"] = json!(self.ended_by.as_deref().unwrap_or("auto"));
            if let Some(by) = &self.closed_by {
                d["closed_by"] = json!(by);
            }
        }
        d
    }
}

/// Andon cause (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AndonCause {
    Fault,
    Quality,
    Speed,
    /// Maintenance due (SPEC §11).
    Maintenance,
}

/// An andon as raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AndonRecord {
    pub andon_id: String,
    pub cause: AndonCause,
    /// Fault code, `quality` or `speed`: at most one open andon per equipment and key.
    pub cause_key: String,
    pub priority: String,
    pub level: u32,
    pub reason_code: String,
    pub description: String,
    pub downtime_id: Option<String>,
    pub raised_ms: i64,
    pub acknowledged_by: Option<String>,
}

/// `job.*` kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    Assigned,
    Started,
    Completed,
    Cancelled,
}

/// Something the engine decided happened.
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
    DowntimeStarted {
        equipment: String,
        at_ms: i64,
        record: DowntimeRecord,
    },
    DowntimeEnded {
        equipment: String,
        at_ms: i64,
        record: DowntimeRecord,
    },
    DowntimeReasonSet {
        equipment: String,
        at_ms: i64,
        downtime_id: String,
        reason: Reason,
        by: String,
    },
    AndonRaised {
        equipment: String,
        at_ms: i64,
        andon: AndonRecord,
    },
    AndonEscalated {
        equipment: String,
        at_ms: i64,
        andon_id: String,
        level: u32,
        priority: String,
    },
    AndonAcknowledged {
        equipment: String,
        at_ms: i64,
        andon_id: String,
        by: String,
    },
    AndonResolved {
        equipment: String,
        at_ms: i64,
        andon_id: String,
        resolved_by: String,
        duration_s: f64,
    },
    /// `oee.snapshot`; `data` is the full payload.
    OeeSnapshot {
        equipment: String,
        at_ms: i64,
        data: Json,
    },
    /// A settled minute bucket: persisted, never published.
    OeeMinute {
        equipment: String,
        minute_ms: i64,
        bucket: Bucket,
    },
    ContextChanged {
        equipment: String,
        at_ms: i64,
        context: Box<Context>,
        change_reason: String,
        changed_by: String,
    },
    Job {
        equipment: String,
        at_ms: i64,
        kind: JobEvent,
        job_id: String,
        target_quantity: Option<u64>,
        actual_quantity: u64,
        by: String,
    },
    Changeover {
        equipment: String,
        at_ms: i64,
        completed: bool,
        data: Json,
    },
    /// `maintenance.due` (`done = false`) or `maintenance.done`; `data` is the full payload.
    Maintenance {
        equipment: String,
        at_ms: i64,
        done: bool,
        data: Json,
    },
}

/// Drop class of an outbox message (SPEC §5): lower classes are dropped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropClass {
    Telemetry = 0,
    OeeSnapshot = 1,
    Event = 2,
}

/// How an event goes out: CloudEvents type, topic below the prefix, data, retain, drop class.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub event_type: &'static str,
    pub topic: String,
    pub data: Json,
    pub retain: bool,
    pub class: DropClass,
}

impl Event {
    /// The equipment the event belongs to.
    pub fn equipment(&self) -> &str {
        match self {
            Event::StateChanged { equipment, .. }
            | Event::Telemetry { equipment, .. }
            | Event::DowntimeStarted { equipment, .. }
            | Event::DowntimeEnded { equipment, .. }
            | Event::DowntimeReasonSet { equipment, .. }
            | Event::AndonRaised { equipment, .. }
            | Event::AndonEscalated { equipment, .. }
            | Event::AndonAcknowledged { equipment, .. }
            | Event::AndonResolved { equipment, .. }
            | Event::OeeSnapshot { equipment, .. }
            | Event::OeeMinute { equipment, .. }
            | Event::ContextChanged { equipment, .. }
            | Event::Job { equipment, .. }
            | Event::Changeover { equipment, .. }
            | Event::Maintenance { equipment, .. } => equipment,
        }
    }

    /// When it happened (UTC epoch ms).
    pub fn at_ms(&self) -> i64 {
        match self {
            Event::StateChanged { at_ms, .. }
            | Event::Telemetry { at_ms, .. }
            | Event::DowntimeStarted { at_ms, .. }
            | Event::DowntimeEnded { at_ms, .. }
            | Event::DowntimeReasonSet { at_ms, .. }
            | Event::AndonRaised { at_ms, .. }
            | Event::AndonEscalated { at_ms, .. }
            | Event::AndonAcknowledged { at_ms, .. }
            | Event::AndonResolved { at_ms, .. }
            | Event::OeeSnapshot { at_ms, .. }
            | Event::ContextChanged { at_ms, .. }
            | Event::Job { at_ms, .. }
            | Event::Changeover { at_ms, .. }
            | Event::Maintenance { at_ms, .. } => *at_ms,
            Event::OeeMinute { minute_ms, .. } => *minute_ms,
        }
    }

    /// The event's name without the `ms5.` prefix, for logs and views.
    pub fn name(&self) -> &'static str {
        match self.message() {
            Some(m) => m.event_type.trim_start_matches("ms5."),
            None => "oee.minute",
        }
    }

    /// The wire form; `None` for events that are persisted but never published.
    pub fn message(&self) -> Option<Message> {
        let eq = self.equipment();
        let msg = |event_type, suffix: &str, data: Json, retain, class| Message {
            event_type,
            topic: format!("{eq}/{suffix}"),
            data,
            retain,
            class,
        };
        Some(match self {
            Event::StateChanged {
                from, to, at_ms, ..
            } => msg(
                "ms5.state.changed",
                "state",
                json!({ "from": from, "to": to, "at": rfc3339_ms(*at_ms) }),
                false,
                DropClass::Event,
            ),
            Event::Telemetry {
                values, quality, ..
            } => msg(
                "ms5.telemetry",
                "telemetry",
                json!({ "values": values, "quality": quality }),
                false,
                DropClass::Telemetry,
            ),
            Event::DowntimeStarted { record, .. } => msg(
                "ms5.downtime.started",
                "downtime",
                record.data(false),
                false,
                DropClass::Event,
            ),
            Event::DowntimeEnded { record, .. } => msg(
                "ms5.downtime.ended",
                "downtime",
                record.data(true),
                false,
                DropClass::Event,
            ),
            Event::DowntimeReasonSet {
                downtime_id,
                reason,
                by,
                ..
            } => msg(
                "ms5.downtime.reason_set",
                "downtime",
                json!({
                    "downtime_id": downtime_id,
                    "reason_code": reason.code,
                    "reason": reason.description,
                    "category": reason.category,
                    "by": by,
                }),
                false,
                DropClass::Event,
            ),
            Event::AndonRaised { andon, .. } => msg(
                "ms5.andon.raised",
                "andon",
                json!({
                    "andon_id": andon.andon_id,
                    "priority": andon.priority,
                    "level": andon.level,
                    "cause": andon.cause,
                    "reason_code": andon.reason_code,
                    "description": andon.description,
                    "downtime_id": andon.downtime_id,
                    "raised_at": rfc3339_ms(andon.raised_ms),
                }),
                false,
                DropClass::Event,
            ),
            Event::AndonEscalated {
                andon_id,
                level,
                priority,
                ..
            } => msg(
                "ms5.andon.escalated",
                "andon",
                json!({ "andon_id": andon_id, "level": level, "priority": priority }),
                false,
                DropClass::Event,
            ),
            Event::AndonAcknowledged { andon_id, by, .. } => msg(
                "ms5.andon.acknowledged",
                "andon",
                json!({ "andon_id": andon_id, "by": by }),
                false,
                DropClass::Event,
            ),
            Event::AndonResolved {
                andon_id,
                resolved_by,
                duration_s,
                ..
            } => msg(
                "ms5.andon.resolved",
                "andon",
                json!({ "andon_id": andon_id, "resolved_by": resolved_by, "duration_s": duration_s }),
                false,
                DropClass::Event,
            ),
            Event::OeeSnapshot { data, .. } => msg(
                "ms5.oee.snapshot",
                "oee",
                data.clone(),
                false,
                DropClass::OeeSnapshot,
            ),
            Event::OeeMinute { .. } => return None,
            Event::ContextChanged {
                context,
                change_reason,
                changed_by,
                at_ms,
                ..
            } => {
                let mut data = context.to_json();
                data["change_reason"] = json!(change_reason);
                data["changed_by"] = json!(changed_by);
                data["changed_at"] = json!(rfc3339_ms(*at_ms));
                msg(
                    "ms5.context.changed",
                    "context",
                    data,
                    true,
                    DropClass::Event,
                )
            }
            Event::Job {
                kind,
                job_id,
                target_quantity,
                actual_quantity,
                by,
                ..
            } => msg(
                match kind {
                    JobEvent::Assigned => "ms5.job.assigned",
                    JobEvent::Started => "ms5.job.started",
                    JobEvent::Completed => "ms5.job.completed",
                    JobEvent::Cancelled => "ms5.job.cancelled",
                },
                "job",
                json!({
                    "job_id": job_id,
                    "target_quantity": target_quantity,
                    "actual_quantity": actual_quantity,
                    "by": by,
                }),
                false,
                DropClass::Event,
            ),
            Event::Changeover {
                completed, data, ..
            } => msg(
                if *completed {
                    "ms5.changeover.completed"
                } else {
                    "ms5.changeover.started"
                },
                "changeover",
                data.clone(),
                false,
                DropClass::Event,
            ),
            Event::Maintenance { done, data, .. } => msg(
                if *done {
                    "ms5.maintenance.done"
                } else {
                    "ms5.maintenance.due"
                },
                "maintenance",
                data.clone(),
                false,
                DropClass::Event,
            ),
        })
    }
}
