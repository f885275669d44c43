//! Acquisition benchmark (issue 3 §6): N simulated PLCs × 100 signals, polled by the release
//! daemon for a fixed time; prints one Markdown table row. `scripts/bench-acquisition` runs
//! the four cases of BENCHMARKS.md and prints the table; one case by hand:
//!
//! ```sh
//! cargo build --release --bin ms5-edge
//! cargo bench --bench acquisition -- --plcs 20 --interval-ms 100 --duration-s 60 \
//!     --daemon target/release/ms5-edge
//! ```
//!
//! ## What runs where
//!
//! - **This process** runs the N Modbus TCP simulators (`ms5_edge::sim`, one per PLC, on free
//!   loopback ports, on one tokio worker thread) — their CPU is not the daemon's.
//! - **The daemon** is the real release binary (`ms5-edge run -c`), started as a child with a
//!   generated config: N `[[plc]]`, one `[[equipment]]` each with `running`, `good_count`,
//!   `faults` (4 words) and 97 `extra` signals (u16, u32, f32) = 100 signals per PLC, one
//!   24-hour shift (so the engine keeps OEE minutes), no `[mqtt]` (the outbox fills, as on a
//!   gateway whose broker is away).
//!
//! ## What is measured
//!
//! - Lateness (actual poll start − scheduled tick) p50 / p99 / max, skipped ticks, polls:
//!   the daemon's own counters, read after the run with `ms5-edge status --json` (they are
//!   cumulative since the daemon started, warm-up included). p50 and p99 are those of the
//!   worst PLC.
//! - CPU: utime + stime of the daemon from `/proc/PID/stat`, between the moment every PLC has
//!   been polled once and the end of the run, divided by the wall time (% of one core) and by
//!   the polls made in that window (CPU per poll: everything the daemon does per poll — read,
//!   decode, engine, SQLite commit — not only the Modbus exchange).
//! - Memory: `VmRSS` at the end and `VmHWM` (peak) from `/proc/PID/status`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ms5_edge::sim::{self, Machine, SimHandle};

/// Signals per PLC: running + good_count + faults + `EXTRA` extras.
const EXTRA: usize = 97;

struct Args {
    plcs: usize,
    interval_ms: u64,
    duration_s: u64,
    daemon: PathBuf,
    header: bool,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            plcs: 2,
            interval_ms: 100,
            duration_s: 60,
            daemon: PathBuf::from("target/release/ms5-edge"),
            header: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match a.as_str() {
                "--plcs" => args.plcs = parse(&value("--plcs")?)?,
                "--interval-ms" => args.interval_ms = parse(&value("--interval-ms")?)?,
                "--duration-s" => args.duration_s = parse(&value("--duration-s")?)?,
                "--daemon" => args.daemon = PathBuf::from(value("--daemon")?),
                "--header" => args.header = true,
                // `cargo bench` appends `--bench` to a harness-less bench's arguments.
                "--bench" => {}
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(args)
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

/// The generated gateway config: one simulated PLC and one equipment per entry of `ports`.
fn config_text(data_dir: &Path, ports: &[u16], interval_ms: u64) -> String {
    let mut t = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\ntimezone = \"Europe/London\"\n\n\
         [[shift]]\nname = \"all-day\"\nstart = \"00:00\"\nend = \"00:00\"\n",
        data_dir.display()
    );
    // The timeout may not exceed the interval (a read must finish within its tick).
    let timeout_ms = interval_ms.min(500);
    for (i, port) in ports.iter().enumerate() {
        let _ = write!(
            t,
            "\n[[plc]]\nname = \"plc{i:02}\"\nprotocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"\n\
             port = {port}\nunit_id = 1\npoll_interval_ms = {interval_ms}\n\
             timeout_ms = {timeout_ms}\n\n\
             [[equipment]]\ncode = \"BENCH.EQ{i:02}\"\nname = \"Bench {i}\"\nplc = \"plc{i:02}\"\n\
             line_id = \"BENCH\"\nposition_in_line = {pos}\nprimary = {primary}\n\
             type = \"production\"\ncriticality = 3\nideal_rate_per_min = 120\nmicro_stop_s = 30\n\n\
             [equipment.signals]\nrunning = {{ address = \"co:0\" }}\n\
             good_count = {{ address = \"hr:102\", type = \"u32\" }}\n\
             faults = {{ address = \"hr:110\", type = \"u16\", count = 4 }}\n\n\
             [equipment.signals.extra]\n",
            pos = i + 1,
            primary = i == 0,
        );
        // 60 u16 at hr:200.., 20 u32 at hr:260.., 17 f32 at hr:300..: a map that needs
        // coalescing across types (the simulator serves zeros there).
        for k in 0..EXTRA {
            let (address, ty) = match k {
                0..60 => (200 + k, "u16"),
                60..80 => (260 + 2 * (k - 60), "u32"),
                _ => (300 + 2 * (k - 80), "f32"),
            };
            let _ = writeln!(
                t,
                "x{k:02} = {{ address = \"hr:{address}\", type = \"{ty}\" }}"
            );
        }
    }
    t
}

/// The daemon child; killed if the benchmark fails half-way.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ms5-edge status --json`, parsed (`None` while the daemon has written nothing yet).
fn status(daemon: &Path, config: &Path) -> Option<serde_json::Value> {
    let out = Command::new(daemon)
        .args(["status", "--json", "-c"])
        .arg(config)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32, ticks_per_s: f64) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unreadable /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("no field {i} in /proc/{pid}/stat"))
    };
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    Ok((tick(14 - 3)? + tick(15 - 3)?) / ticks_per_s)
}

