//! The configuration loader against broken and example files.
//!
//! Every broken config is the valid `BASE` with one edit; each case asserts the key path, the
//! line (found by a needle in the broken text, so the table stays readable) and the wording of
//! the error. The example files under `etc/` must compile without errors or warnings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

use std::path::{Path, PathBuf};

use ms5_edge::config::{
    load_file, load_str, ByteOrder, ConfigError, DataType, EquipmentType, FaultCategory,
    ModbusAddress, Protocol, Severity, SignalSource,
};

const BASE: &str = r#"[gateway]
id = "gw1"
timezone = "Europe/London"

[[plc]]
name = "bagger"
protocol = "modbus-tcp"
host = "127.0.0.1"
poll_interval_ms = 1000

[[plc]]
name = "loader"
protocol = "ethernet-ip"
host = "127.0.0.2"

[[shift]]
name = "A"
start = "06:00"
end = "14:00"

[[planned_stop]]
name = "break"
start = "10:00"
duration_min = 20
shifts = ["A"]

[[equipment]]
code = "BAG1"
plc = "bagger"
line_id = "L1"
ideal_rate_per_min = 120

[equipment.signals]
running = { address = "co:0" }
good_count = { address = "hr:102", type = "u32" }
faults = { address = "hr:110", type = "u16", count = 2 }

[[equipment.fault]]
bit = 0
code = "JAM"

[[equipment]]
code = "BL1"
plc = "loader"
line_id = "L1"
ideal_rate_per_min = 10

[equipment.signals]
running = { tag = "BL.Running" }
good_count = { tag = "BL.GoodCount", type = "dint" }
"#;

/// `BASE` with the first occurrence of `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE does not contain {from:?}");
    BASE.replacen(from, to, 1)
}

/// 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("needle {needle:?} not in text"));
    text[..at].matches('\n').count() + 1
}

fn errors_of(text: &str) -> Vec<ConfigError> {
    match load_str(text, "test.toml") {
        Ok(_) => panic!("expected errors, the config was accepted:\n{text}"),
        Err(e) => e.0,
    }
}

struct Case {
    name: &'static str,
    text: String,
    key: &'static str,
    /// The expected error is on the line of this text's first occurrence.
    line_of: &'static str,
    message: &'static str,
}

fn case(
    name: &'static str,
    text: String,
    key: &'static str,
    line_of: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        text,
        key,
        line_of,
        message,
    }
}

