//! Commands from `P/cmd/{equipment}/{command}` (SPEC §4), parsed and schema-checked before
//! anything changes.
//!
//! Parsing is separate from applying: a [`Command`] is valid JSON of the right shape naming a
//! known command; whether it *applies* (the andon exists, a job is assigned, …) is decided by
//! the engine, which changes nothing when it does not.

use serde_json::{Map, Value as Json};

/// Largest accepted body (SPEC §4).
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed, shape-valid command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub request_id: String,
    pub equipment: String,
    pub by: String,
    pub note: Option<String>,
    pub kind: CommandKind,
}

/// Context fields a `context` command may set (`None` = leave unchanged, `Some(None)` = clear).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContextPatch {
    pub job_id: Option<Option<String>>,
    pub schedule_id: Option<Option<String>>,
    pub product_type_id: Option<Option<String>>,
    pub operator: Option<Option<String>>,
    pub target_speed: Option<Option<f64>>,
    pub target_quantity: Option<Option<u64>>,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    Context(ContextPatch),
    JobAssign {
        job_id: String,
        target_quantity: Option<u64>,
        product_type_id: Option<String>,
        schedule_id: Option<String>,
        target_speed: Option<f64>,
    },
    JobStart {
        job_id: Option<String>,
    },
    JobComplete {
        job_id: Option<String>,
    },
    JobCancel {
        job_id: Option<String>,
    },
    ChangeoverStart {
        product_type_id: Option<String>,
        job_id: Option<String>,
    },
    ChangeoverComplete {
        failed: bool,
    },
    PlannedStopStart {
        reason: Option<String>,
    },
    PlannedStopEnd,
    AndonAck {
        andon_id: String,
    },
    AndonResolve {
        andon_id: String,
    },
    DowntimeReason {
        downtime_id: String,
        reason_code: String,
    },
    /// `maintenance/done` (SPEC §11).
    MaintenanceDone,
}

/// A command that cannot be parsed: what to reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub request_id: Option<String>,
    pub error: String,
}

/// Fields every command may carry: `issued_at` and `sig` are checked by the uplink's gate
/// (`uplink::guard`) before a command reaches the engine.
const COMMON: [&str; 5] = ["request_id", "by", "note", "issued_at", "sig"];

fn opt_string(body: &Map<String, Json>, key: &str) -> Result<Option<String>, String> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(Some(s.clone())),
        Some(_) => Err(format!(
            "\"{key}\" must be a non-empty string of at most 256 characters"
        )),
    }
}

fn req_string(body: &Map<String, Json>, key: &str) -> Result<String, String> {
    opt_string(body, key)?.ok_or_else(|| format!("\"{key}\" is required"))
}

fn opt_u64(body: &Map<String, Json>, key: &str) -> Result<Option<u64>, String> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("\"{key}\" must be a non-negative integer")),
    }
}

fn opt_f64(body: &Map<String, Json>, key: &str) -> Result<Option<f64>, String> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(Some)
            .ok_or_else(|| format!("\"{key}\" must be a non-negative number")),
    }
}

/// Reads one optional field of a body.
type FieldReader<T> = fn(&Map<String, Json>, &str) -> Result<Option<T>, String>;

/// A patch field: absent → None, null → Some(None), value → Some(Some(v)).
fn patch<T>(
    body: &Map<String, Json>,
    key: &str,
    read: FieldReader<T>,
) -> Result<Option<Option<T>>, String> {
    if !body.contains_key(key) {
        return Ok(None);
    }
    Ok(Some(read(body, key)?))
}

