//! Domain rows of the engine's events: downtime, andons, context history, jobs, OEE minutes,
//! and the engine's memory. Written in the same transaction as the event's outbox row.
//!
//! Rows are upserts keyed by the event's own id, so replaying a batch after a failed commit
//! cannot duplicate anything.
//!
//! ## Engine memory that does not round-trip
//! Never dropped silently. A memory that fails to *serialise* is not written (the last good
//! one stays in the table); the failure is logged at error once per episode per equipment and
//! counted ([`super::Store::memories_of`]). A persisted memory that fails to *parse* at start
//! is logged at error with serde's reason, counted, and its raw text saved beside the database
//! as `ms5-edge.db.memory-rejected-<UTC time>-<equipment>.json` before the equipment resumes
//! from its last committed state ([`super::Store::engine_state`]); the next save replaces the
//! row, the file keeps what it said. Both show as `health.store.memory_errors`.

use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;
use crate::engine::event::{DowntimeRecord, JobEvent};
use crate::engine::machine::Memory;
use crate::engine::oee::Bucket;
use crate::engine::Event;

fn upsert_downtime(
    tx: &Connection,
    equipment: &str,
    d: &DowntimeRecord,
    reason_by: Option<&str>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO downtimes (downtime_id, equipment, started_ms, ended_ms, reason_code, reason,
                                category, planned, minor, fault_bits, reason_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(downtime_id) DO UPDATE SET ended_ms = ?4, reason_code = ?5, reason = ?6,
             category = ?7, minor = ?9, fault_bits = ?10, reason_by = coalesce(?11, reason_by)",
    )?
    .execute(params![
        d.downtime_id,
        equipment,
        d.start_ms,
        d.end_ms,
        d.reason.code,
        d.reason.description,
        d.reason.category,
        d.planned,
        d.minor,
        serde_json::to_string(&d.fault_bits)?,
        reason_by,
    ])?;
    Ok(())
}

