//! `[gateway]`, `[storage]` and `[telemetry]`: who this gateway is, where it keeps its data and
//! how often it publishes.
//!
//! Owns the identity checks (`gateway.id`, the IANA `timezone`) and the storage and telemetry
//! ranges. Never reads the database or the clock: `data_dir` is only resolved, not created.
//!
//! ## Decisions where SPEC §2 leaves a choice
//!
//! - `gateway.id` and `gateway.timezone` are required; `gateway.id` is `[A-Za-z0-9_-]{1,64}`
//!   (it appears in topics and CloudEvents `source`); `timezone` must be in the bundled
//!   time-zone database, with a did-you-mean hint.
//! - `data_dir` defaults to `/var/lib/ms5-edge` and resolves against the config file's
//!   directory like every other path.
//! - Ranges: `publish_interval_ms` 0..=3600000 (0 = one message per poll); `max_outbox_mb`
//!   1..=1048576; `retention_days` and `telemetry_retention_days` 1..=3650. Defaults 1000 ms,
//!   256 MB, 90 and 7 days; `store_and_forward` true.

use std::path::PathBuf;

use super::super::{Gateway, Storage, Telemetry};
use super::walk::{did_you_mean, Need, Table};
use super::Compiler;

impl Compiler<'_, '_> {
    pub(super) fn gateway(&mut self, t: &Table<'_, '_>) -> Option<Gateway> {
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

    pub(super) fn storage(&mut self, t: &Table<'_, '_>) -> Storage {
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

    pub(super) fn telemetry(&mut self, t: &Table<'_, '_>) -> Telemetry {
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::{edit, error_at, loaded, MINIMAL};

    #[test]
    fn an_unknown_time_zone_suggests_the_nearest_name() {
        let e = error_at(
            &edit("timezone = \"UTC\"", "timezone = \"Europe/Londn\""),
            "gateway.timezone",
        );
        assert_eq!(e.message, "unknown time zone \"Europe/Londn\"");
        assert_eq!(e.hint.as_deref(), Some("did you mean \"Europe/London\"?"));
    }

    #[test]
    fn storage_and_telemetry_take_their_defaults_when_absent() {
        let c = loaded(MINIMAL).config;
        assert_eq!(c.gateway.data_dir.to_str(), Some("/var/lib/ms5-edge"));
        assert_eq!(
            (c.storage.max_outbox_mb, c.storage.retention_days),
            (256, 90)
        );
        assert_eq!(c.storage.telemetry_retention_days, 7);
        assert_eq!(c.telemetry.publish_interval_ms, 1000);
        assert!(c.telemetry.store_and_forward);
    }
}
