//! The Sparkplug queue's bound end to end (SPEC §8 "Store and forward", §5 "every loss is in
//! the ledger"): with the primary host never online nothing is sent, the queue outgrows
//! `max_outbox_mb` (the store's byte knob), and the rows it drops are counted like the
//! CloudEvents drops — in `P/status`, in `status` and in `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::line::PREFIX;
use common::rig::{Rig, RigOptions};
use common::wait_for;

/// `GET path` over HTTP/1.1 with `Connection: close`; the whole response, or `None` when the
/// server does not answer (yet).
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The Sparkplug drops a `P/status` payload counts.
fn spb_dropped(status: &serde_json::Value) -> u64 {
    status["health"]["store"]["drops"]["totals"]["outbox_full"]["sparkplug"]["count"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_rows_dropped_for_the_bound_are_counted_in_p_status_status_and_metrics() {
    let port = common::free_port();
    let rig = Rig::prepare(RigOptions {
        config_edit: Some(Box::new(move |text, _| {
            format!(
                "{}\n[sparkplug]\ngroup_id = \"BP01\"\nprimary_host_id = \"nobody\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
                text.replace("poll_interval_ms = 500", "poll_interval_ms = 100")
                    .replace("publish_interval_ms = 1000", "publish_interval_ms = 200")
            )
        })),
        ..RigOptions::default()
    })
    .await;
    // 4 kB: about 30 DDATA rows, a few seconds of telemetry every 200 ms from two machines
    // while the host never comes online.
    let daemon = rig.spawn_with_env(
        "daemon.log",
        &[("MS5_EDGE_TEST_MAX_OUTBOX_BYTES", "4000".to_string())],
    );
    let topic = format!("{PREFIX}/status");
    rig.sub
        .wait(
            "a P/status counting dropped Sparkplug rows",
            Duration::from_secs(60),
            |m| {
                m.iter()
                    .any(|r| r.topic == topic && spb_dropped(&r.payload) > 0)
            },
        )
        .await;
    let log = daemon.log_text();
    assert!(
        log.contains("sparkplug queue reached max_outbox_mb"),
        "the episode is logged: {log}"
    );
    assert!(
        !log.contains("NBIRTH and DBIRTHs published"),
        "the host never came online"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
        .args(["status", "-c"])
        .arg(&rig.config_path)
        .output()
        .expect("run status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("outbox_full/sparkplug"), "{text}");
    assert!(text.contains("Sparkplug DDATA (no seq)"), "{text}");

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let series = "ms5_edge_outbox_dropped_total{class=\"sparkplug\",reason=\"outbox_full\"} ";
    let mut last = String::new();
    wait_for("the drops in /metrics", Duration::from_secs(30), || {
        last = get(addr, "/metrics").unwrap_or_default();
        last.lines().any(|l| {
            l.strip_prefix(series)
                .and_then(|n| n.trim().parse::<f64>().ok())
                .is_some_and(|n| n > 0.0)
        })
    })
    .await;
}