/// Writes the domain rows of one engine event (state and telemetry rows are written by the
/// caller).
pub fn write(tx: &Connection, event: &Event) -> Result<(), StoreError> {
    match event {
        Event::DowntimeStarted {
            equipment, record, ..
        }
        | Event::DowntimeEnded {
            equipment, record, ..
        } => {
            upsert_downtime(tx, equipment, record, None)?;
        }
        Event::DowntimeReasonSet {
            downtime_id,
            reason,
            by,
            ..
        } => {
            tx.prepare_cached(
                "UPDATE downtimes SET reason_code = ?2, reason = ?3, category = ?4, reason_by = ?5
                 WHERE downtime_id = ?1",
            )?
            .execute(params![
                downtime_id,
                reason.code,
                reason.description,
                reason.category,
                by
            ])?;
        }
        Event::AndonRaised {
            equipment, andon, ..
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO andons (andon_id, equipment, cause, cause_key, priority, level,
                     reason_code, description, downtime_id, raised_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                andon.andon_id,
                equipment,
                serde_json::to_value(andon.cause)?.as_str().unwrap_or("fault"),
                andon.cause_key,
                andon.priority,
                andon.level,
                andon.reason_code,
                andon.description,
                andon.downtime_id,
                andon.raised_ms,
            ])?;
        }
        Event::AndonEscalated {
            andon_id, level, ..
        } => {
            tx.prepare_cached("UPDATE andons SET level = ?2 WHERE andon_id = ?1")?
                .execute(params![andon_id, level])?;
        }
        Event::AndonAcknowledged {
            andon_id,
            by,
            at_ms,
            ..
        } => {
            tx.prepare_cached(
                "UPDATE andons SET acknowledged_ms = ?2, acknowledged_by = ?3 WHERE andon_id = ?1",
            )?
            .execute(params![andon_id, at_ms, by])?;
        }
        Event::AndonResolved {
            andon_id,
            resolved_by,
            at_ms,
            ..
        } => {
            tx.prepare_cached(
                "UPDATE andons SET resolved_ms = ?2, resolved_by = ?3 WHERE andon_id = ?1",
            )?
            .execute(params![andon_id, at_ms, resolved_by])?;
        }
        Event::ContextChanged {
            equipment,
            at_ms,
            context,
            change_reason,
            changed_by,
        } => {
            tx.prepare_cached(
                "INSERT INTO context_history (equipment, snapshot, change_reason, changed_by, changed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                equipment,
                context.to_json().to_string(),
                change_reason,
                changed_by,
                at_ms
            ])?;
        }
        Event::Job {
            equipment,
            at_ms,
            kind,
            job_id,
            target_quantity,
            actual_quantity,
            by,
        } => {
            let name = match kind {
                JobEvent::Assigned => "assigned",
                JobEvent::Started => "started",
                JobEvent::Completed => "completed",
                JobEvent::Cancelled => "cancelled",
            };
            tx.prepare_cached(
                "INSERT INTO jobs (equipment, job_id, event, target_quantity, actual_quantity, by, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                equipment,
                job_id,
                name,
                target_quantity.map(|q| q as i64),
                *actual_quantity as i64,
                by,
                at_ms
            ])?;
        }
        Event::OeeMinute {
            equipment,
            minute_ms,
            bucket: b,
        } => {
            tx.prepare_cached(
                "INSERT INTO oee_minutes (equipment, minute_ms, scheduled_ms, run_ms, minor_stop_ms,
                     unplanned_ms, planned_ms, offline_ms, good, reject, setup_ms, minor_stops)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(equipment, minute_ms) DO UPDATE SET scheduled_ms = ?3, run_ms = ?4,
                     minor_stop_ms = ?5, unplanned_ms = ?6, planned_ms = ?7, offline_ms = ?8,
                     good = ?9, reject = ?10, setup_ms = ?11, minor_stops = ?12",
            )?
            .execute(params![
                equipment,
                minute_ms,
                b.scheduled_ms,
                b.run_ms,
                b.minor_stop_ms,
                b.unplanned_ms,
                b.planned_ms,
                b.offline_ms,
                b.good as i64,
                b.reject as i64,
                b.setup_ms,
                b.minor_stops as i64
            ])?;
        }
        Event::StateChanged { .. }
        | Event::Telemetry { .. }
        | Event::OeeSnapshot { .. }
        | Event::Changeover { .. }
        | Event::Maintenance { .. } => {}
    }
    Ok(())
}

/// Persists the engine's memory of each equipment (restart and reload continuity).
pub fn save_memories(
    tx: &Connection,
    memories: &[(String, String)],
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO engine_memory (equipment, memory, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(equipment) DO UPDATE SET memory = ?2, updated_ms = ?3",
    )?;
    for (code, json) in memories {
        stmt.execute(params![code, json, now_ms])?;
    }
    Ok(())
}

/// The raw text of the last persisted memory of one equipment, if any.
fn load_memory_text(conn: &Connection, code: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT memory FROM engine_memory WHERE equipment = ?1",
            params![code],
            |r| r.get(0),
        )
        .optional()?)
}

/// The last persisted memory of one equipment, if any and if it still parses (for `status`,
/// which only reads; the daemon uses [`super::Store::engine_state`], which reports the rest).
pub fn load_memory(conn: &Connection, code: &str) -> Result<Option<Memory>, StoreError> {
    Ok(load_memory_text(conn, code)?.and_then(|j| serde_json::from_str(&j).ok()))
}

