//! What the flush benchmarks (`benches/replay.rs`, `benches/sparkplug.rs`) share: committing a
//! backlog in batches, the raw QoS 1 publisher they are compared with, and the rate.

use std::time::{Duration, Instant};

use ms5_edge::engine::Event;
use ms5_edge::store::{Batch, Store};
use rumqttc::{AsyncClient, Event as MqttEvent, Incoming, MqttOptions, QoS};

/// Commits `events` in transactions of `batch`; returns the time it took.
pub fn commit_in_batches(store: &mut Store, events: &[Event], batch: usize) -> Duration {
    let t = Instant::now();
    for chunk in events.chunks(batch) {
        store
            .commit(&Batch {
                events: chunk,
                heartbeat_ms: 0,
                ..Batch::default()
            })
            .expect("commit");
    }
    t.elapsed()
}

/// The baseline: `messages` QoS 1 publishes of `payload` over `topics` topics with `inflight`
/// in flight, by a bare rumqttc client; returns the time until the last PUBACK.
pub async fn raw_qos1(
    port: u16,
    payload: Vec<u8>,
    messages: usize,
    topics: usize,
    inflight: u16,
) -> Duration {
    let mut opts = MqttOptions::new("bench-raw", "127.0.0.1", port);
    opts.set_inflight(inflight);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let t = Instant::now();
    let publisher = tokio::spawn(async move {
        for i in 0..messages {
            client
                .publish(
                    format!("bench/raw/{}", i % topics),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    while acked < messages {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Incoming::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("raw publisher: {e}"),
        }
    }
    let elapsed = t.elapsed();
    let _client = publisher.await;
    elapsed
}

/// Messages per second.
pub fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}
