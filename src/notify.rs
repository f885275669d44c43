//! systemd integration: readiness, human-readable status and a watchdog that means something.
//!
//! ## Design constraints
//!
//! - `READY=1` is sent only once the configuration is loaded, the database is open and every
//!   PLC task has been spawned (the daemon calls [`Notifier::ready`] at that point). It does
//!   *not* wait for PLCs to answer: a gateway whose PLCs are switched off is still a running
//!   service, and `systemctl start` must not hang on the line being down.
//! - `WATCHDOG=1` means "the poll loops are making progress", not "the process is alive". A
//!   ping that any timer could send would keep a wedged daemon alive forever. The pings are
//!   therefore sent by the core thread (which also runs the engine and the SQLite writer), and
//!   only while [`Liveness`] finds that every PLC delivered a poll report recently enough
//!   ([`Watchdog`] does the gating). A
//!   core thread stuck in a syscall sends nothing; a PLC task that stopped ticking (hung
//!   driver, dead task, a blocked channel) stops the pings too, and systemd restarts the unit.
//! - What is *not* a stall: a PLC that is off or unreachable (its task still reports a failed
//!   poll after each backoff), a broker that is away (the outbox fills; that is what it is
//!   for), a full disk (events wait in memory; SPEC §5 says polling goes on). Restarting the
//!   daemon would fix none of these, so none of them stops the watchdog.
//! - A start-up that is slow but making progress — `PRAGMA quick_check` of a large database on
//!   an SD card — sends `EXTEND_TIMEOUT_USEC=` every few seconds while it runs, so it is
//!   never killed by `TimeoutStartSec` (the daemon's `Pipeline::start`).
//! - Without `NOTIFY_SOCKET` every call is a no-op, so `run` behaves the same by hand.
//!
//! How late is "late" for one PLC ([`report_budget`]): a report can legitimately be as far
//! apart as one reconnect backoff (capped at [`acquire::backoff_cap`]), one poll interval to
//! the next tick and one full poll cycle (the driver's cycle deadline), plus slack for a busy
//! gateway. A PLC polled every minute therefore gets a longer budget than one polled every
//! 100 ms; the watchdog fires `WatchdogSec` after the budget runs out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::acquire;
use crate::config::Plc;

/// Slack added to every PLC's report budget (a loaded 2-core gateway, an fsync on an SD card).
const BUDGET_SLACK: Duration = Duration::from_secs(2);

/// How long a PLC may go without a poll report before it counts as stalled.
///
/// Mirrors the poll loop in [`acquire::run_plc`]: backoff cap + one interval + the cycle
/// deadline (`max(4 × timeout_ms, 1 s)`), plus `BUDGET_SLACK`.
pub fn report_budget(plc: &Plc) -> Duration {
    let interval = Duration::from_millis(plc.poll_interval_ms);
    let cycle = Duration::from_millis(plc.timeout_ms.saturating_mul(4).max(1000));
    acquire::backoff_cap(interval) + interval + cycle + BUDGET_SLACK
}

/// Per-PLC progress as the core sees it: the time of the last report it consumed.
///
/// Pure: every method takes the current (monotonic) time as an argument.
#[derive(Debug, Clone)]
pub struct Liveness {
    plcs: BTreeMap<String, (Duration, Instant)>,
}

impl Liveness {
    /// Every PLC starts as "just reported" at `now`: a task has its whole budget to deliver
    /// its first report.
    pub fn new(budgets: impl IntoIterator<Item = (String, Duration)>, now: Instant) -> Self {
        Liveness {
            plcs: budgets
                .into_iter()
                .map(|(name, budget)| (name, (budget, now)))
                .collect(),
        }
    }