/// OEE minutes of one equipment since `from_ms`.
pub fn load_minutes(
    conn: &Connection,
    code: &str,
    from_ms: i64,
) -> Result<Vec<(i64, Bucket)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT minute_ms, scheduled_ms, run_ms, minor_stop_ms, unplanned_ms, planned_ms,
                offline_ms, good, reject, setup_ms, minor_stops
         FROM oee_minutes WHERE equipment = ?1 AND minute_ms >= ?2 ORDER BY minute_ms",
    )?;
    let rows = stmt.query_map(params![code, from_ms], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            Bucket {
                scheduled_ms: r.get(1)?,
                run_ms: r.get(2)?,
                minor_stop_ms: r.get(3)?,
                unplanned_ms: r.get(4)?,
                planned_ms: r.get(5)?,
                offline_ms: r.get(6)?,
                good: r.get::<_, i64>(7)?.max(0) as u64,
                reject: r.get::<_, i64>(8)?.max(0) as u64,
                setup_ms: r.get(9)?,
                minor_stops: r.get::<_, i64>(10)?.max(0) as u64,
            },
        ))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// What a previous run left of one equipment: its memory and its recent minute buckets.
pub type EngineState = (Option<Memory>, Vec<(i64, Bucket)>);

impl super::Store {
    /// What the previous run left of one equipment: its memory and its recent minute buckets.
    ///
    /// A memory that does not parse is reported (error log with the reason, counted) and its
    /// raw text saved aside (module doc); the equipment then has no memory (`None`).
    pub fn engine_state(
        &mut self,
        code: &str,
        minutes_since_ms: i64,
    ) -> Result<EngineState, StoreError> {
        let memory = match load_memory_text(&self.conn, code)? {
            None => None,
            Some(text) => match serde_json::from_str::<Memory>(&text) {
                Ok(memory) => Some(memory),
                Err(e) => {
                    self.reject_memory(code, &text, &e);
                    None
                }
            },
        };
        Ok((memory, load_minutes(&self.conn, code, minutes_since_ms)?))
    }

    fn reject_memory(&mut self, code: &str, text: &str, reason: &serde_json::Error) {
        self.memory_errors += 1;
        self.health_version += 1;
        let now_ms = crate::clock::Clock::system().now_ms();
        let stamp = jiff::Timestamp::from_millisecond(now_ms)
            .map(|t| t.strftime("%Y%m%dT%H%M%S%.3fZ").to_string())
            .unwrap_or_else(|_| now_ms.to_string());
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| super::DB_FILE.to_string());
        let aside = self
            .path
            .with_file_name(format!("{name}.memory-rejected-{stamp}-{code}.json"));
        match std::fs::write(&aside, text) {
            Ok(()) => tracing::error!(
                equipment = code,
                reason = %reason,
                saved_to = %aside.display(),
                "ENGINE MEMORY UNREADABLE: the persisted memory does not parse; its raw text is saved aside and the equipment resumes from its last committed state (open downtime, andons, context and counter baselines of the previous run are not restored)"
            ),
            Err(e) => tracing::error!(
                equipment = code,
                reason = %reason,
                error = %e,
                bytes = text.len(),
                "ENGINE MEMORY UNREADABLE: the persisted memory does not parse, and saving its raw text aside failed; the equipment resumes from its last committed state"
            ),
        }
    }

    /// The engine's memory of every equipment, serialised for [`super::Batch::memories`]. One
    /// that fails to serialise is left out (the last good one stays persisted), logged at error
    /// once per episode and counted; the end of an episode is logged at info.
    pub fn memories_of(&mut self, engine: &crate::engine::Engine) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for code in engine.codes() {
            let Some(machine) = engine.machine(&code) else {
                continue;
            };
            match serde_json::to_string(&machine.persistable()) {
                Ok(json) => {
                    if self.memory_failing.remove(&code) {
                        tracing::info!(equipment = %code, "engine memory serialises again; persisting it");
                    }
                    out.push((code, json));
                }
                Err(e) => self.note_unserialisable(&code, &e.to_string()),
            }
        }
        out
    }

    /// Counts one memory that failed to serialise; logs it when its episode begins.
    pub fn note_unserialisable(&mut self, code: &str, reason: &str) {
        self.memory_errors += 1;
        if self.memory_failing.insert(code.to_string()) {
            self.health_version += 1;
            tracing::error!(
                equipment = code,
                %reason,
                "ENGINE MEMORY NOT SAVED: it does not serialise; the last saved memory is kept and a restart would resume from it"
            );
        }
    }
}