fn broken_configs() -> Vec<Case> {
    vec![
        case(
            "misspelled key",
            edit("poll_interval_ms = 1000", "poll_intervall_ms = 1000"),
            "plc[0].poll_intervall_ms",
            "poll_intervall_ms",
            "unknown key \"poll_intervall_ms\"",
        ),
        case(
            "string where an integer belongs",
            edit("poll_interval_ms = 1000", "poll_interval_ms = \"1000\""),
            "plc[0].poll_interval_ms",
            "poll_interval_ms",
            "expected an integer, found a string",
        ),
        case(
            "poll interval below 10 ms",
            edit("poll_interval_ms = 1000", "poll_interval_ms = 5"),
            "plc[0].poll_interval_ms",
            "poll_interval_ms",
            "must be between 10 and 60000, found 5",
        ),
        case(
            "missing gateway id",
            edit("id = \"gw1\"\n", ""),
            "gateway.id",
            "[gateway]",
            "missing required key \"id\"",
        ),
        case(
            "gateway id with a slash",
            edit("id = \"gw1\"", "id = \"gw/1\""),
            "gateway.id",
            "id = ",
            "invalid name \"gw/1\"",
        ),
        case(
            "misspelled time zone",
            edit("Europe/London", "Europe/Londn"),
            "gateway.timezone",
            "timezone",
            "unknown time zone \"Europe/Londn\"",
        ),
        case(
            "unknown protocol",
            edit("protocol = \"modbus-tcp\"", "protocol = \"modbus\""),
            "plc[0].protocol",
            "protocol",
            "expected one of \"modbus-tcp\", \"ethernet-ip\", \"modbus-rtu\", \"opc-ua\", found \"modbus\"",
        ),
        case(
            "port zero",
            edit("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = 0"),
            "plc[0].port",
            "port = 0",
            "must be between 1 and 65535",
        ),
        case(
            "slot on a Modbus PLC",
            edit("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nslot = 1"),
            "plc[0].slot",
            "slot = 1",
            "applies to ethernet-ip PLCs only",
        ),
        case(
            "lower-case byte order",
            edit("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nbyte_order = \"abcd\""),
            "plc[0].byte_order",
            "byte_order",
            "found \"abcd\"",
        ),
        case(
            "two PLCs with one name",
            edit("name = \"loader\"", "name = \"bagger\""),
            "plc[1].name",
            "name = \"bagger\"\nprotocol = \"ethernet-ip\"",
            "duplicate PLC name \"bagger\": already used by plc[0] on line 6",
        ),
        case(
            "equipment naming a PLC that does not exist",
            edit("plc = \"bagger\"", "plc = \"bager\""),
            "equipment[0].plc",
            "plc = \"bager\"",
            "no [[plc]] named \"bager\"",
        ),
        case(
            "planned stop naming a shift that does not exist",
            edit("shifts = [\"A\"]", "shifts = [\"Z\"]"),
            "planned_stop[0].shifts[0]",
            "shifts = [",
            "no [[shift]] named \"Z\"",
        ),
        case(
            "overlapping shifts",
            edit("[[planned_stop]]", "[[shift]]\nname = \"B\"\nstart = \"13:00\"\nend = \"22:00\"\n\n[[planned_stop]]"),
            "shift[1]",
            "[[shift]]\nname = \"B\"",
            "shift \"B\" (13:00–22:00) overlaps shift \"A\" (06:00–14:00)",
        ),
        case(
            "time not in HH:MM",
            edit("start = \"06:00\"", "start = \"6am\""),
            "shift[0].start",
            "6am",
            "expected a time \"HH:MM\"",
        ),
        case(
            "duplicate equipment code",
            edit("code = \"BL1\"", "code = \"BAG1\""),
            "equipment[1].code",
            "code = \"BAG1\"\nplc = \"loader\"",
            "duplicate equipment code \"BAG1\"",
        ),
        case(
            "equipment code with a topic wildcard",
            edit("code = \"BAG1\"", "code = \"BAG#1\""),
            "equipment[0].code",
            "BAG#1",
            "invalid name \"BAG#1\"",
        ),
        case(
            "criticality above 5",
            edit("line_id = \"L1\"", "line_id = \"L1\"\ncriticality = 6"),
            "equipment[0].criticality",
            "criticality",
            "must be between 1 and 5, found 6",
        ),
        case(
            "OEE target above 1",
            edit("[equipment.signals]", "[equipment.oee_targets]\navailability = 1.5\n\n[equipment.signals]"),
            "equipment[0].oee_targets.availability",
            "availability",
            "must be between 0 and 1, found 1.5",
        ),
        case(
            "missing running signal",
            edit("running = { address = \"co:0\" }\n", ""),
            "equipment[0].signals.running",
            "[equipment.signals]",
            "missing required key \"running\"",
        ),
        case(
            "register past 65535",
            edit("\"hr:102\", type = \"u32\"", "\"hr:65535\", type = \"u32\""),
            "equipment[0].signals.good_count.address",
            "hr:65535",
            "run past the last address 65535",
        ),
        case(
            "register number out of range",
            edit("\"hr:102\"", "\"hr:70000\""),
            "equipment[0].signals.good_count.address",
            "hr:70000",
            "invalid Modbus address \"hr:70000\"",
        ),
        case(
            "register bit above 15",
            edit("{ address = \"co:0\" }", "{ address = \"hr:5.16\" }"),
            "equipment[0].signals.running.address",
            "hr:5.16",
            "the bit must be 0..=15",
        ),
        case(
            "coil declared as a register type",
            edit("{ address = \"co:0\" }", "{ address = \"co:0\", type = \"u16\" }"),
            "equipment[0].signals.running.type",
            "co:0",
            "coils and discrete inputs are bools, found type \"u16\"",
        ),
        case(
            "running read from a float register",
            edit("{ address = \"co:0\" }", "{ address = \"hr:0\", type = \"f32\" }"),
            "equipment[0].signals.running.type",
            "hr:0",
            "running must be a bool signal",
        ),
        case(
            "Modbus signal with a tag",
            edit("{ address = \"co:0\" }", "{ tag = \"Bagger.Running\" }"),
            "equipment[0].signals.running.tag",
            "Bagger.Running",
            "\"tag\" is for ethernet-ip PLCs",
        ),
        case(
            "EtherNet/IP signal with an address",
            edit("{ tag = \"BL.Running\" }", "{ address = \"co:0\", tag = \"BL.Running\" }"),
            "equipment[1].signals.running.address",
            "BL.Running",
            "\"address\" is for modbus-tcp PLCs",
        ),
        case(
            "Modbus type name on a Logix tag",
            edit("type = \"dint\"", "type = \"u32\""),
            "equipment[1].signals.good_count.type",
            "BL.GoodCount",
            "expected one of \"bool\", \"sint\", \"int\", \"dint\", \"lint\", \"real\", \"lreal\", found \"u32\"",
        ),
        case(
            "Logix array index plus count past the largest index",
            edit(
                "good_count = { tag = \"BL.GoodCount\", type = \"dint\" }",
                "good_count = { tag = \"BL.GoodCount\", type = \"dint\" }\nextra = { Arr = { tag = \"Arr[4294967290]\", count = 10 } }",
            ),
            "equipment[1].signals.extra.Arr.count",
            "Arr[4294967290]",
            "10 elements from Arr[4294967290] run past the largest array index 4294967295",
        ),
        case(
            "Logix array index too large for an index",
            edit(
                "good_count = { tag = \"BL.GoodCount\", type = \"dint\" }",
                "good_count = { tag = \"BL.GoodCount\", type = \"dint\" }\nextra = { Arr = { tag = \"Arr[18446744073709551615]\", count = 2 } }",
            ),
            "equipment[1].signals.extra.Arr.tag",
            "Arr[18446744073709551615]",
            "an array signal names its first element with one index",
        ),
        case(
            "Logix bit range past bit 63",
            edit(
                "good_count = { tag = \"BL.GoodCount\", type = \"dint\" }",
                "good_count = { tag = \"BL.GoodCount\", type = \"dint\" }\nextra = { Bits = { tag = \"W.60\", type = \"bool\", count = 8 } }",
            ),
            "equipment[1].signals.extra.Bits.count",
            "W.60",
            "8 bit(s) from bit 60 of \"W\" run past bit 63",
        ),
        case(
            "array count of zero",
            edit("count = 2", "count = 0"),
            "equipment[0].signals.faults.count",
            "count = 0",
            "must be between 1 and 2000, found 0",
        ),
        case(
            "fault bit beyond the fault words",
            edit("bit = 0", "bit = 32"),
            "equipment[0].fault[0].bit",
            "bit = 32",
            "bit 32 does not fit the faults signal: 2 × u16 holds bits 0..=31",
        ),
        case(
            "two faults with one code",
            edit("code = \"JAM\"\n", "code = \"JAM\"\n\n[[equipment.fault]]\nbit = 1\ncode = \"JAM\"  # again\n"),
            "equipment[0].fault[1].code",
            "# again",
            "duplicate fault code \"JAM\"",
        ),
        case(
            "two faults on one bit",
            edit("code = \"JAM\"\n", "code = \"JAM\"\n\n[[equipment.fault]]\nbit = 0\ncode = \"FILM_BREAK\"\n"),
            "equipment[0].fault[1].bit",
            "bit = 0\ncode = \"FILM",
            "duplicate fault bit \"0\"",
        ),
        case(
            "extra signal named like an engine signal",
            edit(
                "[[equipment.fault]]",
                "[equipment.signals.extra]\nspeed = { address = \"hr:100\", type = \"f32\" }\n\n[[equipment.fault]]",
            ),
            "equipment[0].signals.extra.speed",
            "speed = {",
            "\"speed\" is an engine signal name",
        ),
        case(
            "escalation times that do not increase",
            edit("code = \"JAM\"\n", "code = \"JAM\"\n\n[equipment.andon]\nescalate_after_s = [900, 300]\n"),
            "equipment[0].andon.escalate_after_s[1]",
            "escalate_after_s",
            "escalation times must increase",
        ),
        case(
            "unknown andon level",
            edit("code = \"JAM\"\n", "code = \"JAM\"\n\n[equipment.andon]\nraise_after_s = { urgent = 10 }\n"),
            "equipment[0].andon.raise_after_s.urgent",
            "urgent",
            "unknown key \"urgent\"",
        ),
        case(
            "broker URL with a tcp scheme",
            edit("[[plc]]", "[mqtt]\nurl = \"tcp://broker:1883\"\n\n[[plc]]"),
            "mqtt.url",
            "tcp://",
            "unsupported scheme \"tcp\"",
        ),
        case(
            "topic prefix ending in a slash",
            edit("[[plc]]", "[mqtt]\nurl = \"mqtt://broker\"\ntopic_prefix = \"ms5/gw1/\"\n\n[[plc]]"),
            "mqtt.topic_prefix",
            "topic_prefix",
            "must not end with \"/\"",
        ),
        case(
            "client certificate without its key",
            edit("[[plc]]", "[mqtt]\nurl = \"mqtts://broker\"\nclient_cert_file = \"gw.pem\"\n\n[[plc]]"),
            "mqtt.client_cert_file",
            "client_cert_file",
            "client_cert_file needs client_key_file",
        ),
        case(
            "no equipment at all",
            BASE[..BASE.find("[[equipment]]").unwrap_or(BASE.len())].to_string(),
            "equipment",
            "[gateway]",
            "at least one equipment is required",
        ),
    ]
}

