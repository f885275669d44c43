//! Read-only answers over the database (SPEC §10 `report`, §11 queries): the figures of any
//! window from the minute buckets, downtime events and their Pareto, andons, jobs.
//!
//! Owns: the SQL of windows over `oee_minutes`, `downtimes`, `andons` and `jobs`, and the
//! `query/*` commands (parsing their bodies, bounding the window and the reply size).
//!
//! Never does: write (it only ever holds a [`ReadOnly`] connection), touch the engine's state,
//! run on the core's thread (the core hands a query to a blocking task and goes on).
//!
//! Invariants the tests defend: `query/oee` over a shift equals the shift's final
//! `oee.snapshot` (both are [`crate::engine::loss::window_fields`] over the same minutes and
//! the same failures); a window longer than [`MAX_WINDOW_MS`], or a reply larger than
//! `max_packet_kb`, is refused with `ok:false`.

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Map, Value};

use super::{ReadOnly, StoreError};
use crate::clock::rfc3339_ms;
use crate::config::{Config, Equipment};
use crate::engine::loss::{window_fields, FAILURE_CATEGORIES};
use crate::engine::oee::{minute_of, Bucket};

/// SPEC §11: the longest window a query may ask for.
pub const MAX_WINDOW_MS: i64 = 31 * 24 * 3_600_000;
/// `query/jobs` answers at most this many jobs.
pub const MAX_JOBS: u64 = 1000;

/// Whether a command path (`{equipment}/{command}`) is a read-only query.
pub fn is_query(path: &str) -> bool {
    path.split_once('/')
        .is_some_and(|(_, c)| c.starts_with("query/"))
}

/// The minute buckets of `code` summed over `[from, to)`: settled rows from `oee_minutes`, plus
/// the minutes the engine's persisted memory still holds open after the last settled row.
pub fn sum_minutes(db: &ReadOnly, code: &str, from: i64, to: i64) -> Result<Bucket, StoreError> {
    let (mut b, last): (Bucket, Option<i64>) = db.conn.prepare_cached(
        "SELECT coalesce(sum(scheduled_ms),0), coalesce(sum(run_ms),0), coalesce(sum(minor_stop_ms),0),
                coalesce(sum(unplanned_ms),0), coalesce(sum(planned_ms),0), coalesce(sum(offline_ms),0),
                coalesce(sum(good),0), coalesce(sum(reject),0), coalesce(sum(setup_ms),0),
                coalesce(sum(minor_stops),0), max(minute_ms)
         FROM oee_minutes WHERE equipment = ?1 AND minute_ms >= ?2 AND minute_ms < ?3",
    )?
    .query_row(params![code, from, to], |r| {
        Ok((
            Bucket {
                scheduled_ms: r.get(0)?,
                run_ms: r.get(1)?,
                minor_stop_ms: r.get(2)?,
                unplanned_ms: r.get(3)?,
                planned_ms: r.get(4)?,
                offline_ms: r.get(5)?,
                good: r.get::<_, i64>(6)?.max(0) as u64,
                reject: r.get::<_, i64>(7)?.max(0) as u64,
                setup_ms: r.get(8)?,
                minor_stops: r.get::<_, i64>(9)?.max(0) as u64,
            },
            r.get(10)?,
        ))
    })?;
    if let Some(memory) = super::domain::load_memory(&db.conn, code)? {
        for (minute, open) in &memory.open_minutes {
            if (from..to).contains(minute) && last.is_none_or(|l| *minute > l) {
                b.add(open);
            }
        }
    }
    Ok(b)
}

