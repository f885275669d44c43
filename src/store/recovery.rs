//! Start-up integrity check and moving a corrupt database aside.
//!
//! ## Design constraints
//! - **Check before use.** `PRAGMA quick_check` runs on every open (O(database size), but
//!   without the index cross-checks of `integrity_check`: seconds on an SD card for hundreds of
//!   MB, once per start). A file that is not a database, fails to open as one, or fails the
//!   check is *corrupt*.
//! - **Never delete.** A corrupt database and its `-wal`/`-shm` files are renamed to
//!   `ms5-edge.db.corrupt-<UTC timestamp>[-wal|-shm]` in the same directory (a rename never
//!   copies, so it works on a full disk) and the directory is fsynced. A fresh database, and
//!   therefore a new `stream`, starts; consumers see the new stream and know.
//! - **Only corruption moves a file.** Permission errors, a locked file, a full disk or a
//!   schema newer than the binary are reported as errors and the daemon does not start:
//!   moving such a file aside would start a new stream for no reason.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode};

use super::StoreError;

/// Why a database was judged corrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub reason: String,
}

/// Whether an error means the file itself is damaged.
pub fn is_corruption(e: &StoreError) -> Option<Corruption> {
    let inner = match e {
        StoreError::Corrupt(reason) => {
            return Some(Corruption {
                reason: reason.clone(),
            })
        }
        StoreError::Sqlite(inner) => inner,
        _ => return None,
    };
    match inner {
        rusqlite::Error::SqliteFailure(f, msg)
            if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
        {
            Some(Corruption {
                reason: msg.clone().unwrap_or_else(|| f.to_string()),
            })
        }
        rusqlite::Error::QueryReturnedNoRows => Some(Corruption {
            reason: "the database has no stream id".into(),
        }),
        _ => None,
    }
}

/// Runs `PRAGMA quick_check`; `Err(Corruption)` with SQLite's first complaints when it fails.
pub fn quick_check(conn: &Connection) -> Result<Result<(), Corruption>, StoreError> {
    let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
    let lines = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(Ok(()))
    } else {
        Ok(Err(Corruption {
            reason: format!("quick_check: {}", lines.join("; ")),
        }))
    }
}

/// Renames `path` and its `-wal`/`-shm` companions aside; returns the new database path.
pub fn move_aside(path: &Path, now_ms: i64) -> Result<PathBuf, StoreError> {
    let stamp = jiff::Timestamp::from_millisecond(now_ms)
        .map(|t| t.strftime("%Y%m%dT%H%M%S%.3fZ").to_string())
        .unwrap_or_else(|_| now_ms.to_string());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| super::DB_FILE.to_string());
    let dir = path.parent().unwrap_or(Path::new("."));
    let target = dir.join(format!("{name}.corrupt-{stamp}"));
    let io = |source| StoreError::MoveAside {
        path: path.to_path_buf(),
        source,
    };
    // Companions first: a crash in between leaves a main file that is still checked (and
    // found corrupt) on the next start, never a fresh main file beside a stale WAL.
    for suffix in ["-wal", "-shm"] {
        let from = dir.join(format!("{name}{suffix}"));
        if from.exists() {
            let to = dir.join(format!("{name}.corrupt-{stamp}{suffix}"));
            std::fs::rename(&from, &to).map_err(io)?;
        }
    }
    std::fs::rename(path, &target).map_err(io)?;
    // Make the renames durable before a new database is created under the old name.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(target)
}