#[test]
fn every_broken_config_names_the_key_line_and_problem() {
    let cases = broken_configs();
    assert!(cases.len() >= 25, "the table should stay broad");
    let mut failures = Vec::new();
    for c in &cases {
        let errors = errors_of(&c.text);
        let want_line = line_of(&c.text, c.line_of);
        let found = errors.iter().find(|e| e.key == c.key);
        let ok = found.is_some_and(|e| {
            e.line == want_line
                && e.column >= 1
                && e.message.contains(c.message)
                && e.file == "test.toml"
        });
        if !ok {
            let all: Vec<String> = errors.iter().map(|e| format!("    {e}")).collect();
            failures.push(format!(
                "{}: wanted key {} on line {want_line} with {:?}; got\n{}",
                c.name,
                c.key,
                c.message,
                all.join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_base_of_the_broken_configs_is_itself_valid() {
    let loaded = load_str(BASE, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn an_unknown_key_gets_a_did_you_mean_hint() {
    let errors = errors_of(&edit("poll_interval_ms = 1000", "poll_intervall_ms = 1000"));
    let e = errors
        .iter()
        .find(|e| e.key == "plc[0].poll_intervall_ms")
        .expect("an error for the typo");
    assert_eq!(
        e.hint.as_deref(),
        Some("did you mean \"poll_interval_ms\"?")
    );
    assert!(
        e.to_string()
            .ends_with("unknown key \"poll_intervall_ms\", did you mean \"poll_interval_ms\"?"),
        "{e}"
    );
}

#[test]
fn a_reference_to_a_misspelled_plc_suggests_the_right_name() {
    let errors = errors_of(&edit("plc = \"bagger\"", "plc = \"bager\""));
    let e = errors
        .iter()
        .find(|e| e.key == "equipment[0].plc")
        .expect("an error for the reference");
    assert_eq!(e.hint.as_deref(), Some("did you mean \"bagger\"?"));
}

#[test]
fn a_legacy_modicon_address_gets_a_zero_based_hint() {
    let errors = errors_of(&edit("\"hr:102\"", "\"40103\""));
    let e = errors
        .iter()
        .find(|e| e.key == "equipment[0].signals.good_count.address")
        .expect("an address error");
    assert!(
        e.hint.as_deref().is_some_and(|h| h.contains("\"hr:102\"")),
        "{e}"
    );
}

#[test]
fn several_errors_are_all_reported_at_once_in_file_order() {
    let text = BASE
        .replacen("Europe/London", "Mars/Olympus", 1)
        .replacen("poll_interval_ms = 1000", "poll_interval_ms = 0", 1)
        .replacen("end = \"14:00\"", "end = \"14:00\"\ncolour = \"blue\"", 1)
        .replacen("code = \"BL1\"", "code = \"BL 1\"", 1);
    let errors = errors_of(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "gateway.timezone",
            "plc[0].poll_interval_ms",
            "shift[0].colour",
            "equipment[1].code"
        ],
        "{errors:#?}"
    );
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert!(
        lines.windows(2).all(|w| w[0] <= w[1]),
        "sorted by position: {lines:?}"
    );
    let shown = ms5_edge::config::ConfigErrors(errors.clone()).to_string();
    assert_eq!(
        shown.lines().count(),
        errors.len(),
        "one line per error:\n{shown}"
    );
}

#[test]
fn a_syntax_error_carries_line_and_column() {
    let text = "[gateway]\nid = \"gw1\"\ntimezone = \n";
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!((e.line, e.column), (3, 12), "{e}");
    assert!(e.message.starts_with("invalid TOML"), "{e}");
    assert!(
        e.to_string().starts_with("test.toml:3:12: invalid TOML"),
        "{e}"
    );
}

#[test]
fn a_duplicate_key_is_a_syntax_error_at_the_second_key() {
    let errors = errors_of(&edit("id = \"gw1\"", "id = \"gw1\"\nid = \"gw2\""));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].column), (3, 1));
    assert!(
        errors[0].message.contains("duplicate key"),
        "{:?}",
        errors[0]
    );
}

#[test]
fn a_single_bracket_plc_table_hints_at_double_brackets() {
    let text = BASE.replacen("[[plc]]", "[plc]", 1).replacen(
        "[[plc]]\nname = \"loader\"",
        "[x]\nname = \"loader\"",
        1,
    );
    let errors = errors_of(&text);
    let e = errors
        .iter()
        .find(|e| e.key == "plc")
        .expect("an error for [plc]");
    assert_eq!(e.message, "expected an array of tables, found a table");
    assert_eq!(
        e.hint.as_deref(),
        Some("write the header with double brackets: [[plc]]")
    );
}

#[test]
fn a_timeout_longer_than_the_poll_interval_is_a_warning_that_never_stops_run() {
    let text = edit(
        "poll_interval_ms = 1000",
        "poll_interval_ms = 100\ntimeout_ms = 300",
    );
    let loaded = load_str(&text, "test.toml")
        .unwrap_or_else(|e| panic!("timeout_ms > poll_interval_ms must not be an error:\n{e}"));
    assert!(
        loaded.warnings.is_empty(),
        "not a warning that stops `run`: {:?}",
        loaded.warnings
    );
    assert_eq!(loaded.notices.len(), 1, "{:?}", loaded.notices);
    let n = &loaded.notices[0];
    assert_eq!(n.key, "plc[0].timeout_ms");
    assert_eq!(n.line, line_of(&text, "timeout_ms"));
    assert!(n.message.contains("longer than the poll interval"), "{n}");
    let bagger = &loaded.config.plcs[0];
    assert_eq!(
        (bagger.poll_interval_ms, bagger.timeout_ms),
        (100, 300),
        "kept as written"
    );
}

#[test]
fn check_config_prints_the_long_timeout_warning_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ms5-edge.toml");
    let text = edit(
        "poll_interval_ms = 1000",
        "poll_interval_ms = 100\ntimeout_ms = 300",
    );
    std::fs::write(&path, &text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
        .arg("check-config")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit 0 expected:\n{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok "));
    assert!(
        stderr.contains("warning:") && stderr.contains("plc[0].timeout_ms"),
        "{stderr}"
    );
}

#[test]
fn missing_referenced_files_are_warnings_not_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = edit(
        "[[plc]]",
        "[mqtt]\nurl = \"mqtts://broker\"\nusername = \"gw1\"\npassword_file = \"missing.password\"\nca_file = \"ca.pem\"\n\n[[plc]]",
    );
    std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").expect("write ca");
    let path = dir.path().join("ms5-edge.toml");
    std::fs::write(&path, &text).expect("write config");

    let loaded =
        load_file(&path).unwrap_or_else(|e| panic!("missing files must not be errors:\n{e}"));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert_eq!(w.key, "mqtt.password_file");
    assert_eq!(w.line, line_of(&text, "password_file"));
    assert!(w.message.contains("missing.password"), "{w}");

    // Relative paths resolve against the config file's directory.
    let mqtt = loaded.config.mqtt.expect("mqtt");
    let dir_abs = std::path::absolute(dir.path()).expect("absolute");
    assert_eq!(mqtt.ca_file, Some(dir_abs.join("ca.pem")));
    assert_eq!(mqtt.password_file, Some(dir_abs.join("missing.password")));
}

#[test]
fn an_unreadable_config_file_is_one_error_without_a_position() {
    let errors = load_file(Path::new("/nonexistent/ms5-edge.toml"))
        .expect_err("no such file")
        .0;
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].column), (0, 0));
    assert!(
        errors[0]
            .to_string()
            .starts_with("/nonexistent/ms5-edge.toml: cannot read"),
        "{}",
        errors[0]
    );
}

