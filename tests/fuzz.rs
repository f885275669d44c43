//! Fuzzing by property: the parsers that read what other people write (the config file, MQTT
//! command bodies, Modbus registers, CIP replies) fed arbitrary input, bounded in time.
//!
//! ## Why proptest and not cargo-fuzz
//!
//! cargo-fuzz needs the nightly toolchain (`-Z sanitizer`), which the build machines and CI do
//! not have. proptest (already a dev-dependency) runs on stable inside `cargo test`, so these
//! properties run in every `scripts/test` and CI run, shrink a failure to a minimal input, and
//! record its seed under `proptest-regressions/` so it is re-run first from then on. What is
//! lost against a coverage-guided fuzzer is the guidance: inputs are random (with structure
//! where we give it), not steered towards new branches.
//!
//! ## Budget
//!
//! Every property runs [`cases()`] cases: `MS5_EDGE_FUZZ_CASES` if set, else [`DEFAULT_CASES`],
//! chosen so the whole binary stays well under a minute on the 2-core CI machine in the debug
//! build (see BENCHMARKS.md "Fuzzing" for the measured times). A longer local run:
//! `MS5_EDGE_FUZZ_CASES=100000 cargo test --test fuzz` — in the debug build on purpose: it keeps
//! overflow checks, which is how the one bug found so far showed (release wraps silently).
//!
//! ## What must hold for any input
//!
//! - Nothing panics (a panic fails the property with the input that caused it).
//! - Config: an error points into the text (line ≥ 1, column ≥ 1, both within the text), says
//!   something, and errors come sorted; a valid text compiles to the same config every time.
//! - Commands: a parse either succeeds, consistent with the body and topic it came from, or is a
//!   rejection with a non-empty error.
//! - Modbus: a slice too short for type × count is `Short` with the right numbers, never a
//!   panic; a long enough one decodes to `count` elements; encode → decode gives the value back
//!   in every byte order; NaN and infinities are `NotFinite`, never a published number.
//! - EIP: arbitrary bytes for every CIP type code decode or fail, short buffers fail, encode →
//!   decode gives the value back; `Access::of` never panics for any tag text, type and count.
//!
//! The command *guard* (`src/uplink/guard.rs`) is not fuzzed here: it is being rewritten.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use serde_json::{json, Value as Json};

use ms5_edge::acquire::decode::{
    canonical_bits, decode_bits, decode_element, decode_register_bits, decode_registers, encode,
    engineering, widen_f32, wire_registers, DecodeError, Raw,
};
use ms5_edge::acquire::eip::Access;
use ms5_edge::acquire::plan::{isolate, plan_spans, Span, Table};
use ms5_edge::acquire::Value;
use ms5_edge::config::{load_file, load_str, ByteOrder, ConfigErrors, DataType};
use ms5_edge::engine::command::{parse, CommandKind, MAX_BODY};

/// Cases per property when `MS5_EDGE_FUZZ_CASES` is not set (see the module doc).
const DEFAULT_CASES: u32 = 10_000;

/// Cases per property: `MS5_EDGE_FUZZ_CASES`, else [`DEFAULT_CASES`]. Zero or garbage is refused
/// rather than silently running nothing.
fn cases() -> u32 {
    match std::env::var("MS5_EDGE_FUZZ_CASES") {
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => panic!("MS5_EDGE_FUZZ_CASES must be a positive integer, got {v:?}"),
        },
        Err(_) => DEFAULT_CASES,
    }
}

/// The value, or a property failure saying `what` (no unwrap: the shrinker needs the failure).
fn must<T>(value: Option<T>, what: &str) -> Result<T, TestCaseError> {
    value.ok_or_else(|| TestCaseError::fail(what.to_string()))
}

fn config() -> ProptestConfig {
    with_cases(cases())
}

/// A fraction of [`cases()`] for the properties whose single case costs a full compile of the
/// 350-line example (or a file write): at least one case, never zero.
fn config_scaled(divisor: u32) -> ProptestConfig {
    with_cases((cases() / divisor).max(1))
}

/// Failing seeds go to `proptest-regressions/fuzz.txt` (commit it) and are replayed first.
fn with_cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz.txt",
        ))),
        ..ProptestConfig::with_cases(n)
    }
}

const ALL_TYPES: [DataType; 10] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
    DataType::I8,
];

const ALL_ORDERS: [ByteOrder; 4] = [
    ByteOrder::Abcd,
    ByteOrder::Cdab,
    ByteOrder::Badc,
    ByteOrder::Dcba,
];

fn data_type() -> impl Strategy<Value = DataType> {
    proptest::sample::select(&ALL_TYPES[..])
}

fn byte_order() -> impl Strategy<Value = ByteOrder> {
    proptest::sample::select(&ALL_ORDERS[..])
}

// =============================================================================================
// Config loader
// =============================================================================================

/// The shipped example: the base every structured mutation starts from.
const EXAMPLE: &str = include_str!("../etc/ms5-edge.toml");
/// The demo's config (placeholders filled in as `ms5-edge demo` does), a second valid base
/// with an `[mqtt]` table of other shapes.
static DEMO: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    ms5_edge::demo::config_text(
        1502,
        1503,
        "/tmp/ms5-edge-fuzz",
        Some("mqtt://127.0.0.1:1883"),
    )
});

