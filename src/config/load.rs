//! Loading: TOML text → validated [`Config`], with every problem reported at once.
//!
//! ## Design
//!
//! The text is parsed with `toml::de::DeTable`, which keeps the span of every key, value and
//! table header, and the compiler below then *walks* that document by hand against the schema of
//! SPEC §2. We do not deserialize with serde and `deny_unknown_fields`: serde stops at the first
//! problem and loses positions for semantic checks (duplicates, references, overlapping shifts),
//! while an engineer editing the file over SSH wants every problem of the file, each with
//! `file:line:column`, in one run of `check-config`.
//!
//! A TOML syntax error is reported alone (the document cannot be walked). Otherwise the walk
//! records errors and keeps going; an invalid value is replaced by its default for the rest of
//! the walk so that one mistake does not cause follow-on errors. The [`Config`] is built only when
//! no error was recorded. Errors are returned sorted by position.
//!
//! ## Invariants
//!
//! - `Ok` only when no error was recorded; an `Err` is never empty and is sorted by position.
//! - No input panics the loader: nothing on an input-driven path unwraps.
//! - Every error carries the key path and the position of the thing to fix.
//!
//! ## Key paths
//!
//! Every error names the key as a path from the document root, with zero-based indices for
//! arrays of tables in file order: `gateway.id`, `plc[0].poll_interval_ms`,
//! `equipment[1].signals.speed.address`, `equipment[0].fault[2].bit`,
//! `planned_stop[0].shifts[1]`. Keys that are not bare TOML keys are quoted
//! (`equipment[0].signals.extra."motor.temp"`). Errors about a value (bad value, duplicate
//! name, broken reference) point at the value; unknown or misplaced keys at the key; missing
//! keys and overlapping shifts at the header (or inline table) of the table concerned.
//!
//! ## Decisions where SPEC §2 leaves a choice
//!
//! - Relative paths (`data_dir`, `password_file`, `ca_file`, `client_cert_file`,
//!   `client_key_file`) are resolved against the directory of the config file, so a file and
//!   its secrets can move together. [`load_str`] resolves against the directory part of the name
//!   it is given (none for a bare name: paths then stay relative to the working directory).
//! - Files the config names that are missing or unreadable are *warnings* ([`Loaded::warnings`]):
//!   `run` treats each of them as an error. Legal but unusual settings are *notices*
//!   ([`Loaded::notices`]): printed as warnings by `check-config`, logged by `run`, never fatal.
//!   A `[[plc]]` that no equipment uses is accepted silently (a line being commissioned).
//! - Ranges: `poll_interval_ms` 10..=60000; `timeout_ms` 1..=60000, default min(500, poll
//!   interval). A `timeout_ms` longer than `poll_interval_ms` is a notice, not an error (SPEC §6
//!   "Polling": slow links, RS-485, radios): a poll still running when its next tick falls due
//!   makes that tick skipped and counted;
//!   `offline_after_polls` 1..=1000, default 3; `keep_alive_s` 1..=65535 (0 would switch
//!   keep-alive off and a dead broker connection would go unnoticed); `max_inflight` 1..=65535
//!   (the MQTT packet-id space; memory, not the protocol, is the practical bound);
//!   `publish_interval_ms` 0..=3600000; `max_outbox_mb` 1..=1048576; retention 1..=3650 days;
//!   `micro_stop_s` 0..=3600; `duration_min` 1..=1440; `escalate_after_s` strictly increasing.
//! - A Modbus signal is read in one request so its elements are consistent: at most 125
//!   registers (type size × `count`) or 2000 bits, and not past address 65535. A register
//!   read as `bool` must name its bit (`hr:N.B`); coils, discrete inputs and bits are `bool`.
//! - Logix tag signals without `type`: `running` is `bool`, every other signal `dint`.
//! - `running` must be `bool`; counters must be integers; `speed` must be numeric; fault words
//!   must be integers or bools (bit n of element k is fault `k × element bits + n`).
//! - Defaults: `data_dir` `/var/lib/ms5-edge`; equipment `name` = `code`, `position_in_line` 1,
//!   `primary` false, `type` production, `criticality` 3, `micro_stop_s` 30; `oee_targets`
//!   0.90/0.85/0.95 and `oee` = the product of the three; fault `description` = `code`,
//!   `category` other, `severity` medium, `andon` false. `gateway.id`, `gateway.timezone`,
//!   equipment `code`, `plc`, `line_id`, `ideal_rate_per_min` are required.
//! - Names: `gateway.id` `[A-Za-z0-9_-]{1,64}`; PLC names, equipment codes and fault codes
//!   `[A-Za-z0-9._-]{1,64}` (`UNASSIGNED` is reserved); extra signal names
//!   `[A-Za-z0-9_-]{1,64}` and not an engine signal name (they share the telemetry map).
//! - `ca_file` and client certificates require an `mqtts://` URL (silently talking plain TCP
//!   when the engineer asked for TLS would be worse than refusing).
//! - `[commands]`: `enabled` entries are exact command names or `group/*` naming at least one
//!   command; `max_age_s` 0..=86400 (default 60); `max_planned_stop_min` 1..=1440 (default
//!   120); `key_file` is checked like `password_file` and, when readable, must hold at least
//!   [`MIN_COMMAND_KEY_BYTES`] bytes. `key_file` over `mqtt://`, and `key_file` with
//!   `max_age_s = 0` (no replay window), are *notices* ([`Loaded::notices`]): printed by
//!   `check-config`, never fatal for `run`.
//! - A `[[shift]]` or `[[planned_stop]]` time may be a string `"06:00"` or a TOML local time
//!   `06:00:00`.

mod syntax;
mod walk;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::{command_matches, COMMAND_NAMES};
use super::{
    AndonRules, ByteOrder, Commands, Config, DataType, Equipment, EquipmentType, Fault,
    FaultCategory, Gateway, ModbusAddress, Mqtt, MqttProtocol, MqttUrl, OeeTargets, PlannedStop,
    Plc, Protocol, Severity, Shift, Signal, SignalSource, Signals, Storage, Telemetry,
};
use syntax::{
    check_name, check_tag, check_tag_elements, fmt_hhmm, parse_hhmm, parse_modbus_address,
    parse_mqtt_url, Problem,
};
use walk::{did_you_mean, Ctx, Need, Span, Table, Value};

/// Shortest accepted command key (SPEC §7: at least 32 bytes).
pub const MIN_COMMAND_KEY_BYTES: u64 = 32;

