//! The command gate: what the uplink checks before a command reaches the core (SPEC §4, §7).
//!
//! ## Design constraints
//! - **Pure.** No I/O and no clock: the monotonic `now` (budgets, replay window, log pacing) and
//!   the wall-clock `wall_ms` (`issued_at`) are arguments. The only side effect is a
//!   `tracing::warn!` line, at most once per [`LOG_EVERY`] per refusal reason, carrying the
//!   count since the previous line.
//! - **Only `P/cmd/{equipment}/{command…}`.** Anything else is ignored without a reply (we only
//!   subscribe to `P/cmd/#`, so anything else is a broker or ACL mistake, not a request).
//! - **Budget before anything else.** Every command on the topic draws on a token bucket before
//!   it is even parsed, malformed or not: its configured equipment's ([`BURST`], [`PER_SECOND`]),
//!   or — for any equipment name that is not configured, well-formed or not — **one shared
//!   bucket**, so random names create no state and cannot reset anyone's budget. A command the
//!   first bucket lets through also draws on the global bucket ([`GLOBAL_BURST`],
//!   [`GLOBAL_PER_SECOND`]); a command refused by its own bucket does not, so a flood on
//!   unknown names can never exhaust the budget of the configured equipment. Memory is fixed
//!   by the configuration: one bucket per configured equipment, plus two.
//! - **Size before parsing.** A payload over [`MAX_COMMAND_BYTES`] (64 KiB) is refused without
//!   being parsed.
//! - **Retained copies are refused** (SPEC §6: an old copy replayed by the broker).
//! - **Shape, then policy, then authenticity, then freshness.** A JSON object with a non-empty
//!   string `request_id`; every top-level string at most [`MAX_FIELD_BYTES`]; a configured
//!   equipment; a command `[commands] enabled` allows (a name outside SPEC §4 is left to the
//!   engine, which names it unknown); with a key, a valid signature (see [`super::signature`]);
//!   `issued_at` within `max_age_s` either way; with a key, a `request_id` not seen in the last
//!   `max_age_s` (replay).
//! - **Fails closed.** With `key_file` configured but no usable key, every command is refused;
//!   a full replay memory refuses new commands rather than forgetting old ones early.
//! - Every refusal is counted per reason ([`CommandGuard::refusals`]) and carries the reason the
//!   reply will name; a refused command never reaches the core, so it changes nothing.
//!
//! What the gate never does: parse a command's fields beyond the top level, decide whether a
//! command applies (the engine's business), or read a file, a socket or a clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::signature::{Verifier, VerifyError};
use crate::config::{Commands, Config, COMMAND_NAMES};

/// SPEC §4: commands larger than this are rejected.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// SPEC §7: the longest string field at the top level of a body, `request_id` included.
pub const MAX_FIELD_BYTES: usize = 256;
/// Commands one equipment may send at once.
pub const BURST: f64 = 20.0;
/// Sustained commands per second per equipment.
pub const PER_SECOND: f64 = 5.0;
/// Commands all equipment together may send at once.
pub const GLOBAL_BURST: f64 = 50.0;
/// Sustained commands per second, all equipment together.
pub const GLOBAL_PER_SECOND: f64 = 20.0;
/// Request ids remembered for replay detection at most (the global budget admits at most
/// 50 + 20/s × `max_age_s`; beyond this the gate refuses rather than forgets).
pub const MAX_REMEMBERED: usize = 16_384;
/// Refusal log lines per reason at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

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

/// Why a command was refused; the key of [`CommandGuard::refusals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    RateLimited,
    TooLarge,
    Retained,
    Malformed,
    FieldTooLong,
    UnknownEquipment,
    Disabled,
    KeyUnavailable,
    Unsigned,
    BadSignature,
    MissingIssuedAt,
    Stale,
    Replay,
}

impl Refusal {
    /// The counter name (`status`, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::TooLarge => "too_large",
            Refusal::Retained => "retained",
            Refusal::Malformed => "malformed",
            Refusal::FieldTooLong => "field_too_long",
            Refusal::UnknownEquipment => "unknown_equipment",
            Refusal::Disabled => "disabled",
            Refusal::KeyUnavailable => "key_unavailable",
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::MissingIssuedAt => "missing_issued_at",
            Refusal::Stale => "stale",
            Refusal::Replay => "replay",
        }
    }
}

/// What the gate is built from.
#[derive(Clone)]
pub struct GuardSettings {
    /// Configured equipment codes (each gets its own budget).
    pub equipment: Vec<String>,
    pub commands: Commands,
    /// The bytes of `commands.key_file`; `None` with a `key_file` set means it could not be
    /// read, and the gate then refuses everything.
    pub key: Option<Vec<u8>>,
}

