//! The database file deleted or replaced under the running daemon (SPEC §7 "The database
//! file"): the daemon logs it and exits with status 3 within 5 s, so that systemd restarts it;
//! the restart begins a new database and a new stream, with any `-wal`/`-shm` left behind moved
//! aside rather than replayed into the new file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::line::{config_text, hold_running, line};
use common::{wait_for, DaemonProcess};
use ms5_edge::store::{ReadOnly, DB_FILE};

/// The stream of the database in `data`, once the daemon has committed a heartbeat.
fn committed_stream(data: &Path) -> Option<String> {
    let snap = ReadOnly::open(data).ok()?.snapshot().ok()?;
    snap.heartbeat_ms.map(|_| snap.stream)
}

/// Waits (polling the child, bounded) for the daemon to exit; returns its exit code and how
/// long it took.
async fn exit_within(daemon: &mut DaemonProcess, limit: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let mut status = None;
    wait_for("the daemon to exit", limit, || {
        status = daemon.child.try_wait().ok().flatten();
        status.is_some()
    })
    .await;
    (status.and_then(|s| s.code()), started.elapsed())
}

async fn start_and_wait_for_stream(
    config: &Path,
    data: &Path,
    log: &Path,
) -> (DaemonProcess, String) {
    let daemon = DaemonProcess::start(config, log);
    let mut stream = None;
    wait_for("the daemon to commit", Duration::from_secs(20), || {
        stream = committed_stream(data);
        stream.is_some()
    })
    .await;
    (daemon, stream.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_deleted_under_the_daemon_makes_it_exit_3_and_the_restart_begins_a_new_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let line = line().await;
    line.bagger.set_override(hold_running(true));
    let config = dir.path().join("ms5-edge.toml");
    std::fs::write(&config, config_text(&line, &data, None, "")).unwrap();

    let (mut first, old_stream) =
        start_and_wait_for_stream(&config, &data, &dir.path().join("daemon1.log")).await;
    std::fs::remove_file(data.join(DB_FILE)).unwrap();

    let (code, took) = exit_within(&mut first, Duration::from_secs(5)).await;
    let log = first.log_text();
    assert_eq!(code, Some(3), "exit status 3 after {took:?}:\n{log}");
    assert!(log.contains("DATABASE FILE GONE"), "logged loudly:\n{log}");
    assert!(log.contains("deleted"), "names what happened:\n{log}");

    // What a restart by systemd finds: no database, maybe its -wal/-shm. Leave a WAL there
    // for certain, as a crash at the wrong moment would.
    let wal = data.join(format!("{DB_FILE}-wal"));
    if !wal.exists() {
        std::fs::write(&wal, b"the WAL of the deleted database").unwrap();
    }
    let (mut second, new_stream) =
        start_and_wait_for_stream(&config, &data, &dir.path().join("daemon2.log")).await;
    assert_ne!(new_stream, old_stream, "a new database is a new stream");
    let moved: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_string_lossy().contains(".corrupt-") && p.to_string_lossy().ends_with("-wal")
        })
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "the orphaned WAL is moved aside, not replayed: {moved:?}"
    );
    assert!(
        second.log_text().contains("DATABASE MISSING"),
        "{}",
        second.log_text()
    );
    assert!(
        second.child.try_wait().unwrap().is_none(),
        "the restart runs"
    );
    assert!(second.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_replaced_under_the_daemon_makes_it_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let line = line().await;
    let config = dir.path().join("ms5-edge.toml");
    std::fs::write(&config, config_text(&line, &data, None, "")).unwrap();

    let (mut daemon, _) =
        start_and_wait_for_stream(&config, &data, &dir.path().join("daemon.log")).await;
    // A restore from backup done the wrong way: a copy renamed over the live file.
    let copy = data.join("restored.db");
    std::fs::copy(data.join(DB_FILE), &copy).unwrap();
    std::fs::rename(&copy, data.join(DB_FILE)).unwrap();

    let (code, took) = exit_within(&mut daemon, Duration::from_secs(5)).await;
    let log = daemon.log_text();
    assert_eq!(code, Some(3), "exit status 3 after {took:?}:\n{log}");
    assert!(log.contains("replaced"), "names what happened:\n{log}");
}
