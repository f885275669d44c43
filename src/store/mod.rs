//! The store: SQLite in `gateway.data_dir`, the gateway's memory and its outbox.
//!
//! ## Design constraints
//! - **Transactional outbox.** An event's domain rows (state intervals, samples) and its outbox
//!   row are written in one transaction; nothing is published that was not committed first.
//! - **Durability.** WAL journal with `synchronous = FULL`: a transaction that returned from
//!   `COMMIT` survives power loss (with `NORMAL` the last commits before a power cut may vanish,
//!   which would break the "no committed event lost" promise). The cost is one fsync per
//!   commit, so the core commits a whole batch of events per transaction.
//! - **Ordering.** `outbox.seq` is `INTEGER PRIMARY KEY AUTOINCREMENT`: it starts at 1, only
//!   grows, is never reused after a row is deleted, and rolled-back transactions consume no
//!   number — so within a `stream` seq increases by exactly one per message.
//! - **Stream.** A random UUID created in the same transaction as the schema: a new database is
//!   a new stream, and consumers can tell.
//! - **Off the runtime.** A `Store` is owned by one thread (the core) and never used from async
//!   worker threads; the uplink has its own connection ([`outbox::OutboxReader`]).

pub mod outbox;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use thiserror::Error;

use crate::acquire::PlcCounters;
use crate::engine::{Event, MachineState, MachineView};

/// File name of the database inside `gateway.data_dir`.
pub const DB_FILE: &str = "ms5-edge.db";

/// Store failures. `Full` is distinguished because a full disk must never stop polling.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database is full (disk or page limit): {0}")]
    Full(rusqlite::Error),
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database schema version {found} is newer than this binary understands ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("no database at {0}")]
    Missing(PathBuf),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                StoreError::Full(e)
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Versioned migrations; index + 1 is the `user_version` after applying.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL,
    kind       INTEGER NOT NULL,  -- drop class: 0 telemetry, 1 oee snapshot, 2 everything else
    type       TEXT NOT NULL,     -- CloudEvents type, e.g. ms5.state.changed
    topic      TEXT NOT NULL,     -- below topic_prefix, e.g. BP01.PACK.BAG1/state
    equipment  TEXT,
    time_ms    INTEGER NOT NULL,
    data       TEXT NOT NULL,     -- the CloudEvents `data` member, JSON
    retain     INTEGER NOT NULL DEFAULT 0,
    bytes      INTEGER NOT NULL,  -- topic + payload estimate, for max_outbox_mb
    created_ms INTEGER NOT NULL
);
CREATE TABLE samples (
    id        INTEGER PRIMARY KEY,
    equipment TEXT NOT NULL,
    time_ms   INTEGER NOT NULL,
    data      TEXT NOT NULL
);
CREATE INDEX samples_by_time ON samples(time_ms);
CREATE TABLE state_intervals (
    id        INTEGER PRIMARY KEY,
    equipment TEXT NOT NULL,
    state     TEXT NOT NULL,
    start_ms  INTEGER NOT NULL,
    end_ms    INTEGER
);
CREATE INDEX state_intervals_open ON state_intervals(equipment, end_ms);
CREATE TABLE equipment_status (
    equipment TEXT PRIMARY KEY,
    state     TEXT NOT NULL,
    since_ms  INTEGER NOT NULL
);
CREATE TABLE plc_health (
    plc          TEXT PRIMARY KEY,
    last_poll_ms INTEGER NOT NULL,
    counters     TEXT NOT NULL
);
"#];

/// The gateway's database, owned by the core thread.
pub struct Store {
    conn: Connection,
    stream: String,
    path: PathBuf,
}