/// Checks what every config error must satisfy, whatever the input.
fn check_errors(text: &str, errors: &ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.0.is_empty(), "an Err carries at least one error");
    let lines: Vec<&str> = text.split('\n').collect();
    for e in &errors.0 {
        prop_assert!(!e.message.trim().is_empty(), "empty message: {e:?}");
        prop_assert!(e.line >= 1, "line 0 for a text (not a file) error: {e:?}");
        prop_assert!(e.column >= 1, "column 0: {e:?}");
        prop_assert!(
            e.line <= lines.len(),
            "line {} past the end ({} lines): {e:?}",
            e.line,
            lines.len()
        );
        let width = lines[e.line - 1].chars().count();
        prop_assert!(
            e.column <= width + 1,
            "column {} past the end of line {} ({width} characters): {e:?}",
            e.column,
            e.line
        );
        prop_assert_eq!(&e.file, "fuzz.toml");
    }
    let positions: Vec<(usize, usize)> = errors.0.iter().map(|e| (e.line, e.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    prop_assert_eq!(positions, sorted, "errors are sorted by position");
    Ok(())
}

/// Loads `text`; checks errors, or that a second load of a valid text gives the same config.
fn check_load(text: &str) -> Result<(), TestCaseError> {
    match load_str(text, "fuzz.toml") {
        Err(errors) => check_errors(text, &errors),
        Ok(first) => {
            let again = must(
                load_str(text, "fuzz.toml").ok(),
                "a valid text fails on the second load",
            )?;
            prop_assert_eq!(&first.config, &again.config, "reloading changed the config");
            prop_assert_eq!(&first.warnings, &again.warnings);
            Ok(())
        }
    }
}

/// Values of every TOML type (and some that are not TOML), to put where a value was.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775809".to_string()),
        Just("1e309".to_string()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("true".to_string()),
        Just("0x7FFF".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("06:00:00".to_string()),
        Just("[]".to_string()),
        Just("[1, \"a\", [true]]".to_string()),
        Just("{}".to_string()),
        Just("{ address = \"hr:1\", type = \"f64\", count = 65535 }".to_string()),
        Just("\"hr:65535.15\"".to_string()),
        Just("\"co:99999\"".to_string()),
        Just("\"Program:Main.W[4294967295]\"".to_string()),
        Just("'''\nmulti\nline'''".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<String>().prop_map(|s| format!("{s:?}")),
        "[a-z_]{0,12}".prop_map(|s| format!("\"{s}\"")),
        "\\PC{0,16}",
    ]
}

/// Keys the schema knows (and near misses), so inserted keys hit real paths often.
fn toml_key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "id",
                "timezone",
                "url",
                "name",
                "protocol",
                "host",
                "port",
                "unit_id",
                "slot",
                "poll_interval_ms",
                "timeout_ms",
                "byte_order",
                "start",
                "end",
                "duration_min",
                "shifts",
                "code",
                "plc",
                "line_id",
                "address",
                "type",
                "count",
                "scale",
                "offset",
                "bit",
                "severity",
                "escalate_after_s",
                "\"motor.temp\"",
                "a.b.c",
                "[gateway]",
                "[[plc]]",
                "[equipment.signals.extra]",
                "[[equipment.fault]]",
            ][..]
        )
        .prop_map(str::to_string),
        "[A-Za-z_][A-Za-z0-9_-]{0,20}",
        "\\PC{1,8}",
    ]
}

/// One edit of a config text.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    /// Replace the value of a `key = value` line (or append one to a line without `=`).
    SwapValue(Index, String),
    InsertKey(Index, String, String),
    /// Cut the text at a byte position (moved back to a character boundary).
    Truncate(Index),
    /// Insert arbitrary text (any unicode, control characters included) at a byte position.
    InsertText(Index, String),
    /// Replace one character.
    ReplaceChar(Index, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        3 => (any::<Index>(), toml_value()).prop_map(|(i, v)| Mutation::SwapValue(i, v)),
        2 => (any::<Index>(), toml_key(), toml_value())
            .prop_map(|(i, k, v)| Mutation::InsertKey(i, k, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<String>()).prop_map(|(i, s)| Mutation::InsertText(i, s)),
        1 => (any::<Index>(), any::<char>()).prop_map(|(i, c)| Mutation::ReplaceChar(i, c)),
    ]
}

/// The largest character boundary at or below `i`.
fn floor_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let join = |lines: Vec<String>| lines.join("\n");
    match m {
        Mutation::DeleteLine(i) => {
            lines.remove(i.index(lines.len()));
            join(lines)
        }
        Mutation::DuplicateLine(i) => {
            let n = i.index(lines.len());
            let line = lines[n].clone();
            lines.insert(n, line);
            join(lines)
        }
        Mutation::SwapValue(i, v) => {
            let n = i.index(lines.len());
            let line = &lines[n];
            lines[n] = match line.split_once('=') {
                Some((key, _)) => format!("{key}= {v}"),
                None => format!("{line} = {v}"),
            };
            join(lines)
        }
        Mutation::InsertKey(i, k, v) => {
            let n = i.index(lines.len() + 1);
            let line = if k.starts_with('[') {
                k.clone()
            } else {
                format!("{k} = {v}")
            };
            lines.insert(n, line);
            join(lines)
        }
        Mutation::Truncate(i) => {
            let at = floor_boundary(text, i.index(text.len() + 1));
            text[..at].to_string()
        }
        Mutation::InsertText(i, s) => {
            let at = floor_boundary(text, i.index(text.len() + 1));
            format!("{}{s}{}", &text[..at], &text[at..])
        }
        Mutation::ReplaceChar(i, c) => {
            let chars: Vec<char> = text.chars().collect();
            if chars.is_empty() {
                return c.to_string();
            }
            let n = i.index(chars.len());
            chars
                .iter()
                .enumerate()
                .map(|(k, &old)| if k == n { *c } else { old })
                .collect()
        }
    }
}

