//! The store: SQLite in `gateway.data_dir`, the gateway's memory and its outbox.
//!
//! ## Design constraints
//! - **Transactional outbox.** An event's domain rows (state intervals, downtimes, …) and its
//!   outbox row are written in one transaction; nothing is published that was not committed
//!   first.
//! - **Durability.** WAL journal with `synchronous = FULL`: a transaction that returned from
//!   `COMMIT` survives power loss (with `NORMAL` the last commits before a power cut may vanish,
//!   which would break the "no committed event lost" promise). The cost is one fsync per
//!   commit, so the core commits a whole batch of events per transaction.
//! - **Ordering.** `outbox.seq` is `INTEGER PRIMARY KEY AUTOINCREMENT`: it starts at 1, only
//!   grows, is never reused after a row is deleted, and rolled-back transactions consume no
//!   number — so within a `stream` seq increases by exactly one per message.
//! - **Statements.** `BEGIN`/`COMMIT` of the core's commit run as cached statements
//!   ([`Hot`]), and the statement cache holds every statement of a commit.
//! - **Stream.** A random UUID created in the same transaction as the schema: a new database is
//!   a new stream, and consumers can tell.
//! - **Off the runtime.** A `Store` is owned by one thread (the core) and never used from the async
//!   I/O thread; the uplink has its own connection ([`outbox::OutboxReader`]), used through
//!   `spawn_blocking`.
//!
//! ## Durability settings (power loss on an SD card)
//! - `journal_mode = WAL`: readers (`status`, the uplink) never block the writer, and a commit
//!   is one sequential append to the WAL plus one fsync, which is what a flash card does best.
//! - `synchronous = FULL` on the core's connection: the WAL is fsynced at every `COMMIT`, so a
//!   committed event survives power loss. `NORMAL` would only fsync at checkpoints and could
//!   lose the last commits. The fsync cost is amortised by batching (one transaction per core
//!   wake-up, everything queued at once). The uplink's connection uses `NORMAL`: it only
//!   deletes acknowledged rows, and a delete lost to a power cut means a resend (at-least-once
//!   allows it), never a loss.
//! - **Checkpointing.** SQLite's automatic PASSIVE checkpoint at 1000 WAL pages (~4 MB) is kept:
//!   it never waits for readers, so it cannot stall polling. `journal_size_limit = 64 MiB`
//!   truncates a WAL that grew during a long reader (e.g. a slow `status`), and the core runs
//!   a PASSIVE checkpoint with each retention step (about once a minute) so an idle gateway's
//!   WAL does not linger. With `FULL`, each checkpoint fsyncs the database file before the WAL
//!   is reused, so a power cut mid-checkpoint replays the WAL on the next open.
//! - `PRAGMA quick_check` on every open; a corrupt file is moved aside, never deleted (see
//!   [`recovery`]).
//! - `foreign_keys = ON`; `busy_timeout` 5 s on the core (the uplink's deletes are short).
//!
//! ## Bounds
//! - `max_outbox_mb` with the SPEC §5 drop order, and the drop ledger: [`bounds`].
//! - The disk-full memory queue and its chunked retry ([`Store::commit_or_queue`]): [`pending`].
//!   Retention: [`retention`].
//!
//! ## Test knobs
//! Two environment variables exist for the end-to-end tests only, because SPEC's units are too
//! coarse (1 MiB) or the condition cannot be produced otherwise without root:
//! `MS5_EDGE_TEST_MAX_OUTBOX_BYTES` overrides `max_outbox_mb` with a byte count, and
//! `MS5_EDGE_TEST_MAX_PAGE_COUNT` sets `PRAGMA max_page_count` on the core's connection so that
//! `SQLITE_FULL` happens on a small database. `MS5_EDGE_TEST_SLOW_CHECK_MS` makes the
//! integrity check of an open take that much longer (a large database on an SD card, for the
//! systemd start-up timeout test). All are logged at `warn` when used.

