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
        commands: Default::default(),
        metrics: None,
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

// ------------------------------------------------------------------------------------------
// Scenario driver: one sample per second, counters and faults as a PLC would show them.
// ------------------------------------------------------------------------------------------

use crate::engine::command::parse;
use serde_json::json;

fn ts(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// Bagger 1 as in the golden scenarios: ideal 150/min (0.4 s cycle), micro stop 30 s,
/// FILM_BREAK (bit 0, material, high, andon), JAM (bit 17, mechanical, medium, andon),
/// LOW_AIR (bit 3, other, low, no andon); shifts A/B/C, a 20 min break at 10:00 in shift A.
fn line_config() -> Config {
    let mut c = config(1000);
    c.gateway.timezone = "Europe/London".into();
    c.shifts = vec![
        Shift {
            name: "A".into(),
            start_min: 360,
            end_min: 840,
        },
        Shift {
            name: "B".into(),
            start_min: 840,
            end_min: 1320,
        },
        Shift {
            name: "C".into(),
            start_min: 1320,
            end_min: 360,
        },
    ];
    c.planned_stops = vec![PlannedStop {
        name: "break".into(),
        start_min: 600,
        duration_min: 20,
        shifts: vec!["A".into()],
    }];
    let e = &mut c.equipment[0];
    e.ideal_rate_per_min = 150.0;
    e.signals.reject_count = Some(signal(
        ModbusAddress::HoldingRegister(104),
        DataType::U32,
        1,
    ));
    e.faults = vec![
        Fault {
            bit: 0,
            code: "FILM_BREAK".into(),
            description: "Film break".into(),
            category: FaultCategory::Material,
            severity: Severity::High,
            andon: true,
        },
        Fault {
            bit: 3,
            code: "LOW_AIR".into(),
            description: "Low air pressure".into(),
            category: FaultCategory::Other,
            severity: Severity::Low,
            andon: false,
        },
        Fault {
            bit: 17,
            code: "JAM".into(),
            description: "Jam".into(),
            category: FaultCategory::Mechanical,
            severity: Severity::Medium,
            andon: true,
        },
    ];
    c
}

struct Drive {
    engine: Engine,
    t: i64,
    running_secs: u64,
    good: u64,
    /// Reject counter = floor(running seconds / reject_every).
    reject_every: u64,
    events: Vec<Event>,
    /// Good units made per running second.
    per_second: u64,
}

impl Drive {
    fn new(config: &Config, start: &str) -> Drive {
        let t = ts(start);
        Drive {
            engine: Engine::new(config, t),
            t,
            running_secs: 0,
            good: 0,
            reject_every: 20,
            events: Vec::new(),
            per_second: 2,
        }
    }

    fn sample_input(&self, running: bool, faults: [u64; 2]) -> PollInput {
        let mut signals = BTreeMap::new();
        let good = |v| SignalReading {
            value: Some(v),
            quality: Quality::Good,
        };
        signals.insert("running".to_string(), good(Value::Bool(running)));
        signals.insert("good_count".to_string(), good(Value::UInt(self.good)));
        signals.insert(
            "reject_count".to_string(),
            good(Value::UInt(self.running_secs / self.reject_every)),
        );
        signals.insert(
            "faults".to_string(),
            good(Value::Array(
                faults.iter().map(|w| Value::UInt(*w)).collect(),
            )),
        );
        PollInput::Samples(vec![EquipmentSample {
            equipment: "BAG1".into(),
            signals,
        }])
    }

    /// `secs` one-second polls showing `running` and `faults`; production follows `running`.
    fn run(&mut self, secs: u64, running: bool, faults: [u64; 2]) {
        for _ in 0..secs {
            let input = self.sample_input(running, faults);
            let e = self.engine.on_poll("bagger", self.t, &input);
            self.events.extend(e);
            let e = self.engine.on_tick(self.t);
            self.events.extend(e);
            if running {
                self.running_secs += 1;
                self.good += self.per_second;
            }
            self.t += 1000;
        }
    }

    /// Failed polls for `secs` seconds (the PLC is unreachable; nothing is produced).
    fn unreachable(&mut self, secs: u64) {
        for n in 1..=secs {
            let e = self.engine.on_poll(
                "bagger",
                self.t,
                &PollInput::Failed {
                    consecutive: n as u32,
                },
            );
            self.events.extend(e);
            let e = self.engine.on_tick(self.t);
            self.events.extend(e);
            self.t += 1000;
        }
    }

    /// One last observation at the current time, then a tick (to close a shift).
    fn finish(&mut self, running: bool) {
        let input = self.sample_input(running, [0, 0]);
        let e = self.engine.on_poll("bagger", self.t, &input);
        self.events.extend(e);
        let e = self.engine.on_tick(self.t);
        self.events.extend(e);
    }

    fn command(&mut self, path: &str, body: serde_json::Value) -> CommandResult {
        let cmd = parse(path, body.to_string().as_bytes()).expect("command parses");
        let r = self.engine.on_command(self.t, &cmd);
        if let Ok(e) = &r {
            self.events.extend(e.clone());
        }
        r
    }

    fn named(&self, name: &str) -> Vec<(i64, serde_json::Value)> {
        self.events
            .iter()
            .filter(|e| e.name() == name)
            .filter_map(|e| e.message().map(|m| (e.at_ms(), m.data)))
            .collect()
    }

    fn final_snapshot(&self, shift: &str) -> serde_json::Value {
        self.named("oee.snapshot")
            .into_iter()
            .map(|(_, d)| d)
            .find(|d| d["final"] == true && d["shift"] == shift)
            .unwrap_or_else(|| panic!("no final snapshot for shift {shift}"))
    }
}

fn close(a: &serde_json::Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn a_stop_shorter_than_micro_stop_is_a_minor_stop_reported_at_its_end() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(60, true, [0, 0]);
    d.run(29, false, [0, 0]);
    d.run(10, true, [0, 0]);
    assert!(
        d.named("downtime.started").is_empty(),
        "a minor stop never starts downtime"
    );
    let ended = d.named("downtime.ended");
    assert_eq!(ended.len(), 1);
    let (at, data) = &ended[0];
    assert_eq!(*at, ts("2026-11-25T07:01:29Z"));
    assert_eq!(data["minor"], true);
    assert_eq!(data["duration_s"], 29.0);
    assert_eq!(data["reason_code"], "UNASSIGNED");
}

#[test]
fn a_stop_reaching_micro_stop_starts_downtime_with_its_original_start_time() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(60, true, [0, 0]);
    d.run(45, false, [1, 0]);
    d.run(5, true, [0, 0]);
    let started = d.named("downtime.started");
    assert_eq!(started.len(), 1);
    let (at, data) = &started[0];
    assert_eq!(
        *at,
        ts("2026-11-25T07:01:30Z"),
        "emitted when it reached 30 s"
    );
    assert_eq!(data["started_at"], "2026-11-25T07:01:00.000Z");
    assert_eq!(data["reason_code"], "FILM_BREAK");
    assert_eq!(data["category"], "material");
    assert_eq!(data["planned"], false);
    assert_eq!(data["fault_bits"], json!([0]));
    let ended = d.named("downtime.ended");
    assert_eq!(ended[0].1["duration_s"], 45.0);
    assert_eq!(ended[0].1["minor"], false);
    assert_eq!(ended[0].1["downtime_id"], data["downtime_id"]);
}