/// One problem (or warning) in a config file.
///
/// `line` and `column` are 1-based; both are 0 for problems with the file as a whole (it cannot
/// be read). `key` is the key path (see the module doc), empty for syntax errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as it was named to the loader.
    pub file: String,
    /// 1-based line; 0 when the problem is the file as a whole.
    pub line: usize,
    /// 1-based column in characters; 0 when the problem is the file as a whole.
    pub column: usize,
    /// Key path such as `plc[0].poll_interval_ms`; empty for TOML syntax errors.
    pub key: String,
    /// What is wrong, naming what was expected and what was found.
    pub message: String,
    /// How to fix it, when there is a likely fix (`did you mean "poll_interval_ms"?`).
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    /// `file:line:column: key: message, hint` on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        match &self.hint {
            Some(h) if h.starts_with("did you mean") => write!(f, ", {h}"),
            Some(h) => write!(f, " (hint: {h})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one file, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A compiled config plus the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Files the config names that cannot be read now (secrets, certificates). Not fatal for
    /// `check-config`; `run` refuses to start on any of them.
    pub warnings: Vec<ConfigError>,
    /// Legal but unusual settings (a poll timeout longer than the poll interval, a password
    /// or command key over plain `mqtt://`, MQTT 3.1.1's silent refusals): `check-config`
    /// prints them as warnings and exits 0, `run` logs them and starts.
    pub notices: Vec<ConfigError>,
}

/// Reads and compiles the file at `path`. Relative paths inside it resolve against its directory.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    let name = path.display().to_string();
    let whole_file = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message,
            hint: None,
        }])
    };
    let bytes =
        std::fs::read(path).map_err(|e| whole_file(format!("cannot read the config file: {e}")))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            let (line, column) = walk::Lines::new(&prefix).position(prefix.len());
            return Err(ConfigErrors(vec![ConfigError {
                file: name,
                line,
                column,
                key: String::new(),
                message: "the file is not valid UTF-8".into(),
                hint: Some("save it as UTF-8 text".into()),
            }]));
        }
    };
    let base = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    compile_text(&text, &name, base)
}

/// Compiles `text`; `file` names it in messages, and its directory part (if any) is the base
/// for relative paths.
pub fn load_str(text: &str, file: &str) -> Result<Loaded, ConfigErrors> {
    let base = Path::new(file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf);
    compile_text(text, file, base)
}

fn compile_text(text: &str, file: &str, base: Option<PathBuf>) -> Result<Loaded, ConfigErrors> {
    let mut cx = Ctx::new(file, text);
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut message = e.message().trim().to_string();
            // "duplicate key" alone does not say which: quote the offending text when short.
            if let Some(snippet) = text
                .get(span.clone())
                .filter(|s| !s.is_empty() && s.len() <= 40 && !s.contains('\n'))
            {
                message = format!("{message}: `{snippet}`");
            }
            cx.error(&span, "", format!("invalid TOML: {message}"));
            return Err(ConfigErrors(cx.errors));
        }
    };
    let root = Table {
        path: String::new(),
        span: doc.span(),
        map: doc.get_ref(),
    };
    let config = Compiler { cx: &mut cx, base }.config(&root);
    let mut errors = cx.errors;
    let mut warnings = cx.warnings;
    let mut notices = cx.notices;
    errors.sort_by_key(|e| (e.line, e.column));
    warnings.sort_by_key(|e| (e.line, e.column));
    notices.sort_by_key(|e| (e.line, e.column));
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded {
            config,
            warnings,
            notices,
        }),
        _ if errors.is_empty() => {
            // Every path that drops a value records an error first; this is a guard, not a path.
            Err(ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                line: 0,
                column: 0,
                key: String::new(),
                message: "internal error: the configuration was refused without a reason".into(),
                hint: None,
            }]))
        }
        _ => Err(ConfigErrors(errors)),
    }
}

// ---- vocabularies ----------------------------------------------------------------------------

const BYTE_ORDERS: &[(&str, ByteOrder)] = &[
    ("ABCD", ByteOrder::Abcd),
    ("CDAB", ByteOrder::Cdab),
    ("BADC", ByteOrder::Badc),
    ("DCBA", ByteOrder::Dcba),
];

const MODBUS_TYPES: &[(&str, DataType)] = &[
    ("bool", DataType::Bool),
    ("u16", DataType::U16),
    ("i16", DataType::I16),
    ("u32", DataType::U32),
    ("i32", DataType::I32),
    ("u64", DataType::U64),
    ("i64", DataType::I64),
    ("f32", DataType::F32),
    ("f64", DataType::F64),
];

const LOGIX_TYPES: &[(&str, DataType)] = &[
    ("bool", DataType::Bool),
    ("sint", DataType::I8),
    ("int", DataType::I16),
    ("dint", DataType::I32),
    ("lint", DataType::I64),
    ("real", DataType::F32),
    ("lreal", DataType::F64),
];

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

const SEVERITIES: &[(&str, Severity)] = &[
    ("low", Severity::Low),
    ("medium", Severity::Medium),
    ("high", Severity::High),
    ("critical", Severity::Critical),
];

const CATEGORIES: &[(&str, FaultCategory)] = &[
    ("mechanical", FaultCategory::Mechanical),
    ("electrical", FaultCategory::Electrical),
    ("material", FaultCategory::Material),
    ("quality", FaultCategory::Quality),
    ("safety", FaultCategory::Safety),
    ("operator", FaultCategory::Operator),
    ("other", FaultCategory::Other),
];

const EQUIPMENT_TYPES: &[(&str, EquipmentType)] = &[
    ("production", EquipmentType::Production),
    ("utility", EquipmentType::Utility),
    ("support", EquipmentType::Support),
    ("conveyor", EquipmentType::Conveyor),
    ("packaging", EquipmentType::Packaging),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProtocolKind {
    Modbus,
    Logix,
}

const PROTOCOLS: &[(&str, ProtocolKind)] = &[
    ("modbus-tcp", ProtocolKind::Modbus),
    ("ethernet-ip", ProtocolKind::Logix),
];

/// Names of the engine's signals; `extra` signals may not reuse them (they share telemetry).
const ENGINE_SIGNALS: &[&str] = &["running", "speed", "good_count", "reject_count", "faults"];

const RESERVED_FAULT_CODES: &[&str] = &["UNASSIGNED"];

/// What the engine does with a signal, which decides the types it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Running,
    Speed,
    Counter,
    Faults,
    Extra,
}

/// How signals of one equipment are read, from its PLC.
#[derive(Debug, Clone, Copy)]
enum Access {
    Modbus(ByteOrder),
    Logix,
    /// The PLC reference is broken (already reported): check what can be checked.
    Unknown,
}

fn type_name(dt: DataType, logix: bool) -> &'static str {
    let names = if logix { LOGIX_TYPES } else { MODBUS_TYPES };
    names
        .iter()
        .find(|(_, t)| *t == dt)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

/// Bits in one element, for fault words; 0 for types that cannot carry fault bits.
fn element_bits(dt: DataType) -> u32 {
    match dt {
        DataType::Bool => 1,
        DataType::I8 => 8,
        DataType::U16 | DataType::I16 => 16,
        DataType::U32 | DataType::I32 => 32,
        DataType::U64 | DataType::I64 => 64,
        DataType::F32 | DataType::F64 => 0,
    }
}

