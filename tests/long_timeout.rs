//! A PLC whose `timeout_ms` is longer than its `poll_interval_ms` (SPEC §6 "Polling"): the
//! daemon starts (a warning, never a config error), and each tick that falls due while a poll
//! is still running is skipped and counted — no bunched polls — while the daemon keeps running.
//!
//! The PLC is a TCP listener that accepts connections and never answers, so every poll runs
//! into its 300 ms timeout on a 100 ms schedule.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait_for, DaemonProcess};

fn config_text(port: u16, data_dir: &std::path::Path) -> String {
    format!(
        r#"[gateway]
id = "gw-slow"
data_dir = "{data}"
timezone = "Europe/London"

[[plc]]
name = "radio"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
poll_interval_ms = 100
timeout_ms = 300

[[shift]]
name = "A"
start = "00:00"
end = "00:00"

[[equipment]]
code = "SLOW1"
plc = "radio"
line_id = "L1"
ideal_rate_per_min = 60

[equipment.signals]
running = {{ address = "co:0" }}
good_count = {{ address = "hr:0" }}
"#,
        data = data_dir.display()
    )
}

/// `ms5-edge status --json`, whatever its exit code (the heartbeat may lag on a busy box).
fn status_json(config: &std::path::Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
        .args(["status", "--json", "-c"])
        .arg(config)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_longer_than_the_interval_skips_and_counts_ticks_and_the_daemon_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    // A PLC that accepts and stays silent: connections are held open, never read or answered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = dir.path().join("ms5-edge.toml");
    std::fs::write(&config, config_text(port, &dir.path().join("data"))).unwrap();

    let mut daemon = DaemonProcess::start(&config, &dir.path().join("daemon.log"));
    let mut last = serde_json::Value::Null;
    wait_for(
        "status to count polls that timed out and the ticks they skipped",
        Duration::from_secs(30),
        || {
            if let Some(s) = status_json(&config) {
                last = s["plcs"]["radio"].clone();
            }
            last["timeouts"].as_u64().unwrap_or(0) >= 3
                && last["skipped_ticks"].as_u64().unwrap_or(0) >= 3
        },
    )
    .await;
    let polls = last["polls"].as_u64().unwrap();
    let skipped = last["skipped_ticks"].as_u64().unwrap();
    // Each 300 ms poll spans at least two 100 ms ticks that are skipped, not run late in a bunch.
    assert!(
        skipped >= polls,
        "{skipped} skipped ticks for {polls} polls of 300 ms each: {last}"
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon keeps running:\n{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(
        log.contains("longer than the poll interval"),
        "the long timeout is logged as a warning:\n{log}"
    );
    assert!(daemon.terminate().success());
}