#[test]
fn the_first_out_fault_is_the_one_active_earliest_not_the_lowest_bit() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 2]); // JAM (bit 17) active while still running
    d.run(2, true, [1, 2]); // FILM_BREAK (bit 0) joins
    d.run(40, false, [1, 2]);
    let started = d.named("downtime.started");
    assert_eq!(started[0].1["reason_code"], "JAM");
}

#[test]
fn faults_appearing_in_the_same_poll_go_to_the_lowest_bit() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(40, false, [1 | 8, 0]);
    assert_eq!(
        d.named("downtime.started")[0].1["reason_code"],
        "FILM_BREAK"
    );
}

#[test]
fn a_fault_appearing_after_an_unassigned_downtime_start_sets_the_reason_automatically() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(35, false, [0, 0]);
    d.run(10, false, [0, 2]);
    let started = d.named("downtime.started");
    assert_eq!(started[0].1["reason_code"], "UNASSIGNED");
    assert_eq!(started[0].1["category"], "unassigned");
    let set = d.named("downtime.reason_set");
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].1["reason_code"], "JAM");
    assert_eq!(set[0].1["by"], "auto");
    assert_eq!(set[0].0, ts("2026-11-25T07:00:45Z"));
}

#[test]
fn an_operator_can_set_the_reason_of_an_unassigned_downtime_and_auto_does_not_override_it() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(35, false, [0, 0]);
    let id = d.named("downtime.started")[0].1["downtime_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = d.command(
        "BAG1/downtime/reason",
        json!({"request_id":"r1","by":"jsmith","downtime_id": id,"reason_code":"NO_OPERATOR"}),
    );
    assert!(r.is_ok(), "{r:?}");
    d.run(10, false, [0, 2]);
    let set = d.named("downtime.reason_set");
    assert_eq!(
        set.len(),
        1,
        "auto never overrides an operator's reason: {set:?}"
    );
    assert_eq!(set[0].1["reason_code"], "NO_OPERATOR");
    assert_eq!(set[0].1["category"], "operator");
    assert_eq!(set[0].1["by"], "jsmith");
}

