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
//! ## Layout
//!
//! This module holds the entry points, the error types, the top-level orchestration
//! ([`Compiler::config`]: which section is compiled when, and what one section hands the next)
//! and the helpers every section shares. Each section of the file has its own module, with the
//! decisions of SPEC §2 it implements in its module doc:
//!
//! | module | sections |
//! |---|---|
//! | `gateway` | `[gateway]`, `[storage]`, `[telemetry]` |
//! | `mqtt` | `[mqtt]` |
//! | `commands` | `[commands]` |
//! | `metrics` | `[metrics]` |
//! | `sparkplug` | `[sparkplug]` |
//! | `plc` | `[[plc]]` |
//! | `calendar` | `[[shift]]`, `[[planned_stop]]` |
//! | `equipment` | `[[equipment]]`, its `oee_targets`, `[[equipment.fault]]`, `andon` |
//! | `signal` | `[equipment.signals]`, and the largest-message check against `mqtt.max_packet_kb` |
//!
//! `walk` is the spanned getter layer (recording, never returning at the first problem) and
//! `syntax` the pure string checks (addresses, URLs, names, times). The names of config enums
//! are one table each, in `config` (`Severity::NAMES`…), used both to parse and to print.
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
//! ## Decisions shared by every section
//!
//! - Relative paths (`data_dir`, `password_file`, `ca_file`, `client_cert_file`,
//!   `client_key_file`, `key_file`) are resolved against the directory of the config file, so
//!   a file and its secrets can move together. [`load_str`] resolves against the directory
//!   part of the name it is given (none for a bare name: paths then stay relative to the
//!   working directory).
//! - Files the config names that are missing or unreadable are *warnings* ([`Loaded::warnings`]):
//!   `run` treats each of them as an error. Legal but unusual settings are *notices*
//!   ([`Loaded::notices`]): printed as warnings by `check-config`, logged by `run`, never fatal.
//! - Names checked by [`Compiler::name`] use the topic-safe alphabet `[A-Za-z0-9_-]{1,64}`,
//!   plus `.` where the section allows it; duplicates name the first definition and its line.

mod calendar;
mod commands;
mod equipment;
mod gateway;
mod metrics;
mod mqtt;
mod opcua;
mod plc;
mod rtu;
mod signal;
mod sparkplug;
mod syntax;
#[cfg(test)]
mod testing;
mod walk;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::{ByteOrder, Commands, Config, Equipment, Plc, Storage, Telemetry};
use syntax::{check_name, Problem};
use walk::{did_you_mean, Ctx, Need, Span, Table};

pub use commands::MIN_COMMAND_KEY_BYTES;

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

// ---- shared by the sections ------------------------------------------------------------------

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
    /// `opc-ua`: signals name a `node`.
    OpcUa,
    /// The PLC reference is broken (already reported): check what can be checked.
    Unknown,
}

/// Where an earlier definition of a unique name was, for "duplicate" messages.
struct Seen {
    line: usize,
    path: String,
}

/// The compile step: one method per table of the schema, each in its section's module.
struct Compiler<'c, 's> {
    cx: &'c mut Ctx<'s>,
    base: Option<PathBuf>,
}

impl Compiler<'_, '_> {
    /// The whole document, section by section in the order their dependencies need:
    /// `[gateway]` first (its id is the default of `mqtt.client_id` and `topic_prefix`),
    /// `[mqtt]` before `[commands]` (a key over plain TCP is a notice), `[[plc]]` before
    /// `[[equipment]]` (each equipment's signals are checked against its PLC's protocol),
    /// `[[shift]]` before `[[planned_stop]]`, and the largest-message check last (it needs
    /// both `[mqtt]` and the compiled equipment). A section that fails still lets the
    /// following ones be checked.
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
                "metrics",
                "sparkplug",
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
        let metrics = self
            .cx
            .table(root, "metrics", Need::Optional)
            .map(|t| self.metrics(&t));
        let sparkplug = self.cx.table(root, "sparkplug", Need::Optional).map(|t| {
            // `Some("")`: an [mqtt] table that did not compile (its errors are reported).
            let client_id = mqtt
                .as_ref()
                .map(|m| m.as_ref().map_or("", |m| m.client_id.as_str()));
            self.sparkplug(&t, gateway_id, client_id)
        });
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
        self.shared_buses(&plc_tables, &plcs);
        if let Some(g) = &gateway {
            opcua::default_pki_dirs(plcs.iter_mut().flatten(), &g.data_dir);
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
        if let Some(Some(m)) = &mqtt {
            self.largest_messages(m, &eq_tables, &equipment);
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
            metrics: match metrics {
                None => None,
                Some(m) => Some(m?),
            },
            sparkplug: match sparkplug {
                None => None,
                Some(s) => Some(s?),
            },
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
