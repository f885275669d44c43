//! The engine end to end: the simulators' scenario through the daemon to a real mosquitto;
//! downtime, andons, commands and the shift OEE read back from MQTT.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::Duration;

use common::line::{BAGGER, PREFIX};
use common::rig::{replies_in, ClientOptions, Rig, RigOptions};
use common::Subscriber;
use ms5_edge::sim::Override;
use rumqttc::QoS;
use serde_json::{json, Value};

const LOADER: &str = "BP01.PACK.BAG1.BL";

fn events_of(sub: &Subscriber, ty: &str, equipment: &str) -> Vec<Value> {
    in_messages(&sub.snapshot(), ty, equipment)
}

/// The same, over messages handed to a `Subscriber::wait` condition (which holds the lock).
fn in_messages(m: &[common::Received], ty: &str, equipment: &str) -> Vec<Value> {
    m.iter()
        .filter(|r| !r.retain && r.payload["type"] == ty && r.payload["equipment"] == equipment)
        .map(|r| r.payload.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_line_yields_downtime_andons_commands_and_a_consistent_shift_oee() {
    let mut rig = Rig::start(RigOptions {
        // Bagger from scenario second 50: its 40 s FILM_BREAK stop begins 10 s in.
        // Loader from 0: stopped 8–43 s, JAM appearing 4 s into the stop.
        bagger_at_ms: Some(50_000),
        config_edit: Some(Box::new(|text, _| {
            text.replacen(
                "\n[[equipment]]\ncode = \"BP01.PACK.BAG1.BL\"",
                "\n[equipment.andon]\nraise_after_s = { high = 5 }\nescalate_after_s = [10, 20]\n\n[[equipment]]\ncode = \"BP01.PACK.BAG1.BL\"",
                1,
            )
        })),
        ..RigOptions::default()
    })
    .await;
    let sub = rig.sub.clone();

    // Bagger: FILM_BREAK downtime with a fast andon that escalates twice, then auto-resolves.
    sub.wait(
        "the bagger's film-break downtime to end and its andon to resolve",
        Duration::from_secs(90),
        // Both come from the same tick, downtime first: wait for the second as well.
        |m| {
            !in_messages(m, "ms5.downtime.ended", BAGGER).is_empty()
                && !in_messages(m, "ms5.andon.resolved", BAGGER).is_empty()
        },
    )
    .await;
    let started = events_of(&sub, "ms5.downtime.started", BAGGER);
    assert_eq!(started.len(), 1, "{started:?}");
    let s = &started[0]["data"];
    assert_eq!(s["reason_code"], "FILM_BREAK");
    assert_eq!(s["category"], "material");
    assert_eq!(s["planned"], false);
    let ended = &events_of(&sub, "ms5.downtime.ended", BAGGER)[0]["data"];
    assert_eq!(ended["downtime_id"], s["downtime_id"]);
    let d = ended["duration_s"].as_f64().unwrap();
    assert!(
        (39.0..=41.0).contains(&d),
        "the scenario's stop lasts 40 s, got {d}"
    );
    let raised = events_of(&sub, "ms5.andon.raised", BAGGER);
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0]["data"]["priority"], "high");
    let levels: Vec<_> = events_of(&sub, "ms5.andon.escalated", BAGGER)
        .iter()
        .map(|e| e["data"]["level"].as_u64().unwrap())
        .collect();
    assert_eq!(levels, vec![2, 3]);
    let resolved = events_of(&sub, "ms5.andon.resolved", BAGGER);
    assert_eq!(resolved[0]["data"]["resolved_by"], "auto");

    // Loader: one stop, reason JAM (the first fault to appear during the stop).
    sub.wait(
        "the loader's jam downtime to end",
        Duration::from_secs(30),
        |m| {
            !in_messages(m, "ms5.downtime.ended", LOADER)
                .iter()
                .all(|e| e["data"]["minor"] == true)
        },
    )
    .await;
    let loader_down: Vec<_> = events_of(&sub, "ms5.downtime.ended", LOADER)
        .into_iter()
        .filter(|e| e["data"]["minor"] == false)
        .collect();
    assert_eq!(loader_down[0]["data"]["reason_code"], "JAM");
    let d = loader_down[0]["data"]["duration_s"].as_f64().unwrap();
    assert!((34.0..=36.0).contains(&d), "the loader stops 35 s, got {d}");

    // Commands: one reply each; a valid job assignment publishes a retained context.
    let client = rig
        .client(ClientOptions::reconnecting(format!(
            "test-pub-{}",
            rig.broker.port
        )))
        .await;
    let cmd = |path: &str, body: Value| {
        let client = client.clone();
        let topic = format!("{PREFIX}/cmd/{path}");
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, body.to_string())
                .await
                .unwrap()
        }
    };
    cmd(
        &format!("{BAGGER}/job/assign"),
        json!({"request_id":"r1","by":"lead","job_id":"J-1001","target_quantity":5000}),
    )
    .await;
    cmd(
        &format!("{BAGGER}/job/start"),
        json!({"request_id":"r2","by":"lead","job_id":"J-9"}),
    )
    .await;
    cmd(
        &format!("{BAGGER}/andon/ack"),
        json!({"request_id":"r3","by":"lead"}),
    )
    .await;
    cmd("NOPE/job/start", json!({"request_id":"r4","by":"lead"})).await;
    client
        .publish(
            format!("{PREFIX}/cmd/{BAGGER}/job/start"),
            QoS::AtLeastOnce,
            false,
            "{oops",
        )
        .await
        .unwrap();
    sub.wait("five replies", Duration::from_secs(15), |m| {
        m.iter()
            .filter(|r| r.topic == format!("{PREFIX}/reply"))
            .count()
            >= 5
    })
    .await;
    let replies: Vec<Value> = replies_in(&sub.snapshot());
    let reply = |id: &str| {
        replies
            .iter()
            .find(|r| r["request_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(reply("r1")["ok"], true);
    assert_eq!(reply("r2")["ok"], false, "J-9 is not the assigned job");
    assert!(reply("r3")["error"].as_str().unwrap().contains("andon_id"));
    assert!(reply("r4")["error"]
        .as_str()
        .unwrap()
        .contains("unknown equipment"));
    let malformed = replies.iter().find(|r| r["request_id"].is_null()).unwrap();
    assert!(malformed["error"].as_str().unwrap().contains("malformed"));
    sub.wait("the retained context", Duration::from_secs(10), |m| {
        m.iter().any(|r| {
            r.topic == format!("{PREFIX}/{BAGGER}/context")
                && r.payload["data"]["job_id"] == "J-1001"
        })
    })
    .await;
    assert_eq!(events_of(&sub, "ms5.job.assigned", BAGGER).len(), 1);

    // Freeze the bagger; the next snapshot's counts must equal the simulator's own counters.
    let baseline = events_of(&sub, "ms5.telemetry", BAGGER)[0]["data"]["values"]["good_count"]
        .as_u64()
        .unwrap();
    let bagger = &rig.line.bagger;
    let frozen = bagger.elapsed_ms();
    bagger.set_override(Override {
        elapsed_ms: Some(frozen),
        ..Override::default()
    });
    let image = bagger.image();
    let frozen_at = jiff::Timestamp::now().as_millisecond();
    sub.wait(
        "a snapshot after the freeze",
        Duration::from_secs(75),
        |m| {
            m.iter().any(|r| {
                r.payload["type"] == "ms5.oee.snapshot"
                    && r.payload["equipment"] == BAGGER
                    && r.payload["data"]["window_end"]
                        .as_str()
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                        .is_some_and(|t| t.as_millisecond() > frozen_at + 2_000)
            })
        },
    )
    .await;
    let snap = events_of(&sub, "ms5.oee.snapshot", BAGGER).pop().unwrap()["data"].clone();
    assert_eq!(
        snap["good_count"].as_u64().unwrap(),
        u64::from(image.good_count) - baseline,
        "{snap}"
    );
    let pbt = snap["planned_busy_time_s"].as_f64().unwrap();
    let good = snap["good_count"].as_f64().unwrap();
    assert!(
        (snap["oee"].as_f64().unwrap() - 0.5 * good / pbt).abs() < 1e-9,
        "identity: {snap}"
    );
    let unplanned = snap["unplanned_downtime_s"].as_f64().unwrap();
    assert!(
        (39.0..=41.0).contains(&unplanned),
        "the 40 s film break: {snap}"
    );
    for k in ["availability", "quality"] {
        let v = snap[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k}: {snap}");
    }

    rig.stop().await;
}
