//! Edge analytics benchmark (issue 14): `query/oee` over a 31-day window on a database holding
//! 31 days of minute buckets for 20 equipment (892 800 rows), sent over a real mosquitto to
//! the release daemon polling the simulated line; prints Markdown rows for BENCHMARKS.md.
//!
//! ```sh
//! cargo bench --bench analytics
//! ```
//!
//! What is measured: the answer time of `query/oee` (publish → `P/reply` received, the client
//! waiting for each reply before the next, paced at 4/s under the 5/s command budget) p50 / p99 / max; and the daemon's own polling
//! counters (`status --json`: lateness p99 and max, skipped ticks) after 30 s of polling
//! without queries and again after 30 s more with queries back to back — the second reading
//! is cumulative over both phases, so queries that delayed polls would raise it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may panic

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::line::{hold_running, BAGGER};
use common::rig::{Rig, RigOptions};
use ms5_edge::clock::rfc3339_ms;
use ms5_edge::engine::oee::Bucket;
use ms5_edge::engine::Event;
use ms5_edge::store::{Batch, Store};
use serde_json::{json, Value};

const DAYS: i64 = 31;
const EQUIPMENT: usize = 20;
const MIN: i64 = 60_000;
const PHASE: Duration = Duration::from_secs(30);

fn seed(data: &std::path::Path, from: i64) -> usize {
    let mut store = Store::open(data).unwrap();
    let codes: Vec<String> = std::iter::once(BAGGER.to_string())
        .chain((1..EQUIPMENT).map(|i| format!("BP01.EQ{i:02}")))
        .collect();
    let minutes = DAYS * 24 * 60;
    let mut rows = 0;
    for code in &codes {
        let mut events = Vec::with_capacity(10_000);
        for m in 0..minutes {
            let run = if m % 97 < 7 { 20_000 } else { 60_000 };
            events.push(Event::OeeMinute {
                equipment: code.clone(),
                minute_ms: from + m * MIN,
                bucket: Bucket {
                    scheduled_ms: MIN,
                    run_ms: run,
                    unplanned_ms: MIN - run,
                    good: (run / 600) as u64,
                    reject: (m % 3) as u64,
                    ..Bucket::default()
                },
            });
            if events.len() == 10_000 {
                store
                    .commit(&Batch {
                        events: &events,
                        ..Batch::default()
                    })
                    .unwrap();
                rows += events.len();
                events.clear();
            }
        }
        store
            .commit(&Batch {
                events: &events,
                ..Batch::default()
            })
            .unwrap();
        rows += events.len();
    }
    rows
}

fn polling(rig: &Rig) -> (u64, u64, u64, u64) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
        .args(["status", "--json", "-c"])
        .arg(&rig.config_path)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plcs = v["plcs"].as_object().unwrap();
    assert!(!plcs.is_empty());
    let worst = |k: &str| {
        plcs.values()
            .map(|c| c[k].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    (
        worst("lateness_p99_us"),
        worst("max_lateness_us"),
        plcs.values()
            .map(|c| c["skipped_ticks"].as_u64().unwrap_or(0))
            .sum(),
        plcs.values()
            .map(|c| c["polls"].as_u64().unwrap_or(0))
            .sum(),
    )
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let from = (now / 86_400_000 - DAYS - 1) * 86_400_000;
    let t = Instant::now();
    let rows = seed(&dir.path().join("data"), from);
    let seeded = t.elapsed();
    let db_mb = std::fs::metadata(dir.path().join("data/ms5-edge.db"))
        .unwrap()
        .len() as f64
        / 1e6;
    let rig = Rig::prepare(RigOptions {
        dir: Some(dir),
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    let mut daemon = rig.spawn("daemon.log");
    rig.wait_state_after("running", 0, Duration::from_secs(60))
        .await;
    tokio::time::sleep(PHASE).await; // the measurement window without queries
    let before = polling(&rig);

    let (qf, qt) = (rfc3339_ms(from), rfc3339_ms(from + DAYS * 86_400_000));
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < PHASE {
        let id = format!("b{}", times.len());
        let t = Instant::now();
        let r = rig
            .command_within(
                BAGGER,
                "query/oee",
                json!({"request_id": id, "from": qf, "to": qt}),
                Duration::from_secs(20),
            )
            .await;
        times.push(t.elapsed());
        assert_eq!(r["ok"], true, "{r}");
        // The per-equipment command budget is 5/s sustained (SPEC §7): pace at 4/s.
        tokio::time::sleep(Duration::from_millis(250).saturating_sub(t.elapsed())).await;
        assert!(
            r["result"]["planned_busy_time_s"].as_f64().unwrap() > 2.6e6,
            "{r}"
        );
    }
    let after = polling(&rig);
    daemon.terminate();
    times.sort();
    println!("seeded {rows} minute rows ({EQUIPMENT} equipment × {DAYS} days) in {:.1} s; database {db_mb:.0} MB", seeded.as_secs_f64());
    println!("| query/oee, 31-day window | answers | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| over MQTT, one at a time, 4/s | {} | {:.1} | {:.1} | {:.1} |",
        times.len(),
        pct(&times, 0.5),
        pct(&times, 0.99),
        pct(&times, 1.0)
    );
    println!("| polling (worst PLC) | polls | lateness p99 µs | lateness max µs | skipped ticks |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| 30 s without queries | {} | {} | {} | {} |",
        before.3, before.0, before.1, before.2
    );
    println!(
        "| + 30 s with queries (cumulative) | {} | {} | {} | {} |",
        after.3, after.0, after.1, after.2
    );
}
