//! Sparkplug B benchmark (issue 11), run with `cargo bench --bench sparkplug`:
//!
//! 1. **Backlog**: 100 000 state changes committed with `[sparkplug]` on (each one DDATA row).
//! 2. **Raw QoS 1**: a plain rumqttc publisher sends 100 000 messages of a DDATA's size to a
//!    mosquitto on loopback (in-flight 64); time until the last PUBACK.
//! 3. **Flush**: the Sparkplug session births and sends the 100 000 stored DDATA (historical,
//!    QoS 0, a QoS 1 fence every 256, fence PUBACK → rows deleted); time until every row is
//!    deleted.
//! 4. **Latency**: the daemon on the simulated line polling every 100 ms; for each DDATA
//!    metric, broker arrival (a subscriber on loopback) minus the metric's timestamp (the
//!    poll's scheduled tick, when the read starts). p50/p99 over the run.
//!
//! Prints Markdown for BENCHMARKS.md. Our own protobuf structs decode the latency samples (this
//! is a measurement; tests/sparkplug.rs checks the format with an independent decoder).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing bench may panic

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::flush::{commit_in_batches, rate, raw_qos1};
use ms5_edge::config::Config;
use ms5_edge::engine::{Event, MachineState};
use ms5_edge::health::Registry;
use ms5_edge::sparkplug::proto::Payload;
use ms5_edge::sparkplug::session::{self, SpbChannels, SpbSettings};
use ms5_edge::store::sparkplug::SpbReader;
use ms5_edge::store::Store;
use prost::Message as _;
use rumqttc::{AsyncClient, Event as MqttEvent, Incoming, MqttOptions, QoS};
use tokio::sync::{watch, Notify};

const ROWS: usize = 100_000;
const BATCH: usize = 500;
const INFLIGHT: u16 = 64;

fn config(bagger: u16, loader: u16, data: &str, url: Option<&str>) -> Config {
    let text = ms5_edge::demo::config_text(bagger, loader, data, url)
        .replace("poll_interval_ms = 500", "poll_interval_ms = 100");
    let text = format!("{text}\n[sparkplug]\ngroup_id = \"BENCH\"\nedge_node_id = \"gw\"\n");
    ms5_edge::config::load_str(&text, "bench.toml")
        .expect("bench config")
        .config
}

fn event(codes: &[String], i: usize) -> Event {
    let n = codes.len();
    let (from, to) = if (i / n).is_multiple_of(2) {
        (MachineState::Running, MachineState::Stopped)
    } else {
        (MachineState::Stopped, MachineState::Running)
    };
    Event::StateChanged {
        equipment: codes[i % n].clone(),
        from,
        to,
        at_ms: 1_764_000_000_000 + i as i64,
    }
}

fn commit_backlog(dir: &std::path::Path, codes: &[String]) -> Duration {
    let mut store = Store::open(dir).expect("open store");
    store
        .enable_sparkplug(false, Arc::new(Notify::new()))
        .expect("sparkplug on");
    let events: Vec<Event> = (0..ROWS).map(|i| event(codes, i)).collect();
    commit_in_batches(&mut store, &events, BATCH)
}

async fn flush(config: &Config, dir: &std::path::Path) -> Duration {
    let settings = SpbSettings {
        mqtt: config.mqtt.clone().expect("mqtt"),
        sparkplug: config.sparkplug.clone().expect("sparkplug"),
        catalogue: ms5_edge::sparkplug::model::Catalogue::of(config),
        version: "bench".into(),
        guard: None,
    };
    let reader = SpbReader::open(dir).expect("reader");
    let (stop_tx, shutdown) = watch::channel(false);
    let stats = Arc::new(Registry::default());
    let t = Instant::now();
    let task = tokio::spawn(session::run(
        settings,
        reader,
        SpbChannels {
            changed: Arc::new(Notify::new()),
            shutdown,
            retire: watch::channel(Vec::new()).1,
            commands: None,
            live: None,
        },
        stats.clone(),
    ));
    while stats.sparkplug.delivered.load(Ordering::Relaxed) < ROWS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t.elapsed();
    let _ = stop_tx.send(true);
    let _ = task.await;
    let (depth, _) = SpbReader::open(dir)
        .expect("reader")
        .depth()
        .expect("depth");
    assert_eq!(depth, 0, "the Sparkplug queue is empty after the flush");
    elapsed
}

