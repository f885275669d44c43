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

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::Notify;

use super::{Store, StoreError};
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

/// What one row counts for the bound besides its `metrics` text (id, equipment, times).
const ROW_OVERHEAD: u64 = 64;

/// The store's Sparkplug side, when `[sparkplug]` is configured.
pub struct Spb {
    recorder: Recorder,
    /// `max_outbox_mb` in bytes: the Sparkplug queue is bounded on its own (module doc).
    limit: u64,
    /// Upper estimate of the queue's bytes (last exact count + bytes inserted since; the
    /// session's deletes only make the truth smaller).
    estimate: u64,
    /// The drop episode under way (logged once when it starts), its id in the drop ledger.
    episode: Option<i64>,
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
        let estimate = queue_bytes(&self.conn)?;
        self.sparkplug = Some(Spb {
            recorder: Recorder::with(current),
            limit: self.limits.max_outbox_bytes,
            estimate,
            episode: None,
            cloudevents,
            notify,
        });
        Ok(())
    }
}

/// The bytes the queue counts for the bound, exactly.
fn queue_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        &format!("SELECT coalesce(sum(length(metrics) + {ROW_OVERHEAD}), 0) FROM spb_outbox"),
        [],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// Keeps the queue under `max_outbox_mb`: past it, the oldest rows go until it is under 90 %