#[test]
fn both_config_bases_compile_so_mutations_start_from_valid_files() {
    // A mutation test whose base is already invalid would only ever exercise one error.
    for (name, text) in [
        ("etc/ms5-edge.toml", EXAMPLE),
        ("src/demo.toml", DEMO.as_str()),
    ] {
        match load_str(text, "fuzz.toml") {
            Ok(loaded) => assert!(!loaded.config.equipment.is_empty(), "{name}: no equipment"),
            Err(e) => panic!("{name} does not compile:\n{e}"),
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_from_arbitrary_text_never_panics_and_errors_point_into_the_text(
        text in prop_oneof![any::<String>(), "\\PC{0,200}", "[\\[\\]={}\"'.,a-z0-9 \n#]{0,200}"],
    ) {
        check_load(&text)?;
    }
}

proptest! {
    #![proptest_config(config_scaled(4))]

    #[test]
    fn config_after_random_edits_of_the_example_never_panics_and_errors_point_into_the_text(
        demo in any::<bool>(),
        edits in proptest::collection::vec(mutation(), 1..5),
    ) {
        let mut text = if demo { DEMO.as_str() } else { EXAMPLE }.to_string();
        for m in &edits {
            text = apply(&text, m);
        }
        check_load(&text)?;
    }
}

proptest! {
    #![proptest_config(config_scaled(10))]

    /// `load_file` adds what `load_str` cannot see: bytes that are not UTF-8.
    #[test]
    fn config_file_of_arbitrary_bytes_never_panics_and_errors_say_where(
        prefix_len in any::<Index>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("fuzz.toml");
        let cut = floor_boundary(EXAMPLE, prefix_len.index(EXAMPLE.len() + 1));
        let mut content = EXAMPLE.as_bytes()[..cut].to_vec();
        content.extend_from_slice(&bytes);
        std::fs::write(&path, &content).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(errors) = load_file(&path) {
            prop_assert!(!errors.0.is_empty());
            let valid_prefix = match std::str::from_utf8(&content) {
                Ok(t) => t.len(),
                Err(e) => e.valid_up_to(),
            };
            let text = String::from_utf8_lossy(&content[..valid_prefix]).into_owned();
            let lines = text.split('\n').count();
            for e in &errors.0 {
                prop_assert!(!e.message.trim().is_empty(), "{e:?}");
                prop_assert!(e.line >= 1 && e.column >= 1, "{e:?}");
                prop_assert!(e.line <= lines, "line {} of {lines}: {e:?}", e.line);
            }
        }
    }
}

// =============================================================================================
// Command parser
// =============================================================================================

const COMMANDS: [&str; 13] = [
    "context",
    "job/assign",
    "job/start",
    "job/complete",
    "job/cancel",
    "changeover/start",
    "changeover/complete",
    "planned-stop/start",
    "planned-stop/end",
    "andon/ack",
    "andon/resolve",
    "downtime/reason",
    "self-destruct",
];

const FIELDS: [&str; 16] = [
    "request_id",
    "by",
    "note",
    "job_id",
    "schedule_id",
    "product_type_id",
    "operator",
    "target_speed",
    "target_quantity",
    "failed",
    "reason",
    "andon_id",
    "downtime_id",
    "reason_code",
    "jobid",
    "",
];

/// Arbitrary JSON values, nested a few levels, with the numbers and strings that trip parsers.
fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(Json::from), // NaN and infinities become null
        Just(json!(1e308)),
        Just(json!(-0.0)),
        Just(json!(u64::MAX)),
        any::<String>().prop_map(Json::String),
        "[a-zA-Z0-9._-]{0,10}".prop_map(Json::String),
        Just(Json::String("x".repeat(257))),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::btree_map("[a-z_]{0,10}", inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Topic paths below `P/cmd/`: real commands, MQTT wildcards, unicode, very long.
fn topic_path() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            "[A-Za-z0-9._-]{0,12}",
            proptest::sample::select(&COMMANDS[..])
        )
            .prop_map(|(e, c)| format!("{e}/{c}")),
        "[/+#a-z]{0,20}",
        any::<String>(),
        ("\\PC{0,4}", 0usize..70_000).prop_map(|(s, n)| s.repeat(n / s.len().max(1) + 1)),
        Just(String::new()),
        Just("/".to_string()),
        Just("BAG1/".to_string()),
        Just("/andon/ack".to_string()),
        Just("+/#".to_string()),
    ]
}

/// Bodies: valid commands with fields of any type, arbitrary JSON, bytes, deep nesting, huge.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // A command-shaped object: the common fields usually right, the rest anything.
        4 => (
            proptest::option::weighted(0.9, "[a-z0-9-]{1,8}"),
            proptest::option::weighted(0.9, "[a-z]{1,8}"),
            proptest::collection::vec(
                (proptest::sample::select(&FIELDS[..]), json_value()),
                0..5
            ),
        )
            .prop_map(|(rid, by, fields)| {
                let mut m = serde_json::Map::new();
                if let Some(r) = rid {
                    m.insert("request_id".into(), Json::String(r));
                }
                if let Some(b) = by {
                    m.insert("by".into(), Json::String(b));
                }
                for (k, v) in fields {
                    m.insert(k.to_string(), v);
                }
                serde_json::to_vec(&Json::Object(m)).unwrap_or_default()
            }),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        2 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => "[\\[\\]{}\":,0-9a-z\\\\ .eE+-]{0,64}".prop_map(String::into_bytes),
        // Deep nesting: must be refused by the JSON parser's depth limit, not overflow a stack.
        1 => (0usize..20_000, any::<bool>()).prop_map(|(depth, arrays)| {
            if arrays {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
            } else {
                let mut s = "{\"a\":".repeat(depth);
                s.push('1');
                s.push_str(&"}".repeat(depth));
                s.into_bytes()
            }
        }),
        // Huge numbers where numbers are expected.
        1 => "-?[0-9]{1,400}(\\.[0-9]{0,40})?([eE][+-]?[0-9]{1,5})?".prop_map(|n| {
            format!(
                r#"{{"request_id":"r","by":"x","target_quantity":{n},"target_speed":{n}}}"#
            )
            .into_bytes()
        }),
        // Around the 64 KiB limit.
        1 => (MAX_BODY - 2..MAX_BODY + 3).prop_map(|n| {
            let pad = n.saturating_sub(40);
            format!(r#"{{"request_id":"r","by":"x","note":"{}"}}"#, "n".repeat(pad)).into_bytes()
        }),
    ]
}

/// The type a command field must have.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    U64,
    F64,
    Bool,
}

