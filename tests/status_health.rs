//! Every `P/status` carries the current health, not the health of the first poll.
//!
//! The uplink republishes `P/status` every 60 s (and on connect, and when a health counter
//! changes); what it publishes is whatever the daemon's status watch holds. The daemon's
//! test-only `MS5_EDGE_TEST_STATUS_S` knob makes it ask for that republish every second
//! *without* refreshing the value first, so these messages show exactly what the 60 s timer
//! would send.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::Duration;

use common::line::{hold_running, PREFIX};
use common::rig::{Rig, RigOptions};

fn bagger_polls(payload: &serde_json::Value) -> Option<u64> {
    payload["health"]["plcs"]["bagger"]["counters"]["polls"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_status_messages_carry_the_current_poll_counts() {
    let topic = format!("{PREFIX}/status");
    let rig = Rig::prepare(RigOptions {
        subscribe: Some(topic.clone()),
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let sub = &rig.sub;

    let knob = [("MS5_EDGE_TEST_STATUS_S", "1".to_string())];
    let mut daemon = rig.spawn_with_env("daemon.log", &knob);
    // The bagger is polled every 500 ms and never changes its error state, so only a fresh
    // watch value can show more than a handful of polls.
    sub.wait(
        "a P/status whose health counts at least 6 bagger polls",
        Duration::from_secs(30),
        |m| {
            m.iter()
                .filter(|r| r.topic == topic)
                .filter_map(|r| bagger_polls(&r.payload))
                .any(|n| n >= 6)
        },
    )
    .await;
    let with_health: Vec<_> = sub
        .snapshot()
        .into_iter()
        .filter(|r| r.topic == topic && bagger_polls(&r.payload).is_some())
        .collect();
    assert!(with_health.len() >= 2, "several status messages");
    let last_polls: Vec<&str> = with_health
        .iter()
        .filter_map(|r| r.payload["health"]["plcs"]["bagger"]["last_poll"].as_str())
        .collect();
    assert!(
        last_polls.windows(2).any(|w| w[0] < w[1]),
        "last_poll moves on between messages: {last_polls:?}"
    );
    assert!(
        daemon.log_text().contains("MS5_EDGE_TEST_STATUS_S"),
        "the knob is logged"
    );
    assert!(daemon.terminate().success());
}