impl super::ReadOnly {
    /// What the daemon last persisted of one equipment (for `status`).
    pub fn engine_state(
        &self,
        code: &str,
        minutes_since_ms: i64,
    ) -> Result<EngineState, StoreError> {
        Ok((
            load_memory(&self.conn, code)?,
            load_minutes(&self.conn, code, minutes_since_ms)?,
        ))
    }

    /// The newest `limit` domain happenings at or after `since_ms`, newest first, as
    /// `(at_ms, equipment, what)` (for `top`): state changes, downtime start/end, andon
    /// raise/acknowledge/resolve, job events. Read from the domain tables, not the outbox
    /// (which the uplink drains).
    pub fn recent_events(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, equipment, what FROM (
               SELECT start_ms AS at, equipment, 'state ' || state AS what FROM state_intervals
               UNION ALL SELECT started_ms, equipment, 'downtime ' || reason_code || ' ' || reason
                 FROM downtimes
               UNION ALL SELECT ended_ms, equipment, 'downtime ended ' || reason_code
                 FROM downtimes WHERE ended_ms IS NOT NULL
               UNION ALL SELECT raised_ms, equipment,
                 'andon ' || priority || ' L' || level || ' ' || reason_code FROM andons
               UNION ALL SELECT acknowledged_ms, equipment, 'andon acknowledged ' || reason_code
                 || ' by ' || coalesce(acknowledged_by, '?') FROM andons
                 WHERE acknowledged_ms IS NOT NULL
               UNION ALL SELECT resolved_ms, equipment, 'andon resolved ' || reason_code
                 FROM andons WHERE resolved_ms IS NOT NULL
               UNION ALL SELECT at_ms, equipment, 'job ' || event || ' ' || job_id FROM jobs
             ) WHERE at >= ?1 ORDER BY at DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since_ms, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Batch, Store};

    fn rejected_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains(".memory-rejected-"))
            .collect()
    }

    #[test]
    fn a_memory_that_does_not_parse_is_counted_and_kept_aside_not_thrown_away() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let raw = r#"{"state":"running","since_ms":"not a number"}"#;
        store
            .commit(&Batch {
                memories: vec![("BAG1".into(), raw.into())],
                ..Batch::default()
            })
            .unwrap();
        drop(store);

        let mut store = Store::open(dir.path()).unwrap();
        let version = store.health_version();
        let (memory, _) = store.engine_state("BAG1", 0).unwrap();
        assert!(memory.is_none(), "an unreadable memory is not used");
        assert_eq!(store.health(0).memory_errors, 1, "counted");
        assert_ne!(store.health_version(), version, "P/status is republished");
        let files = rejected_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(
            std::fs::read_to_string(&files[0]).unwrap(),
            raw,
            "kept as it was"
        );
        assert!(files[0].to_string_lossy().ends_with("-BAG1.json"));
    }

    #[test]
    fn a_memory_that_does_not_serialise_is_counted_every_time_and_reported_once_per_episode() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let v0 = store.health_version();
        store.note_unserialisable("BAG1", "key must be a string");
        let v1 = store.health_version();
        store.note_unserialisable("BAG1", "key must be a string");
        assert_eq!(store.health(0).memory_errors, 2);
        assert_ne!(v1, v0, "the episode's start republishes P/status");
        assert_eq!(store.health_version(), v1, "one report per episode");
    }

    #[test]
    fn memories_of_a_healthy_engine_all_serialise() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let text = crate::demo::config_text(1502, 1503, "/tmp/unused", None);
        let config = crate::config::load_str(&text, "t.toml").unwrap().config;
        let engine = crate::engine::Engine::new(&config, 1_780_000_000_000);
        assert_eq!(store.memories_of(&engine), engine.memories());
        assert_eq!(store.health(0).memory_errors, 0);
    }
}
