//! The command gate: what the uplink checks before a command reaches the core.
//!
//! ## Design constraints
//! - **Only `P/cmd/{equipment}/{command…}`.** Anything else is ignored without a reply (we only
//!   subscribe to `P/cmd/#`, so anything else is a broker or ACL mistake, not a request).
//! - **Size before parsing.** A payload over [`MAX_COMMAND_BYTES`] (64 KiB, SPEC §4) is refused
//!   without being parsed. (rumqttc's incoming packet limit is set well above it, so an
//!   oversized command gets a reply instead of tearing the connection down.)
//! - **Shape, not semantics.** The gate checks what every command shares: a JSON object with a
//!   string `request_id`, a well-formed equipment segment and a command name. Whether the
//!   equipment exists and the command applies is the engine's business.
//! - **Rate-limited per equipment.** A token bucket per equipment ([`BURST`] commands at once,
//!   [`PER_SECOND`] sustained) so a runaway client cannot flood the core; every command on
//!   the topic counts, malformed or not (malformed equipment codes share one bucket), and the
//!   table of buckets is bounded ([`MAX_BUCKETS`]) so random equipment names cannot grow
//!   memory. Under a flood the replies themselves are best effort: when rumqttc's request
//!   queue is full a reply is dropped (logged, counted) rather than the session torn down.
//! - **Retained copies are refused.** A retained command would be replayed by the broker at
//!   every (re)subscription; SPEC §6 treats retained re-deliveries as old copies.
//! - Every refusal carries the reason the reply will name; a refused command never reaches the
//!   core, so it changes nothing. The gateway never writes to a PLC in any case.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

/// SPEC §4: commands larger than this are rejected.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Commands one equipment may send at once.
pub const BURST: f64 = 20.0;
/// Sustained commands per second per equipment.
pub const PER_SECOND: f64 = 5.0;
/// Equipment buckets kept at most; the oldest idle ones are forgotten first.
pub const MAX_BUCKETS: usize = 1024;

/// What to do with an inbound publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not a command topic: ignore silently.
    Ignore,
    /// Hand to the core: the path below `P/cmd/`.
    Accept { path: String },
    /// Reply `ok:false` with this `request_id` (null when unreadable) and reason.
    Reject { request_id: Value, error: String },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-connection-independent state of the gate (rate buckets).
#[derive(Debug, Default)]
pub struct CommandGuard {
    buckets: HashMap<String, Bucket>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl CommandGuard {
    /// Judges one inbound publish received on `topic` at `now`.
    pub fn check(
        &mut self,
        prefix: &str,
        topic: &str,
        payload: &[u8],
        retain: bool,
        now: Instant,
    ) -> Verdict {
        let Some(path) = topic
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix("/cmd/"))
        else {
            return Verdict::Ignore;
        };
        let (equipment, command) = match path.split_once('/') {
            Some((e, c)) => (e, c),
            None => (path, ""),
        };
        // Every command counts against its equipment's bucket, well-formed or not, before any
        // parsing: a flood of garbage costs no more than a flood of valid commands.
        let bucket = if valid_name(equipment) {
            equipment
        } else {
            "<malformed>"
        };
        if !self.take_token(bucket, now) {
            return Verdict::Reject {
                request_id: if payload.len() > MAX_COMMAND_BYTES {
                    Value::Null
                } else {
                    request_id_of(payload)
                },
                error: format!(
                    "rate limited: more than {PER_SECOND} commands per second for {bucket}"
                ),
            };
        }
        if payload.len() > MAX_COMMAND_BYTES {
            return Verdict::Reject {
                request_id: Value::Null,
                error: format!(
                    "command too large: {} bytes (limit {MAX_COMMAND_BYTES})",
                    payload.len()
                ),
            };
        }
        let body: Result<Value, _> = serde_json::from_slice(payload);
        let request_id = body
            .as_ref()
            .ok()
            .and_then(|v| v.get("request_id"))
            .filter(|r| r.is_string())
            .cloned()
            .unwrap_or(Value::Null);
        let reject = |error: String| Verdict::Reject {
            request_id: request_id.clone(),
            error,
        };
        if retain {
            return reject("retained command refused: a retained copy is an old command".into());
        }
        if !valid_name(equipment) {
            return reject(format!("malformed topic: bad equipment code {equipment:?}"));
        }
        if command.is_empty() || command.split('/').any(|seg| !valid_name(seg)) {
            return reject(format!("malformed topic: bad command name {command:?}"));
        }
        let body = match body {
            Ok(Value::Object(map)) => map,
            Ok(_) => return reject("malformed command: the body must be a JSON object".into()),
            Err(e) => return reject(format!("malformed command: invalid JSON ({e})")),
        };
        match body.get("request_id") {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(_) => {
                return reject("malformed command: request_id must be a non-empty string".into())
            }
            None => return reject("malformed command: request_id is required".into()),
        }
        Verdict::Accept {
            path: path.to_string(),
        }
    }

    fn take_token(&mut self, equipment: &str, now: Instant) -> bool {
        if !self.buckets.contains_key(equipment) && self.buckets.len() >= MAX_BUCKETS {
            // Forget the bucket idle the longest; a forgotten bucket starts full again.
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| k.clone())
            {
                self.buckets.remove(&oldest);
            }
        }
        let bucket = self.buckets.entry(equipment.to_string()).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * PER_SECOND).min(BURST);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The `request_id` of a payload when it can be read, else null (SPEC §6).