    /// From the PLCs of a configuration, with [`report_budget`].
    pub fn for_plcs<'a>(plcs: impl IntoIterator<Item = &'a Plc>, now: Instant) -> Self {
        Liveness::new(
            plcs.into_iter().map(|p| (p.name.clone(), report_budget(p))),
            now,
        )
    }

    /// A report from `plc` was consumed at `now`. Unknown names are ignored.
    pub fn observe(&mut self, plc: &str, now: Instant) {
        if let Some((_, last)) = self.plcs.get_mut(plc) {
            *last = now;
        }
    }

    /// PLCs whose last report is older than their budget at `now`, in name order.
    pub fn stalled(&self, now: Instant) -> Vec<&str> {
        self.plcs
            .iter()
            .filter(|(_, (budget, last))| now.saturating_duration_since(*last) > *budget)
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// What one [`Watchdog::check`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not yet time to ping (or systemd does not watch this process).
    NotDue,
    /// Every PLC made progress: `WATCHDOG=1` was sent.
    Pinged,
    /// These PLCs stalled (name order): the ping was withheld.
    Withheld(Vec<String>),
}

/// Watchdog gating: pings systemd every [`Notifier::ping_every`], but only while [`Liveness`]
/// finds every PLC loop making progress (module doc). Owned by the core thread, whose own
/// reaching [`Watchdog::check`] is its proof of life.
///
/// Every method takes the monotonic time as an argument; only [`Watchdog::check`] sends.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// When each PLC last delivered a report, against its [`report_budget`].
    liveness: Liveness,
    /// The ping interval; `None` when systemd does not watch us (then nothing is ever sent,
    /// but [`Watchdog::stalled`] still feeds the `STATUS=` line).
    every: Option<Duration>,
    /// The next ping is due at this time (the first one at once).
    next_ping: Instant,
    /// The stall last logged, so that one error line is written per change, not per ping.
    reported: Vec<String>,
}

impl Watchdog {
    /// For the PLCs of a configuration; every PLC has its whole budget from `now`.
    pub fn new<'a>(
        plcs: impl IntoIterator<Item = &'a Plc>,
        every: Option<Duration>,
        now: Instant,
    ) -> Self {
        Watchdog {
            liveness: Liveness::for_plcs(plcs, now),
            every,
            next_ping: now,
            reported: Vec::new(),
        }
    }

    /// The ping interval, if systemd watches this process.
    pub fn every(&self) -> Option<Duration> {
        self.every
    }

    /// A report from `plc` was consumed at `now`.
    pub fn observe(&mut self, plc: &str, now: Instant) {
        self.liveness.observe(plc, now);
    }

    /// PLCs whose last report is older than their budget at `now`, in name order.
    pub fn stalled(&self, now: Instant) -> Vec<&str> {
        self.liveness.stalled(now)
    }

    /// When a ping is due at `now`: sends it through `notifier` if no PLC stalled, else
    /// withholds it. Logs a stall once when it begins or changes, and its end once.
    pub fn check(&mut self, now: Instant, notifier: &Notifier) -> Verdict {
        let Some(every) = self.every else {
            return Verdict::NotDue;
        };
        if now < self.next_ping {
            return Verdict::NotDue;
        }
        // Half a period: the core wakes at least every `every`, so pings are never more than
        // one period apart (a full period here let one wake-up in two miss).
        self.next_ping = now + every / 2;
        let stalled = self.liveness.stalled(now);
        if stalled.is_empty() {
            notifier.watchdog();
            if !self.reported.is_empty() {
                tracing::info!("every PLC task is making progress again");
                self.reported.clear();
            }
            return Verdict::Pinged;
        }
        let stalled: Vec<String> = stalled.into_iter().map(str::to_string).collect();
        if self.reported != stalled {
            tracing::error!(plcs = %stalled.join(", "), "PLC poll loop stalled: withholding the systemd watchdog ping");
            self.reported = stalled.clone();
        }
        Verdict::Withheld(stalled)
    }
}