#[test]
fn a_high_fault_raises_an_andon_after_its_delay_which_escalates_until_acknowledged() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(400, false, [1, 0]);
    let raised = d.named("andon.raised");
    assert_eq!(raised.len(), 1);
    assert_eq!(
        raised[0].0,
        ts("2026-11-25T07:01:10Z"),
        "raise_after_s.high = 60"
    );
    assert_eq!(raised[0].1["priority"], "high");
    assert_eq!(raised[0].1["level"], 1);
    assert_eq!(raised[0].1["cause"], "fault");
    assert_eq!(raised[0].1["reason_code"], "FILM_BREAK");
    assert!(raised[0].1["downtime_id"].is_string());
    let escalated = d.named("andon.escalated");
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].0, ts("2026-11-25T07:06:10Z"));
    assert_eq!(escalated[0].1["level"], 2);
    let id = raised[0].1["andon_id"].as_str().unwrap().to_string();
    d.command(
        "BAG1/andon/ack",
        json!({"request_id":"r","by":"lead","andon_id": id}),
    )
    .unwrap();
    d.run(900, false, [1, 0]);
    assert_eq!(
        d.named("andon.escalated").len(),
        1,
        "an acknowledged andon does not escalate"
    );
    d.run(5, true, [0, 0]);
    let resolved = d.named("andon.resolved");
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].1["resolved_by"], "auto");
}

#[test]
fn a_critical_fault_raises_its_andon_at_once_before_the_stop_is_downtime() {
    let mut c = line_config();
    c.equipment[0].faults[0].severity = Severity::Critical;
    let mut d = Drive::new(&c, "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(1, false, [1, 0]);
    let raised = d.named("andon.raised");
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].0, ts("2026-11-25T07:00:10Z"));
    assert!(raised[0].1["downtime_id"].is_null(), "not downtime yet");
    assert_eq!(raised[0].1["priority"], "critical");
}

#[test]
fn criticality_five_raises_the_priority_one_level() {
    let mut c = line_config();
    c.equipment[0].criticality = 5;
    let mut d = Drive::new(&c, "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(400, false, [0, 2]);
    assert_eq!(
        d.named("andon.raised")[0].1["priority"],
        "high",
        "medium JAM → high"
    );
}

#[test]
fn a_fault_without_andon_never_raises_one() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(900, false, [8, 0]);
    assert!(d.named("andon.raised").is_empty());
}

#[test]
fn there_is_at_most_one_open_andon_per_cause() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(100, false, [1, 0]);
    d.run(1, false, [0, 0]);
    d.run(100, false, [1, 0]);
    assert_eq!(d.named("andon.raised").len(), 1);
}

#[test]
fn a_high_reject_rate_raises_a_quality_andon_that_clears_after_a_minute_of_good_quality() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.reject_every = 5; // 0.2 rejects per 2 good: 9 % > 5 %
    d.run(60, true, [0, 0]);
    let raised = d.named("andon.raised");
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].1["cause"], "quality");
    assert_eq!(raised[0].1["priority"], "high");
    // Good quality again: the 15-minute rate falls under 5 % once enough good units dilute it.
    d.reject_every = 1_000_000;
    d.run(1800, true, [0, 0]);
    let resolved = d.named("andon.resolved");
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].1["resolved_by"], "auto");
}