/// `VmRSS` and `VmHWM` of `pid`, in kB.
fn memory_kb(pid: u32) -> Result<(u64, u64), String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let field = |name: &str| -> Result<u64, String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Sum of a counter over every PLC, and the largest value of another.
fn plcs(status: &serde_json::Value) -> Vec<&serde_json::Value> {
    status["plcs"]
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default()
}

fn sum(status: &serde_json::Value, key: &str) -> u64 {
    plcs(status).iter().filter_map(|p| p[key].as_u64()).sum()
}

fn max(status: &serde_json::Value, key: &str) -> u64 {
    plcs(status)
        .iter()
        .filter_map(|p| p[key].as_u64())
        .max()
        .unwrap_or(0)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

async fn run(args: Args) -> Result<String, String> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut sims: Vec<SimHandle> = Vec::new();
    for i in 0..args.plcs {
        let machine = if i % 2 == 0 {
            Machine::Bagger
        } else {
            Machine::Loader
        };
        sims.push(sim::start(machine, any).await.map_err(|e| e.to_string())?);
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ports: Vec<u16> = sims.iter().map(|s| s.addr().port()).collect();
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        config_text(&dir.path().join("data"), &ports, args.interval_ms),
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.path().join("daemon.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&args.daemon)
        .args(["run", "-c"])
        .arg(&config)
        .env("MS5_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("start {}: {e}", args.daemon.display()))?;
    let pid = child.id();
    let daemon = Daemon { child };

    // Warm-up ends when every PLC has been polled at least once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let polls_at_start = loop {
        if let Some(s) = status(&args.daemon, &config) {
            if plcs(&s).len() == args.plcs && plcs(&s).iter().all(|p| p["polls"].as_u64() > Some(0))
            {
                break sum(&s, "polls");
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
            return Err(format!(
                "the daemon did not poll every PLC within 30 s:\n{log}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ticks = clock_ticks_per_second();
    let cpu_start = cpu_seconds(pid, ticks)?;
    let wall_start = Instant::now();
    // The measurement window itself: a fixed run time is what the benchmark measures.
    tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
    let cpu = cpu_seconds(pid, ticks)? - cpu_start;
    let wall = wall_start.elapsed().as_secs_f64();
    let (rss_kb, hwm_kb) = memory_kb(pid).map_err(|e| {
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
        format!("{e}; the daemon is gone, its log:\n{log}")
    })?;
    let s = status(&args.daemon, &config).ok_or("status --json gave nothing")?;
    drop(daemon);
    for sim in sims {
        sim.shutdown().await;
    }

    let polls = sum(&s, "polls");
    let window_polls = polls.saturating_sub(polls_at_start).max(1);
    Ok(format!(
        "| {plcs} × 100 | {interval} ms | {dur} s | {polls} | {p50} | {p99} | {max} | {skipped} | {failed} | {cycle} | {core:.2} % | {per_poll:.0} µs | {rss:.1} / {hwm:.1} MB |",
        plcs = args.plcs,
        interval = args.interval_ms,
        dur = args.duration_s,
        p50 = ms(max(&s, "lateness_p50_us")),
        p99 = ms(max(&s, "lateness_p99_us")),
        max = ms(max(&s, "max_lateness_us")),
        skipped = sum(&s, "skipped_ticks"),
        failed = sum(&s, "failed_polls"),
        cycle = ms(max(&s, "max_cycle_us")),
        core = 100.0 * cpu / wall,
        per_poll = cpu * 1e6 / window_polls as f64,
        rss = rss_kb as f64 / 1024.0,
        hwm = hwm_kb as f64 / 1024.0,
    ))
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench acquisition: {e}");
            return ExitCode::from(2);
        }
    };
    if args.header {
        println!("| PLCs × signals | interval | run | polls | lateness p50 (ms) | p99 (ms) | max (ms) | skipped ticks | failed polls | max cycle (ms) | CPU (% of one core) | CPU per poll | RSS / peak |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        return ExitCode::SUCCESS;
    }
    // The simulators get one worker thread: the daemon is what is measured.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench acquisition: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(row) => {
            println!("{row}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench acquisition: {e}");
            ExitCode::FAILURE
        }
    }
}
