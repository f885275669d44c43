//! Cost of one durable poll at the store (issue 10), run with `cargo bench --bench commit`.
//!
//! What the core does for every poll of the peer bench's PLC (10 registers, telemetry every
//! poll, store-and-forward on): one `Store::commit` of one telemetry event with the production
//! settings (WAL, `synchronous = FULL`, one fsync per commit), plus what the uplink does with
//! it afterwards: acknowledged rows deleted 64 at a time on its own connection. Prints the
//! process CPU time (user + system, from `/proc/self/stat`) and the wall time per poll, so two
//! builds can be compared on a busy machine (CPU time moves much less with load than
//! latency does).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing bench may panic

use std::collections::BTreeMap;
use std::time::Instant;

use ms5_edge::engine::Event;
use ms5_edge::sample::{Quality, Value};
use ms5_edge::store::outbox::OutboxReader;
use ms5_edge::store::{Batch, Store};

const POLLS: usize = 3_000;
const ACK_BATCH: usize = 64;

fn telemetry(i: usize) -> Event {
    let mut values = BTreeMap::new();
    let mut quality = BTreeMap::new();
    for r in 0..10 {
        values.insert(
            format!("hr{r}"),
            Some(Value::UInt((i * 7 + r) as u64 % 65_536)),
        );
        quality.insert(format!("hr{r}"), Quality::Good);
    }
    Event::Telemetry {
        equipment: "BP01.PACK.BAG1".into(),
        at_ms: 1_764_000_000_000 + 100 * i as i64,
        values,
        quality,
    }
}

/// utime + stime of this process, in clock ticks (100 Hz).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::var("MS5_BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut reader = OutboxReader::open(dir.path()).unwrap();
    let events: Vec<Event> = (0..POLLS).map(telemetry).collect();
    let mut unacked = Vec::new();
    let (t, c) = (Instant::now(), cpu_ticks());
    for (i, e) in events.iter().enumerate() {
        let seqs = store
            .commit(&Batch {
                events: std::slice::from_ref(e),
                telemetry_to_outbox: true,
                heartbeat_ms: 1_764_000_000_000 + 100 * i as i64,
                ..Batch::default()
            })
            .unwrap();
        unacked.extend(seqs);
        if unacked.len() >= ACK_BATCH {
            reader.delete(&unacked).unwrap();
            unacked.clear();
        }
    }
    let wall = t.elapsed();
    let cpu_ms = (cpu_ticks() - c) as f64 * 10.0;
    let per_poll_cpu_us = cpu_ms * 1000.0 / POLLS as f64;
    println!("| polls | CPU per poll | wall per poll | CPU s/min at 10 polls/s |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {POLLS} | {per_poll_cpu_us:.0} µs | {:.0} µs | {:.3} |",
        wall.as_secs_f64() * 1e6 / POLLS as f64,
        per_poll_cpu_us * 600.0 / 1e6
    );
}