/// The watchdog interval systemd asked for, following `sd_watchdog_enabled(3)`:
/// `WATCHDOG_USEC` set and positive, and `WATCHDOG_PID` either unset or this process.
///
/// (The `sd-notify` crate's own check insists on `WATCHDOG_PID`, which systemd always sets
/// but a test harness playing systemd cannot know before it spawns the process.)
pub fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Talks to systemd over `NOTIFY_SOCKET`. Sending is best effort: a lost datagram is not a
/// reason to stop the daemon, and without a socket nothing is sent.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: watchdog_from_env(),
        }
    }

    /// A notifier that sends nothing (tests, `demo`).
    pub fn disabled() -> Self {
        Notifier {
            enabled: false,
            watchdog: None,
        }
    }

    /// The interval between pings: half of `WatchdogSec`, as `sd_watchdog_enabled(3)`
    /// recommends; `None` when systemd does not watch this process.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled).map(|w| w / 2)
    }

    fn send(&self, states: &[sd_notify::NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// Startup (or a reload) is complete.
    pub fn ready(&self, status: &str) {
        self.send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ]);
    }

    /// A reload begins (`RELOADING=1` with the monotonic timestamp systemd ≥ 253 wants).
    pub fn reloading(&self) {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                sd_notify::NotifyState::Reloading,
                now,
                sd_notify::NotifyState::Status("reloading the configuration"),
            ]),
            Err(_) => self.send(&[sd_notify::NotifyState::Reloading]),
        }
    }

    /// Start-up (or a reload) is still making progress: systemd should wait `by` longer from
    /// now than `TimeoutStartSec` would allow (it never shortens a timeout).
    pub fn extend_timeout(&self, by: Duration, status: &str) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[
            sd_notify::NotifyState::ExtendTimeoutUsec(usec),
            sd_notify::NotifyState::Status(status),
        ]);
    }

    /// A free-form line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[sd_notify::NotifyState::Status(status)]);
    }

    /// The poll loops are making progress.
    pub fn watchdog(&self) {
        self.send(&[sd_notify::NotifyState::Watchdog]);
    }

    /// A clean shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("shutting down"),
        ]);
    }
}

