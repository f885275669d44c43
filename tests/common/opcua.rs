//! The OPC UA peer tests' shared pieces (tests/peer_opcua.rs, tests/peer_opcua_security.rs):
//! the python asyncua server (`tests/peers/opcua_server.py`) with its control file, the
//! palletizer's signals on its nodes, and the driver's and the daemon's config for them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ms5_edge::acquire::{Quality, SignalReading, Value};
use ms5_edge::config::{
    DataType, Equipment, OpcUa, Plc, Protocol, SecurityMode, SecurityPolicy, Signal, SignalSource,
    Signals, TrustServer,
};
use ms5_edge::sim::{config as simcfg, Machine};

use super::line::PREFIX;
use super::python::Peer;
use super::rig::Rig;

pub const PALLETIZER: &str = "BP01-L1-PAL";

/// The server, with its control file (statuses on demand) in `dir`.
pub fn server(dir: &Path, port: Option<u16>, extra: &[&str]) -> Peer {
    let mut args = vec![
        "--control".to_string(),
        control_file(dir).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let peer = match port {
        Some(p) => Peer::start_on(p, "opcua_server.py", &args),
        None => Peer::start("opcua_server.py", &args),
    };
    wait_output(&peer, "READY", Duration::from_secs(30));
    peer
}

pub fn control_file(dir: &Path) -> PathBuf {
    dir.join("opcua-control.json")
}

/// Sets the statuses on demand and waits until the server applied them (one more
/// "STATUS <text>" line than before).
pub fn control(dir: &Path, peer: &Peer, json: &str) {
    let line = format!("STATUS {}", json.trim());
    let count = || peer.output().lines().filter(|l| *l == line).count();
    let before = count();
    std::fs::write(control_file(dir), json).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() == before {
        assert!(
            Instant::now() < deadline,
            "the OPC UA server did not apply {json} within 10 s:\n{}",
            peer.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_output(peer: &Peer, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !peer.output().contains(what) {
        assert!(
            Instant::now() < deadline,
            "the OPC UA server did not print {what:?} within {limit:?}:\n{}",
            peer.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn writes(peer: &Peer) -> usize {
    peer.output()
        .lines()
        .filter(|l| l.starts_with("WRITE "))
        .count()
}

pub fn node(node: &str, data_type: DataType, count: u16) -> Signal {
    Signal {
        source: SignalSource::Node { node: node.into() },
        data_type,
        count,
        scale: 1.0,
        offset: 0.0,
    }
}

pub fn plc(port: u16, pki: &Path) -> Plc {
    Plc {
        name: "pal".into(),
        host: "127.0.0.1".into(),
        port,
        poll_interval_ms: 200,
        timeout_ms: 2000,
        offline_after_polls: 3,
        protocol: Protocol::OpcUa(OpcUa {
            endpoint: format!("opc.tcp://127.0.0.1:{port}/"),
            security_policy: SecurityPolicy::None,
            security_mode: SecurityMode::None,
            username: None,
            password_file: None,
            pki_dir: pki.to_path_buf(),
            trust_server: TrustServer::Pinned,
        }),
    }
}

pub fn equipment(speed_type: DataType) -> Equipment {
    Equipment {
        signals: Signals {
            running: node("ns=2;s=Line.Running", DataType::Bool, 1),
            speed: Some(node("ns=2;s=Line.Speed", speed_type, 1)),
            good_count: node("ns=2;i=1001", DataType::U32, 1),
            reject_count: None,
            faults: Some(node("ns=2;s=Line.Faults", DataType::I32, 3)),
            extra: vec![
                ("temp_c".into(), node("ns=2;s=Line.Temp", DataType::I16, 1)),
                (
                    "energy".into(),
                    node("ns=2;s=Line.Energy", DataType::F64, 1),
                ),
            ],
        },
        ..simcfg::equipment(Machine::Loader, "pal")
    }
}

pub fn good(value: Value) -> SignalReading {
    SignalReading {
        value: Some(value),
        quality: Quality::Good,
    }
}

pub const NONE_BAD: SignalReading = SignalReading {
    value: None,
    quality: Quality::Bad,
};

/// The rig's config plus the opc-ua PLC "pal" (with `security`'s extra keys) and the
/// palletizer's signals.
pub fn opcua_config(text: String, port: u16, pki: &Path, security: &str) -> String {
    format!(
        r#"{text}
[[plc]]
name = "pal"
protocol = "opc-ua"
endpoint = "opc.tcp://127.0.0.1:{port}/"
pki_dir = "{pki}"
{security}poll_interval_ms = 200
timeout_ms = 1000

[[equipment]]
code = "{PALLETIZER}"
plc = "pal"
line_id = "BP01-L1"
ideal_rate_per_min = 60
[equipment.signals]
running = {{ node = "ns=2;s=Line.Running" }}
good_count = {{ node = "ns=2;i=1001", type = "u32" }}
speed = {{ node = "ns=2;s=Line.Speed", type = "f32" }}
faults = {{ node = "ns=2;s=Line.Faults", type = "i32", count = 3 }}
[equipment.signals.extra]
temp_c = {{ node = "ns=2;s=Line.Temp", type = "i16" }}
energy = {{ node = "ns=2;s=Line.Energy", type = "f64" }}
"#,
        pki = pki.display()
    )
}

/// The in-process daemon's counters of the PLC "pal" (what `status` and `P/status` report).
pub fn pal(rig: &Rig) -> ms5_edge::acquire::PlcCounters {
    rig.observers()
        .view
        .borrow()
        .plcs
        .get("pal")
        .cloned()
        .unwrap_or_default()
}

pub fn telemetry(m: &[super::Received]) -> Vec<&serde_json::Value> {
    m.iter()
        .filter(|r| r.topic == format!("{PREFIX}/{PALLETIZER}/telemetry"))
        .map(|r| &r.payload["data"])
        .collect()
}

pub fn secure_plc(port: u16, pki: &Path, password_file: &Path, trust: TrustServer) -> Plc {
    let mut p = plc(port, pki);
    p.protocol = Protocol::OpcUa(OpcUa {
        endpoint: format!("opc.tcp://127.0.0.1:{port}/"),
        security_policy: SecurityPolicy::Basic256Sha256,
        security_mode: SecurityMode::SignAndEncrypt,
        username: Some("ms5".into()),
        password_file: Some(password_file.to_path_buf()),
        pki_dir: pki.to_path_buf(),
        trust_server: trust,
    });
    p
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}