/// Failures (SPEC §11) of `code` whose downtime started in `[from, to)`.
pub fn failures(db: &ReadOnly, code: &str, from: i64, to: i64) -> Result<u64, StoreError> {
    let n: i64 = db
        .conn
        .prepare_cached(
            "SELECT count(*) FROM downtimes WHERE equipment = ?1 AND planned = 0 AND minor = 0
           AND category IN (?4, ?5, ?6) AND started_ms >= ?2 AND started_ms < ?3",
        )?
        .query_row(
            params![
                code,
                from,
                to,
                FAILURE_CATEGORIES[0],
                FAILURE_CATEGORIES[1],
                FAILURE_CATEGORIES[2]
            ],
            |r| r.get(0),
        )?;
    Ok(n.max(0) as u64)
}

/// The `oee.snapshot` fields of `[from, to)` (minute-aligned) for one equipment.
pub fn oee(
    db: &ReadOnly,
    e: &Equipment,
    from: i64,
    to: i64,
    shift: Option<&str>,
) -> Result<Value, StoreError> {
    let rules = crate::engine::machine::Rules::new(e);
    let b = sum_minutes(db, &e.code, from, to)?;
    let mut fields = window_fields(
        &b,
        rules.ideal_cycle_s(),
        &rules.targets,
        to - from,
        failures(db, &e.code, from, to)?,
    );
    let mut data = Map::new();
    data.insert(
        "window".into(),
        json!(if shift.is_some() { "shift" } else { "query" }),
    );
    data.insert("shift".into(), json!(shift));
    data.insert("window_start".into(), json!(rfc3339_ms(from)));
    data.insert("window_end".into(), json!(rfc3339_ms(to)));
    data.append(&mut fields);
    Ok(Value::Object(data))
}

/// Downtime (planned, unplanned, changeover; not minor stops) overlapping `[from, to)`, and its
/// Pareto by reason: count, seconds inside the window, share of the window's downtime.
pub fn downtime(
    db: &ReadOnly,
    code: &str,
    from: i64,
    to: i64,
    now: i64,
) -> Result<Value, StoreError> {
    let mut stmt = db.conn.prepare_cached(
        "SELECT downtime_id, started_ms, ended_ms, reason_code, reason, category, planned
         FROM downtimes WHERE equipment = ?1 AND minor = 0 AND started_ms < ?3
           AND (ended_ms IS NULL OR ended_ms > ?2)
         ORDER BY started_ms",
    )?;
    let rows = stmt.query_map(params![code, from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, bool>(6)?,
        ))
    })?;
    let mut events = Vec::new();
    let mut pareto: Vec<(String, String, String, u64, f64)> = Vec::new();
    for row in rows {
        let (id, start, end, code, reason, category, planned) = row?;
        let until = end.unwrap_or(now.max(start));
        let inside = (until.min(to) - start.max(from)).max(0) as f64 / 1000.0;
        events.push(json!({
            "downtime_id": id,
            "started_at": rfc3339_ms(start),
            "ended_at": end.map(rfc3339_ms),
            "duration_s": (until - start) as f64 / 1000.0,
            "seconds_in_window": inside,
            "reason_code": code,
            "reason": reason,
            "category": category,
            "planned": planned,
        }));
        match pareto.iter_mut().find(|p| p.0 == code) {
            Some(p) => {
                p.3 += 1;
                p.4 += inside;
            }
            None => pareto.push((code, reason, category, 1, inside)),
        }
    }
    pareto.sort_by(|a, b| b.4.total_cmp(&a.4).then_with(|| a.0.cmp(&b.0)));
    let total: f64 = pareto.iter().map(|p| p.4).sum();
    let pareto: Vec<Value> = pareto
        .into_iter()
        .map(|(code, reason, category, count, seconds)| {
            json!({
                "reason_code": code,
                "reason": reason,
                "category": category,
                "count": count,
                "seconds": seconds,
                "share": (total > 0.0).then(|| seconds / total),
            })
        })
        .collect();
    Ok(json!({ "events": events, "pareto": pareto }))
}