#[test]
fn the_quality_rule_needs_twenty_units() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.per_second = 0;
    d.reject_every = 1;
    d.run(19, true, [0, 0]);
    assert!(d.named("andon.raised").is_empty());
}

#[test]
fn running_slowly_for_speed_after_s_raises_a_medium_speed_andon() {
    let mut c = line_config();
    c.equipment[0].signals.speed = None; // speed from counts over 60 s
    let mut d = Drive::new(&c, "2026-11-25T07:00:00Z");
    d.per_second = 1; // 60/min < 0.8 × 150
    d.run(400, true, [0, 0]);
    let raised = d.named("andon.raised");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].1["cause"], "speed");
    assert_eq!(raised[0].1["priority"], "medium");
    d.per_second = 3;
    d.run(200, true, [0, 0]);
    assert_eq!(d.named("andon.resolved").len(), 1);
}

#[test]
fn commands_that_do_not_apply_change_nothing() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(5, true, [0, 0]);
    let before = d.engine.memories();
    let e = d
        .command("BAG1/job/start", json!({"request_id":"r","by":"x"}))
        .unwrap_err();
    assert!(e.contains("no job"), "{e}");
    let e = d
        .command(
            "BAG1/andon/ack",
            json!({"request_id":"r","by":"x","andon_id":"nope"}),
        )
        .unwrap_err();
    assert!(e.contains("no open andon"), "{e}");
    let e = d
        .command(
            "BAG1/changeover/complete",
            json!({"request_id":"r","by":"x"}),
        )
        .unwrap_err();
    assert!(e.contains("no changeover"), "{e}");
    let cmd = parse("NOPE/planned-stop/end", br#"{"request_id":"r","by":"x"}"#).unwrap();
    assert!(d
        .engine
        .on_command(d.t, &cmd)
        .unwrap_err()
        .contains("unknown equipment"));
    assert_eq!(d.engine.memories(), before);
}

#[test]
fn a_job_counts_good_units_from_its_start_and_reports_them_at_completion() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.command(
        "BAG1/job/assign",
        json!({"request_id":"r1","by":"lead","job_id":"J-1001","target_quantity":5000}),
    )
    .unwrap();
    d.command("BAG1/job/start", json!({"request_id":"r2","by":"lead"}))
        .unwrap();
    d.run(101, true, [0, 0]); // the last sample sees 100 s of production
    d.command("BAG1/job/complete", json!({"request_id":"r3","by":"lead"}))
        .unwrap();
    let done = d.named("job.completed");
    assert_eq!(done[0].1["job_id"], "J-1001");
    assert_eq!(done[0].1["actual_quantity"], 200);
    assert_eq!(done[0].1["target_quantity"], 5000);
    let contexts = d.named("context.changed");
    let last_started = contexts
        .iter()
        .rev()
        .find(|(_, c)| c["change_reason"] == "command" && c["job_id"] == "J-1001")
        .unwrap();
    assert_eq!(last_started.1["target_quantity"], 5000);
}

#[test]
fn a_changeover_is_setup_downtime_not_a_planned_stop() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(1, false, [0, 0]);
    d.command(
        "BAG1/changeover/start",
        json!({"request_id":"r","by":"lead","product_type_id":"BAG-2KG"}),
    )
    .unwrap();
    d.run(300, false, [0, 0]);
    d.command(
        "BAG1/changeover/complete",
        json!({"request_id":"r","by":"lead"}),
    )
    .unwrap();
    d.run(10, true, [0, 0]);
    let started = d.named("downtime.started");
    let co = started
        .iter()
        .find(|(_, s)| s["category"] == "changeover")
        .unwrap();
    assert_eq!(co.1["planned"], false);
    assert_eq!(
        d.named("changeover.completed")[0].1["product_type_id_after"],
        "BAG-2KG"
    );
    assert!(d
        .named("context.changed")
        .iter()
        .any(|(_, c)| c["product_type_id"] == "BAG-2KG" && c["changeover_status"] == "completed"));
}

