//! `ms5-edge status`: what the running daemon is doing, read from its database read-only.
//!
//! It never talks to the daemon, the PLCs or the broker: the daemon's heartbeat in SQLite is
//! the proof of life, and a stale heartbeat (older than 3 × the slowest poll interval) makes
//! the command exit 1 so scripts and monitoring can act on it.

use serde_json::json;

use crate::clock::{rfc3339_ms, Clock};
use crate::config::Config;
use crate::store::{ReadOnly, StatusSnapshot, StoreError};

/// The result of a status read: what to print and the exit code.
pub struct StatusReport {
    pub text: String,
    pub json: serde_json::Value,
    pub alive: bool,
}

/// Reads the database of `config` and renders the report.
pub fn read(config: &Config) -> Result<StatusReport, StoreError> {
    let db = ReadOnly::open(&config.gateway.data_dir)?;
    let snap = db.snapshot()?;
    let now = Clock::system().now_ms();
    Ok(render(config, &snap, now))
}

/// Renders a snapshot taken at `now_ms` (pure, for tests).
pub fn render(config: &Config, snap: &StatusSnapshot, now_ms: i64) -> StatusReport {
    let deadline = config.heartbeat_deadline_ms() as i64;
    let heartbeat_age = snap.heartbeat_ms.map(|h| now_ms - h);
    let alive = heartbeat_age.is_some_and(|age| age <= deadline);
    let oldest_age_s = snap
        .oldest_unsent_ms
        .map(|t| (now_ms - t).max(0) as f64 / 1000.0);

    let equipment: serde_json::Map<String, serde_json::Value> = config
        .equipment
        .iter()
        .map(|e| {
            let view = snap.equipment.iter().find(|v| v.equipment == e.code);
            (
                e.code.clone(),
                json!({
                    "name": e.name,
                    "state": view.map(|v| v.state.as_str()).unwrap_or("offline"),
                    "since": view.map(|v| rfc3339_ms(v.since_ms)),
                }),
            )
        })
        .collect();
    let plcs: serde_json::Map<String, serde_json::Value> = snap
        .plcs
        .iter()
        .map(|(name, last, counters)| {
            let mut v = serde_json::to_value(counters).unwrap_or_default();
            v["last_poll"] = json!(rfc3339_ms(*last));
            (name.clone(), v)
        })
        .collect();
    let json = json!({
        "alive": alive,
        "heartbeat": snap.heartbeat_ms.map(rfc3339_ms),
        "stream": snap.stream,
        "outbox_depth": snap.outbox_depth,
        "outbox_bytes": snap.outbox_bytes,
        "oldest_unsent_age_s": oldest_age_s,
        "equipment": equipment,
        "plcs": plcs,
    });

    let mut t = String::new();
    t.push_str(&format!(
        "gateway {}  daemon {}  (heartbeat {})\n",
        config.gateway.id,
        if alive { "running" } else { "NOT RUNNING" },
        heartbeat_age
            .map(|a| format!("{:.1} s ago", a as f64 / 1000.0))
            .unwrap_or_else(|| "never".into())
    ));
    t.push_str(&format!(
        "outbox: {} message(s), {} bytes waiting{}\n\n",
        snap.outbox_depth,
        snap.outbox_bytes,
        oldest_age_s
            .map(|a| format!(", oldest {a:.1} s old"))
            .unwrap_or_default()
    ));
    t.push_str(&format!(
        "{:<22} {:<24} {:<14} since\n",
        "equipment", "name", "state"
    ));
    for e in &config.equipment {
        let view = snap.equipment.iter().find(|v| v.equipment == e.code);
        t.push_str(&format!(
            "{:<22} {:<24} {:<14} {}\n",
            e.code,
            e.name,
            view.map(|v| v.state.as_str()).unwrap_or("offline"),
            view.map(|v| rfc3339_ms(v.since_ms))
                .unwrap_or_else(|| "-".into())
        ));
    }
    t.push_str(&format!(
        "\n{:<12} {:<25} {:>8} {:>7} {:>8} {:>8} {:>10}  last error\n",
        "plc", "last poll", "polls", "failed", "skipped", "timeouts", "late(us)"
    ));
    for (name, last, c) in &snap.plcs {
        t.push_str(&format!(
            "{:<12} {:<25} {:>8} {:>7} {:>8} {:>8} {:>10}  {}\n",
            name,
            rfc3339_ms(*last),
            c.polls,
            c.failed_polls,
            c.skipped_ticks,
            c.timeouts,
            c.last_lateness_us,
            c.last_error.as_deref().unwrap_or("-")
        ));
    }
    StatusReport {
        text: t,
        json,
        alive,
    }
}
