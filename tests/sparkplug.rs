//! Sparkplug B 3.0 end to end (SPEC §8): the daemon as a process, the simulated line, a real
//! mosquitto, and an independent Sparkplug host (pysparkplug, pinned in `target/spb-venv` by
//! scripts/test) that decodes every message on `spBv1.0/#` and plays primary host and
//! commander. One test per rule; our own codec is never used to check our own output.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::line::{hold_running, BAGGER, LOADER, PREFIX};
use common::rig::{Rig, RigOptions};
use common::{wait_for, Broker, DaemonProcess};
use ms5_edge::sim::Override;
use serde_json::{json, Value};

const GROUP: &str = "BP01";
const EDGE: &str = "bp01-gw1";

/// The Sparkplug venv's python; fails with how to install it.
fn spb_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/spb-venv/bin/python");
    assert!(
        python.exists(),
        "the Sparkplug host peer is not installed ({} is missing). Run scripts/test, which \
         creates it, or by hand: python3 -m venv target/spb-venv && target/spb-venv/bin/pip \
         install pysparkplug==0.6.1 paho-mqtt==1.6.1 protobuf==5.29.3",
        python.display()
    );
    python
}

/// The independent host (tests/peers/spb_host.py).
struct Host {
    child: Child,
    stdin: ChildStdin,
    msgs: Arc<Mutex<Vec<Value>>>,
}

impl Host {
    async fn start(port: u16, host_id: &str) -> Host {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/spb_host.py");
        let mut child = Command::new(spb_python())
            .arg(script)
            .arg(port.to_string())
            .arg(host_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Sparkplug host peer");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let sink = msgs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line).expect("the peer prints JSON");
                sink.lock().unwrap().push(v);
            }
        });
        let host = Host { child, stdin, msgs };
        host.wait("the host peer subscribed", Duration::from_secs(30), |m| {
            m.iter().any(|v| v["ready"] == true)
        })
        .await;
        host
    }

    fn send(&mut self, v: Value) {
        writeln!(self.stdin, "{v}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Publishes the retained STATE and waits until the peer says it went out.
    async fn state(&mut self, online: bool, timestamp: i64) {
        let before = self.count(|v| v["sent"] == "state");
        self.send(json!({"state": online, "timestamp": timestamp}));
        self.wait("STATE published", Duration::from_secs(10), |m| {
            m.iter().filter(|v| v["sent"] == "state").count() > before
        })
        .await;
    }

    fn msgs(&self) -> Vec<Value> {
        self.msgs.lock().unwrap().clone()
    }

    fn count(&self, f: impl Fn(&Value) -> bool) -> usize {
        self.msgs.lock().unwrap().iter().filter(|v| f(v)).count()
    }

    /// The edge node's messages (births, data, deaths), in arrival order.
    fn node(&self) -> Vec<Value> {
        self.msgs()
            .into_iter()
            .filter(|v| v["edge"] == EDGE && v["group"] == GROUP)
            .collect()
    }

    async fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&[Value]) -> bool) {
        let msgs = self.msgs.clone();
        wait_for(what, timeout, || f(&msgs.lock().unwrap())).await;
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn of_type<'a>(m: &'a [Value], ty: &str) -> Vec<&'a Value> {
    m.iter()
        .filter(|v| v["type"] == ty && v["edge"] == EDGE)
        .collect()
}

