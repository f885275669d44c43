//! The walker: typed getters over the spanned TOML document that *record* problems instead of
//! returning at the first one.
//!
//! Every getter takes the [`Table`] it reads from, so it knows the key path (`plc[0]`) and the
//! table's span (for "missing key" errors, which point at the table header). A getter returns
//! `None` both when an optional key is absent and when the value is invalid; in the second case
//! an error is already recorded, so callers may substitute a default and keep validating without
//! producing follow-on errors. The compiled config is only built when no error was recorded.

use std::ops::{Range, RangeInclusive};

use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

use super::ConfigError;

/// A byte range in the config text.
pub(super) type Span = Range<usize>;
/// A spanned TOML value.
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// Whether a key must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Required,
    Optional,
}

/// One table of the document together with where it is and what it is called.
#[derive(Clone)]
pub(super) struct Table<'a, 'i> {
    /// Key path of the table, e.g. `equipment[1].signals`; empty for the document root.
    pub path: String,
    /// The header (`[[plc]]`), the inline table, or the dotted key that created it.
    pub span: Span,
    pub map: &'a DeTable<'i>,
}

impl<'a, 'i> Table<'a, 'i> {
    /// The value of `key`, if present.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.map.get(key)
    }

    /// Whether `key` is present.
    pub(super) fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some()
    }

    /// Span of the key itself (for "this key does not belong here"), else of the table.
    pub(super) fn key_span(&self, key: &str) -> Span {
        self.map
            .get_key_value(key)
            .map(|(k, _)| k.span())
            .unwrap_or_else(|| self.span.clone())
    }

    /// Span of the value of `key`, else of the table itself.
    pub(super) fn span_of(&self, key: &str) -> Span {
        self.get(key)
            .map(|v| v.span())
            .unwrap_or_else(|| self.span.clone())
    }

    /// Key path of a child key.
    pub(super) fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Entries in file order (the underlying map is sorted by name, not by position).
    pub(super) fn entries(&self) -> Vec<(&'a str, Span, &'a Value<'i>)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|(k, v)| (k.get_ref().as_ref(), k.span(), v))
            .collect();
        v.sort_by_key(|(_, span, _)| span.start);
        v
    }
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
pub(super) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// "a string", "an integer", … for messages.
pub(super) fn a_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date/time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub(super) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let lower = word.to_ascii_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let c_lower = c.to_ascii_lowercase();
        let mut score = strsim::normalized_damerau_levenshtein(&lower, &c_lower);
        // "timeout" for "timeout_ms": a missing unit suffix is a common slip.
        if lower.len() >= 3 && (c_lower.starts_with(&lower) || lower.starts_with(&c_lower)) {
            score = score.max(0.75);
        }
        if score >= 0.7 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Converts byte offsets into 1-based line and column (columns count characters).
pub(super) struct Lines<'s> {
    text: &'s str,
    starts: Vec<usize>,
}

impl<'s> Lines<'s> {
    pub(super) fn new(text: &'s str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = match self.text.get(start..offset) {
            Some(s) => s.chars().count() + 1,
            None => offset - start + 1,
        };
        (line, column)
    }
}

/// Collects errors and warnings for one file.
pub(super) struct Ctx<'s> {
    file: String,
    lines: Lines<'s>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
    /// Warnings that never stop `run` (see [`super::Loaded::notices`]).
    pub notices: Vec<ConfigError>,
}

impl<'s> Ctx<'s> {
    pub(super) fn new(file: &str, text: &'s str) -> Self {
        Ctx {
            file: file.to_string(),
            lines: Lines::new(text),
            errors: vec![],
            warnings: vec![],
            notices: vec![],
        }
    }