#[test]
fn defaults_fill_every_optional_key() {
    let c = load_str(BASE, "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    assert_eq!(c.gateway.data_dir, PathBuf::from("/var/lib/ms5-edge"));
    assert!(c.mqtt.is_none());
    assert_eq!(
        (
            c.storage.max_outbox_mb,
            c.storage.retention_days,
            c.storage.telemetry_retention_days
        ),
        (256, 90, 7)
    );
    assert_eq!(
        (
            c.telemetry.publish_interval_ms,
            c.telemetry.store_and_forward
        ),
        (1000, true)
    );

    let bagger = &c.plcs[0];
    assert_eq!(
        (bagger.port, bagger.timeout_ms, bagger.offline_after_polls),
        (502, 500, 3)
    );
    assert_eq!(
        bagger.protocol,
        Protocol::ModbusTcp {
            unit_id: 1,
            byte_order: ByteOrder::Abcd
        }
    );
    let loader = &c.plcs[1];
    assert_eq!((loader.port, loader.poll_interval_ms), (44818, 1000));
    assert_eq!(loader.protocol, Protocol::EthernetIp { slot: 0 });

    let bag = &c.equipment[0];
    assert_eq!(bag.name, "BAG1");
    assert_eq!(
        (
            bag.micro_stop_s,
            bag.criticality,
            bag.position_in_line,
            bag.primary
        ),
        (30, 3, 1, false)
    );
    assert_eq!(bag.kind, EquipmentType::Production);
    assert_eq!(bag.andon, ms5_edge::config::AndonRules::default());
    assert!((bag.oee_targets.oee - 0.90 * 0.85 * 0.95).abs() < 1e-12);
    assert_eq!(bag.signals.running.data_type, DataType::Bool);
    assert_eq!(
        (
            bag.signals.running.count,
            bag.signals.running.scale,
            bag.signals.running.offset
        ),
        (1, 1.0, 0.0)
    );
    let fault = &bag.faults[0];
    assert_eq!(
        (
            fault.description.as_str(),
            fault.category,
            fault.severity,
            fault.andon
        ),
        ("JAM", FaultCategory::Other, Severity::Medium, false)
    );

    let bl = &c.equipment[1];
    assert_eq!(bl.signals.running.data_type, DataType::Bool);
    assert_eq!(bl.signals.good_count.data_type, DataType::I32);
}

#[test]
fn mqtt_defaults_follow_the_gateway_id_and_the_scheme() {
    let c = load_str(
        &edit("[[plc]]", "[mqtt]\nurl = \"mqtt://10.0.0.5\"\n\n[[plc]]"),
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .config;
    let m = c.mqtt.expect("mqtt");
    assert_eq!(
        (m.url.tls, m.url.host.as_str(), m.url.port),
        (false, "10.0.0.5", 1883)
    );
    assert_eq!(m.client_id, "ms5-edge-gw1");
    assert_eq!(m.topic_prefix, "ms5/gw1");
    assert_eq!((m.keep_alive_s, m.max_inflight), (30, 64));
}

#[test]
fn shifts_may_cross_midnight_and_a_24_hour_shift_stands_alone() {
    let three = edit(
        "[[planned_stop]]",
        "[[shift]]\nname = \"B\"\nstart = \"14:00\"\nend = \"22:00\"\n\n[[shift]]\nname = \"C\"\nstart = \"22:00\"\nend = \"06:00\"\n\n[[planned_stop]]",
    );
    let c = load_str(&three, "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    assert_eq!(
        c.shifts
            .iter()
            .map(|s| (s.start_min, s.end_min))
            .collect::<Vec<_>>(),
        [(360, 840), (840, 1320), (1320, 360)]
    );

    let all_day = edit("end = \"14:00\"", "end = \"06:00\"");
    assert!(load_str(&all_day, "test.toml").is_ok());
    let all_day_and_more = edit(
        "[[planned_stop]]",
        "[[shift]]\nname = \"B\"\nstart = \"14:00\"\nend = \"22:00\"\n\n[[planned_stop]]",
    )
    .replacen("end = \"14:00\"", "end = \"06:00\"", 1);
    let errors = errors_of(&all_day_and_more);
    assert!(
        errors
            .iter()
            .any(|e| e.key == "shift[1]" && e.message.contains("overlaps")),
        "{errors:?}"
    );
}

/// Every `*.toml` under `dir`, recursively.
fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_config_under_etc_passes_without_warnings() {
    let mut files = Vec::new();
    toml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("etc"),
        &mut files,
    );
    assert!(
        !files.is_empty(),
        "no *.toml found under etc/: this test would check nothing"
    );
    assert!(
        files.iter().any(|f| f.ends_with("etc/ms5-edge.toml")),
        "the line-1 example is missing: {files:?}"
    );
    for file in &files {
        match load_file(file) {
            Ok(loaded) => assert!(
                loaded.warnings.is_empty(),
                "{}: warnings:\n{:#?}",
                file.display(),
                loaded.warnings
            ),
            Err(e) => panic!("{} does not pass check-config:\n{e}", file.display()),
        }
    }
}

#[test]
fn the_example_compiles_to_the_line_1_setup() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/ms5-edge.toml");
    let c = load_file(&path).unwrap_or_else(|e| panic!("{e}")).config;

    assert_eq!(c.gateway.id, "bp01-gw1");
    assert_eq!(c.gateway.timezone, "Europe/London");
    let m = c.mqtt.as_ref().expect("the example has a broker");
    assert!(m.url.tls);
    assert_eq!(
        (m.url.port, m.topic_prefix.as_str()),
        (8883, "ms5/bp01-gw1")
    );
    assert_eq!((m.password_file.as_ref(), m.ca_file.as_ref()), (None, None));

    assert_eq!(
        c.plcs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["bagger", "loader"]
    );
    assert_eq!(
        c.plcs[0].protocol,
        Protocol::ModbusTcp {
            unit_id: 1,
            byte_order: ByteOrder::Abcd
        }
    );
    assert_eq!(c.plcs[1].protocol, Protocol::EthernetIp { slot: 0 });
    assert_eq!(
        c.shifts.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["A", "B", "C"]
    );
    assert_eq!(
        (c.shifts[2].start_min, c.shifts[2].end_min),
        (22 * 60, 6 * 60)
    );
    assert!(c
        .planned_stops
        .iter()
        .all(|p| p.name == "break" && p.duration_min == 20));
    assert_eq!(c.planned_stops[0].shifts, ["A"]);

    assert_eq!(c.equipment.len(), 2);
    let bag = &c.equipment[0];
    assert_eq!(
        (bag.code.as_str(), bag.name.as_str(), bag.plc.as_str()),
        ("BP01.PACK.BAG1", "Bagger 1", "bagger")
    );
    assert_eq!(bag.ideal_rate_per_min, 120.0);
    assert_eq!(bag.criticality, 4);
    let s = &bag.signals;
    let modbus = |sig: &ms5_edge::config::Signal| match &sig.source {
        SignalSource::Modbus {
            address,
            byte_order,
        } => (*address, *byte_order),
        SignalSource::Tag { tag } => panic!("bagger signal read by tag {tag}"),
        SignalSource::Node { node } => panic!("bagger signal read by node {node}"),
    };
    assert_eq!(
        modbus(&s.running),
        (ModbusAddress::Coil(0), ByteOrder::Abcd)
    );
    assert_eq!(s.running.data_type, DataType::Bool);
    let speed = s.speed.as_ref().expect("speed");
    assert_eq!(
        (modbus(speed).0, speed.data_type),
        (ModbusAddress::HoldingRegister(100), DataType::F32)
    );
    assert_eq!(
        (modbus(&s.good_count).0, s.good_count.data_type),
        (ModbusAddress::HoldingRegister(102), DataType::U32)
    );
    let reject = s.reject_count.as_ref().expect("reject_count");
    assert_eq!(modbus(reject).0, ModbusAddress::HoldingRegister(104));
    let faults = s.faults.as_ref().expect("faults");
    assert_eq!(
        (modbus(faults), faults.data_type, faults.count),
        (
            (ModbusAddress::HoldingRegister(110), ByteOrder::Abcd),
            DataType::U16,
            4
        )
    );
    let (name, temp) = &s.extra[0];
    assert_eq!(
        (name.as_str(), modbus(temp).0, temp.data_type, temp.scale),
        (
            "motor_temp_c",
            ModbusAddress::InputRegister(10),
            DataType::I16,
            0.1
        )
    );
    assert!(bag.faults.len() >= 4);
    let by_bit = |bit: u32| bag.faults.iter().find(|f| f.bit == bit).expect("fault bit");
    assert_eq!(
        (
            by_bit(0).code.as_str(),
            by_bit(0).category,
            by_bit(0).severity,
            by_bit(0).andon
        ),
        ("FILM_BREAK", FaultCategory::Material, Severity::High, true)
    );
    assert_eq!(
        (by_bit(1).code.as_str(), by_bit(1).severity, by_bit(1).andon),
        ("JAM", Severity::Medium, true)
    );
    assert_eq!(
        (
            by_bit(2).code.as_str(),
            by_bit(2).category,
            by_bit(2).severity
        ),
        ("E_STOP", FaultCategory::Safety, Severity::Critical)
    );
    assert_eq!(
        (by_bit(3).code.as_str(), by_bit(3).severity, by_bit(3).andon),
        ("LOW_AIR_PRESSURE", Severity::Low, false)
    );
    assert_eq!(bag.andon.raise_after_s, [600, 300, 60, 0]);
    assert_eq!(bag.andon.escalate_after_s, [300, 900]);

    let bl = &c.equipment[1];
    assert_eq!(
        (bl.code.as_str(), bl.plc.as_str()),
        ("BP01.PACK.BAG1.BL", "loader")
    );
    let tag = |sig: &ms5_edge::config::Signal| match &sig.source {
        SignalSource::Tag { tag } => tag.clone(),
        SignalSource::Modbus { .. } => panic!("loader signal read by address"),
        SignalSource::Node { .. } => panic!("loader signal read by node"),
    };
    assert_eq!(
        (tag(&bl.signals.running), bl.signals.running.data_type),
        ("BasketLoader.Running".to_string(), DataType::Bool)
    );
    assert_eq!(
        (tag(&bl.signals.good_count), bl.signals.good_count.data_type),
        ("BasketLoader.GoodCount".to_string(), DataType::I32)
    );
    let bl_faults = bl.signals.faults.as_ref().expect("loader faults");
    assert_eq!(
        (tag(bl_faults), bl_faults.data_type, bl_faults.count),
        ("BasketLoader.Faults".to_string(), DataType::I32, 2)
    );
    assert!(bl.faults.len() >= 3);
    assert!(
        bl.faults.iter().any(|f| f.bit >= 32),
        "the example shows a fault in the second DINT"
    );
}

