//! Domain rows of the engine's events: downtime, andons, context history, jobs, OEE minutes,
//! and the engine's memory. Written in the same transaction as the event's outbox row.
//!
//! Rows are upserts keyed by the event's own id, so replaying a batch after a failed commit
//! cannot duplicate anything.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::StoreError;
use crate::engine::event::{DowntimeRecord, JobEvent};
use crate::engine::machine::Memory;
use crate::engine::oee::Bucket;
use crate::engine::Event;

fn upsert_downtime(
    tx: &Transaction<'_>,
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
pub fn write(tx: &Transaction<'_>, event: &Event) -> Result<(), StoreError> {
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
                     unplanned_ms, planned_ms, offline_ms, good, reject)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(equipment, minute_ms) DO UPDATE SET scheduled_ms = ?3, run_ms = ?4,
                     minor_stop_ms = ?5, unplanned_ms = ?6, planned_ms = ?7, offline_ms = ?8,
                     good = ?9, reject = ?10",
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
                b.reject as i64
            ])?;
        }
        Event::StateChanged { .. }
        | Event::Telemetry { .. }
        | Event::OeeSnapshot { .. }
        | Event::Changeover { .. } => {}
    }
    Ok(())
}

/// Persists the engine's memory of each equipment (restart and reload continuity).
pub fn save_memories(
    tx: &Transaction<'_>,
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

/// The last persisted memory of one equipment, if any and if it still parses.
pub fn load_memory(conn: &Connection, code: &str) -> Result<Option<Memory>, StoreError> {
    let json: Option<String> = conn
        .query_row(
            "SELECT memory FROM engine_memory WHERE equipment = ?1",
            params![code],
            |r| r.get(0),
        )
        .optional()?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

/// OEE minutes of one equipment since `from_ms`.
pub fn load_minutes(
    conn: &Connection,
    code: &str,
    from_ms: i64,
) -> Result<Vec<(i64, Bucket)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT minute_ms, scheduled_ms, run_ms, minor_stop_ms, unplanned_ms, planned_ms,
                offline_ms, good, reject
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
            },
        ))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// What a previous run left of one equipment: its memory and its recent minute buckets.
pub type EngineState = (Option<Memory>, Vec<(i64, Bucket)>);

impl super::Store {
    /// What the previous run left of one equipment: its memory and its recent minute buckets.
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
}
