//! The Sparkplug queue of the outbox (SPEC §8 "Store and forward", "Ordering and numbering").
//!
//! ## What a row is
//! One future DDATA: the metrics of one equipment that changed at one poll tick (or one
//! engine event time), by *name*, with their values and qualities (`metrics`, JSON). Rows are
//! written by [`crate::store::Store::commit`] in the transaction of the events they come from,
//! computed by the pure [`Recorder`]; `id` is their own `AUTOINCREMENT` order (the order the
//! engine produced them, across equipment) and never touches the CloudEvents `seq`. Names, not
//! aliases, are stored: the aliases are those of the session that sends the row.
//!
//! `spb_current` holds each equipment's current values (written in the same transaction), so
//! a BIRTH after a restart carries the last committed values, and a BIRTH's values and the
//! rows it makes historical are read in one read transaction ([`SpbReader::birth`]).
//!
//! ## When a row is deleted
//! Only by the session, once a QoS 1 publish sent *after* the row's DDATA on the same
//! connection has been acknowledged ([`SpbReader::delete_through`]); see
//! [`crate::sparkplug::session`].
//!
//! `bdSeq` lives in `meta` (`spb_bd_seq`, the last one used), written with `synchronous =
//! FULL` before the CONNECT that carries it, so no restart — not even after a power cut —
//! reuses one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::Notify;

use super::{Store, StoreError, DB_FILE};
use crate::engine::Event;
use crate::sparkplug::model::{Reading, Recorder, Values};

/// Migration 4: the Sparkplug queue and the current values.
pub const SCHEMA: &str = r#"
CREATE TABLE spb_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    equipment  TEXT NOT NULL,
    time_ms    INTEGER NOT NULL,  -- the metrics' timestamp (the poll's scheduled tick)
    metrics    TEXT NOT NULL,     -- [[name, {"v": value, "q": quality}], ...]
    created_ms INTEGER NOT NULL
);
CREATE TABLE spb_current (
    equipment TEXT PRIMARY KEY,
    data      TEXT NOT NULL       -- model::Values
);
"#;

/// The store's Sparkplug side, when `[sparkplug]` is configured.
pub struct Spb {
    recorder: Recorder,
    /// Whether CloudEvents outbox rows are written at all (`sparkplug.cloudevents`).
    pub(super) cloudevents: bool,
    /// Woken after each commit that wrote Sparkplug rows.
    notify: Arc<Notify>,
}

impl Store {
    /// Records Sparkplug rows from now on; `cloudevents = false` stops writing CloudEvents
    /// outbox rows (nobody would send them). `notify` wakes the Sparkplug session.
    pub fn enable_sparkplug(
        &mut self,
        cloudevents: bool,
        notify: Arc<Notify>,
    ) -> Result<(), StoreError> {
        let current = read_current(&self.conn)?;
        self.sparkplug = Some(Spb {
            recorder: Recorder::with(current),
            cloudevents,
            notify,
        });
        Ok(())
    }
}

fn read_current(conn: &Connection) -> Result<BTreeMap<String, Values>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT equipment, data FROM spb_current")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (code, data) = row?;
        // A row this binary cannot read is a BIRTH with nulls, not a failed start.
        if let Ok(v) = serde_json::from_str(&data) {
            out.insert(code, v);
        }
    }
    Ok(out)
}