/// Each command's own fields: (name, type, required).
fn schema(command: &str) -> &'static [(&'static str, Kind, bool)] {
    use Kind::*;
    match command {
        "context" => &[
            ("job_id", Str, false),
            ("schedule_id", Str, false),
            ("product_type_id", Str, false),
            ("operator", Str, false),
            ("target_speed", F64, false),
            ("target_quantity", U64, false),
        ],
        "job/assign" => &[
            ("job_id", Str, true),
            ("target_quantity", U64, false),
            ("product_type_id", Str, false),
            ("schedule_id", Str, false),
            ("target_speed", F64, false),
        ],
        "job/start" | "job/complete" | "job/cancel" => &[("job_id", Str, false)],
        "changeover/start" => &[("product_type_id", Str, false), ("job_id", Str, false)],
        "changeover/complete" => &[("failed", Bool, false)],
        "planned-stop/start" => &[("reason", Str, false)],
        "andon/ack" | "andon/resolve" => &[("andon_id", Str, true)],
        "downtime/reason" => &[("downtime_id", Str, true), ("reason_code", Str, true)],
        _ => &[],
    }
}

fn field_value(kind: Kind) -> BoxedStrategy<Json> {
    match kind {
        Kind::Str => "[A-Za-z0-9._-]{1,16}".prop_map(Json::String).boxed(),
        Kind::U64 => any::<u64>().prop_map(Json::from).boxed(),
        Kind::F64 => (0.0f64..1e9).prop_map(Json::from).boxed(),
        Kind::Bool => any::<bool>().prop_map(Json::Bool).boxed(),
    }
}

/// A command valid for its schema (each optional field present or not), then with probability
/// about 1/3 one field replaced by an arbitrary JSON value: the near misses a parser must refuse.
fn near_valid_command() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        "[A-Za-z0-9._-]{1,12}",
        proptest::sample::select(&COMMANDS[..12]),
    )
        .prop_flat_map(|(equipment, name)| {
            let fields: Vec<_> = schema(name)
                .iter()
                .map(|&(_, kind, required)| {
                    let value = field_value(kind);
                    if required {
                        value.prop_map(Some).boxed()
                    } else {
                        proptest::option::of(value).boxed()
                    }
                })
                .collect();
            (
                Just(format!("{equipment}/{name}")),
                Just(name),
                fields,
                proptest::option::weighted(0.35, (any::<Index>(), json_value())),
                proptest::option::of("\\PC{1,20}"),
            )
        })
        .prop_map(|(path, name, values, corrupt, note)| {
            let mut m = serde_json::Map::new();
            m.insert("request_id".into(), json!("r-1"));
            m.insert("by".into(), json!("operator-7"));
            if let Some(n) = note {
                m.insert("note".into(), Json::String(n));
            }
            let schema = schema(name);
            for (&(field, _, _), v) in schema.iter().zip(values) {
                if let Some(v) = v {
                    m.insert(field.to_string(), v);
                }
            }
            if name == "context" && m.len() <= 3 {
                m.insert("operator".into(), json!("jsmith"));
            }
            if let Some((i, v)) = corrupt {
                let keys: Vec<String> = m.keys().cloned().collect();
                let k = keys[i.index(keys.len())].clone();
                m.insert(k, v);
            }
            (
                path,
                serde_json::to_vec(&Json::Object(m)).unwrap_or_default(),
            )
        })
}

/// Topic and body together: arbitrary pairs, and near-valid commands.
fn command_case() -> impl Strategy<Value = (String, Vec<u8>)> {
    prop_oneof![(topic_path(), body()), near_valid_command(),]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_command_of_any_topic_and_body_parses_consistently_or_is_rejected_with_a_reason(
        (path, payload) in command_case(),
    ) {
        let parsed: Option<Json> = serde_json::from_slice(&payload).ok();
        match parse(&path, &payload) {
            Ok(cmd) => {
                prop_assert!(payload.len() <= MAX_BODY);
                let body = must(
                    parsed.as_ref().and_then(Json::as_object),
                    "accepted a body that is not a JSON object",
                )?;
                prop_assert!(!cmd.request_id.is_empty());
                prop_assert_eq!(Some(cmd.request_id.as_str()), body["request_id"].as_str());
                prop_assert_eq!(Some(cmd.by.as_str()), body["by"].as_str());
                let (equipment, name) = path.split_once('/').unwrap_or_default();
                prop_assert_eq!(&cmd.equipment, equipment);
                prop_assert!(COMMANDS[..12].contains(&name), "accepted command {name:?}");
                // Every string the command carries came from the body, within the SPEC's bound.
                if let CommandKind::AndonAck { andon_id } | CommandKind::AndonResolve { andon_id } = &cmd.kind {
                    prop_assert_eq!(Some(andon_id.as_str()), body["andon_id"].as_str());
                    prop_assert!(!andon_id.is_empty() && andon_id.len() <= 256);
                }
                if let CommandKind::JobAssign { target_speed: Some(s), .. } = &cmd.kind {
                    prop_assert!(s.is_finite() && *s >= 0.0);
                }
            }
            Err(rejected) => {
                prop_assert!(!rejected.error.trim().is_empty(), "a rejection without a reason");
                if let Some(rid) = &rejected.request_id {
                    let body_rid = parsed.as_ref().and_then(|b| b.get("request_id")).and_then(Json::as_str);
                    prop_assert_eq!(Some(rid.as_str()), body_rid);
                }
            }
        }
    }

    #[test]
    fn a_valid_command_with_one_field_of_the_wrong_type_is_rejected_naming_the_field(
        name in proptest::sample::select(&["job/assign", "andon/ack", "andon/resolve", "downtime/reason"][..]),
        wrong in prop_oneof![
            any::<i64>().prop_map(Json::from),
            any::<bool>().prop_map(Json::Bool),
            Just(json!([])),
            Just(json!({})),
            Just(json!("")),
            Just(Json::String("x".repeat(257))),
        ],
    ) {
        let field = match name {
            "job/assign" => "job_id",
            "andon/ack" | "andon/resolve" => "andon_id",
            _ => "downtime_id",
        };
        let mut body = json!({"request_id": "r", "by": "x", "job_id": "J",
            "andon_id": "a", "downtime_id": "d", "reason_code": "R"});
        let keep: &[&str] = match name {
            "job/assign" => &["job_id"],
            "downtime/reason" => &["downtime_id", "reason_code"],
            _ => &["andon_id"],
        };
        if let Some(m) = body.as_object_mut() {
            m.retain(|k, _| k == "request_id" || k == "by" || keep.contains(&k.as_str()));
            m.insert(field.to_string(), wrong);
        }
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let r = parse(&format!("BAG1/{name}"), &payload);
        let r = must(r.err(), &format!("accepted {body}"))?;
        prop_assert!(r.error.contains(field), "{:?} does not name {field}", r.error);
        prop_assert_eq!(r.request_id.as_deref(), Some("r"));
    }
}

