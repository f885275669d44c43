//! SPEC §7 "Safety is never planned away", end to end: a critical safety fault on a machine in
//! a planned stop started by command raises its andon on `P/{equipment}/andon`, through the
//! daemon, a simulated Modbus PLC and a real mosquitto.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::Duration;

use common::line::{BAGGER, PREFIX};
use common::rig::{cmd_topic, Rig, RigOptions};
use common::Received;
use ms5_edge::sim::Override;
use serde_json::json;

/// Bit 2 of the bagger's first fault word.
const E_STOP_WORDS: [u16; 4] = [0x0004, 0, 0, 0];

fn of_type(m: &[Received], ty: &str) -> Vec<Received> {
    m.iter()
        .filter(|r| !r.retain && r.payload["type"] == ty && r.payload["equipment"] == BAGGER)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_safety_fault_in_a_commanded_planned_stop_raises_its_andon() {
    let mut rig = Rig::start(RigOptions {
        // Scenario second 10: the bagger runs (its own film break would begin at 60 s, but the
        // override below takes the coil and the fault words over well before).
        bagger_at_ms: Some(10_000),
        // The demo line, with an emergency stop on the bagger: safety, critical, andon.
        config_edit: Some(Box::new(|text, _| {
            text.replacen(
                "\n[[equipment]]\ncode = \"BP01.PACK.BAG1.BL\"",
                "\n[[equipment.fault]]\nbit = 2\ncode = \"E_STOP\"\ndescription = \"Emergency stop pressed\"\n\
                 category = \"safety\"\nseverity = \"critical\"\nandon = true\n\n\
                 [[equipment]]\ncode = \"BP01.PACK.BAG1.BL\"",
                1,
            )
        })),
        ..RigOptions::default()
    })
    .await;
    assert!(
        rig.config_text.contains("E_STOP"),
        "the fault was added to the config"
    );
    let (sub, bagger) = (rig.sub.clone(), &rig.line.bagger);

    sub.wait("the bagger to run", Duration::from_secs(30), |m| {
        of_type(m, "ms5.state.changed")
            .iter()
            .any(|r| r.payload["data"]["to"] == "running")
    })
    .await;

    let reply = rig
        .command_within(
            BAGGER,
            "planned-stop/start",
            json!({"request_id":"ps1","by":"lead","reason":"cleaning"}),
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(reply["ok"], true);

    // The machine stops in its planned stop, and the emergency stop is pressed.
    bagger.set_override(Override {
        running: Some(false),
        fault_words: Some(E_STOP_WORDS),
        ..Override::default()
    });
    sub.wait("the safety andon", Duration::from_secs(30), |m| {
        !of_type(m, "ms5.andon.raised").is_empty()
    })
    .await;
    let m = sub.snapshot();
    let raised = of_type(&m, "ms5.andon.raised");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].topic, format!("{PREFIX}/{BAGGER}/andon"));
    let a = &raised[0].payload["data"];
    assert_eq!(a["reason_code"], "E_STOP");
    assert_eq!(a["priority"], "critical");
    assert_eq!(a["cause"], "fault");
    assert_eq!(a["level"], 1);
    // The stop is still the planned stop: planned downtime, no unplanned downtime.
    assert!(of_type(&m, "ms5.state.changed")
        .iter()
        .any(|r| r.payload["data"]["to"] == "planned_stop"));
    let started = of_type(&m, "ms5.downtime.started");
    let planned: Vec<_> = started
        .iter()
        .filter(|r| r.payload["data"]["planned"] == true)
        .collect();
    assert_eq!(planned.len(), 1, "{started:?}");
    assert_eq!(a["downtime_id"], planned[0].payload["data"]["downtime_id"]);
    assert!(started.iter().all(|r| r.payload["data"]["planned"] == true));

    // The guard is reset while the machine stays stopped: the andon resolves by itself; the
    // lead ends the planned stop, which says who ended it.
    bagger.set_override(Override {
        running: Some(false),
        fault_words: Some([0; 4]),
        ..Override::default()
    });
    sub.wait("the andon to resolve", Duration::from_secs(30), |m| {
        !of_type(m, "ms5.andon.resolved").is_empty()
    })
    .await;
    assert_eq!(
        of_type(&sub.snapshot(), "ms5.andon.resolved")[0].payload["data"]["resolved_by"],
        "auto"
    );
    rig.publish(
        &cmd_topic(BAGGER, "planned-stop/end"),
        json!({"request_id":"ps2","by":"lead"}).to_string(),
    )
    .await;
    sub.wait(
        "the planned downtime to end",
        Duration::from_secs(15),
        |m| {
            of_type(m, "ms5.downtime.ended")
                .iter()
                .any(|r| r.payload["data"]["planned"] == true)
        },
    )
    .await;
    let ended = of_type(&sub.snapshot(), "ms5.downtime.ended");
    let planned_end = ended
        .iter()
        .find(|r| r.payload["data"]["planned"] == true)
        .unwrap();
    assert_eq!(planned_end.payload["data"]["ended_by"], "lead");

    rig.stop().await;
}
