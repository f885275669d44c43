//! BENCHMARKS.md "Metrics": the daemon's CPU over 60 s without scrapes, then 60 s with a
//! scrape every second, then a burst of back-to-back scrapes (CPU per scrape), on the demo
//! line (simulators and broker in this process, the daemon a process of its own, the release
//! build unless `MS5_BENCH_BIN` names another binary). About 2.5 minutes:
//!
//! ```sh
//! cargo bench --bench metrics
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may panic

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{get, try_request};
use common::rig::{Rig, RigOptions};

/// utime + stime of `pid` in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port = common::free_port();
    let rig = Rig::prepare(RigOptions {
        config_edit: Some(Box::new(move |text, _| {
            format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
        })),
        ..RigOptions::default()
    })
    .await;
    let bin =
        std::env::var("MS5_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ms5-edge").into());
    let log = std::fs::File::create(rig.dir.path().join("bench.log")).expect("log");
    let mut child = std::process::Command::new(&bin)
        .args(["run", "-c"])
        .arg(&rig.config_path)
        .env("MS5_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the daemon");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_request(addr, "GET", "/readyz")
        .await
        .is_none_or(|r| r.status != 200)
    {
        assert!(Instant::now() < deadline, "the daemon became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Warm-up: the first OEE snapshot, the page cache.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let window = Duration::from_secs(60);
    let hz = 100.0; // USER_HZ on Linux
    let t0 = cpu_ticks(child.id());
    tokio::time::sleep(window).await;
    let t1 = cpu_ticks(child.id());
    let mut scrapes = 0u32;
    let mut bytes = 0usize;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while start.elapsed() < window {
        tick.tick().await;
        let r = get(addr, "/metrics").await;
        assert_eq!(r.status, 200);
        bytes = r.body.len();
        scrapes += 1;
    }
    let t2 = cpu_ticks(child.id());
    // What one scrape costs: back to back, so that the scrapes dominate the window.
    const BURST: u32 = 2000;
    let burst_start = Instant::now();
    for _ in 0..BURST {
        assert_eq!(get(addr, "/metrics").await.status, 200);
    }
    let burst_wall = burst_start.elapsed().as_secs_f64();
    let t3 = cpu_ticks(child.id());
    let idle = (t1 - t0) as f64 / hz;
    let scraped = (t2 - t1) as f64 / hz;
    let burst = (t3 - t2) as f64 / hz;
    // Minus what the daemon spends anyway over the burst's wall time.
    let per_scrape_us = (burst - idle / 60.0 * burst_wall) / f64::from(BURST) * 1e6;
    println!(
        "binary {bin}\nno scrape:      {idle:.2} s CPU in 60 s ({:.2} %)\n1 s scrape:     {scraped:.2} s CPU in 60 s ({:.2} %), {scrapes} scrapes of {bytes} bytes\nburst:          {BURST} scrapes in {burst_wall:.2} s wall, {burst:.2} s CPU: {per_scrape_us:.0} µs CPU per scrape",
        idle / 60.0 * 100.0,
        scraped / 60.0 * 100.0
    );
    let _ = child.kill();
    let _ = child.wait();
}
