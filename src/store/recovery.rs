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
//! - **Orphans too.** `-wal`/`-shm` files without their database (it was deleted under a
//!   running daemon) are moved aside the same way before a new database is created: SQLite
//!   would otherwise replay a stranger's WAL into the new file ([`move_orphans`]).
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

fn stamp(now_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(now_ms)
        .map(|t| t.strftime("%Y%m%dT%H%M%S%.3fZ").to_string())
        .unwrap_or_else(|_| now_ms.to_string())
}

/// With no database at `path`, renames its leftover `-wal`/`-shm` files (if any) to
/// `<name>.corrupt-<stamp>-wal|-shm`; returns where they went (empty when there were none).
pub fn move_orphans(path: &Path, now_ms: i64) -> Result<Vec<PathBuf>, StoreError> {
    let stamp = stamp(now_ms);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| super::DB_FILE.to_string());
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut moved = Vec::new();
    for suffix in ["-wal", "-shm"] {
        let from = dir.join(format!("{name}{suffix}"));
        if from.exists() {
            let to = dir.join(format!("{name}.corrupt-{stamp}{suffix}"));
            std::fs::rename(&from, &to).map_err(|source| StoreError::MoveAside {
                path: from.clone(),
                source,
            })?;
            moved.push(to);
        }
    }
    if !moved.is_empty() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(moved)
}

/// Renames `path` and its `-wal`/`-shm` companions aside; returns the new database path.
pub fn move_aside(path: &Path, now_ms: i64) -> Result<PathBuf, StoreError> {
    let stamp = stamp(now_ms);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, DB_FILE};

    #[test]
    fn a_wal_and_shm_without_their_database_are_moved_aside_before_a_new_one_starts() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        let shm = dir.path().join(format!("{DB_FILE}-shm"));
        std::fs::write(&wal, b"a WAL of a database deleted under the daemon").unwrap();
        std::fs::write(&shm, b"its shared memory index").unwrap();
        let store = Store::open(dir.path()).expect("a new database");
        let moved: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(moved.len(), 2, "{moved:?}");
        assert!(moved
            .iter()
            .any(|p| std::fs::read(p).unwrap() == b"a WAL of a database deleted under the daemon"));
        assert!(uuid::Uuid::parse_str(store.stream()).is_ok());
    }

    #[test]
    fn a_database_deleted_or_replaced_under_the_store_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.check_file().is_ok());
        let path = dir.path().join(DB_FILE);

        // Replaced: another file renamed over the path (a different inode).
        let other = dir.path().join("other.db");
        std::fs::write(&other, b"x").unwrap();
        std::fs::rename(&other, &path).unwrap();
        match store.check_file() {
            Err(StoreError::FileGone { what, .. }) => assert_eq!(what, "replaced"),
            other => panic!("expected FileGone(replaced), got {other:?}"),
        }

        // Deleted.
        std::fs::remove_file(&path).unwrap();
        match store.check_file() {
            Err(StoreError::FileGone { what, .. }) => assert_eq!(what, "deleted"),
            other => panic!("expected FileGone(deleted), got {other:?}"),
        }
    }
}
