//! A minimal valid file and ways to break it, for the sections' unit tests.

use super::{load_str, ConfigError, Loaded};

/// One Modbus PLC and one equipment with the two required signals; ends inside
/// `[equipment.signals]`, so appended keys land there and appended tables stand alone.
pub(super) const MINIMAL: &str = r#"[gateway]
id = "gw1"
timezone = "UTC"

[[plc]]
name = "p1"
protocol = "modbus-tcp"
host = "127.0.0.1"

[[equipment]]
code = "E1"
plc = "p1"
line_id = "L1"
ideal_rate_per_min = 60

[equipment.signals]
running = { address = "co:0" }
good_count = { address = "hr:0" }
"#;

/// `MINIMAL` with its first `from` replaced by `to`.
pub(super) fn edit(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from:?} is not in MINIMAL");
    MINIMAL.replacen(from, to, 1)
}

/// `MINIMAL` followed by `more`.
pub(super) fn with(more: &str) -> String {
    format!("{MINIMAL}{more}")
}

/// The compiled file; panics with the errors if it is refused.
pub(super) fn loaded(text: &str) -> Loaded {
    load_str(text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// The one error at `key`; panics if the file is accepted or has none or several there.
pub(super) fn error_at(text: &str, key: &str) -> ConfigError {
    let errors = match load_str(text, "t.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.0,
    };
    let at: Vec<&ConfigError> = errors.iter().filter(|e| e.key == key).collect();
    assert_eq!(at.len(), 1, "errors at {key}: {errors:?}");
    at[0].clone()
}
