//! Builders the engine's unit tests share: a one-equipment configuration, samples, and
//! [`Drive`], a scenario driver that polls once a second with counters and faults as a PLC
//! would show them. Test-only; the rules' tests live next to the rules, in each module.

pub(crate) use std::collections::BTreeMap;

pub(crate) use serde_json::json;

pub(crate) use crate::config::*;
pub(crate) use crate::engine::command::parse;
pub(crate) use crate::engine::{
    machine, CommandResult, Engine, Event, MachineState, MachineView, PollInput,
};
pub(crate) use crate::sample::{EquipmentSample, Quality, SignalReading, Value};

pub(crate) fn signal(address: ModbusAddress, data_type: DataType, count: u16) -> Signal {
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

pub(crate) fn config(publish_interval_ms: u64) -> Config {
    let equipment = Equipment {
        code: "BAG1".into(),
        name: "Bagger 1".into(),
        plc: "bagger".into(),
        unit_id: None,
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
        last_maintenance_ms: None,
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
        sparkplug: None,
    }
}

pub(crate) fn sample(running: bool, fault_words: [u64; 2]) -> PollInput {
    let mut signals = BTreeMap::new();
    let good = |v| SignalReading {
        value: Some(v),
        quality: Quality::Good,
    };
    signals.insert("running".into(), good(Value::Bool(running)));
    signals.insert("good_count".into(), good(Value::UInt(10)));
    signals.insert(
        "faults".into(),
        good(Value::Array(
            fault_words.iter().map(|w| Value::UInt(*w)).collect(),
        )),
    );
    PollInput::Samples(vec![EquipmentSample {
        equipment: "BAG1".into(),
        signals,
    }])
}

pub(crate) fn states(events: &[Event]) -> Vec<(MachineState, MachineState, i64)> {
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

pub(crate) fn ts(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// Bagger 1 as in the golden scenarios: ideal 150/min (0.4 s cycle), micro stop 30 s,
/// FILM_BREAK (bit 0, material, high, andon), JAM (bit 17, mechanical, medium, andon),
/// LOW_AIR (bit 3, other, low, no andon); shifts A/B/C, a 20 min break at 10:00 in shift A.
pub(crate) fn line_config() -> Config {
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

pub(crate) struct Drive {
    pub(crate) engine: Engine,
    pub(crate) t: i64,
    pub(crate) running_secs: u64,
    pub(crate) good: u64,
    /// Reject counter = floor(running seconds / reject_every).
    pub(crate) reject_every: u64,
    pub(crate) events: Vec<Event>,
    /// Good units made per running second.
    pub(crate) per_second: u64,
}

impl Drive {
    pub(crate) fn new(config: &Config, start: &str) -> Drive {
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

    pub(crate) fn sample_input(&self, running: bool, faults: [u64; 2]) -> PollInput {
        let mut signals = BTreeMap::new();
        let good = |v| SignalReading {
            value: Some(v),
            quality: Quality::Good,
        };
        signals.insert("running".into(), good(Value::Bool(running)));
        signals.insert("good_count".into(), good(Value::UInt(self.good)));
        signals.insert(
            "reject_count".into(),
            good(Value::UInt(self.running_secs / self.reject_every)),
        );
        signals.insert(
            "faults".into(),
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
    pub(crate) fn run(&mut self, secs: u64, running: bool, faults: [u64; 2]) {
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
    pub(crate) fn unreachable(&mut self, secs: u64) {
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
    pub(crate) fn finish(&mut self, running: bool) {
        let input = self.sample_input(running, [0, 0]);
        let e = self.engine.on_poll("bagger", self.t, &input);
        self.events.extend(e);
        let e = self.engine.on_tick(self.t);
        self.events.extend(e);
    }

    pub(crate) fn command(&mut self, path: &str, body: serde_json::Value) -> CommandResult {
        let cmd = parse(path, body.to_string().as_bytes()).expect("command parses");
        let r = self.engine.on_command(self.t, &cmd);
        if let Ok(e) = &r {
            self.events.extend(e.clone());
        }
        r
    }

    pub(crate) fn named(&self, name: &str) -> Vec<(i64, serde_json::Value)> {
        self.events
            .iter()
            .filter(|e| e.name() == name)
            .filter_map(|e| e.message().map(|m| (e.at_ms(), m.data)))
            .collect()
    }

    pub(crate) fn final_snapshot(&self, shift: &str) -> serde_json::Value {
        self.named("oee.snapshot")
            .into_iter()
            .map(|(_, d)| d)
            .find(|d| d["final"] == true && d["shift"] == shift)
            .unwrap_or_else(|| panic!("no final snapshot for shift {shift}"))
    }
}

pub(crate) fn close(a: &serde_json::Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

/// The golden line plus two safety faults: OVERTEMP (bit 1, electrical, critical, andon,
/// raised after 5 s) and GUARD_OPEN (bit 2, category safety, low, andon, after the default
/// 600 s). Shift A has the 10:00–10:20 break.
pub(crate) fn safety_config() -> Config {
    let mut c = line_config();
    let e = &mut c.equipment[0];
    e.andon.raise_after_s[3] = 5;
    e.faults.push(Fault {
        bit: 1,
        code: "OVERTEMP".into(),
        description: "Sealing jaw over temperature".into(),
        category: FaultCategory::Electrical,
        severity: Severity::Critical,
        andon: true,
    });
    e.faults.push(Fault {
        bit: 2,
        code: "GUARD_OPEN".into(),
        description: "Safety guard open".into(),
        category: FaultCategory::Safety,
        severity: Severity::Low,
        andon: true,
    });
    c
}

pub(crate) const FILM_BREAK: [u64; 2] = [1, 0];

pub(crate) const OVERTEMP: [u64; 2] = [2, 0];

pub(crate) const GUARD_OPEN: [u64; 2] = [4, 0];

pub(crate) const NONE: [u64; 2] = [0, 0];

pub(crate) fn start_planned_stop(d: &mut Drive) {
    d.command(
        "BAG1/planned-stop/start",
        json!({"request_id":"r","by":"lead","reason":"cleaning"}),
    )
    .unwrap();
}
