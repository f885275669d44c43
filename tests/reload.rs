//! SIGHUP reload, end to end: the daemon as a process, the Modbus simulators and a real
//! mosquitto. Open downtime, an open andon and a job context survive a reload that changes a
//! poll interval; an invalid file is refused and the daemon runs on with the old one; a reload
//! that removes an equipment closes its open downtime and andon "by reload" (SPEC §6).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::line::{fast_rules, BAGGER, PREFIX};
use common::rig::{Rig, RigOptions};
use common::{unsafe_kill, wait_for, DaemonProcess, Received, Subscriber};
use ms5_edge::sim::Override;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};

fn events_of(sub: &Subscriber, ty: &str, equipment: &str) -> Vec<Value> {
    sub.events()
        .into_iter()
        .filter(|e| e["type"] == ty && e["equipment"] == equipment)
        .collect()
}

/// Outbox events of `ty` for `equipment` among `msgs` (for conditions inside
/// [`Subscriber::wait`], which holds the message lock while it asks).
fn events_in(msgs: &[Received], ty: &str, equipment: &str) -> Vec<Value> {
    msgs.iter()
        .filter(|m| !m.retain && m.payload.get("seq").is_some())
        .filter(|m| m.payload["type"] == ty && m.payload["equipment"] == equipment)
        .map(|m| m.payload.clone())
        .collect()
}

fn stopped_with_film_break() -> Override {
    Override {
        running: Some(false),
        fault_words: Some([1, 0, 0, 0]),
        ..Override::default()
    }
}

async fn command(port: u16, path: &str, body: Value) {
    let mut opts = MqttOptions::new(format!("test-cmd-{port}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .publish(
            format!("{PREFIX}/cmd/{path}"),
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        )
        .await
        .unwrap();
    // Drive the client until the broker acknowledged the publish.
    let acked = async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_))) =
                eventloop.poll().await
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), acked)
        .await
        .expect("command acknowledged by the broker");
}

fn reload(daemon: &DaemonProcess, config: &Path, text: &str) {
    std::fs::write(config, text).unwrap();
    unsafe_kill(daemon.child.id(), "HUP");
}

/// "ms5-edge running" is logged once per pipeline: at start and after each applied reload.
fn pipelines_started(daemon: &DaemonProcess) -> usize {
    daemon.log_text().matches("ms5-edge running").count()
}

