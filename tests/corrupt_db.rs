//! A database damaged on disk: moved aside (kept byte for byte), a new stream begins, the
//! daemon runs, and the event is reported in `status` and `P/status`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::Duration;

use common::line::{hold_running, PREFIX};
use common::rig::{Rig, RigOptions};
use ms5_edge::store::{ReadOnly, Store, DB_FILE};

/// Overwrites every page but the first (the schema stays readable, the tables do not).
fn scribble_over_pages(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).expect("database file");
    assert!(bytes.len() > 8192, "a database with more than two pages");
    for (i, b) in bytes[4096..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0x5A;
    }
    std::fs::write(path, bytes).unwrap();
}

fn corrupt_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_file_that_is_not_a_database_is_moved_aside_and_a_new_stream_begins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let garbage = b"this is not SQLite, it is what a torn write left behind".repeat(200);
    std::fs::write(&path, &garbage).unwrap();

    let store = Store::open(dir.path()).expect("a new database replaces the broken one");
    let moved = corrupt_files(dir.path());
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        std::fs::read(&moved[0]).unwrap(),
        garbage,
        "kept byte for byte"
    );
    assert!(uuid::Uuid::parse_str(store.stream()).is_ok());
    let recovered = store.health(0).recovered.expect("the recovery is reported");
    assert_eq!(recovered.moved_to, moved[0].display().to_string());
    drop(store);
    // Once recovered, the next start opens the new database normally.
    let again = Store::open(dir.path()).unwrap();
    assert_eq!(corrupt_files(dir.path()).len(), 1, "nothing else moved");
    assert!(again.health(0).recovered.is_some(), "the report persists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_corrupted_on_disk_is_moved_aside_and_the_daemon_runs_on_a_new_stream() {
    let rig = Rig::prepare(RigOptions {
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let (sub, data) = (&rig.sub, &rig.data);

    let mut first = rig.spawn("daemon1.log");
    sub.wait(
        "events of the first database",
        Duration::from_secs(20),
        |m| {
            m.iter()
                .filter(|r| r.payload["seq"].as_i64().is_some())
                .count()
                >= 3
        },
    )
    .await;
    let old_stream = sub.events()[0]["stream"].as_str().unwrap().to_string();
    assert!(first.terminate().success());
    let db_path = data.join(DB_FILE);
    scribble_over_pages(&db_path);
    let damaged = std::fs::read(&db_path).unwrap();

    let mut second = rig.spawn("daemon2.log");
    sub.wait("events of a new stream", Duration::from_secs(20), |m| {
        m.iter().any(|r| {
            r.payload["seq"].as_i64().is_some() && r.payload["stream"] != old_stream.as_str()
        })
    })
    .await;
    sub.wait(
        "P/status reporting the recovery",
        Duration::from_secs(20),
        |m| {
            m.iter().any(|r| {
                r.topic == format!("{PREFIX}/status")
                    && r.payload["health"]["store"]["recovered"]["moved_to"].is_string()
            })
        },
    )
    .await;

    let moved = corrupt_files(data);
    let main: Vec<_> = moved
        .iter()
        .filter(|p| {
            !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
        })
        .collect();
    assert_eq!(main.len(), 1, "{moved:?}");
    assert_eq!(
        std::fs::read(main[0]).unwrap(),
        damaged,
        "the damaged file is kept as it was"
    );
    let new_events: Vec<_> = sub
        .events()
        .into_iter()
        .filter(|e| e["stream"] != old_stream.as_str())
        .collect();
    let (first_seq, _, _) = common::assert_gapless(&new_events);
    assert_eq!(first_seq, 1, "the new stream starts at seq 1");
    let snap = ReadOnly::open(data).unwrap().snapshot().unwrap();
    assert_ne!(snap.stream, old_stream);
    assert!(snap.recovered.is_some(), "status shows the recovery");
    let log = second.log_text();
    assert!(log.contains("DATABASE CORRUPT"), "logged loudly:\n{log}");
    assert!(
        second.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    assert!(second.terminate().success());
}
