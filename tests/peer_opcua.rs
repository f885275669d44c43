//! The OPC UA driver against python asyncua (`tests/peers/opcua_server.py`), an independent
//! OPC UA server: Boolean/Int16/UInt32/Float/Double/Int32-array nodes with string and numeric
//! node ids, a Bad or Uncertain status code on demand, and a count of every Write request
//! (there must be none). Driver level first, then end to end through the daemon to mosquitto.
//!
//! Needs the peers venv (`scripts/test` installs asyncua into it).

#![cfg(feature = "opcua")] // the driver exists only with the (default) `opcua` feature
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ms5_edge::acquire::opcua::{OpcUaPoller, DROP_AFTER_TIMEOUTS};
use ms5_edge::acquire::{Poller, Quality, SignalReading, Value};
use ms5_edge::config::{
    DataType, Equipment, OpcUa, Plc, Protocol, SecurityMode, SecurityPolicy, Signal, SignalSource,
    Signals, TrustServer,
};
use ms5_edge::sim::{config as simcfg, Machine};

use common::line::PREFIX;
use common::python::Peer;
use common::rig::{Rig, RigOptions};

const PALLETIZER: &str = "BP01-L1-PAL";

/// The server, with its control file (statuses on demand) in `dir`.
fn server(dir: &Path, port: Option<u16>, extra: &[&str]) -> Peer {
    let mut args = vec![
        "--control".to_string(),
        control_file(dir).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let peer = match port {
        Some(p) => Peer::start_on(p, "opcua_server.py", &args),
        None => Peer::start("opcua_server.py", &args),
    };
    wait_output(&peer, "READY", Duration::from_secs(30));
    peer
}

fn control_file(dir: &Path) -> PathBuf {
    dir.join("opcua-control.json")
}

/// Sets the statuses on demand and waits until the server applied them (one more
/// "STATUS <text>" line than before).
fn control(dir: &Path, peer: &Peer, json: &str) {
    let line = format!("STATUS {}", json.trim());
    let count = || peer.output().lines().filter(|l| *l == line).count();
    let before = count();
    std::fs::write(control_file(dir), json).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() == before {
        assert!(
            Instant::now() < deadline,
            "the OPC UA server did not apply {json} within 10 s:\n{}",
            peer.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_output(peer: &Peer, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !peer.output().contains(what) {
        assert!(
            Instant::now() < deadline,
            "the OPC UA server did not print {what:?} within {limit:?}:\n{}",
            peer.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn writes(peer: &Peer) -> usize {
    peer.output()
        .lines()
        .filter(|l| l.starts_with("WRITE "))
        .count()
}

fn node(node: &str, data_type: DataType, count: u16) -> Signal {
    Signal {
        source: SignalSource::Node { node: node.into() },
        data_type,
        count,
        scale: 1.0,
        offset: 0.0,
    }
}

fn plc(port: u16, pki: &Path) -> Plc {
    Plc {
        name: "pal".into(),
        host: "127.0.0.1".into(),
        port,
        poll_interval_ms: 200,
        timeout_ms: 2000,
        offline_after_polls: 3,
        protocol: Protocol::OpcUa(OpcUa {
            endpoint: format!("opc.tcp://127.0.0.1:{port}/"),
            security_policy: SecurityPolicy::None,
            security_mode: SecurityMode::None,
            username: None,
            password_file: None,
            pki_dir: pki.to_path_buf(),
            trust_server: TrustServer::Pinned,
        }),
    }
}

fn equipment(speed_type: DataType) -> Equipment {
    Equipment {
        signals: Signals {
            running: node("ns=2;s=Line.Running", DataType::Bool, 1),
            speed: Some(node("ns=2;s=Line.Speed", speed_type, 1)),
            good_count: node("ns=2;i=1001", DataType::U32, 1),
            reject_count: None,
            faults: Some(node("ns=2;s=Line.Faults", DataType::I32, 3)),
            extra: vec![
                ("temp_c".into(), node("ns=2;s=Line.Temp", DataType::I16, 1)),
                (
                    "energy".into(),
                    node("ns=2;s=Line.Energy", DataType::F64, 1),
                ),
            ],
        },
        ..simcfg::equipment(Machine::Loader, "pal")
    }
}

fn good(value: Value) -> SignalReading {
    SignalReading {
        value: Some(value),
        quality: Quality::Good,
    }
}

const NONE_BAD: SignalReading = SignalReading {
    value: None,
    quality: Quality::Bad,
};

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

/// The rig's config plus the opc-ua PLC "pal" (with `security`'s extra keys) and the
/// palletizer's signals.
fn opcua_config(text: String, port: u16, pki: &Path, security: &str) -> String {
    format!(
        r#"{text}
[[plc]]
name = "pal"
protocol = "opc-ua"
endpoint = "opc.tcp://127.0.0.1:{port}/"
pki_dir = "{pki}"
{security}poll_interval_ms = 200
timeout_ms = 1000

[[equipment]]
code = "{PALLETIZER}"
plc = "pal"
line_id = "BP01-L1"
ideal_rate_per_min = 60
[equipment.signals]
running = {{ node = "ns=2;s=Line.Running" }}
good_count = {{ node = "ns=2;i=1001", type = "u32" }}
speed = {{ node = "ns=2;s=Line.Speed", type = "f32" }}
faults = {{ node = "ns=2;s=Line.Faults", type = "i32", count = 3 }}
[equipment.signals.extra]
temp_c = {{ node = "ns=2;s=Line.Temp", type = "i16" }}
energy = {{ node = "ns=2;s=Line.Energy", type = "f64" }}
"#,
        pki = pki.display()
    )
}

/// The in-process daemon's counters of the PLC "pal" (what `status` and `P/status` report).
fn pal(rig: &Rig) -> ms5_edge::acquire::PlcCounters {
    rig.observers()
        .view
        .borrow()
        .plcs
        .get("pal")
        .cloned()
        .unwrap_or_default()
}

fn telemetry(m: &[common::Received]) -> Vec<&serde_json::Value> {
    m.iter()
        .filter(|r| r.topic == format!("{PREFIX}/{PALLETIZER}/telemetry"))
        .map(|r| &r.payload["data"])
        .collect()
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

fn secure_plc(port: u16, pki: &Path, password_file: &Path, trust: TrustServer) -> Plc {
    let mut p = plc(port, pki);
    p.protocol = Protocol::OpcUa(OpcUa {
        endpoint: format!("opc.tcp://127.0.0.1:{port}/"),
        security_policy: SecurityPolicy::Basic256Sha256,
        security_mode: SecurityMode::SignAndEncrypt,
        username: Some("ms5".into()),
        password_file: Some(password_file.to_path_buf()),
        pki_dir: pki.to_path_buf(),
        trust_server: trust,
    });
    p
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic256sha256_with_a_user_an_unknown_server_certificate_is_rejected_then_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = dir.path().join("server-pki");
    let peer = server(
        dir.path(),
        None,
        &[
            "--secure",
            server_pki.to_str().unwrap(),
            "--user",
            "ms5:s3cret",
        ],
    );
    let password = dir.path().join("opcua.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let pki = dir.path().join("pki");
    let mut poller = OpcUaPoller::new(
        &secure_plc(peer.port, &pki, &password, TrustServer::Pinned),
        &[equipment(DataType::F32)],
    );

    // Pinned, the server's certificate not in trusted/: refused, saved under rejected/.
    let e = poller
        .poll()
        .await
        .expect_err("an untrusted server is refused");
    assert!(!poller.connected());
    let rejected = files_in(&pki.join("rejected"));
    assert_eq!(rejected.len(), 1, "{e}: {rejected:?}");
    assert!(e.to_string().contains("rejected"), "{e}");
    assert!(files_in(&pki.join("trusted")).is_empty());

    // The engineer moves it to trusted/: the next connect reads the store again.
    let name = rejected[0].file_name().unwrap().to_owned();
    std::fs::rename(&rejected[0], pki.join("trusted").join(&name)).unwrap();
    let samples = poller.poll().await.expect("trusted now");
    let s = &samples[0].signals;
    assert_eq!(s["good_count"], good(Value::UInt(123_456)));
    assert_eq!(s["speed"], good(Value::Float(87.5)));
    assert_eq!(writes(&peer), 0);

    // A wrong password is refused (not a crash, not a retry storm: one transport error).
    std::fs::write(&password, "wrong\n").unwrap();
    let mut wrong = OpcUaPoller::new(
        &secure_plc(peer.port, &pki, &password, TrustServer::Pinned),
        &[equipment(DataType::F32)],
    );
    wrong.poll().await.expect_err("a wrong password is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_trusts_the_first_server_certificate_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("opcua.password");
    std::fs::write(&password, "s3cret").unwrap();
    let pki = dir.path().join("pki");
    let first = server(
        dir.path(),
        None,
        &[
            "--secure",
            dir.path().join("server-a").to_str().unwrap(),
            "--user",
            "ms5:s3cret",
        ],
    );
    let port = first.port;
    let plc = secure_plc(port, &pki, &password, TrustServer::FirstUse);
    let mut poller = OpcUaPoller::new(&plc, &[equipment(DataType::F32)]);
    let samples = poller.poll().await.expect("first use: trusted");
    assert_eq!(samples[0].signals["running"], good(Value::Bool(true)));
    assert_eq!(files_in(&pki.join("trusted")).len(), 1);
    drop(poller);
    drop(first);

    // Another server (a new certificate) at the same address: refused and saved.
    let _second = server(
        dir.path(),
        Some(port),
        &[
            "--secure",
            dir.path().join("server-b").to_str().unwrap(),
            "--user",
            "ms5:s3cret",
        ],
    );
    let mut poller = OpcUaPoller::new(&plc, &[equipment(DataType::F32)]);
    poller
        .poll()
        .await
        .expect_err("a different certificate is refused");
    assert_eq!(files_in(&pki.join("trusted")).len(), 1);
    assert_eq!(files_in(&pki.join("rejected")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_server_certificate_is_reported_in_status_and_trusting_it_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = dir.path().join("server-pki");
    let peer = server(
        dir.path(),
        None,
        &[
            "--secure",
            server_pki.to_str().unwrap(),
            "--user",
            "ms5:s3cret",
        ],
    );
    let port = peer.port;
    let password = dir.path().join("opcua.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let pki = dir.path().join("pki");
    let security = format!(
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n\
         username = \"ms5\"\npassword_file = \"{}\"\n",
        password.display()
    );
    let edit_pki = pki.clone();
    let rig = Rig::start(RigOptions {
        dir: Some(dir),
        config_edit: Some(Box::new(move |text, _| {
            opcua_config(text, port, &edit_pki, &security)
        })),
        ..RigOptions::default()
    })
    .await;

    // Pinned (the default) and trusted/ empty: refused; the PLC goes offline with a last
    // error that names the saved certificate and the move that trusts it.
    let trusted = pki.join("trusted");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (saved, error) = loop {
        let c = pal(&rig);
        let rejected = files_in(&pki.join("rejected"));
        if let (true, [cert], Some(e)) = (c.offline, rejected.as_slice(), &c.last_error) {
            if e.contains(&cert.display().to_string()) {
                break (cert.clone(), e.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no offline PLC naming the rejected certificate within 30 s: {c:?}, rejected/ {rejected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains("not trusted"), "{error}");
    assert!(
        error.contains(&format!("move it to {}/", trusted.display())),
        "{error}"
    );
    let saved_text = saved.display().to_string();
    rig.sub
        .wait(
            "a P/status naming the rejected certificate",
            Duration::from_secs(30),
            |m| {
                m.iter()
                    .filter(|r| r.topic == format!("{PREFIX}/status"))
                    .any(|r| {
                        r.payload["health"]["plcs"]["pal"]["counters"]["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains(&saved_text))
                    })
            },
        )
        .await;
    // `ms5-edge status` reads the same from the store (written at least once a second).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
            .args(["status", "--json", "-c"])
            .arg(&rig.config_path)
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let p = &status["plcs"]["pal"];
        if p["offline"] == true
            && p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&saved_text))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`status --json` does not name the rejected certificate: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The retries did not pile up copies of it.
    assert_eq!(files_in(&pki.join("rejected")), vec![saved.clone()]);

    // The engineer moves it to trusted/: the daemon connects at its next retry, no restart.
    std::fs::rename(&saved, trusted.join(saved.file_name().unwrap())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = pal(&rig);
        if c.consecutive_failures == 0 && c.last_error.is_none() && !c.offline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not connected within 30 s of trusting the certificate: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.sub
        .wait(
            "good telemetry once trusted",
            Duration::from_secs(10),
            |m| {
                telemetry(m).iter().any(|d| {
                    d["quality"]["good_count"] == "good" && d["values"]["good_count"] == 123_456
                })
            },
        )
        .await;
    assert_eq!(writes(&peer), 0, "the daemon wrote:\n{}", peer.output());
}
