//! The gateway configuration that reads a simulated machine: the same signals, faults and
//! rates as `src/demo.toml` for line 1, built as validated config values so tests need no
//! TOML.

use std::net::SocketAddr;

use super::registers::{
    FAULT_WORDS_HR, GOOD_COUNT_HR, MOTOR_TEMP_IR, REJECT_COUNT_HR, RUNNING_COIL, SPEED_HR,
};
use super::scenario::Machine;
use crate::config::{
    AndonRules, ByteOrder, DataType, Equipment, EquipmentType, Fault, FaultCategory, ModbusAddress,
    OeeTargets, Plc, Protocol, Severity, Signal, SignalSource, Signals,
};

/// A Modbus TCP PLC entry for a simulator listening on `addr` (unit 1, ABCD).
pub fn plc(name: &str, addr: SocketAddr, poll_interval_ms: u64, timeout_ms: u64) -> Plc {
    Plc {
        name: name.to_string(),
        host: addr.ip().to_string(),
        port: addr.port(),
        poll_interval_ms,
        timeout_ms,
        offline_after_polls: 3,
        protocol: Protocol::ModbusTcp {
            unit_id: 1,
            byte_order: ByteOrder::Abcd,
        },
    }
}

/// A Modbus signal with default byte order, count 1, no scaling.
pub fn modbus_signal(address: ModbusAddress, data_type: DataType) -> Signal {
    Signal {
        source: SignalSource::Modbus {
            address,
            byte_order: ByteOrder::Abcd,
        },
        data_type,
        count: 1,
        scale: 1.0,
        offset: 0.0,
    }
}

/// The equipment entry of `machine`, read through the PLC named `plc`.
pub fn equipment(machine: Machine, plc: &str) -> Equipment {
    let fault = |bit, code: &str, description: &str, category, severity| Fault {
        bit,
        code: code.into(),
        description: description.into(),
        category,
        severity,
        andon: true,
    };
    // The same fault tables as `src/demo.toml`.
    let (position, primary, kind, criticality, faults) = match machine {
        Machine::Bagger => (
            1,
            true,
            EquipmentType::Production,
            4,
            vec![
                fault(
                    0,
                    "FILM_BREAK",
                    "Film break",
                    FaultCategory::Material,
                    Severity::High,
                ),
                fault(
                    1,
                    "JAM",
                    "Bag jam at the sealing jaws",
                    FaultCategory::Mechanical,
                    Severity::Medium,
                ),
            ],
        ),
        Machine::Loader => (
            2,
            false,
            EquipmentType::Packaging,
            3,
            vec![
                fault(
                    0,
                    "BASKET_MISSING",
                    "No basket at the loading station",
                    FaultCategory::Material,
                    Severity::Medium,
                ),
                fault(
                    1,
                    "JAM",
                    "Basket jam on the infeed",
                    FaultCategory::Mechanical,
                    Severity::Medium,
                ),
            ],
        ),
    };
    Equipment {
        code: machine.code().into(),
        name: machine.name().into(),
        plc: plc.into(),
        unit_id: None,
        line_id: "BP01-L1".into(),
        position_in_line: position,
        primary,
        kind,
        criticality,
        ideal_rate_per_min: f64::from(machine.ideal_rate_per_min()),
        micro_stop_s: 30,
        location: Some("Packing hall".into()),
        department: Some("Packaging".into()),
        maintenance_interval_hours: Some(168.0),
        last_maintenance_ms: None,
        oee_targets: OeeTargets {
            availability: 0.90,
            performance: 0.85,
            quality: 0.95,
            oee: 0.73,
        },
        signals: Signals {
            running: modbus_signal(ModbusAddress::Coil(RUNNING_COIL), DataType::Bool),
            speed: Some(modbus_signal(
                ModbusAddress::HoldingRegister(SPEED_HR),
                DataType::F32,
            )),
            good_count: modbus_signal(ModbusAddress::HoldingRegister(GOOD_COUNT_HR), DataType::U32),
            reject_count: Some(modbus_signal(
                ModbusAddress::HoldingRegister(REJECT_COUNT_HR),
                DataType::U32,
            )),
            faults: Some(Signal {
                count: 4,
                ..modbus_signal(
                    ModbusAddress::HoldingRegister(FAULT_WORDS_HR),
                    DataType::U16,
                )
            }),
            extra: vec![(
                "motor_temp_c".into(),
                Signal {
                    scale: 0.1,
                    ..modbus_signal(ModbusAddress::InputRegister(MOTOR_TEMP_IR), DataType::I16)
                },
            )],
        },
        faults,
        andon: AndonRules::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acquire::plan::{plan, ReadRequest, Table};

    #[test]
    fn a_simulated_machine_is_read_in_three_requests() {
        let p = plan(&[equipment(Machine::Bagger, "bagger")]);
        assert_eq!(
            p.requests,
            vec![
                ReadRequest {
                    table: Table::Coils,
                    start: 0,
                    quantity: 1
                },
                ReadRequest {
                    table: Table::InputRegisters,
                    start: 10,
                    quantity: 1
                },
                ReadRequest {
                    table: Table::HoldingRegisters,
                    start: 100,
                    quantity: 14
                },
            ]
        );
        assert!(p.signals.iter().all(|s| s.placement.is_ok()));
        assert_eq!(
            p.signal(0, "faults").map(|s| s.placement.clone()),
            Some(Ok(crate::acquire::plan::Placement {
                request: 2,
                offset: 10,
                length: 4
            }))
        );
    }
}