#[test]
fn wall_clock_steps_backwards_never_produce_negative_durations() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.t -= 60_000; // NTP stepped the clock back a minute
    d.run(40, false, [0, 0]);
    d.run(5, true, [0, 0]);
    for (_, e) in d.named("downtime.ended") {
        assert!(e["duration_s"].as_f64().unwrap() >= 0.0, "{e}");
    }
}

// ------------------------------------------------------------------------------------------
// Golden shifts, computed by hand. Bagger: ideal 150/min → ideal cycle 0.4 s; while running it
// makes 2 good units a second; the reject counter reads floor(running seconds / 20).
// ------------------------------------------------------------------------------------------

fn assert_figures(
    s: &serde_json::Value,
    run: f64,
    unplanned: f64,
    planned: f64,
    offline: f64,
    good: u64,
    reject: u64,
) {
    let pbt = run + unplanned;
    let total = (good + reject) as f64;
    assert_eq!(s["run_time_s"], run, "run time: {s}");
    assert_eq!(s["unplanned_downtime_s"], unplanned, "unplanned: {s}");
    assert_eq!(s["planned_downtime_s"], planned, "planned: {s}");
    assert_eq!(s["offline_s"], offline, "offline: {s}");
    assert_eq!(s["planned_busy_time_s"], pbt, "PBT: {s}");
    assert_eq!(s["good_count"], good);
    assert_eq!(s["reject_count"], reject);
    assert!(close(&s["availability"], run / pbt), "A: {s}");
    assert!(close(&s["performance"], 0.4 * total / run), "P: {s}");
    assert!(close(&s["quality"], good as f64 / total), "Q: {s}");
    assert!(close(&s["oee"], 0.4 * good as f64 / pbt), "OEE: {s}");
    let (a, p, q) = (
        s["availability"].as_f64().unwrap(),
        s["performance"].as_f64().unwrap(),
        s["quality"].as_f64().unwrap(),
    );
    assert!(
        (a * p * q - s["oee"].as_f64().unwrap()).abs() < 1e-12,
        "A×P×Q = OEE"
    );
    assert_eq!(s["final"], true);
}

#[test]
fn golden_day_shift_with_a_minor_stop_a_film_break_and_the_break() {
    // Shift A, 2026-11-25 06:00–14:00 London (= UTC in November), 28 800 s.
    let mut d = Drive::new(&line_config(), "2026-11-25T06:00:00Z");
    d.run(3600, true, [0, 0]); //   06:00:00–07:00:00 running
    d.run(10, false, [0, 0]); //    07:00:00–07:00:10 minor stop (10 s < 30 s): run time
    d.run(3600, true, [0, 0]); //   07:00:10–08:00:10 running
    d.run(600, false, [1, 0]); //   08:00:10–08:10:10 FILM_BREAK: 600 s unplanned
    d.run(6590, true, [0, 0]); //   08:10:10–10:00:00 running
    d.run(1200, false, [0, 0]); //  10:00:00–10:20:00 the break: 1200 s planned
    d.run(13200, true, [0, 0]); //  10:20:00–14:00:00 running
    d.finish(true);
    // Running 3600+3600+6590+13200 = 26 990 s; run time = 26 990 + 10 (minor) = 27 000 s.
    // Good = 2 × 26 990 = 53 980; rejects = floor(26 990 / 20) = 1 349.
    // PBT = 28 800 − 1 200 = 27 600; A = 27 000/27 600 = 0.97826; P = 0.4 × 55 329/27 000
    // = 0.81969; Q = 53 980/55 329 = 0.97562; OEE = 0.4 × 53 980/27 600 = 0.78232.
    let s = d.final_snapshot("A");
    assert_figures(&s, 27_000.0, 600.0, 1_200.0, 0.0, 53_980, 1_349);
    assert_eq!(s["minor_stop_s"], 10.0);
    assert_eq!(s["window_start"], "2026-11-25T06:00:00.000Z");
    assert_eq!(s["window_end"], "2026-11-25T14:00:00.000Z");

    let ended: Vec<_> = d
        .named("downtime.ended")
        .into_iter()
        .map(|(_, e)| {
            (
                e["started_at"].as_str().unwrap().to_string(),
                e["duration_s"].as_f64().unwrap(),
                e["reason_code"].as_str().unwrap().to_string(),
                e["minor"].as_bool().unwrap(),
                e["planned"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ended,
        vec![
            (
                "2026-11-25T07:00:00.000Z".into(),
                10.0,
                "UNASSIGNED".into(),
                true,
                false
            ),
            (
                "2026-11-25T08:00:10.000Z".into(),
                600.0,
                "FILM_BREAK".into(),
                false,
                false
            ),
            (
                "2026-11-25T10:00:00.000Z".into(),
                1200.0,
                "PLANNED".into(),
                false,
                true
            ),
        ]
    );
    let raised = d.named("andon.raised");
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].0, ts("2026-11-25T08:01:10Z"));
    let escalated = d.named("andon.escalated");
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].0, ts("2026-11-25T08:06:10Z"));
    let resolved = d.named("andon.resolved");
    assert_eq!(resolved[0].0, ts("2026-11-25T08:10:10Z"));
    assert_eq!(resolved[0].1["duration_s"], 540.0);
    assert_eq!(resolved[0].1["resolved_by"], "auto");
}