// =============================================================================================
// Modbus decoders
// =============================================================================================

/// Scales and offsets an engineer might write, and ones nobody should (NaN, ∞, 0, huge).
fn scale() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(1.0),
        Just(0.1),
        Just(0.01),
        Just(0.0),
        Just(-1.0),
        Just(1e-300),
        Just(f64::MAX),
        Just(f64::NAN),
        Just(f64::INFINITY),
        any::<f64>(),
    ]
}

fn offset() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => Just(0.0),
        1 => Just(-40.0),
        1 => Just(f64::NAN),
        1 => Just(f64::NEG_INFINITY),
        1 => any::<f64>(),
    ]
}

/// Elements of a decoded value, scalar or array.
fn elements(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn registers_of_any_length_decode_for_every_type_order_count_and_scale_or_are_short(
        regs in proptest::collection::vec(any::<u16>(), 0..520),
        t in data_type(),
        order in byte_order(),
        count in prop_oneof![0u16..=3, 0u16..=130, any::<u16>()],
        scale in scale(),
        offset in offset(),
    ) {
        let needed = usize::from(t.registers()) * usize::from(count.max(1));
        match decode_registers(&regs, t, count, order, scale, offset) {
            Err(DecodeError::Short { needed: n, got, unit }) => {
                prop_assert!(regs.len() < needed, "Short although {} ≥ {needed}", regs.len());
                prop_assert_eq!((n, got, unit), (needed, regs.len(), "registers"));
            }
            Err(DecodeError::NotFinite) => {
                prop_assert!(regs.len() >= needed);
            }
            Ok(v) => {
                prop_assert!(regs.len() >= needed, "decoded from {} of {needed} registers", regs.len());
                let items = elements(&v);
                prop_assert_eq!(items.len(), usize::from(count.max(1)));
                prop_assert_eq!(matches!(v, Value::Array(_)), count > 1);
                for item in items {
                    match item {
                        Value::Float(f) => prop_assert!(f.is_finite(), "published {f}"),
                        Value::Bool(_) => prop_assert_eq!(t, DataType::Bool),
                        Value::Int(_) | Value::UInt(_) => {
                            prop_assert!(scale == 1.0 && offset == 0.0, "integer with scale {scale} offset {offset}");
                        }
                        Value::Array(_) => prop_assert!(false, "nested array"),
                    }
                }
            }
        }
    }

    #[test]
    fn one_element_decodes_from_any_slice_or_is_short(
        regs in proptest::collection::vec(any::<u16>(), 0..6),
        t in data_type(),
        order in byte_order(),
    ) {
        let r = decode_element(&regs, t, order);
        prop_assert_eq!(r.is_err(), regs.len() < usize::from(t.registers()), "{:?}", r);
    }

    #[test]
    fn integers_round_trip_through_every_byte_order(
        t in proptest::sample::select(&[DataType::U16, DataType::I16, DataType::U32, DataType::I32,
            DataType::U64, DataType::I64, DataType::I8, DataType::Bool][..]),
        order in byte_order(),
        raw in prop_oneof![any::<i64>().prop_map(Raw::Int), any::<u64>().prop_map(Raw::UInt),
            any::<bool>().prop_map(Raw::Bool), (-200i64..200).prop_map(Raw::Int)],
    ) {
        match encode(raw, t, order) {
            Some(regs) => {
                prop_assert_eq!(regs.len(), usize::from(t.registers()));
                let back = decode_element(&regs, t, order);
                // The decoder returns the type's own variant: compare as numbers.
                let as_i128 = |r: Raw| match r {
                    Raw::Int(i) => Some(i128::from(i)),
                    Raw::UInt(u) => Some(i128::from(u)),
                    Raw::Bool(b) => Some(i128::from(b)),
                    Raw::Float(_) => None,
                };
                let back = must(back.ok(), &format!("{t:?} {order:?} {regs:04X?} does not decode"))?;
                prop_assert_eq!(as_i128(back), as_i128(raw), "{:?} {:?} {:04X?}", t, order, regs);
            }
            None => {
                // Refused: the value must really be outside the type's range.
                let v = match raw { Raw::Int(i) => i128::from(i), Raw::UInt(u) => i128::from(u),
                    Raw::Bool(b) => i128::from(b), Raw::Float(_) => 0 };
                let (lo, hi): (i128, i128) = match t {
                    DataType::Bool => (0, 1),
                    DataType::U16 => (0, u16::MAX.into()),
                    DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
                    DataType::I8 => (i8::MIN.into(), i8::MAX.into()),
                    DataType::U32 => (0, u32::MAX.into()),
                    DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
                    DataType::U64 => (0, u64::MAX.into()),
                    _ => (i64::MIN.into(), i64::MAX.into()),
                };
                prop_assert!(!(lo..=hi).contains(&v), "refused {v} for {t:?}");
            }
        }
    }

    #[test]
    fn floats_round_trip_through_every_byte_order_and_nan_is_never_a_value(
        order in byte_order(),
        bits32 in any::<u32>(),
        bits64 in any::<u64>(),
        scale in scale(),
    ) {
        // f32: the decoder widens through the shortest decimal, which must round back exactly.
        let f = f32::from_bits(bits32);
        let regs = encode(Raw::Float(f64::from(f)), DataType::F32, order);
        prop_assert!(regs.is_some());
        let regs = regs.unwrap_or_default();
        match decode_element(&regs, DataType::F32, order) {
            Ok(Raw::Float(w)) if f.is_nan() => prop_assert!(w.is_nan()),
            Ok(Raw::Float(w)) => prop_assert_eq!((w as f32).to_bits(), bits32, "{} widened to {}", f, w),
            other => prop_assert!(false, "{other:?}"),
        }
        prop_assert_eq!(widen_f32(f).is_finite(), f.is_finite());
        // f64: bit-exact.
        let d = f64::from_bits(bits64);
        let regs = encode(Raw::Float(d), DataType::F64, order).unwrap_or_default();
        match decode_element(&regs, DataType::F64, order) {
            Ok(Raw::Float(back)) => prop_assert_eq!(back.to_bits(), bits64),
            other => prop_assert!(false, "{other:?}"),
        }
        // A non-finite reading is never published, whatever the scale.
        for (t, finite, regs) in [
            (DataType::F32, f.is_finite(), wire_registers(u64::from(bits32), 2, order)),
            (DataType::F64, d.is_finite(), wire_registers(bits64, 4, order)),
        ] {
            let r = decode_registers(&regs, t, 1, order, scale, 0.0);
            if !finite {
                prop_assert_eq!(r, Err(DecodeError::NotFinite));
            } else if let Ok(Value::Float(v)) = r {
                prop_assert!(v.is_finite());
            }
        }
    }

    #[test]
    fn byte_orders_are_involutions_on_every_width(
        bits in any::<u64>(),
        words in 1usize..=4,
        order in byte_order(),
    ) {
        let mask = if words == 4 { u64::MAX } else { (1u64 << (16 * words)) - 1 };
        let regs = wire_registers(bits, words, order);
        prop_assert_eq!(regs.len(), words);
        prop_assert_eq!(canonical_bits(&regs, order), bits & mask);
    }

    #[test]
    fn canonical_bits_takes_any_slice(regs in proptest::collection::vec(any::<u16>(), 0..12), order in byte_order()) {
        let _ = canonical_bits(&regs, order);
    }

    #[test]
    fn register_bits_of_any_slice_first_bit_and_count_decode_or_are_short(
        regs in proptest::collection::vec(any::<u16>(), 0..140),
        first_bit in any::<u8>(),
        count in prop_oneof![0u16..=40, any::<u16>()],
    ) {
        let needed = (usize::from(first_bit) + usize::from(count.max(1))).div_ceil(16);
        match decode_register_bits(&regs, first_bit, count) {
            Err(DecodeError::Short { needed: n, got, .. }) => {
                prop_assert!(regs.len() < needed);
                prop_assert_eq!((n, got), (needed, regs.len()));
            }
            Err(e) => prop_assert!(false, "bits are never {e:?}"),
            Ok(v) => {
                let items = elements(&v);
                prop_assert_eq!(items.len(), usize::from(count.max(1)));
                for (i, item) in items.into_iter().enumerate() {
                    let bit = usize::from(first_bit) + i;
                    let want = regs[bit / 16] >> (bit % 16) & 1 == 1;
                    prop_assert_eq!(item, &Value::Bool(want));
                }
            }
        }
    }

    #[test]
    fn coils_of_any_length_decode_or_are_short(
        bits in proptest::collection::vec(any::<bool>(), 0..2100),
        count in prop_oneof![0u16..=3, 0u16..=2001, any::<u16>()],
    ) {
        match decode_bits(&bits, count) {
            Err(DecodeError::Short { needed, got, unit }) => {
                prop_assert!(bits.len() < usize::from(count.max(1)));
                prop_assert_eq!((needed, got, unit), (usize::from(count.max(1)), bits.len(), "bits"));
            }
            Err(e) => prop_assert!(false, "coils are never {e:?}"),
            Ok(v) => {
                let items = elements(&v);
                prop_assert_eq!(items.len(), usize::from(count.max(1)));
                for (item, b) in items.into_iter().zip(&bits) {
                    prop_assert_eq!(item, &Value::Bool(*b));
                }
            }
        }
    }

    #[test]
    fn engineering_values_are_finite_or_not_finite_errors(
        raw in prop_oneof![any::<i64>().prop_map(Raw::Int), any::<u64>().prop_map(Raw::UInt),
            any::<bool>().prop_map(Raw::Bool), any::<f64>().prop_map(Raw::Float)],
        scale in scale(),
        offset in offset(),
    ) {
        match engineering(raw, scale, offset) {
            Ok(Value::Float(f)) => prop_assert!(f.is_finite()),
            Ok(Value::Array(_)) => prop_assert!(false, "a scalar became an array"),
            Ok(_) | Err(DecodeError::NotFinite) => {}
            Err(e) => prop_assert!(false, "{e:?}"),
        }
    }

    /// The planner decides which slice each decoder gets: whatever the spans, every placed
    /// signal lies inside its request and no request breaks a protocol limit.
    #[test]
    fn read_plans_of_any_spans_keep_every_signal_inside_one_legal_request(
        spans in proptest::collection::vec(proptest::option::weighted(0.9, (
            proptest::sample::select(&[Table::Coils, Table::DiscreteInputs, Table::InputRegisters, Table::HoldingRegisters][..]),
            prop_oneof![any::<u16>(), 65_400u16..=65_535, 0u16..200],
            prop_oneof![0u32..=130, 0u32..=2100, any::<u32>()],
        ).prop_map(|(table, start, len)| Span { table, start, len })), 0..40),
        merge in any::<bool>(),
    ) {
        let (requests, placements) = if merge { plan_spans(&spans, true) } else { isolate(&spans) };
        prop_assert_eq!(placements.len(), spans.len());
        for r in &requests {
            prop_assert!(r.quantity <= r.table.max_quantity(), "{r:?}");
            prop_assert!(u32::from(r.start) + u32::from(r.quantity) <= 65_536, "{r:?}");
        }
        for (span, p) in spans.iter().zip(&placements) {
            match (span, p) {
                (Some(s), Ok(p)) => {
                    let r = must(requests.get(p.request).copied(), &format!("no request {}", p.request))?;
                    prop_assert_eq!(r.table, s.table);
                    prop_assert_eq!(u32::from(p.length), s.len);
                    prop_assert_eq!(u32::from(r.start) + u32::from(p.offset), u32::from(s.start));
                    prop_assert!(u32::from(p.offset) + u32::from(p.length) <= u32::from(r.quantity));
                }
                (Some(s), Err(_)) => prop_assert!(s.len > u32::from(s.table.max_quantity()) || s.end() > 65_536, "{s:?} refused"),
                (None, p) => prop_assert!(p.is_err()),
            }
        }
    }
}