fn status_json(config: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
        .args(["status", "--json", "-c"])
        .arg(config)
        .output()
        .expect("run status");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_downtime_andon_and_job_context_survive_a_reload_and_an_invalid_file_is_refused() {
    let rig = Rig::prepare(RigOptions {
        bagger: Some(stopped_with_film_break()),
        config_edit: Some(Box::new(|text, _| fast_rules(&text))),
        ..RigOptions::default()
    })
    .await;
    let (sub, text, config) = (&rig.sub, &rig.config_text, &rig.config_path);
    let daemon = rig.spawn("daemon.log");
    eprintln!("daemon log: {}", daemon.log.display());

    sub.wait(
        "downtime and andon for the bagger",
        Duration::from_secs(30),
        |msgs| {
            !events_in(msgs, "ms5.downtime.started", BAGGER).is_empty()
                && !events_in(msgs, "ms5.andon.raised", BAGGER).is_empty()
        },
    )
    .await;
    command(
        rig.broker.port,
        &format!("{BAGGER}/job/assign"),
        json!({"request_id":"r1","by":"lead","job_id":"J-1001","target_quantity":5000}),
    )
    .await;
    sub.wait("the job's context", Duration::from_secs(10), |msgs| {
        msgs.iter()
            .any(|m| m.payload.to_string().contains("J-1001") && m.topic.contains("context"))
    })
    .await;
    let downtime_id =
        events_of(sub, "ms5.downtime.started", BAGGER)[0]["data"]["downtime_id"].clone();
    let andon_id = events_of(sub, "ms5.andon.raised", BAGGER)[0]["data"]["andon_id"].clone();

    // A valid change: the bagger is polled every 1000 ms instead of 500 ms.
    let slower = text.replacen("poll_interval_ms = 500", "poll_interval_ms = 1000", 1);
    assert_ne!(&slower, text);
    reload(&daemon, config, &slower);
    wait_for("the reload to apply", Duration::from_secs(20), || {
        pipelines_started(&daemon) == 2
    })
    .await;
    assert!(daemon.log_text().contains("reload: PLC changed"));
    let seen = sub.snapshot().len();
    sub.wait(
        "telemetry from the new pipeline",
        Duration::from_secs(20),
        |msgs| {
            msgs[seen..]
                .iter()
                .any(|m| m.payload["type"] == "ms5.telemetry" && m.payload["equipment"] == BAGGER)
        },
    )
    .await;
    // Nothing was closed or sent offline by the reload.
    let after: Vec<Value> = sub.snapshot()[seen..]
        .iter()
        .map(|m| m.payload.clone())
        .collect();
    for e in &after {
        let ty = e["type"].as_str().unwrap_or("");
        assert!(
            !(ty == "ms5.state.changed" && e["data"]["to"] == "offline"),
            "no offline transition on reload: {e}"
        );
        assert!(
            ty != "ms5.downtime.ended" && ty != "ms5.andon.resolved",
            "{e}"
        );
    }
    let status = status_json(config);
    assert!(
        status.to_string().contains("J-1001"),
        "the job context survives the reload: {status}"
    );

    // An invalid file: logged, old configuration kept, daemon runs on.
    reload(
        &daemon,
        config,
        &slower.replacen("poll_interval_ms = 1000", "poll_interval_ms = \"fast\"", 1),
    );
    wait_for("the rejected reload", Duration::from_secs(20), || {
        daemon
            .log_text()
            .contains("configuration reload rejected; the running configuration is kept")
    })
    .await;
    let seen = sub.snapshot().len();
    sub.wait(
        "telemetry after the refused reload",
        Duration::from_secs(20),
        |msgs| {
            msgs[seen..]
                .iter()
                .any(|m| m.payload["type"] == "ms5.telemetry" && m.payload["equipment"] == BAGGER)
        },
    )
    .await;
    assert_eq!(pipelines_started(&daemon), 2, "no new pipeline");

    // The machine runs again: the downtime and andon opened before the reload close now,
    // with the ids they had.
    rig.line.bagger.set_override(Override {
        running: Some(true),
        fault_words: Some([0, 0, 0, 0]),
        ..Override::default()
    });
    sub.wait("the downtime to end", Duration::from_secs(30), |msgs| {
        !events_in(msgs, "ms5.downtime.ended", BAGGER).is_empty()
            && !events_in(msgs, "ms5.andon.resolved", BAGGER).is_empty()
    })
    .await;
    let ended = &events_of(sub, "ms5.downtime.ended", BAGGER)[0]["data"];
    assert_eq!(ended["downtime_id"], downtime_id);
    let resolved = &events_of(sub, "ms5.andon.resolved", BAGGER)[0]["data"];
    assert_eq!(resolved["andon_id"], andon_id);
    assert_eq!(resolved["resolved_by"], "auto");
    common::assert_gapless(&sub.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_an_equipment_closes_its_downtime_and_andon_by_reload() {
    let rig = Rig::prepare(RigOptions {
        bagger: Some(stopped_with_film_break()),
        config_edit: Some(Box::new(|text, _| fast_rules(&text))),
        ..RigOptions::default()
    })
    .await;
    let (sub, text, config) = (&rig.sub, &rig.config_text, &rig.config_path);
    let daemon = rig.spawn("daemon.log");
    sub.wait("downtime and andon", Duration::from_secs(30), |msgs| {
        !events_in(msgs, "ms5.downtime.started", BAGGER).is_empty()
            && !events_in(msgs, "ms5.andon.raised", BAGGER).is_empty()
    })
    .await;

    // Rename the bagger: to the daemon, BP01.PACK.BAG1 is removed and BP01.PACK.BAG2 added.
    let renamed = text.replace(&format!("code = \"{BAGGER}\""), "code = \"BP01.PACK.BAG2\"");
    assert_ne!(&renamed, text);
    reload(&daemon, config, &renamed);
    sub.wait(
        "the removal's closing events",
        Duration::from_secs(30),
        |msgs| {
            !events_in(msgs, "ms5.downtime.ended", BAGGER).is_empty()
                && !events_in(msgs, "ms5.andon.resolved", BAGGER).is_empty()
        },
    )
    .await;
    let ended = &events_of(sub, "ms5.downtime.ended", BAGGER)[0]["data"];
    assert_eq!(ended["closed_by"], "reload");
    let resolved = &events_of(sub, "ms5.andon.resolved", BAGGER)[0]["data"];
    assert_eq!(resolved["resolved_by"], "reload");
    assert!(daemon.log_text().contains("reload: equipment removed"));
}
