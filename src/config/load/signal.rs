//! `[equipment.signals]`: where each signal lives on its PLC, its type, and what the engine may
//! do with it.
//!
//! Owns addresses and tags, type names in each protocol's vocabulary (with hints across
//! vocabularies and for common aliases), per-role type rules, and the check that every message
//! an equipment can produce fits in one MQTT packet. Never reads a PLC: a signal that passes
//! here is one request the acquire layer can send as is.
//!
//! ## Decisions where SPEC §2 leaves a choice
//!
//! - A Modbus signal is read in one request so its elements are consistent: at most 125
//!   registers (type size × `count`) or 2000 bits, and not past address 65535. A register
//!   read as `bool` must name its bit (`hr:N.B`); coils, discrete inputs and bits are `bool`.
//! - Logix tag signals without `type`: `running` is `bool`, every other signal `dint`.
//!   Modbus register signals without `type` are `u16`.
//! - `running` must be `bool`; counters must be integers; `speed` must be numeric; fault words
//!   must be integers or bools (bit n of element k is fault `k × element bits + n`). Engine
//!   signals other than `faults` are single values.
//! - Extra signal names are `[A-Za-z0-9_-]{1,64}` and not an engine signal name (they share
//!   the telemetry map).
//! - With a broken PLC reference a signal is checked as the protocol its keys suggest, without
//!   "wrong protocol" errors (the config is refused anyway).
//! - SPEC §7: the widest telemetry message of each equipment (every signal at its widest) must
//!   fit `mqtt.max_packet_kb`; reported at the equipment's header.

use super::super::{
    ByteOrder, DataType, Equipment, ModbusAddress, Mqtt, Signal, SignalSource, Signals,
};
use super::syntax::{check_name, check_tag, check_tag_elements, parse_modbus_address};
use super::walk::{did_you_mean, Need, Table};
use super::{Access, Compiler, Role};

/// Names of the engine's signals; `extra` signals may not reuse them (they share telemetry).
const ENGINE_SIGNALS: &[&str] = &["running", "speed", "good_count", "reject_count", "faults"];

/// Common other spellings of types → (Modbus name, Logix name), for hints.
const TYPE_ALIASES: &[(&str, &str, &str)] = &[
    ("float", "f32", "real"),
    ("float32", "f32", "real"),
    ("double", "f64", "lreal"),
    ("float64", "f64", "lreal"),
    ("boolean", "bool", "bool"),
    ("bit", "bool", "bool"),
    ("word", "u16", "int"),
    ("dword", "u32", "dint"),
    ("int16", "i16", "int"),
    ("uint16", "u16", "int"),
    ("int32", "i32", "dint"),
    ("uint32", "u32", "dint"),
    ("int64", "i64", "lint"),
    ("uint64", "u64", "lint"),
];

/// The name of `dt` in the vocabulary of the signal's protocol (`?` if it has none there).
pub(super) fn type_name(dt: DataType, logix: bool) -> &'static str {
    dt.name(logix).unwrap_or(dt.as_str())
}

/// Bits in one element, for fault words; 0 for types that cannot carry fault bits.
pub(super) fn element_bits(dt: DataType) -> u32 {
    match dt {
        DataType::Bool => 1,
        DataType::I8 | DataType::U8 => 8,
        DataType::U16 | DataType::I16 => 16,
        DataType::U32 | DataType::I32 => 32,
        DataType::U64 | DataType::I64 => 64,
        DataType::F32 | DataType::F64 => 0,
    }
}

fn is_integer(dt: DataType) -> bool {
    !matches!(dt, DataType::Bool | DataType::F32 | DataType::F64)
}