pub mod bounds;
pub mod domain;
pub mod outbox;
pub mod pending;
pub mod query;
pub mod recovery;
pub mod retention;
pub mod sparkplug;

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
    #[error("database is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot move the corrupt database {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file at the database's path is no longer the one this store opened (SPEC §7 "The
    /// database file"): writing on would go to a file nobody can see.
    #[error("the database file {path} was {what} while the daemon was running")]
    FileGone { path: PathBuf, what: &'static str },
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
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    // Store-and-forward (issue 5): the drop ledger, the drop-order index, retention indexes.
    r#"
CREATE TABLE outbox_drops (
    id        INTEGER PRIMARY KEY,
    episode   INTEGER NOT NULL,
    reason    TEXT NOT NULL,      -- outbox_full | disk_full
    kind      INTEGER NOT NULL,   -- drop class, as outbox.kind
    count     INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    first_seq INTEGER,            -- NULL for disk-full losses (they never had a seq)
    last_seq  INTEGER,
    first_ms  INTEGER NOT NULL,
    last_ms   INTEGER NOT NULL,
    UNIQUE (episode, reason, kind)
);
CREATE INDEX outbox_by_kind ON outbox(kind, seq);
CREATE INDEX state_intervals_by_end ON state_intervals(end_ms);
"#,
    // Engine domain (issue 4): downtime, andons, context history, jobs, OEE minutes, engine memory.
    r#"
CREATE TABLE downtimes (
    downtime_id TEXT PRIMARY KEY,
    equipment   TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    ended_ms    INTEGER,
    reason_code TEXT NOT NULL,
    reason      TEXT NOT NULL,
    category    TEXT NOT NULL,
    planned     INTEGER NOT NULL,
    minor       INTEGER NOT NULL DEFAULT 0,
    fault_bits  TEXT NOT NULL,
    reason_by   TEXT
);
CREATE INDEX downtimes_by_end ON downtimes(ended_ms);
CREATE TABLE andons (
    andon_id        TEXT PRIMARY KEY,
    equipment       TEXT NOT NULL,
    cause           TEXT NOT NULL,
    cause_key       TEXT NOT NULL,
    priority        TEXT NOT NULL,
    level           INTEGER NOT NULL,
    reason_code     TEXT NOT NULL,
    description     TEXT NOT NULL,
    downtime_id     TEXT,
    raised_ms       INTEGER NOT NULL,
    acknowledged_ms INTEGER,
    acknowledged_by TEXT,
    resolved_ms     INTEGER,
    resolved_by     TEXT
);
CREATE INDEX andons_by_resolved ON andons(resolved_ms);
CREATE TABLE context_history (
    id            INTEGER PRIMARY KEY,
    equipment     TEXT NOT NULL,
    snapshot      TEXT NOT NULL,
    change_reason TEXT NOT NULL,
    changed_by    TEXT NOT NULL,
    changed_ms    INTEGER NOT NULL
);
CREATE INDEX context_history_by_time ON context_history(changed_ms);
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    equipment       TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    event           TEXT NOT NULL,
    target_quantity INTEGER,
    actual_quantity INTEGER NOT NULL,
    by              TEXT NOT NULL,
    at_ms           INTEGER NOT NULL
);
CREATE INDEX jobs_by_time ON jobs(at_ms);
CREATE TABLE oee_minutes (
    equipment     TEXT NOT NULL,
    minute_ms     INTEGER NOT NULL,
    scheduled_ms  INTEGER NOT NULL,
    run_ms        INTEGER NOT NULL,
    minor_stop_ms INTEGER NOT NULL,
    unplanned_ms  INTEGER NOT NULL,
    planned_ms    INTEGER NOT NULL,
    offline_ms    INTEGER NOT NULL,
    good          INTEGER NOT NULL,
    reject        INTEGER NOT NULL,
    PRIMARY KEY (equipment, minute_ms)
);
CREATE INDEX oee_minutes_by_time ON oee_minutes(minute_ms);
CREATE TABLE engine_memory (
    equipment  TEXT PRIMARY KEY,
    memory     TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
"#,
    // Sparkplug B (issue 11): the Sparkplug queue of the outbox and the current values.
    sparkplug::SCHEMA,
    // Edge analytics (issue 14): changeover (setup) time and minor-stop counts per minute, and
    // the indexes the queries and `report` read windows by.
    r#"
ALTER TABLE oee_minutes ADD COLUMN setup_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE oee_minutes ADD COLUMN minor_stops INTEGER NOT NULL DEFAULT 0;
CREATE INDEX downtimes_by_start ON downtimes(equipment, started_ms);
CREATE INDEX jobs_by_equipment ON jobs(equipment, at_ms);
"#,
    // Cheaper durable commits (issue 10): `samples` is pruned by rowid (store::retention), so
    // its time index, one more page in every telemetry commit, goes.
    r#"
DROP INDEX samples_by_time;
"#,
];

