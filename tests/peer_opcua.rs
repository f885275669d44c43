//! The OPC UA driver against python asyncua (`tests/peers/opcua_server.py`), an independent
//! OPC UA server: Boolean/Int16/UInt32/Float/Double/Int32-array nodes with string and numeric
//! node ids, a Bad or Uncertain status code, or slow answers on demand, and a count of every
//! Write request (there must be none). Driver level first, then end to end through the daemon
//! to mosquitto. Security policies and certificate trust: tests/peer_opcua_security.rs.
//!
//! Needs the peers venv (`scripts/test` installs asyncua into it).

#![cfg(feature = "opcua")] // the driver exists only with the (default) `opcua` feature
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::{Duration, Instant};

use ms5_edge::acquire::opcua::{OpcUaPoller, DROP_AFTER_TIMEOUTS};
use ms5_edge::acquire::{Poller, Quality, SignalReading, Value};
use ms5_edge::config::DataType;

use common::line::PREFIX;
use common::opcua::*;
use common::rig::{Rig, RigOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_reads_right_and_status_codes_become_quality_with_zero_writes() {
    let dir = tempfile::tempdir().unwrap();
    let peer = server(dir.path(), None, &[]);
    let pki = dir.path().join("pki");
    let mut poller = OpcUaPoller::new(&plc(peer.port, &pki), &[equipment(DataType::F32)]);
    let samples = poller.poll().await.expect("the server answers");
    let s = &samples[0].signals;
    assert_eq!(s["running"], good(Value::Bool(true)));
    assert_eq!(s["good_count"], good(Value::UInt(123_456)));
    assert_eq!(s["speed"], good(Value::Float(87.5)));
    assert_eq!(s["temp_c"], good(Value::Int(-40)));
    assert_eq!(s["energy"], good(Value::Float(1234.5678)));
    assert_eq!(
        s["faults"],
        good(Value::Array(vec![
            Value::Int(5),
            Value::Int(i64::from(i32::MIN)),
            Value::Int(0)
        ]))
    );
    assert_eq!(poller.stats().connects, 1);
    assert_eq!(poller.stats().type_mismatches, 0);
    // The own certificate was created on first connect, under pki/own.
    assert!(pki.join("own/cert.der").is_file(), "own certificate");
    assert!(pki.join("own/private.pem").is_file(), "own key");

    // Bad → bad, Uncertain → stale, each without a value; the others stay good.
    control(
        dir.path(),
        &peer,
        r#"{"bad": ["Line.Speed"], "uncertain": ["Line.Temp"]}"#,
    );
    let samples = poller.poll().await.expect("still answers");
    let s = &samples[0].signals;
    assert_eq!(s["speed"], NONE_BAD);
    assert_eq!(
        s["temp_c"],
        SignalReading {
            value: None,
            quality: Quality::Stale
        }
    );
    assert_eq!(s["good_count"], good(Value::UInt(123_456)));
    control(dir.path(), &peer, "{}");
    let samples = poller.poll().await.expect("still answers");
    assert_eq!(samples[0].signals["speed"], good(Value::Float(87.5)));
    assert_eq!(poller.stats().connects, 1, "one session throughout");
    assert_eq!(writes(&peer), 0, "the client wrote:\n{}", peer.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_type_the_server_contradicts_is_bad_reported_once_and_the_rest_reads() {
    let dir = tempfile::tempdir().unwrap();
    let peer = server(dir.path(), None, &[]);
    // Speed is a Float on the server; the config says f64 (Double).
    let mut poller = OpcUaPoller::new(
        &plc(peer.port, &dir.path().join("pki")),
        &[equipment(DataType::F64)],
    );
    for _ in 0..2 {
        let samples = poller.poll().await.expect("the other signals still read");
        let s = &samples[0].signals;
        assert_eq!(s["speed"], NONE_BAD);
        assert_eq!(s["good_count"], good(Value::UInt(123_456)));
    }
    assert_eq!(
        poller.stats().type_mismatches,
        1,
        "checked once per session"
    );
    assert_eq!(writes(&peer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scalar_on_an_array_node_or_an_array_on_a_scalar_node_is_bad_like_a_type_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let peer = server(dir.path(), None, &[]);
    let mut eq = equipment(DataType::F32);
    // Line.Faults is an Int32 array, Line.Mode an Int32 scalar: right DataType, wrong shape.
    eq.signals.extra.push((
        "faults_scalar".into(),
        node("ns=2;s=Line.Faults", DataType::I32, 1),
    ));
    eq.signals.extra.push((
        "mode_array".into(),
        node("ns=2;s=Line.Mode", DataType::I32, 3),
    ));
    eq.signals
        .extra
        .push(("mode".into(), node("ns=2;s=Line.Mode", DataType::I32, 1)));
    let mut poller = OpcUaPoller::new(&plc(peer.port, &dir.path().join("pki")), &[eq]);
    for _ in 0..2 {
        let samples = poller.poll().await.expect("the other signals still read");
        let s = &samples[0].signals;
        assert_eq!(s["faults_scalar"], NONE_BAD);
        assert_eq!(s["mode_array"], NONE_BAD);
        assert_eq!(s["mode"], good(Value::Int(3)));
        assert_eq!(s["faults"].quality, Quality::Good);
        assert_eq!(s["good_count"], good(Value::UInt(123_456)));
    }
    assert_eq!(
        poller.stats().type_mismatches,
        2,
        "checked once per session"
    );
    assert_eq!(writes(&peer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_keeps_the_session_and_reads_that_keep_timing_out_drop_it() {
    let dir = tempfile::tempdir().unwrap();
    let peer = server(dir.path(), None, &[]);
    let mut p = plc(peer.port, &dir.path().join("pki"));
    p.timeout_ms = 400;
    let mut poller = OpcUaPoller::new(&p, &[equipment(DataType::F32)]);
    poller.poll().await.expect("the server answers");

    // One slow answer: a timed-out poll, on the same session.
    control(dir.path(), &peer, r#"{"stall_ms": 700}"#);
    let e = poller.poll().await.expect_err("too slow");
    assert!(e.is_timeout(), "{e}");
    assert!(poller.connected(), "a slow answer dropped the session");
    control(dir.path(), &peer, "{}");
    wait_output(&peer, "STALLED 700", Duration::from_secs(10)); // the late answer went out
    let samples = poller.poll().await.expect("answers again");
    assert_eq!(samples[0].signals["good_count"], good(Value::UInt(123_456)));
    assert_eq!(samples[0].signals["speed"], good(Value::Float(87.5)));
    assert_eq!(
        poller.stats().connects,
        1,
        "no reconnect for one slow answer"
    );

    // Reads that keep timing out: the session is dropped at the DROP_AFTER_TIMEOUTS-th.
    control(dir.path(), &peer, r#"{"stall_ms": 700}"#);
    for n in 1..=DROP_AFTER_TIMEOUTS {
        let e = poller.poll().await.expect_err("too slow");
        assert!(e.is_timeout(), "{e}");
        assert_eq!(
            poller.connected(),
            n < DROP_AFTER_TIMEOUTS,
            "after {n} timeouts"
        );
    }
    control(dir.path(), &peer, "{}");
    let samples = poller.poll().await.expect("a new session answers");
    assert_eq!(samples[0].signals["good_count"], good(Value::UInt(123_456)));
    assert_eq!(poller.stats().connects, 2);
    assert_eq!(writes(&peer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plc_of_more_than_a_thousand_nodes_reads_in_one_session() {
    // The connect check reads two attributes per node and the poll one: 3 000 and 1 500
    // results in one message each, past the library's default array limit of 1 000.
    let dir = tempfile::tempdir().unwrap();
    let peer = server(dir.path(), None, &[]);
    let mut eq = equipment(DataType::F32);
    for k in 0..1500 {
        eq.signals.extra.push((
            format!("n{k:04}"),
            node("ns=2;s=Line.Temp", DataType::I16, 1),
        ));
    }
    let mut poller = OpcUaPoller::new(&plc(peer.port, &dir.path().join("pki")), &[eq]);
    for _ in 0..2 {
        let samples = poller.poll().await.expect("1 500 nodes read");
        let s = &samples[0].signals;
        let temps: Vec<_> = s.iter().filter(|(k, _)| k.starts_with('n')).collect();
        assert_eq!(temps.len(), 1500);
        for (k, r) in temps {
            assert_eq!(*r, good(Value::Int(-40)), "{k}");
        }
    }
    assert_eq!(poller.stats().connects, 1, "one session throughout");
    assert_eq!(writes(&peer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_and_quality_reach_mqtt_and_a_server_restart_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let mut peer = server(dir.path(), None, &[]);
    let port = peer.port;
    let pki = dir.path().join("pki");
    let ctl_dir = dir.path().to_path_buf();
    let rig = Rig::start(RigOptions {
        dir: Some(dir),
        config_edit: Some(Box::new(move |text, _| opcua_config(text, port, &pki, ""))),
        ..RigOptions::default()
    })
    .await;

    rig.sub
        .wait("good OPC UA telemetry", Duration::from_secs(30), |m| {
            telemetry(m)
                .iter()
                .any(|d| d["quality"]["good_count"] == "good")
        })
        .await;
    let m = rig.sub.snapshot();
    let d = telemetry(&m)
        .into_iter()
        .rev()
        .find(|d| d["quality"]["good_count"] == "good")
        .unwrap()
        .clone();
    assert_eq!(d["values"]["running"], true, "{d}");
    assert_eq!(d["values"]["good_count"], 123_456, "{d}");
    assert_eq!(d["values"]["speed"], 87.5, "{d}");
    assert_eq!(d["values"]["temp_c"], -40, "{d}");
    assert_eq!(d["values"]["energy"], 1234.5678, "{d}");
    assert_eq!(
        d["values"]["faults"],
        serde_json::json!([5, -2147483648i64, 0]),
        "{d}"
    );
    for s in [
        "running",
        "good_count",
        "speed",
        "temp_c",
        "energy",
        "faults",
    ] {
        assert_eq!(d["quality"][s], "good", "{s}: {d}");
    }

    // A Bad status on demand: published as null with quality bad.
    control(&ctl_dir, &peer, r#"{"bad": ["Line.Speed"]}"#);
    rig.sub
        .wait("speed bad, null", Duration::from_secs(10), |m| {
            telemetry(m).iter().any(|d| {
                d["quality"]["speed"] == "bad"
                    && d["values"]["speed"].is_null()
                    && d["quality"]["good_count"] == "good"
            })
        })
        .await;
    assert_eq!(writes(&peer), 0, "the daemon wrote:\n{}", peer.output());

    // The server restarts (same port, same nodes): the daemon reconnects by itself.
    let polls = pal;
    drop(peer);
    std::fs::remove_file(control_file(&ctl_dir)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while polls(&rig).consecutive_failures == 0 {
        assert!(
            Instant::now() < deadline,
            "no failed poll with the server down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peer = server(&ctl_dir, Some(port), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = polls(&rig);
        if c.consecutive_failures == 0 && c.reconnects >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reconnected within 30 s: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = rig.sub.snapshot().len();
    rig.sub
        .wait(
            "speed good again after the restart",
            Duration::from_secs(10),
            |m| {
                m[seen.min(m.len())..]
                    .iter()
                    .filter(|r| r.topic == format!("{PREFIX}/{PALLETIZER}/telemetry"))
                    .any(|r| r.payload["data"]["quality"]["speed"] == "good")
            },
        )
        .await;
    assert_eq!(writes(&peer), 0, "the daemon wrote:\n{}", peer.output());
}
