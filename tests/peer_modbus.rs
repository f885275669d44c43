//! The Modbus driver against pymodbus (`tests/peers/modbus_server.py`), an independent Modbus
//! TCP server: golden values in every type × byte order, encoded by the peer in Python from the
//! SPEC text (`struct.pack`), never by our own encoder. A shared misunderstanding of a byte
//! order between our decoder and our simulator cannot pass here.
//!
//! The peer serves only unit 7 (a request for any other unit draws an exception), so every
//! good read also proves the unit id travels in the MBAP header. It prints each request it
//! receives, which lets the coalescing tests count requests on the wire rather than trust the
//! plan.
//!
//! Needs the peers venv (`scripts/test` installs it; the tests say how when it is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::collections::BTreeMap;

use ms5_edge::acquire::modbus::ModbusPoller;
use ms5_edge::acquire::plan::{ReadRequest, Table};
use ms5_edge::acquire::{EquipmentSample, PollError, Poller, Quality, SignalReading, Value};
use ms5_edge::config::{
    ByteOrder, DataType, Equipment, ModbusAddress, Plc, Protocol, Signal, SignalSource, Signals,
};
use ms5_edge::sim::{config as simcfg, Machine};
use serde_json::{json, Value as Json};

use common::python::Peer;

/// The unit id the peer serves.
const UNIT: u8 = 7;

const ORDERS: [(ByteOrder, &str); 4] = [
    (ByteOrder::Abcd, "ABCD"),
    (ByteOrder::Cdab, "CDAB"),
    (ByteOrder::Badc, "BADC"),
    (ByteOrder::Dcba, "DCBA"),
];

/// One golden vector: a type, the two elements the peer holds (JSON, as the peer's `struct`
/// packs them) and the values the driver must decode from them.
struct Golden {
    name: &'static str,
    data_type: DataType,
    peer: [Json; 2],
    expected: [Value; 2],
}

/// Every byte of each first element differs from the others, so any byte or register mix-up
/// changes the value; the second elements sit at the edges of each type's range.
fn goldens() -> Vec<Golden> {
    vec![
        Golden {
            name: "u16",
            data_type: DataType::U16,
            peer: [json!(0xA1B2), json!(7)],
            expected: [Value::UInt(0xA1B2), Value::UInt(7)],
        },
        Golden {
            name: "i16",
            data_type: DataType::I16,
            peer: [json!(-12345), json!(32767)],
            expected: [Value::Int(-12345), Value::Int(32767)],
        },
        Golden {
            name: "u32",
            data_type: DataType::U32,
            peer: [json!(0x1234_5678u32), json!(4_000_000_000u32)],
            expected: [Value::UInt(0x1234_5678), Value::UInt(4_000_000_000)],
        },
        Golden {
            name: "i32",
            data_type: DataType::I32,
            peer: [json!(-123_456_789), json!(i32::MAX)],
            expected: [Value::Int(-123_456_789), Value::Int(i64::from(i32::MAX))],
        },
        Golden {
            name: "u64",
            data_type: DataType::U64,
            peer: [json!(0x1122_3344_5566_7788u64), json!(u64::MAX)],
            expected: [Value::UInt(0x1122_3344_5566_7788), Value::UInt(u64::MAX)],
        },
        Golden {
            name: "i64",
            data_type: DataType::I64,
            peer: [json!(-1_234_567_890_123_456_789i64), json!(i64::MIN)],
            expected: [Value::Int(-1_234_567_890_123_456_789), Value::Int(i64::MIN)],
        },
        Golden {
            name: "f32",
            data_type: DataType::F32,
            // The peer packs -123.456 into the nearest f32; the driver widens it through its
            // shortest decimal form, so it reads back as written.
            peer: [json!(-123.456), json!(1.0)],
            expected: [Value::Float(-123.456), Value::Float(1.0)],
        },
        Golden {
            name: "f64",
            data_type: DataType::F64,
            peer: [json!(-9876.54321), json!(6.022_140_76e23)],
            expected: [Value::Float(-9876.54321), Value::Float(6.022_140_76e23)],
        },
    ]
}