fn is_integer(dt: DataType) -> bool {
    !matches!(dt, DataType::Bool | DataType::F32 | DataType::F64)
}

/// Where an earlier definition of a unique name was, for "duplicate" messages.
struct Seen {
    line: usize,
    path: String,
}

/// The compile step: one method per table of the schema.
struct Compiler<'c, 's> {
    cx: &'c mut Ctx<'s>,
    base: Option<PathBuf>,
}

impl Compiler<'_, '_> {
    fn config(&mut self, root: &Table<'_, '_>) -> Option<Config> {
        self.cx.known_keys(
            root,
            &[
                "gateway",
                "mqtt",
                "storage",
                "telemetry",
                "plc",
                "shift",
                "planned_stop",
                "equipment",
                "commands",
            ],
        );

        let gateway = match self.cx.table(root, "gateway", Need::Optional) {
            Some(t) => self.gateway(&t),
            None => {
                if !root.has("gateway") {
                    self.cx
                        .error(&root.span, "gateway", "missing required table [gateway]");
                }
                None
            }
        };
        let gateway_id = gateway.as_ref().map(|g| g.id.as_str()).unwrap_or("gateway");
        let mqtt = self
            .cx
            .table(root, "mqtt", Need::Optional)
            .map(|t| self.mqtt(&t, gateway_id));
        let plain_mqtt = match &mqtt {
            Some(Some(m)) => !m.url.tls,
            _ => false,
        };
        let commands = match self.cx.table(root, "commands", Need::Optional) {
            Some(t) => self.commands(&t, plain_mqtt),
            None => Commands::default(),
        };
        let storage = match self.cx.table(root, "storage", Need::Optional) {
            Some(t) => self.storage(&t),
            None => Storage {
                max_outbox_mb: 256,
                retention_days: 90,
                telemetry_retention_days: 7,
            },
        };
        let telemetry = match self.cx.table(root, "telemetry", Need::Optional) {
            Some(t) => self.telemetry(&t),
            None => Telemetry {
                publish_interval_ms: 1000,
                store_and_forward: true,
            },
        };

        let plc_tables = self.cx.tables(root, "plc");
        if plc_tables.is_empty() && !root.has("plc") {
            self.cx.error(
                &root.span,
                "plc",
                "missing [[plc]]: at least one PLC is required",
            );
        }
        let mut plcs = Vec::new();
        let mut plc_names: HashMap<String, Seen> = HashMap::new();
        // Name → how its signals are read, for every PLC whose name and protocol are valid.
        let mut access: HashMap<String, Access> = HashMap::new();
        for t in &plc_tables {
            let (plc, name, acc) = self.plc(t);
            if let Some(name) = name {
                if self.unique(&mut plc_names, &name, t, "name", "PLC name") {
                    access.insert(name, acc);
                }
            }
            plcs.push(plc);
        }

        let shifts = self.shifts(root);
        let planned_stops = self.planned_stops(root, &shifts);

        let eq_tables = self.cx.tables(root, "equipment");
        if eq_tables.is_empty() && !root.has("equipment") {
            self.cx.error(
                &root.span,
                "equipment",
                "missing [[equipment]]: at least one equipment is required",
            );
        }
        let declared: Vec<String> = plc_tables
            .iter()
            .filter_map(|t| self.cx_str_opt(t, "name"))
            .collect();
        let mut codes: HashMap<String, Seen> = HashMap::new();
        let mut equipment = Vec::new();
        for t in &eq_tables {
            let e = self.equipment(t, &access, &declared);
            if let Some(code) = self.cx_str_opt(t, "code") {
                self.unique(&mut codes, &code, t, "code", "equipment code");
            }
            equipment.push(e);
        }
        // SPEC §7: every message an equipment can produce must fit in one packet.
        if let Some(Some(m)) = &mqtt {
            for (t, e) in eq_tables.iter().zip(&equipment) {
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
        let plcs: Option<Vec<Plc>> = plcs.into_iter().collect();
        let equipment: Option<Vec<Equipment>> = equipment.into_iter().collect();
        let mqtt = match mqtt {
            None => None,
            Some(m) => Some(m?),
        };
        Some(Config {
            gateway: gateway?,
            mqtt,
            storage,
            telemetry,
            plcs: plcs?,
            shifts,
            planned_stops: planned_stops?,
            equipment: equipment?,
            commands,
        })
    }

    /// The string at `key` if it is one, without recording anything (for duplicate checks of
    /// values already validated elsewhere).
    fn cx_str_opt(&self, t: &Table<'_, '_>, key: &str) -> Option<String> {
        match t.get(key).map(|v| v.get_ref()) {
            Some(DeValue::String(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// Records `name` as seen; on a repeat, reports a duplicate at `t.key`. Returns whether new.
    fn unique(
        &mut self,
        seen: &mut HashMap<String, Seen>,
        name: &str,
        t: &Table<'_, '_>,
        key: &str,
        what: &str,
    ) -> bool {
        let span = t.span_of(key);
        let path = t.path_of(key);
        if let Some(first) = seen.get(name) {
            self.cx.error(
                &span,
                &path,
                format!(
                    "duplicate {what} \"{name}\": already used by {} on line {}",
                    first.path, first.line
                ),
            );
            return false;
        }
        let line = self.cx.position(span.start).0;
        seen.insert(
            name.to_string(),
            Seen {
                line,
                path: t.path.clone(),
            },
        );
        true
    }

    fn problem(&mut self, span: &Span, path: &str, p: Problem) {
        self.cx.error_hint(span, path, p.message, p.hint);
    }

    /// A name checked against the topic-safe alphabet.
    fn name(&mut self, t: &Table<'_, '_>, key: &str, allow_dot: bool) -> Option<String> {
        let s = self.cx.str_(t, key, Need::Required)?;
        match check_name(&s, allow_dot) {
            Ok(()) => Some(s),
            Err(p) => {
                self.problem(&t.span_of(key), &t.path_of(key), p);
                None
            }
        }
    }

    /// A path, resolved against the config file's directory.
    fn path(&mut self, t: &Table<'_, '_>, key: &str) -> Option<PathBuf> {
        let s = self.cx.text(t, key, Need::Optional)?;
        let p = PathBuf::from(s);
        Some(match &self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        })
    }

    /// A file that must be readable when `run` starts: a warning now if it is not.
    fn readable_file(&mut self, t: &Table<'_, '_>, key: &str) -> Option<PathBuf> {
        let p = self.path(t, key)?;
        let problem = match std::fs::metadata(&p) {
            Err(e) => Some(e.to_string()),
            Ok(m) if !m.is_file() => Some("not a regular file".to_string()),
            Ok(_) => std::fs::File::open(&p).err().map(|e| e.to_string()),
        };
        if let Some(why) = problem {
            self.cx.warn(
                &t.span_of(key),
                &t.path_of(key),
                format!("cannot read \"{}\": {why}", p.display()),
                Some("check-config accepts this, but run refuses to start until the file is readable".into()),
            );
        }
        Some(p)
    }

    // ---- [gateway] [mqtt] [storage] [telemetry] -------------------------------------------------

    fn gateway(&mut self, t: &Table<'_, '_>) -> Option<Gateway> {
        self.cx.known_keys(t, &["id", "data_dir", "timezone"]);
        let id = self.name(t, "id", false);
        let data_dir = self
            .path(t, "data_dir")
            .unwrap_or_else(|| PathBuf::from("/var/lib/ms5-edge"));
        let timezone = self.cx.str_(t, "timezone", Need::Required).and_then(|tz| {
            if jiff::tz::TimeZone::get(&tz).is_ok() {
                return Some(tz);
            }
            let names: Vec<String> = jiff::tz::db()
                .available()
                .map(|n| n.as_str().to_string())
                .collect();
            let hint = did_you_mean(&tz, names.iter().map(String::as_str))
                .map(|n| format!("did you mean \"{n}\"?"))
                .or_else(|| {
                    Some("use an IANA zone name such as \"Europe/London\" or \"UTC\"".into())
                });
            self.cx.error_hint(
                &t.span_of("timezone"),
                &t.path_of("timezone"),
                format!("unknown time zone \"{tz}\""),
                hint,
            );
            None
        });
        Some(Gateway {
            id: id?,
            data_dir,
            timezone: timezone?,
        })
    }

    fn mqtt(&mut self, t: &Table<'_, '_>, gateway_id: &str) -> Option<Mqtt> {
        self.cx.known_keys(
            t,
            &[
                "url",
                "client_id",
                "topic_prefix",
                "username",
                "password_file",
                "ca_file",
                "client_cert_file",
                "client_key_file",
                "keep_alive_s",
                "max_inflight",
                "failover_urls",
                "protocol",
                "max_packet_kb",
                "reconnect_max_s",
                "return_to_primary_s",
            ],
        );
        let url = self
            .cx
            .str_(t, "url", Need::Required)
            .and_then(|s| match parse_mqtt_url(&s) {
                Ok(u) => Some(u),
                Err(p) => {
                    self.problem(&t.span_of("url"), &t.path_of("url"), p);
                    None
                }
            });
        let client_id = match self.cx.text(t, "client_id", Need::Optional) {
            None => format!("ms5-edge-{gateway_id}"),
            Some(id) => {
                let ok = id.len() <= 128
                    && !id.is_empty()
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    self.cx.error_hint(
                        &t.span_of("client_id"),
                        &t.path_of("client_id"),
                        format!(
                            "client_id \"{id}\" must be 1 to 128 bytes of A-Z a-z 0-9 . _ - \
                             ({} bytes given)",
                            id.len()
                        ),
                        Some("leave it out for the default \"ms5-edge-\" + gateway.id".into()),
                    );
                }
                id
            }
        };
        let failover_urls = self.failover_urls(t);
        let protocol = match self.cx.int(t, "protocol", Need::Optional, 3..=5) {
            None | Some(5) => MqttProtocol::V5,
            Some(3) => {
                self.cx.notice(
                    &t.span_of("protocol"),
                    &t.path_of("protocol"),
                    "with MQTT 3.1.1 a broker that refuses a publish (ACL, quota) still \
                     acknowledges it: refused events are indistinguishable from deliveries",
                    Some("use protocol = 5 unless the broker is too old for MQTT 5".into()),
                );
                MqttProtocol::V311
            }
            Some(_) => {
                self.cx.error_hint(
                    &t.span_of("protocol"),
                    &t.path_of("protocol"),
                    "protocol must be 5 (MQTT 5.0) or 3 (MQTT 3.1.1)",
                    None,
                );
                MqttProtocol::V5
            }
        };
        let max_packet_kb = self
            .cx
            .int(t, "max_packet_kb", Need::Optional, 1..=65536)
            .unwrap_or(256) as u32;
        let reconnect_max_s = self
            .cx
            .int(t, "reconnect_max_s", Need::Optional, 1..=600)
            .unwrap_or(5) as u64;
        let return_to_primary_s = self
            .cx
            .int(t, "return_to_primary_s", Need::Optional, 0..=86400)
            .unwrap_or(300) as u64;
        let topic_prefix = match self.cx.text(t, "topic_prefix", Need::Optional) {
            None => format!("ms5/{gateway_id}"),
            Some(p) => {
                let why = if p.contains(['+', '#']) {
                    Some("must not contain the MQTT wildcards \"+\" or \"#\"")
                } else if p.ends_with('/') {
                    Some("must not end with \"/\" (topics are prefix + \"/\" + …)")
                } else if p.starts_with('$') {
                    Some("must not start with \"$\" (reserved for broker topics)")
                } else if p.contains('\0') {
                    Some("must not contain NUL")
                } else {
                    None
                };
                if let Some(why) = why {
                    self.cx.error(
                        &t.span_of("topic_prefix"),
                        &t.path_of("topic_prefix"),
                        format!("\"{p}\" {why}"),
                    );
                }
                p
            }
        };
        let username = self.cx.text(t, "username", Need::Optional);
        let password_file = self.readable_file(t, "password_file");
        if let (Some(u), true) = (&url, t.has("password_file")) {
            if !u.tls {
                self.cx.notice(
                    &t.span_of("password_file"),
                    &t.path_of("password_file"),
                    "the MQTT password is sent unencrypted: the url is mqtt:// (plain TCP)",
                    Some(
                        "use an mqtts:// url so the password cannot be read off the network".into(),
                    ),
                );
            }
        }
        let ca_file = self.readable_file(t, "ca_file");
        let client_cert_file = self.readable_file(t, "client_cert_file");
        let client_key_file = self.readable_file(t, "client_key_file");
        for (have, other) in [
            ("client_cert_file", "client_key_file"),
            ("client_key_file", "client_cert_file"),
        ] {
            if t.has(have) && !t.has(other) {
                self.cx.error_hint(
                    &t.key_span(have),
                    &t.path_of(have),
                    format!("{have} needs {other}"),
                    Some("mutual TLS needs both the client certificate and its private key".into()),
                );
            }
        }
        if let Some(u) = &url {
            if !u.tls {
                for key in ["ca_file", "client_cert_file", "client_key_file"] {
                    if t.has(key) {
                        self.cx.error_hint(
                            &t.key_span(key),
                            &t.path_of(key),
                            format!("{key} needs TLS, but the url is mqtt:// (plain TCP)"),
                            Some("use an mqtts:// url, or remove this key".into()),
                        );
                    }
                }
            }
        }
        let keep_alive_s = self
            .cx
            .int(t, "keep_alive_s", Need::Optional, 1..=65535)
            .unwrap_or(30) as u64;
        let max_inflight = self
            .cx
            .int(t, "max_inflight", Need::Optional, 1..=65535)
            .unwrap_or(64) as u16;
        Some(Mqtt {
            url: url?,
            client_id,
            topic_prefix,
            username,
            password_file,
            ca_file,
            client_cert_file,
            client_key_file,
            keep_alive_s,
            max_inflight,
            failover_urls,
            protocol,
            max_packet_kb,
            reconnect_max_s,
            return_to_primary_s,
        })
    }

    /// `mqtt.failover_urls`: brokers tried in order after `url`, with the same TLS settings.
    fn failover_urls(&mut self, t: &Table<'_, '_>) -> Vec<MqttUrl> {
        let Some(v) = t.get("failover_urls") else {
            return Vec::new();
        };
        let path = t.path_of("failover_urls");
        let Some(items) = self.cx.as_array(v, &path) else {
            return Vec::new();
        };
        let mut urls = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(s) = self.cx.as_str(item, &item_path) else {
                continue;
            };
            match parse_mqtt_url(&s) {
                Ok(u) => urls.push(u),
                Err(p) => self.problem(&item.span(), &item_path, p),
            }
        }
        urls
    }

    /// `[commands]`; `plain_mqtt`: the broker URL is `mqtt://`, so signed commands travel in
    /// clear (they cannot be forged, but can be read): a notice, not an error.
    fn commands(&mut self, t: &Table<'_, '_>, plain_mqtt: bool) -> Commands {
        self.cx.known_keys(
            t,
            &[
                "enabled",
                "max_age_s",
                "require_issued_at",
                "key_file",
                "max_planned_stop_min",
            ],
        );
        let defaults = Commands::default();
        let enabled = match self.cx.value(t, "enabled", Need::Optional) {
            None => defaults.enabled,
            Some(v) => self.enabled_commands(v, &t.path_of("enabled")),
        };
        let key_file = self.readable_file(t, "key_file");
        if let Some(p) = &key_file {
            // Checked only when readable: an unreadable file is already a warning.
            let len = std::fs::File::open(p)
                .and_then(|f| f.metadata())
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            if let Some(len) = len {
                if len < MIN_COMMAND_KEY_BYTES {
                    self.cx.error_hint(
                        &t.span_of("key_file"),
                        &t.path_of("key_file"),
                        format!(
                            "the key in \"{}\" is {} bytes; a command key must be at least {MIN_COMMAND_KEY_BYTES}",
                            p.display(),
                            len
                        ),
                        Some("create one with: head -c 32 /dev/urandom > FILE; chmod 600 FILE".into()),
                    );
                }
            }
            if plain_mqtt {
                self.cx.notice(
                    &t.key_span("key_file"),
                    &t.path_of("key_file"),
                    "key_file is set but the url is mqtt:// (plain TCP): signed commands are \
                     sent unencrypted",
                    Some("use an mqtts:// url".into()),
                );
            }
        }
        let max_age_s = self
            .cx
            .int(t, "max_age_s", Need::Optional, 0..=86_400)
            .map_or(defaults.max_age_s, |n| n as u64);
        if key_file.is_some() && max_age_s == 0 {
            self.cx.notice(
                &t.span_of("max_age_s"),
                &t.path_of("max_age_s"),
                "max_age_s = 0 with key_file: signed commands are never too old and a captured \
                 one can be replayed at any time (the replay window is max_age_s)",
                Some("keep max_age_s at 60 or another small number of seconds".into()),
            );
        }
        Commands {
            enabled,
            max_age_s,
            require_issued_at: self
                .cx
                .bool_(t, "require_issued_at", Need::Optional)
                .unwrap_or(defaults.require_issued_at),
            key_file,
            max_planned_stop_min: self
                .cx
                .int(t, "max_planned_stop_min", Need::Optional, 1..=1440)
                .map_or(defaults.max_planned_stop_min, |n| n as u32),
        }
    }

    /// `commands.enabled`: exact command names or `prefix/*`, each matching some command.
    fn enabled_commands(&mut self, v: &Value<'_>, path: &str) -> Vec<String> {
        let Some(items) = self.cx.as_array(v, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(name) = self.cx.as_str(item, &item_path) else {
                continue;
            };
            if COMMAND_NAMES.iter().any(|c| command_matches(&name, c)) {
                out.push(name);
                continue;
            }
            let prefixes: Vec<String> = COMMAND_NAMES
                .iter()
                .filter_map(|c| c.split_once('/').map(|(p, _)| format!("{p}/*")))
                .collect();
            let candidates = COMMAND_NAMES
                .iter()
                .copied()
                .chain(prefixes.iter().map(String::as_str));
            let hint = did_you_mean(&name, candidates)
                .map(|c| format!("did you mean \"{c}\"?"))
                .or_else(|| {
                    Some(format!(
                        "commands are {}, or a group such as \"job/*\"",
                        COMMAND_NAMES.join(", ")
                    ))
                });
            let what = if name.ends_with("/*") {
                "command group"
            } else {
                "command"
            };
            self.cx.error_hint(
                &item.span(),
                &item_path,
                format!("unknown {what} \"{name}\""),
                hint,
            );
        }
        out
    }

    fn storage(&mut self, t: &Table<'_, '_>) -> Storage {
        self.cx.known_keys(
            t,
            &[
                "max_outbox_mb",
                "retention_days",
                "telemetry_retention_days",
            ],
        );
        Storage {
            max_outbox_mb: self
                .cx
                .int(t, "max_outbox_mb", Need::Optional, 1..=1_048_576)
                .unwrap_or(256) as u64,
            retention_days: self
                .cx
                .int(t, "retention_days", Need::Optional, 1..=3650)
                .unwrap_or(90) as u32,
            telemetry_retention_days: self
                .cx
                .int(t, "telemetry_retention_days", Need::Optional, 1..=3650)
                .unwrap_or(7) as u32,
        }
    }

    fn telemetry(&mut self, t: &Table<'_, '_>) -> Telemetry {
        self.cx
            .known_keys(t, &["publish_interval_ms", "store_and_forward"]);
        Telemetry {
            publish_interval_ms: self
                .cx
                .int(t, "publish_interval_ms", Need::Optional, 0..=3_600_000)
                .unwrap_or(1000) as u64,
            store_and_forward: self
                .cx
                .bool_(t, "store_and_forward", Need::Optional)
                .unwrap_or(true),
        }
    }

    // ---- [[plc]] ----------------------------------------------------------------------------------

    /// Returns the PLC (if valid), its name (if valid) and how its signals are read.
    fn plc(&mut self, t: &Table<'_, '_>) -> (Option<Plc>, Option<String>, Access) {
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
            ],
        );
        let name = self.name(t, "name", true);
        let kind = self.cx.choice(t, "protocol", Need::Required, PROTOCOLS);
        let host = self.cx.text(t, "host", Need::Required).and_then(|h| {
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
                    Some(("modbus-tcp", "ethernet-ip"))
                }
                (ProtocolKind::Modbus, "slot") => Some(("ethernet-ip", "modbus-tcp")),
                _ => None,
            }
        };
        for key in ["unit_id", "byte_order", "slot"] {
            if let (true, Some((belongs, is))) = (t.has(key), misplaced(key)) {
                self.cx.error(
                    &t.key_span(key),
                    &t.path_of(key),
                    format!("\"{key}\" applies to {belongs} PLCs only; this PLC is {is}"),
                );
            }
        }
        let (protocol, access) = match kind {
            Some(ProtocolKind::Modbus) => {
                let unit_id = self
                    .cx
                    .int(t, "unit_id", Need::Optional, 0..=255)
                    .unwrap_or(1) as u8;
                let byte_order = self
                    .cx
                    .choice(t, "byte_order", Need::Optional, BYTE_ORDERS)
                    .unwrap_or_default();
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
            None => (None, Access::Unknown),
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

    // ---- [[shift]] [[planned_stop]] ---------------------------------------------------------

    /// A time of day as `"HH:MM"` or a TOML local time, in minutes after midnight.
    fn time_of_day(&mut self, t: &Table<'_, '_>, key: &str) -> Option<u32> {
        let v = self.cx.value(t, key, Need::Required)?;
        let path = t.path_of(key);
        match v.get_ref() {
            DeValue::Datetime(dt) => match (&dt.date, &dt.time, &dt.offset) {
                (None, Some(tm), None)
                    if tm.second.unwrap_or(0) == 0 && tm.nanosecond.unwrap_or(0) == 0 =>
                {
                    Some(u32::from(tm.hour) * 60 + u32::from(tm.minute))
                }
                _ => {
                    self.cx.error_hint(
                        &v.span(),
                        &path,
                        format!("expected a time of day \"HH:MM\", found {dt}"),
                        Some("times are local to gateway.timezone, without date or seconds".into()),
                    );
                    None
                }
            },
            _ => {
                let s = self.cx.as_str(v, &path)?;
                match parse_hhmm(&s) {
                    Ok(m) => Some(m),
                    Err(p) => {
                        self.problem(&v.span(), &path, p);
                        None
                    }
                }
            }
        }
    }

    /// The shift calendar. Shifts that failed validation are left out (their errors are
    /// recorded), so overlap checks only see well-formed shifts.
    fn shifts(&mut self, root: &Table<'_, '_>) -> Vec<Shift> {
        let mut names: HashMap<String, Seen> = HashMap::new();
        let mut shifts: Vec<Shift> = Vec::new();
        for t in self.cx.tables(root, "shift") {
            self.cx.known_keys(&t, &["name", "start", "end"]);
            let name = self.cx.text(&t, "name", Need::Required);
            if let Some(n) = &name {
                if n.chars().count() > 64 {
                    self.cx.error(
                        &t.span_of("name"),
                        &t.path_of("name"),
                        "must be at most 64 characters",
                    );
                }
                self.unique(&mut names, n, &t, "name", "shift name");
            }
            let start = self.time_of_day(&t, "start");
            let end = self.time_of_day(&t, "end");
            if let (Some(name), Some(start_min), Some(end_min)) = (name, start, end) {
                let s = Shift {
                    name,
                    start_min,
                    end_min,
                };
                for other in &shifts {
                    if shifts_overlap(other, &s) {
                        self.cx.error(
                            &t.span,
                            &t.path,
                            format!(
                                "shift \"{}\" ({}–{}) overlaps shift \"{}\" ({}–{})",
                                s.name,
                                fmt_hhmm(s.start_min),
                                fmt_hhmm(s.end_min),
                                other.name,
                                fmt_hhmm(other.start_min),
                                fmt_hhmm(other.end_min)
                            ),
                        );
                    }
                }
                shifts.push(s);
            }
        }
        shifts
    }

    fn planned_stops(
        &mut self,
        root: &Table<'_, '_>,
        shifts: &[Shift],
    ) -> Option<Vec<PlannedStop>> {
        let mut out = Some(Vec::new());
        for t in self.cx.tables(root, "planned_stop") {
            self.cx
                .known_keys(&t, &["name", "start", "duration_min", "shifts"]);
            let name = self.cx.text(&t, "name", Need::Required);
            let start = self.time_of_day(&t, "start");
            let duration = self.cx.int(&t, "duration_min", Need::Required, 1..=1440);
            let mut refs = Some(Vec::new());
            if let Some(v) = t.get("shifts") {
                let path = t.path_of("shifts");
                if let Some(items) = self.cx.as_array(v, &path) {
                    for (i, item) in items.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        let Some(s) = self.cx.as_str(item, &item_path) else {
                            refs = None;
                            continue;
                        };
                        if shifts.iter().any(|sh| sh.name == s) {
                            if let Some(r) = refs.as_mut() {
                                r.push(s);
                            }
                        } else {
                            let hint = self.reference_hint(
                                &s,
                                shifts.iter().map(|sh| sh.name.as_str()),
                                "[[shift]]",
                            );
                            self.cx.error_hint(
                                &item.span(),
                                &item_path,
                                format!("no [[shift]] named \"{s}\""),
                                hint,
                            );
                            refs = None;
                        }
                    }
                } else {
                    refs = None;
                }
            }
            match (name, start, duration, refs) {
                (Some(name), Some(start_min), Some(d), Some(shifts)) => {
                    if let Some(v) = out.as_mut() {
                        v.push(PlannedStop {
                            name,
                            start_min,
                            duration_min: d as u32,
                            shifts,
                        });
                    }
                }
                _ => out = None,
            }
        }
        out
    }

    /// "did you mean" among `names`, else the list of names (or that there are none).
    fn reference_hint<'n>(
        &self,
        wrong: &str,
        names: impl Iterator<Item = &'n str> + Clone,
        what: &str,
    ) -> Option<String> {
        if let Some(n) = did_you_mean(wrong, names.clone()) {
            return Some(format!("did you mean \"{n}\"?"));
        }
        let all: Vec<String> = names.map(|n| format!("\"{n}\"")).collect();
        Some(if all.is_empty() {
            format!("no {what} is defined")
        } else {
            format!("defined: {}", all.join(", "))
        })
    }

    // ---- [[equipment]] ----------------------------------------------------------------------

    /// One equipment; `access` has every valid PLC, `declared` every `[[plc]]` name in the file
    /// (a reference to a PLC whose own table is broken is not reported twice).
    fn equipment(
        &mut self,
        t: &Table<'_, '_>,
        access: &HashMap<String, Access>,
        declared: &[String],
    ) -> Option<Equipment> {
        self.cx.known_keys(
            t,
            &[
                "code",
                "name",
                "plc",
                "line_id",
                "position_in_line",
                "primary",
                "type",
                "criticality",
                "ideal_rate_per_min",
                "micro_stop_s",
                "location",
                "department",
                "maintenance_interval_hours",
                "oee_targets",
                "signals",
                "fault",
                "andon",
            ],
        );
        let code = self.name(t, "code", true);
        let name = self.cx.text(t, "name", Need::Optional);
        let plc_name = self.cx.str_(t, "plc", Need::Required);
        let acc = match &plc_name {
            None => Access::Unknown,
            Some(p) => match access.get(p) {
                Some(a) => *a,
                None => {
                    let span = t.span_of("plc");
                    let path = t.path_of("plc");
                    // A PLC whose own table had errors is not in `access`; only report truly
                    // undefined names here.
                    if !declared.contains(p) {
                        let names: Vec<String> = access.keys().cloned().collect();
                        let hint =
                            self.reference_hint(p, names.iter().map(String::as_str), "[[plc]]");
                        self.cx
                            .error_hint(&span, &path, format!("no [[plc]] named \"{p}\""), hint);
                    }
                    Access::Unknown
                }
            },
        };
        let line_id = self.cx.text(t, "line_id", Need::Required);
        let position_in_line = self
            .cx
            .int(t, "position_in_line", Need::Optional, 1..=1000)
            .unwrap_or(1) as u32;
        let primary = self.cx.bool_(t, "primary", Need::Optional).unwrap_or(false);
        let kind = self
            .cx
            .choice(t, "type", Need::Optional, EQUIPMENT_TYPES)
            .unwrap_or(EquipmentType::Production);
        let criticality = self
            .cx
            .int(t, "criticality", Need::Optional, 1..=5)
            .unwrap_or(3) as u8;
        let ideal_rate_per_min = self
            .cx
            .num(t, "ideal_rate_per_min", Need::Required, 0.0..=1_000_000.0)
            .and_then(|r| {
                if r > 0.0 {
                    Some(r)
                } else {
                    self.cx.error(
                        &t.span_of("ideal_rate_per_min"),
                        &t.path_of("ideal_rate_per_min"),
                        "must be greater than 0",
                    );
                    None
                }
            });
        let micro_stop_s = self
            .cx
            .int(t, "micro_stop_s", Need::Optional, 0..=3600)
            .unwrap_or(30) as u64;
        let location = self.cx.text(t, "location", Need::Optional);
        let department = self.cx.text(t, "department", Need::Optional);
        let maintenance_interval_hours = self
            .cx
            .int(t, "maintenance_interval_hours", Need::Optional, 1..=100_000)
            .map(|h| h as u32);
        let oee_targets = match self.cx.table(t, "oee_targets", Need::Optional) {
            Some(o) => self.oee_targets(&o),
            None => default_oee_targets(),
        };
        let fault_tables = self.cx.tables(t, "fault");
        let (signals, fault_word) = match self.cx.table(t, "signals", Need::Required) {
            Some(s) => self.signals(&s, acc, !fault_tables.is_empty()),
            None => (None, None),
        };
        let faults = self.faults(&fault_tables, fault_word.as_ref(), acc);
        let andon = match self.cx.table(t, "andon", Need::Optional) {
            Some(a) => self.andon(&a),
            None => Some(AndonRules::default()),
        };
        let code = code?;
        Some(Equipment {
            name: name.unwrap_or_else(|| code.clone()),
            code,
            plc: match acc {
                Access::Unknown => return None,
                _ => plc_name?,
            },
            line_id: line_id?,
            position_in_line,
            primary,
            kind,
            criticality,
            ideal_rate_per_min: ideal_rate_per_min?,
            micro_stop_s,
            location,
            department,
            maintenance_interval_hours,
            oee_targets,
            signals: signals?,
            faults: faults?,
            andon: andon?,
        })
    }

    fn oee_targets(&mut self, t: &Table<'_, '_>) -> OeeTargets {
        self.cx
            .known_keys(t, &["availability", "performance", "quality", "oee"]);
        let d = default_oee_targets();
        let availability = self
            .cx
            .num(t, "availability", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.availability);
        let performance = self
            .cx
            .num(t, "performance", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.performance);
        let quality = self
            .cx
            .num(t, "quality", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.quality);
        let oee = self
            .cx
            .num(t, "oee", Need::Optional, 0.0..=1.0)
            .unwrap_or(availability * performance * quality);
        OeeTargets {
            availability,
            performance,
            quality,
            oee,
        }
    }

    /// The signals, and separately the fault word(s) so that the fault table can be checked
    /// against them even when another signal is broken.
    fn signals(
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
        let byte_order = self.cx.choice(t, "byte_order", Need::Optional, BYTE_ORDERS);
        let type_span = t
            .get("type")
            .or(t.get("address"))
            .or(t.get("tag"))
            .map(|v| v.span())
            .unwrap_or(t.span.clone());

        // With a broken PLC reference, check the signal as the protocol its keys suggest (the
        // config is refused anyway), without the "wrong protocol" errors.
        let known_protocol = !matches!(acc, Access::Unknown);
        let acc = match acc {
            Access::Unknown if t.has("tag") && !t.has("address") => Access::Logix,
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

    /// The declared `type`, in the vocabulary of the protocol. `Some(None)` = not declared.
    fn data_type(&mut self, t: &Table<'_, '_>, logix: bool) -> Option<Option<DataType>> {
        let Some(v) = t.get("type") else {
            return Some(None);
        };
        let path = t.path_of("type");
        let s = self.cx.as_str(v, &path)?;
        let (mine, theirs) = if logix {
            (LOGIX_TYPES, MODBUS_TYPES)
        } else {
            (MODBUS_TYPES, LOGIX_TYPES)
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

    fn faults(
        &mut self,
        tables: &[Table<'_, '_>],
        word: Option<&Signal>,
        acc: Access,
    ) -> Option<Vec<Fault>> {
        let capacity = word.map(|w| element_bits(w.data_type) * u32::from(w.count));
        let mut out = Some(Vec::new());
        let mut bits: HashMap<String, Seen> = HashMap::new();
        let mut codes: HashMap<String, Seen> = HashMap::new();
        for t in tables {
            self.cx.known_keys(
                t,
                &[
                    "bit",
                    "code",
                    "description",
                    "category",
                    "severity",
                    "andon",
                ],
            );
            let bit = self.cx.int(t, "bit", Need::Required, 0..=127_999).and_then(|b| {
                let b = b as u32;
                match (capacity, word) {
                    (Some(cap), Some(w)) if b >= cap => {
                        let ty = type_name(w.data_type, matches!(acc, Access::Logix));
                        self.cx.error(
                            &t.span_of("bit"),
                            &t.path_of("bit"),
                            format!("bit {b} does not fit the faults signal: {} × {ty} holds bits 0..={}", w.count, cap - 1),
                        );
                        None
                    }
                    _ => Some(b),
                }
            });
            if let Some(b) = bit {
                self.unique(&mut bits, &b.to_string(), t, "bit", "fault bit");
            }
            let code = self.cx.str_(t, "code", Need::Required).and_then(|c| {
                let checked = match check_name(&c, true) {
                    Err(p) => Err(Problem {
                        message: p.message.replace("name", "fault code"),
                        hint: None,
                    }),
                    Ok(()) if RESERVED_FAULT_CODES.contains(&c.as_str()) => Err(Problem {
                        message: format!("\"{c}\" is reserved for stops without an active fault"),
                        hint: None,
                    }),
                    Ok(()) => Ok(c),
                };
                checked
                    .map_err(|p| self.problem(&t.span_of("code"), &t.path_of("code"), p))
                    .ok()
            });
            if let Some(c) = &code {
                self.unique(&mut codes, c, t, "code", "fault code");
            }
            let description = self.cx.text(t, "description", Need::Optional);
            let category = self
                .cx
                .choice(t, "category", Need::Optional, CATEGORIES)
                .unwrap_or(FaultCategory::Other);
            let severity = self
                .cx
                .choice(t, "severity", Need::Optional, SEVERITIES)
                .unwrap_or(Severity::Medium);
            let andon = self.cx.bool_(t, "andon", Need::Optional).unwrap_or(false);
            match (bit, code) {
                (Some(bit), Some(code)) => {
                    if let Some(v) = out.as_mut() {
                        v.push(Fault {
                            bit,
                            description: description.unwrap_or_else(|| code.clone()),
                            code,
                            category,
                            severity,
                            andon,
                        });
                    }
                }
                _ => out = None,
            }
        }
        out
    }

    fn andon(&mut self, t: &Table<'_, '_>) -> Option<AndonRules> {
        self.cx.known_keys(
            t,
            &[
                "raise_after_s",
                "escalate_after_s",
                "quality_reject_rate",
                "speed_ratio",
                "speed_after_s",
            ],
        );
        let d = AndonRules::default();
        let mut raise_after_s = d.raise_after_s;
        if let Some(r) = self.cx.table(t, "raise_after_s", Need::Optional) {
            let levels = ["low", "medium", "high", "critical"];
            self.cx.known_keys(&r, &levels);
            for (i, level) in levels.iter().enumerate() {
                if let Some(s) = self.cx.int(&r, level, Need::Optional, 0..=86_400) {
                    raise_after_s[i] = s as u64;
                }
            }
        }
        let mut escalate_after_s = Some(d.escalate_after_s);
        if let Some(v) = t.get("escalate_after_s") {
            let path = t.path_of("escalate_after_s");
            escalate_after_s = self.escalation(v, &path);
        }
        let quality_reject_rate = self
            .cx
            .num(t, "quality_reject_rate", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.quality_reject_rate);
        let speed_ratio = self
            .cx
            .num(t, "speed_ratio", Need::Optional, 0.0..=1.0)
            .unwrap_or(d.speed_ratio);
        let speed_after_s = self
            .cx
            .int(t, "speed_after_s", Need::Optional, 0..=86_400)
            .map_or(d.speed_after_s, |s| s as u64);
        Some(AndonRules {
            raise_after_s,
            escalate_after_s: escalate_after_s?,
            quality_reject_rate,
            speed_ratio,
            speed_after_s,
        })
    }

    /// `escalate_after_s = [300, 900]`: strictly increasing, at most 8 levels.
    fn escalation(&mut self, v: &Value<'_>, path: &str) -> Option<Vec<u64>> {
        let items = self.cx.as_array(v, path)?;
        if items.len() > 8 {
            self.cx.error(
                &v.span(),
                path,
                format!("at most 8 escalation levels, found {}", items.len()),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match self.cx.as_int(item, &item_path, 1..=604_800) {
                Some(s) => {
                    if out.last().is_some_and(|&last| s as u64 <= last) {
                        self.cx.error(
                            &item.span(),
                            &item_path,
                            "escalation times must increase: each is counted from the raise",
                        );
                        ok = false;
                    }
                    out.push(s as u64);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

fn default_oee_targets() -> OeeTargets {
    let (a, p, q) = (0.90, 0.85, 0.95);
    OeeTargets {
        availability: a,
        performance: p,
        quality: q,
        oee: a * p * q,
    }
}

/// Whether two shifts share any minute of the day. `start == end` means 24 h; shifts may wrap.
fn shifts_overlap(a: &Shift, b: &Shift) -> bool {
    const DAY: u32 = 1440;
    let len = |s: &Shift| {
        if s.start_min == s.end_min {
            DAY
        } else {
            (s.end_min + DAY - s.start_min) % DAY
        }
    };
    let (la, lb) = (len(a), len(b));
    (b.start_min + DAY - a.start_min) % DAY < la || (a.start_min + DAY - b.start_min) % DAY < lb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shift(start: &str, end: &str) -> Shift {
        Shift {
            name: String::new(),
            start_min: parse_hhmm(start).unwrap(),
            end_min: parse_hhmm(end).unwrap(),
        }
    }

    #[test]
    fn adjacent_shifts_do_not_overlap_even_across_midnight() {
        let (a, b, c) = (
            shift("06:00", "14:00"),
            shift("14:00", "22:00"),
            shift("22:00", "06:00"),
        );
        for (x, y) in [(&a, &b), (&b, &c), (&c, &a), (&a, &c)] {
            assert!(!shifts_overlap(x, y));
        }
    }

    #[test]
    fn shifts_sharing_a_minute_overlap() {
        assert!(shifts_overlap(
            &shift("06:00", "14:00"),
            &shift("13:59", "22:00")
        ));
        assert!(shifts_overlap(
            &shift("22:00", "06:00"),
            &shift("05:00", "07:00")
        ));
        assert!(shifts_overlap(
            &shift("22:00", "06:00"),
            &shift("23:00", "23:30")
        ));
    }

    #[test]
    fn a_24_hour_shift_overlaps_every_other_shift() {
        assert!(shifts_overlap(
            &shift("06:00", "06:00"),
            &shift("01:00", "02:00")
        ));
        assert!(shifts_overlap(
            &shift("01:00", "02:00"),
            &shift("06:00", "06:00")
        ));
    }

    #[test]
    fn display_puts_file_line_column_key_message_and_hint_on_one_line() {
        let e = ConfigError {
            file: "x.toml".into(),
            line: 3,
            column: 1,
            key: "plc[0].poll_intervall_ms".into(),
            message: "unknown key \"poll_intervall_ms\"".into(),
            hint: Some("did you mean \"poll_interval_ms\"?".into()),
        };
        assert_eq!(
            e.to_string(),
            "x.toml:3:1: plc[0].poll_intervall_ms: unknown key \"poll_intervall_ms\", did you mean \"poll_interval_ms\"?"
        );
    }
}
