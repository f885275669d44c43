//! `[[plc]]`: the controllers polled, and how each one's signals are read.
//!
//! Owns host, port and protocol checks and the polling ranges, and hands back an [`Access`]
//! per PLC so that equipment signals can be checked against their PLC's protocol. Never
//! connects to a PLC.
//!
//! ## Decisions where SPEC §2 leaves a choice
//!
//! - Names are `[A-Za-z0-9._-]{1,64}` and unique. A `[[plc]]` that no equipment uses is
//!   accepted silently (a line being commissioned).
//! - `host` is a bare host name or address: a URL or `host:port` is refused with a hint.
//!   `port` defaults to 502 (Modbus) or 44818 (EtherNet/IP).
//! - Ranges: `poll_interval_ms` 10..=60000 (default 1000); `timeout_ms` 1..=60000, default
//!   min(500, poll interval). A `timeout_ms` longer than `poll_interval_ms` is a notice, not an
//!   error (SPEC §6 "Polling": slow links, RS-485, radios): a poll still running when its next
//!   tick falls due makes that tick skipped and counted; `offline_after_polls` 1..=1000,
//!   default 3.
//! - `unit_id` and `byte_order` belong to `modbus-tcp` and `modbus-rtu`, `slot` to
//!   `ethernet-ip`: either on the other protocol is an error at the key.
//! - `modbus-rtu` (SPEC §9) has `device` and the serial keys instead of `host`/`port` (see
//!   [`super::rtu`]); `host` or `port` on it is an error at the key, and so is a serial key on
//!   a network PLC.

use super::super::{ByteOrder, Plc, Protocol};
use super::opcua::OPCUA_KEYS;
use super::rtu::RTU_KEYS;
use super::walk::{Need, Table};
use super::{Access, Compiler};

/// `protocol` of a `[[plc]]`, before its protocol-specific keys are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProtocolKind {
    Modbus,
    Logix,
    Rtu,
    OpcUa,
}

const PROTOCOLS: &[(&str, ProtocolKind)] = &[
    ("modbus-tcp", ProtocolKind::Modbus),
    ("ethernet-ip", ProtocolKind::Logix),
    ("modbus-rtu", ProtocolKind::Rtu),
    ("opc-ua", ProtocolKind::OpcUa),
];

