//! Test-only knobs of the daemon (like the store's `MS5_EDGE_TEST_*`), in one place.
//!
//! Each is read from the environment once per pipeline, logged at `warn` when set, and never
//! set in production: they stand in for conditions an end-to-end test cannot wait for or
//! cannot produce otherwise.

use std::time::Duration;

use crate::config::Config;

/// `N` makes the core notify the `P/status` watch every `N` s (so the uplink republishes what
/// it holds), standing in for the uplink's 60 s timer in `tests/status_health.rs`.
pub(super) const STATUS_KNOB: &str = "MS5_EDGE_TEST_STATUS_S";

/// `NAME:N` lets PLC `NAME` deliver `N` poll reports and then blocks its task on a channel
/// nobody reads, which is exactly what a hung downstream does to a real poll loop.
/// `tests/systemd_notify.rs` uses it to check that the watchdog stops. Ignored when the PLC
/// does not exist.
pub(super) const STALL_KNOB: &str = "MS5_EDGE_TEST_STALL_PLC";

/// The [`STATUS_KNOB`] period, if set.
pub(super) fn status_republish() -> Option<Duration> {
    let secs: u64 = std::env::var(STATUS_KNOB).ok()?.trim().parse().ok()?;
    tracing::warn!(
        knob = STATUS_KNOB,
        value = secs,
        "test knob set in the environment"
    );
    Some(Duration::from_secs(secs.max(1)))
}

/// The [`STALL_KNOB`] PLC and report count, if set and the PLC exists in `config`.
pub(super) fn stall_plc(config: &Config) -> Option<(String, u64)> {
    let value = std::env::var(STALL_KNOB).ok()?;
    let (name, after) = value.rsplit_once(':')?;
    let after = after.parse::<u64>().ok()?;
    config.plc(name)?;
    tracing::warn!(plc = %name, after_reports = after, "{STALL_KNOB} is set: this PLC's task will stall (test only)");
    Some((name.to_string(), after))
}
