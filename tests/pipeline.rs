//! End to end, against real parts: the Modbus simulators over TCP, the daemon, a real SQLite
//! file and a real mosquitto on a free loopback port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::line::{hold_running, BAGGER, PREFIX};
use common::rig::{Rig, RigOptions};
use common::{assert_gapless, wait_for};
use ms5_edge::engine::MachineState;
use ms5_edge::store::ReadOnly;

fn state_events(events: &[serde_json::Value], equipment: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "ms5.state.changed" && e["equipment"] == equipment)
        .map(|e| {
            (
                e["data"]["from"].as_str().unwrap_or("").to_string(),
                e["data"]["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn is_rfc3339_millis_utc(s: &str) -> bool {
    // 2026-11-25T06:12:03.120Z
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[10] == b'T'
        && s.as_bytes()[19] == b'.'
        && s.parse::<jiff::Timestamp>().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn birth_telemetry_and_state_changes_arrive_as_cloudevents_with_consecutive_seq() {
    let mut rig = Rig::start(RigOptions {
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let sub = rig.sub.clone();

    // Birth: retained-capable status with the database's stream.
    sub.wait("birth on P/status", Duration::from_secs(15), |m| {
        m.iter()
            .any(|r| r.topic == format!("{PREFIX}/status") && r.payload["state"] == "online")
    })
    .await;
    // A real change on the PLC, observed through the daemon.
    rig.wait_state_after("running", 0, Duration::from_secs(15))
        .await;
    rig.line.bagger.set_override(hold_running(false));
    rig.wait_state_after("stopped", 0, Duration::from_secs(15))
        .await;
    sub.wait(
        "two telemetry messages per machine",
        Duration::from_secs(15),
        |m| {
            ["BP01.PACK.BAG1", "BP01.PACK.BAG1.BL"].iter().all(|eq| {
                m.iter()
                    .filter(|r| r.topic == format!("{PREFIX}/{eq}/telemetry"))
                    .count()
                    >= 2
            })
        },
    )
    .await;

    let messages = sub.snapshot();
    let birth = messages
        .iter()
        .find(|r| r.topic == format!("{PREFIX}/status"))
        .unwrap();
    let stream = birth.payload["stream"]
        .as_str()
        .expect("birth names the stream")
        .to_string();
    assert!(
        uuid::Uuid::parse_str(&stream).is_ok(),
        "stream is a UUID: {stream}"
    );
    assert_eq!(birth.payload["version"], env!("CARGO_PKG_VERSION"));

    let events = sub.events();
    let (first, _last, duplicates) = assert_gapless(&events);
    assert_eq!(first, 1, "a new database starts at seq 1");
    assert_eq!(duplicates, 0, "no disruption, no duplicates");
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "ms5-edge/bp01-demo");
        assert_eq!(e["datacontenttype"], "application/json");
        assert_eq!(e["stream"], stream.as_str());
        assert!(
            uuid::Uuid::parse_str(e["id"].as_str().unwrap()).is_ok(),
            "id: {e}"
        );
        assert!(
            is_rfc3339_millis_utc(e["time"].as_str().unwrap()),
            "time: {e}"
        );
        let ty = e["type"].as_str().unwrap();
        assert!(ty.starts_with("ms5."), "type: {ty}");
        let topic_kind = ty.trim_start_matches("ms5.").split('.').next().unwrap();
        assert!(
            [
                "telemetry",
                "state",
                "downtime",
                "andon",
                "oee",
                "context",
                "job",
                "changeover"
            ]
            .contains(&topic_kind),
            "unexpected type {ty}"
        );
    }
    let change = events
        .iter()
        .find(|e| e["type"] == "ms5.state.changed" && e["data"]["to"] == "stopped")
        .unwrap();
    assert_eq!(change["data"]["from"], "running");
    assert_eq!(
        change["data"]["at"], change["time"],
        "a state change happens at its tick time"
    );
    let telemetry = events
        .iter()
        .find(|e| e["type"] == "ms5.telemetry")
        .unwrap();
    for signal in [
        "running",
        "speed",
        "good_count",
        "reject_count",
        "faults",
        "motor_temp_c",
    ] {
        assert!(
            telemetry["data"]["values"].get(signal).is_some(),
            "telemetry lacks {signal}: {telemetry}"
        );
        assert_eq!(telemetry["data"]["quality"][signal], "good");
    }
    assert!(
        telemetry["data"]["values"]["faults"].is_array(),
        "fault words as integers"
    );
    rig.stop_within(Duration::from_secs(10)).await;
    sub.wait(
        "offline status on clean shutdown",
        Duration::from_secs(10),
        |m| {
            m.iter()
                .any(|r| r.topic == format!("{PREFIX}/status") && r.payload["state"] == "offline")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_leaves_no_seq_gap() {
    let mut rig = Rig::start(RigOptions {
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let sub = rig.sub.clone();
    sub.wait("bagger running", Duration::from_secs(15), |m| {
        m.iter()
            .any(|r| r.topic == format!("{PREFIX}/{BAGGER}/state"))
    })
    .await;

    rig.broker.stop();
    wait_for(
        "the uplink to notice the outage",
        Duration::from_secs(30),
        || !rig.observers().uplink.connected.load(Ordering::Relaxed),
    )
    .await;
    // States change while the broker is away: stop, run, stop.
    for running in [false, true, false] {
        rig.line.bagger.set_override(hold_running(running));
        let want = if running {
            MachineState::Running
        } else {
            MachineState::Stopped
        };
        wait_for(
            "the daemon to see the change",
            Duration::from_secs(10),
            || rig.state_of(BAGGER) == Some(want),
        )
        .await;
    }
    let committed = rig.last_seq();
    assert!(committed > 0);
    rig.broker.restart().await;

    sub.wait("every committed event", Duration::from_secs(60), |m| {
        m.iter()
            .any(|r| r.payload["seq"].as_i64().is_some_and(|s| s >= committed))
    })
    .await;
    let events = sub.events();
    let (first, last, _dups) = assert_gapless(&events);
    assert_eq!(first, 1);
    assert!(last >= committed);
    let transitions = state_events(&events, BAGGER);
    let tail: Vec<_> = transitions.iter().rev().take(3).rev().cloned().collect();
    assert_eq!(
        tail,
        vec![
            ("running".to_string(), "stopped".to_string()),
            ("stopped".to_string(), "running".to_string()),
            ("running".to_string(), "stopped".to_string()),
        ],
        "all three changes made during the outage arrive, in order"
    );
    rig.stop_within(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_events_survive_kill_9_of_the_daemon_while_the_broker_is_down() {
    let mut rig = Rig::prepare(RigOptions {
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let (sub, data) = (rig.sub.clone(), rig.data.clone());
    let mut daemon = rig.spawn("daemon1.log");
    sub.wait("first events", Duration::from_secs(20), |m| {
        m.iter()
            .any(|r| r.topic == format!("{PREFIX}/{BAGGER}/state"))
    })
    .await;
    let stream = sub.events()[0]["stream"].as_str().unwrap().to_string();

    rig.broker.stop();
    rig.line.bagger.set_override(hold_running(false));
    // Wait until the stop is committed to the outbox, then a little more buffering.
    let db = || ReadOnly::open(&data).and_then(|r| r.snapshot());
    wait_for(
        "the stop to be buffered in the outbox",
        Duration::from_secs(20),
        || {
            db().is_ok_and(|s| {
                s.equipment
                    .iter()
                    .any(|e| e.equipment == BAGGER && e.state == MachineState::Stopped)
                    && s.outbox_depth >= 3
            })
        },
    )
    .await;
    daemon.kill9();
    let buffered = db().expect("database readable after kill -9");
    assert!(buffered.outbox_depth >= 3);
    let max_buffered = buffered.outbox_max_seq.expect("rows waiting");

    rig.broker.restart().await;
    let mut daemon = rig.spawn("daemon2.log");
    sub.wait("the buffered events", Duration::from_secs(60), |m| {
        m.iter()
            .any(|r| r.payload["seq"].as_i64().is_some_and(|s| s >= max_buffered))
    })
    .await;
    let events = sub.events();
    assert_gapless(&events);
    assert!(
        events.iter().all(|e| e["stream"] == stream.as_str()),
        "same stream after restart"
    );
    assert!(
        state_events(&events, BAGGER).contains(&("running".into(), "stopped".into())),
        "the stop buffered before kill -9 arrives"
    );
    let status = daemon.terminate();
    assert!(
        status.success(),
        "SIGTERM is a clean exit: {status:?}\n{}",
        daemon.log_text()
    );
}