/// The gateway's database, owned by the core thread.
pub struct Store {
    conn: Connection,
    stream: String,
    path: PathBuf,
    limits: Limits,
    /// Upper estimate of the outbox bytes: last exact sum + bytes inserted since (the uplink's
    /// deletes only make the truth smaller). The exact sum runs only when this crosses the limit.
    outbox_estimate: u64,
    /// The `outbox_full` drop episode in progress, if any.
    open_episode: Option<i64>,
    next_episode: i64,
    /// Disk-full losses not yet written to the ledger (the disk was full when they happened).
    unrecorded_losses: pending::Losses,
    drops: bounds::DropReport,
    recovered: Option<Recovered>,
    /// Bumped whenever [`Store::health`] changes, so the core republishes `P/status`.
    health_version: u64,
    /// Equipment whose memory currently fails to serialise (one error line per episode).
    memory_failing: std::collections::BTreeSet<String>,
    /// Memory failures since start (serialise or parse), for `health.store.memory_errors`.
    memory_errors: u64,
    /// (device, inode) of the file at [`Store::path`] once it was opened and checked; `None`
    /// when it could not be read (then [`Store::check_file`] only notices a deletion).
    file_id: Option<(u64, u64)>,
    /// Where committed outbox rows are handed to the uplink, so it need not read back what was
    /// just written. Best effort: a full channel (or a commit that dropped rows for the bound)
    /// leaves a `seq` gap the uplink notices, and it then reads SQLite as before.
    handoff: Option<Handoff>,
    /// `[sparkplug]`: its rows are written with every commit ([`sparkplug`]).
    sparkplug: Option<sparkplug::Spb>,
    /// The connection's `synchronous` setting is `FULL` (see [`Store::commit`]).
    sync_full: bool,
}

/// The uplink's side of the committed-rows fast path.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub rows: tokio::sync::mpsc::Sender<outbox::OutboxRow>,
    /// The highest `seq` committed so far, set after its rows were offered to `rows`: a reader
    /// whose next expected seq is not above it, once `rows` is drained, missed some.
    pub committed: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// (device, inode, link count) of the file at `path`, following symlinks.
fn file_identity(path: &Path) -> std::io::Result<(u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino(), m.nlink()))
}

/// The limits the store enforces, from `[storage]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `max_outbox_mb` in bytes.
    pub max_outbox_bytes: u64,
    pub retention: retention::Retention,
    /// `PRAGMA max_page_count` on the core's connection (test knob; `None` = SQLite default).
    pub max_page_count: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_outbox_bytes: 256 << 20,
            retention: retention::Retention {
                telemetry_days: 7,
                events_days: 90,
            },
            max_page_count: None,
        }
    }
}

impl Limits {
    /// The limits of a config, with the test knobs of the module doc applied.
    pub fn from_storage(storage: &crate::config::Storage) -> Limits {
        let mut limits = Limits {
            max_outbox_bytes: storage.max_outbox_mb.saturating_mul(1 << 20),
            retention: retention::Retention {
                telemetry_days: storage.telemetry_retention_days,
                events_days: storage.retention_days,
            },
            max_page_count: None,
        };
        if let Some(bytes) = test_knob("MS5_EDGE_TEST_MAX_OUTBOX_BYTES") {
            limits.max_outbox_bytes = bytes;
        }
        limits.max_page_count = test_knob("MS5_EDGE_TEST_MAX_PAGE_COUNT");
        limits
    }
}

