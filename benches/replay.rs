//! Store-and-forward benchmark (issue 5), run with `cargo bench --bench replay`:
//!
//! 1. **Commit rate**: 100 000 `state.changed` events committed to a fresh database with the
//!    production settings (WAL, `synchronous = FULL`), in batches as the core commits them.
//! 2. **Raw QoS 1**: a plain rumqttc publisher sends 100 000 messages of the same size to a
//!    mosquitto on loopback with the same in-flight window; time until the last PUBACK.
//! 3. **Replay**: the uplink drains the 100 000-event backlog to the same broker (PUBACK →
//!    row deletion included); time until the outbox is empty.
//!
//! Prints a Markdown table for BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::flush::{commit_in_batches, rate, raw_qos1};
use ms5_edge::config::{Mqtt, MqttUrl};
use ms5_edge::engine::{Event, MachineState};
use ms5_edge::store::outbox::OutboxReader;
use ms5_edge::store::Store;
use ms5_edge::uplink::{self, UplinkChannels, UplinkSettings, UplinkStats};
use tokio::sync::{mpsc, watch, Notify};

const EVENTS: usize = 100_000;
const BATCH: usize = 500;
const INFLIGHT: u16 = 64;

fn event(i: usize) -> Event {
    let (from, to) = if i.is_multiple_of(2) {
        (MachineState::Running, MachineState::Stopped)
    } else {
        (MachineState::Stopped, MachineState::Running)
    };
    Event::StateChanged {
        equipment: format!("BP01.PACK.BAG{}", i % 4),
        from,
        to,
        at_ms: 1_764_000_000_000 + i as i64,
    }
}

fn commit_backlog(dir: &std::path::Path) -> (Duration, String) {
    let mut store = Store::open(dir).expect("open store");
    let stream = store.stream().to_string();
    let events: Vec<Event> = (0..EVENTS).map(event).collect();
    (commit_in_batches(&mut store, &events, BATCH), stream)
}

async fn replay(port: u16, dir: &std::path::Path, stream: String) -> Duration {
    let settings = UplinkSettings {
        mqtt: Mqtt {
            url: MqttUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port,
            },
            client_id: "bench-gw".into(),
            topic_prefix: "bench/gw".into(),
            username: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_s: 30,
            max_inflight: INFLIGHT,
            failover_urls: Vec::new(),
            protocol: ms5_edge::config::MqttProtocol::V5,
            max_packet_kb: 256,
            reconnect_max_s: 5,
            return_to_primary_s: 0,
        },
        gateway_id: "bench-gw".into(),
        stream,
        started_at: String::new(),
        version: String::new(),
        guard: uplink::guard::GuardSettings {
            equipment: vec![],
            commands: Default::default(),
            key: None,
        },
    };
    let reader = OutboxReader::open(dir).expect("reader");
    let (_live_tx, live) = mpsc::channel(16);
    let (commands, _cmd_rx) = mpsc::channel(16);
    let (_status_tx, status) = watch::channel(serde_json::json!({"state": "online"}));
    let (stop_tx, shutdown) = watch::channel(false);
    let stats = Arc::new(UplinkStats::default());
    let t = Instant::now();
    let task = tokio::spawn(uplink::run(
        settings,
        reader,
        UplinkChannels {
            fresh: mpsc::channel(1).1,
            committed: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            outbox_changed: Arc::new(Notify::new()),
            live,
            commands,
            status,
            shutdown,
        },
        stats.clone(),
    ));
    while stats.acknowledged.load(Ordering::Relaxed) < EVENTS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t.elapsed();
    let _ = stop_tx.send(true);
    let _ = task.await;
    let depth = OutboxReader::open(dir)
        .expect("reader")
        .depth()
        .expect("depth");
    assert_eq!(depth, 0, "the outbox is empty after the replay");
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (commit, stream) = commit_backlog(&data);
    // The same size as a replayed state.changed envelope.
    let sample = ms5_edge::store::outbox::OutboxReader::open(&data)
        .expect("reader")
        .fetch(0, 1)
        .expect("fetch");
    let payload = sample[0].envelope("bench-gw", &stream);

    let broker = common::Broker::start(&dir.path().join("broker")).await;
    let raw = raw_qos1(
        broker.port,
        payload.clone().into_bytes(),
        EVENTS,
        4,
        INFLIGHT,
    )
    .await;
    let replayed = replay(broker.port, &data, stream).await;

    let (c, r, p) = (
        rate(EVENTS, commit),
        rate(EVENTS, raw),
        rate(EVENTS, replayed),
    );
    println!("| measurement | messages | seconds | msgs/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| event commit (WAL, synchronous=FULL, {BATCH}/transaction) | {EVENTS} | {:.2} | {c:.0} |",
        commit.as_secs_f64()
    );
    println!(
        "| raw rumqttc QoS 1 publisher (in-flight {INFLIGHT}, {} B payload) | {EVENTS} | {:.2} | {r:.0} |",
        payload.len(),
        raw.as_secs_f64()
    );
    println!(
        "| outbox replay (in-flight {INFLIGHT}, PUBACK → delete) | {EVENTS} | {:.2} | {p:.0} |",
        replayed.as_secs_f64()
    );
    println!("\nreplay / raw = {:.0} %", 100.0 * p / r);
}
