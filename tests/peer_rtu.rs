//! Modbus RTU end to end (SPEC §9): the daemon polls a pymodbus serial RTU server
//! (`tests/peers/rtu_server.py`) over a socat pseudo-terminal pair, and what it read arrives at
//! mosquitto as telemetry.
//!
//! One bus, three PLCs: `scale` (unit 1), `filler` (unit 9 on the PLC, overridden to unit 2 by
//! its equipment's `unit_id`) and `ghost` (unit 3, which does not exist: the server stays
//! silent, as a dead unit on a real bus). The server logs every request's start and end with
//! timestamps, so the test checks on the wire, not in our own code, that:
//!
//! - two requests never overlap (no request starts while an answered one has not ended, and
//!   exactly one request's bytes arrive between two starts);
//! - only read function codes arrive (zero writes);
//! - the silent unit delays the live ones by at most its timeout (the gap between two polls of
//!   unit 1 stays within its interval + the ghost's timeout + scheduling slack), and it backs
//!   off like any PLC (goes offline, its ticks in backoff send nothing);
//! - values and quality are decoded right (types, byte order, register bit, coils) and
//!   published.
//!
//! Needs socat and the peers venv with pyserial (`scripts/test` installs both).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::line::PREFIX;
use common::python::peers_python;
use common::rig::{Rig, RigOptions};
use serde_json::{json, Value};

/// A socat pseudo-terminal pair: the daemon opens `ours`, the peer `theirs`.
struct PtyPair {
    ours: PathBuf,
    theirs: PathBuf,
    child: Child,
}