fn signal(address: ModbusAddress, data_type: DataType, order: ByteOrder) -> Signal {
    Signal {
        source: SignalSource::Modbus {
            address,
            byte_order: order,
        },
        data_type,
        count: 1,
        scale: 1.0,
        offset: 0.0,
    }
}

fn array(mut s: Signal, count: u16) -> Signal {
    s.count = count;
    s
}

fn scaled(mut s: Signal, scale: f64, offset: f64) -> Signal {
    s.scale = scale;
    s.offset = offset;
    s
}

fn plc(addr: std::net::SocketAddr, unit_id: u8) -> Plc {
    Plc {
        name: "pymodbus".into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        poll_interval_ms: 1000,
        timeout_ms: 2000,
        offline_after_polls: 3,
        protocol: Protocol::ModbusTcp {
            unit_id,
            byte_order: ByteOrder::Abcd,
        },
    }
}

fn equipment(
    code: &str,
    running: Signal,
    good_count: Signal,
    extra: Vec<(String, Signal)>,
) -> Equipment {
    Equipment {
        code: code.into(),
        signals: Signals {
            running,
            speed: None,
            good_count,
            reject_count: None,
            faults: None,
            extra,
        },
        ..simcfg::equipment(Machine::Bagger, "pymodbus")
    }
}

fn good(value: Value) -> SignalReading {
    SignalReading {
        value: Some(value),
        quality: Quality::Good,
    }
}

fn bools(bits: &[bool]) -> Value {
    Value::Array(bits.iter().copied().map(Value::Bool).collect())
}

/// The golden map: what the peer holds, the equipment that reads it, and every signal's
/// expected reading.
struct GoldenMap {
    peer_spec: Vec<Json>,
    equipment: Vec<Equipment>,
    expected: BTreeMap<(String, String), Value>,
}

/// Address of the 100-register block (its own equipment, 100 signals).
const BLOCK_START: u16 = 1000;

