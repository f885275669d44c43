//! The EtherNet/IP driver against cpppo (`python -m cpppo.server.enip`'s simulator, seeded with
//! known values by `tests/peers/enip_server.py`), an independent Logix tag server.
//!
//! Needs the peers venv (`scripts/test` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use ms5_edge::acquire::eip::EipPoller;
use ms5_edge::acquire::{PollError, Poller, Quality, SignalReading, Value};
use ms5_edge::config::{DataType, Equipment, Plc, Protocol, Signal, SignalSource, Signals};
use ms5_edge::sim::{config as simcfg, Machine};

use common::proxy::{Fault, Proxy};
use common::python::Peer;

/// The controller: BOOL, DINT, REAL and a DINT[2] fault array, word 1 with only bit 31 set.
fn controller() -> Peer {
    Peer::start(
        "enip_server.py",
        &[
            "Running=BOOL".into(),
            "GoodCount=DINT".into(),
            "Speed=REAL".into(),
            "Faults=DINT[2]".into(),
            "--values".into(),
            r#"{"Running": 1, "GoodCount": 123456, "Speed": 87.5, "Faults": [5, -2147483648]}"#
                .into(),
        ],
    )
}

fn tag(tag: &str, data_type: DataType, count: u16) -> Signal {
    Signal {
        source: SignalSource::Tag { tag: tag.into() },
        data_type,
        count,
        scale: 1.0,
        offset: 0.0,
    }
}

fn plc(addr: std::net::SocketAddr) -> Plc {
    Plc {
        name: "logix".into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        poll_interval_ms: 1000,
        timeout_ms: 2000,
        offline_after_polls: 3,
        protocol: Protocol::EthernetIp { slot: 0 },
    }
}

fn equipment(speed_type: DataType, extra: Vec<(String, Signal)>) -> Equipment {
    Equipment {
        signals: Signals {
            running: tag("Running", DataType::Bool, 1),
            speed: Some(tag("Speed", speed_type, 1)),
            good_count: tag("GoodCount", DataType::I32, 1),
            reject_count: None,
            faults: Some(tag("Faults", DataType::I32, 2)),
            extra,
        },
        ..simcfg::equipment(Machine::Loader, "logix")
    }
}

fn good(value: Value) -> SignalReading {
    SignalReading {
        value: Some(value),
        quality: Quality::Good,
    }
}

#[tokio::test]
async fn bool_dint_real_a_dint_array_and_fault_bits_read_correctly_from_cpppo() {
    let peer = controller();
    let extra = vec![
        (
            "bit_31_of_word_1".to_string(),
            tag("Faults[1].31", DataType::Bool, 1),
        ),
        (
            "bit_2_of_word_0".to_string(),
            tag("Faults[0].2", DataType::Bool, 1),
        ),
        (
            "bit_1_of_word_0".to_string(),
            tag("Faults[0].1", DataType::Bool, 1),
        ),
    ];
    let mut poller = EipPoller::new(&plc(peer.addr()), &[equipment(DataType::F32, extra)]);
    let samples = poller.poll().await.expect("the controller answers");
    let s = &samples[0].signals;
    assert_eq!(s["running"], good(Value::Bool(true)));
    assert_eq!(s["good_count"], good(Value::Int(123_456)));
    assert_eq!(s["speed"], good(Value::Float(87.5)));
    assert_eq!(
        s["faults"],
        good(Value::Array(vec![
            Value::Int(5),
            Value::Int(i64::from(i32::MIN))
        ])),
        "both elements, not element 0 only"
    );
    assert_eq!(s["bit_31_of_word_1"], good(Value::Bool(true)));
    assert_eq!(s["bit_2_of_word_0"], good(Value::Bool(true)));
    assert_eq!(s["bit_1_of_word_0"], good(Value::Bool(false)));
    assert_eq!(poller.stats().connects, 1);
    assert_eq!(poller.stats().exceptions, 0);
    // The engine sees fault 63 (bit 31 of word 1) set, though the DINT is negative.
    let words = s["faults"].value.as_ref().unwrap().as_words();
    assert_eq!(words[1] & 0xFFFF_FFFF, 1 << 31);
}

#[tokio::test]
async fn a_declared_type_the_controller_contradicts_is_reported_bad_and_counted_not_converted() {
    let peer = controller();
    // Speed is a REAL in the controller; the config says DINT.
    let mut poller = EipPoller::new(&plc(peer.addr()), &[equipment(DataType::I32, vec![])]);
    for round in 1..=2u64 {
        let samples = poller.poll().await.expect("the other signals still read");
        let s = &samples[0].signals;
        assert_eq!(
            s["speed"],
            SignalReading {
                value: None,
                quality: Quality::Bad
            }
        );
        assert_eq!(s["good_count"], good(Value::Int(123_456)));
        assert_eq!(
            poller.stats().type_mismatches,
            round,
            "every contradicted read counts"
        );
    }
}