impl Compiler<'_, '_> {
    /// The signals, and separately the fault word(s) so that the fault table can be checked
    /// against them even when another signal is broken.
    pub(super) fn signals(
        &mut self,
        t: &Table<'_, '_>,
        acc: Access,
        has_faults: bool,
    ) -> (Option<Signals>, Option<Signal>) {
        self.cx.known_keys(
            t,
            &[
                "running",
                "speed",
                "good_count",
                "reject_count",
                "faults",
                "extra",
            ],
        );
        let one = |this: &mut Self, key: &str, need: Need, role: Role| -> Option<Option<Signal>> {
            match this.cx.table(t, key, need) {
                Some(s) => this.signal(&s, acc, role).map(Some),
                None if need == Need::Required || t.has(key) => None,
                None => Some(None),
            }
        };
        let running = one(self, "running", Need::Required, Role::Running);
        let speed = one(self, "speed", Need::Optional, Role::Speed);
        let good_count = one(self, "good_count", Need::Required, Role::Counter);
        let reject_count = one(self, "reject_count", Need::Optional, Role::Counter);
        let faults = one(self, "faults", Need::Optional, Role::Faults);
        if has_faults && !t.has("faults") {
            self.cx.error_hint(
                &t.span,
                &t.path_of("faults"),
                "missing key \"faults\": this equipment has [[equipment.fault]] entries",
                Some("say where the fault words are, e.g. faults = { address = \"hr:110\", type = \"u16\", count = 4 }".into()),
            );
        }
        let mut extra = Some(Vec::new());
        if let Some(x) = self.cx.table(t, "extra", Need::Optional) {
            for (key, key_span, v) in x.entries() {
                let path = x.path_of(key);
                if ENGINE_SIGNALS.contains(&key) {
                    self.cx.error(
                        &key_span,
                        &path,
                        format!(
                            "\"{key}\" is an engine signal name; extra signals need other names"
                        ),
                    );
                    extra = None;
                    continue;
                }
                if let Err(p) = check_name(key, false) {
                    self.problem(&key_span, &path, p);
                    extra = None;
                    continue;
                }
                let sig = self
                    .cx
                    .as_table(v, &path)
                    .and_then(|s| self.signal(&s, acc, Role::Extra));
                match (sig, extra.as_mut()) {
                    (Some(sig), Some(list)) => list.push((key.to_string(), sig)),
                    (None, _) => extra = None,
                    _ => {}
                }
            }
        }
        let word = faults.clone().flatten();
        let all = match (running, speed, good_count, reject_count, faults, extra) {
            (
                Some(Some(running)),
                Some(speed),
                Some(Some(good_count)),
                Some(reject_count),
                Some(faults),
                Some(extra),
            ) => Some(Signals {
                running,
                speed,
                good_count,
                reject_count,
                faults,
                extra,
            }),
            _ => None,
        };
        (all, word)
    }