fn golden_map() -> GoldenMap {
    let mut spec = Vec::new();
    let mut extra: Vec<(String, Signal)> = Vec::new();
    let mut expected = BTreeMap::new();
    let mut expect = |name: &str, value: Value| {
        expected.insert(("GOLDEN".to_string(), name.to_string()), value);
    };

    // Every type × byte order: two elements per vector, read both as a scalar (the first
    // element) and as a `count = 2` array over the same registers. One block of 40 registers
    // per byte order, 100 registers apart (so four requests, one per order).
    for (o, (order, order_name)) in ORDERS.iter().enumerate() {
        let mut address = 100 * o as u16;
        for g in goldens() {
            spec.push(json!({
                "table": "hr", "address": address, "type": g.name, "order": order_name,
                "values": g.peer,
            }));
            let name = format!("{}_{}", g.name, order_name.to_lowercase());
            let s = signal(ModbusAddress::HoldingRegister(address), g.data_type, *order);
            extra.push((name.clone(), s.clone()));
            extra.push((format!("{name}_array"), array(s, 2)));
            expect(&name, g.expected[0].clone());
            expect(&format!("{name}_array"), Value::Array(g.expected.to_vec()));
            address += 2 * g.data_type.registers();
        }
    }

    // Input registers, scale and offset: raw × scale + offset.
    spec.push(json!({"table": "ir", "address": 0, "type": "i16", "values": [-40]}));
    spec.push(
        json!({"table": "ir", "address": 1, "type": "u32", "order": "CDAB", "values": [123_456]}),
    );
    spec.push(json!({"table": "hr", "address": 600, "type": "u16", "values": [235]}));
    spec.push(
        json!({"table": "hr", "address": 602, "type": "f32", "order": "DCBA", "values": [2.5]}),
    );
    let abcd = ByteOrder::Abcd;
    let scaled_signals = [
        (
            "ir_i16_half_plus_10",
            scaled(
                signal(ModbusAddress::InputRegister(0), DataType::I16, abcd),
                0.5,
                10.0,
            ),
            -10.0,
        ),
        (
            "ir_u32_cdab_hundredths",
            scaled(
                signal(
                    ModbusAddress::InputRegister(1),
                    DataType::U32,
                    ByteOrder::Cdab,
                ),
                0.01,
                0.0,
            ),
            1234.56,
        ),
        (
            "hr_u16_tenths",
            scaled(
                signal(ModbusAddress::HoldingRegister(600), DataType::U16, abcd),
                0.1,
                0.0,
            ),
            23.5,
        ),
        (
            "hr_f32_dcba_double_plus_1",
            scaled(
                signal(
                    ModbusAddress::HoldingRegister(602),
                    DataType::F32,
                    ByteOrder::Dcba,
                ),
                2.0,
                1.0,
            ),
            6.0,
        ),
    ];
    for (name, s, value) in scaled_signals {
        extra.push((name.into(), s));
        expect(name, Value::Float(value));
    }

    // Coils and discrete inputs, single and as arrays.
    let coils = [true, false, true, true, false, false, true, false, true];
    spec.push(json!({"table": "co", "address": 10, "values": coils}));
    spec.push(json!({"table": "di", "address": 5, "values": [false, true, true]}));
    let bool_signals = [
        (
            "co_11",
            signal(ModbusAddress::Coil(11), DataType::Bool, abcd),
            Value::Bool(false),
        ),
        (
            "co_12_x7",
            array(signal(ModbusAddress::Coil(12), DataType::Bool, abcd), 7),
            bools(&coils[2..9]),
        ),
        (
            "di_5",
            signal(ModbusAddress::DiscreteInput(5), DataType::Bool, abcd),
            Value::Bool(false),
        ),
        (
            "di_6_x2",
            array(
                signal(ModbusAddress::DiscreteInput(6), DataType::Bool, abcd),
                2,
            ),
            bools(&[true, true]),
        ),
    ];
    for (name, s, value) in bool_signals {
        extra.push((name.into(), s));
        expect(name, value);
    }

    // Register bits: hr:700 = 0x8005 (bits 0, 2, 15), hr:701 = 0x0002 (bit 1); ir:50 = 0x0008.
    spec.push(json!({"table": "hr", "address": 700, "raw": [0x8005, 0x0002]}));
    spec.push(json!({"table": "ir", "address": 50, "raw": [0x0008]}));
    let bit_signals = [
        (
            "hr_700_0",
            signal(
                ModbusAddress::HoldingRegisterBit(700, 0),
                DataType::Bool,
                abcd,
            ),
            Value::Bool(true),
        ),
        (
            "hr_700_1",
            signal(
                ModbusAddress::HoldingRegisterBit(700, 1),
                DataType::Bool,
                abcd,
            ),
            Value::Bool(false),
        ),
        (
            "hr_700_15",
            signal(
                ModbusAddress::HoldingRegisterBit(700, 15),
                DataType::Bool,
                abcd,
            ),
            Value::Bool(true),
        ),
        // Bits 14 and 15 of hr:700, then bits 0 and 1 of hr:701.
        (
            "hr_700_14_x4",
            array(
                signal(
                    ModbusAddress::HoldingRegisterBit(700, 14),
                    DataType::Bool,
                    abcd,
                ),
                4,
            ),
            bools(&[false, true, false, true]),
        ),
        (
            "ir_50_3",
            signal(ModbusAddress::InputRegisterBit(50, 3), DataType::Bool, abcd),
            Value::Bool(true),
        ),
    ];
    for (name, s, value) in bit_signals {
        extra.push((name.into(), s));
        expect(name, value);
    }

    let golden = equipment(
        "GOLDEN",
        signal(ModbusAddress::Coil(10), DataType::Bool, abcd),
        signal(ModbusAddress::HoldingRegister(4), DataType::U32, abcd),
        extra,
    );
    expected.insert(("GOLDEN".into(), "running".into()), Value::Bool(true));
    expected.insert(
        ("GOLDEN".into(), "good_count".into()),
        Value::UInt(0x1234_5678),
    );

    // 100 contiguous u16 registers, 100 signals of a second equipment: one request.
    let block: Vec<u16> = (0..100).map(|i| 3 * i + 1).collect();
    spec.push(json!({"table": "hr", "address": BLOCK_START, "raw": block}));
    let block_extra = (1..100)
        .map(|i| {
            (
                format!("r{}", BLOCK_START + i),
                signal(
                    ModbusAddress::HoldingRegister(BLOCK_START + i),
                    DataType::U16,
                    abcd,
                ),
            )
        })
        .collect();
    let block_equipment = equipment(
        "BLOCK",
        signal(ModbusAddress::Coil(10), DataType::Bool, abcd),
        signal(
            ModbusAddress::HoldingRegister(BLOCK_START),
            DataType::U16,
            abcd,
        ),
        block_extra,
    );
    for (i, word) in block.iter().enumerate() {
        let name = if i == 0 {
            "good_count".to_string()
        } else {
            format!("r{}", BLOCK_START + i as u16)
        };
        expected.insert(("BLOCK".into(), name), Value::UInt(u64::from(*word)));
    }
    expected.insert(("BLOCK".into(), "running".into()), Value::Bool(true));

    GoldenMap {
        peer_spec: spec,
        equipment: vec![golden, block_equipment],
        expected,
    }
}