    /// 1-based line and column of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        self.lines.position(offset)
    }

    fn make(&self, span: &Span, key: &str, message: String, hint: Option<String>) -> ConfigError {
        let (line, column) = self.lines.position(span.start);
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: key.to_string(),
            message,
            hint,
        }
    }

    /// Records an error at `span` for the key path `key`.
    pub(super) fn error(&mut self, span: &Span, key: &str, message: impl Into<String>) {
        let e = self.make(span, key, message.into(), None);
        self.errors.push(e);
    }

    /// Records an error with a hint.
    pub(super) fn error_hint(
        &mut self,
        span: &Span,
        key: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let e = self.make(span, key, message.into(), hint);
        self.errors.push(e);
    }

    /// Records a warning with a hint.
    pub(super) fn warn(
        &mut self,
        span: &Span,
        key: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let w = self.make(span, key, message.into(), hint);
        self.warnings.push(w);
    }

    /// Records a warning that `run` logs and starts anyway (a legal but unusual setting).
    pub(super) fn notice(
        &mut self,
        span: &Span,
        key: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let w = self.make(span, key, message.into(), hint);
        self.notices.push(w);
    }

    /// Rejects every key of `t` not in `known`, suggesting the closest known key.
    pub(super) fn known_keys(&mut self, t: &Table<'_, '_>, known: &[&str]) {
        for (key, span, _) in t.entries() {
            if !known.contains(&key) {
                let hint = did_you_mean(key, known.iter().copied())
                    .map(|k| format!("did you mean \"{k}\"?"));
                self.error_hint(
                    &span,
                    &t.path_of(key),
                    format!("unknown key \"{key}\""),
                    hint,
                );
            }
        }
    }

    /// The value of `key`, recording "missing required key" when it is required and absent.
    pub(super) fn value<'a, 'i>(
        &mut self,
        t: &Table<'a, 'i>,
        key: &str,
        need: Need,
    ) -> Option<&'a Value<'i>> {
        let v = t.get(key);
        if v.is_none() && need == Need::Required {
            self.error(
                &t.span,
                &t.path_of(key),
                format!("missing required key \"{key}\""),
            );
        }
        v
    }

    fn wrong_type(&mut self, v: &Value<'_>, path: &str, expected: &str) {
        self.error(
            &v.span(),
            path,
            format!("expected {expected}, found {}", a_type(v.get_ref())),
        );
    }

    // ---- value-level conversions -------------------------------------------------------

    pub(super) fn as_str(&mut self, v: &Value<'_>, path: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(v, path, "a string");
                None
            }
        }
    }

    pub(super) fn as_int(
        &mut self,
        v: &Value<'_>,
        path: &str,
        range: RangeInclusive<i64>,
    ) -> Option<i64> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => n,
                Err(_) => {
                    self.error(&v.span(), path, format!("integer {i} is too large"));
                    return None;
                }
            },
            DeValue::Float(f) if f.as_str().parse::<f64>().is_ok_and(|x| x.fract() == 0.0) => {
                self.error_hint(
                    &v.span(),
                    path,
                    format!("expected an integer, found a float ({f})"),
                    Some(format!(
                        "write it without a decimal point: {}",
                        f.as_str().split('.').next().unwrap_or("0")
                    )),
                );
                return None;
            }
            _ => {
                self.wrong_type(v, path, "an integer");
                return None;
            }
        };
        if !range.contains(&n) {
            self.error(
                &v.span(),
                path,
                range_message(&n, range.start(), range.end()),
            );
            return None;
        }
        Some(n)
    }

    /// A number (integer or float), finite and within `range`.
    pub(super) fn as_num(
        &mut self,
        v: &Value<'_>,
        path: &str,
        range: RangeInclusive<f64>,
    ) -> Option<f64> {
        let x = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.wrong_type(v, path, "a number");
                return None;
            }
        };
        let Some(x) = x.filter(|x| x.is_finite()) else {
            self.error(&v.span(), path, "expected a finite number");
            return None;
        };
        if !range.contains(&x) {
            self.error(
                &v.span(),
                path,
                range_message(&x, range.start(), range.end()),
            );
            return None;
        }
        Some(x)
    }

    pub(super) fn as_bool(&mut self, v: &Value<'_>, path: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            DeValue::String(s) if s == "true" || s == "false" => {
                self.error_hint(
                    &v.span(),
                    path,
                    "expected a boolean, found a string",
                    Some(format!("write {s} without quotes")),
                );
                None
            }
            _ => {
                self.wrong_type(v, path, "a boolean (true or false)");
                None
            }
        }
    }

    pub(super) fn as_table<'a, 'i>(
        &mut self,
        v: &'a Value<'i>,
        path: &str,
    ) -> Option<Table<'a, 'i>> {
        match v.get_ref() {
            DeValue::Table(map) => Some(Table {
                path: path.to_string(),
                span: v.span(),
                map,
            }),
            _ => {
                self.wrong_type(v, path, "a table");
                None
            }
        }
    }

    pub(super) fn as_array<'a, 'i>(
        &mut self,
        v: &'a Value<'i>,
        path: &str,
    ) -> Option<&'a DeArray<'i>> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.wrong_type(v, path, "an array");
                None
            }
        }
    }

    /// One of the named `choices`, with a did-you-mean hint.
    pub(super) fn as_choice<E: Copy>(
        &mut self,
        v: &Value<'_>,
        path: &str,
        choices: &[(&str, E)],
    ) -> Option<E> {
        let s = self.as_str(v, path)?;
        if let Some((_, e)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*e);
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let hint = did_you_mean(&s, choices.iter().map(|(n, _)| *n))
            .map(|n| format!("did you mean \"{n}\"?"));
        self.error_hint(
            &v.span(),
            path,
            format!("expected one of {}, found \"{s}\"", names.join(", ")),
            hint,
        );
        None
    }

    // ---- key-level getters ---------------------------------------------------------------

    pub(super) fn str_(&mut self, t: &Table<'_, '_>, key: &str, need: Need) -> Option<String> {
        let v = self.value(t, key, need)?;
        self.as_str(v, &t.path_of(key))
    }

    /// A string that must not be empty or blank.
    pub(super) fn text(&mut self, t: &Table<'_, '_>, key: &str, need: Need) -> Option<String> {
        let s = self.str_(t, key, need)?;
        if s.trim().is_empty() {
            self.error(&t.span_of(key), &t.path_of(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(super) fn int(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        need: Need,
        range: RangeInclusive<i64>,
    ) -> Option<i64> {
        let v = self.value(t, key, need)?;
        self.as_int(v, &t.path_of(key), range)
    }

    pub(super) fn num(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        need: Need,
        range: RangeInclusive<f64>,
    ) -> Option<f64> {
        let v = self.value(t, key, need)?;
        self.as_num(v, &t.path_of(key), range)
    }

    pub(super) fn bool_(&mut self, t: &Table<'_, '_>, key: &str, need: Need) -> Option<bool> {
        let v = self.value(t, key, need)?;
        self.as_bool(v, &t.path_of(key))
    }

    pub(super) fn choice<E: Copy>(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        need: Need,
        choices: &[(&str, E)],
    ) -> Option<E> {
        let v = self.value(t, key, need)?;
        self.as_choice(v, &t.path_of(key), choices)
    }

    pub(super) fn table<'a, 'i>(
        &mut self,
        t: &Table<'a, 'i>,
        key: &str,
        need: Need,
    ) -> Option<Table<'a, 'i>> {
        let v = self.value(t, key, need)?;
        self.as_table(v, &t.path_of(key))
    }

    /// An array of tables (`[[key]]`), each element with the path `key[i]`.
    pub(super) fn tables<'a, 'i>(&mut self, t: &Table<'a, 'i>, key: &str) -> Vec<Table<'a, 'i>> {
        let Some(v) = t.get(key) else { return vec![] };
        let path = t.path_of(key);
        let DeValue::Array(items) = v.get_ref() else {
            let header = if t.path.is_empty() {
                key.to_string()
            } else {
                format!("{}.{key}", strip_indices(&t.path))
            };
            self.error_hint(
                &v.span(),
                &path,
                format!("expected an array of tables, found {}", a_type(v.get_ref())),
                Some(format!(
                    "write the header with double brackets: [[{header}]]"
                )),
            );
            return vec![];
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.as_table(item, &format!("{path}[{i}]")))
            .collect()
    }
}

/// `equipment[1].signals` → `equipment.signals`, for writing table headers in hints.
fn strip_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn range_message<T: std::fmt::Display>(found: &T, lo: &T, hi: &T) -> String {
    format!("must be between {lo} and {hi}, found {found}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let lines = Lines::new("ab\nçd = 1\n");
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(3), (2, 1));
        // 'ç' is two bytes but one column.
        assert_eq!(lines.position(5), (2, 2));
        assert_eq!(lines.position(10_000), (3, 1));
    }

    #[test]
    fn did_you_mean_finds_typos_and_missing_unit_suffixes() {
        let keys = ["poll_interval_ms", "timeout_ms", "host"];
        assert_eq!(
            did_you_mean("poll_intervall_ms", keys),
            Some("poll_interval_ms")
        );
        assert_eq!(did_you_mean("timeout", keys), Some("timeout_ms"));
        assert_eq!(did_you_mean("completely_else", keys), None);
    }

    #[test]
    fn keys_that_are_not_bare_are_quoted_in_paths() {
        assert_eq!(join("", "plc"), "plc");
        assert_eq!(
            join("equipment[0].signals.extra", "motor.temp"),
            "equipment[0].signals.extra.\"motor.temp\""
        );
    }

    #[test]
    fn headers_in_hints_drop_array_indices() {
        assert_eq!(strip_indices("equipment[3]"), "equipment");
    }
}