    /// One signal table: `{ address | tag, type, count, scale, offset, byte_order }`.
    fn signal(&mut self, t: &Table<'_, '_>, acc: Access, role: Role) -> Option<Signal> {
        self.cx.known_keys(
            t,
            &[
                "address",
                "tag",
                "node",
                "type",
                "count",
                "scale",
                "offset",
                "byte_order",
            ],
        );
        let count = self
            .cx
            .int(t, "count", Need::Optional, 1..=2000)
            .unwrap_or(1) as u16;
        let scale = self
            .cx
            .num(t, "scale", Need::Optional, f64::MIN..=f64::MAX)
            .unwrap_or(1.0);
        let offset = self
            .cx
            .num(t, "offset", Need::Optional, f64::MIN..=f64::MAX)
            .unwrap_or(0.0);
        let byte_order = self
            .cx
            .choice(t, "byte_order", Need::Optional, ByteOrder::NAMES);
        let type_span = t
            .get("type")
            .or(t.get("address"))
            .or(t.get("tag"))
            .or(t.get("node"))
            .map(|v| v.span())
            .unwrap_or(t.span.clone());

        // With a broken PLC reference, check the signal as the protocol its keys suggest (the
        // config is refused anyway), without the "wrong protocol" errors.
        let known_protocol = !matches!(acc, Access::Unknown);
        let acc = match acc {
            Access::Unknown if t.has("tag") && !t.has("address") => Access::Logix,
            Access::Unknown if t.has("node") && !t.has("address") => Access::OpcUa,
            Access::Unknown => Access::Modbus(ByteOrder::default()),
            known => known,
        };
        let (source, data_type) = match acc {
            Access::Modbus(plc_order) => {
                if t.has("tag") && known_protocol {
                    self.cx.error_hint(
                        &t.key_span("tag"),
                        &t.path_of("tag"),
                        "\"tag\" is for ethernet-ip PLCs; this equipment's PLC is modbus-tcp",
                        Some("use address = \"hr:N\" (or co:N, di:N, ir:N, hr:N.B)".into()),
                    );
                }
                let address = self.cx.str_(t, "address", Need::Required).and_then(|s| {
                    match parse_modbus_address(&s) {
                        Ok(a) => Some(a),
                        Err(p) => {
                            self.problem(&t.span_of("address"), &t.path_of("address"), p);
                            None
                        }
                    }
                });
                let declared = self.data_type(t, false);
                let (address, declared) = (address?, declared?);
                let dt = self.modbus_type(t, address, declared, count)?;
                (
                    SignalSource::Modbus {
                        address,
                        byte_order: byte_order.unwrap_or(plc_order),
                    },
                    dt,
                )
            }
            Access::Logix => {
                for key in ["address", "byte_order"] {
                    if t.has(key) && known_protocol {
                        self.cx.error_hint(
                            &t.key_span(key),
                            &t.path_of(key),
                            format!("\"{key}\" is for modbus-tcp PLCs; this equipment's PLC is ethernet-ip"),
                            (key == "address").then(|| "use tag = \"Program:Main.Name\" or a controller tag".to_string()),
                        );
                    }
                }
                let tag =
                    self.cx
                        .text(t, "tag", Need::Required)
                        .and_then(|s| match check_tag(&s) {
                            Ok(()) => Some(s),
                            Err(p) => {
                                self.problem(&t.span_of("tag"), &t.path_of("tag"), p);
                                None
                            }
                        });
                let declared = self.data_type(t, true)?;
                let default = if role == Role::Running {
                    DataType::Bool
                } else {
                    DataType::I32
                };
                let data_type = declared.unwrap_or(default);
                let tag = tag?;
                if let Err((at, p)) = check_tag_elements(&tag, data_type == DataType::Bool, count) {
                    self.problem(&t.span_of(at), &t.path_of(at), p);
                    return None;
                }
                (SignalSource::Tag { tag }, data_type)
            }
            Access::OpcUa => {
                for key in ["address", "tag", "byte_order"] {
                    if t.has(key) && known_protocol {
                        self.cx.error_hint(
                            &t.key_span(key),
                            &t.path_of(key),
                            format!(
                                "\"{key}\" is not for opc-ua PLCs; this equipment's PLC is opc-ua"
                            ),
                            (key != "byte_order").then(|| {
                                "use node = \"ns=2;s=Line.Running\" (or i=, g=, b= identifiers)"
                                    .to_string()
                            }),
                        );
                    }
                }
                let node = self.cx.text(t, "node", Need::Required).and_then(|s| {
                    match super::opcua::check_node_id(&s) {
                        Ok(()) => Some(s),
                        Err(why) => {
                            self.cx.error_hint(
                                &t.span_of("node"),
                                &t.path_of("node"),
                                format!("\"{s}\" is not an OPC UA node id: {why}"),
                                Some("copy the NodeId from an OPC UA browser, e.g. ns=3;s=\"DB_Line\".\"Running\" or ns=2;i=1001".into()),
                            );
                            None
                        }
                    }
                });
                let declared = self.opcua_type(t)?;
                let default = if role == Role::Running {
                    DataType::Bool
                } else {
                    DataType::I32
                };
                (
                    SignalSource::Node { node: node? },
                    declared.unwrap_or(default),
                )
            }
            Access::Unknown => return None,
        };
        let logix = matches!(acc, Access::Logix);
        let name = type_name(data_type, logix);
        let path = t.path_of("type");
        let refused = match role {
            Role::Running if data_type != DataType::Bool => Some((
                format!("running must be a bool signal, found type \"{name}\""),
                if logix {
                    "use a BOOL tag"
                } else {
                    "use a coil, a discrete input or a register bit such as \"hr:100.0\""
                },
            )),
            Role::Counter if !is_integer(data_type) => Some((
                format!("a counter must be an integer, found type \"{name}\""),
                if logix {
                    "use dint"
                } else {
                    "use u16, u32 or u64"
                },
            )),
            Role::Speed if data_type == DataType::Bool => Some((
                "speed must be a number, found type \"bool\"".to_string(),
                if logix {
                    "use real or dint"
                } else {
                    "use f32 or u16"
                },
            )),
            Role::Faults if element_bits(data_type) == 0 => Some((
                format!("fault words must be integers or bools, found type \"{name}\""),
                if logix { "use dint" } else { "use u16" },
            )),
            _ => None,
        };
        if let Some((message, hint)) = refused {
            self.cx
                .error_hint(&type_span, &path, message, Some(hint.into()));
            return None;
        }
        if count > 1 && matches!(role, Role::Running | Role::Speed | Role::Counter) {
            self.cx.error(
                &t.span_of("count"),
                &t.path_of("count"),
                "this engine signal is a single value: count must be 1",
            );
            return None;
        }
        Some(Signal {
            source,
            data_type,
            count,
            scale,
            offset,
        })
    }