fn metric<'a>(msg: &'a Value, name: &str) -> Option<&'a Value> {
    msg["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

fn bd_seq(msg: &Value) -> i64 {
    metric(msg, "bdSeq").expect("a bdSeq metric")["value"]
        .as_i64()
        .expect("an integer bdSeq")
}

/// A rig whose config has `[sparkplug]` (plus `extra` keys) and polls every 100 ms.
async fn rig(extra: &str) -> Rig {
    rig_with(extra, None).await
}

/// Like [`rig`], with `bagger` held on the bagger's simulator before the daemon starts.
async fn rig_with(extra: &str, bagger: Option<Override>) -> Rig {
    let extra = extra.to_string();
    Rig::prepare(RigOptions {
        config_edit: Some(Box::new(move |text, _| {
            format!(
                "{}\n[sparkplug]\ngroup_id = \"{GROUP}\"\nedge_node_id = \"{EDGE}\"\n{extra}",
                text.replace("poll_interval_ms = 500", "poll_interval_ms = 100")
            )
        })),
        bagger,
        ..RigOptions::default()
    })
    .await
}

/// The bagger held running (or stopped) with no fault: its state changes only when the test
/// toggles it, never by the scenario's own stops (a minor stop 5–9 s in, the film break at
/// 60 s), so every toggle is a state change.
fn held(running: bool) -> Override {
    Override {
        fault_words: Some([0; 4]),
        ..hold_running(running)
    }
}

/// Waits for the NBIRTH, both DBIRTHs and DDATA of both devices.
async fn wait_births_and_data(host: &Host) {
    host.wait(
        "NBIRTH and two DBIRTHs, then DDATA of both",
        Duration::from_secs(30),
        |m| {
            of_type(m, "DBIRTH").len() >= 2
                && [BAGGER, LOADER]
                    .iter()
                    .all(|d| of_type(m, "DDATA").iter().any(|v| v["device"] == *d))
        },
    )
    .await;
}

/// No message the host received was refused by its decoder.
fn assert_decoded(host: &Host) {
    for v in host.msgs() {
        assert!(v.get("decode_error").is_none(), "pysparkplug refused {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_carry_names_aliases_and_datatypes_and_data_carries_aliases_only() {
    let rig = rig("").await;
    let host = Host::start(rig.broker.port, "unused").await;
    let _daemon = rig.spawn("daemon.log");
    wait_births_and_data(&host).await;
    assert_decoded(&host);
    let node = host.node();
    let nbirth = &node[0];
    assert_eq!(nbirth["type"], "NBIRTH", "{nbirth}");
    assert_eq!(nbirth["seq"], 0);
    assert!(nbirth["retain"] == false);
    let dt = |msg: &Value, name: &str| {
        metric(msg, name).unwrap_or_else(|| panic!("{name} in {msg}"))["datatype"].clone()
    };
    assert_eq!(dt(nbirth, "bdSeq"), 4, "bdSeq is Int64");
    let rebirth = metric(nbirth, "Node Control/Rebirth").unwrap();
    assert_eq!(rebirth["datatype"], 11);
    assert_eq!(rebirth["value"], false);
    assert!(
        rebirth["alias"].is_null(),
        "Rebirth has no alias: {rebirth}"
    );
    assert_eq!(dt(nbirth, "Properties/version"), 12);
    assert_eq!(dt(nbirth, "Outbox/depth"), 8);
    assert_eq!(dt(nbirth, "Outbox/oldest_age_s"), 10);

    let dbirths = of_type(&node, "DBIRTH");
    let devices: Vec<&str> = dbirths
        .iter()
        .map(|v| v["device"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        [BAGGER, LOADER],
        "one DBIRTH per equipment, in file order"
    );
    assert_eq!(dbirths[0]["seq"], 1);
    assert_eq!(dbirths[1]["seq"], 2);
    let bagger = dbirths[0];
    for (name, code) in [
        ("Signals/running", 11),      // Boolean (co:)
        ("Signals/speed", 9),         // Float (f32)
        ("Signals/good_count", 7),    // UInt32
        ("Signals/faults", 27),       // UInt16Array (count = 4)
        ("Signals/motor_temp_c", 10), // Double (scaled i16)
        ("State/state", 12),
        ("Downtime/active", 11),
        ("Downtime/reason_code", 12),
        ("Downtime/category", 12),
        ("Andon/open", 3),
        ("Andon/highest_priority", 12),
        ("OEE/availability", 10),
        ("OEE/performance", 10),
        ("OEE/quality", 10),
        ("OEE/oee", 10),
        ("Production/good_count", 8),
        ("Production/reject_count", 8),
        ("Context/job_id", 12),
        ("Context/product_type_id", 12),
        ("Context/operator", 12),
        ("Context/actual_quantity", 8),
    ] {
        assert_eq!(dt(bagger, name), code, "datatype of {name}");
    }
    let mut aliases: Vec<i64> = dbirths
        .iter()
        .chain(std::iter::once(&nbirth))
        .flat_map(|b| b["metrics"].as_array().unwrap().iter())
        .filter_map(|m| m["alias"].as_i64())
        .collect();
    let n = aliases.len();
    aliases.sort_unstable();
    aliases.dedup();
    assert_eq!(aliases.len(), n, "aliases unique per edge node");
    assert!(bagger["raw_names"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n.is_string()));

    let ddata = of_type(&node, "DDATA");
    assert!(!ddata.is_empty());
    let mut seen_running = false;
    for d in &ddata {
        let raw = d["raw_names"].as_array().unwrap();
        assert!(!raw.is_empty(), "a DDATA carries at least one metric: {d}");
        assert!(raw.iter().all(Value::is_null), "no names in DDATA: {d}");
        assert!(
            d["raw_datatypes"]
                .as_array()
                .unwrap()
                .iter()
                .all(Value::is_null),
            "no datatypes in DDATA: {d}"
        );
        for m in d["metrics"].as_array().unwrap() {
            // pysparkplug resolved the alias through the DBIRTH.
            assert!(m["name"].is_string(), "alias resolved: {m}");
            assert!(m["timestamp"].as_i64().unwrap() <= d["recv_ms"].as_i64().unwrap());
            if m["name"] == "Signals/running" && d["device"] == BAGGER {
                seen_running = true;
                assert_eq!(m["quality"], 192, "a good reading: {m}");
                assert!(m["value"].is_boolean(), "{m}");
            }
        }
    }
    assert!(seen_running, "the first DDATA carries the first reading");
}

/// `seq` over every message of one session: +1 each, 255 wraps to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_broker_down_the_node_births_on_the_failover_broker_then_returns() {
    let dir_b = tempfile::tempdir().unwrap();
    let b = Broker::start(&dir_b.path().join("b")).await;
    let mut rig = Rig::prepare(RigOptions {
        mqtt_extra: format!(
            "failover_urls = [\"{}\"]\nreturn_to_primary_s = 2\nreconnect_max_s = 1\n",
            b.url()
        ),
        config_edit: Some(Box::new(move |text, _| {
            format!(
                "{}\n[sparkplug]\ngroup_id = \"{GROUP}\"\nedge_node_id = \"{EDGE}\"\nprimary_host_id = \"scada\"\n",
                text.replace("poll_interval_ms = 500", "poll_interval_ms = 100")
            )
        })),
        ..RigOptions::default()
    })
    .await;
    // `url` (broker a) is unreachable at the start; the primary host is online on b.
    rig.broker.stop();
    let mut host_b = Host::start(b.port, "scada").await;
    host_b.state(true, 1).await;
    let _daemon = rig.spawn("daemon.log");
    wait_births_and_data(&host_b).await;
    assert_decoded(&host_b);
    let on_b = host_b.node();
    assert_eq!(on_b[0]["type"], "NBIRTH", "{}", on_b[0]);
    assert_seq_continuous(&on_b);

    // Broker a is back, with the host online there too: the node says goodbye on b and
    // births again on a (the births wait for the host's STATE, so none is missed).
    rig.broker.restart().await;
    let mut host_a = Host::start(rig.broker.port, "scada").await;
    host_a.state(true, 2).await;
    host_a
        .wait(
            "NBIRTH and both DBIRTHs on url again",
            Duration::from_secs(30),
            |m| !of_type(m, "NBIRTH").is_empty() && of_type(m, "DBIRTH").len() >= 2,
        )
        .await;
    assert_decoded(&host_a);
    host_b
        .wait(
            "the NDEATH on the failover broker",
            Duration::from_secs(10),
            |m| !of_type(m, "NDEATH").is_empty(),
        )
        .await;
    let death = of_type(&host_b.msgs(), "NDEATH")[0].clone();
    let reborn = of_type(&host_a.msgs(), "NBIRTH")[0].clone();
    assert_eq!(
        bd_seq(&death),
        bd_seq(&on_b[0]),
        "NDEATH closes b's session: {death}"
    );
    assert!(
        bd_seq(&reborn) > bd_seq(&on_b[0]),
        "the session on a has a newer bdSeq: {reborn}"
    );
}

fn assert_seq_continuous(node: &[Value]) -> usize {
    let mut expected: Option<i64> = None;
    let mut checked = 0;
    let ours = ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "DDEATH"];
    for v in node.iter().filter(|v| ours.iter().any(|t| v["type"] == *t)) {
        let seq = v["seq"].as_i64().unwrap_or_else(|| panic!("seq in {v}"));
        if v["type"] == "NBIRTH" {
            assert_eq!(seq, 0, "NBIRTH has seq 0");
        } else if let Some(e) = expected {
            assert_eq!(seq, e, "seq continues at {v}");
        }
        expected = Some((seq + 1) % 256);
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_wraps_past_255() {
    let rig = rig("").await;
    let host = Host::start(rig.broker.port, "unused").await;
    let _daemon = rig.spawn("daemon.log");
    // Toggling the bagger every 150 ms (the stimulus's pace, not a wait) makes a state
    // change and a running change, so about two DDATA, per toggle.
    let line = &rig.line;
    let mut running = false;
    let mut pace = tokio::time::interval(Duration::from_millis(150));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while host.node().len() < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "300 messages within 120 s"
        );
        pace.tick().await;
        running = !running;
        line.bagger.set_override(hold_running(running));
    }
    assert_decoded(&host);
    let node = host.node();
    assert_eq!(of_type(&node, "NBIRTH").len(), 1, "one session");
    let checked = assert_seq_continuous(&node);
    assert!(checked >= 300);
    let wrapped = node
        .windows(2)
        .any(|w| w[0]["seq"] == 255 && w[1]["seq"] == 0);
    assert!(wrapped, "255 was followed by 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndeath_on_kill_9_carries_the_births_bdseq_and_a_restart_takes_the_next() {
    let rig = rig("").await;
    let host = Host::start(rig.broker.port, "unused").await;
    let mut daemon = rig.spawn("daemon.log");
    host.wait("NBIRTH", Duration::from_secs(30), |m| {
        !of_type(m, "NBIRTH").is_empty()
    })
    .await;
    let first = bd_seq(of_type(&host.msgs(), "NBIRTH")[0]);
    daemon.kill9();
    host.wait("the will: NDEATH", Duration::from_secs(30), |m| {
        !of_type(m, "NDEATH").is_empty()
    })
    .await;
    let death = of_type(&host.msgs(), "NDEATH")[0].clone();
    assert_eq!(
        bd_seq(&death),
        first,
        "NDEATH carries the NBIRTH's bdSeq: {death}"
    );
    assert!(death["seq"].is_null(), "NDEATH has no seq");
    assert_eq!(death["metrics"].as_array().unwrap().len(), 1, "bdSeq only");

    let mut daemon = DaemonProcess::start(&rig.config_path, &rig.dir.path().join("second.log"));
    host.wait("a second NBIRTH", Duration::from_secs(30), |m| {
        of_type(m, "NBIRTH").len() >= 2
    })
    .await;
    let second = bd_seq(of_type(&host.msgs(), "NBIRTH")[1]);
    assert_eq!(second, (first + 1) % 256, "a restart never reuses a bdSeq");

    // A clean shutdown publishes NDEATH itself, with the session's bdSeq.
    assert!(daemon.terminate().success());
    host.wait("NDEATH of the clean stop", Duration::from_secs(10), |m| {
        of_type(m, "NDEATH").len() >= 2
    })
    .await;
    assert_eq!(bd_seq(of_type(&host.msgs(), "NDEATH")[1]), second);
    assert_decoded(&host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ncmd_rebirth_births_again_and_dcmd_writes_are_refused_with_nothing_written() {
    let rig = rig("").await;
    let mut host = Host::start(rig.broker.port, "unused").await;
    let daemon = rig.spawn("daemon.log");
    host.wait("births", Duration::from_secs(30), |m| {
        of_type(m, "DBIRTH").len() >= 2
    })
    .await;
    let bd = bd_seq(of_type(&host.msgs(), "NBIRTH")[0]);

    host.send(
        json!({"dcmd": [GROUP, EDGE, BAGGER], "metrics": [["Signals/running", "BOOLEAN", false]]}),
    );
    host.send(json!({"ncmd": [GROUP, EDGE], "metrics": [["Signals/speed", "DOUBLE", 1.0]]}));
    wait_for("two refusals in the log", Duration::from_secs(10), || {
        daemon.log_text().contains("sparkplug: command refused")
    })
    .await;
    // Counted in P/status at once, not at its next 60 s refresh.
    rig.sub
        .wait(
            "a P/status counting both refusals",
            Duration::from_secs(10),
            |m| {
                m.iter().any(|r| {
                    r.topic == format!("{PREFIX}/status")
                        && r.payload["health"]["uplink"]["sparkplug"]["commands_refused"]
                            .as_u64()
                            .is_some_and(|n| n >= 2)
                })
            },
        )
        .await;

    host.send(
        json!({"ncmd": [GROUP, EDGE], "metrics": [["Node Control/Rebirth", "BOOLEAN", true]]}),
    );
    host.wait("a rebirth", Duration::from_secs(10), |m| {
        of_type(m, "NBIRTH").len() >= 2 && of_type(m, "DBIRTH").len() >= 4
    })
    .await;
    let node = host.node();
    let reborn = of_type(&node, "NBIRTH")[1];
    assert_eq!(bd_seq(reborn), bd, "a rebirth keeps the bdSeq");
    assert_eq!(reborn["seq"], 0);
    assert_seq_continuous(&node);
    assert_eq!(
        rig.line.bagger.writes_received(),
        0,
        "nothing written to the PLC"
    );
    assert_eq!(rig.line.loader.writes_received(), 0);
    assert!(rig.line.bagger.requests_served() > 0, "the PLC was polled");
    assert_decoded(&host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_outage_ends_the_session_and_its_state_changes_come_back_historical_in_order() {
    // Held running from the start: the scenario's minor stop must not make the first toggle
    // (to stopped) a no-op when the toggles start 5–9 s in.
    let rig = rig_with("primary_host_id = \"scada\"\n", Some(held(true))).await;
    let mut host = Host::start(rig.broker.port, "scada").await;
    let mut daemon = rig.spawn("daemon.log");
    // Host offline: nothing is born.
    host.state(false, 1_000).await;
    wait_for("the Sparkplug connection", Duration::from_secs(30), || {
        daemon.log_text().contains("sparkplug: connected")
    })
    .await;
    host.state(true, 2_000).await;
    host.wait(
        "births once the host is online",
        Duration::from_secs(30),
        |m| of_type(m, "DBIRTH").len() >= 2,
    )
    .await;
    assert_eq!(of_type(&host.msgs(), "NBIRTH").len(), 1);
    let bd = bd_seq(of_type(&host.msgs(), "NBIRTH")[0]);
    // A stale offline is ignored.
    host.state(false, 1_500).await;
    host.state(false, 3_000).await;
    host.wait(
        "NDEATH when the host goes offline",
        Duration::from_secs(10),
        |m| !of_type(m, "NDEATH").is_empty(),
    )
    .await;
    assert_eq!(bd_seq(of_type(&host.msgs(), "NDEATH")[0]), bd);
    wait_for(
        "a reconnect to wait for the host",
        Duration::from_secs(30),
        || daemon.log_text().matches("sparkplug: connected").count() >= 2,
    )
    .await;

    // The machine toggles while nobody listens.
    let mut expected = Vec::new();
    let mut running = true;
    for _ in 0..6 {
        running = !running;
        let to = if running { "running" } else { "stopped" };
        let after = rig.sub.snapshot().len();
        rig.line.bagger.set_override(held(running));
        rig.sub
            // 30 s: the whole suite runs this beside six other daemons on two cores.
            .wait(&format!("state {to}"), Duration::from_secs(30), |m| {
                common::rig::bagger_state_in(m, to, after)
            })
            .await;
        expected.push(to.to_string());
    }
    let during = host.node().len();
    assert_eq!(
        of_type(&host.msgs(), "NBIRTH").len(),
        1,
        "no birth while the host is offline"
    );

    host.state(true, 4_000).await;
    host.wait(
        "births, the history, then live data",
        Duration::from_secs(30),
        |m| {
            let node: Vec<&Value> = m.iter().filter(|v| v["edge"] == EDGE).collect();
            node.iter().skip(during).any(|v| {
                v["type"] == "DDATA"
                    && v["device"] == BAGGER
                    && v["metrics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|m| m["is_historical"] == false)
            })
        },
    )
    .await;
    daemon.kill9();
    assert_decoded(&host);
    let node = host.node();
    let after: Vec<&Value> = node.iter().skip(during).collect();
    assert_eq!(after[0]["type"], "NBIRTH", "{}", after[0]);
    assert_eq!(
        bd_seq(after[0]),
        (bd + 1) % 256,
        "the reconnect took bdSeq + 1"
    );
    let data: Vec<&&Value> = after
        .iter()
        .filter(|v| v["type"] == "DDATA" && v["device"] == BAGGER)
        .collect();
    let first_live = data
        .iter()
        .position(|v| v["metrics"][0]["is_historical"] == false)
        .expect("live data");
    for d in &data {
        let flags: Vec<bool> = d["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["is_historical"].as_bool().unwrap())
            .collect();
        assert!(
            flags.iter().all(|f| *f == flags[0]),
            "every metric flagged alike: {d}"
        );
    }
    assert!(
        data[first_live..]
            .iter()
            .all(|v| v["metrics"][0]["is_historical"] == false),
        "history before live, never after"
    );
    let history: Vec<String> = data[..first_live]
        .iter()
        .filter_map(|d| metric(d, "State/state"))
        .map(|m| m["value"].as_str().unwrap().to_string())
        .collect();
    // Every stored change, in order (the unproven window before the outage may come first).
    let mut it = history.iter();
    for e in &expected {
        assert!(
            it.any(|h| h == e),
            "stored state changes {expected:?} delivered in order within {history:?}"
        );
    }
    let times: Vec<i64> = data[..first_live]
        .iter()
        .map(|d| d["metrics"][0]["timestamp"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cloudevents_off_only_sparkplug_is_published_and_commands_still_work() {
    let rig = rig("cloudevents = false\n").await;
    let host = Host::start(rig.broker.port, "unused").await;
    let _daemon = rig.spawn("daemon.log");
    host.wait("births and data", Duration::from_secs(30), |m| {
        !of_type(m, "DDATA").is_empty()
    })
    .await;
    let reply = rig
        .command(
            BAGGER,
            "context",
            json!({"request_id": "spb-ctx-1", "by": "test", "operator": "alice"}),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    host.wait("the operator in a DDATA", Duration::from_secs(10), |m| {
        of_type(m, "DDATA")
            .iter()
            .any(|d| metric(d, "Context/operator").is_some_and(|o| o["value"] == "alice"))
    })
    .await;
    let topics: Vec<String> = rig.sub.snapshot().iter().map(|r| r.topic.clone()).collect();
    assert!(!topics.is_empty());
    for t in &topics {
        assert!(
            *t == format!("{PREFIX}/reply")
                || *t == format!("{PREFIX}/spb/fence")
                || t.starts_with(&format!("{PREFIX}/cmd/")), // the test's own command
            "only replies (and the empty fences) under {PREFIX}/: {t}"
        );
    }
    assert_decoded(&host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sends_ddeath_for_removed_equipment_and_dbirth_for_added_equipment() {
    let rig = rig("").await;
    let host = Host::start(rig.broker.port, "unused").await;
    let daemon = rig.spawn("daemon.log");
    host.wait("births", Duration::from_secs(30), |m| {
        of_type(m, "DBIRTH").len() >= 2
    })
    .await;
    let bd = bd_seq(of_type(&host.msgs(), "NBIRTH")[0]);
    // Rename the bagger: to the daemon, BP01.PACK.BAG1 is removed and BP01.PACK.BAG2 added.
    let renamed = rig
        .config_text
        .replace(&format!("code = \"{BAGGER}\""), "code = \"BP01.PACK.BAG2\"");
    assert_ne!(renamed, rig.config_text);
    std::fs::write(&rig.config_path, &renamed).unwrap();
    common::unsafe_kill(daemon.child.id(), "HUP");
    host.wait("the new session's births", Duration::from_secs(30), |m| {
        of_type(m, "NBIRTH").len() >= 2 && of_type(m, "DBIRTH").len() >= 4
    })
    .await;
    let node = host.node();
    let ddeath = of_type(&node, "DDEATH");
    assert_eq!(ddeath.len(), 1, "one DDEATH: {ddeath:?}");
    assert_eq!(ddeath[0]["device"], BAGGER);
    let reborn = node
        .iter()
        .position(|v| v["type"] == "NBIRTH" && bd_seq(v) != bd)
        .unwrap();
    let ndeath = node.iter().position(|v| v["type"] == "NDEATH").unwrap();
    let dd = node.iter().position(|v| v["type"] == "DDEATH").unwrap();
    assert!(
        dd < ndeath && ndeath < reborn,
        "DDEATH, NDEATH, then the new NBIRTH"
    );
    assert_eq!(bd_seq(&node[reborn]), (bd + 1) % 256);
    let births: Vec<&str> = node[reborn..]
        .iter()
        .filter(|v| v["type"] == "DBIRTH")
        .map(|v| v["device"].as_str().unwrap())
        .collect();
    assert_eq!(
        births,
        ["BP01.PACK.BAG2", LOADER],
        "the added one is born, the removed one not"
    );
    assert_decoded(&host);
}
