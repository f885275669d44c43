//! `[commands]` (SPEC §7): which inbound commands are accepted and how they must be signed.
//!
//! Owns the command-name vocabulary check of `enabled` (against [`COMMAND_NAMES`]) and the
//! checks of the signing key file. Never reads the key into memory: only its length is looked
//! at here; the command gate loads it at start.
//!
//! ## Decisions where SPEC §7 leaves a choice
//!
//! - `enabled` entries are exact command names or `group/*` naming at least one command;
//!   an unknown one gets a did-you-mean hint among names and groups.
//! - `max_age_s` 0..=86400 (default 60); `max_planned_stop_min` 1..=1440 (default 120).
//! - `key_file` is checked like `password_file` and, when readable, must hold at least
//!   [`MIN_COMMAND_KEY_BYTES`] bytes.
//! - `key_file` over `mqtt://`, and `key_file` with `max_age_s = 0` (no replay window), are
//!   *notices* ([`Loaded::notices`](super::Loaded::notices)): printed by `check-config`,
//!   never fatal for `run`.

use super::super::{command_matches, Commands, COMMAND_NAMES};
use super::walk::{did_you_mean, Need, Table, Value};
use super::Compiler;

/// Shortest accepted command key (SPEC §7: at least 32 bytes).
pub const MIN_COMMAND_KEY_BYTES: u64 = 32;

impl Compiler<'_, '_> {
    /// `[commands]`; `plain_mqtt`: the broker URL is `mqtt://`, so signed commands travel in
    /// clear (they cannot be forged, but can be read): a notice, not an error.
    pub(super) fn commands(&mut self, t: &Table<'_, '_>, plain_mqtt: bool) -> Commands {
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, loaded, with, MINIMAL};
    use crate::config::Commands;

    #[test]
    fn a_misspelled_command_group_suggests_the_group() {
        let e = error_at(
            &with("\n[commands]\nenabled = [\"andon/ack\", \"jobs/*\"]\n"),
            "commands.enabled[1]",
        );
        assert_eq!(e.message, "unknown command group \"jobs/*\"");
        assert_eq!(e.hint.as_deref(), Some("did you mean \"job/*\"?"));
    }

    #[test]
    fn without_the_table_every_command_is_enabled_unsigned() {
        assert_eq!(loaded(MINIMAL).config.commands, Commands::default());
    }
}