    /// The declared `type` of an OPC UA signal (SPEC §9 names). `Some(None)` = not declared.
    fn opcua_type(&mut self, t: &Table<'_, '_>) -> Option<Option<DataType>> {
        let Some(v) = t.get("type") else {
            return Some(None);
        };
        let path = t.path_of("type");
        let s = self.cx.as_str(v, &path)?;
        if let Some((_, dt)) = DataType::OPCUA_NAMES.iter().find(|(n, _)| *n == s) {
            return Some(Some(*dt));
        }
        let names: Vec<String> = DataType::OPCUA_NAMES
            .iter()
            .map(|(n, _)| format!("\"{n}\""))
            .collect();
        let hint = TYPE_ALIASES
            .iter()
            .find(|(alias, _, _)| alias.eq_ignore_ascii_case(&s))
            .map(|(_, n, _)| *n)
            .or_else(|| match s.to_ascii_lowercase().as_str() {
                "sbyte" => Some("i8"),
                "byte" => Some("u8"),
                _ => None,
            })
            .or_else(|| did_you_mean(&s, DataType::OPCUA_NAMES.iter().map(|(n, _)| *n)))
            .map(|n| format!("did you mean \"{n}\"?"));
        self.cx.error_hint(
            &v.span(),
            &path,
            format!("expected one of {}, found \"{s}\"", names.join(", ")),
            hint,
        );
        None
    }

    /// The declared `type`, in the vocabulary of the protocol. `Some(None)` = not declared.
    fn data_type(&mut self, t: &Table<'_, '_>, logix: bool) -> Option<Option<DataType>> {
        let Some(v) = t.get("type") else {
            return Some(None);
        };
        let path = t.path_of("type");
        let s = self.cx.as_str(v, &path)?;
        let (mine, theirs) = if logix {
            (DataType::LOGIX_NAMES, DataType::MODBUS_NAMES)
        } else {
            (DataType::MODBUS_NAMES, DataType::LOGIX_NAMES)
        };
        if let Some((_, dt)) = mine.iter().find(|(n, _)| *n == s) {
            return Some(Some(*dt));
        }
        let names: Vec<String> = mine.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let hint = if let Some((_, dt)) = theirs.iter().find(|(n, _)| *n == s) {
            let same = mine.iter().find(|(_, d)| d == dt).map(|(n, _)| *n);
            Some(match (logix, same) {
                (true, Some(n)) => format!("\"{s}\" is a Modbus type; the Logix type is \"{n}\""),
                (true, None) => {
                    "Logix integers are signed: use sint, int, dint or lint".to_string()
                }
                (false, Some(n)) => format!("\"{s}\" is a Logix type; on Modbus use \"{n}\""),
                (false, None) => {
                    "on Modbus use i16 for a Logix SINT stored in a register".to_string()
                }
            })
        } else {
            let alias = TYPE_ALIASES
                .iter()
                .find(|(alias, _, _)| alias.eq_ignore_ascii_case(&s))
                .map(|(_, modbus, logix_name)| if logix { *logix_name } else { *modbus });
            alias
                .or_else(|| did_you_mean(&s, mine.iter().map(|(n, _)| *n)))
                .map(|n| format!("did you mean \"{n}\"?"))
        };
        self.cx.error_hint(
            &v.span(),
            &path,
            format!("expected one of {}, found \"{s}\"", names.join(", ")),
            hint,
        );
        None
    }