impl PtyPair {
    fn start(dir: &Path) -> PtyPair {
        let ours = dir.join("ttyMS5");
        let theirs = dir.join("ttyPEER");
        let socat = which("socat").unwrap_or_else(|| {
            panic!("socat is missing: run scripts/test (it installs it), or apt-get install socat")
        });
        let child = Command::new(socat)
            .arg(format!("pty,raw,echo=0,link={}", ours.display()))
            .arg(format!("pty,raw,echo=0,link={}", theirs.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(ours.exists() && theirs.exists()) {
            assert!(Instant::now() < deadline, "socat made no pty pair in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        PtyPair {
            ours,
            theirs,
            child,
        }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// The RTU server on `device`, logging to `log`.
struct RtuServer {
    child: Child,
    log: PathBuf,
}

impl RtuServer {
    fn start(device: &Path, spec: &Value, log: PathBuf) -> RtuServer {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/rtu_server.py");
        let child = Command::new(peers_python())
            .arg(script)
            .arg(device)
            .arg("19200")
            .arg("N")
            .arg(spec.to_string())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the RTU server");
        let mut server = RtuServer { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.output().contains("SERVING") {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("RTU server exited ({status}):\n{}", server.output());
            }
            assert!(
                Instant::now() < deadline,
                "RTU server did not start in 30 s:\n{}",
                server.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RtuServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of the server's log.
#[derive(Debug)]
enum Wire {
    Rx { bytes: usize },
    Start { unit: u8, fc: u8, t_us: u64 },
    End { unit: u8 },
    Silent { unit: u8 },
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn wire(log: &str) -> Vec<Wire> {
    log.lines()
        .filter_map(|l| {
            let unit = || field(l, "unit").map(|u| u as u8);
            Some(match l.split_whitespace().next()? {
                "RX" => Wire::Rx {
                    bytes: field(l, "n")? as usize,
                },
                "START" => Wire::Start {
                    unit: unit()?,
                    fc: field(l, "fc")? as u8,
                    t_us: field(l, "t")?,
                },
                "END" => Wire::End { unit: unit()? },
                "SILENT" => Wire::Silent { unit: unit()? },
                _ => return None,
            })
        })
        .collect()
}

const SCALE: &str = "BP01.RTU.SCALE";
const FILLER: &str = "BP01.RTU.FILLER";
const GHOST: &str = "BP01.RTU.GHOST";

/// Three RTU PLCs on `device`, appended to the demo line's config.
fn rtu_config(text: String, device: &Path) -> String {
    let d = device.display();
    let bus = format!("device = \"{d}\"\nbaud = 19200\nparity = \"none\"\npoll_interval_ms = 200");
    format!(
        r#"{text}
[[plc]]
name = "scale"
protocol = "modbus-rtu"
{bus}
unit_id = 1
timeout_ms = 150

[[plc]]
name = "filler"
protocol = "modbus-rtu"
{bus}
unit_id = 9
byte_order = "CDAB"
timeout_ms = 150

[[plc]]
name = "ghost"
protocol = "modbus-rtu"
{bus}
unit_id = 3
timeout_ms = 150

[[equipment]]
code = "{SCALE}"
plc = "scale"
line_id = "BP01-L1"
ideal_rate_per_min = 60
[equipment.signals]
running = {{ address = "co:0" }}
good_count = {{ address = "hr:0", type = "u32" }}
speed = {{ address = "hr:10", type = "f32", byte_order = "CDAB" }}
[equipment.signals.extra]
temp_c = {{ address = "ir:5", type = "i16" }}

[[equipment]]
code = "{FILLER}"
plc = "filler"
unit_id = 2
line_id = "BP01-L1"
ideal_rate_per_min = 60
[equipment.signals]
running = {{ address = "hr:20.3", type = "bool" }}
good_count = {{ address = "hr:0", type = "u16" }}
speed = {{ address = "hr:10", type = "f32" }}

[[equipment]]
code = "{GHOST}"
plc = "ghost"
line_id = "BP01-L1"
ideal_rate_per_min = 60
[equipment.signals]
running = {{ address = "co:0" }}
good_count = {{ address = "hr:0" }}
"#
    )
}

fn spec() -> Value {
    json!({
        "1": [
            {"table": "co", "address": 0, "values": [true]},
            {"table": "hr", "address": 0, "type": "u32", "values": [123_456]},
            {"table": "hr", "address": 10, "type": "f32", "order": "CDAB", "values": [-12.5]},
            {"table": "ir", "address": 5, "type": "i16", "values": [-40]},
        ],
        "2": [
            {"table": "hr", "address": 0, "type": "u16", "values": [77]},
            {"table": "hr", "address": 10, "type": "f32", "order": "CDAB", "values": [3.25]},
            {"table": "hr", "address": 20, "raw": [0x0008]},
        ],
    })
}

fn telemetry<'a>(m: &'a [common::Received], code: &str) -> Vec<&'a Value> {
    m.iter()
        .filter(|r| r.topic == format!("{PREFIX}/{code}/telemetry"))
        .map(|r| &r.payload["data"])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_on_one_bus_are_read_one_request_at_a_time_and_a_silent_one_delays_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let server = RtuServer::start(&pty.theirs, &spec(), dir.path().join("rtu-server.log"));
    let ours = pty.ours.clone();
    let rig = Rig::start(RigOptions {
        dir: Some(dir),
        config_edit: Some(Box::new(move |text, _| rtu_config(text, &ours))),
        ..RigOptions::default()
    })
    .await;

    // Values and quality, decoded right and published.
    rig.sub
        .wait(
            "good telemetry from both live RTU units",
            Duration::from_secs(30),
            |m| {
                let good = |code| {
                    telemetry(m, code)
                        .iter()
                        .any(|d| d["quality"]["good_count"] == "good")
                };
                good(SCALE) && good(FILLER)
            },
        )
        .await;
    // A request sent before the server had the port open may have gone unanswered; from here
    // on the live units must not fail a poll.
    let failed_before = |plc: &str| {
        rig.observers()
            .view
            .borrow()
            .plcs
            .get(plc)
            .map_or(0, |c| c.failed_polls)
    };
    let (scale_failed, filler_failed) = (failed_before("scale"), failed_before("filler"));
    let m = rig.sub.snapshot();
    let scale = telemetry(&m, SCALE)
        .into_iter()
        .rev()
        .find(|d| d["quality"]["good_count"] == "good")
        .unwrap()
        .clone();
    assert_eq!(scale["values"]["running"], true, "{scale}");
    assert_eq!(scale["values"]["good_count"], 123_456, "{scale}");
    assert_eq!(scale["values"]["speed"], -12.5, "{scale}");
    assert_eq!(scale["values"]["temp_c"], -40, "{scale}");
    for s in ["running", "good_count", "speed", "temp_c"] {
        assert_eq!(scale["quality"][s], "good", "{s}: {scale}");
    }
    let filler = telemetry(&m, FILLER)
        .into_iter()
        .rev()
        .find(|d| d["quality"]["good_count"] == "good")
        .unwrap()
        .clone();
    // The PLC's unit 9 is overridden by the equipment's unit_id = 2 (unit 9 would be silent);
    // the PLC's byte_order CDAB applies to its f32.
    assert_eq!(filler["values"]["running"], true, "{filler}");
    assert_eq!(filler["values"]["good_count"], 77, "{filler}");
    assert_eq!(filler["values"]["speed"], 3.25, "{filler}");

    // The ghost goes offline (timeouts, then backoff), seen in the status the daemon reports.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = rig.observers().view.borrow().clone();
        let ghost = view.plcs.get("ghost").cloned().unwrap_or_default();
        let scale = view.plcs.get("scale").cloned().unwrap_or_default();
        let filler = view.plcs.get("filler").cloned().unwrap_or_default();
        if ghost.offline && ghost.backoff_ticks > 0 && scale.polls >= 20 {
            assert!(ghost.timeouts >= 1, "{ghost:?}");
            assert!(
                ghost
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("timed out"),
                "{ghost:?}"
            );
            assert!(!scale.offline, "{scale:?}");
            assert_eq!(scale.failed_polls, scale_failed, "{scale:?}");
            assert_eq!(filler.failed_polls, filler_failed, "{filler:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ghost not offline in backoff within 30 s: ghost {ghost:?}, scale {scale:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // P/status carries the same health per PLC, RTU ones included (republished when the
    // ghost's error state changed).
    rig.sub
        .wait(
            "a P/status with the ghost's timeout and the scale's health",
            Duration::from_secs(30),
            |m| {
                m.iter()
                    .filter(|r| r.topic == format!("{PREFIX}/status"))
                    .any(|r| {
                        let plcs = &r.payload["health"]["plcs"];
                        let ghost = &plcs["ghost"]["counters"];
                        ghost["timeouts"].as_u64() >= Some(1)
                            && ghost["last_error"]
                                .as_str()
                                .is_some_and(|e| e.contains("timed out"))
                            && plcs["scale"]["counters"]["polls"].is_u64()
                    })
            },
        )
        .await;

    // On the wire: never two requests at once, only reads, the ghost costs only its timeout.
    let events = wire(&server.output());
    let starts: Vec<(u8, u8, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Wire::Start { unit, fc, t_us } => Some((*unit, *fc, *t_us)),
            _ => None,
        })
        .collect();
    assert!(starts.len() >= 40, "few requests seen: {}", starts.len());
    for unit in [1, 2, 3] {
        assert!(
            starts.iter().any(|s| s.0 == unit),
            "no request for unit {unit}"
        );
    }
    assert!(
        !starts.iter().any(|s| s.0 == 9),
        "the equipment's unit_id did not override the PLC's"
    );
    let writes: Vec<_> = starts.iter().filter(|s| !(1..=4).contains(&s.1)).collect();
    assert!(
        writes.is_empty(),
        "non-read function codes sent: {writes:?}"
    );

    let mut open: Option<u8> = None; // an answered unit whose answer has not been sent yet
    let mut bytes_since_start = 0usize;
    let mut seen_start = false;
    for e in &events {
        match e {
            Wire::Rx { bytes } => bytes_since_start += bytes,
            Wire::Start { unit, .. } => {
                assert!(
                    open.is_none(),
                    "request for unit {unit} started while unit {open:?} was being answered"
                );
                if seen_start {
                    // Read requests are 8 bytes: more means two requests were sent together.
                    assert_eq!(
                        bytes_since_start, 8,
                        "bytes between two requests (overlap on the wire)"
                    );
                }
                seen_start = true;
                bytes_since_start = 0;
                open = (*unit != 3).then_some(*unit);
            }
            Wire::End { unit } | Wire::Silent { unit } => {
                assert!(
                    open.is_none_or(|u| u == *unit),
                    "answer for unit {unit} while unit {open:?} was open"
                );
                open = None;
            }
        }
    }

    // Unit 1 is polled every 200 ms (two requests: coils, then registers); the ghost holds the
    // bus for at most its 150 ms timeout per poll. Scheduling on a loaded 2-core box gets
    // 250 ms of slack; a retry or a doubled timeout would exceed it.
    let unit1: Vec<u64> = starts
        .iter()
        .filter(|s| s.0 == 1 && s.1 == 1)
        .map(|s| s.2)
        .collect();
    assert!(unit1.len() >= 10, "unit 1 polled {} times", unit1.len());
    let worst_gap_ms = unit1
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1000)
        .max()
        .unwrap();
    assert!(
        worst_gap_ms <= 200 + 150 + 250,
        "unit 1 waited {worst_gap_ms} ms between two polls"
    );
    drop(rig);
}
