//! Engine rules, driven sample by sample with time passed in.

use super::*;
use crate::acquire::{EquipmentSample, Quality, SignalReading, Value};
use crate::config::*;

fn signal(address: ModbusAddress, data_type: DataType, count: u16) -> Signal {
    Signal {
        source: SignalSource::Modbus {
            address,
            byte_order: ByteOrder::Abcd,
        },
        data_type,
        count,
        scale: 1.0,
        offset: 0.0,
    }
}

fn config(publish_interval_ms: u64) -> Config {
    let equipment = Equipment {
        code: "BAG1".into(),
        name: "Bagger 1".into(),
        plc: "bagger".into(),
        line_id: "L1".into(),
        position_in_line: 1,
        primary: true,
        kind: EquipmentType::Production,
        criticality: 4,
        ideal_rate_per_min: 120.0,
        micro_stop_s: 30,
        location: None,
        department: None,
        maintenance_interval_hours: None,
        oee_targets: OeeTargets {
            availability: 0.9,
            performance: 0.85,
            quality: 0.95,
            oee: 0.73,
        },
        signals: Signals {
            running: signal(ModbusAddress::Coil(0), DataType::Bool, 1),
            speed: None,
            good_count: signal(ModbusAddress::HoldingRegister(102), DataType::U32, 1),
            reject_count: None,
            faults: Some(signal(
                ModbusAddress::HoldingRegister(110),
                DataType::U16,
                2,
            )),
            extra: vec![],
        },
        faults: vec![Fault {
            bit: 17,
            code: "JAM".into(),
            description: "Jam".into(),
            category: FaultCategory::Mechanical,
            severity: Severity::Medium,
            andon: true,
        }],
        andon: AndonRules::default(),
    };
    Config {
        gateway: Gateway {
            id: "gw".into(),
            data_dir: "/tmp".into(),
            timezone: "UTC".into(),
        },
        mqtt: None,
        storage: Storage {
            max_outbox_mb: 256,
            retention_days: 90,
            telemetry_retention_days: 7,
        },
        telemetry: Telemetry {
            publish_interval_ms,
            store_and_forward: true,
        },
        plcs: vec![Plc {
            name: "bagger".into(),
            host: "127.0.0.1".into(),
            port: 502,
            poll_interval_ms: 1000,
            timeout_ms: 500,
            offline_after_polls: 3,
            protocol: Protocol::ModbusTcp {
                unit_id: 1,
                byte_order: ByteOrder::Abcd,
            },
        }],
        shifts: vec![],
        planned_stops: vec![],
        equipment: vec![equipment],
    }
}

fn sample(running: bool, fault_words: [u64; 2]) -> PollInput {
    let mut signals = BTreeMap::new();
    let good = |v| SignalReading {
        value: Some(v),
        quality: Quality::Good,
    };
    signals.insert("running".to_string(), good(Value::Bool(running)));
    signals.insert("good_count".to_string(), good(Value::UInt(10)));
    signals.insert(
        "faults".to_string(),
        good(Value::Array(
            fault_words.iter().map(|w| Value::UInt(*w)).collect(),
        )),
    );
    PollInput::Samples(vec![EquipmentSample {
        equipment: "BAG1".into(),
        signals,
    }])
}

