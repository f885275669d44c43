//! `protocol = "modbus-rtu"` (SPEC §9): a PLC's serial keys, and the rule that PLCs sharing a
//! `device` agree on the bus settings.
//!
//! Owns `device`, `baud`, `parity`, `data_bits`, `stop_bits` and `rs485`; never opens a port
//! (a device missing at load time may be a USB adapter plugged in later: the bus task reports
//! it, the config does not).
//!
//! ## Decisions where SPEC §9 leaves a choice
//!
//! - `device` is an absolute path without whitespace; `baud` is 1200 ..= 921600 (default
//!   19200), `parity` defaults to `even` (the Modbus over serial line specification's
//!   default), `data_bits` 8, `stop_bits` 1, `rs485` false.
//! - The bus settings are compared per device path as written: two spellings of one port
//!   (`/dev/ttyS1` and a `/dev/serial/by-id/…` link to it) are not recognised as one bus.
//! - A disagreement is reported once per later PLC, at its first differing key (or its header
//!   when that key is defaulted), naming the PLC it disagrees with.

use super::super::{ByteOrder, Parity, Plc, Protocol, Rtu, SerialBus};
use super::walk::{Need, Table};
use super::Compiler;

/// The keys only a modbus-rtu PLC has (its bus settings).
pub(super) const RTU_KEYS: &[&str] = &[
    "device",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "rs485",
];

impl Compiler<'_, '_> {
    /// The RTU settings of one `[[plc]]`.
    pub(super) fn rtu(
        &mut self,
        t: &Table<'_, '_>,
        unit_id: u8,
        byte_order: ByteOrder,
    ) -> Option<Rtu> {
        let device = self.cx.text(t, "device", Need::Required).and_then(|d| {
            if !d.starts_with('/') || d.contains(char::is_whitespace) {
                self.cx.error_hint(
                    &t.span_of("device"),
                    &t.path_of("device"),
                    format!("\"{d}\" is not a serial device path"),
                    Some("name the port by its absolute path, e.g. device = \"/dev/ttyS1\" or \"/dev/serial/by-id/…\"".into()),
                );
                return None;
            }
            Some(d)
        });
        let baud = self
            .cx
            .int(t, "baud", Need::Optional, 1200..=921_600)
            .unwrap_or(19_200) as u32;
        let parity = self
            .cx
            .choice(t, "parity", Need::Optional, Parity::NAMES)
            .unwrap_or(Parity::Even);
        let data_bits = self.bits(t, "data_bits", &[7, 8], 8);
        let stop_bits = self.bits(t, "stop_bits", &[1, 2], 1);
        let rs485 = self.cx.bool_(t, "rs485", Need::Optional).unwrap_or(false);
        Some(Rtu {
            device: device?,
            bus: SerialBus {
                baud,
                parity,
                data_bits: data_bits?,
                stop_bits: stop_bits?,
                rs485,
            },
            unit_id,
            byte_order,
        })
    }

    fn bits(&mut self, t: &Table<'_, '_>, key: &str, allowed: &[i64], default: u8) -> Option<u8> {
        match self.cx.int(t, key, Need::Optional, 0..=255) {
            None if t.has(key) => None,
            None => Some(default),
            Some(n) if allowed.contains(&n) => Some(n as u8),
            Some(n) => {
                let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
                self.cx.error(
                    &t.span_of(key),
                    &t.path_of(key),
                    format!("{n} is not one of {}", list.join(", ")),
                );
                None
            }
        }
    }