/// Parses `path` (below `P/cmd/`: `{equipment}/{command}`) and the JSON body.
pub fn parse(path: &str, payload: &[u8]) -> Result<Command, Rejected> {
    let reject = |request_id: Option<String>, error: String| Rejected { request_id, error };
    if payload.len() > MAX_BODY {
        return Err(reject(
            None,
            format!(
                "command body of {} bytes exceeds the 64 KiB limit",
                payload.len()
            ),
        ));
    }
    let body: Json = serde_json::from_slice(payload)
        .map_err(|e| reject(None, format!("malformed JSON: {e}")))?;
    let Json::Object(body) = body else {
        return Err(reject(None, "command body must be a JSON object".into()));
    };
    let request_id = match body.get("request_id") {
        Some(Json::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(reject(
                None,
                "\"request_id\" is required (a non-empty string)".into(),
            ))
        }
    };
    let rid = Some(request_id.clone());
    let Some((equipment, name)) = path.split_once('/') else {
        return Err(reject(
            rid,
            format!("command topic \"{path}\" must be cmd/{{equipment}}/{{command}}"),
        ));
    };
    let by = req_string(&body, "by").map_err(|e| reject(rid.clone(), e))?;
    let note = opt_string(&body, "note").map_err(|e| reject(rid.clone(), e))?;
    let allowed: &[&str] = match name {
        "context" => &[
            "job_id",
            "schedule_id",
            "product_type_id",
            "operator",
            "target_speed",
            "target_quantity",
        ],
        "job/assign" => &[
            "job_id",
            "target_quantity",
            "product_type_id",
            "schedule_id",
            "target_speed",
        ],
        "job/start" | "job/complete" | "job/cancel" => &["job_id"],
        "changeover/start" => &["product_type_id", "job_id"],
        "changeover/complete" => &["failed"],
        "planned-stop/start" => &["reason"],
        "planned-stop/end" => &[],
        "andon/ack" | "andon/resolve" => &["andon_id"],
        "downtime/reason" => &["downtime_id", "reason_code"],
        "maintenance/done" => &[],
        other => return Err(reject(rid, format!("unknown command \"{other}\""))),
    };
    if let Some(k) = body
        .keys()
        .find(|k| !COMMON.contains(&k.as_str()) && !allowed.contains(&k.as_str()))
    {
        return Err(reject(
            rid,
            format!("unknown field \"{k}\" for command \"{name}\""),
        ));
    }
    let kind = (|| -> Result<CommandKind, String> {
        Ok(match name {
            "context" => {
                let p = ContextPatch {
                    job_id: patch(&body, "job_id", opt_string)?,
                    schedule_id: patch(&body, "schedule_id", opt_string)?,
                    product_type_id: patch(&body, "product_type_id", opt_string)?,
                    operator: patch(&body, "operator", opt_string)?,
                    target_speed: patch(&body, "target_speed", opt_f64)?,
                    target_quantity: patch(&body, "target_quantity", opt_u64)?,
                };
                if p == ContextPatch::default() {
                    return Err("a context command must set at least one field".into());
                }
                CommandKind::Context(p)
            }
            "job/assign" => CommandKind::JobAssign {
                job_id: req_string(&body, "job_id")?,
                target_quantity: opt_u64(&body, "target_quantity")?,
                product_type_id: opt_string(&body, "product_type_id")?,
                schedule_id: opt_string(&body, "schedule_id")?,
                target_speed: opt_f64(&body, "target_speed")?,
            },
            "job/start" => CommandKind::JobStart {
                job_id: opt_string(&body, "job_id")?,
            },
            "job/complete" => CommandKind::JobComplete {
                job_id: opt_string(&body, "job_id")?,
            },
            "job/cancel" => CommandKind::JobCancel {
                job_id: opt_string(&body, "job_id")?,
            },
            "changeover/start" => CommandKind::ChangeoverStart {
                product_type_id: opt_string(&body, "product_type_id")?,
                job_id: opt_string(&body, "job_id")?,
            },
            "changeover/complete" => CommandKind::ChangeoverComplete {
                failed: match body.get("failed") {
                    None | Some(Json::Null) => false,
                    Some(Json::Bool(b)) => *b,
                    Some(_) => return Err("\"failed\" must be true or false".into()),
                },
            },
            "planned-stop/start" => CommandKind::PlannedStopStart {
                reason: opt_string(&body, "reason")?,
            },
            "planned-stop/end" => CommandKind::PlannedStopEnd,
            "andon/ack" => CommandKind::AndonAck {
                andon_id: req_string(&body, "andon_id")?,
            },
            "andon/resolve" => CommandKind::AndonResolve {
                andon_id: req_string(&body, "andon_id")?,
            },
            "downtime/reason" => CommandKind::DowntimeReason {
                downtime_id: req_string(&body, "downtime_id")?,
                reason_code: req_string(&body, "reason_code")?,
            },
            "maintenance/done" => CommandKind::MaintenanceDone,
            _ => unreachable_command(),
        })
    })()
    .map_err(|e| reject(rid.clone(), e))?;
    Ok(Command {
        request_id,
        equipment: equipment.to_string(),
        by,
        note,
        kind,
    })
}

/// `allowed` above already refused every name not matched here.
fn unreachable_command() -> CommandKind {
    CommandKind::PlannedStopEnd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_andon_ack_names_its_andon_and_who() {
        let c = parse(
            "BAG1/andon/ack",
            br#"{"request_id":"r1","by":"jsmith","andon_id":"a-1"}"#,
        )
        .unwrap();
        assert_eq!(c.equipment, "BAG1");
        assert_eq!(c.by, "jsmith");
        assert_eq!(
            c.kind,
            CommandKind::AndonAck {
                andon_id: "a-1".into()
            }
        );
    }

    #[test]
    fn malformed_json_is_rejected_without_a_request_id() {
        let r = parse("BAG1/andon/ack", b"{not json").unwrap_err();
        assert_eq!(r.request_id, None);
        assert!(r.error.starts_with("malformed JSON"), "{}", r.error);
    }

    #[test]
    fn an_unknown_field_is_rejected_by_name() {
        let r = parse(
            "BAG1/job/start",
            br#"{"request_id":"r","by":"x","jobid":"J"}"#,
        )
        .unwrap_err();
        assert_eq!(r.request_id.as_deref(), Some("r"));
        assert!(r.error.contains("\"jobid\""), "{}", r.error);
    }

    #[test]
    fn an_unknown_command_is_rejected() {
        let r = parse("BAG1/self-destruct", br#"{"request_id":"r","by":"x"}"#).unwrap_err();
        assert!(r.error.contains("unknown command"), "{}", r.error);
    }

    #[test]
    fn a_body_over_64_kib_is_rejected() {
        let big = vec![b' '; MAX_BODY + 1];
        assert!(parse("BAG1/context", &big)
            .unwrap_err()
            .error
            .contains("64 KiB"));
    }

    #[test]
    fn who_is_required() {
        let r = parse("BAG1/planned-stop/end", br#"{"request_id":"r"}"#).unwrap_err();
        assert!(r.error.contains("\"by\""), "{}", r.error);
    }

    #[test]
    fn a_context_command_can_clear_a_field_with_null() {
        let c = parse(
            "BAG1/context",
            br#"{"request_id":"r","by":"x","operator":null}"#,
        )
        .unwrap();
        assert_eq!(
            c.kind,
            CommandKind::Context(ContextPatch {
                operator: Some(None),
                ..ContextPatch::default()
            })
        );
    }
}