/// Broker arrival − metric timestamp of every DDATA metric for `run`, with the bagger toggled
/// every 300 ms so that data flows.
async fn latency(port: u16, dir: &std::path::Path, run: Duration) -> Vec<i64> {
    let any = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    let bagger = ms5_edge::sim::start(ms5_edge::sim::Machine::Bagger, any)
        .await
        .expect("sim");
    let loader = ms5_edge::sim::start(ms5_edge::sim::Machine::Loader, any)
        .await
        .expect("sim");
    let url = format!("mqtt://127.0.0.1:{port}");
    let cfg = config(
        bagger.addr().port(),
        loader.addr().port(),
        &dir.display().to_string(),
        Some(&url),
    );
    let mut opts = MqttOptions::new("bench-latency", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client
        .subscribe("spBv1.0/BENCH/DDATA/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let daemon = tokio::spawn(ms5_edge::daemon::run(
        cfg,
        stop,
        ms5_edge::daemon::Observers::default(),
    ));
    let mut samples = Vec::new();
    let end = Instant::now() + run;
    let mut toggle = tokio::time::interval(Duration::from_millis(300));
    let mut running = false;
    while Instant::now() < end {
        tokio::select! {
            ev = eventloop.poll() => {
                if let Ok(MqttEvent::Incoming(Incoming::Publish(p))) = ev {
                    let now = ms5_edge::clock::Clock::system().now_ms();
                    let payload = Payload::decode(p.payload.as_ref()).expect("a payload");
                    for m in payload.metrics {
                        if m.is_historical != Some(true) {
                            samples.push(now - m.timestamp.unwrap_or(0) as i64);
                        }
                    }
                }
            }
            _ = toggle.tick() => {
                running = !running;
                bagger.set_override(ms5_edge::sim::Override {
                    running: Some(running),
                    ..Default::default()
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = daemon.await;
    samples.sort_unstable();
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let broker = common::Broker::start(&dir.path().join("broker")).await;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let cfg = config(1, 2, &data.display().to_string(), Some(&url));
    let codes: Vec<String> = cfg.equipment.iter().map(|e| e.code.clone()).collect();
    let commit = commit_backlog(&data, &codes);
    // A DDATA of one state change is about this size (alias, timestamp, string, flags).
    let raw = raw_qos1(broker.port, vec![0x42; 48], ROWS, 2, INFLIGHT).await;
    let flushed = flush(&cfg, &data).await;
    let lat = latency(
        broker.port,
        &dir.path().join("live"),
        Duration::from_secs(30),
    )
    .await;

    let (c, r, f) = (rate(ROWS, commit), rate(ROWS, raw), rate(ROWS, flushed));
    println!("| measurement | messages | seconds | msgs/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| state changes committed with `[sparkplug]` ({BATCH}/transaction) | {ROWS} | {:.2} | {c:.0} |",
        commit.as_secs_f64()
    );
    println!(
        "| raw rumqttc QoS 1 publisher (in-flight {INFLIGHT}, 48 B) | {ROWS} | {:.2} | {r:.0} |",
        raw.as_secs_f64()
    );
    println!(
        "| Sparkplug flush (birth, historical DDATA QoS 0, fence every 256 → delete) | {ROWS} | {:.2} | {f:.0} |",
        flushed.as_secs_f64()
    );
    println!("\nflush / raw = {:.0} %", 100.0 * f / r);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "\nDDATA latency, scheduled tick → broker → subscriber, 100 ms polling, {} metrics: p50 {} ms, p99 {} ms, max {} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(0)
    );
}