pub fn request_id_of(payload: &[u8]) -> Value {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("request_id").cloned())
        .filter(|r| r.is_string())
        .unwrap_or(Value::Null)
}

/// The `P/reply` payload for a refused command.
pub fn reply(request_id: &Value, error: &str) -> String {
    serde_json::json!({ "request_id": request_id, "ok": false, "error": error }).to_string()
}

/// How long one token takes to come back (for tests and docs).
pub fn refill_interval() -> Duration {
    Duration::from_secs_f64(1.0 / PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "ms5/gw";

    fn check(g: &mut CommandGuard, topic: &str, body: &str) -> Verdict {
        g.check(P, topic, body.as_bytes(), false, Instant::now())
    }

    #[test]
    fn a_well_formed_command_is_accepted_with_its_path() {
        let mut g = CommandGuard::default();
        assert_eq!(
            check(
                &mut g,
                "ms5/gw/cmd/BP01.PACK.BAG1/andon/ack",
                r#"{"request_id":"r1"}"#
            ),
            Verdict::Accept {
                path: "BP01.PACK.BAG1/andon/ack".into()
            }
        );
    }

    #[test]
    fn a_topic_outside_cmd_is_ignored_without_reply() {
        let mut g = CommandGuard::default();
        for topic in [
            "ms5/gw/status",
            "ms5/gw/cmdx/E/a",
            "other/cmd/E/a",
            "ms5/gw/reply",
        ] {
            assert_eq!(
                check(&mut g, topic, r#"{"request_id":"r"}"#),
                Verdict::Ignore
            );
        }
    }

    #[test]
    fn an_oversized_command_is_rejected_before_it_is_parsed() {
        let mut g = CommandGuard::default();
        let body = format!(r#"{{"request_id":"r1","note":"{}"}}"#, "x".repeat(70_000));
        match check(&mut g, "ms5/gw/cmd/E1/context", &body) {
            Verdict::Reject { request_id, error } => {
                assert_eq!(request_id, Value::Null);
                assert!(error.contains("too large"), "{error}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn malformed_bodies_are_rejected_naming_what_is_wrong() {
        let mut g = CommandGuard::default();
        let cases = [
            ("not json", "invalid JSON", Value::Null),
            ("[1,2]", "JSON object", Value::Null),
            (r#"{"by":"x"}"#, "request_id is required", Value::Null),
            (r#"{"request_id":7}"#, "non-empty string", Value::Null),
        ];
        for (body, needle, rid) in cases {
            match check(&mut g, "ms5/gw/cmd/E1/context", body) {
                Verdict::Reject { request_id, error } => {
                    assert!(error.contains(needle), "{body}: {error}");
                    assert_eq!(request_id, rid);
                }
                v => panic!("{body}: {v:?}"),
            }
        }
    }

    #[test]
    fn a_bad_topic_shape_is_rejected_with_the_request_id() {
        let mut g = CommandGuard::default();
        for topic in [
            "ms5/gw/cmd/E1",
            "ms5/gw/cmd/E1/",
            "ms5/gw/cmd//ack",
            "ms5/gw/cmd/E 1/ack",
        ] {
            match check(&mut g, topic, r#"{"request_id":"r9"}"#) {
                Verdict::Reject { request_id, .. } => assert_eq!(request_id, "r9"),
                v => panic!("{topic}: {v:?}"),
            }
        }
    }

    #[test]
    fn a_retained_command_is_refused() {
        let mut g = CommandGuard::default();
        let v = g.check(
            P,
            "ms5/gw/cmd/E1/a",
            br#"{"request_id":"r"}"#,
            true,
            Instant::now(),
        );
        assert!(matches!(v, Verdict::Reject { .. }), "{v:?}");
    }

    #[test]
    fn a_burst_beyond_the_bucket_is_rate_limited_per_equipment_and_refills() {
        let mut g = CommandGuard::default();
        let t0 = Instant::now();
        let body = br#"{"request_id":"r"}"#;
        for i in 0..BURST as usize {
            let v = g.check(P, "ms5/gw/cmd/E1/a", body, false, t0);
            assert!(matches!(v, Verdict::Accept { .. }), "command {i}: {v:?}");
        }
        let v = g.check(P, "ms5/gw/cmd/E1/a", body, false, t0);
        assert!(
            matches!(&v, Verdict::Reject { error, .. } if error.contains("rate limited")),
            "{v:?}"
        );
        // Another equipment has its own bucket.
        let v = g.check(P, "ms5/gw/cmd/E2/a", body, false, t0);
        assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
        // One refill interval later one more is allowed.
        let v = g.check(P, "ms5/gw/cmd/E1/a", body, false, t0 + refill_interval());
        assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    }

    #[test]
    fn a_flood_of_garbage_is_rate_limited_like_valid_commands() {
        let mut g = CommandGuard::default();
        let t0 = Instant::now();
        let limited = (0..100)
            .map(|_| g.check(P, "ms5/gw/cmd/E1/a", b"garbage", false, t0))
            .filter(
                |v| matches!(v, Verdict::Reject { error, .. } if error.contains("rate limited")),
            )
            .count();
        assert_eq!(limited, 100 - BURST as usize);
    }

    #[test]
    fn the_bucket_table_never_grows_past_its_bound() {
        let mut g = CommandGuard::default();
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS + 50) {
            let _ = g.check(
                P,
                &format!("ms5/gw/cmd/E{i}/a"),
                br#"{"request_id":"r"}"#,
                false,
                t0,
            );
        }
        assert!(g.buckets.len() <= MAX_BUCKETS);
    }
}
