//! Faults injected between the Modbus poller and the simulator by the harness's TCP proxy
//! (`tests/common/proxy.rs`): delayed, dropped, truncated and corrupted replies, and reset
//! connections. The PLC's poll loop (`run_plc`, the task the daemon runs per PLC) must never
//! end or panic, must report each fault (failed poll, error text, counters), and must read good
//! values again within 3 poll intervals after the fault stops.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ms5_edge::acquire::modbus::ModbusPoller;
use ms5_edge::acquire::{run_plc, PlcCounters, PollReport};
use ms5_edge::clock::Clock;
use ms5_edge::sim::{self, config as simcfg, Machine, Override};
use tokio::sync::{mpsc, watch};

use common::proxy::{Fault, Proxy};

/// Poll interval of these tests. With the backoff cap of `acquire::backoff_cap` (2 × interval,
/// at least 1 s), 500 ms is the shortest interval for which "3 intervals" is promised.
const INTERVAL_MS: u64 = 500;
const TIMEOUT_MS: u64 = 150;

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn next(rx: &mut mpsc::Receiver<PollReport>) -> PollReport {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a report within 15 s")
        .expect("the poll loop is still running")
}

/// Good → fault (until `failures` polls failed) → recovery; returns the report of the last
/// failed poll and the counters after recovery.
async fn survives_and_recovers(fault: Fault, failures: u64) -> (PollReport, PlcCounters) {
    let sim = sim::start(Machine::Bagger, ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator");
    sim.set_override(Override {
        elapsed_ms: Some(1_000),
        good_count: Some(4242),
        ..Override::default()
    });
    let proxy = Proxy::start(sim.addr()).await;
    let plc = simcfg::plc("plc", proxy.addr(), INTERVAL_MS, TIMEOUT_MS);
    let poller = ModbusPoller::new(&plc, &[simcfg::equipment(Machine::Bagger, "plc")]);
    let (tx, mut rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_plc(plc, poller, Clock::system(), tx, stop_rx));

    assert!(next(&mut rx).await.outcome.is_ok(), "good before the fault");
    proxy.set(fault);
    let failed = loop {
        let r = next(&mut rx).await;
        if r.outcome.is_err() && r.counters.failed_polls >= failures {
            break r;
        }
    };
    let stopped = wall_ms();
    proxy.set(Fault::Pass);
    let recovered = loop {
        let r = next(&mut rx).await;
        if let Ok(samples) = &r.outcome {
            let good = &samples[0].signals["good_count"];
            assert_eq!(good.value.as_ref().and_then(|v| v.as_u64()), Some(4242));
            break r;
        }
    };
    let after = recovered.scheduled_ms - stopped;
    assert!(
        after <= 3 * INTERVAL_MS as i64,
        "{fault:?}: first good poll {after} ms after the fault stopped (limit {} ms)",
        3 * INTERVAL_MS
    );
    assert!(!task.is_finished(), "the poll loop never ends by itself");
    stop_tx.send_replace(true);
    task.await.expect("the poll loop did not panic");
    (failed, recovered.counters)
}

#[tokio::test]
async fn replies_delayed_past_the_timeout_count_as_timeouts_and_the_plc_recovers() {
    let (failed, after) = survives_and_recovers(Fault::Delay(Duration::from_millis(400)), 2).await;
    let error = failed.outcome.expect_err("failed");
    assert!(error.is_timeout(), "{error}");
    assert!(failed.counters.timeouts >= 2);
    assert!(
        after.reconnects >= 1,
        "the connection was dropped and re-opened"
    );
    assert_eq!(after.consecutive_failures, 0);
}

#[tokio::test]
async fn dropped_replies_count_as_timeouts_and_the_plc_recovers() {
    let (failed, after) = survives_and_recovers(Fault::Drop, 2).await;
    assert!(failed.outcome.expect_err("failed").is_timeout());
    assert!(failed.counters.timeouts >= 2);
    assert!(after.reconnects >= 1);
}

#[tokio::test]
async fn truncated_replies_fail_the_poll_without_a_panic_and_the_plc_recovers() {
    let (failed, after) = survives_and_recovers(Fault::Truncate, 2).await;
    let error = failed.outcome.expect_err("failed").to_string();
    assert!(error.starts_with("transport"), "{error}");
    assert!(failed.counters.last_error.is_some());
    assert!(after.reconnects >= 1);
}

#[tokio::test]
async fn corrupted_frames_fail_the_poll_without_a_panic_and_the_plc_recovers() {
    let (failed, after) = survives_and_recovers(Fault::Corrupt, 2).await;
    let error = failed.outcome.expect_err("failed").to_string();
    assert!(error.starts_with("transport"), "{error}");
    assert!(after.reconnects >= 1);
}

#[tokio::test]
async fn reset_connections_fail_the_poll_and_the_plc_reconnects_when_they_stop() {
    let (failed, after) = survives_and_recovers(Fault::Reset, 2).await;
    let error = failed.outcome.expect_err("failed").to_string();
    assert!(error.starts_with("transport"), "{error}");
    assert!(after.reconnects >= 1);
}

#[tokio::test]
async fn the_plc_goes_offline_after_the_configured_failed_polls_and_back_online() {
    // `simcfg::plc` sets offline_after_polls = 3.
    let (failed, after) = survives_and_recovers(Fault::Reset, 3).await;
    assert_eq!(failed.counters.consecutive_failures, 3);
    assert!(failed.counters.offline);
    assert!(!after.offline);
}