// =============================================================================================
// EtherNet/IP (CIP) decoders
// =============================================================================================

use rust_ethernet_ip::PlcValue;
use rust_ethernet_ip_protocol::cip::CipResponse;
use rust_ethernet_ip_protocol::values::{self as cip, decode_payload};
use rust_ethernet_ip_protocol::Decode;

/// Every CIP type code the decoder knows, with the payload width of the fixed-size ones.
const CIP_TYPES: [(u16, Option<usize>); 16] = [
    (cip::BOOL, Some(1)),
    (cip::SINT, Some(1)),
    (cip::INT, Some(2)),
    (cip::DINT, Some(4)),
    (cip::LINT, Some(8)),
    (cip::USINT, Some(1)),
    (cip::UINT, Some(2)),
    (cip::UDINT, Some(4)),
    (cip::ULINT, Some(8)),
    (cip::REAL, Some(4)),
    (cip::LREAL, Some(8)),
    (cip::BOOL_ARRAY_DWORD, Some(4)),
    (cip::STRING, None),
    (cip::ALT_STRING, None),
    (cip::UDT, None),
    (cip::AB_UDT, None),
];

fn cip_type() -> impl Strategy<Value = (u16, Option<usize>)> {
    prop_oneof![
        6 => proptest::sample::select(&CIP_TYPES[..]),
        1 => any::<u16>().prop_map(|t| (t, CIP_TYPES.iter().find(|c| c.0 == t).and_then(|c| c.1))),
    ]
}

