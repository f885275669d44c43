//! `[metrics]` end to end (SPEC §10): the daemon in-process on the simulated line and a real
//! mosquitto (the shared rig), scraped over plain TCP, the exposition parsed by an independent
//! parser — python's `prometheus_client.parser.text_string_to_metric_families` from the peers
//! venv that `scripts/test` creates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{get, request, try_request, Http};
use common::line::{BAGGER, LOADER};
use common::rig::{Rig, RigOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every family SPEC §10 names, with its type.
const FAMILIES: [(&str, &str); 16] = [
    ("ms5_edge_plc_polls_total", "counter"),
    ("ms5_edge_plc_poll_failures_total", "counter"),
    ("ms5_edge_plc_skipped_ticks_total", "counter"),
    ("ms5_edge_plc_lateness_seconds", "histogram"),
    ("ms5_edge_plc_online", "gauge"),
    ("ms5_edge_outbox_messages", "gauge"),
    ("ms5_edge_outbox_oldest_age_seconds", "gauge"),
    ("ms5_edge_outbox_dropped_total", "counter"),
    ("ms5_edge_mqtt_connected", "gauge"),
    ("ms5_edge_mqtt_published_total", "counter"),
    ("ms5_edge_mqtt_acknowledged_total", "counter"),
    ("ms5_edge_mqtt_refused_total", "counter"),
    ("ms5_edge_commands_total", "counter"),
    ("ms5_edge_equipment_state", "gauge"),
    ("ms5_edge_oee_ratio", "gauge"),
    ("ms5_edge_build_info", "gauge"),
];

/// The exposition as python's prometheus_client parser reads it: family name → {type, help,
/// samples: [[name, labels, value]]}.
fn parse(text: &str) -> BTreeMap<String, Value> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(common::python::peers_python())
        .arg("-c")
        .arg(SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write exposition");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "prometheus_client could not parse the exposition (is prometheus-client in the peers \
         venv? scripts/test installs it):\n{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser JSON")
}

/// python's parser names a counter family without `_total`.
fn family_key(name: &str, kind: &str) -> String {
    match (kind, name.strip_suffix("_total")) {
        ("counter", Some(base)) => base.to_string(),
        _ => name.to_string(),
    }
}

/// The value of the sample `name` with exactly `labels` (subset match), if present.
fn value(families: &BTreeMap<String, Value>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.values().find_map(|f| {
        f["samples"].as_array()?.iter().find_map(|s| {
            let matches = s[0] == name
                && labels
                    .iter()
                    .all(|(k, v)| s[1].get(*k).and_then(Value::as_str) == Some(*v));
            matches.then(|| s[2].as_f64()).flatten()
        })
    })
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, Value> {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    parse(&r.body)
}

/// Scrapes until `cond` holds on the parsed exposition, up to `timeout`.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = match try_request(addr, "GET", "/metrics").await {
            Some(r) if r.status == 200 => parse(&r.body),
            // Closed unanswered (the server is at its connection bound): try again.
            _ => BTreeMap::new(),
        };
        if cond(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last scrape: {m:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Requests `path` until its status is `status` (and the body satisfies `body`), up to
/// `timeout`; returns the last response.
async fn until_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    timeout: Duration,
    body: impl Fn(&str) -> bool,
) -> Http {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(addr, path).await;
        if r.status == status && body(&r.body) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {path} {status}; last: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The rig with `[metrics]` on an ephemeral loopback port; returns it and the bound address.
async fn rig_with_metrics() -> (Rig, SocketAddr) {
    let rig = Rig::start(RigOptions {
        config_edit: Some(Box::new(|text, _| {
            format!("{text}\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
        })),
        ..RigOptions::default()
    })
    .await;
    let mut rx = rig.observers().metrics_addr.subscribe();
    let addr = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|a| a.is_some()))
        .await
        .expect("the metrics server binds within 20 s")
        .expect("observers alive")
        .expect("an address");
    (rig, addr)
}

fn polls(m: &BTreeMap<String, Value>, plc: &str) -> f64 {
    value(m, "ms5_edge_plc_polls_total", &[("plc", plc)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_declared_and_the_numbers_follow_the_line_and_the_broker() {
    let (mut rig, addr) = rig_with_metrics().await;

    // Ready once both PLCs answer, the broker is connected and the outbox is fresh.
    until_status(addr, "/readyz", 200, Duration::from_secs(30), |b| {
        b.contains("\"ready\":true")
    })
    .await;
    let first = get(addr, "/metrics").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = parse(&first.body);
    for (name, kind) in FAMILIES {
        let f = m
            .get(&family_key(name, kind))
            .unwrap_or_else(|| panic!("family {name} missing: {:?}", m.keys()));
        assert_eq!(f["type"], kind, "{name}");
        assert!(
            f["help"].as_str().is_some_and(|h| !h.is_empty()),
            "{name} has no HELP"
        );
    }
    assert_eq!(
        value(
            &m,
            "ms5_edge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let broker = format!("127.0.0.1:{}", rig.broker.port);
    assert_eq!(
        value(&m, "ms5_edge_mqtt_connected", &[("broker", &broker)]),
        Some(1.0)
    );
    for plc in ["bagger", "loader"] {
        assert_eq!(value(&m, "ms5_edge_plc_online", &[("plc", plc)]), Some(1.0));
        assert!(
            value(&m, "ms5_edge_plc_lateness_seconds_count", &[("plc", plc)]).unwrap_or(0.0) > 0.0,
            "lateness observed for {plc}"
        );
    }
    // Exactly one state is 1 per equipment.
    for eq in [BAGGER, LOADER] {
        let ones: Vec<&Value> = m["ms5_edge_equipment_state"]["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .filter(|s| s[1]["equipment"] == eq && s[2].as_f64() == Some(1.0))
            .collect();
        assert_eq!(ones.len(), 1, "{eq}: {ones:?}");
        let all = m["ms5_edge_equipment_state"]["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .filter(|s| s[1]["equipment"] == eq)
            .count();
        assert_eq!(all, 6, "{eq}: one series per state");
    }

    // polls_total grows.
    let before = polls(&m, "bagger");
    scrape_until(addr, "bagger polls to grow", Duration::from_secs(10), |m| {
        polls(m, "bagger") > before
    })
    .await;
    assert!(
        value(&m, "ms5_edge_mqtt_acknowledged_total", &[]).unwrap_or(0.0) > 0.0,
        "the outbox drains to the broker"
    );

    // Other paths and methods.
    assert_eq!(get(addr, "/nope").await.status, 404);
    assert_eq!(request(addr, "POST", "/metrics").await.status, 405);
    assert_eq!(get(addr, "/healthz").await.status, 200);

    // Broker outage: not ready, naming the broker; the outbox fills and ages; healthy still.
    rig.broker.stop();
    let r = until_status(addr, "/readyz", 503, Duration::from_secs(20), |b| {
        b.contains("broker")
    })
    .await;
    let body: Value = serde_json::from_str(&r.body).expect("readyz JSON");
    assert_eq!(body["ready"], false);
    assert!(
        body["reasons"].as_array().is_some_and(|a| a
            .iter()
            .any(|r| r.as_str().is_some_and(|s| s.contains("broker")))),
        "{body}"
    );
    let m = scrape_until(
        addr,
        "the outbox to hold aging messages",
        Duration::from_secs(20),
        |m| {
            value(m, "ms5_edge_outbox_messages", &[]).unwrap_or(0.0) > 0.0
                && value(m, "ms5_edge_outbox_oldest_age_seconds", &[]).unwrap_or(0.0) > 0.0
        },
    )
    .await;
    assert_eq!(
        value(&m, "ms5_edge_mqtt_connected", &[("broker", &broker)]),
        Some(0.0),
        "a disconnected broker keeps its series at 0"
    );
    assert_eq!(
        get(addr, "/healthz").await.status,
        200,
        "a broker outage is not a stall"
    );

    // The broker returns: ready again, the outbox drains to 0 and its age with it.
    rig.broker.restart().await;
    until_status(addr, "/readyz", 200, Duration::from_secs(30), |_| true).await;
    scrape_until(addr, "the outbox to drain", Duration::from_secs(30), |m| {
        value(m, "ms5_edge_outbox_messages", &[]) == Some(0.0)
            && value(m, "ms5_edge_outbox_oldest_age_seconds", &[]) == Some(0.0)
    })
    .await;
    rig.stop_within(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equipment_state_flips_with_the_machine() {
    let (mut rig, addr) = rig_with_metrics().await;
    let state = |m: &BTreeMap<String, Value>, to: &str| {
        value(
            m,
            "ms5_edge_equipment_state",
            &[("equipment", BAGGER), ("state", to)],
        )
    };
    rig.line
        .bagger
        .set_override(common::line::hold_running(true));
    scrape_until(addr, "the bagger running", Duration::from_secs(30), |m| {
        state(m, "running") == Some(1.0)
    })
    .await;
    rig.line
        .bagger
        .set_override(common::line::hold_running(false));
    // Stopped, or faulted if the simulated scenario has a fault bit up at that moment.
    let m = scrape_until(addr, "the bagger stopped", Duration::from_secs(30), |m| {
        state(m, "stopped") == Some(1.0) || state(m, "faulted") == Some(1.0)
    })
    .await;
    assert_eq!(state(&m, "running"), Some(0.0), "the old state went to 0");
    rig.stop().await;
}

/// `promtool` from Debian's `prometheus` package (scripts/test installs it).
fn promtool() -> std::path::PathBuf {
    let path = std::path::PathBuf::from("/usr/bin/promtool");
    assert!(
        path.exists(),
        "promtool is missing: install Debian's prometheus package (scripts/test does: \
         apt-get install --no-install-recommends prometheus)"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_to_complain_about_in_the_exposition() {
    let (mut rig, addr) = rig_with_metrics().await;
    scrape_until(addr, "polls of both PLCs", Duration::from_secs(30), |m| {
        polls(m, "bagger") > 0.0 && polls(m, "loader") > 0.0
    })
    .await;
    use std::io::Write as _;
    let body = get(addr, "/metrics").await.body;
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(body.as_bytes())
        .expect("write the exposition");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plc_down_is_not_ready_but_healthy_and_its_failures_are_counted() {
    let (mut rig, addr) = rig_with_metrics().await;
    until_status(addr, "/readyz", 200, Duration::from_secs(30), |_| true).await;
    rig.line.loader.set_online(false);
    let r = until_status(addr, "/readyz", 503, Duration::from_secs(20), |b| {
        b.contains("plc loader")
    })
    .await;
    assert!(!r.body.contains("plc bagger"), "{}", r.body);
    let m = scrape_until(addr, "loader failures", Duration::from_secs(20), |m| {
        let failed: f64 = ["timeout", "refused", "exception", "malformed", "other"]
            .iter()
            .filter_map(|k| {
                value(
                    m,
                    "ms5_edge_plc_poll_failures_total",
                    &[("plc", "loader"), ("kind", k)],
                )
            })
            .sum();
        failed > 0.0 && value(m, "ms5_edge_plc_online", &[("plc", "loader")]) == Some(0.0)
    })
    .await;
    assert_eq!(
        value(&m, "ms5_edge_plc_online", &[("plc", "bagger")]),
        Some(1.0)
    );
    let h = get(addr, "/healthz").await;
    assert_eq!(
        h.status, 200,
        "a loop recording failures makes progress: {}",
        h.body
    );

    rig.line.loader.set_online(true);
    until_status(addr, "/readyz", 200, Duration::from_secs(30), |_| true).await;
    rig.stop_within(Duration::from_secs(20)).await;
}

/// Whether the server closes `s` (EOF or reset) within `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_delays_neither_another_scrape_nor_the_polls() {
    let (mut rig, addr) = rig_with_metrics().await;
    let before = polls(&scrape(addr).await, "bagger");

    // One silent client: another scrape is answered at once, and the polls go on.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let m = scrape(addr).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a scrape beside a silent client took {:?}",
        started.elapsed()
    );
    let m = scrape_until(
        addr,
        "polls beside a silent client",
        Duration::from_secs(10),
        |n| polls(n, "bagger") > polls(&m, "bagger").max(before),
    )
    .await;
    // The server ends it by itself (header read timeout), never holding a slot for good.
    assert!(
        closed_within(
            &mut silent,
            ms5_edge::metrics::HEADER_TIMEOUT + Duration::from_secs(3)
        )
        .await,
        "a silent connection is closed after the header timeout"
    );

    // Every slot taken by silent clients: one more connection is closed at once rather than
    // queued, and the polls still go on.
    let mut hogs = Vec::new();
    for _ in 0..ms5_edge::metrics::MAX_CONNECTIONS {
        hogs.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // The server accepts in order: once it has taken the hogs, the next one is over the bound.
    let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
    extra
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "a connection over the bound is closed at once"
    );
    let during = polls(&m, "bagger");
    // Once the header timeout frees the slots, scrapes are served again — with polls made
    // meanwhile.
    let after = scrape_until(
        addr,
        "a scrape after the silent clients",
        Duration::from_secs(15),
        |n| polls(n, "bagger") > during,
    )
    .await;
    assert!(polls(&after, "bagger") > during);
    for mut h in hogs {
        assert!(closed_within(&mut h, Duration::from_secs(5)).await);
    }
    rig.stop_within(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_poll_loop_fails_healthz_naming_it() {
    let port = common::free_port();
    let rig = Rig::prepare(RigOptions {
        config_edit: Some(Box::new(move |text, _| {
            format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
        })),
        ..RigOptions::default()
    })
    .await;
    // The test knob blocks the bagger's poll task after 6 reports (a wedged driver).
    let mut daemon = rig.spawn_with_env(
        "daemon.log",
        &[("MS5_EDGE_TEST_STALL_PLC", "bagger:6".to_string())],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while try_request(addr, "GET", "/healthz").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the server never answered:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = until_status(addr, "/healthz", 503, Duration::from_secs(30), |b| {
        b.contains("plc bagger")
    })
    .await;
    assert!(
        !r.body.contains("plc loader"),
        "only the stalled loop: {}",
        r.body
    );
    daemon.kill9();
}