/// Andons raised in `[from, to)`: count by cause and the mean time to acknowledge.
pub fn andons(db: &ReadOnly, code: &str, from: i64, to: i64) -> Result<Value, StoreError> {
    let mut stmt = db.conn.prepare_cached(
        "SELECT cause, count(*), avg(acknowledged_ms - raised_ms), count(acknowledged_ms)
         FROM andons WHERE equipment = ?1 AND raised_ms >= ?2 AND raised_ms < ?3
         GROUP BY cause ORDER BY cause",
    )?;
    let rows = stmt.query_map(params![code, from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<f64>>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut by_cause = Map::new();
    let mut count = 0;
    for row in rows {
        let (cause, n, ack_ms, acked) = row?;
        count += n;
        by_cause.insert(
            cause,
            json!({
                "count": n,
                "acknowledged": acked,
                "mean_time_to_acknowledge_s": ack_ms.map(|ms| ms / 1000.0),
            }),
        );
    }
    Ok(json!({ "count": count, "by_cause": by_cause }))
}

/// The last `limit` jobs of an equipment (newest first) that started, or those started in
/// `[from, to)` when a window is given: status, target, actual, start, end, and efficiency and
/// quality from the minute buckets of the job's time.
pub fn jobs(
    db: &ReadOnly,
    e: &Equipment,
    limit: u64,
    window: Option<(i64, i64)>,
    now: i64,
) -> Result<Vec<Value>, StoreError> {
    let (from, to) = window.unwrap_or((i64::MIN, i64::MAX));
    let mut stmt = db.conn.prepare_cached(
        "SELECT job_id, max(at_ms) AS started FROM jobs
         WHERE equipment = ?1 AND event = 'started'
         GROUP BY job_id HAVING started >= ?2 AND started < ?3
         ORDER BY started DESC LIMIT ?4",
    )?;
    let started: Vec<(String, i64)> = stmt
        .query_map(params![e.code, from, to, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let ideal = crate::engine::machine::Rules::new(e).ideal_cycle_s();
    let mut out = Vec::new();
    for (job_id, start) in started {
        let end: Option<(String, i64, i64, Option<i64>)> = db
            .conn
            .prepare_cached(
                "SELECT event, at_ms, actual_quantity, target_quantity FROM jobs
                 WHERE equipment = ?1 AND job_id = ?2 AND at_ms >= ?3
                   AND event IN ('completed', 'cancelled')
                 ORDER BY at_ms LIMIT 1",
            )?
            .query_row(params![e.code, job_id, start], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let target: Option<i64> = db
            .conn
            .prepare_cached(
                "SELECT target_quantity FROM jobs WHERE equipment = ?1 AND job_id = ?2
                   AND target_quantity IS NOT NULL ORDER BY at_ms DESC LIMIT 1",
            )?
            .query_row(params![e.code, job_id], |r| r.get(0))
            .optional()?;
        let until = end.as_ref().map_or(now, |(_, at, _, _)| *at);
        let b = sum_minutes(db, &e.code, minute_of(start), minute_of(until) + 60_000)?;
        let total = b.good + b.reject;
        let elapsed_s = (until - start) as f64 / 1000.0;
        out.push(json!({
            "job_id": job_id,
            "status": match end.as_ref().map(|(ev, _, _, _)| ev.as_str()) {
                Some("completed") => "completed",
                Some(_) => "cancelled",
                None => "running",
            },
            "target_quantity": target,
            "actual_quantity": end.as_ref().map_or(b.good as i64, |(_, _, a, _)| *a),
            "started_at": rfc3339_ms(start),
            "ended_at": end.as_ref().map(|(_, at, _, _)| rfc3339_ms(*at)),
            "production_efficiency": (elapsed_s > 0.0).then(|| ideal * total as f64 / elapsed_s),
            "quality_rate": (total > 0).then(|| b.good as f64 / total as f64),
        }));
    }
    Ok(out)
}

/// The state intervals of `code` overlapping `[from, to)`, clipped to it (for the timeline).
pub fn states(
    db: &ReadOnly,
    code: &str,
    from: i64,
    to: i64,
    now: i64,
) -> Result<Vec<Value>, StoreError> {
    let mut stmt = db.conn.prepare_cached(
        "SELECT state, start_ms, end_ms FROM state_intervals WHERE equipment = ?1
           AND start_ms < ?3 AND (end_ms IS NULL OR end_ms > ?2) ORDER BY start_ms",
    )?;
    let rows = stmt.query_map(params![code, from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (state, start, end) = row?;
        let (a, b) = (start.max(from), end.unwrap_or(now).min(to));
        if b > a {
            out.push(json!({ "state": state, "from": rfc3339_ms(a), "to": rfc3339_ms(b) }));
        }
    }
    Ok(out)
}

/// Parses an RFC 3339 time into UTC epoch ms.
fn parse_time(body: &Map<String, Value>, key: &str) -> Result<i64, String> {
    let text = body
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("\"{key}\" is required (an RFC 3339 time)"))?;
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("\"{key}\" = \"{text}\" is not an RFC 3339 time"))
}

/// A `{from, to}` window rounded down to the minute, at most [`MAX_WINDOW_MS`] long.
fn window(body: &Map<String, Value>) -> Result<(i64, i64), String> {
    let from = minute_of(parse_time(body, "from")?);
    let to = minute_of(parse_time(body, "to")?);
    if to <= from {
        return Err("\"to\" must be at least a minute after \"from\"".into());
    }
    if to - from > MAX_WINDOW_MS {
        return Err(format!(
            "window of {:.1} days is longer than 31 days",
            (to - from) as f64 / 86_400_000.0
        ));
    }
    Ok((from, to))
}

/// Answers one `query/*` command (`path` = `{equipment}/query/{what}`) with its `P/reply`
/// payload: `{"request_id","ok":true,"result":…}` or `ok:false` with the reason. The gate has
/// already checked the envelope, the signature and the budget.
pub fn answer(config: &Config, path: &str, payload: &[u8], now: i64) -> (bool, String) {
    let max_bytes = config
        .mqtt
        .as_ref()
        .map_or(256 * 1024, |m| m.max_packet_bytes());
    answer_within(config, path, payload, now, max_bytes)
}

/// [`answer`] with the packet bound given.
fn answer_within(
    config: &Config,
    path: &str,
    payload: &[u8],
    now: i64,
    max_bytes: usize,
) -> (bool, String) {
    let request_id = crate::uplink::guard::request_id_of(payload);
    let result = (|| -> Result<Value, String> {
        let body: Map<String, Value> =
            serde_json::from_slice(payload).map_err(|e| format!("malformed JSON: {e}"))?;
        let (code, what) = path
            .split_once('/')
            .ok_or_else(|| format!("command topic \"{path}\" has no equipment"))?;
        let e = config
            .equipment
            .iter()
            .find(|e| e.code == code)
            .ok_or_else(|| format!("unknown equipment \"{code}\""))?;
        let allowed: &[&str] = match what {
            "query/oee" | "query/downtime" => &["from", "to"],
            "query/jobs" => &["limit"],
            other => return Err(format!("unknown command \"{other}\"")),
        };
        if let Some(k) = body.keys().find(|k| {
            !["request_id", "by", "note", "issued_at", "sig"].contains(&k.as_str())
                && !allowed.contains(&k.as_str())
        }) {
            return Err(format!("unknown field \"{k}\" for command \"{what}\""));
        }
        let db = ReadOnly::open(&config.gateway.data_dir).map_err(|e| e.to_string())?;
        let store = |e: StoreError| format!("database: {e}");
        match what {
            "query/oee" => {
                let (from, to) = window(&body)?;
                oee(&db, e, from, to, None).map_err(store)
            }
            "query/downtime" => {
                let (from, to) = window(&body)?;
                downtime(&db, &e.code, from, to, now).map_err(store)
            }
            _ => {
                let limit = match body.get("limit") {
                    None | Some(Value::Null) => 20,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=MAX_JOBS).contains(n))
                        .ok_or_else(|| format!("\"limit\" must be an integer 1..={MAX_JOBS}"))?,
                };
                Ok(json!({ "jobs": jobs(&db, e, limit, None, now).map_err(store)? }))
            }
        }
    })();
    match result {
        Ok(result) => {
            let reply =
                json!({ "request_id": request_id, "ok": true, "result": result }).to_string();
            // The reply's topic and framing take a few hundred bytes of the packet.
            if reply.len() + 512 > max_bytes {
                let error = format!(
                    "result of {} bytes is larger than max_packet_kb ({} KiB); ask for a shorter window or fewer jobs",
                    reply.len(),
                    max_bytes / 1024
                );
                (false, crate::uplink::guard::reply(&request_id, &error))
            } else {
                (true, reply)
            }
        }
        Err(error) => (false, crate::uplink::guard::reply(&request_id, &error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testkit::*;
    use crate::store::{Batch, Store};

    /// Golden shift B of `engine::tests::losses` (hand-computed there), committed to a store.
    fn shift_b(dir: &std::path::Path) -> Drive {
        let mut d = Drive::new(&line_config(), "2026-11-25T14:00:00Z");
        d.run(3600, true, [0, 0]);
        d.command(
            "BAG1/changeover/start",
            json!({"request_id":"c1","by":"lead"}),
        )
        .unwrap();
        d.run(900, false, [0, 0]);
        d.run(1, true, [0, 0]);
        d.command(
            "BAG1/changeover/complete",
            json!({"request_id":"c2","by":"lead"}),
        )
        .unwrap();
        d.run(2699, true, [0, 0]);
        d.run(20, false, [0, 0]);
        d.run(3580, true, [0, 0]);
        d.run(300, false, [0, 2]);
        d.run(3300, true, [0, 0]);
        d.run(120, false, [0, 0]);
        d.run(3480, true, [0, 0]);
        d.run(180, false, [0, 0]);
        d.run(10_620, true, [0, 0]);
        d.finish(true);
        let mut store = Store::open(dir).unwrap();
        store
            .commit(&Batch {
                events: &d.events,
                memories: d.engine.memories(),
                ..Batch::default()
            })
            .unwrap();
        d
    }

    #[test]
    fn query_oee_over_a_shift_equals_its_final_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let d = shift_b(dir.path());
        let db = ReadOnly::open(dir.path()).unwrap();
        let config = line_config();
        let mut snapshot = d.final_snapshot("B");
        snapshot.as_object_mut().unwrap().remove("final");
        let q = oee(
            &db,
            &config.equipment[0],
            ts("2026-11-25T14:00:00Z"),
            ts("2026-11-25T22:00:00Z"),
            Some("B"),
        )
        .unwrap();
        assert_eq!(q, snapshot);
    }

    #[test]
    fn query_oee_over_a_window_starting_and_ending_mid_shift() {
        let dir = tempfile::tempdir().unwrap();
        shift_b(dir.path());
        let db = ReadOnly::open(dir.path()).unwrap();
        let config = line_config();
        // 14:30–17:02: running 14:30–15:00 (1 800 s), changeover 15:00–15:15 (900 s), running
        // 15:15–16:00 (2 700 s), a 20 s minor stop at 16:00, running 16:00:20–17:00 (3 580 s),
        // the JAM 17:00–17:02 (120 s of it). Run time 1 800 + 2 700 + 20 + 3 580 = 8 100 s;
        // unplanned 900 + 120 = 1 020 s (setup 900, breakdowns 120); calendar 9 120 s = PBT.
        // Units: 8 080 running seconds in the window → good 16 160; rejects booked in it
        // floor(9 880 / 20) − floor(1 800 / 20) = 494 − 90 = 404; total 16 564.
        // VOT = 0.4 × 16 160 = 6 464 s; speed (8 100 − 20) − 0.4 × 16 564 = 1 454.4 s;
        // rejects 0.4 × 404 = 161.6 s: 120 + 900 + 20 + 1 454.4 + 161.6 + 6 464 = 9 120.
        // One failure (the JAM started at 17:00): MTBF 8 100 s, MTTR 1 020 s.
        let q = oee(
            &db,
            &config.equipment[0],
            ts("2026-11-25T14:30:00Z"),
            ts("2026-11-25T17:02:00Z"),
            None,
        )
        .unwrap();
        assert_eq!(q["run_time_s"], 8_100.0, "{q}");
        assert_eq!(q["unplanned_downtime_s"], 1_020.0);
        assert_eq!(q["setup_loss_s"], 900.0);
        assert_eq!(q["breakdown_loss_s"], 120.0);
        assert_eq!(q["planned_busy_time_s"], 9_120.0);
        assert_eq!(q["good_count"], 16_160);
        assert_eq!(q["reject_count"], 404);
        assert_eq!(q["minor_stops"], 1);
        assert!(close(&q["speed_loss_s"], 1_454.4));
        assert!(close(&q["reject_loss_s"], 161.6));
        assert!(close(&q["oee"], 6_464.0 / 9_120.0));
        assert!(close(&q["teep"], 6_464.0 / 9_120.0));
        assert_eq!(q["failures"], 1);
        assert_eq!(q["mtbf_s"], 8_100.0);
        assert_eq!(q["mttr_s"], 1_020.0);
        assert_eq!(q["window_start"], "2026-11-25T14:30:00.000Z");

        let dt = downtime(
            &db,
            "BAG1",
            ts("2026-11-25T14:30:00Z"),
            ts("2026-11-25T17:02:00Z"),
            ts("2026-11-25T22:00:00Z"),
        )
        .unwrap();
        let pareto: Vec<_> = dt["pareto"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["reason_code"].as_str().unwrap(),
                    p["seconds"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(pareto, vec![("CHANGEOVER", 900.0), ("JAM", 120.0)], "{dt}");
        assert_eq!(
            dt["events"].as_array().unwrap().len(),
            2,
            "no minor stops: {dt}"
        );
    }

    #[test]
    fn long_windows_unknown_fields_and_oversized_results_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        shift_b(dir.path());
        let mut config = line_config();
        config.gateway.data_dir = dir.path().to_path_buf();
        let ask_within = |config: &Config, what: &str, body: serde_json::Value, max: usize| {
            let path = format!("BAG1/{what}");
            let (ok, reply) = answer_within(config, &path, body.to_string().as_bytes(), 0, max);
            let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
            assert_eq!(reply["ok"], ok);
            reply
        };
        let ask = |config: &Config, what: &str, body: serde_json::Value| {
            ask_within(config, what, body, 256 * 1024)
        };
        let r = ask(
            &config,
            "query/oee",
            json!({"request_id":"q1","from":"2026-10-01T00:00:00Z","to":"2026-11-01T00:01:00Z"}),
        );
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains("31 days"), "{r}");
        let r = ask(&config, "query/jobs", json!({"request_id":"q2","limt":3}));
        assert!(r["error"].as_str().unwrap().contains("\"limt\""), "{r}");
        let r = ask(
            &config,
            "query/oee",
            json!({"request_id":"q3","from":"2026-11-25T14:00:00Z","to":"2026-11-25T22:00:00Z"}),
        );
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["result"]["good_count"], 54_560);
        assert_eq!(r["request_id"], "q3");
        // A 1 KiB packet cannot carry the downtime of the shift.
        let r = ask_within(
            &config,
            "query/downtime",
            json!({"request_id":"q4","from":"2026-11-25T14:00:00Z","to":"2026-11-25T22:00:00Z"}),
            1024,
        );
        assert!(
            r["error"].as_str().unwrap().contains("max_packet_kb"),
            "{r}"
        );
    }
}