#[test]
fn golden_night_shift_across_midnight_with_an_outage_a_counter_reset_and_a_jam() {
    // Shift C, 2026-11-24 22:00 → 2026-11-25 06:00 London (= UTC), 28 800 s.
    let mut d = Drive::new(&line_config(), "2026-11-24T22:00:00Z");
    d.run(10_800, true, [0, 0]); // 22:00–01:00 running
    d.unreachable(1_800); //        01:00:00–01:30:00 polls fail; offline after the 3rd (01:00:02)
    d.run(1_800, true, [0, 0]); //  01:30–02:00 running
    d.good = d.per_second; //       the PLC reset its counter just before 02:00:00
    d.run(3_600, true, [0, 0]); //  02:00–03:00 running
    d.run(120, false, [0, 2]); //   03:00:00–03:02:00 JAM: 120 s, below raise_after_s.medium
    d.run(10_680, true, [0, 0]); // 03:02–06:00 running
    d.finish(true);
    // Running 10 800+1 800+3 600+10 680 = 26 880 s, plus the 2 s between the first failed poll
    // and the third (state holds) = 26 882 s run time. Offline 01:00:02–01:30:00 = 1 798 s.
    // Good = 2 × 26 880 = 53 760 (the reset loses nothing); rejects = floor(26 880/20) = 1 344.
    // PBT = 28 800 − 1 798 = 27 002; OEE = 0.4 × 53 760 / 27 002 = 0.79639.
    let s = d.final_snapshot("C");
    assert_figures(&s, 26_882.0, 120.0, 0.0, 1_798.0, 53_760, 1_344);
    assert_eq!(s["window_start"], "2026-11-24T22:00:00.000Z");
    assert_eq!(s["window_end"], "2026-11-25T06:00:00.000Z");
    let started = d.named("downtime.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].1["reason_code"], "JAM");
    assert_eq!(started[0].1["started_at"], "2026-11-25T03:00:00.000Z");
    assert!(d.named("andon.raised").is_empty());
    let offline: Vec<_> = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StateChanged {
                to: MachineState::Offline,
                at_ms,
                ..
            } => Some(*at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(offline, vec![ts("2026-11-25T01:00:02Z")]);
}

#[test]
fn golden_night_shift_when_the_clocks_go_back_lasts_nine_hours() {
    // Shift C, 2026-10-24 22:00 BST (21:00 UTC) → 2026-10-25 06:00 GMT (06:00 UTC): 32 400 s.
    let mut d = Drive::new(&line_config(), "2026-10-24T21:00:00Z");
    d.run(14_400, true, [0, 0]); // 21:00–01:00 UTC running
    d.run(1_800, false, [1, 0]); // 01:00–01:30 UTC FILM_BREAK
    d.run(16_200, true, [0, 0]); // 01:30–06:00 UTC running
    d.finish(true);
    // Running 30 600 s; good 61 200; rejects 1 530; unplanned 1 800; PBT 32 400;
    // A = 0.94444; OEE = 0.4 × 61 200 / 32 400 = 0.75556.
    let s = d.final_snapshot("C");
    assert_figures(&s, 30_600.0, 1_800.0, 0.0, 0.0, 61_200, 1_530);
    assert_eq!(s["window_start"], "2026-10-24T21:00:00.000Z");
    assert_eq!(s["window_end"], "2026-10-25T06:00:00.000Z");
    // The andon escalates twice (300 s and 900 s after 01:01:00) and clears at 01:30:00.
    let levels: Vec<_> = d
        .named("andon.escalated")
        .into_iter()
        .map(|(t, e)| (t, e["level"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        levels,
        vec![
            (ts("2026-10-25T01:06:00Z"), 2),
            (ts("2026-10-25T01:16:00Z"), 3)
        ]
    );
    assert_eq!(d.named("andon.resolved")[0].1["duration_s"], 1_740.0);
}

#[test]
fn a_snapshot_is_sent_every_minute_while_a_shift_is_current() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:30Z");
    d.run(300, true, [0, 0]);
    let snaps = d.named("oee.snapshot");
    let times: Vec<_> = snaps.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        (1..=5)
            .map(|m| ts("2026-11-25T07:00:00Z") + m * 60_000)
            .collect::<Vec<_>>()
    );
    assert!(snaps
        .iter()
        .all(|(_, s)| s["final"] == false && s["shift"] == "A"));
    assert_eq!(
        snaps[0].1["window_start"], "2026-11-25T07:00:30.000Z",
        "begins at the first sample"
    );
}

// ------------------------------------------------------------------------------------------
// Properties over random sample streams and commands.
// ------------------------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Run {
            secs: u16,
            running: bool,
            faults: u8,
            rate: u8,
        },
        Fail {
            secs: u8,
        },
        Reset,
        ClockBack {
            secs: u8,
        },
        Command(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (1u16..400, any::<bool>(), 0u8..4, 0u8..4)
                .prop_map(|(secs, running, faults, rate)| Step::Run { secs, running, faults, rate }),
            1 => (1u8..20).prop_map(|secs| Step::Fail { secs }),
            1 => Just(Step::Reset),
            1 => (1u8..90).prop_map(|secs| Step::ClockBack { secs }),
            1 => (0u8..6).prop_map(Step::Command),
        ]
    }

    fn play(steps: &[Step]) -> Drive {
        let mut d = Drive::new(&line_config(), "2026-11-25T05:50:00Z");
        for s in steps {
            match s {
                Step::Run {
                    secs,
                    running,
                    faults,
                    rate,
                } => {
                    d.per_second = u64::from(*rate);
                    let words = match faults {
                        0 => [0, 0],
                        1 => [1, 0],
                        2 => [0, 2],
                        _ => [8, 2],
                    };
                    d.run(u64::from(*secs), *running, words);
                }
                Step::Fail { secs } => d.unreachable(u64::from(*secs)),
                Step::Reset => d.good = 0,
                Step::ClockBack { secs } => d.t -= i64::from(*secs) * 1000,
                Step::Command(n) => {
                    let body =
                        json!({"request_id":"p","by":"prop","job_id":"J","target_quantity":100});
                    let path = match n {
                        0 => "BAG1/job/assign",
                        1 => "BAG1/job/start",
                        2 => "BAG1/job/complete",
                        3 => "BAG1/planned-stop/start",
                        4 => "BAG1/planned-stop/end",
                        _ => "BAG1/changeover/start",
                    };
                    let body = match n {
                        0 => body,
                        1 | 2 => json!({"request_id":"p","by":"prop","job_id":"J"}),
                        _ => json!({"request_id":"p","by":"prop"}),
                    };
                    let _ = d.command(path, body);
                }
            }
        }
        d.finish(true);
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn oee_figures_stay_in_range_and_obey_the_identity(steps in proptest::collection::vec(step(), 1..25)) {
            let d = play(&steps);
            let m = d.engine.machine("BAG1").unwrap();
            for b in m.buckets.minutes.values() {
                prop_assert_eq!(b.scheduled_ms, b.run_ms + b.unplanned_ms + b.planned_ms + b.offline_ms);
                prop_assert!(b.minor_stop_ms <= b.run_ms);
                prop_assert!(b.scheduled_ms <= 60_000, "a minute holds at most 60 s: {:?}", b);
            }
            for (_, s) in d.named("oee.snapshot") {
                for k in ["availability", "quality"] {
                    if let Some(v) = s[k].as_f64() {
                        prop_assert!((0.0..=1.0).contains(&v), "{} = {} in {}", k, v, s);
                    }
                }
                let pbt = s["planned_busy_time_s"].as_f64().unwrap();
                if pbt > 0.0 {
                    let good = s["good_count"].as_f64().unwrap();
                    prop_assert!((s["oee"].as_f64().unwrap() - 0.4 * good / pbt).abs() < 1e-9);
                } else {
                    prop_assert!(s["oee"].is_null());
                }
            }
        }

        #[test]
        fn state_intervals_tile_time_without_gap_overlap_or_negative_duration(steps in proptest::collection::vec(step(), 1..25)) {
            let d = play(&steps);
            let mut prev: Option<(MachineState, i64)> = None;
            for e in &d.events {
                if let Event::StateChanged { from, to, at_ms, .. } = e {
                    if let Some((last_to, last_at)) = prev {
                        prop_assert_eq!(*from, last_to, "each interval starts where the last ended");
                        prop_assert!(*at_ms >= last_at, "time never runs backwards");
                    }
                    prev = Some((*to, *at_ms));
                }
            }
            for (_, e) in d.named("downtime.ended") {
                prop_assert!(e["duration_s"].as_f64().unwrap() >= 0.0);
            }
            for (_, e) in d.named("andon.resolved") {
                prop_assert!(e["duration_s"].as_f64().unwrap() >= 0.0);
            }
        }

        #[test]
        fn replaying_the_same_inputs_gives_the_same_events_prop(steps in proptest::collection::vec(step(), 1..15)) {
            prop_assert_eq!(play(&steps).events, play(&steps).events);
        }
    }
}