    /// PLCs on one `device` must agree on the bus settings (SPEC §9). `plcs[i]` is the result
    /// of `tables[i]`.
    pub(super) fn shared_buses(&mut self, tables: &[Table<'_, '_>], plcs: &[Option<Plc>]) {
        let mut first: Vec<(&str, &str, SerialBus)> = Vec::new();
        for (t, plc) in tables.iter().zip(plcs) {
            let Some(plc) = plc else { continue };
            let Protocol::ModbusRtu(rtu) = &plc.protocol else {
                continue;
            };
            let Some(&(_, other, bus)) = first.iter().find(|(d, _, _)| *d == rtu.device) else {
                first.push((&rtu.device, &plc.name, rtu.bus));
                continue;
            };
            let mine = rtu.bus;
            let differs: Option<(&str, String, String)> = if mine.baud != bus.baud {
                Some(("baud", mine.baud.to_string(), bus.baud.to_string()))
            } else if mine.parity != bus.parity {
                Some(("parity", mine.parity.to_string(), bus.parity.to_string()))
            } else if mine.data_bits != bus.data_bits {
                Some((
                    "data_bits",
                    mine.data_bits.to_string(),
                    bus.data_bits.to_string(),
                ))
            } else if mine.stop_bits != bus.stop_bits {
                Some((
                    "stop_bits",
                    mine.stop_bits.to_string(),
                    bus.stop_bits.to_string(),
                ))
            } else if mine.rs485 != bus.rs485 {
                Some(("rs485", mine.rs485.to_string(), bus.rs485.to_string()))
            } else {
                None
            };
            if let Some((key, mine, theirs)) = differs {
                let span = if t.has(key) {
                    t.span_of(key)
                } else {
                    t.span.clone()
                };
                self.cx.error_hint(
                    &span,
                    &t.path_of(key),
                    format!(
                        "PLC \"{}\" shares {} with PLC \"{other}\" but has {key} = {mine} where \"{other}\" has {theirs}",
                        plc.name, rtu.device
                    ),
                    Some("PLCs on one serial bus must agree on baud, parity, data_bits, stop_bits and rs485".into()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{edit, error_at, loaded, MINIMAL};
    use crate::config::{Parity, Protocol};

    const RTU: &str = "protocol = \"modbus-rtu\"\ndevice = \"/dev/ttyS1\"\nunit_id = 3";

    fn rtu(extra: &str) -> String {
        MINIMAL.replacen(
            "protocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"",
            &format!("{RTU}\n{extra}"),
            1,
        )
    }

    #[test]
    fn an_rtu_plc_gets_the_serial_defaults() {
        let c = loaded(&rtu("")).config;
        let Protocol::ModbusRtu(r) = &c.plcs[0].protocol else {
            panic!("not RTU: {:?}", c.plcs[0].protocol)
        };
        assert_eq!(r.device, "/dev/ttyS1");
        assert_eq!(c.plcs[0].host, "/dev/ttyS1");
        assert_eq!(
            (r.bus.baud, r.bus.parity, r.bus.data_bits, r.bus.stop_bits),
            (19_200, Parity::Even, 8, 1)
        );
        assert!(!r.bus.rs485);
        assert_eq!(r.unit_id, 3);
    }

    #[test]
    fn a_host_on_an_rtu_plc_is_refused_at_the_key() {
        let e = error_at(&rtu("host = \"10.0.0.1\""), "plc[0].host");
        assert!(e.message.contains("modbus-rtu"), "{}", e.message);
    }

    #[test]
    fn bad_serial_values_are_refused() {
        let e = error_at(&rtu("stop_bits = 3"), "plc[0].stop_bits");
        assert_eq!(e.message, "3 is not one of 1, 2");
        let e = error_at(&rtu("baud = 300"), "plc[0].baud");
        assert!(e.message.contains("1200"), "{}", e.message);
        let e = error_at(&rtu("").replace("/dev/ttyS1", "ttyS1"), "plc[0].device");
        assert_eq!(e.message, "\"ttyS1\" is not a serial device path");
    }

    #[test]
    fn a_serial_key_on_a_tcp_plc_is_refused() {
        let e = error_at(
            &edit("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nbaud = 9600"),
            "plc[0].baud",
        );
        assert!(e.message.contains("modbus-rtu"), "{}", e.message);
    }

    #[test]
    fn plcs_sharing_a_device_must_agree_and_the_error_names_both() {
        let second = "\n[[plc]]\nname = \"scale\"\nprotocol = \"modbus-rtu\"\ndevice = \"/dev/ttyS1\"\nbaud = 9600\n";
        let text = format!("{}{second}", rtu(""));
        let e = error_at(&text, "plc[1].baud");
        assert!(
            e.message.contains("\"scale\"") && e.message.contains("\"p1\""),
            "{}",
            e.message
        );
        let agreeing = format!("{}{}", rtu(""), second.replace("baud = 9600\n", ""));
        assert_eq!(loaded(&agreeing).config.plcs.len(), 2);
    }

    #[test]
    fn equipment_may_override_the_unit_on_modbus_plcs_only() {
        let text = edit("plc = \"p1\"", "plc = \"p1\"\nunit_id = 4");
        assert_eq!(loaded(&text).config.equipment[0].unit_id, Some(4));
        assert_eq!(loaded(MINIMAL).config.equipment[0].unit_id, None);
        let logix = text
            .replacen("protocol = \"modbus-tcp\"", "protocol = \"ethernet-ip\"", 1)
            .replace("address = \"co:0\"", "tag = \"Run\"")
            .replace("address = \"hr:0\"", "tag = \"Count\"");
        let e = error_at(&logix, "equipment[0].unit_id");
        assert!(
            e.message.contains("modbus-tcp and modbus-rtu"),
            "{}",
            e.message
        );
    }
}