/// Writes the Sparkplug rows of `events` and the new current values in `tx`. Returns how
/// many rows were written.
pub(super) fn stage(
    tx: &Transaction<'_>,
    spb: Option<&mut Spb>,
    events: &[Event],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let Some(spb) = spb else {
        return Ok(0);
    };
    // Whatever a failed commit staged before is recomputed from the committed values.
    spb.recorder.abandon();
    let rows = spb.recorder.stage(events);
    if rows.is_empty() {
        return Ok(0);
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO spb_outbox (equipment, time_ms, metrics, created_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for row in &rows {
        insert.execute(params![
            row.equipment,
            row.time_ms,
            serde_json::to_string(&row.metrics)?,
            now_ms
        ])?;
    }
    let mut current = tx.prepare_cached(
        "INSERT INTO spb_current (equipment, data) VALUES (?1, ?2)
         ON CONFLICT(equipment) DO UPDATE SET data = excluded.data",
    )?;
    for (code, values) in spb.recorder.staged() {
        current.execute(params![code, serde_json::to_string(values)?])?;
    }
    Ok(rows.len())
}

/// After the transaction of [`stage`] committed: the staged values become the reference and
/// the session is woken.
pub(super) fn settled(spb: Option<&mut Spb>, rows: usize) {
    if let Some(spb) = spb {
        spb.recorder.settle();
        if rows > 0 {
            spb.notify.notify_one();
        }
    }
}

/// One stored DDATA.
#[derive(Debug, Clone, PartialEq)]
pub struct SpbRow {
    pub id: i64,
    pub equipment: String,
    pub time_ms: i64,
    pub metrics: Vec<(String, Reading)>,
}

/// What a BIRTH needs: every equipment's current values, and the last row id they include
/// (rows up to it are sent as historical).
#[derive(Debug, Clone, Default)]
pub struct BirthSnapshot {
    pub values: BTreeMap<String, Values>,
    pub through: i64,
}

/// The Sparkplug session's own connection to the database.
pub struct SpbReader {
    conn: Connection,
}

impl SpbReader {
    /// Opens a connection to the database the core created.
    pub fn open(data_dir: &Path) -> Result<SpbReader, StoreError> {
        let conn = Connection::open(data_dir.join(DB_FILE))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // bdSeq must survive a power cut (module doc); deletes are once per fence.
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(SpbReader { conn })
    }

    /// The `bdSeq` of the next CONNECT (last + 1, wrapping 255 → 0; 0 the first time), stored
    /// before it is returned.
    pub fn next_bd_seq(&mut self) -> Result<u8, StoreError> {
        let tx = self.conn.transaction()?;
        let last: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'spb_bd_seq'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let next = match last.and_then(|s| s.parse::<u8>().ok()) {
            Some(n) => n.wrapping_add(1),
            None => 0,
        };
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('spb_bd_seq', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![next.to_string()],
        )?;
        tx.commit()?;
        Ok(next)
    }

    /// The current values and the last row they include, read together.
    pub fn birth(&mut self) -> Result<BirthSnapshot, StoreError> {
        let tx = self.conn.transaction()?;
        let values = read_current(&tx)?;
        let through: i64 =
            tx.query_row("SELECT coalesce(max(id), 0) FROM spb_outbox", [], |r| {
                r.get(0)
            })?;
        tx.commit()?;
        Ok(BirthSnapshot { values, through })
    }

    /// Up to `limit` rows with `id >= from`, oldest first.
    pub fn fetch(&self, from: i64, limit: usize) -> Result<Vec<SpbRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, equipment, time_ms, metrics FROM spb_outbox WHERE id >= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![from, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, equipment, time_ms, metrics) = row?;
            out.push(SpbRow {
                id,
                equipment,
                time_ms,
                metrics: serde_json::from_str(&metrics).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Deletes every row up to `id` (the broker provably read them).
    pub fn delete_through(&self, id: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM spb_outbox WHERE id <= ?1")?
            .execute(params![id])?)
    }

    /// Records the uplink health (the registry's, `sparkplug` included) for `status`, like
    /// the CloudEvents uplink does (with `cloudevents = false` nobody else would).
    pub fn save_uplink_state(&self, json: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('uplink', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![json])?;
        Ok(())
    }

    /// Rows waiting and the `created_ms` of the oldest.
    pub fn depth(&self) -> Result<(u64, Option<i64>), StoreError> {
        let (n, oldest): (i64, Option<i64>) = self.conn.query_row(
            "SELECT count(*), min(created_ms) FROM spb_outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n.max(0) as u64, oldest))
    }
}
