//! Chaos, bounded to about two minutes: while the simulated line changes state (running,
//! stopped, faulted) the harness stops and starts mosquitto, SIGKILLs and restarts the daemon,
//! and takes the PLC off the network, in a seeded random order. At the end every event
//! committed to the database has reached the subscriber, `seq` has no gap within the stream,
//! and duplicates are at most `max_inflight` per disruption (SPEC §5).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::line::BAGGER;
use common::rig::{Rig, RigOptions};
use common::{assert_gapless, wait_for, DaemonProcess};
use ms5_edge::sim::Override;
use ms5_edge::store::DB_FILE;

const MAX_INFLIGHT: usize = 8;
const CHAOS_FOR: Duration = Duration::from_secs(75);

/// The highest `seq` ever committed (rows may already be acknowledged and gone).
fn committed(data: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(
        data.join(DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|db| {
        db.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
            [],
            |r| r.get(0),
        )
    })
    .unwrap_or(0)
}

/// Lets the line run: chaos needs time to pass, this is the workload, not synchronisation.
async fn let_the_line_run(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn machine(rng: &mut fastrand::Rng) -> Override {
    match rng.u8(0..3) {
        0 => Override {
            running: Some(true),
            fault_words: Some([0; 4]),
            ..Override::default()
        },
        1 => Override {
            running: Some(false),
            fault_words: Some([0; 4]),
            ..Override::default()
        },
        _ => Override {
            running: Some(false),
            fault_words: Some([1 << rng.u16(0..2), 0, 0, 0]),
            ..Override::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_broker_restarts_kill_9_and_plc_loss_every_committed_event_arrives_once_in_order() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    let bagger = machine(&mut rng);
    let mut rig = Rig::prepare(RigOptions {
        bagger: Some(bagger),
        mqtt_extra: format!("max_inflight = {MAX_INFLIGHT}\n"),
        ..RigOptions::default()
    })
    .await;
    let (sub, data) = (rig.sub.clone(), rig.data.clone());
    let (config_path, dir) = (rig.config_path.clone(), rig.dir.path().to_path_buf());
    let mut incarnation = 1;
    let start = |n: usize| DaemonProcess::start(&config_path, &dir.join(format!("daemon{n}.log")));
    let mut daemon = start(incarnation);
    sub.wait("first events", Duration::from_secs(20), |m| {
        m.iter().any(|r| r.payload["seq"].as_i64().is_some())
    })
    .await;

    let mut disruptions = 0usize;
    let mut log = Vec::new();
    let began = Instant::now();
    while began.elapsed() < CHAOS_FOR {
        rig.line.bagger.set_override(machine(&mut rng));
        rig.line.loader.set_override(machine(&mut rng));
        match rng.u8(0..5) {
            0 => {
                log.push("broker restart");
                rig.broker.stop();
                disruptions += 1;
                let_the_line_run(rng.u64(300..3000)).await;
                rig.line.bagger.set_override(machine(&mut rng));
                let_the_line_run(rng.u64(300..1500)).await;
                rig.broker.restart().await;
            }
            1 => {
                log.push("daemon kill -9");
                daemon.kill9();
                disruptions += 1;
                incarnation += 1;
                daemon = start(incarnation);
            }
            2 => {
                log.push("broker down, daemon kill -9, broker up");
                rig.broker.stop();
                disruptions += 1;
                let_the_line_run(rng.u64(500..2000)).await;
                daemon.kill9();
                disruptions += 1;
                incarnation += 1;
                daemon = start(incarnation);
                let_the_line_run(rng.u64(500..2000)).await;
                rig.broker.restart().await;
            }
            3 => {
                log.push("PLC offline");
                rig.line.bagger.set_online(false);
                let_the_line_run(rng.u64(1000..3000)).await;
                rig.line.bagger.set_online(true);
            }
            _ => log.push("quiet"),
        }
        let_the_line_run(rng.u64(200..2000)).await;
    }
    rig.line.bagger.set_override(Override {
        running: Some(false),
        fault_words: Some([0; 4]),
        ..Override::default()
    });
    rig.line.loader.set_override(Override::default());

    // Everything committed up to now must arrive.
    let last_committed = committed(&data);
    assert!(
        last_committed > 50,
        "the chaos produced events: {last_committed}"
    );
    let want = last_committed;
    sub.wait("every committed event", Duration::from_secs(60), |m| {
        let seqs: std::collections::BTreeSet<i64> = m
            .iter()
            .filter(|r| !r.retain)
            .filter_map(|r| r.payload["seq"].as_i64())
            .collect();
        (1..=want).all(|s| seqs.contains(&s))
    })
    .await;
    let events = sub.events();
    let (first, last, duplicates) = assert_gapless(&events);
    assert_eq!(first, 1);
    assert!(last >= last_committed);
    assert!(
        duplicates <= MAX_INFLIGHT * disruptions,
        "{duplicates} duplicates for {disruptions} disruptions (max_inflight {MAX_INFLIGHT}); seed {seed}: {log:?}"
    );
    let states = events
        .iter()
        .filter(|e| e["type"] == "ms5.state.changed" && e["equipment"] == BAGGER)
        .count();
    assert!(states >= 5, "the line changed state under chaos: {states}");
    eprintln!(
        "chaos seed {seed}: {} events, {states} bagger state changes, {disruptions} disruptions, \
         {duplicates} duplicates, {incarnation} daemon runs; {log:?}",
        last
    );
    wait_for(
        "the daemon to still be running",
        Duration::from_secs(1),
        || daemon.child.try_wait().ok().flatten().is_none(),
    )
    .await;
    assert!(daemon.terminate().success());
}
