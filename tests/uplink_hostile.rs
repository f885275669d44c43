//! SPEC §7 on a real broker: one misbehaving client or a hostile broker setting must not stop
//! delivery, lose an event, or cost the session. Each test names the failure it defends.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::line::{config, config_text, hold_running, line, BAGGER, PREFIX};
use common::{assert_gapless, wait_for, Broker, DaemonProcess, Subscriber};
use ms5_edge::daemon::{self, Observers};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::watch;

/// A plain MQTT 3.1.1 client that may publish up to 4 MiB (the misbehaving HMI).
async fn publisher(port: u16, id: &str) -> AsyncClient {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 5000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

fn replies(sub: &Subscriber) -> Vec<Value> {
    sub.snapshot()
        .into_iter()
        .filter(|m| m.topic == format!("{PREFIX}/reply"))
        .map(|m| m.payload)
        .collect()
}

async fn wait_reply(sub: &Subscriber, request_id: &str, timeout: Duration) -> Value {
    sub.wait(&format!("the reply to {request_id}"), timeout, |m| {
        m.iter()
            .any(|r| r.topic == format!("{PREFIX}/reply") && r.payload["request_id"] == request_id)
    })
    .await;
    replies(sub)
        .into_iter()
        .find(|r| r["request_id"] == request_id)
        .unwrap_or(Value::Null)
}

async fn wait_state(sub: &Subscriber, to: &str, after: usize) {
    sub.wait(&format!("bagger {to}"), Duration::from_secs(30), |m| {
        m.iter()
            .skip(after)
            .any(|r| r.topic == format!("{PREFIX}/{BAGGER}/state") && r.payload["data"]["to"] == to)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_larger_than_max_packet_never_stops_delivery_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker")).await;
    let sub = Subscriber::start(broker.port, &format!("{PREFIX}/#")).await;
    let line = line().await;
    line.bagger.set_override(hold_running(true));
    let path = dir.path().join("ms5-edge.toml");
    std::fs::write(
        &path,
        config_text(&line, &dir.path().join("data"), Some(&broker.url()), ""),
    )
    .unwrap();
    let mut daemon = DaemonProcess::start(&path, &dir.path().join("daemon.log"));
    wait_state(&sub, "running", 0).await;

    let hmi = publisher(broker.port, "misbehaving-hmi").await;
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
    let r = wait_reply(&sub, "after-huge", Duration::from_secs(20)).await;
    assert_eq!(r["ok"], false, "{r}");

    // Restart: the broker must not redeliver the huge command to the new connection.
    assert!(daemon.terminate().success());
    let before = sub.snapshot().len();
    let mut daemon = DaemonProcess::start(&path, &dir.path().join("daemon2.log"));
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
    wait_state(&sub, "stopped", before).await;
    hmi.publish(
        format!("{PREFIX}/cmd/{BAGGER}/andon/ack"),
        QoS::AtLeastOnce,
        false,
        r#"{"request_id":"after-restart","by":"x","andon_id":"none"}"#,
    )
    .await
    .unwrap();
    wait_reply(&sub, "after-restart", Duration::from_secs(20)).await;
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
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker")).await;
    let sub = Subscriber::start(broker.port, &format!("{PREFIX}/#")).await;
    let line = line().await;
    line.bagger.set_override(hold_running(true));
    let cfg = config(&config_text(
        &line,
        &dir.path().join("data"),
        Some(&broker.url()),
        "",
    ));
    let (stop, rx) = watch::channel(false);
    let observers = Observers::default();
    let task = tokio::spawn(daemon::run(cfg, rx, observers.clone()));
    wait_state(&sub, "running", 0).await;
    assert_eq!(observers.uplink.connects.load(Ordering::Relaxed), 1);

    let hmi = publisher(broker.port, "flooding-script").await;
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
    wait_state(&sub, "stopped", after).await;
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
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
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
    let broker = Broker::start_with(
        &dir.path().join("broker"),
        // mosquitto 2.0.11 disconnects a client whose denied publish it answers while
        // `max_queued_messages` is 0 (the harness default): use a real plant's setting.
        &format!(
            "acl_file {}\nmax_queued_messages 1000\n",
            acl_file.display()
        ),
    )
    .await;
    let sub = Subscriber::start(broker.port, &format!("{PREFIX}/#")).await;
    let line = line().await;
    line.bagger.set_override(hold_running(true));
    let cfg = config(&config_text(
        &line,
        &dir.path().join("data"),
        Some(&broker.url()),
        "username = \"gw\"\nreconnect_max_s = 1\n",
    ));
    let (stop, rx) = watch::channel(false);
    let observers = Observers::default();
    let task = tokio::spawn(daemon::run(cfg, rx, observers.clone()));
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
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    let events = sub.events();
    let seqs: BTreeSet<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    let max = *seqs.iter().max().unwrap();
    let missing: Vec<i64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "every seq arrived: missing {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_second_broker_and_back_keeps_every_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Broker::start(&dir.path().join("a")).await;
    let b = Broker::start(&dir.path().join("b")).await;
    let sub_a = Subscriber::start(a.port, &format!("{PREFIX}/#")).await;
    let sub_b = Subscriber::start(b.port, &format!("{PREFIX}/#")).await;
    let line = line().await;
    line.bagger.set_override(hold_running(true));
    let cfg = config(&config_text(
        &line,
        &dir.path().join("data"),
        Some(&a.url()),
        &format!(
            "failover_urls = [\"{}\"]\nreturn_to_primary_s = 2\nreconnect_max_s = 1\n",
            b.url()
        ),
    ));
    let (stop, rx) = watch::channel(false);
    let observers = Observers::default();
    let task = tokio::spawn(daemon::run(cfg, rx, observers.clone()));
    wait_state(&sub_a, "running", 0).await;

    a.stop();
    line.bagger.set_override(hold_running(false));
    wait_state(&sub_b, "stopped", 0).await;
    sub_b
        .wait("P/status naming broker b", Duration::from_secs(10), |m| {
            m.iter().any(|r| {
                r.topic == format!("{PREFIX}/status")
                    && r.payload["broker"] == format!("127.0.0.1:{}", b.port)
            })
        })
        .await;

    // The primary returns: the gateway moves back to it by itself.
    a.restart().await;
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
    line.bagger.set_override(hold_running(true));
    wait_state(&sub_a, "running", before).await;
    let _ = stop.send(true);
    task.await.unwrap().unwrap();

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
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("broker")).await;
    let sub = Subscriber::start(broker.port, &format!("{PREFIX}/#")).await;
    let line = line().await;
    let cfg = config(&config_text(
        &line,
        &dir.path().join("data"),
        Some(&broker.url()),
        "reconnect_max_s = 2\n",
    ));
    let (stop, rx) = watch::channel(false);
    let observers = Observers::default();
    let task = tokio::spawn(daemon::run(cfg, rx, observers.clone()));
    wait_for("connected", Duration::from_secs(20), || {
        observers.uplink.connected.load(Ordering::Relaxed)
    })
    .await;
    broker.stop();
    // An outage long enough for the backoff to reach its cap.
    tokio::time::sleep(Duration::from_secs(8)).await;
    broker.restart().await;
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
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_larger_than_the_broker_accepts_goes_to_the_ledger_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The broker accepts packets up to 600 bytes: state changes fit, telemetry does not.
    let broker = Broker::start_with(&dir.path().join("broker"), "max_packet_size 600\n").await;
    let sub = Subscriber::start(broker.port, &format!("{PREFIX}/#")).await;
    let line = line().await;
    line.bagger.set_override(hold_running(true));
    let cfg = config(&config_text(
        &line,
        &dir.path().join("data"),
        Some(&broker.url()),
        "",
    ));
    let (stop, rx) = watch::channel(false);
    let observers = Observers::default();
    let task = tokio::spawn(daemon::run(cfg, rx, observers.clone()));
    wait_state(&sub, "running", 0).await;
    wait_for("too-large rows counted", Duration::from_secs(20), || {
        observers.uplink.too_large.load(Ordering::Relaxed) >= 2
    })
    .await;
    let after = sub.snapshot().len();
    line.bagger.set_override(hold_running(false));
    wait_state(&sub, "stopped", after).await;
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    assert_eq!(observers.uplink.connects.load(Ordering::Relaxed), 1);
    let ro = ms5_edge::store::ReadOnly::open(&dir.path().join("data")).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("broker")).await;
    let sub = Subscriber::start(broker.port, &format!("{PREFIX}/#")).await;
    let line = line().await;
    line.bagger.set_override(hold_running(true));
    let text = config_text(
        &line,
        &dir.path().join("data"),
        Some(&broker.url()),
        "reconnect_max_s = 1\n",
    )
    .replace("store_and_forward = true", "store_and_forward = false");
    let (stop, rx) = watch::channel(false);
    let observers = Observers::default();
    let task = tokio::spawn(daemon::run(config(&text), rx, observers.clone()));
    let telemetry = |m: &[common::Received]| {
        m.iter()
            .filter(|r| r.topic == format!("{PREFIX}/{BAGGER}/telemetry"))
            .count()
    };
    sub.wait("live telemetry", Duration::from_secs(20), |m| {
        telemetry(m) >= 2
    })
    .await;
    broker.stop();
    let down = ms5_edge::clock::Clock::system().now_ms();
    wait_for(
        "telemetry dropped while away",
        Duration::from_secs(20),
        || observers.uplink.live_dropped.load(Ordering::Relaxed) >= 3,
    )
    .await;
    broker.restart().await;
    let up = ms5_edge::clock::Clock::system().now_ms();
    let before = sub.snapshot().len();
    sub.wait("live telemetry again", Duration::from_secs(20), |m| {
        m.iter()
            .skip(before)
            .any(|r| r.topic == format!("{PREFIX}/{BAGGER}/telemetry"))
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker")).await;
    let sub = Subscriber::start(broker.port, &format!("{PREFIX}/status")).await;
    let line = line().await;
    let cfg = config(&config_text(
        &line,
        &dir.path().join("data"),
        Some(&broker.url()),
        "",
    ));
    let (stop, rx) = watch::channel(false);
    let observers = Observers::default();
    let task = tokio::spawn(daemon::run(cfg, rx, observers.clone()));
    sub.wait("the birth", Duration::from_secs(20), |m| !m.is_empty())
        .await;
    // Let the connection settle, then stop: a second identical birth would be here by now.
    let marker = publisher(broker.port, "marker").await;
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
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
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