/// What one commit carries: engine events plus the bookkeeping written beside them.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub events: &'a [Event],
    /// Telemetry goes through the outbox only with `telemetry.store_and_forward = true`.
    pub telemetry_to_outbox: bool,
    /// (plc, last poll tick time, counters)
    pub health: Vec<(String, i64, PlcCounters)>,
    /// Liveness for `status`: written with every commit.
    pub heartbeat_ms: i64,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and applies migrations.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        let stream: String =
            conn.query_row("SELECT value FROM meta WHERE key = 'stream'", [], |r| {
                r.get(0)
            })?;
        Ok(Store { conn, stream, path })
    }

    /// The stream id of this database (SPEC §4).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits a batch in one transaction. Returns the outbox seqs written.
    pub fn commit(&mut self, batch: &Batch<'_>) -> Result<Vec<i64>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut seqs = Vec::new();
        for event in batch.events {
            write_domain_rows(&tx, event)?;
            if batch.telemetry_to_outbox || !matches!(event, Event::Telemetry { .. }) {
                seqs.push(outbox::insert(&tx, event, batch.heartbeat_ms)?);
            }
        }
        {
            let mut health = tx.prepare_cached(
                "INSERT INTO plc_health (plc, last_poll_ms, counters) VALUES (?1, ?2, ?3)
                 ON CONFLICT(plc) DO UPDATE SET last_poll_ms = ?2, counters = ?3",
            )?;
            for (plc, at, counters) in &batch.health {
                health.execute(params![plc, at, serde_json::to_string(counters)?])?;
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('heartbeat_ms', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![batch.heartbeat_ms.to_string()],
        )?;
        tx.commit()?;
        Ok(seqs)
    }

    /// The state of every equipment as last committed (for restart and `status`).
    pub fn machine_views(&self) -> Result<Vec<MachineView>, StoreError> {
        read_machine_views(&self.conn)
    }

    /// When the previous run last committed anything.
    pub fn heartbeat_ms(&self) -> Result<Option<i64>, StoreError> {
        read_heartbeat(&self.conn)
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if i == 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('stream', ?1)",
                params![uuid::Uuid::new_v4().to_string()],
            )?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn write_domain_rows(tx: &rusqlite::Transaction<'_>, event: &Event) -> Result<(), StoreError> {
    match event {
        Event::StateChanged {
            equipment,
            to,
            at_ms,
            ..
        } => {
            tx.prepare_cached(
                "UPDATE state_intervals SET end_ms = ?2 WHERE equipment = ?1 AND end_ms IS NULL",
            )?
            .execute(params![equipment, at_ms])?;
            tx.prepare_cached(
                "INSERT INTO state_intervals (equipment, state, start_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![equipment, to.as_str(), at_ms])?;
            tx.prepare_cached(
                "INSERT INTO equipment_status (equipment, state, since_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(equipment) DO UPDATE SET state = ?2, since_ms = ?3",
            )?
            .execute(params![equipment, to.as_str(), at_ms])?;
        }
        Event::Telemetry {
            equipment,
            at_ms,
            values,
            quality,
        } => {
            let data = serde_json::json!({ "values": values, "quality": quality });
            tx.prepare_cached(
                "INSERT INTO samples (equipment, time_ms, data) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![equipment, at_ms, data.to_string()])?;
        }
    }
    Ok(())
}

fn read_machine_views(conn: &Connection) -> Result<Vec<MachineView>, StoreError> {
    let mut stmt = conn.prepare("SELECT equipment, state, since_ms FROM equipment_status")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut views = Vec::new();
    for row in rows {
        let (equipment, state, since_ms) = row?;
        if let Some(state) = MachineState::parse(&state) {
            views.push(MachineView {
                equipment,
                state,
                since_ms,
            });
        }
    }
    Ok(views)
}

fn read_heartbeat(conn: &Connection) -> Result<Option<i64>, StoreError> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'heartbeat_ms'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|s| s.parse().ok()))
}

/// A read-only view of the database for `ms5-edge status`, safe while the daemon writes.
pub struct ReadOnly {
    conn: Connection,
}

/// Everything `status` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusSnapshot {
    pub stream: String,
    pub heartbeat_ms: Option<i64>,
    pub outbox_depth: u64,
    pub outbox_bytes: u64,
    pub oldest_unsent_ms: Option<i64>,
    /// The range of seqs waiting, oldest and newest.
    pub outbox_min_seq: Option<i64>,
    pub outbox_max_seq: Option<i64>,
    pub equipment: Vec<MachineView>,
    pub plcs: Vec<(String, i64, PlcCounters)>,
}

impl ReadOnly {
    /// Opens `data_dir/ms5-edge.db` without creating or migrating anything.
    pub fn open(data_dir: &Path) -> Result<ReadOnly, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(2))?;
        Ok(ReadOnly { conn })
    }

    /// Reads a consistent snapshot.
    pub fn snapshot(&self) -> Result<StatusSnapshot, StoreError> {
        let stream: String =
            self.conn
                .query_row("SELECT value FROM meta WHERE key = 'stream'", [], |r| {
                    r.get(0)
                })?;
        let (depth, bytes, oldest, min_seq, max_seq): (i64, i64, Option<i64>, Option<i64>, Option<i64>) =
            self.conn.query_row(
                "SELECT count(*), coalesce(sum(bytes), 0), min(created_ms), min(seq), max(seq) FROM outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?;
        let mut stmt = self
            .conn
            .prepare("SELECT plc, last_poll_ms, counters FROM plc_health ORDER BY plc")?;
        let plcs = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .filter_map(|r| r.ok())
            .map(|(p, t, c)| (p, t, serde_json::from_str(&c).unwrap_or_default()))
            .collect();
        Ok(StatusSnapshot {
            stream,
            heartbeat_ms: read_heartbeat(&self.conn)?,
            outbox_depth: depth.max(0) as u64,
            outbox_bytes: bytes.max(0) as u64,
            oldest_unsent_ms: oldest,
            outbox_min_seq: min_seq,
            outbox_max_seq: max_seq,
            equipment: read_machine_views(&self.conn)?,
            plcs,
        })
    }
}
