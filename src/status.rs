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
    let mut report = render(config, &snap, now);
    // The engine's view per equipment: open downtime, andons, context, shift OEE.
    for e in &config.equipment {
        let (memory, minutes) = db.engine_state(&e.code, now - crate::engine::BUCKET_HORIZON_MS)?;
        let summary = crate::engine::summary(config, &e.code, memory, minutes, now);
        report.text.push_str(&render_summary(&e.code, &summary));
        if let Some(obj) = report.json["equipment"][e.code.as_str()].as_object_mut() {
            if let Some(extra) = summary.as_object() {
                for (k, v) in extra {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Ok(report)
}

fn ratio(v: &serde_json::Value) -> String {
    v.as_f64()
        .map(|f| format!("{:.1} %", f * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The engine's part of the text report for one equipment.
fn render_summary(code: &str, s: &serde_json::Value) -> String {
    let mut t = format!("\n{code}\n");
    match s["open_downtime"].as_object() {
        Some(d) => t.push_str(&format!(
            "  stopped since {} ({:.0} s): {} {} [{}]\n",
            d["started_at"].as_str().unwrap_or("?"),
            d["duration_s"].as_f64().unwrap_or(0.0),
            d["reason_code"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or(""),
            d["category"].as_str().unwrap_or("")
        )),
        None => t.push_str("  no open downtime\n"),
    }
    for a in s["andons"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "  ANDON {} level {} {} {} since {}{}\n",
            a["priority"].as_str().unwrap_or("?"),
            a["level"],
            a["reason_code"].as_str().unwrap_or("?"),
            a["description"].as_str().unwrap_or(""),
            a["raised_at"].as_str().unwrap_or("?"),
            a["acknowledged_by"]
                .as_str()
                .map(|w| format!(" (acknowledged by {w})"))
                .unwrap_or_default()
        ));
    }
    let c = &s["context"];
    if c.is_object() {
        t.push_str(&format!(
            "  context: shift {} job {} product {} operator {} actual {} / target {}\n",
            c["shift"].as_str().unwrap_or("-"),
            c["job_id"].as_str().unwrap_or("-"),
            c["product_type_id"].as_str().unwrap_or("-"),
            c["operator"].as_str().unwrap_or("-"),
            c["actual_quantity"],
            c["target_quantity"]
                .as_u64()
                .map(|q| q.to_string())
                .unwrap_or_else(|| "-".into())
        ));
    }
    let m = &s["maintenance"];
    if let Some(interval) = m["interval_hours"].as_f64() {
        t.push_str(&format!(
            "  maintenance: {:.1} of {interval} running hours since {}; next due {}\n",
            m["run_hours_since_maintenance"].as_f64().unwrap_or(0.0),
            m["last_maintenance_at"].as_str().unwrap_or("-"),
            m["next_maintenance_due"].as_str().unwrap_or("-"),
        ));
    }
    let o = &s["oee"];
    if o.is_object() {
        let tg = &o["targets"];
        t.push_str(&format!(
            "  shift {} OEE {} (target {})  A {} ({})  P {} ({})  Q {} ({}){}\n",
            o["shift"].as_str().unwrap_or("-"),
            ratio(&o["oee"]),
            ratio(&tg["oee"]),
            ratio(&o["availability"]),
            ratio(&tg["availability"]),
            ratio(&o["performance"]),
            ratio(&tg["performance"]),
            ratio(&o["quality"]),
            ratio(&tg["quality"]),
            if o["performance_over_ideal"] == true {
                "  [performance above ideal: check ideal_rate_per_min]"
            } else {
                ""
            }
        ));
    }
    t
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
        "outbox_limit_bytes": config.storage.max_outbox_mb.saturating_mul(1 << 20),
        "oldest_unsent_age_s": oldest_age_s,
        "drops": snap.drops,
        "recovered": snap.recovered,
        "uplink": snap.uplink,
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
        "outbox: {} message(s), {} bytes waiting{}\n",
        snap.outbox_depth,
        snap.outbox_bytes,
        oldest_age_s
            .map(|a| format!(", oldest {a:.1} s old"))
            .unwrap_or_default()
    ));
    // Store-and-forward losses and recoveries (issue 5): shown only when there are any.
    if let Some(r) = &snap.recovered {
        t.push_str(&format!(
            "DATABASE REPLACED {}: the corrupt one was moved to {} ({})\n",
            r.at, r.moved_to, r.reason
        ));
    }
    if let Some(u) = &snap.uplink {
        let broker = u["broker"].as_str().unwrap_or("-");
        let broker = if u["connected"] == true {
            broker
        } else {
            "not connected"
        };
        t.push_str(&format!("broker: {broker}\n"));
        if let Some(refused) = u["refused"].as_object().filter(|m| !m.is_empty()) {
            t.push_str("REFUSED by the broker (rows kept, retried):");
            for (reason, n) in refused {
                t.push_str(&format!(" {reason} {n}"));
            }
            t.push('\n');
        }
    }
    if snap.drops.total() > 0 {
        t.push_str(&format!("DROPPED {} message(s):", snap.drops.total()));
        for (reason, classes) in &snap.drops.totals {
            for (class, c) in classes {
                t.push_str(&format!(" {reason}/{class} {}", c.count));
            }
        }
        t.push('\n');
        for r in &snap.drops.recent {
            let span = match (r.first_seq, r.last_seq) {
                (Some(f), Some(l)) => format!("seq {f}..={l}"),
                _ if r.class == "sparkplug" => "Sparkplug DDATA (no seq)".to_string(),
                _ => "before a seq was assigned".to_string(),
            };
            t.push_str(&format!(
                "  {} {}: {} {} dropped, {span}, {} .. {}\n",
                r.reason_name(),
                r.class,
                r.count,
                if r.count == 1 { "message" } else { "messages" },
                r.first_at,
                r.last_at
            ));
        }
    }
    t.push('\n');
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