// ---- [commands] (SPEC §7) ----------------------------------------------------------------------

/// `BASE` with a `[commands]` table of `lines` before the first `[[plc]]`.
fn with_commands(lines: &str) -> String {
    edit("[[plc]]", &format!("[commands]\n{lines}\n\n[[plc]]"))
}

#[test]
fn broken_commands_tables_name_the_key_line_and_problem() {
    let cases = [
        case(
            "misspelled command name",
            with_commands("enabled = [\"andon/ack\", \"andon/akc\"]"),
            "commands.enabled[1]",
            "\"andon/akc\"",
            "unknown command \"andon/akc\"",
        ),
        case(
            "unknown command group",
            with_commands("enabled = [\"jobs/*\"]"),
            "commands.enabled[0]",
            "\"jobs/*\"",
            "unknown command group \"jobs/*\"",
        ),
        case(
            "enabled as a string",
            with_commands("enabled = \"andon/ack\""),
            "commands.enabled",
            "enabled",
            "expected an array, found a string",
        ),
        case(
            "max_age_s above a day",
            with_commands("max_age_s = 90000"),
            "commands.max_age_s",
            "max_age_s",
            "must be between 0 and 86400, found 90000",
        ),
        case(
            "max_planned_stop_min zero",
            with_commands("max_planned_stop_min = 0"),
            "commands.max_planned_stop_min",
            "max_planned_stop_min",
            "must be between 1 and 1440, found 0",
        ),
        case(
            "require_issued_at as a string",
            with_commands("require_issued_at = \"true\""),
            "commands.require_issued_at",
            "require_issued_at",
            "expected a boolean, found a string",
        ),
        case(
            "misspelled commands key",
            with_commands("max_age = 60"),
            "commands.max_age",
            "max_age =",
            "unknown key \"max_age\"",
        ),
    ];
    for c in &cases {
        let errors = errors_of(&c.text);
        let want_line = line_of(&c.text, c.line_of);
        assert!(
            errors
                .iter()
                .any(|e| e.key == c.key && e.line == want_line && e.message.contains(c.message)),
            "{}: wanted {} on line {want_line} with {:?}; got {errors:#?}",
            c.name,
            c.key,
            c.message
        );
    }
}