fn test_knob(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?.parse().ok()?;
    tracing::warn!(knob = name, value, "test knob set in the environment");
    Some(value)
}

/// A corrupt database that was moved aside when this one was created.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovered {
    /// Where the corrupt file now is.
    pub moved_to: String,
    pub reason: String,
    pub at: String,
}

/// The `health.store` section of `P/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    pub outbox_limit_bytes: u64,
    /// Events waiting in memory because the database refused them.
    pub pending: usize,
    pub drops: bounds::DropReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Recovered>,
    /// Engine memories that could not be serialised (not saved) or parsed at start (saved
    /// aside, see [`domain`]), since start. Absent while zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub memory_errors: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Rows a retention step deletes at most.
pub const PRUNE_BUDGET: usize = 500;

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
    /// The engine's memory per equipment (JSON), written with the events it explains.
    pub memories: Vec<(String, String)>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` with default limits.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(data_dir, Limits::default())
    }

    /// Opens (creating if needed) the database in `data_dir`, checks its integrity and applies
    /// migrations. A corrupt database is moved aside and a new one (a new stream) created.
    pub fn open_with(data_dir: &Path, limits: Limits) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            // A database deleted under a previous run leaves its -wal/-shm behind; replayed into
            // a new database they would mix two streams, so they are moved aside like a
            // corrupt database (SPEC §7 "The database file").
            let now_ms = crate::clock::Clock::system().now_ms();
            let moved = recovery::move_orphans(&path, now_ms)?;
            if !moved.is_empty() {
                tracing::error!(
                    db = %path.display(),
                    moved = %moved.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                    "DATABASE MISSING with its -wal/-shm left behind: moved them aside (kept, not deleted); \
                     starting a new database and a new stream"
                );
            }
        }
        let err = match Store::open_checked(&path, limits) {
            Ok(store) => return Ok(store),
            Err(e) => e,
        };
        let Some(corruption) = recovery::is_corruption(&err) else {
            return Err(err);
        };
        let now_ms = crate::clock::Clock::system().now_ms();
        let moved = recovery::move_aside(&path, now_ms)?;
        tracing::error!(
            db = %path.display(),
            moved_to = %moved.display(),
            reason = %corruption.reason,
            "DATABASE CORRUPT: moved aside (kept, not deleted); starting a new database and a new stream. \
             Events still unsent in the old file were not delivered; inspect it with sqlite3."
        );
        let mut store = Store::open_checked(&path, limits)?;
        let recovered = Recovered {
            moved_to: moved.display().to_string(),
            reason: corruption.reason,
            at: crate::clock::rfc3339_ms(now_ms),
        };
        store.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('recovered', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![serde_json::to_string(&recovered)?],
        )?;
        store.recovered = Some(recovered);
        Ok(store)
    }

    fn open_checked(path: &Path, limits: Limits) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        if let Some(ms) = test_knob("MS5_EDGE_TEST_SLOW_CHECK_MS") {
            // Test only: what a quick_check of a large database on an SD card looks like.
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Err(c) = recovery::quick_check(&conn)? {
            return Err(StoreError::Corrupt(c.reason));
        }
        migrate(&mut conn)?;
        if let Some(pages) = limits.max_page_count {
            conn.pragma_update(
                None,
                "max_page_count",
                i64::try_from(pages).unwrap_or(i64::MAX),
            )?;
        }
        let stream: String =
            conn.query_row("SELECT value FROM meta WHERE key = 'stream'", [], |r| {
                r.get(0)
            })?;
        let recovered = read_recovered(&conn);
        let outbox_estimate = bounds::outbox_bytes(&conn)?;
        let next_episode: i64 = conn.query_row(
            "SELECT coalesce(max(episode), 0) + 1 FROM outbox_drops",
            [],
            |r| r.get(0),
        )?;
        let drops = bounds::read_report(&conn)?;
        let file_id = file_identity(path).ok().map(|(dev, ino, _)| (dev, ino));
        Ok(Store {
            conn,
            stream,
            path: path.to_path_buf(),
            limits,
            outbox_estimate,
            open_episode: None,
            next_episode,
            unrecorded_losses: Vec::new(),
            drops,
            recovered,
            health_version: 0,
            memory_failing: Default::default(),
            memory_errors: 0,
            file_id,
            handoff: None,
            sparkplug: None,
            sync_full: true,
        })
    }

    /// Whether the file at [`Store::path`] is still the one this store opened: `Err(FileGone)`
    /// when it was deleted (or renamed away) or replaced by another file (a different inode).
    /// Other errors reading the path (e.g. a permission change) are not a verdict: `Ok`.
    ///
    /// One `stat(2)`; the core calls it about once a second.
    pub fn check_file(&self) -> Result<(), StoreError> {
        let gone = |what| StoreError::FileGone {
            path: self.path.clone(),
            what,
        };
        match file_identity(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(gone("deleted")),
            Err(_) => Ok(()),
            Ok((_, _, 0)) => Err(gone("deleted")),
            Ok((dev, ino, _)) => match self.file_id {
                Some(id) if id != (dev, ino) => Err(gone("replaced")),
                _ => Ok(()),
            },
        }
    }

    /// Hands every row committed from now on to `tx` (the uplink's fast path; see the field).
    pub fn set_handoff(&mut self, handoff: Handoff) {
        self.handoff = Some(handoff);
    }

    /// The stream id of this database (SPEC §4).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows waiting in the outbox (for the daemon's systemd `STATUS=` line; a `count(*)`, so
    /// the caller rate-limits it).
    pub fn outbox_depth(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Rows waiting in the outbox and the `created_ms` of the oldest (`None` when empty), for
    /// the metrics (`ms5_edge_outbox_messages`, `…_oldest_age_seconds`). The count is a
    /// `count(*)`: the caller rate-limits it; the oldest row is one primary-key lookup.
    pub fn outbox_stats(&self) -> Result<(u64, Option<i64>), StoreError> {
        let n = self.outbox_depth()?;
        let oldest: Option<i64> = self
            .conn
            .query_row(
                "SELECT created_ms FROM outbox ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok((n, oldest))
    }

    /// Reads the drop ledger again: rows another connection wrote (the uplink's `too_large`)
    /// then show in [`Store::health`] too. Bumps [`Store::health_version`] when it changed.
    pub fn reread_drops(&mut self) -> Result<(), StoreError> {
        let drops = bounds::read_report(&self.conn)?;
        if drops != self.drops {
            self.drops = drops;
            self.health_version += 1;
        }
        Ok(())
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Commits a batch in one transaction. Returns the outbox seqs written.
    ///
    /// When the outbox ends up above `max_outbox_mb`, the oldest rows of the lowest drop class
    /// are deleted and recorded in the ledger in the same transaction ([`bounds`]); disk-full
    /// losses noted since the last successful commit are recorded too.
    ///
    /// A batch that carries nothing but the heartbeat (no event, health row, memory or loss)
    /// is committed with `synchronous = NORMAL`: no fsync of its own. It holds no promise —
    /// a power cut may take the last heartbeats back to the last `FULL` commit (the memory
    /// and health rows are one at least every second), and the next `FULL` commit's fsync
    /// makes its WAL frames durable too. Everything else is committed with `FULL`.
    pub fn commit(&mut self, batch: &Batch<'_>) -> Result<Vec<i64>, StoreError> {
        let liveness_only = batch.events.is_empty()
            && batch.health.is_empty()
            && batch.memories.is_empty()
            && self.unrecorded_losses.is_empty();
        self.set_sync_full(!liveness_only)?;
        let hot = Hot::begin(&self.conn)?;
        let tx = hot.conn;
        let mut rows = Vec::new();
        let mut inserted = 0u64;
        let cloudevents = self.sparkplug.as_ref().is_none_or(|s| s.cloudevents);
        for event in batch.events {
            // The wire form and its JSON text are built once, for the samples row and the
            // outbox row alike. Events without one (OEE minutes) are domain rows only.
            let message = event.message();
            let data = message.as_ref().map(|m| m.data.to_string());
            write_domain_rows(tx, event, data.as_deref())?;
            if let (Some(message), Some(data)) = (message, data) {
                if cloudevents
                    && (batch.telemetry_to_outbox || !matches!(event, Event::Telemetry { .. }))
                {
                    let (row, bytes) =
                        outbox::insert(tx, event, &message, data, batch.heartbeat_ms)?;
                    rows.push(row);
                    inserted += bytes;
                }
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
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('heartbeat_ms', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
        )?
        .execute(params![batch.heartbeat_ms.to_string()])?;
        domain::save_memories(tx, &batch.memories, batch.heartbeat_ms)?;
        let (spb_rows, spb_dropped) = sparkplug::stage(
            tx,
            self.sparkplug.as_mut(),
            batch.events,
            batch.heartbeat_ms,
            &mut self.next_episode,
        )?;

        // Bound the outbox (exact check only when the estimate says it may be over).
        let limit = self.limits.max_outbox_bytes;
        let mut estimate = self.outbox_estimate.saturating_add(inserted);
        let mut dropped = bounds::Dropped::default();
        let mut episode = self.open_episode;
        let mut episode_ended = false;
        if estimate > limit {
            let exact = bounds::outbox_bytes(tx)?;
            if exact > limit {
                let (d, after) = bounds::enforce(tx, exact, limit)?;
                let id = *episode.get_or_insert(self.next_episode);
                for (kind, (count, bytes, first, last)) in &d.by_kind {
                    bounds::record(
                        tx,
                        id,
                        bounds::DropReason::OutboxFull,
                        *kind,
                        *count,
                        *bytes,
                        Some((*first, *last)),
                        batch.heartbeat_ms,
                    )?;
                }
                dropped = d;
                estimate = after;
            } else {
                estimate = exact;
                if exact <= episode_over_below(limit) {
                    episode_ended = episode.take().is_some();
                }
            }
        }
        let losses = std::mem::take(&mut self.unrecorded_losses);
        let loss_episode = self.next_episode + i64::from(episode == Some(self.next_episode));
        for (kind, count, bytes) in &losses {
            bounds::record(
                tx,
                loss_episode,
                bounds::DropReason::DiskFull,
                *kind,
                *count,
                *bytes,
                None,
                batch.heartbeat_ms,
            )?;
        }
        if let Err(e) = hot.commit() {
            self.unrecorded_losses = losses;
            return Err(e);
        }

        // Committed: now the in-memory view may follow, and the uplink may have the rows.
        sparkplug::settled(self.sparkplug.as_mut(), spb_rows);
        self.outbox_estimate = estimate;
        let seqs = rows.iter().map(|r| r.seq).collect();
        if let Some(handoff) = &self.handoff {
            let max = rows.last().map(|r| r.seq);
            if dropped.is_empty() {
                for row in rows {
                    if handoff.rows.try_send(row).is_err() {
                        break;
                    }
                }
            }
            if let Some(max) = max {
                handoff
                    .committed
                    .fetch_max(max, std::sync::atomic::Ordering::AcqRel);
            }
        }
        if episode == Some(self.next_episode) {
            self.next_episode += 1;
        }
        if !losses.is_empty() {
            self.next_episode = self.next_episode.max(loss_episode + 1);
            tracing::warn!(
                lost = losses.iter().map(|l| l.1).sum::<u64>(),
                "events lost while the database was full (memory queue overflowed); recorded in the drop ledger"
            );
        }
        if !dropped.is_empty() && self.open_episode.is_none() {
            tracing::warn!(
                limit_bytes = limit,
                dropped = dropped.count(),
                "outbox reached max_outbox_mb: dropping the oldest messages (telemetry, then OEE snapshots, then events) until the broker is back"
            );
        }
        if episode_ended {
            tracing::info!("outbox back under max_outbox_mb; drop episode over");
        }
        self.open_episode = episode;
        if !dropped.is_empty() || !losses.is_empty() || spb_dropped > 0 {
            self.drops = bounds::read_report(&self.conn)?;
            self.health_version += 1;
        }
        Ok(seqs)
    }

    /// Notes events shed from the disk-full memory queue; they are written to the drop ledger
    /// by the next commit that succeeds.
    pub fn note_losses(&mut self, losses: pending::Losses) {
        if losses.is_empty() {
            return;
        }
        for (kind, count, bytes) in losses {
            match self.unrecorded_losses.iter_mut().find(|l| l.0 == kind) {
                Some(l) => {
                    l.1 += count;
                    l.2 += bytes;
                }
                None => self.unrecorded_losses.push((kind, count, bytes)),
            }
        }
        self.health_version += 1;
    }

    /// One retention step (at most [`PRUNE_BUDGET`] rows) plus a passive WAL checkpoint; the
    /// core calls it about once a minute, sooner while `more` is set.
    pub fn prune_step(&mut self, now_ms: i64) -> Result<retention::PruneReport, StoreError> {
        let report =
            retention::prune_step(&mut self.conn, &self.limits.retention, now_ms, PRUNE_BUDGET)?;
        // PASSIVE never waits for readers or writers; the result rows are not needed.
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        // An episode also ends when the uplink drained the outbox without further commits.
        if self.open_episode.is_some() {
            let exact = bounds::outbox_bytes(&self.conn)?;
            self.outbox_estimate = exact;
            if exact <= episode_over_below(self.limits.max_outbox_bytes) {
                self.open_episode = None;
                tracing::info!("outbox back under max_outbox_mb; drop episode over");
            }
        }
        Ok(report)
    }

    /// The `health.store` section of `P/status`; `pending` is the memory queue's length.
    pub fn health(&self, pending: usize) -> StoreHealth {
        let mut drops = self.drops.clone();
        for (kind, count, bytes) in &self.unrecorded_losses {
            let c = drops
                .totals
                .entry("disk_full")
                .or_default()
                .entry(bounds::kind_name(*kind))
                .or_default();
            c.count += count;
            c.bytes += bytes;
        }
        StoreHealth {
            outbox_limit_bytes: self.limits.max_outbox_bytes,
            pending,
            drops,
            recovered: self.recovered.clone(),
            memory_errors: self.memory_errors,
        }
    }

    /// Changes whenever [`Store::health`] would report different drops or losses.
    pub fn health_version(&self) -> u64 {
        self.health_version
    }

    /// The state of every equipment as last committed (for restart and `status`).
    pub fn machine_views(&self) -> Result<Vec<MachineView>, StoreError> {
        read_machine_views(&self.conn)
    }

    /// When the previous run last committed anything.
    pub fn heartbeat_ms(&self) -> Result<Option<i64>, StoreError> {
        read_heartbeat(&self.conn)
    }

    /// Writes the heartbeat alone, in place, without an fsync of its own (`synchronous =
    /// NORMAL`, as a heartbeat-only batch): the proof of life `status` reads while the
    /// database refuses the queue. A full disk usually still takes an update in place of the
    /// one `meta` row, so a daemon polling on through a full disk is not reported dead.
    pub fn touch_heartbeat(&mut self, now_ms: i64) -> Result<(), StoreError> {
        self.set_sync_full(false)?;
        self.conn
            .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'heartbeat_ms'")?
            .execute(params![now_ms.to_string()])?;
        Ok(())
    }
}