impl fmt::Debug for GuardSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardSettings")
            .field("equipment", &self.equipment)
            .field("commands", &self.commands)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl GuardSettings {
    /// The settings of `config`, with the key read from `config.commands.key_file` (if any).
    pub fn from_config(config: &Config, key: Option<Vec<u8>>) -> GuardSettings {
        GuardSettings {
            equipment: config.equipment.iter().map(|e| e.code.clone()).collect(),
            commands: config.commands.clone(),
            key,
        }
    }
}

/// A token bucket; `at == None` means full and never drawn on.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
    burst: f64,
    per_second: f64,
}

impl Bucket {
    fn new(burst: f64, per_second: f64) -> Bucket {
        Bucket {
            tokens: burst,
            at: None,
            burst,
            per_second,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at);
            self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        }
        // Never move backwards if a caller passes an older instant.
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Request ids accepted recently, oldest first, for replay detection.
#[derive(Debug, Default)]
struct Remembered {
    order: VecDeque<(Instant, String)>,
    ids: HashMap<String, Instant>,
}

impl Remembered {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    fn is_full(&self) -> bool {
        self.ids.len() >= MAX_REMEMBERED
    }

    fn remove(&mut self, id: &str) {
        if self.ids.remove(id).is_some() {
            self.order.retain(|(_, i)| i != id);
        }
    }

    fn insert(&mut self, id: &str, now: Instant) {
        self.ids.insert(id.to_string(), now);
        self.order.push_back((now, id.to_string()));
    }
}

/// Log pacing of one refusal reason.
#[derive(Debug, Clone, Copy, Default)]
struct LogPace {
    last: Option<Instant>,
    since: u64,
}

/// The gate's state: budgets, remembered request ids, refusal counters.
pub struct CommandGuard {
    equipment: HashMap<String, Bucket>,
    unknown: Bucket,
    global: Bucket,
    commands: Commands,
    /// `Some` when commands must be signed and the key is usable.
    verifier: Option<Verifier>,
    /// `key_file` is configured but no key was given: refuse everything.
    key_unavailable: bool,
    remembered: Remembered,
    refusals: BTreeMap<&'static str, u64>,
    pace: BTreeMap<Refusal, LogPace>,
}

impl fmt::Debug for CommandGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandGuard")
            .field("equipment", &self.equipment.len())
            .field("signed", &self.verifier.is_some())
            .field("remembered", &self.remembered.ids.len())
            .field("refusals", &self.refusals)
            .finish()
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A refusal on its way out: the reason (counted) and the reply's words.
struct Refused {
    reason: Refusal,
    request_id: Value,
    error: String,
}

impl CommandGuard {
    pub fn new(settings: GuardSettings) -> CommandGuard {
        let signed = settings.commands.key_file.is_some() || settings.key.is_some();
        let verifier = settings.key.as_deref().map(Verifier::new);
        CommandGuard {
            equipment: settings
                .equipment
                .into_iter()
                .map(|code| (code, Bucket::new(BURST, PER_SECOND)))
                .collect(),
            unknown: Bucket::new(BURST, PER_SECOND),
            global: Bucket::new(GLOBAL_BURST, GLOBAL_PER_SECOND),
            commands: settings.commands,
            key_unavailable: signed && verifier.is_none(),
            verifier,
            remembered: Remembered::default(),
            refusals: BTreeMap::new(),
            pace: BTreeMap::new(),
        }
    }

    /// Forgets an accepted `request_id` whose command was never applied (the core's queue was
    /// full), so the sender may send the same signed command again instead of being told it
    /// is a replay.
    pub fn forget(&mut self, request_id: &str) {
        self.remembered.remove(request_id);
    }

    /// Refused commands so far, by reason ([`Refusal::as_str`]).
    pub fn refusals(&self) -> &BTreeMap<&'static str, u64> {
        &self.refusals
    }