/// (the oldest data is the least useful to a host that has been away that long). Every drop
/// goes in the drop ledger (class `sparkplug`, reason `outbox_full`, no `seq` span) in the
/// same transaction, so `status`, `P/status` and `/metrics` count it like the CloudEvents
/// drops; a new episode takes `next_episode`. Returns how many rows were dropped.
fn bound(
    tx: &Connection,
    spb: &mut Spb,
    next_episode: &mut i64,
    now_ms: i64,
) -> Result<u64, StoreError> {
    if spb.estimate <= spb.limit {
        return Ok(0);
    }
    let exact = queue_bytes(tx)?;
    spb.estimate = exact;
    if exact <= spb.limit {
        if spb.episode.is_some() && exact <= spb.limit / 10 * 9 {
            spb.episode = None;
            tracing::info!("sparkplug queue back under max_outbox_mb; drop episode over");
        }
        return Ok(0);
    }
    let target = spb.limit / 10 * 9;
    let mut freed = 0u64;
    let mut last = None;
    {
        let mut oldest = tx.prepare_cached(&format!(
            "SELECT id, length(metrics) + {ROW_OVERHEAD} FROM spb_outbox ORDER BY id"
        ))?;
        let mut rows = oldest.query([])?;
        while exact - freed > target {
            let Some(row) = rows.next()? else { break };
            last = Some(row.get::<_, i64>(0)?);
            freed += row.get::<_, i64>(1)?.max(0) as u64;
        }
    }
    let Some(last) = last else { return Ok(0) };
    let n = tx
        .prepare_cached("DELETE FROM spb_outbox WHERE id <= ?1")?
        .execute(params![last])? as u64;
    spb.estimate = exact - freed;
    let started = spb.episode.is_none();
    let episode = *spb.episode.get_or_insert_with(|| {
        let id = *next_episode;
        *next_episode += 1;
        id
    });
    super::bounds::record(
        tx,
        episode,
        super::bounds::DropReason::OutboxFull,
        super::bounds::SPARKPLUG_KIND,
        n,
        freed,
        None,
        now_ms,
    )?;
    if started {
        tracing::warn!(
            limit_bytes = spb.limit,
            dropped = n,
            "sparkplug queue reached max_outbox_mb: dropping its oldest DDATA until the host is back"
        );
    }
    Ok(n)
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
/// many rows were written and how many old ones the bound dropped.
pub(super) fn stage(
    tx: &Connection,
    spb: Option<&mut Spb>,
    events: &[Event],
    now_ms: i64,
    next_episode: &mut i64,
) -> Result<(usize, u64), StoreError> {
    let Some(spb) = spb else {
        return Ok((0, 0));
    };
    // Whatever a failed commit staged before is recomputed from the committed values.
    spb.recorder.abandon();
    let rows = spb.recorder.stage(events);
    if rows.is_empty() {
        return Ok((0, 0));
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO spb_outbox (equipment, time_ms, metrics, created_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for row in &rows {
        let metrics = serde_json::to_string(&row.metrics)?;
        spb.estimate += metrics.len() as u64 + ROW_OVERHEAD;
        insert.execute(params![row.equipment, row.time_ms, metrics, now_ms])?;
    }
    drop(insert);
    let dropped = bound(tx, spb, next_episode, now_ms)?;
    let mut current = tx.prepare_cached(
        "INSERT INTO spb_current (equipment, data) VALUES (?1, ?2)
         ON CONFLICT(equipment) DO UPDATE SET data = excluded.data",
    )?;
    for (code, values) in spb.recorder.staged() {
        current.execute(params![code, serde_json::to_string(values)?])?;
    }
    Ok((rows.len(), dropped))
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
        // bdSeq must survive a power cut (module doc); deletes are once per fence.
        let conn = super::outbox::side_connection(data_dir, "FULL")?;
        Ok(SpbReader { conn })
    }

    /// The `bdSeq` of the next CONNECT (last + 1, wrapping 255 → 0; 0 the first time), stored
    /// before it is returned.
    ///
    /// `BEGIN IMMEDIATE`: a read-then-write transaction begun deferred cannot wait for the
    /// core's write lock (SQLite returns `SQLITE_BUSY` at once, without the busy handler, when
    /// a read transaction must become a write one while another connection writes), so every
    /// CONNECT that fell on one of the core's commits was skipped for 5 s.
    pub fn next_bd_seq(&mut self) -> Result<u8, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MachineState;
    use crate::store::{Batch, Limits};

    fn change(i: i64) -> Event {
        let (from, to) = if i % 2 == 0 {
            (MachineState::Running, MachineState::Stopped)
        } else {
            (MachineState::Stopped, MachineState::Running)
        };
        Event::StateChanged {
            equipment: "EQ".into(),
            from,
            to,
            at_ms: 1_000 + i,
        }
    }

    #[test]
    fn rows_are_committed_in_order_and_the_queue_is_bounded_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_outbox_bytes: 20_000,
            ..Limits::default()
        };
        let mut store = Store::open_with(dir.path(), limits).unwrap();
        store
            .enable_sparkplug(false, Arc::new(Notify::new()))
            .unwrap();
        for chunk in (0..2_000).collect::<Vec<i64>>().chunks(50) {
            let events: Vec<Event> = chunk.iter().map(|&i| change(i)).collect();
            store
                .commit(&Batch {
                    events: &events,
                    ..Batch::default()
                })
                .unwrap();
        }
        let mut reader = SpbReader::open(dir.path()).unwrap();
        let rows = reader.fetch(0, 10_000).unwrap();
        assert!(!rows.is_empty());
        assert!(rows.len() < 2_000, "bounded: {} rows", rows.len());
        let bytes: usize = rows
            .iter()
            .map(|r| serde_json::to_string(&r.metrics).unwrap().len() + ROW_OVERHEAD as usize)
            .sum();
        assert!(bytes <= 20_000, "{bytes} bytes");
        assert_eq!(
            rows.last().unwrap().time_ms,
            1_000 + 1_999,
            "the newest is kept"
        );
        assert!(
            rows.windows(2).all(|w| w[0].id + 1 == w[1].id),
            "contiguous, in order"
        );
        // Every dropped row is in the drop ledger, class `sparkplug`, one episode, no seq
        // span; `status` (the read-only snapshot) and the core's health see the same count.
        let snap = crate::store::ReadOnly::open(dir.path())
            .unwrap()
            .snapshot()
            .unwrap();
        let dropped = (rows[0].id - 1) as u64;
        assert!(dropped > 0);
        assert_eq!(snap.drops.totals["outbox_full"]["sparkplug"].count, dropped);
        assert_eq!(snap.drops.recent.len(), 1, "{:?}", snap.drops.recent);
        assert_eq!(snap.drops.recent[0].class, "sparkplug");
        assert_eq!(snap.drops.recent[0].first_seq, None);
        assert_eq!(store.health(0).drops, snap.drops);
        // No CloudEvents rows with cloudevents = false.
        assert_eq!(snap.outbox_depth, 0);
        // The BIRTH snapshot: the current value and the last row it includes.
        let birth = reader.birth().unwrap();
        assert_eq!(birth.through, rows.last().unwrap().id);
        assert_eq!(birth.values["EQ"].metrics["State/state"].v, "running");
        assert_eq!(reader.next_bd_seq().unwrap(), 0);
        assert_eq!(reader.next_bd_seq().unwrap(), 1);
        assert_eq!(reader.delete_through(birth.through).unwrap(), rows.len());
    }

    /// Another connection holding the write lock (the core, mid-commit) delays the next
    /// `bdSeq`; it never fails it. Issue 11: begun deferred, the read-then-write transaction
    /// got `database is locked` at once, and the session skipped a CONNECT for 5 s.
    #[test]
    fn next_bd_seq_waits_for_the_writer_instead_of_failing() {
        use std::sync::mpsc::{channel, RecvTimeoutError};
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), Limits::default()).unwrap();
        let mut reader = SpbReader::open(dir.path()).unwrap();
        assert_eq!(reader.next_bd_seq().unwrap(), 0);
        let writer = Connection::open(store.path()).unwrap();
        writer
            .execute_batch(
                "BEGIN IMMEDIATE; INSERT INTO meta (key, value) VALUES ('probe', '1')
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )
            .unwrap();
        let (tx, rx) = channel();
        let asking = std::thread::spawn(move || {
            tx.send(reader.next_bd_seq().map_err(|e| e.to_string()))
                .unwrap();
        });
        // While the lock is held the call waits in the busy handler (10 s): no answer yet.
        match rx.recv_timeout(Duration::from_millis(500)) {
            Err(RecvTimeoutError::Timeout) => {}
            other => panic!("next_bd_seq answered while another connection wrote: {other:?}"),
        }
        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(1));
        asking.join().unwrap();
    }
}