#[test]
fn a_misspelled_command_gets_a_did_you_mean_hint() {
    let errors = errors_of(&with_commands(
        "enabled = [\"andon/akc\", \"planned_stop/*\"]",
    ));
    let hints: Vec<Option<&str>> = errors.iter().map(|e| e.hint.as_deref()).collect();
    assert_eq!(
        hints,
        [
            Some("did you mean \"andon/ack\"?"),
            Some("did you mean \"planned-stop/*\"?")
        ],
        "{errors:#?}"
    );
}

#[test]
fn the_commands_table_defaults_to_every_command_unsigned_with_a_minute_window() {
    let c = load_str(BASE, "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .commands;
    assert_eq!(c.enabled.len(), ms5_edge::config::COMMAND_NAMES.len());
    assert!(ms5_edge::config::COMMAND_NAMES
        .iter()
        .all(|n| c.is_enabled(n)));
    assert_eq!((c.max_age_s, c.max_planned_stop_min), (60, 120));
    assert!(!c.require_issued_at && !c.issued_at_required());
    assert_eq!(c.key_file, None);
}

#[test]
fn a_commands_table_compiles_with_groups_and_a_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("command.key"), [9u8; 32]).expect("key");
    let text = edit(
        "[[plc]]",
        "[mqtt]\nurl = \"mqtts://broker\"\n\n[commands]\nenabled = [\"andon/ack\", \"job/*\"]\nmax_age_s = 0\nkey_file = \"command.key\"\nmax_planned_stop_min = 30\n\n[[plc]]",
    );
    let path = dir.path().join("ms5-edge.toml");
    std::fs::write(&path, &text).expect("write config");
    let loaded = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // No age limit with a key means no replay window either: worth saying.
    assert_eq!(loaded.notices.len(), 1, "{:?}", loaded.notices);
    assert_eq!(loaded.notices[0].key, "commands.max_age_s");
    assert!(
        loaded.notices[0].message.contains("replayed"),
        "{}",
        loaded.notices[0]
    );
    let c = loaded.config.commands;
    assert!(c.is_enabled("andon/ack") && c.is_enabled("job/assign") && c.is_enabled("job/cancel"));
    assert!(!c.is_enabled("andon/resolve") && !c.is_enabled("context"));
    assert_eq!((c.max_age_s, c.max_planned_stop_min), (0, 30));
    assert!(c.issued_at_required(), "a key implies issued_at");
    let dir_abs = std::path::absolute(dir.path()).expect("absolute");
    assert_eq!(c.key_file, Some(dir_abs.join("command.key")));
}