#[test]
fn a_reload_that_removes_equipment_closes_its_downtime_and_andons_by_reload() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(400, false, [1, 0]);
    assert_eq!(d.named("andon.raised").len(), 1);
    let started = d.named("downtime.started");
    assert_eq!(started.len(), 1);
    let at = d.t;
    let code = d.engine.codes()[0].clone();
    let events = d.engine.retire(std::slice::from_ref(&code), at);
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e.name() == "downtime.ended")
        .collect();
    assert_eq!(ended.len(), 1, "{events:?}");
    let Event::DowntimeEnded { record, at_ms, .. } = ended[0] else {
        unreachable!()
    };
    assert_eq!(*at_ms, at);
    assert_eq!(record.closed_by.as_deref(), Some("reload"));
    assert_eq!(
        serde_json::json!(record.downtime_id),
        started[0].1["downtime_id"]
    );
    let resolved: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::AndonResolved { resolved_by, .. } => Some(resolved_by.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(resolved, vec!["reload"]);
    assert!(
        d.engine.retire(&[code], at + 1000).is_empty(),
        "nothing is left open to close twice"
    );
}

#[test]
fn resuming_memory_after_a_reload_keeps_open_downtime_and_sends_nothing_offline() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(400, false, [1, 0]);
    let code = d.engine.codes()[0].clone();
    let memory: machine::Memory = serde_json::from_str(
        &d.engine
            .memories()
            .into_iter()
            .find(|(c, _)| *c == code)
            .unwrap()
            .1,
    )
    .unwrap();
    let before = d.engine.machine(&code).unwrap().mem.clone();
    let mut fresh = Engine::new(&line_config(), d.t);
    fresh.resume_memory(&code, memory, Vec::new());
    let after = &fresh.machine(&code).unwrap().mem;
    assert_eq!(after.state, before.state);
    assert_eq!(after.stop, before.stop, "the open downtime carries on");
    assert_eq!(after.andons, before.andons);
    d.engine = fresh;
    let seen = d.events.len();
    d.run(5, false, [1, 0]);
    assert!(
        d.events[seen..].iter().all(|e| e.name() != "state.changed"
            && e.name() != "downtime.ended"
            && e.name() != "andon.resolved"),
        "{:?}",
        &d.events[seen..]
    );
}

mod safety;
