//! The outbox: events waiting for the broker's PUBACK.
//!
//! A row is the event's CloudEvents fields minus `stream`/`source` (which are per database and
//! per gateway) and minus the topic prefix (which the config may change between runs). The
//! envelope is rebuilt byte-for-byte the same on every resend, so a duplicate delivered after a
//! reconnect is identical to the original, `id` and `seq` included.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::{StoreError, DB_FILE};
use crate::engine::Event;

/// Drop class for `max_outbox_mb` (SPEC §5): lower classes are dropped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Telemetry = 0,
    OeeSnapshot = 1,
    Event = 2,
}

impl Kind {
    /// The outbox class of an event's drop class.
    pub fn of(class: crate::engine::DropClass) -> Kind {
        match class {
            crate::engine::DropClass::Telemetry => Kind::Telemetry,
            crate::engine::DropClass::OeeSnapshot => Kind::OeeSnapshot,
            crate::engine::DropClass::Event => Kind::Event,
        }
    }
}

/// One unsent message.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    pub id: String,
    pub kind: i64,
    pub event_type: String,
    /// Below `topic_prefix`.
    pub topic: String,
    pub equipment: Option<String>,
    pub time_ms: i64,
    pub data: String,
    pub retain: bool,
}

impl OutboxRow {
    /// The CloudEvents 1.0 JSON envelope of SPEC §4 (framed by [`crate::cloudevents`]).
    pub fn envelope(&self, gateway_id: &str, stream: &str) -> String {
        crate::cloudevents::frame(
            gateway_id,
            Some(crate::cloudevents::Position {
                stream,
                seq: self.seq,
            }),
            &crate::cloudevents::Event {
                id: &self.id,
                event_type: &self.event_type,
                time_ms: self.time_ms,
                equipment: self.equipment.as_deref(),
                data: &self.data,
            },
        )
    }
}

/// What the outbox needs to know about an event: class, type, topic, data, retain.
pub fn describe(event: &Event) -> (Kind, &'static str, String, serde_json::Value, bool) {
    // The wire form is domain knowledge and lives with the events (engine::event).
    match event.message() {
        Some(m) => (Kind::of(m.class), m.event_type, m.topic, m.data, m.retain),
        None => (
            Kind::Event,
            "",
            String::new(),
            serde_json::Value::Null,
            false,
        ),
    }
}

/// What `max_outbox_mb` counts for one message: topic + payload, the payload being the data
/// plus the CloudEvents envelope (about 260 bytes, rebuilt at publish time).
pub fn estimate_bytes(topic: &str, data: &str) -> usize {
    topic.len() + data.len() + 260
}

/// Appends an event to the outbox inside the caller's transaction; returns the row as written
/// (so the uplink can be handed it without reading it back) and the bytes it counts for
/// `max_outbox_mb`. `data` is the event's data as JSON text, built once by the caller.
pub fn insert(
    tx: &Connection,
    event: &Event,
    message: &crate::engine::Message,
    data: String,
    now_ms: i64,
) -> Result<(OutboxRow, u64), StoreError> {
    let kind = Kind::of(message.class);
    let bytes = estimate_bytes(&message.topic, &data) as i64;
    let id = uuid::Uuid::now_v7().to_string();
    tx.prepare_cached(
        "INSERT INTO outbox (id, kind, type, topic, equipment, time_ms, data, retain, bytes, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        id,
        kind as i64,
        message.event_type,
        message.topic,
        event.equipment(),
        event.at_ms(),
        data,
        message.retain,
        bytes,
        now_ms,
    ])?;
    let row = OutboxRow {
        seq: tx.last_insert_rowid(),
        id,
        kind: kind as i64,
        event_type: message.event_type.to_string(),
        topic: message.topic.clone(),
        equipment: Some(event.equipment().to_string()),
        time_ms: event.at_ms(),
        data,
        retain: message.retain,
    };
    Ok((row, bytes as u64))
}

/// A second connection to the database the core created (the uplink's, the Sparkplug
/// session's), with a 10 s busy timeout and its own `synchronous` level.
pub(super) fn side_connection(
    data_dir: &Path,
    synchronous: &str,
) -> Result<Connection, StoreError> {
    let conn = Connection::open(data_dir.join(DB_FILE))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    // These connections read the outbox front to back and delete behind themselves: a small
    // page cache serves them as well as SQLite's default 2 MiB, which a backlog replay would
    // otherwise fill and keep (RSS after a long outage, issue 10).
    conn.pragma_update(None, "cache_size", SIDE_CACHE_KIB)?;
    Ok(conn)
}

/// Page cache of a side connection, in KiB (SQLite's negative `cache_size`).
const SIDE_CACHE_KIB: i64 = -256;

/// The uplink's own connection: reads unsent rows in `seq` order, deletes acknowledged ones.
pub struct OutboxReader {
    conn: Connection,
}

impl OutboxReader {
    /// Opens a second connection to the database the core created.
    pub fn open(data_dir: &Path) -> Result<OutboxReader, StoreError> {
        // Deletes of acknowledged rows need no fsync of their own: one lost to a power cut is
        // a resend (allowed by at-least-once), never a loss. See the store's module doc.
        let conn = side_connection(data_dir, "NORMAL")?;
        Ok(OutboxReader { conn })
    }

    /// Up to `limit` rows with `seq >= from`, oldest first.
    pub fn fetch(&self, from: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, kind, type, topic, equipment, time_ms, data, retain
             FROM outbox WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![from, limit as i64], |r| {
            Ok(OutboxRow {
                seq: r.get(0)?,
                id: r.get(1)?,
                kind: r.get(2)?,
                event_type: r.get(3)?,
                topic: r.get(4)?,
                equipment: r.get(5)?,
                time_ms: r.get(6)?,
                data: r.get(7)?,
                retain: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Deletes acknowledged rows in one transaction.
    pub fn delete(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        let tx = self.conn.transaction()?;
        {
            // Acks arrive in order, so acknowledged seqs are mostly consecutive: one range
            // delete per run instead of one statement per row.
            let mut range = tx.prepare_cached("DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")?;
            let mut start = sorted[0];
            let mut prev = sorted[0];
            for &seq in &sorted[1..] {
                if seq != prev + 1 {
                    range.execute(params![start, prev])?;
                    start = seq;
                }
                prev = seq;
            }
            range.execute(params![start, prev])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves rows that can never be sent (larger than the broker accepts) to the drop ledger
    /// with reason `too_large`, deleting them in the same transaction. `rows` are
    /// `(seq, kind, bytes)`. One ledger row per message, so the ledger names each `seq`.
    pub fn drop_too_large(
        &mut self,
        rows: &[(i64, i64, u64)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for &(seq, kind, bytes) in rows {
            let n = tx
                .prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
                .execute(params![seq])?;
            if n == 1 {
                super::bounds::record(
                    &tx,
                    -seq,
                    super::bounds::DropReason::TooLarge,
                    kind,
                    1,
                    bytes,
                    Some((seq, seq)),
                    now_ms,
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the uplink's state (broker in use, refusals) for `status`, which reads the
    /// database only.
    pub fn save_uplink_state(&self, json: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('uplink', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![json])?;
        Ok(())
    }

    /// Rows waiting.
    pub fn depth(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }
}
