//! The command gate on a real broker: only `P/cmd/#` is listened to; oversized, malformed and
//! flooding commands get one `ok:false` reply naming the problem, never reach the engine, and
//! change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::line::{hold_running, BAGGER, PREFIX};
use common::rig::{Rig, RigOptions};
use common::wait_for;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_refused_with_a_reason_and_change_nothing() {
    let mut rig = Rig::start(RigOptions {
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    rig.wait_state_after("running", 0, Duration::from_secs(20))
        .await;
    let sub = &rig.sub;
    let observers = rig.observers().clone();
    let seq_before = observers.view.borrow().last_seq;
    let states_before = observers.view.borrow().machines.clone();
    let client = rig.publisher().await;

    // Not a command topic: ignored, no reply.
    for topic in [
        format!("{PREFIX}/cmdx/{BAGGER}/andon/ack"),
        format!("{PREFIX}/{BAGGER}/andon/ack"),
    ] {
        client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                r#"{"request_id":"wrong-topic"}"#,
            )
            .await
            .unwrap();
    }
    let cmd = |c: &str| format!("{PREFIX}/cmd/{BAGGER}/{c}");
    let oversized = format!(
        r#"{{"request_id":"big","by":"x","note":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    client
        .publish(cmd("context"), QoS::AtLeastOnce, false, oversized)
        .await
        .unwrap();
    client
        .publish(cmd("andon/ack"), QoS::AtLeastOnce, false, "{not json")
        .await
        .unwrap();
    client
        .publish(cmd("andon/ack"), QoS::AtLeastOnce, false, r#"{"by":"x"}"#)
        .await
        .unwrap();
    client
        .publish(
            cmd("andon/ack"),
            QoS::AtLeastOnce,
            false,
            r#"["request_id"]"#,
        )
        .await
        .unwrap();
    client
        .publish(
            format!("{PREFIX}/cmd/{BAGGER}"),
            QoS::AtLeastOnce,
            false,
            r#"{"request_id":"no-command"}"#,
        )
        .await
        .unwrap();
    // A flood: 40 at once for one equipment, more than the bucket holds.
    for n in 0..40 {
        client
            .publish(
                cmd("andon/ack"),
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"request_id":"flood-{n}","by":"x","andon_id":"none"}}"#),
            )
            .await
            .unwrap();
    }
    sub.wait("a reply to every command", Duration::from_secs(20), |m| {
        m.iter()
            .filter(|r| r.topic == format!("{PREFIX}/reply"))
            .count()
            >= 45
    })
    .await;
    // Give a stray reply (a second one to the same command) the time to show up: the marker
    // below goes through the same connection and queue, so it arrives after any stray reply.
    client
        .publish(
            cmd("andon/ack"),
            QoS::AtLeastOnce,
            false,
            r#"{"request_id":"marker","by":"x"}"#,
        )
        .await
        .unwrap();
    wait_for("the marker's reply", Duration::from_secs(20), || {
        rig.replies().iter().any(|r| r["request_id"] == "marker")
    })
    .await;

    let all = rig.replies();
    let error_of = |id: Option<&str>, needle: &str| {
        all.iter().any(|r| {
            r["ok"] == false
                && r["request_id"].as_str() == id
                && r["error"].as_str().is_some_and(|e| e.contains(needle))
        })
    };
    assert!(error_of(None, "too large"), "oversized refused: {all:#?}");
    assert!(error_of(None, "invalid JSON"), "malformed refused");
    assert!(
        error_of(None, "request_id is required"),
        "missing request_id refused"
    );
    assert!(error_of(None, "JSON object"), "non-object refused");
    assert!(
        error_of(Some("no-command"), "bad command name"),
        "topic without command refused"
    );
    assert!(
        !all.iter().any(|r| r["request_id"] == "wrong-topic"),
        "wrong topics get no reply"
    );
    let limited = all
        .iter()
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("rate limited"))
        })
        .count();
    assert!(limited >= 15, "the flood is rate limited: {limited}");
    for n in 0..40 {
        let id = format!("flood-{n}");
        let count = all
            .iter()
            .filter(|r| r["request_id"] == id.as_str())
            .count();
        assert_eq!(count, 1, "exactly one reply to {id}");
    }
    assert!(all.iter().all(|r| r["ok"] == false), "nothing was accepted");
    assert!(observers.uplink.commands_rejected.load(Ordering::Relaxed) >= 20);

    // Nothing changed: no event but telemetry since, and the same machine states.
    let events_since: Vec<_> = sub
        .events()
        .into_iter()
        .filter(|e| e["seq"].as_i64().is_some_and(|s| s > seq_before))
        .filter(|e| e["type"] != "ms5.telemetry" && e["type"] != "ms5.oee.snapshot")
        .collect();
    assert!(
        events_since.is_empty(),
        "commands changed something: {events_since:#?}"
    );
    assert_eq!(observers.view.borrow().machines, states_before);

    rig.stop_within(Duration::from_secs(10)).await;
}
