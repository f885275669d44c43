//! SPEC §7 on a real broker: one misbehaving client or a hostile broker setting must not stop
//! delivery, lose an event, or cost the session. Each test names the failure it defends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::line::{hold_running, BAGGER, PREFIX};
use common::rig::{bagger_state_in, ClientOptions, Rig, RigOptions};
use common::{assert_gapless, wait_for, Broker, Subscriber};
use ms5_edge::daemon::Observers;
use rumqttc::{AsyncClient, QoS};
use serde_json::Value;

/// A plain MQTT 3.1.1 client that may publish up to 4 MiB (the misbehaving HMI).
async fn publisher(rig: &Rig, id: &str) -> AsyncClient {
    rig.client(ClientOptions {
        id: id.into(),
        max_packet: Some(4 << 20),
        inflight: Some(1000),
        keep_alive: None,
        cap: 5000,
        reconnect: false,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_larger_than_max_packet_never_stops_delivery_even_across_a_restart() {
    let rig = Rig::prepare(RigOptions {
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let (sub, line) = (&rig.sub, &rig.line);
    let mut daemon = rig.spawn("daemon.log");
    rig.wait_state("running").await;

    let hmi = publisher(&rig, "misbehaving-hmi").await;
    let huge = format!(
        r#"{{"request_id":"huge","by":"x","note":"{}"}}"#,
        "x".repeat(1536 * 1024)
    );
    hmi.publish(
        format!("{PREFIX}/cmd/{BAGGER}/context"),
        QoS::AtLeastOnce,
        false,
        huge,
    )
    .await
    .unwrap();
    hmi.publish(
        format!("{PREFIX}/cmd/{BAGGER}/andon/ack"),
        QoS::AtLeastOnce,
        false,
        r#"{"request_id":"after-huge","by":"x","andon_id":"none"}"#,
    )
    .await
    .unwrap();
    let r = rig.wait_reply("after-huge", Duration::from_secs(20)).await;
    assert_eq!(r["ok"], false, "{r}");

    // Restart: the broker must not redeliver the huge command to the new connection.
    assert!(daemon.terminate().success());
    let before = sub.snapshot().len();
    let mut daemon = rig.spawn("daemon2.log");
    sub.wait(
        "the birth after the restart",
        Duration::from_secs(20),
        |m| {
            m.iter()
                .skip(before)
                .any(|r| r.topic == format!("{PREFIX}/status") && r.payload["state"] == "online")
        },
    )
    .await;
    line.bagger.set_override(hold_running(false));
    rig.wait_state_after("stopped", before, Duration::from_secs(30))
        .await;
    hmi.publish(
        format!("{PREFIX}/cmd/{BAGGER}/andon/ack"),
        QoS::AtLeastOnce,
        false,
        r#"{"request_id":"after-restart","by":"x","andon_id":"none"}"#,
    )
    .await
    .unwrap();
    rig.wait_reply("after-restart", Duration::from_secs(20))
        .await;
    let log = daemon.log_text();
    assert!(
        !log.contains("MQTT connection lost"),
        "the second run never lost its connection:\n{log}"
    );
    assert!(daemon.terminate().success());
    assert_gapless(&sub.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_2000_junk_commands_costs_no_session_and_no_duplicate() {
    let mut rig = Rig::start(RigOptions {
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let (sub, line, observers) = (rig.sub.clone(), &rig.line, rig.observers().clone());
    rig.wait_state("running").await;
    assert_eq!(observers.uplink.connects.load(Ordering::Relaxed), 1);

    let hmi = publisher(&rig, "flooding-script").await;
    for n in 0..2000 {
        let body = match n % 4 {
            0 => format!(r#"{{"request_id":"j{n}""#),
            1 => "\u{0}\u{1}garbage".to_string(),
            2 => format!(r#"{{"request_id":"j{n}","by":"x","andon_id":"none"}}"#),
            _ => format!(r#"{{"request_id":{n}}}"#),
        };
        hmi.publish(
            format!("{PREFIX}/cmd/{BAGGER}/andon/ack"),
            QoS::AtMostOnce,
            false,
            body,
        )
        .await
        .unwrap();
    }
    // Delivery goes on after the flood: a state change made now arrives.
    let after = sub.snapshot().len();
    line.bagger.set_override(hold_running(false));
    rig.wait_state_after("stopped", after, Duration::from_secs(30))
        .await;
    sub.wait("some replies to the flood", Duration::from_secs(20), |m| {
        m.iter()
            .filter(|r| r.topic == format!("{PREFIX}/reply"))
            .count()
            >= 20
    })
    .await;
    assert_eq!(
        observers.uplink.connects.load(Ordering::Relaxed),
        1,
        "the flood never tore the session down"
    );
    let rejected = observers.uplink.commands_rejected.load(Ordering::Relaxed);
    assert!(rejected >= 1000, "refusals counted: {rejected}");
    rig.stop().await;
    let (_, _, duplicates) = assert_gapless(&sub.events());
    assert_eq!(duplicates, 0, "no reconnect, so no replayed duplicates");
}

/// mosquitto ACL: anonymous clients (the test observer) read everything; the gateway's user
/// may publish only what `gateway_rules` allows.
fn acl(gateway_rules: &str) -> String {
    format!("topic read #\n\nuser gw\ntopic read {PREFIX}/cmd/#\n{gateway_rules}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_acl_that_denies_event_topics_keeps_the_rows_until_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let acl_file = dir.path().join("acl");
    std::fs::write(&acl_file, acl(&format!("topic write {PREFIX}/status\n"))).unwrap();
    let mut rig = Rig::start(RigOptions {
        // mosquitto 2.0.11 disconnects a client whose denied publish it answers while
        // `max_queued_messages` is 0 (the harness default): use a real plant's setting.
        broker_extra: format!(
            "acl_file {}\nmax_queued_messages 1000\n",
            acl_file.display()
        ),
        dir: Some(dir),
        bagger: Some(hold_running(true)),
        mqtt_extra: "username = \"gw\"\nreconnect_max_s = 1\n".into(),
        ..RigOptions::default()
    })
    .await;
    let (sub, broker, observers) = (rig.sub.clone(), &rig.broker, rig.observers().clone());
    let refused = |o: &Observers| {
        o.uplink
            .refused()
            .get("not_authorized")
            .copied()
            .unwrap_or(0)
    };
    wait_for("refusals counted", Duration::from_secs(20), || {
        refused(&observers) >= 3
    })
    .await;
    sub.wait(
        "P/status naming the refusals",
        Duration::from_secs(20),
        |m| {
            m.iter().any(|r| {
                r.topic == format!("{PREFIX}/status")
                    && r.payload["health"]["refused"]["not_authorized"]
                        .as_u64()
                        .is_some_and(|n| n >= 1)
            })
        },
    )
    .await;
    assert!(sub.events().is_empty(), "nothing was delivered");
    assert_eq!(
        observers.uplink.acknowledged.load(Ordering::Relaxed),
        0,
        "no refused row was deleted as delivered"
    );
    assert_eq!(
        observers.uplink.connects.load(Ordering::Relaxed),
        1,
        "refusals never cost the session; broker log:\n{}",
        broker.log_text()
    );

    // The plant fixes the ACL: every row kept arrives, from seq 1, with no gap.
    std::fs::write(&acl_file, acl(&format!("topic write {PREFIX}/#\n"))).unwrap();
    broker.reload();
    let last = observers.view.borrow().last_seq;
    assert!(last >= 2, "events were made while refused: {last}");
    sub.wait("the kept rows", Duration::from_secs(30), |m| {
        m.iter()
            .any(|r| !r.retain && r.payload["seq"].as_i64().is_some_and(|s| s >= last))
    })
    .await;
    rig.stop().await;
    let events = sub.events();
    let seqs: BTreeSet<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    let max = *seqs.iter().max().unwrap();
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "every seq arrived: missing {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_second_broker_and_back_keeps_every_seq() {
    // Broker b first, in a temp dir of its own; the rig's broker is the primary, a.
    let dir_b = tempfile::tempdir().unwrap();
    let b = Broker::start(&dir_b.path().join("b")).await;
    let sub_b = Subscriber::start(b.port, &format!("{PREFIX}/#")).await;
    let mut rig = Rig::start(RigOptions {
        bagger: Some(hold_running(true)),
        mqtt_extra: format!(
            "failover_urls = [\"{}\"]\nreturn_to_primary_s = 2\nreconnect_max_s = 1\n",
            b.url()
        ),
        ..RigOptions::default()
    })
    .await;
    let sub_a = rig.sub.clone();
    rig.wait_state("running").await;

    rig.broker.stop();
    rig.line.bagger.set_override(hold_running(false));
    sub_b
        .wait("bagger stopped", Duration::from_secs(30), |m| {
            bagger_state_in(m, "stopped", 0)
        })
        .await;
    sub_b
        .wait("P/status naming broker b", Duration::from_secs(10), |m| {
            m.iter().any(|r| {
                r.topic == format!("{PREFIX}/status")
                    && r.payload["broker"] == format!("127.0.0.1:{}", b.port)
            })
        })
        .await;

    // The primary returns: the gateway moves back to it by itself.
    rig.broker.restart().await;
    let a = &rig.broker;
    let before = sub_a.snapshot().len();
    sub_a
        .wait(
            "the gateway back on broker a",
            Duration::from_secs(20),
            |m| {
                m.iter().skip(before).any(|r| {
                    r.topic == format!("{PREFIX}/status")
                        && r.payload["state"] == "online"
                        && r.payload["broker"] == format!("127.0.0.1:{}", a.port)
                })
            },
        )
        .await;
    rig.line.bagger.set_override(hold_running(true));
    rig.wait_state_after("running", before, Duration::from_secs(30))
        .await;
    rig.stop().await;

    let mut all = sub_a.events();
    all.extend(sub_b.events());
    let seqs: BTreeSet<i64> = all.iter().filter_map(|e| e["seq"].as_i64()).collect();
    let max = *seqs.iter().max().unwrap();
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "the union of both brokers has every seq: missing {missing:?}"
    );
    assert!(
        !sub_b.events().is_empty(),
        "broker b carried part of the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_returns_is_reconnected_within_reconnect_max_s() {
    let mut rig = Rig::start(RigOptions {
        mqtt_extra: "reconnect_max_s = 2\n".into(),
        ..RigOptions::default()
    })
    .await;
    let observers = rig.observers().clone();
    wait_for("connected", Duration::from_secs(20), || {
        observers.uplink.connected.load(Ordering::Relaxed)
    })
    .await;
    rig.broker.stop();
    // An outage long enough for the backoff to reach its cap.
    tokio::time::sleep(Duration::from_secs(8)).await;
    rig.broker.restart().await;
    let back = std::time::Instant::now();
    wait_for("reconnected", Duration::from_secs(10), || {
        observers.uplink.connects.load(Ordering::Relaxed) >= 2
    })
    .await;
    let took = back.elapsed();
    assert!(
        took <= Duration::from_millis(2500),
        "reconnected {took:?} after the broker returned (cap 2 s)"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_larger_than_the_broker_accepts_goes_to_the_ledger_and_blocks_nothing() {
    let mut rig = Rig::start(RigOptions {
        // The broker accepts packets up to 600 bytes: state changes fit, telemetry does not.
        broker_extra: "max_packet_size 600\n".into(),
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let (sub, observers) = (rig.sub.clone(), rig.observers().clone());
    rig.wait_state("running").await;
    wait_for("too-large rows counted", Duration::from_secs(20), || {
        observers.uplink.too_large.load(Ordering::Relaxed) >= 2
    })
    .await;
    let after = sub.snapshot().len();
    rig.line.bagger.set_override(hold_running(false));
    rig.wait_state_after("stopped", after, Duration::from_secs(30))
        .await;
    rig.stop().await;
    assert_eq!(observers.uplink.connects.load(Ordering::Relaxed), 1);
    let ro = ms5_edge::store::ReadOnly::open(&rig.data).unwrap();
    let snap = ro.snapshot().unwrap();
    let too_large: u64 = snap
        .drops
        .totals
        .get("too_large")
        .map(|m| m.values().map(|c| c.count).sum())
        .unwrap_or(0);
    assert!(too_large >= 2, "ledger: {:?}", snap.drops);
    let recent = snap
        .drops
        .recent
        .iter()
        .find(|r| r.reason_name() == "too_large")
        .expect("a too_large ledger row");
    assert!(recent.first_seq.is_some(), "the ledger names the seq");
    // Every seq is either delivered or in the ledger.
    let seqs: BTreeSet<i64> = sub
        .events()
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert!(seqs.len() >= 2, "state changes were delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_telemetry_made_while_disconnected_is_dropped_not_sent_later() {
    let mut rig = Rig::start(RigOptions {
        bagger: Some(hold_running(true)),
        mqtt_extra: "reconnect_max_s = 1\n".into(),
        config_edit: Some(Box::new(|text, _| {
            text.replace("store_and_forward = true", "store_and_forward = false")
        })),
        ..RigOptions::default()
    })
    .await;
    let (sub, observers) = (rig.sub.clone(), rig.observers().clone());
    let telemetry = |m: &[common::Received]| {
        m.iter()
            .filter(|r| r.topic == format!("{PREFIX}/{BAGGER}/telemetry"))
            .count()
    };
    sub.wait("live telemetry", Duration::from_secs(20), |m| {
        telemetry(m) >= 2
    })
    .await;
    rig.broker.stop();
    let down = ms5_edge::clock::Clock::system().now_ms();
    wait_for(
        "telemetry dropped while away",
        Duration::from_secs(20),
        || observers.uplink.live_dropped.load(Ordering::Relaxed) >= 3,
    )
    .await;
    rig.broker.restart().await;
    let up = ms5_edge::clock::Clock::system().now_ms();
    let before = sub.snapshot().len();
    sub.wait("live telemetry again", Duration::from_secs(20), |m| {
        m.iter()
            .skip(before)
            .any(|r| r.topic == format!("{PREFIX}/{BAGGER}/telemetry"))
    })
    .await;
    rig.stop().await;
    let stale: Vec<String> = sub
        .snapshot()
        .iter()
        .filter(|r| r.topic == format!("{PREFIX}/{BAGGER}/telemetry"))
        .filter_map(|r| r.payload["time"].as_str().map(str::to_string))
        .filter(|t| {
            let at = jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.fZ", t)
                .map(|ts| ts.as_millisecond())
                .unwrap_or(0);
            at > down + 1000 && at < up - 500
        })
        .collect();
    assert!(
        stale.is_empty(),
        "telemetry of the outage was sent later: {stale:?}"
    );
    assert!(
        sub.snapshot()
            .iter()
            .filter(|r| r.topic.ends_with("/telemetry"))
            .all(|r| r.payload.get("seq").is_none()),
        "live telemetry carries no seq"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_birth_is_published_once_per_connect() {
    let mut rig = Rig::start(RigOptions {
        subscribe: Some(format!("{PREFIX}/status")),
        ..RigOptions::default()
    })
    .await;
    let sub = rig.sub.clone();
    sub.wait("the birth", Duration::from_secs(20), |m| !m.is_empty())
        .await;
    // Let the connection settle, then stop: a second identical birth would be here by now.
    let marker = publisher(&rig, "marker").await;
    marker
        .publish(
            format!("{PREFIX}/status"),
            QoS::AtLeastOnce,
            false,
            "{\"marker\":1}",
        )
        .await
        .unwrap();
    sub.wait("the marker", Duration::from_secs(10), |m| {
        m.iter().any(|r| r.payload["marker"] == 1)
    })
    .await;
    rig.stop().await;
    let births: Vec<Value> = sub
        .snapshot()
        .into_iter()
        .take_while(|r| r.payload["marker"] != 1)
        .map(|r| r.payload)
        .collect();
    for w in births.windows(2) {
        assert_ne!(w[0], w[1], "the same P/status twice in a row: {births:?}");
    }
}