#[test]
fn a_missing_command_key_is_a_warning_and_a_short_one_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = with_commands("key_file = \"command.key\"");
    let path = dir.path().join("ms5-edge.toml");
    std::fs::write(&path, &text).expect("write config");

    let loaded = load_file(&path).unwrap_or_else(|e| panic!("a missing key is not an error:\n{e}"));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].key, "commands.key_file");
    assert_eq!(loaded.warnings[0].line, line_of(&text, "key_file"));

    std::fs::write(dir.path().join("command.key"), [1u8; 31]).expect("short key");
    let errors = load_file(&path).expect_err("a 31-byte key").0;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "commands.key_file");
    assert!(errors[0].message.contains("31 bytes"), "{}", errors[0]);
    assert!(errors[0].message.contains("at least 32"), "{}", errors[0]);
}

#[test]
fn a_command_key_over_plain_mqtt_is_a_notice_that_it_is_sent_unencrypted() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("command.key"), [9u8; 32]).expect("key");
    let text = edit(
        "[[plc]]",
        "[mqtt]\nurl = \"mqtt://broker\"\n\n[commands]\nkey_file = \"command.key\"\n\n[[plc]]",
    );
    let path = dir.path().join("ms5-edge.toml");
    std::fs::write(&path, &text).expect("write config");
    let loaded = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        loaded.warnings.is_empty(),
        "not a reason to refuse `run`: {:?}",
        loaded.warnings
    );
    assert_eq!(loaded.notices.len(), 1, "{:?}", loaded.notices);
    let n = &loaded.notices[0];
    assert_eq!(n.key, "commands.key_file");
    assert_eq!(n.line, line_of(&text, "key_file"));
    assert!(n.message.contains("sent unencrypted"), "{n}");
}

