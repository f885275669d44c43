//! A full database (`SQLITE_FULL`, produced with `PRAGMA max_page_count` through the store's
//! test knob): polling and the engine go on, events wait in memory, and they are committed and
//! delivered, in `seq` order, once space returns (here: when the broker is back and the uplink
//! frees the outbox pages).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::Duration;

use common::line::{hold_running, BAGGER, PREFIX};
use common::rig::{Rig, RigOptions};
use common::{assert_gapless, wait_for};
use ms5_edge::store::DB_FILE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_never_stops_polling_and_its_events_are_delivered_when_space_returns() {
    let mut rig = Rig::prepare(RigOptions {
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let (sub, data) = (rig.sub.clone(), rig.data.clone());

    // A first run creates the database; its size decides the page limit of the second run.
    let mut first = rig.spawn("daemon1.log");
    rig.wait_state_after("running", 0, Duration::from_secs(20))
        .await;
    assert!(first.terminate().success());
    let pages: i64 = rusqlite::Connection::open(data.join(DB_FILE))
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();

    // The broker goes away and the outbox fills the few pages left.
    rig.broker.stop();
    let knob = [("MS5_EDGE_TEST_MAX_PAGE_COUNT", (pages + 16).to_string())];
    let mut daemon = rig.spawn_with_env("daemon2.log", &knob);
    wait_for("the database to be full", Duration::from_secs(90), || {
        daemon.log_text().contains("cannot commit to the database")
    })
    .await;
    let log = daemon.log_text();
    assert!(
        log.contains("full"),
        "the error names the full database:\n{log}"
    );

    // Polling and the engine go on: a stop while the disk is full.
    let line = &rig.line;
    let served = line.bagger.requests_served();
    line.bagger.set_override(hold_running(false));
    wait_for(
        "polls while the disk is full",
        Duration::from_secs(10),
        || line.bagger.requests_served() >= served + 6,
    )
    .await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    // `status` agrees: the heartbeat alone still fits while the queue waits in memory.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
        .args(["status", "-c"])
        .arg(&rig.config_path)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "status calls the daemon running while the disk is full:\n{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // Space returns: the broker is back, acknowledged rows free their pages.
    rig.broker.restart().await;
    sub.wait(
        "the stop made while the disk was full",
        Duration::from_secs(60),
        |m| {
            m.iter().any(|r| {
                r.topic == format!("{PREFIX}/{BAGGER}/state")
                    && r.payload["data"]["from"] == "running"
                    && r.payload["data"]["to"] == "stopped"
            })
        },
    )
    .await;
    wait_for("the recovery to be logged", Duration::from_secs(10), || {
        daemon.log_text().contains("database accepts writes again")
    })
    .await;
    let events = sub.events();
    let (first_seq, _, _) = assert_gapless(&events);
    assert_eq!(
        first_seq, 1,
        "one stream from seq 1, no gap through the full disk"
    );
    assert!(daemon.terminate().success());
}