    /// Judges one inbound publish received on `topic` at `now` (monotonic) and `wall_ms`
    /// (Unix epoch milliseconds, for `issued_at`).
    pub fn check(
        &mut self,
        prefix: &str,
        topic: &str,
        payload: &[u8],
        retain: bool,
        now: Instant,
        wall_ms: i64,
    ) -> Verdict {
        let Some(path) = topic
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix("/cmd/"))
        else {
            return Verdict::Ignore;
        };
        match self.judge(path, topic, payload, retain, now, wall_ms) {
            Ok(()) => Verdict::Accept {
                path: path.to_string(),
            },
            Err(r) => {
                self.count(r.reason, &r.error, now);
                Verdict::Reject {
                    request_id: r.request_id,
                    error: r.error,
                }
            }
        }
    }

    fn count(&mut self, reason: Refusal, error: &str, now: Instant) {
        *self.refusals.entry(reason.as_str()).or_insert(0) += 1;
        let pace = self.pace.entry(reason).or_default();
        pace.since += 1;
        let due = pace
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= LOG_EVERY);
        if due {
            tracing::warn!(
                reason = reason.as_str(),
                count = pace.since,
                total = self.refusals.get(reason.as_str()).copied().unwrap_or(0),
                example = %error,
                "commands refused (count since the last line for this reason)"
            );
            pace.last = Some(now);
            pace.since = 0;
        }
    }

    fn judge(
        &mut self,
        path: &str,
        topic: &str,
        payload: &[u8],
        retain: bool,
        now: Instant,
        wall_ms: i64,
    ) -> Result<(), Refused> {
        let (equipment, command) = path.split_once('/').unwrap_or((path, ""));
        let oversized = payload.len() > MAX_COMMAND_BYTES;
        let rid = || {
            if oversized {
                Value::Null
            } else {
                request_id_of(payload)
            }
        };
        let refuse = |reason: Refusal, request_id: Value, error: String| Refused {
            reason,
            request_id,
            error,
        };

        // Budgets first, before any parsing.
        let configured = self.equipment.contains_key(equipment);
        let own = match self.equipment.get_mut(equipment) {
            Some(b) => b.take(now),
            None => self.unknown.take(now),
        };
        if !own {
            let whose = if configured {
                format!("for {equipment}")
            } else {
                "for unconfigured equipment (one budget shared by all such names)".into()
            };
            return Err(refuse(
                Refusal::RateLimited,
                rid(),
                format!("rate limited: more than {PER_SECOND} commands per second {whose}"),
            ));
        }
        if !self.global.take(now) {
            return Err(refuse(
                Refusal::RateLimited,
                rid(),
                format!(
                    "rate limited: more than {GLOBAL_PER_SECOND} commands per second for this gateway"
                ),
            ));
        }

        if oversized {
            return Err(refuse(
                Refusal::TooLarge,
                Value::Null,
                format!(
                    "command too large: {} bytes (limit {MAX_COMMAND_BYTES})",
                    payload.len()
                ),
            ));
        }
        let body: Result<Value, _> = serde_json::from_slice(payload);
        let request_id = body
            .as_ref()
            .ok()
            .and_then(|v| v.get("request_id"))
            .filter(|r| r.as_str().is_some_and(|s| s.len() <= MAX_FIELD_BYTES))
            .cloned()
            .unwrap_or(Value::Null);
        let reject = |reason: Refusal, error: String| Refused {
            reason,
            request_id: request_id.clone(),
            error,
        };
        if retain {
            return Err(reject(
                Refusal::Retained,
                "retained command refused: a retained copy is an old command".into(),
            ));
        }
        if !valid_name(equipment) {
            return Err(reject(
                Refusal::Malformed,
                format!("malformed topic: bad equipment code {equipment:?}"),
            ));
        }
        if command.is_empty() || command.split('/').any(|seg| !valid_name(seg)) {
            return Err(reject(
                Refusal::Malformed,
                format!("malformed topic: bad command name {command:?}"),
            ));
        }
        let body: Map<String, Value> = match body {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(reject(
                    Refusal::Malformed,
                    "malformed command: the body must be a JSON object".into(),
                ))
            }
            Err(e) => {
                return Err(reject(
                    Refusal::Malformed,
                    format!("malformed command: invalid JSON ({e})"),
                ))
            }
        };
        if let Some((field, len)) = body.iter().find_map(|(k, v)| {
            v.as_str()
                .filter(|s| s.len() > MAX_FIELD_BYTES)
                .map(|s| (k, s.len()))
        }) {
            return Err(reject(
                Refusal::FieldTooLong,
                format!(
                    "field \"{field}\" is {len} bytes; string fields are at most {MAX_FIELD_BYTES}"
                ),
            ));
        }
        let id = match body.get("request_id") {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            Some(_) => {
                return Err(reject(
                    Refusal::Malformed,
                    "malformed command: request_id must be a non-empty string".into(),
                ))
            }
            None => {
                return Err(reject(
                    Refusal::Malformed,
                    "malformed command: request_id is required".into(),
                ))
            }
        };
        if !configured {
            return Err(reject(
                Refusal::UnknownEquipment,
                format!("unknown equipment \"{equipment}\""),
            ));
        }
        if COMMAND_NAMES.contains(&command) && !self.commands.is_enabled(command) {
            return Err(reject(
                Refusal::Disabled,
                format!("command disabled: \"{command}\" is not in [commands] enabled"),
            ));
        }

        if self.key_unavailable {
            return Err(reject(
                Refusal::KeyUnavailable,
                "refused: commands must be signed but the gateway's command key could not be read"
                    .into(),
            ));
        }
        if let Some(verifier) = &self.verifier {
            match verifier.verify(topic, payload) {
                Ok(()) => {}
                Err(VerifyError::Missing) => {
                    return Err(reject(
                        Refusal::Unsigned,
                        "unsigned command: this gateway requires a signature (\"sig\", SPEC §7)"
                            .into(),
                    ))
                }
                Err(VerifyError::Mismatch) => {
                    return Err(reject(
                        Refusal::BadSignature,
                        "bad signature: \"sig\" does not match the topic and body".into(),
                    ))
                }
            }
        }

        let max_age_s = self.commands.max_age_s;
        match body.get("issued_at") {
            None if self.commands.issued_at_required() => {
                return Err(reject(
                    Refusal::MissingIssuedAt,
                    "issued_at is required (an RFC 3339 time)".into(),
                ))
            }
            None => {}
            Some(v) => {
                let Some(at) = v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) else {
                    return Err(reject(
                        Refusal::Malformed,
                        "malformed command: issued_at must be an RFC 3339 time such as \
                         \"2026-12-01T06:00:00Z\""
                            .into(),
                    ));
                };
                let age_ms = wall_ms.saturating_sub(at.as_millisecond());
                let limit_ms = i64::try_from(max_age_s)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000);
                if max_age_s > 0 && age_ms > limit_ms {
                    return Err(reject(
                        Refusal::Stale,
                        format!(
                            "stale command: issued {} s ago (max_age_s = {max_age_s})",
                            age_ms / 1000
                        ),
                    ));
                }
                if max_age_s > 0 && age_ms < -limit_ms {
                    return Err(reject(
                        Refusal::Stale,
                        format!(
                            "command from the future: issued_at is {} s ahead of the gateway's \
                             clock (max_age_s = {max_age_s})",
                            -age_ms / 1000
                        ),
                    ));
                }
            }
        }

        if self.verifier.is_some() && max_age_s > 0 {
            let window = Duration::from_secs(max_age_s);
            self.remembered.expire(now, window);
            if self.remembered.contains(id) {
                return Err(reject(
                    Refusal::Replay,
                    format!(
                        "replayed command: request_id \"{id}\" was already used in the last {max_age_s} s"
                    ),
                ));
            }
            if self.remembered.is_full() {
                return Err(reject(
                    Refusal::Replay,
                    "gateway busy: too many recent commands to rule out a replay; try again later"
                        .into(),
                ));
            }
            self.remembered.insert(id, now);
        }
        Ok(())
    }
}