impl Compiler<'_, '_> {
    /// Returns the PLC (if valid), its name (if valid) and how its signals are read.
    pub(super) fn plc(&mut self, t: &Table<'_, '_>) -> (Option<Plc>, Option<String>, Access) {
        self.cx.known_keys(
            t,
            &[
                "name",
                "protocol",
                "host",
                "port",
                "unit_id",
                "slot",
                "poll_interval_ms",
                "timeout_ms",
                "byte_order",
                "offline_after_polls",
            ]
            .iter()
            .chain(RTU_KEYS)
            .chain(OPCUA_KEYS)
            .copied()
            .collect::<Vec<_>>(),
        );
        let name = self.name(t, "name", true);
        let kind = self.cx.choice(t, "protocol", Need::Required, PROTOCOLS);
        let serial = matches!(kind, Some(ProtocolKind::Rtu | ProtocolKind::OpcUa));
        let host_need = if serial {
            Need::Optional
        } else {
            Need::Required
        };
        let host = self.cx.text(t, "host", host_need).and_then(|h| {
            if h.contains(char::is_whitespace) || h.contains("://") || h.contains('/') {
                self.cx.error(
                    &t.span_of("host"),
                    &t.path_of("host"),
                    format!("\"{h}\" is not a host name or IP address"),
                );
                return None;
            }
            if let Some((_, port)) = h.rsplit_once(':').filter(|(a, _)| !a.contains(':')) {
                self.cx.error_hint(
                    &t.span_of("host"),
                    &t.path_of("host"),
                    format!("\"{h}\" is not a host name or IP address"),
                    Some(format!("put the port in its own key: port = {port}")),
                );
                return None;
            }
            Some(h)
        });
        let default_port = match kind {
            Some(ProtocolKind::Logix) => 44818,
            _ => 502,
        };
        let port = self
            .cx
            .int(t, "port", Need::Optional, 1..=65535)
            .unwrap_or(default_port) as u16;
        let poll_interval_ms = self
            .cx
            .int(t, "poll_interval_ms", Need::Optional, 10..=60_000)
            .unwrap_or(1000) as u64;
        let timeout_ms = match self.cx.int(t, "timeout_ms", Need::Optional, 1..=60_000) {
            None => 500.min(poll_interval_ms),
            Some(ms) if ms as u64 > poll_interval_ms => {
                self.cx.notice(
                    &t.span_of("timeout_ms"),
                    &t.path_of("timeout_ms"),
                    format!("timeout {ms} ms is longer than the poll interval of {poll_interval_ms} ms"),
                    Some("a poll still running when its next tick falls due skips that tick (counted in skipped_ticks)".into()),
                );
                ms as u64
            }
            Some(ms) => ms as u64,
        };
        let offline_after_polls = self
            .cx
            .int(t, "offline_after_polls", Need::Optional, 1..=1000)
            .unwrap_or(3) as u32;

        let misplaced = |key: &str| -> Option<(&'static str, &'static str)> {
            match (kind?, key) {
                (ProtocolKind::Logix, "unit_id" | "byte_order") => {
                    Some(("modbus-tcp and modbus-rtu", "ethernet-ip"))
                }
                (ProtocolKind::Modbus, "slot") => Some(("ethernet-ip", "modbus-tcp")),
                (ProtocolKind::Rtu, "slot") => Some(("ethernet-ip", "modbus-rtu")),
                (ProtocolKind::Rtu, "host" | "port") => {
                    Some(("modbus-tcp and ethernet-ip", "modbus-rtu"))
                }
                (ProtocolKind::OpcUa, "unit_id" | "byte_order") => {
                    Some(("modbus-tcp and modbus-rtu", "opc-ua"))
                }
                (ProtocolKind::OpcUa, "slot") => Some(("ethernet-ip", "opc-ua")),
                (ProtocolKind::OpcUa, "host" | "port") => {
                    Some(("modbus-tcp and ethernet-ip", "opc-ua (use endpoint)"))
                }
                (ProtocolKind::OpcUa, key) if RTU_KEYS.contains(&key) => {
                    Some(("modbus-rtu", "opc-ua"))
                }
                (k, key) if k != ProtocolKind::OpcUa && OPCUA_KEYS.contains(&key) => Some((
                    "opc-ua",
                    match k {
                        ProtocolKind::Modbus => "modbus-tcp",
                        ProtocolKind::Logix => "ethernet-ip",
                        _ => "modbus-rtu",
                    },
                )),
                (ProtocolKind::Modbus | ProtocolKind::Logix, key) if RTU_KEYS.contains(&key) => {
                    Some((
                        "modbus-rtu",
                        if kind == Some(ProtocolKind::Modbus) {
                            "modbus-tcp"
                        } else {
                            "ethernet-ip"
                        },
                    ))
                }
                _ => None,
            }
        };
        for key in ["unit_id", "byte_order", "slot", "host", "port"]
            .iter()
            .chain(RTU_KEYS)
            .chain(OPCUA_KEYS)
            .copied()
        {
            if let (true, Some((belongs, is))) = (t.has(key), misplaced(key)) {
                self.cx.error(
                    &t.key_span(key),
                    &t.path_of(key),
                    format!("\"{key}\" applies to {belongs} PLCs only; this PLC is {is}"),
                );
            }
        }
        let unit_and_order = |this: &mut Self| {
            let unit_id = this
                .cx
                .int(t, "unit_id", Need::Optional, 0..=255)
                .unwrap_or(1) as u8;
            let byte_order: ByteOrder = this
                .cx
                .choice(t, "byte_order", Need::Optional, ByteOrder::NAMES)
                .unwrap_or_default();
            (unit_id, byte_order)
        };
        let mut endpoint: Option<(String, u16)> = None;
        let (protocol, access) = match kind {
            Some(ProtocolKind::Rtu) => {
                let (unit_id, byte_order) = unit_and_order(self);
                (
                    self.rtu(t, unit_id, byte_order).map(Protocol::ModbusRtu),
                    Access::Modbus(byte_order),
                )
            }
            Some(ProtocolKind::Modbus) => {
                let (unit_id, byte_order) = unit_and_order(self);
                (
                    Some(Protocol::ModbusTcp {
                        unit_id,
                        byte_order,
                    }),
                    Access::Modbus(byte_order),
                )
            }
            Some(ProtocolKind::Logix) => {
                let slot = self.cx.int(t, "slot", Need::Optional, 0..=255).unwrap_or(0) as u8;
                (Some(Protocol::EthernetIp { slot }), Access::Logix)
            }
            Some(ProtocolKind::OpcUa) if !cfg!(feature = "opcua") => {
                self.cx.error_hint(
                    &t.span_of("protocol"),
                    &t.path_of("protocol"),
                    "this ms5-edge was built without OPC UA (cargo feature \"opcua\")",
                    Some("install the standard build, which includes OPC UA".into()),
                );
                (None, Access::OpcUa)
            }
            Some(ProtocolKind::OpcUa) => match self.opcua(t) {
                Some((o, host, port)) => {
                    endpoint = Some((host, port));
                    (Some(Protocol::OpcUa(o)), Access::OpcUa)
                }
                None => (None, Access::OpcUa),
            },
            None => (None, Access::Unknown),
        };
        // An RTU PLC's "host" is its device (what logs and `status` name it by).
        let (host, port) = match &protocol {
            Some(Protocol::ModbusRtu(r)) => (Some(r.device.clone()), 0),
            Some(Protocol::OpcUa(_)) => match endpoint {
                Some((h, p)) => (Some(h), p),
                None => (None, 0),
            },
            _ => (host, port),
        };
        let plc = match (name.clone(), host, protocol) {
            (Some(name), Some(host), Some(protocol)) => Some(Plc {
                name,
                host,
                port,
                poll_interval_ms,
                timeout_ms,
                offline_after_polls,
                protocol,
            }),
            _ => None,
        };
        (plc, name, access)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{edit, error_at, loaded, MINIMAL};

    #[test]
    fn a_port_in_the_host_is_refused_with_a_hint() {
        let e = error_at(
            &edit("host = \"127.0.0.1\"", "host = \"127.0.0.1:1502\""),
            "plc[0].host",
        );
        assert_eq!(
            e.message,
            "\"127.0.0.1:1502\" is not a host name or IP address"
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("put the port in its own key: port = 1502")
        );
    }

    #[test]
    fn a_slot_on_a_modbus_plc_is_refused_at_the_key() {
        let e = error_at(
            &edit("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nslot = 1"),
            "plc[0].slot",
        );
        assert_eq!(
            e.message,
            "\"slot\" applies to ethernet-ip PLCs only; this PLC is modbus-tcp"
        );
    }

    #[test]
    fn the_timeout_defaults_to_the_shorter_of_500_ms_and_the_poll_interval() {
        let plc = &loaded(MINIMAL).config.plcs[0];
        assert_eq!((plc.poll_interval_ms, plc.timeout_ms), (1000, 500));
        let fast = edit(
            "host = \"127.0.0.1\"",
            "host = \"127.0.0.1\"\npoll_interval_ms = 100",
        );
        assert_eq!(loaded(&fast).config.plcs[0].timeout_ms, 100);
    }
}