#[tokio::test]
async fn an_unknown_tag_is_refused_once_then_held_off_as_stale_while_the_rest_reads() {
    let peer = controller();
    let extra = vec![("ghost".to_string(), tag("NoSuchTag", DataType::I32, 1))];
    let mut poller = EipPoller::new(&plc(peer.addr()), &[equipment(DataType::F32, extra)]);
    let first = poller.poll().await.expect("the known tags read");
    assert_eq!(first[0].signals["ghost"].quality, Quality::Bad);
    assert_eq!(first[0].signals["running"], good(Value::Bool(true)));
    assert_eq!(poller.stats().exceptions, 1);
    let second = poller.poll().await.expect("the known tags read");
    assert_eq!(second[0].signals["ghost"].quality, Quality::Stale);
    assert_eq!(poller.stats().exceptions, 1, "held off: not asked again");
    assert!(
        poller.connected(),
        "a refused tag does not cost the session"
    );
}

#[tokio::test]
async fn after_a_connection_reset_the_next_poll_opens_a_new_session_and_reads_again() {
    let peer = controller();
    let proxy = Proxy::start(peer.addr()).await;
    let mut poller = EipPoller::new(&plc(proxy.addr()), &[equipment(DataType::F32, vec![])]);
    poller.poll().await.expect("through the proxy");
    proxy.set(Fault::Reset);
    match poller.poll().await {
        Err(PollError::Transport(_)) => {}
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(!poller.connected());
    proxy.set(Fault::Pass);
    let samples = poller.poll().await.expect("recovers");
    assert_eq!(samples[0].signals["good_count"], good(Value::Int(123_456)));
    assert_eq!(poller.stats().connects, 2);
}

#[tokio::test]
async fn a_controller_that_stops_answering_times_out_within_the_configured_timeout() {
    let peer = controller();
    let proxy = Proxy::start(peer.addr()).await;
    let mut p = plc(proxy.addr());
    p.timeout_ms = 300;
    let mut poller = EipPoller::new(&p, &[equipment(DataType::F32, vec![])]);
    poller.poll().await.expect("through the proxy");
    proxy.set(Fault::Drop);
    let started = std::time::Instant::now();
    let outcome = poller.poll().await;
    assert!(matches!(&outcome, Err(e) if e.is_timeout()), "{outcome:?}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1000));
    assert!(!poller.connected());
}

#[tokio::test]
async fn a_toml_configured_logix_plc_is_polled_through_spawn_all_on_its_schedule() {
    // The daemon's path: config text → `acquire::spawn_all` → the EtherNet/IP task → reports.
    let peer = controller();
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        r#"
[gateway]
id = "eip-e2e"
data_dir = "{dir}"
timezone = "Europe/London"

[[plc]]
name = "logix"
protocol = "ethernet-ip"
host = "127.0.0.1"
port = {port}
slot = 0
poll_interval_ms = 200
timeout_ms = 200

[[equipment]]
code = "BP01.PACK.BAG1.BL"
name = "Basket Loader 1"
plc = "logix"
line_id = "BP01-L1"
position_in_line = 2
primary = true
type = "packaging"
criticality = 3
ideal_rate_per_min = 60
micro_stop_s = 30

[equipment.signals]
running    = {{ tag = "Running" }}
speed      = {{ tag = "Speed", type = "real" }}
good_count = {{ tag = "GoodCount", type = "dint" }}
faults     = {{ tag = "Faults", type = "dint", count = 2 }}

[[equipment.fault]]
bit = 63
code = "E_STOP"
description = "Emergency stop"
category = "safety"
severity = "critical"
andon = true
"#,
        dir = dir.path().display(),
        port = peer.port,
    );
    let config = ms5_edge::config::load_str(&text, "eip.toml")
        .unwrap_or_else(|e| panic!("test config is valid: {e}"))
        .config;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let tasks =
        ms5_edge::acquire::spawn_all(&config, ms5_edge::clock::Clock::system(), tx, shutdown);
    assert_eq!(tasks.len(), 1, "one task per PLC");

    let mut reports = Vec::new();
    for _ in 0..3 {
        let report = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a report within 10 s")
            .expect("the PLC task is running");
        reports.push(report);
    }
    for r in &reports {
        assert_eq!(r.plc, "logix");
        let samples = r.outcome.as_ref().expect("every poll reads the controller");
        let s = &samples[0].signals;
        assert_eq!(samples[0].equipment, "BP01.PACK.BAG1.BL");
        assert_eq!(s["running"], good(Value::Bool(true)));
        assert_eq!(s["speed"], good(Value::Float(87.5)));
        assert_eq!(s["good_count"], good(Value::Int(123_456)));
        assert_eq!(
            s["faults"],
            good(Value::Array(vec![
                Value::Int(5),
                Value::Int(i64::from(i32::MIN))
            ]))
        );
    }
    // Stamped with their scheduled ticks: exactly one interval apart, none skipped.
    let stamps: Vec<i64> = reports.iter().map(|r| r.scheduled_ms).collect();
    assert!(
        stamps.windows(2).all(|w| (w[1] - w[0] - 200).abs() <= 1),
        "ticks 200 ms apart: {stamps:?}"
    );
    let last = &reports[2].counters;
    assert_eq!(last.polls, 3);
    assert_eq!(last.failed_polls, 0);
    assert_eq!(last.skipped_ticks, 0);
    assert!(!last.offline);

    stop.send(true).expect("the task listens");
    for task in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the task stops on shutdown")
            .expect("the task did not panic");
    }
}