/// A drop episode ends once the outbox is back under 90 % of the limit: right after a drop it
/// sits just under the limit while the outage goes on, which is not the end of anything.
fn episode_over_below(limit: u64) -> u64 {
    limit / 10 * 9
}

fn read_recovered(conn: &Connection) -> Option<Recovered> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'recovered'", [], |r| {
            r.get(0)
        })
        .optional()
        .ok()
        .flatten();
    v.and_then(|s| serde_json::from_str(&s).ok())
}

/// The core's write transaction, begun and committed through cached statements: rusqlite's
/// `Transaction` parses `BEGIN` and `COMMIT` afresh each time, once per poll on the hot path.
/// Dropped without [`Hot::commit`] (an error on the way), it rolls back.
impl Store {
    /// Sets the connection's `synchronous` to `FULL` or `NORMAL`, only when it changes.
    fn set_sync_full(&mut self, full: bool) -> Result<(), StoreError> {
        if self.sync_full != full {
            let level = if full { "FULL" } else { "NORMAL" };
            self.conn.pragma_update(None, "synchronous", level)?;
            self.sync_full = full;
        }
        Ok(())
    }
}

struct Hot<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Hot<'c> {
    fn begin(conn: &'c Connection) -> Result<Hot<'c>, StoreError> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(Hot { conn, open: true })
    }

    fn commit(mut self) -> Result<(), StoreError> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Hot<'_> {
    fn drop(&mut self) {
        // A failed COMMIT may already have ended the transaction (SQLITE_FULL rolls back).
        if self.open && !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rollback of a failed commit failed");
            }
        }
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
    // Every statement of a commit stays prepared (rusqlite's default of 16 is fewer than an
    // event-bearing batch uses, and a miss re-parses the SQL).
    conn.set_prepared_statement_cache_capacity(64);
    // 512 KiB of page cache (SQLite's default is 2 MiB): a commit touches a few dozen pages (the
    // tails of the outbox, samples and their indexes, meta, memories). The default filled up
    // during a long broker outage — the outbox grows, `count(*)` and the bound walk it — and
    // stayed that size after the drain (RSS, issue 10).
    conn.pragma_update(None, "cache_size", -512i64)?;
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