/// The `STATUS=` line: what a controls engineer wants from `systemctl status` at a glance.
pub fn status_line(
    online: usize,
    plcs: usize,
    outbox: Option<u64>,
    broker: Option<bool>,
    stalled: &[&str],
) -> String {
    let mut s = format!("{online}/{plcs} PLCs online");
    if let Some(depth) = outbox {
        s.push_str(&format!(", outbox {depth}"));
    }
    match broker {
        Some(true) => s.push_str(", broker connected"),
        Some(false) => s.push_str(", broker unreachable"),
        None => s.push_str(", no broker configured"),
    }
    if !stalled.is_empty() {
        s.push_str(&format!(
            "; STALLED: {} (watchdog pings withheld)",
            stalled.join(", ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_plc_that_reports_within_its_budget_is_not_stalled() {
        let t0 = Instant::now();
        let mut l = Liveness::new([("a".to_string(), secs(5)), ("b".to_string(), secs(5))], t0);
        l.observe("a", t0 + secs(4));
        l.observe("b", t0 + secs(4));
        assert!(l.stalled(t0 + secs(8)).is_empty());
    }

    #[test]
    fn a_plc_silent_for_longer_than_its_budget_is_stalled_while_the_others_are_not() {
        let t0 = Instant::now();
        let mut l = Liveness::new([("a".to_string(), secs(5)), ("b".to_string(), secs(5))], t0);
        l.observe("a", t0 + secs(9));
        assert_eq!(l.stalled(t0 + secs(10)), vec!["b"]);
        l.observe("b", t0 + secs(11));
        assert!(
            l.stalled(t0 + secs(12)).is_empty(),
            "progress again clears it"
        );
    }

    #[test]
    fn every_plc_gets_its_whole_budget_for_its_first_report() {
        let t0 = Instant::now();
        let l = Liveness::new([("a".to_string(), secs(5))], t0);
        assert!(l.stalled(t0 + secs(5)).is_empty());
        assert_eq!(l.stalled(t0 + secs(6)), vec!["a"]);
    }

    #[test]
    fn reports_from_unknown_plcs_are_ignored() {
        let t0 = Instant::now();
        let mut l = Liveness::new([("a".to_string(), secs(1))], t0);
        l.observe("removed-by-reload", t0 + secs(3));
        assert_eq!(l.stalled(t0 + secs(3)), vec!["a"]);
    }

    #[test]
    fn the_budget_covers_a_full_backoff_an_interval_and_a_poll_cycle() {
        let text = crate::demo::config_text(1502, 1503, "/tmp/x", None);
        let config = crate::config::load_str(&text, "t.toml").unwrap().config;
        for plc in &config.plcs {
            let interval = Duration::from_millis(plc.poll_interval_ms);
            let budget = report_budget(plc);
            assert!(budget >= acquire::BACKOFF_BASE + interval + secs(1));
            assert!(budget >= acquire::backoff_cap(interval) + interval + secs(1));
            assert!(budget <= secs(60 + 10 + 240 + 2), "{budget:?}");
        }
    }

    #[test]
    fn the_status_line_counts_plcs_and_names_a_stall() {
        assert_eq!(
            status_line(2, 2, Some(0), Some(true), &[]),
            "2/2 PLCs online, outbox 0, broker connected"
        );
        assert_eq!(
            status_line(1, 2, Some(17), Some(false), &["bagger"]),
            "1/2 PLCs online, outbox 17, broker unreachable; STALLED: bagger (watchdog pings withheld)"
        );
        assert_eq!(
            status_line(0, 1, None, None, &[]),
            "0/1 PLCs online, no broker configured"
        );
    }

    #[test]
    fn the_watchdog_pings_at_once_then_at_least_every_interval_while_every_plc_reports() {
        let t0 = Instant::now();
        let mut w = Watchdog {
            liveness: Liveness::new([("a".to_string(), secs(5))], t0),
            every: Some(secs(2)),
            next_ping: t0,
            reported: Vec::new(),
        };
        let off = Notifier::disabled();
        assert_eq!(w.check(t0, &off), Verdict::Pinged);
        assert_eq!(
            w.check(t0 + Duration::from_millis(500), &off),
            Verdict::NotDue
        );
        // Due again half a period later, so a wake-up a little late never makes a gap of two.
        assert_eq!(w.check(t0 + secs(1), &off), Verdict::Pinged);
        assert_eq!(
            w.check(t0 + Duration::from_millis(1500), &off),
            Verdict::NotDue
        );
        w.observe("a", t0 + secs(1));
        assert_eq!(w.check(t0 + secs(2), &off), Verdict::Pinged);
    }

    #[test]
    fn the_watchdog_withholds_its_ping_while_a_plc_is_stalled_and_resumes_after_progress() {
        let t0 = Instant::now();
        let mut w = Watchdog {
            liveness: Liveness::new([("a".to_string(), secs(1)), ("b".to_string(), secs(9))], t0),
            every: Some(secs(1)),
            next_ping: t0,
            reported: Vec::new(),
        };
        let off = Notifier::disabled();
        assert_eq!(
            w.check(t0 + secs(2), &off),
            Verdict::Withheld(vec!["a".to_string()])
        );
        assert_eq!(w.reported, vec!["a".to_string()], "logged once");
        w.observe("a", t0 + secs(3));
        assert_eq!(w.check(t0 + secs(3), &off), Verdict::Pinged);
        assert!(w.reported.is_empty());
    }

    #[test]
    fn a_watchdog_systemd_does_not_ask_for_never_pings_but_still_sees_stalls() {
        let t0 = Instant::now();
        let config = crate::config::load_str(
            &crate::demo::config_text(1502, 1503, "/tmp/x", None),
            "t.toml",
        )
        .unwrap()
        .config;
        let mut w = Watchdog::new(&config.plcs, None, t0);
        assert_eq!(
            w.check(t0 + secs(3600), &Notifier::disabled()),
            Verdict::NotDue
        );
        assert_eq!(w.stalled(t0 + secs(3600)).len(), config.plcs.len());
    }
}