fn states(events: &[Event]) -> Vec<(MachineState, MachineState, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StateChanged {
                from, to, at_ms, ..
            } => Some((*from, *to, *at_ms)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_first_sample_takes_a_machine_out_of_offline_at_its_tick_time() {
    let mut engine = Engine::new(&config(1000), 0);
    let events = engine.on_poll("bagger", 5_000, &sample(true, [0, 0]));
    assert_eq!(
        states(&events),
        vec![(MachineState::Offline, MachineState::Running, 5_000)]
    );
}

#[test]
fn an_unchanged_state_emits_no_state_event() {
    let mut engine = Engine::new(&config(1000), 0);
    engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
    let events = engine.on_poll("bagger", 2_000, &sample(true, [0, 0]));
    assert!(states(&events).is_empty());
}

#[test]
fn a_stop_without_a_configured_fault_is_stopped() {
    let mut engine = Engine::new(&config(1000), 0);
    engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
    // Bit 0 is active but not in the fault table: not a fault of this machine.
    let events = engine.on_poll("bagger", 2_000, &sample(false, [1, 0]));
    assert_eq!(
        states(&events),
        vec![(MachineState::Running, MachineState::Stopped, 2_000)]
    );
}

#[test]
fn a_stop_with_a_configured_fault_bit_in_the_second_word_is_faulted() {
    let mut engine = Engine::new(&config(1000), 0);
    engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
    // Bit 17 = bit 1 of word 1.
    let events = engine.on_poll("bagger", 2_000, &sample(false, [0, 2]));
    assert_eq!(
        states(&events),
        vec![(MachineState::Running, MachineState::Faulted, 2_000)]
    );
}

#[test]
fn a_running_machine_with_a_fault_bit_is_still_running() {
    let mut engine = Engine::new(&config(1000), 0);
    let events = engine.on_poll("bagger", 1_000, &sample(true, [0, 2]));
    assert_eq!(states(&events)[0].1, MachineState::Running);
}

#[test]
fn equipment_goes_offline_only_after_the_configured_number_of_failed_polls() {
    let mut engine = Engine::new(&config(1000), 0);
    engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
    for n in 1..=2 {
        let events = engine.on_poll(
            "bagger",
            1_000 + n * 1_000,
            &PollInput::Failed {
                consecutive: n as u32,
            },
        );
        assert!(
            states(&events).is_empty(),
            "offline after only {n} failures"
        );
    }
    let events = engine.on_poll("bagger", 4_000, &PollInput::Failed { consecutive: 3 });
    assert_eq!(
        states(&events),
        vec![(MachineState::Running, MachineState::Offline, 4_000)]
    );
    let events = engine.on_poll("bagger", 5_000, &sample(true, [0, 0]));
    assert_eq!(
        states(&events),
        vec![(MachineState::Offline, MachineState::Running, 5_000)]
    );
}

#[test]
fn an_unreadable_running_signal_means_offline() {
    let mut engine = Engine::new(&config(1000), 0);
    engine.on_poll("bagger", 1_000, &sample(true, [0, 0]));
    let mut bad = EquipmentSample {
        equipment: "BAG1".into(),
        signals: BTreeMap::new(),
    };
    bad.signals.insert(
        "running".into(),
        SignalReading {
            value: None,
            quality: Quality::Bad,
        },
    );
    let events = engine.on_poll("bagger", 2_000, &PollInput::Samples(vec![bad]));
    assert_eq!(states(&events)[0].1, MachineState::Offline);
}

#[test]
fn a_sample_stamped_before_the_last_one_never_moves_time_backwards() {
    let mut engine = Engine::new(&config(1000), 0);
    engine.on_poll("bagger", 10_000, &sample(true, [0, 0]));
    let events = engine.on_poll("bagger", 9_000, &sample(false, [0, 0]));
    assert_eq!(
        states(&events),
        vec![(MachineState::Running, MachineState::Stopped, 10_000)]
    );
}

#[test]
fn telemetry_is_emitted_once_per_publish_interval_boundary() {
    let mut engine = Engine::new(&config(1000), 0);
    let mut telemetry_times = Vec::new();
    for t in (0..3_000).step_by(250) {
        for e in engine.on_poll("bagger", 10_000 + t, &sample(true, [0, 0])) {
            if let Event::Telemetry { at_ms, .. } = e {
                telemetry_times.push(at_ms);
            }
        }
    }
    assert_eq!(telemetry_times, vec![10_000, 11_000, 12_000]);
}

#[test]
fn a_zero_publish_interval_sends_telemetry_every_poll() {
    let mut engine = Engine::new(&config(0), 0);
    let count = (0..5)
        .flat_map(|n| engine.on_poll("bagger", n * 100, &sample(true, [0, 0])))
        .filter(|e| matches!(e, Event::Telemetry { .. }))
        .count();
    assert_eq!(count, 5);
}

#[test]
fn a_restart_marks_machines_offline_from_the_last_heartbeat() {
    let mut engine = Engine::new(&config(1000), 50_000);
    let previous = vec![MachineView {
        equipment: "BAG1".into(),
        state: MachineState::Running,
        since_ms: 10_000,
    }];
    let events = engine.restore(&previous, 40_000);
    assert_eq!(
        states(&events),
        vec![(MachineState::Running, MachineState::Offline, 40_000)]
    );
}

#[test]
fn replaying_the_same_inputs_gives_the_same_events() {
    let inputs: Vec<(i64, PollInput)> = (0..50)
        .map(|n| {
            (
                n * 1000,
                sample(n % 7 < 4, [0, if n % 5 == 0 { 2 } else { 0 }]),
            )
        })
        .collect();
    let run = || {
        let mut engine = Engine::new(&config(1000), 0);
        inputs
            .iter()
            .flat_map(|(t, i)| engine.on_poll("bagger", *t, i))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}