fn start_peer(spec: &[Json]) -> Peer {
    Peer::start(
        "modbus_server.py",
        &[UNIT.to_string(), Json::Array(spec.to_vec()).to_string()],
    )
}

/// The requests the peer has received so far, as (table, start, quantity).
fn requests_seen(peer: &Peer) -> Vec<ReadRequest> {
    peer.output()
        .lines()
        .filter_map(|line| line.strip_prefix("REQUEST "))
        .map(|rest| {
            let field = |key: &str| -> u16 {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("peer log line without {key}: {rest}"))
            };
            assert_eq!(
                field("unit="),
                u16::from(UNIT),
                "request on the wrong unit: {rest}"
            );
            let table = match field("fc=") {
                1 => Table::Coils,
                2 => Table::DiscreteInputs,
                3 => Table::HoldingRegisters,
                4 => Table::InputRegisters,
                fc => panic!("the gateway sent function code {fc}; it only ever reads (1-4)"),
            };
            ReadRequest {
                table,
                start: field("address="),
                quantity: field("count="),
            }
        })
        .collect()
}

fn readings(samples: &[EquipmentSample]) -> BTreeMap<(String, String), SignalReading> {
    samples
        .iter()
        .flat_map(|s| {
            s.signals
                .iter()
                .map(|(name, r)| ((s.equipment.clone(), name.to_string()), r.clone()))
        })
        .collect()
}