// ---- [metrics] (SPEC §10)

#[test]
fn a_non_loopback_metrics_listen_without_allow_remote_is_a_check_config_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ms5-edge.toml");
    let text = edit("[[plc]]", "[metrics]\nlisten = \"0.0.0.0:9105\"\n\n[[plc]]");
    std::fs::write(&path, &text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
        .arg("check-config")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a config error must fail check-config:\n{stderr}"
    );
    let line = line_of(&text, "listen = ");
    assert!(
        stderr.contains(&format!("ms5-edge.toml:{line}:10")),
        "file:line:col of the value expected:\n{stderr}"
    );
    assert!(stderr.contains("metrics.listen"), "{stderr}");
    assert!(
        stderr.contains("allow_remote = true"),
        "the hint names the fix:\n{stderr}"
    );

    let allowed = edit(
        "[[plc]]",
        "[metrics]\nlisten = \"0.0.0.0:9105\"\nallow_remote = true\n\n[[plc]]",
    );
    let m = load_str(&allowed, "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .metrics
        .expect("a metrics server");
    assert_eq!(m.listen.to_string(), "0.0.0.0:9105");
}

#[test]
fn broken_metrics_tables_report_every_problem_at_once() {
    let text = edit(
        "[[plc]]",
        "[metrics]\nlisten = \"nowhere\"\nready_max_backlog_s = 0\nallow_remot = true\n\n[[plc]]",
    );
    let errors = errors_of(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"metrics.listen"), "{errors:?}");
    assert!(keys.contains(&"metrics.ready_max_backlog_s"), "{errors:?}");
    let unknown = errors
        .iter()
        .find(|e| e.key == "metrics.allow_remot")
        .unwrap_or_else(|| panic!("the unknown key is reported: {errors:?}"));
    assert!(
        unknown
            .hint
            .as_deref()
            .unwrap_or("")
            .contains("allow_remote"),
        "did-you-mean: {unknown:?}"
    );
}

#[test]
fn without_a_metrics_table_there_is_no_metrics_server_and_the_example_has_one_on_loopback() {
    assert!(load_str(BASE, "test.toml")
        .expect("base")
        .config
        .metrics
        .is_none());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/ms5-edge.toml");
    let m = load_file(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .metrics
        .expect("the example configures [metrics]");
    assert_eq!(m.listen.to_string(), "127.0.0.1:9105");
    assert_eq!(m.ready_max_backlog_s, 300);
}