/// The `request_id` of a payload when it can be read, else null (SPEC §6).
pub fn request_id_of(payload: &[u8]) -> Value {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("request_id").cloned())
        .filter(|r| r.as_str().is_some_and(|s| s.len() <= MAX_FIELD_BYTES))
        .unwrap_or(Value::Null)
}

/// The `P/reply` payload for a refused command.
pub fn reply(request_id: &Value, error: &str) -> String {
    serde_json::json!({ "request_id": request_id, "ok": false, "error": error }).to_string()
}

/// The `P/reply` payload for a command applied and committed (SPEC §7 "Replies after commit").
pub fn reply_ok(request_id: &Value) -> String {
    serde_json::json!({ "request_id": request_id, "ok": true }).to_string()
}

/// How long one token of an equipment's bucket takes to come back (for tests and docs).
pub fn refill_interval() -> Duration {
    Duration::from_secs_f64(1.0 / PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::super::signature;
    use super::*;

    const P: &str = "ms5/gw";
    const KEY: [u8; 32] = [42; 32];
    /// 2026-12-01T06:00:00Z
    const WALL_MS: i64 = 1_796_104_800_000;
    const NOW_RFC3339: &str = "2026-12-01T06:00:00Z";

    fn settings(commands: Commands, key: Option<Vec<u8>>) -> GuardSettings {
        GuardSettings {
            equipment: vec!["E1".into(), "E2".into(), "BP01.PACK.BAG1".into()],
            commands,
            key,
        }
    }

    fn open_guard() -> CommandGuard {
        CommandGuard::new(settings(Commands::default(), None))
    }

    fn signed_guard() -> CommandGuard {
        let commands = Commands {
            key_file: Some("/etc/ms5-edge/command.key".into()),
            ..Commands::default()
        };
        CommandGuard::new(settings(commands, Some(KEY.to_vec())))
    }

    fn check_at(g: &mut CommandGuard, topic: &str, body: &str, now: Instant) -> Verdict {
        g.check(P, topic, body.as_bytes(), false, now, WALL_MS)
    }

    fn check(g: &mut CommandGuard, topic: &str, body: &str) -> Verdict {
        check_at(g, topic, body, Instant::now())
    }

    fn error_of(v: &Verdict) -> &str {
        match v {
            Verdict::Reject { error, .. } => error,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn sign(topic: &str, body: &str) -> String {
        signature::sign_body(&KEY, topic, body, NOW_RFC3339).unwrap()
    }

    const ACK: &str = "ms5/gw/cmd/E1/andon/ack";

    #[test]
    fn a_well_formed_command_is_accepted_with_its_path() {
        let mut g = open_guard();
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
        let mut g = open_guard();
        for topic in [
            "ms5/gw/status",
            "ms5/gw/cmdx/E1/a",
            "other/cmd/E1/a",
            "ms5/gw/reply",
        ] {
            assert_eq!(
                check(&mut g, topic, r#"{"request_id":"r"}"#),
                Verdict::Ignore
            );
        }
        assert!(g.refusals().is_empty());
    }

    #[test]
    fn an_oversized_command_is_rejected_before_it_is_parsed() {
        let mut g = open_guard();
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
        let mut g = open_guard();
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
        assert_eq!(g.refusals().get("malformed"), Some(&4));
    }

    #[test]
    fn a_bad_topic_shape_is_rejected_with_the_request_id() {
        let mut g = open_guard();
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
        let mut g = open_guard();
        let v = g.check(
            P,
            ACK,
            br#"{"request_id":"r"}"#,
            true,
            Instant::now(),
            WALL_MS,
        );
        assert!(error_of(&v).contains("retained"), "{v:?}");
        assert_eq!(g.refusals().get("retained"), Some(&1));
    }

    #[test]
    fn a_burst_beyond_the_bucket_is_rate_limited_per_equipment_and_refills() {
        let mut g = open_guard();
        let t0 = Instant::now();
        let body = r#"{"request_id":"r"}"#;
        for i in 0..BURST as usize {
            let v = check_at(&mut g, ACK, body, t0);
            assert!(matches!(v, Verdict::Accept { .. }), "command {i}: {v:?}");
        }
        let v = check_at(&mut g, ACK, body, t0);
        assert!(error_of(&v).contains("rate limited"), "{v:?}");
        // Another equipment has its own bucket.
        let v = check_at(&mut g, "ms5/gw/cmd/E2/andon/ack", body, t0);
        assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
        // One refill interval later one more is allowed.
        let v = check_at(&mut g, ACK, body, t0 + refill_interval());
        assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    }

    #[test]
    fn a_flood_of_garbage_is_rate_limited_like_valid_commands() {
        let mut g = open_guard();
        let t0 = Instant::now();
        let limited = (0..100)
            .map(|_| g.check(P, ACK, b"garbage", false, t0, WALL_MS))
            .filter(
                |v| matches!(v, Verdict::Reject { error, .. } if error.contains("rate limited")),
            )
            .count();
        assert_eq!(limited, 100 - BURST as usize);
        assert_eq!(g.refusals().get("rate_limited"), Some(&80));
        assert_eq!(g.refusals().get("malformed"), Some(&20));
    }

    #[test]
    fn commands_for_unknown_equipment_share_one_bucket_and_create_no_state() {
        let mut g = open_guard();
        let t0 = Instant::now();
        let mut unknown = 0;
        for i in 0..1100 {
            let v = check_at(
                &mut g,
                &format!("ms5/gw/cmd/X{i}/andon/ack"),
                r#"{"request_id":"r"}"#,
                t0,
            );
            if error_of(&v).contains("unknown equipment") {
                unknown += 1;
            }
        }
        // Only the shared bucket's burst got as far as the equipment check.
        assert_eq!(unknown, BURST as usize);
        assert_eq!(g.equipment.len(), 3, "no bucket per unknown name");
        assert_eq!(g.refusals().get("unknown_equipment"), Some(&20));
        assert_eq!(g.refusals().get("rate_limited"), Some(&1080));
    }

    #[test]
    fn a_flood_on_unknown_names_neither_resets_nor_drains_a_configured_budget() {
        let mut g = open_guard();
        let t0 = Instant::now();
        let body = r#"{"request_id":"r"}"#;
        for _ in 0..BURST as usize {
            assert!(matches!(
                check_at(&mut g, ACK, body, t0),
                Verdict::Accept { .. }
            ));
        }
        for i in 0..1100 {
            let _ = check_at(&mut g, &format!("ms5/gw/cmd/X{i}/andon/ack"), body, t0);
        }
        // E1's bucket was not reset by the flood: still empty.
        let v = check_at(&mut g, ACK, body, t0);
        assert!(error_of(&v).contains("per second for E1"), "{v:?}");
        // E2 was not starved through the global bucket: the flood drew on it only 20 times.
        let accepted = (0..BURST as usize)
            .filter(|_| {
                matches!(
                    check_at(&mut g, "ms5/gw/cmd/E2/andon/ack", body, t0),
                    Verdict::Accept { .. }
                )
            })
            .count();
        assert_eq!(accepted, (GLOBAL_BURST - 2.0 * BURST) as usize);
    }

    #[test]
    fn the_global_bucket_caps_all_equipment_together() {
        let mut g = CommandGuard::new(GuardSettings {
            equipment: (0..10).map(|i| format!("E{i}")).collect(),
            commands: Commands::default(),
            key: None,
        });
        let t0 = Instant::now();
        let mut accepted = 0;
        let mut global = 0;
        for i in 0..10 {
            for _ in 0..10 {
                let v = check_at(
                    &mut g,
                    &format!("ms5/gw/cmd/E{i}/andon/ack"),
                    r#"{"request_id":"r"}"#,
                    t0,
                );
                match v {
                    Verdict::Accept { .. } => accepted += 1,
                    v if error_of(&v).contains("for this gateway") => global += 1,
                    v => panic!("{v:?}"),
                }
            }
        }
        assert_eq!(accepted, GLOBAL_BURST as usize);
        assert_eq!(global, 100 - GLOBAL_BURST as usize);
        // A second later the global bucket has 20 more.
        let t1 = t0 + Duration::from_secs(1);
        let later = (0..10)
            .filter(|i| {
                matches!(
                    check_at(
                        &mut g,
                        &format!("ms5/gw/cmd/E{i}/andon/ack"),
                        r#"{"request_id":"r"}"#,
                        t1
                    ),
                    Verdict::Accept { .. }
                )
            })
            .count();
        assert_eq!(later, 10);
    }

    #[test]
    fn an_unknown_equipment_is_refused_by_name_with_the_request_id() {
        let mut g = open_guard();
        match check(
            &mut g,
            "ms5/gw/cmd/NOPE/andon/ack",
            r#"{"request_id":"r5"}"#,
        ) {
            Verdict::Reject { request_id, error } => {
                assert_eq!(request_id, "r5");
                assert_eq!(error, "unknown equipment \"NOPE\"");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_command_not_enabled_is_refused_as_disabled_and_a_group_enables_its_members() {
        let mut g = CommandGuard::new(settings(
            Commands {
                enabled: vec!["andon/ack".into(), "job/*".into()],
                ..Commands::default()
            },
            None,
        ));
        let body = r#"{"request_id":"r"}"#;
        for ok in ["andon/ack", "job/start", "job/assign"] {
            let v = check(&mut g, &format!("ms5/gw/cmd/E1/{ok}"), body);
            assert!(matches!(v, Verdict::Accept { .. }), "{ok}: {v:?}");
        }
        for refused in ["andon/resolve", "context", "planned-stop/start"] {
            let v = check(&mut g, &format!("ms5/gw/cmd/E1/{refused}"), body);
            assert!(
                error_of(&v).contains("command disabled"),
                "{refused}: {v:?}"
            );
        }
        // A name outside SPEC §4 is the engine's to call unknown.
        let v = check(&mut g, "ms5/gw/cmd/E1/reboot", body);
        assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
        assert_eq!(g.refusals().get("disabled"), Some(&3));
    }

    #[test]
    fn a_stale_command_is_refused_naming_its_age() {
        let mut g = open_guard();
        let v = check(
            &mut g,
            ACK,
            r#"{"request_id":"r","issued_at":"2026-12-01T05:50:00Z"}"#,
        );
        assert!(
            error_of(&v).contains("stale command: issued 600 s ago"),
            "{v:?}"
        );
        // Within the window either way is fine.
        for at in [
            "2026-12-01T05:59:01Z",
            "2026-12-01T06:00:59Z",
            "2026-12-01T07:00:30+01:00",
        ] {
            let body = format!(r#"{{"request_id":"r","issued_at":"{at}"}}"#);
            let v = check(&mut g, ACK, &body);
            assert!(matches!(v, Verdict::Accept { .. }), "{at}: {v:?}");
        }
    }

    #[test]
    fn a_command_from_the_future_is_refused_naming_how_far_ahead() {
        let mut g = open_guard();
        let v = check(
            &mut g,
            ACK,
            r#"{"request_id":"r","issued_at":"2026-12-01T06:05:00Z"}"#,
        );
        assert!(error_of(&v).contains("300 s ahead"), "{v:?}");
        assert_eq!(g.refusals().get("stale"), Some(&1));
    }

    #[test]
    fn max_age_zero_turns_the_age_check_off() {
        let mut g = CommandGuard::new(settings(
            Commands {
                max_age_s: 0,
                ..Commands::default()
            },
            None,
        ));
        let v = check(
            &mut g,
            ACK,
            r#"{"request_id":"r","issued_at":"2020-01-01T00:00:00Z"}"#,
        );
        assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    }

    #[test]
    fn a_missing_issued_at_is_refused_only_when_required_or_signed() {
        let body = r#"{"request_id":"r"}"#;
        let mut open = open_guard();
        assert!(matches!(
            check(&mut open, ACK, body),
            Verdict::Accept { .. }
        ));
        let mut required = CommandGuard::new(settings(
            Commands {
                require_issued_at: true,
                ..Commands::default()
            },
            None,
        ));
        assert!(error_of(&check(&mut required, ACK, body)).contains("issued_at is required"));
        // Signed without issued_at: the signer normally adds it; here the sender did not.
        let mut signed = signed_guard();
        let sig = signature::sign(&KEY, ACK, body.as_bytes());
        let sent = signature::insert_member(body, &format!(r#""sig":"{sig}""#)).unwrap();
        assert!(error_of(&check(&mut signed, ACK, &sent)).contains("issued_at is required"));
    }

    #[test]
    fn an_unreadable_issued_at_is_refused() {
        let mut g = open_guard();
        for at in [r#""yesterday""#, "12345", r#""2026-12-01 06:00""#] {
            let body = format!(r#"{{"request_id":"r","issued_at":{at}}}"#);
            assert!(
                error_of(&check(&mut g, ACK, &body)).contains("RFC 3339"),
                "{at}"
            );
        }
    }

    #[test]
    fn a_correctly_signed_command_is_accepted() {
        let mut g = signed_guard();
        let body = sign(ACK, r#"{"request_id":"s1","by":"jsmith","andon_id":"a-1"}"#);
        assert_eq!(
            check(&mut g, ACK, &body),
            Verdict::Accept {
                path: "E1/andon/ack".into()
            }
        );
    }

    #[test]
    fn spacing_and_member_order_are_the_senders_and_verify_as_sent() {
        let mut g = signed_guard();
        let body = sign(
            ACK,
            "{ \"by\" : \"x\",\n \"request_id\": \"s2\", \"issued_at\": \"2026-12-01T06:00:00Z\" }",
        );
        assert!(
            matches!(check(&mut g, ACK, &body), Verdict::Accept { .. }),
            "{body}"
        );
    }

    #[test]
    fn an_unsigned_command_is_refused_when_a_key_is_set() {
        let mut g = signed_guard();
        let v = check(
            &mut g,
            ACK,
            r#"{"request_id":"u1","issued_at":"2026-12-01T06:00:00Z"}"#,
        );
        assert!(error_of(&v).contains("unsigned command"), "{v:?}");
        assert_eq!(g.refusals().get("unsigned"), Some(&1));
    }

    #[test]
    fn a_wrong_signature_or_another_topic_is_refused_and_counted() {
        let mut g = signed_guard();
        let other_key =
            signature::sign_body(&[1; 32], ACK, r#"{"request_id":"w1"}"#, NOW_RFC3339).unwrap();
        assert!(error_of(&check(&mut g, ACK, &other_key)).contains("bad signature"));
        // Signed for E2, sent to E1.
        let moved = sign("ms5/gw/cmd/E2/andon/ack", r#"{"request_id":"w2"}"#);
        assert!(error_of(&check(&mut g, ACK, &moved)).contains("bad signature"));
        // Signed without the prefix.
        let short = sign("cmd/E1/andon/ack", r#"{"request_id":"w3"}"#);
        assert!(error_of(&check(&mut g, ACK, &short)).contains("bad signature"));
        assert_eq!(g.refusals().get("bad_signature"), Some(&3));
    }

    #[test]
    fn a_replayed_request_id_is_refused_within_the_window_and_accepted_after_it() {
        let mut g = signed_guard();
        let t0 = Instant::now();
        let body = sign(ACK, r#"{"request_id":"once"}"#);
        assert!(matches!(
            check_at(&mut g, ACK, &body, t0),
            Verdict::Accept { .. }
        ));
        let again = check_at(&mut g, ACK, &body, t0 + Duration::from_secs(59));
        assert!(error_of(&again).contains("replayed command"), "{again:?}");
        // The same id on another equipment is a replay too: request ids are gateway-wide.
        let elsewhere = sign("ms5/gw/cmd/E2/andon/ack", r#"{"request_id":"once"}"#);
        let v = check_at(
            &mut g,
            "ms5/gw/cmd/E2/andon/ack",
            &elsewhere,
            t0 + Duration::from_secs(1),
        );
        assert!(error_of(&v).contains("replayed"), "{v:?}");
        // After the window the id is forgotten (its issued_at would be stale by then anyway).
        let later = check_at(&mut g, ACK, &body, t0 + Duration::from_secs(60));
        assert!(matches!(later, Verdict::Accept { .. }), "{later:?}");
        assert_eq!(g.refusals().get("replay"), Some(&2));
    }

    #[test]
    fn a_forgotten_request_id_may_be_sent_again() {
        let mut g = signed_guard();
        let t0 = Instant::now();
        let body = sign(ACK, r#"{"request_id":"busy"}"#);
        assert!(matches!(
            check_at(&mut g, ACK, &body, t0),
            Verdict::Accept { .. }
        ));
        g.forget("busy");
        assert!(matches!(
            check_at(&mut g, ACK, &body, t0),
            Verdict::Accept { .. }
        ));
        assert!(error_of(&check_at(&mut g, ACK, &body, t0)).contains("replayed"));
    }

    #[test]
    fn a_refused_command_does_not_use_up_its_request_id() {
        let mut g = signed_guard();
        let t0 = Instant::now();
        let forged =
            signature::sign_body(&[1; 32], ACK, r#"{"request_id":"mine"}"#, NOW_RFC3339).unwrap();
        assert!(error_of(&check_at(&mut g, ACK, &forged, t0)).contains("bad signature"));
        let genuine = sign(ACK, r#"{"request_id":"mine"}"#);
        assert!(matches!(
            check_at(&mut g, ACK, &genuine, t0),
            Verdict::Accept { .. }
        ));
    }

    #[test]
    fn a_string_field_over_256_bytes_is_refused_naming_the_field() {
        let mut g = open_guard();
        let body = format!(r#"{{"request_id":"r","by":"{}"}}"#, "b".repeat(257));
        match check(&mut g, ACK, &body) {
            Verdict::Reject { request_id, error } => {
                assert_eq!(request_id, "r");
                assert!(error.contains("field \"by\" is 257 bytes"), "{error}");
            }
            v => panic!("{v:?}"),
        }
        let ok = format!(r#"{{"request_id":"r","by":"{}"}}"#, "b".repeat(256));
        assert!(matches!(check(&mut g, ACK, &ok), Verdict::Accept { .. }));
    }

    #[test]
    fn a_request_id_over_256_bytes_is_refused_and_not_echoed() {
        let mut g = open_guard();
        let body = format!(r#"{{"request_id":"{}"}}"#, "r".repeat(300));
        match check(&mut g, ACK, &body) {
            Verdict::Reject { request_id, error } => {
                assert_eq!(request_id, Value::Null);
                assert!(error.contains("field \"request_id\""), "{error}");
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(g.refusals().get("field_too_long"), Some(&1));
    }

    #[test]
    fn a_configured_key_that_could_not_be_read_refuses_every_command() {
        let commands = Commands {
            key_file: Some("/nonexistent/command.key".into()),
            ..Commands::default()
        };
        let mut g = CommandGuard::new(settings(commands, None));
        let body = sign(ACK, r#"{"request_id":"k1"}"#);
        assert!(error_of(&check(&mut g, ACK, &body)).contains("command key could not be read"));
        assert_eq!(g.refusals().get("key_unavailable"), Some(&1));
    }

    #[test]
    fn settings_and_guard_never_print_the_key() {
        let s = settings(
            Commands::default(),
            Some(b"super-secret-key-material-000000".to_vec()),
        );
        assert!(!format!("{s:?}").contains("super-secret"), "{s:?}");
        let g = CommandGuard::new(s);
        assert!(!format!("{g:?}").contains("super-secret"), "{g:?}");
    }
}