/// `data`: the event's wire data as JSON text, when it has one (telemetry's is the sample).
fn write_domain_rows(tx: &Connection, event: &Event, data: Option<&str>) -> Result<(), StoreError> {
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
            equipment, at_ms, ..
        } => {
            tx.prepare_cached(
                "INSERT INTO samples (equipment, time_ms, data) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![equipment, at_ms, data.unwrap_or("{}")])?;
        }
        other => domain::write(tx, other)?,
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
    /// Messages given up (outbox bound, disk full), from the drop ledger.
    pub drops: bounds::DropReport,
    /// Set when this database replaced a corrupt one.
    pub recovered: Option<Recovered>,
    /// The uplink's last saved state (broker, refusals per reason, drops), if any.
    pub uplink: Option<serde_json::Value>,
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
            // A database the daemon has not migrated yet has no ledger: nothing dropped.
            drops: bounds::read_report(&self.conn).unwrap_or_default(),
            recovered: read_recovered(&self.conn),
            uplink: self
                .conn
                .query_row("SELECT value FROM meta WHERE key = 'uplink'", [], |r| {
                    r.get::<_, String>(0)
                })
                .ok()
                .and_then(|v| serde_json::from_str(&v).ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::engine::{Event, MachineState};

    fn synchronous(store: &Store) -> i64 {
        store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn only_a_heartbeat_alone_is_committed_without_its_own_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        store
            .commit(&Batch {
                heartbeat_ms: 1,
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(synchronous(&store), NORMAL);
        let events = [Event::StateChanged {
            equipment: "E1".into(),
            from: MachineState::Running,
            to: MachineState::Stopped,
            at_ms: 2,
        }];
        store
            .commit(&Batch {
                events: &events,
                heartbeat_ms: 2,
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(synchronous(&store), FULL, "an event is committed with FULL");
        assert_eq!(store.heartbeat_ms().unwrap(), Some(2));
        store
            .commit(&Batch {
                memories: vec![("E1".into(), "{}".into())],
                heartbeat_ms: 3,
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(synchronous(&store), FULL, "a memory is committed with FULL");
    }
}