/// An atomic value and its little-endian payload, as a controller sends it.
fn atomic() -> impl Strategy<Value = (PlcValue, Vec<u8>)> {
    prop_oneof![
        any::<bool>().prop_map(|b| (PlcValue::Bool(b), vec![if b { 0xFF } else { 0 }])),
        any::<i8>().prop_map(|v| (PlcValue::Sint(v), v.to_le_bytes().to_vec())),
        any::<i16>().prop_map(|v| (PlcValue::Int(v), v.to_le_bytes().to_vec())),
        any::<i32>().prop_map(|v| (PlcValue::Dint(v), v.to_le_bytes().to_vec())),
        any::<i64>().prop_map(|v| (PlcValue::Lint(v), v.to_le_bytes().to_vec())),
        any::<u8>().prop_map(|v| (PlcValue::Usint(v), v.to_le_bytes().to_vec())),
        any::<u16>().prop_map(|v| (PlcValue::Uint(v), v.to_le_bytes().to_vec())),
        any::<u32>().prop_map(|v| (PlcValue::Udint(v), v.to_le_bytes().to_vec())),
        any::<u64>().prop_map(|v| (PlcValue::Ulint(v), v.to_le_bytes().to_vec())),
        any::<u32>().prop_map(|b| (PlcValue::Real(f32::from_bits(b)), b.to_le_bytes().to_vec())),
        any::<u64>().prop_map(|b| (PlcValue::Lreal(f64::from_bits(b)), b.to_le_bytes().to_vec())),
    ]
}