#[tokio::test]
async fn every_type_in_every_byte_order_reads_the_golden_values_from_pymodbus() {
    let map = golden_map();
    let peer = start_peer(&map.peer_spec);
    let mut poller = ModbusPoller::new(&plc(peer.addr(), UNIT), &map.equipment);
    let samples = poller.poll().await.expect("the peer answers every read");
    let got = readings(&samples);
    assert_eq!(
        got.len(),
        map.expected.len(),
        "one reading per configured signal"
    );
    let wrong: Vec<String> = map
        .expected
        .iter()
        .filter(|(key, value)| got.get(*key) != Some(&good((*value).clone())))
        .map(|((eq, name), value)| {
            format!(
                "{eq}/{name}: expected {value:?}, got {:?}",
                got.get(&(eq.clone(), name.clone()))
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} golden values wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Every type × order was checked, as scalar and array (a fixture that checks nothing
    // must not pass).
    assert_eq!(
        map.expected.keys().filter(|(eq, _)| eq == "GOLDEN").count(),
        8 * 4 * 2 + 4 + 4 + 5 + 2
    );
    assert_eq!(poller.stats().exceptions, 0);
    assert_eq!(poller.stats().connects, 1);
}

#[tokio::test]
async fn a_poll_of_the_golden_map_sends_exactly_the_planned_requests_and_100_registers_in_one() {
    let map = golden_map();
    let peer = start_peer(&map.peer_spec);
    let mut poller = ModbusPoller::new(&plc(peer.addr(), UNIT), &map.equipment);
    let planned = poller.planned_requests();
    // By hand: co:10..=18; di:5..=7; ir:0..=2 and ir:50 (a gap of 47 splits); hr: one block per
    // byte order (4), hr:600..=603, hr:700..=701, and the 100-register block.
    let req = |table, start, quantity| ReadRequest {
        table,
        start,
        quantity,
    };
    let mut expected_plan = vec![
        req(Table::Coils, 10, 9),
        req(Table::DiscreteInputs, 5, 3),
        req(Table::InputRegisters, 0, 3),
        req(Table::InputRegisters, 50, 1),
    ];
    expected_plan.extend((0..4).map(|o| req(Table::HoldingRegisters, 100 * o, 40)));
    expected_plan.extend([
        req(Table::HoldingRegisters, 600, 4),
        req(Table::HoldingRegisters, 700, 2),
        req(Table::HoldingRegisters, BLOCK_START, 100),
    ]);
    assert_eq!(planned, expected_plan);

    poller.poll().await.expect("the peer answers");
    assert_eq!(
        requests_seen(&peer),
        planned,
        "first poll: the plan, nothing more"
    );
    poller.poll().await.expect("the peer answers");
    let seen = requests_seen(&peer);
    assert_eq!(seen.len(), 2 * planned.len(), "second poll: the plan again");
    assert_eq!(seen[planned.len()..], planned[..]);
}

#[tokio::test]
async fn a_modbus_exception_marks_only_its_signal_bad_and_the_read_is_not_hammered() {
    // The peer's tables end at address 1999: hr:2500 draws IllegalDataAddress on its own
    // request, and hr:2001 inside a read merged with the good hr:1998.
    let spec = vec![
        json!({"table": "co", "address": 0, "values": [true]}),
        json!({"table": "hr", "address": 1998, "raw": [0xBEEF]}),
        json!({"table": "hr", "address": 10, "type": "u32", "values": [42]}),
    ];
    let peer = start_peer(&spec);
    let abcd = ByteOrder::Abcd;
    let eq = equipment(
        "EXC",
        signal(ModbusAddress::Coil(0), DataType::Bool, abcd),
        signal(ModbusAddress::HoldingRegister(10), DataType::U32, abcd),
        vec![
            (
                "ghost".into(),
                signal(ModbusAddress::HoldingRegister(2500), DataType::U16, abcd),
            ),
            (
                "edge".into(),
                signal(ModbusAddress::HoldingRegister(1998), DataType::U16, abcd),
            ),
            (
                "past_the_edge".into(),
                signal(ModbusAddress::HoldingRegister(2001), DataType::U16, abcd),
            ),
        ],
    );
    let mut poller = ModbusPoller::new(&plc(peer.addr(), UNIT), &[eq]);

    let first = readings(&poller.poll().await.expect("the good signals still read"));
    let bad = SignalReading {
        value: None,
        quality: Quality::Bad,
    };
    let at = |name: &str| ("EXC".to_string(), name.to_string());
    assert_eq!(first[&at("ghost")], bad);
    assert_eq!(
        first[&at("past_the_edge")],
        bad,
        "isolated by re-reading one by one"
    );
    assert_eq!(
        first[&at("edge")],
        good(Value::UInt(0xBEEF)),
        "its neighbour in the merged read stays good"
    );
    assert_eq!(first[&at("good_count")], good(Value::UInt(42)));
    assert_eq!(first[&at("running")], good(Value::Bool(true)));
    assert!(
        poller.connected(),
        "an exception does not cost the connection"
    );
    // ghost, the merged hr:1998..=2001, then hr:2001 alone.
    assert_eq!(poller.stats().exceptions, 3);

    let before = requests_seen(&peer).len();
    let second = readings(&poller.poll().await.expect("the good signals still read"));
    let stale = SignalReading {
        value: None,
        quality: Quality::Stale,
    };
    assert_eq!(second[&at("ghost")], stale, "held off, not asked again");
    assert_eq!(second[&at("past_the_edge")], stale);
    assert_eq!(second[&at("edge")], good(Value::UInt(0xBEEF)));
    assert_eq!(
        poller.stats().exceptions,
        3,
        "the refused reads were not re-sent"
    );
    let second_poll: Vec<ReadRequest> = requests_seen(&peer)[before..].to_vec();
    assert!(
        second_poll.iter().all(|r| r.span().end() <= 2000),
        "no request reached past the peer's map again: {second_poll:?}"
    );
}

#[tokio::test]
async fn a_unit_id_the_peer_does_not_serve_is_refused_not_read_from_another_unit() {
    let spec = vec![json!({"table": "hr", "address": 0, "raw": [1]})];
    let peer = start_peer(&spec);
    let eq = equipment(
        "OTHER_UNIT",
        signal(ModbusAddress::Coil(0), DataType::Bool, ByteOrder::Abcd),
        signal(
            ModbusAddress::HoldingRegister(0),
            DataType::U16,
            ByteOrder::Abcd,
        ),
        vec![],
    );
    let mut poller = ModbusPoller::new(&plc(peer.addr(), UNIT + 1), &[eq]);
    match poller.poll().await {
        Err(PollError::Exception(_)) => {}
        other => panic!("expected every read refused with an exception, got {other:?}"),
    }
}

#[tokio::test]
async fn a_toml_config_with_unit_id_and_byte_orders_reads_the_golden_values() {
    // The same path as the daemon: text → `config::load_str` → poller. PLC-wide CDAB, one
    // signal overriding it with BADC.
    let spec = vec![
        json!({"table": "co", "address": 0, "values": [true]}),
        json!({"table": "hr", "address": 100, "type": "f32", "order": "CDAB", "values": [1.0]}),
        json!({"table": "hr", "address": 102, "type": "u32", "order": "CDAB", "values": [0x1234_5678]}),
        json!({"table": "hr", "address": 104, "type": "i64", "order": "BADC", "values": [-2]}),
        json!({"table": "ir", "address": 10, "type": "i16", "values": [-57]}),
    ];
    let peer = start_peer(&spec);
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        r#"
[gateway]
id = "peer-test"
data_dir = "{dir}"
timezone = "Europe/London"

[[plc]]
name = "pymodbus"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
unit_id = {UNIT}
byte_order = "CDAB"
poll_interval_ms = 1000
timeout_ms = 500

[[equipment]]
code = "TOML"
name = "From TOML"
plc = "pymodbus"
line_id = "L1"
position_in_line = 1
primary = true
type = "production"
criticality = 3
ideal_rate_per_min = 60
micro_stop_s = 30

[equipment.signals]
running    = {{ address = "co:0" }}
speed      = {{ address = "hr:100", type = "f32" }}
good_count = {{ address = "hr:102", type = "u32" }}

[equipment.signals.extra]
minus_two   = {{ address = "hr:104", type = "i64", byte_order = "BADC" }}
temperature = {{ address = "ir:10", type = "i16", scale = 0.1 }}
"#,
        dir = dir.path().display(),
        port = peer.port,
    );
    let config = ms5_edge::config::load_str(&text, "peer.toml")
        .unwrap_or_else(|e| panic!("test config is valid: {e}"))
        .config;
    let plc = config
        .plc("pymodbus")
        .expect("the PLC is configured")
        .clone();
    let equipment: Vec<Equipment> = config.equipment_of("pymodbus").cloned().collect();
    let mut poller = ModbusPoller::new(&plc, &equipment);
    let samples = poller.poll().await.expect("the peer answers");
    let s = &samples[0].signals;
    assert_eq!(s["running"], good(Value::Bool(true)));
    assert_eq!(s["speed"], good(Value::Float(1.0)));
    assert_eq!(s["good_count"], good(Value::UInt(0x1234_5678)));
    assert_eq!(s["minus_two"], good(Value::Int(-2)));
    assert_eq!(s["temperature"], good(Value::Float(-5.7)));
}