    /// Checks a Modbus address against its type and count; returns the effective type.
    fn modbus_type(
        &mut self,
        t: &Table<'_, '_>,
        address: ModbusAddress,
        declared: Option<DataType>,
        count: u16,
    ) -> Option<DataType> {
        use ModbusAddress::*;
        let type_span = t.span_of("type");
        let type_path = t.path_of("type");
        let (start, bits) = match address {
            Coil(n) | DiscreteInput(n) => (n, true),
            HoldingRegister(n) | InputRegister(n) => (n, false),
            HoldingRegisterBit(..) | InputRegisterBit(..) => {
                if let Some(dt) = declared.filter(|d| *d != DataType::Bool) {
                    self.cx.error(
                        &type_span,
                        &type_path,
                        format!(
                            "a register bit is a bool, found type \"{}\"",
                            type_name(dt, false)
                        ),
                    );
                    return None;
                }
                if count != 1 {
                    self.cx.error(
                        &t.span_of("count"),
                        &t.path_of("count"),
                        "a register bit is a single value: count must be 1",
                    );
                    return None;
                }
                return Some(DataType::Bool);
            }
        };
        if bits {
            if let Some(dt) = declared.filter(|d| *d != DataType::Bool) {
                self.cx.error(
                    &type_span,
                    &type_path,
                    format!(
                        "coils and discrete inputs are bools, found type \"{}\"",
                        type_name(dt, false)
                    ),
                );
                return None;
            }
            if u32::from(start) + u32::from(count) - 1 > 65535 {
                self.cx.error(
                    &t.span_of("count"),
                    &t.path_of("count"),
                    format!("{count} bits from address {start} run past the last address 65535"),
                );
                return None;
            }
            return Some(DataType::Bool);
        }
        let dt = declared.unwrap_or(DataType::U16);
        if dt == DataType::Bool {
            self.cx.error_hint(
                &type_span,
                &type_path,
                "a register is 16 bits, not a bool",
                Some(format!(
                    "read one bit of it, e.g. address = \"hr:{start}.0\""
                )),
            );
            return None;
        }
        let registers = u32::from(dt.registers()) * u32::from(count);
        let at = if t.has("count") { "count" } else { "address" };
        if registers > 125 {
            self.cx.error_hint(
                &t.span_of(at),
                &t.path_of(at),
                format!("{count} × {} is {registers} registers; one signal is read in one request of at most 125", type_name(dt, false)),
                Some("split it into several signals".into()),
            );
            return None;
        }
        if u32::from(start) + registers - 1 > 65535 {
            self.cx.error(
                &t.span_of(at),
                &t.path_of(at),
                format!(
                    "{registers} registers from address {start} run past the last address 65535"
                ),
            );
            return None;
        }
        Some(dt)
    }

    /// SPEC §7: every message an equipment can produce must fit in one packet of `m`.
    pub(super) fn largest_messages(
        &mut self,
        m: &Mqtt,
        tables: &[Table<'_, '_>],
        equipment: &[Option<Equipment>],
    ) {
        for (t, e) in tables.iter().zip(equipment) {
            let Some(e) = e else { continue };
            let topic = m.topic_prefix.len() + e.code.len() + "//telemetry".len();
            let bytes = crate::uplink::client::publish_packet_size(
                topic,
                e.signals.widest_telemetry_data() + crate::cloudevents::ENVELOPE_OVERHEAD,
            );
            if bytes > m.max_packet_bytes() {
                self.cx.error_hint(
                    &t.span,
                    &t.path,
                    format!(
                        "equipment {}: its largest telemetry message (every signal at its \
                         widest) is {bytes} bytes, over mqtt.max_packet_kb = {} ({} bytes)",
                        e.code,
                        m.max_packet_kb,
                        m.max_packet_bytes()
                    ),
                    Some(
                        "raise mqtt.max_packet_kb (and the broker's limit), or read fewer or \
                         shorter arrays"
                            .into(),
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{edit, error_at, loaded, with};
    use crate::config::DataType;

    #[test]
    fn a_logix_type_on_a_modbus_signal_names_the_modbus_type() {
        let e = error_at(
            &edit(
                "{ address = \"hr:0\" }",
                "{ address = \"hr:0\", type = \"dint\" }",
            ),
            "equipment[0].signals.good_count.type",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("\"dint\" is a Logix type; on Modbus use \"i32\"")
        );
    }

    #[test]
    fn a_signal_is_read_in_one_request_of_at_most_125_registers() {
        let ok = with("extra = { big = { address = \"hr:0\", type = \"f64\", count = 31 } }\n");
        let extra = &loaded(&ok).config.equipment[0].signals.extra;
        assert_eq!(
            (extra[0].1.data_type, extra[0].1.count),
            (DataType::F64, 31)
        );
        let e = error_at(
            &with("extra = { big = { address = \"hr:0\", type = \"f64\", count = 32 } }\n"),
            "equipment[0].signals.extra.big.count",
        );
        assert_eq!(
            e.message,
            "32 × f64 is 128 registers; one signal is read in one request of at most 125"
        );
    }

    #[test]
    fn an_equipment_whose_widest_message_exceeds_the_packet_limit_is_refused_at_its_header() {
        let text = with(
            "extra = { big = { address = \"hr:0\", count = 125 } }\n\n[mqtt]\nurl = \"mqtts://h\"\nmax_packet_kb = 1\n",
        );
        let e = error_at(&text, "equipment[0]");
        assert!(e.message.contains("its largest telemetry message"), "{e}");
    }
}