/// Bit-exact equality (NaN payloads included), which `PartialEq` on floats is not.
fn same(a: &PlcValue, b: &PlcValue) -> bool {
    match (a, b) {
        (PlcValue::Real(x), PlcValue::Real(y)) => x.to_bits() == y.to_bits(),
        (PlcValue::Lreal(x), PlcValue::Lreal(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cip_payloads_of_any_bytes_decode_for_every_type_code_and_short_ones_fail(
        (code, width) in cip_type(),
        bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..10),
            proptest::collection::vec(any::<u8>(), 0..200)],
    ) {
        let r = decode_payload(code, &bytes);
        if let Some(width) = width {
            prop_assert_eq!(r.is_err(), bytes.len() < width, "type 0x{:04X}, {} bytes: {:?}", code, bytes.len(), r);
        }
        if let Err(e) = &r {
            prop_assert!(!e.to_string().trim().is_empty());
        }
        // With the type prefix, as a read reply carries it.
        let mut prefixed = code.to_le_bytes().to_vec();
        prefixed.extend_from_slice(&bytes);
        let r2 = PlcValue::decode(&mut prefixed.as_slice());
        prop_assert_eq!(r2.is_ok(), r.is_ok());
    }

    #[test]
    fn cip_values_round_trip_and_trailing_bytes_are_ignored(
        (value, payload) in atomic(),
        trailing in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let code = value.get_data_type();
        let mut bytes = payload.clone();
        bytes.extend_from_slice(&trailing);
        let back = decode_payload(code, &bytes);
        let back = must(back.clone().ok(), &format!("{value:?}: {back:?}"))?;
        prop_assert!(same(&back, &value), "{value:?} came back as {back:?}");
        // One byte short of the payload is an error, never a panic or a value from nothing.
        let short = decode_payload(code, &payload[..payload.len() - 1]);
        prop_assert!(short.is_err(), "{:?} from {} bytes", short, payload.len() - 1);
    }

    #[test]
    fn cip_responses_of_any_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        match CipResponse::decode(&mut bytes.as_slice()) {
            Ok(r) => {
                prop_assert!(bytes.len() >= 4 + 2 * r.additional_status.len());
                prop_assert_eq!(r.data.len(), bytes.len() - 4 - 2 * r.additional_status.len());
            }
            Err(_) => prop_assert!(bytes.len() < 4 || bytes.len() < 4 + 2 * usize::from(bytes[3])),
        }
    }

    /// How a tag signal is read (scalar, array elements, bits of a word), for any tag text,
    /// type and count the config could let through.
    #[test]
    fn tag_access_of_any_tag_type_and_count_never_panics(
        tag in prop_oneof![
            "[A-Za-z_:.]{1,12}",
            "[A-Za-z]{1,6}\\.[0-9]{1,4}",
            "[A-Za-z]{1,6}\\[[0-9]{1,10}\\]",
            "[A-Za-z]{1,6}\\[[0-9]{1,10}\\]\\.[0-9]{1,3}",
            // First indices near the top of the u32 range an index may be parsed into.
            ("[A-Za-z]{1,6}", 0u32..70_000).prop_map(|(b, d)| format!("{b}[{}]", u32::MAX - d)),
            "[A-Za-z\\[\\].:0-9,]{0,16}",
            any::<String>(),
        ],
        t in data_type(),
        // Mostly small: a case with count = 65535 formats 65535 element names, and a few of
        // those per run cover the top of the range without dominating the budget.
        count in prop_oneof![150 => 0u16..=64, 40 => 65u16..=600, 1 => Just(u16::MAX)],
    ) {
        match Access::of(&tag, t, count) {
            Ok(Access::Scalar { tag: read }) => {
                prop_assert!(count <= 1);
                prop_assert_eq!(read, tag);
            }
            Ok(Access::Elements { tags }) => {
                prop_assert!(count > 1);
                prop_assert_eq!(tags.len(), usize::from(count));
                // Consecutive elements from the first index: none read twice, none wrapped.
                let index = |t: &str| t.rsplit_once('[').and_then(|(_, i)| i.strip_suffix(']')?.parse::<u64>().ok());
                let first = index(&tags[0]);
                prop_assert!(first.is_some(), "{:?}", &tags[0]);
                let first = first.unwrap_or_default();
                for (i, t) in tags.iter().enumerate() {
                    prop_assert_eq!(index(t), Some(first + i as u64), "element {} of {:?}", i, &tag);
                }
            }
            Ok(Access::Bits { word, bit, count: n }) => {
                prop_assert_eq!(t, DataType::Bool);
                prop_assert!(bit < 64 && !word.is_empty());
                prop_assert_eq!(n, count.max(1));
            }
            Err(e) => prop_assert!(!e.trim().is_empty()),
        }
    }
}

/// Found by `tag_access_of_any_tag_type_and_count_never_panics` (minimal input
/// `tag = "A[4294967295]", t = Bool, count = 2`): `Access::of` added the element number to the
/// first index in `u32`, which panicked in debug builds and, in release builds, wrapped to read
/// `A[0]` as the second element. The loader now refuses such a tag (SPEC §7: an index plus
/// `count` that overflows is a config error), and `Access::of` no longer wraps either.
#[test]
fn an_array_tag_whose_index_plus_count_overflows_is_refused_and_never_wraps() {
    let text = EXAMPLE.replace(
        r#"faults       = { tag = "BasketLoader.Faults", type = "dint", count = 2 }"#,
        r#"faults       = { tag = "BasketLoader.Faults[4294967295]", type = "dint", count = 2 }"#,
    );
    assert_ne!(
        text, EXAMPLE,
        "the example's loader fault signal moved: update this test"
    );
    let errors = load_str(&text, "fuzz.toml").expect_err("an overflowing index is refused");
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.line > 0 && e.key.contains("faults")),
        "the error names the faults signal with a line: {errors}"
    );
    let access = Access::of("BasketLoader.Faults[4294967295]", DataType::I32, 2);
    assert!(
        !matches!(&access, Ok(a) if a.reads().contains(&"BasketLoader.Faults[0]")),
        "the second element wrapped round to index 0: {access:?}"
    );
}

/// The generators are not vacuous: from a fixed seed, the structured config edits give valid
/// files, schema errors and syntax errors, and the command bodies give accepted commands as well
/// as rejections. A generator that only ever produced garbage would pass every property above
/// while testing one early return.
#[test]
fn the_generators_reach_both_the_accepting_and_the_refusing_paths() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let edits = proptest::collection::vec(mutation(), 1..3);
    let (mut valid, mut schema, mut syntax) = (0, 0, 0);
    for _ in 0..300 {
        let Ok(tree) = edits.new_tree(&mut runner) else {
            panic!("the edit strategy cannot generate")
        };
        let mut text = EXAMPLE.to_string();
        for m in &tree.current() {
            text = apply(&text, m);
        }
        match load_str(&text, "fuzz.toml") {
            Ok(_) => valid += 1,
            Err(e) if e.0.iter().any(|e| !e.key.is_empty()) => schema += 1,
            Err(_) => syntax += 1,
        }
    }
    assert!(
        valid >= 30 && schema >= 30 && syntax >= 30,
        "300 edited examples: {valid} valid, {schema} with schema errors, {syntax} with syntax errors"
    );

    let commands = command_case();
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..1000 {
        let Ok(tree) = commands.new_tree(&mut runner) else {
            panic!("the command strategy cannot generate")
        };
        let (path, payload) = tree.current();
        match parse(&path, &payload) {
            Ok(_) => accepted += 1,
            Err(_) => rejected += 1,
        }
    }
    assert!(
        accepted >= 200 && rejected >= 200,
        "1000 commands: {accepted} accepted, {rejected} rejected"
    );
}
