//! The one registry of the daemon's counters: what `P/status` health, `status`, `/metrics`,
//! `/healthz` and `/readyz` read.
//!
//! ## Design constraints
//! - **Counted once, read everywhere.** Every number that two readers show lives here, once:
//!   the uplink's atomics (published, acknowledged, refusals per reason, …; the fields of the
//!   former `UplinkStats`, names kept because `P/status` and tests read them), the PLC counters
//!   mirrored from the poll reports the core already receives, command results, the outbox
//!   depth and age, the drop ledger's totals, the state and OEE of each equipment, and the
//!   core's progress. [`events`] holds one small type per thing that happens; its `emit`
//!   updates the registry and logs once per change of state, never once per occurrence.
//! - **Never in the way of a poll.** Counters are atomics or maps behind short `std` mutexes
//!   (one lookup or one copy while held). No lock is held across an `.await`, a SQLite call or
//!   a log line; the HTTP task only reads. Numbers that need SQLite (outbox depth and age) are
//!   refreshed into the registry by the core, which owns the database: the HTTP task never
//!   touches the store.
//! - **Bounded.** Label values come from the configuration (PLC, equipment, broker names) or
//!   from closed vocabularies (failure kinds, command names, refusal reasons, drop classes):
//!   a flood of made-up command topics adds no series (`command="other"`).
//! - **Pure readiness.** [`Registry::liveness`] and [`Registry::readiness`] take the current
//!   time as arguments; the rules are the watchdog's ([`crate::notify::Liveness`]) and SPEC
//!   §10's.
//!
//! The exposition format lives in [`crate::metrics`]; this module knows no HTTP.

pub mod events;
pub mod sparkplug;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::acquire::PollError;
use crate::config::Config;
use crate::engine::MachineState;

/// Failure kinds of `ms5_edge_plc_poll_failures_total` (SPEC §10), in exposition order.
pub const FAILURE_KINDS: [&str; 5] = ["timeout", "refused", "exception", "malformed", "other"];

/// Every machine state, in exposition order (`ms5_edge_equipment_state`).
pub const STATES: [MachineState; 6] = [
    MachineState::Running,
    MachineState::Stopped,
    MachineState::Faulted,
    MachineState::PlannedStop,
    MachineState::Changeover,
    MachineState::Offline,
];

/// OEE figures of `ms5_edge_oee_ratio`, in exposition order.
pub const FIGURES: [&str; 4] = ["availability", "performance", "quality", "oee"];

/// Upper bounds (seconds) of the lateness histogram's buckets; `+Inf` is implied.
pub const LATENESS_BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// OEE gauges older than this are not exposed (SPEC §10: at most 10 s old).
pub const OEE_MAX_AGE: Duration = Duration::from_secs(10);

/// The kind a failed poll is counted under.
pub fn failure_kind(e: &PollError) -> &'static str {
    match e {
        PollError::Exception(_) => "exception",
        PollError::Unsupported(_) => "other",
        PollError::Transport(_) if e.is_timeout() => "timeout",
        PollError::Transport(m) => {
            let m = m.to_ascii_lowercase();
            if m.contains("refused") {
                "refused"
            } else if m.contains("malformed") || m.contains("truncated") || m.contains("mismatch") {
                "malformed"
            } else {
                "other"
            }
        }
    }
}

/// The label of a command name: itself when it is one of [`crate::config::COMMAND_NAMES`],
/// else `other` (a made-up topic adds no series).
pub fn command_label(name: &str) -> &'static str {
    crate::config::COMMAND_NAMES
        .iter()
        .copied()
        .find(|c| *c == name)
        .unwrap_or("other")
}

/// One PLC's series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlcSeries {
    pub polls: u64,
    /// Per [`FAILURE_KINDS`].
    pub failures: [u64; 5],
    pub skipped_ticks: u64,
    /// `consecutive_failures == 0` in the last report (as `P/status` `online`); false before
    /// the first report.
    pub online: bool,
    /// Non-cumulative counts per [`LATENESS_BUCKETS_S`] bucket, the last one `+Inf`.
    pub lateness_buckets: [u64; 15],
    pub lateness_sum_us: u64,
    pub lateness_count: u64,
    /// The task's own cumulative counters at its last report, to mirror deltas (a reload
    /// starts a new task whose counters begin at 0 again; the series stays monotonic).
    pub(crate) seen_polls: u64,
    pub(crate) seen_skipped: u64,
    /// Ticks were being skipped at the last report (a skip episode is logged once).
    pub(crate) skipping: bool,
    /// Whether a report ever arrived.
    pub reported: bool,
}

impl PlcSeries {
    pub(crate) fn observe_lateness(&mut self, us: u64) {
        let s = us as f64 / 1e6;
        let i = LATENESS_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENESS_BUCKETS_S.len());
        self.lateness_buckets[i] += 1;
        self.lateness_sum_us = self.lateness_sum_us.saturating_add(us);
        self.lateness_count += 1;
    }
}

/// One equipment's state and current-shift OEE, as last published by the core.
#[derive(Debug, Clone, PartialEq)]
pub struct EquipmentSeries {
    pub state: MachineState,
    /// Per [`FIGURES`]; `None` while the figure is `null`.
    pub oee: [Option<f64>; 4],
    /// When the OEE figures were computed (`None`: never).
    pub oee_at: Option<Instant>,
}

/// The outbox as the core last counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxGauge {
    pub messages: u64,
    /// `created_ms` of the oldest unsent row; `None` when the outbox is empty.
    pub oldest_created_ms: Option<i64>,
    /// The oldest row is older than `ready_max_backlog_s` (logged once per change).
    pub(crate) over_backlog: bool,
}

/// The core's proof of life and the PLC loops' progress (the watchdog's rule).
#[derive(Debug, Clone)]
struct Progress {
    /// The core loop's last pass.
    beat: Instant,
    /// PLCs whose report is overdue ([`crate::notify::Liveness::stalled`]).
    stalled: Vec<String>,
    /// How long the core may go without a pass before it counts as stalled.
    budget: Duration,
}

/// The counter registry. Shared as `Arc<Registry>`; see the module doc.
#[derive(Debug)]
pub struct Registry {
    // ---- The uplink's counters (P/status `health.uplink`; names are part of the contract).
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub acknowledged: AtomicU64,
    pub connects: AtomicU64,
    /// Live QoS 0 telemetry dropped (disconnected, or no client slot free).
    pub live_dropped: AtomicU64,
    /// Highest seq whose PUBACK arrived.
    pub last_acked_seq: AtomicU64,
    /// Commands refused by the gate or a full queue, with an `ok:false` reply.
    pub commands_rejected: AtomicU64,
    /// Replies and status messages dropped because no client slot was free.
    pub replies_dropped: AtomicU64,
    pub status_dropped: AtomicU64,
    /// Outbox rows moved to the drop ledger as `too_large`.
    pub too_large: AtomicU64,
    /// Inbound packets over `max_packet_kb` that ended a connection (MQTT 3.1.1 only).
    pub inbound_oversized: AtomicU64,
    /// PUBACK refusals per reason (`not_authorized`, `quota_exceeded`, …).
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
    /// `host:port` of the broker in use (empty while disconnected).
    pub broker: Mutex<String>,

    // ---- Everything else.
    /// Every broker configured or connected to: each keeps its `mqtt_connected` series.
    brokers: Mutex<BTreeSet<String>>,
    /// Whether an `[mqtt]` table is configured (readiness asks for a broker only then).
    mqtt_configured: AtomicBool,
    /// `[sparkplug] cloudevents = false`: no CloudEvents connection exists.
    sparkplug_only: AtomicBool,
    /// (command label, result) → count.
    commands: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    plcs: Mutex<BTreeMap<String, PlcSeries>>,
    equipment: Mutex<BTreeMap<String, EquipmentSeries>>,
    outbox: Mutex<OutboxGauge>,
    /// (class, reason) → messages given up, as the drop ledger counts them.
    dropped: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    progress: Mutex<Progress>,
    ready_max_backlog_ms: AtomicU64,
    /// The Sparkplug session's numbers ([`sparkplug`]).
    pub sparkplug: sparkplug::SparkplugGauge,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            connected: AtomicBool::new(false),
            published: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            live_dropped: AtomicU64::new(0),
            last_acked_seq: AtomicU64::new(0),
            commands_rejected: AtomicU64::new(0),
            replies_dropped: AtomicU64::new(0),
            status_dropped: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            inbound_oversized: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            broker: Mutex::new(String::new()),
            brokers: Mutex::new(BTreeSet::new()),
            mqtt_configured: AtomicBool::new(false),
            sparkplug_only: AtomicBool::new(false),
            commands: Mutex::new(BTreeMap::new()),
            plcs: Mutex::new(BTreeMap::new()),
            equipment: Mutex::new(BTreeMap::new()),
            outbox: Mutex::new(OutboxGauge::default()),
            dropped: Mutex::new(BTreeMap::new()),
            progress: Mutex::new(Progress {
                beat: Instant::now(),
                stalled: Vec::new(),
                budget: Duration::from_secs(10),
            }),
            ready_max_backlog_ms: AtomicU64::new(300_000),
            sparkplug: sparkplug::SparkplugGauge::default(),
        }
    }
}

/// A lock that survives a panicked holder: counters are plain numbers, always consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why `/readyz` says no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady(pub Vec<String>);

impl Registry {
    /// Declares the series a configuration brings (every PLC, equipment and broker), so each
    /// is exposed from the start; keeps the counts of those already known. Called by each
    /// pipeline at start (a reload may add or remove some).
    pub fn declare(&self, config: &Config) {
        {
            let mut plcs = lock(&self.plcs);
            plcs.retain(|name, _| config.plcs.iter().any(|p| &p.name == name));
            for p in &config.plcs {
                plcs.entry(p.name.clone()).or_default();
            }
        }
        {
            let mut eq = lock(&self.equipment);
            eq.retain(|code, _| config.equipment.iter().any(|e| &e.code == code));
            for e in &config.equipment {
                eq.entry(e.code.clone()).or_insert(EquipmentSeries {
                    state: MachineState::Offline,
                    oee: [None; 4],
                    oee_at: None,
                });
            }
        }
        if let Some(m) = &config.mqtt {
            let mut b = lock(&self.brokers);
            for url in m.brokers() {
                b.insert(url.authority());
            }
        }
        self.mqtt_configured
            .store(config.mqtt.is_some(), Ordering::Relaxed);
        self.sparkplug
            .configured
            .store(config.sparkplug.is_some(), Ordering::Relaxed);
        self.sparkplug_only.store(
            config.sparkplug.is_some() && !config.cloudevents(),
            Ordering::Relaxed,
        );
        if let Some(m) = &config.metrics {
            self.ready_max_backlog_ms
                .store(m.ready_max_backlog_s * 1000, Ordering::Relaxed);
        }
        let budget = config
            .plcs
            .iter()
            .map(crate::notify::report_budget)
            .max()
            .unwrap_or(Duration::from_secs(10))
            .max(Duration::from_secs(5));
        let mut p = lock(&self.progress);
        p.budget = budget;
        p.beat = Instant::now();
        p.stalled.clear();
    }

    /// PUBACK refusals per reason, copied.
    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.refused).clone()
    }

    /// The broker in use, `None` while disconnected.
    pub fn broker(&self) -> Option<String> {
        let b = lock(&self.broker).clone();
        (!b.is_empty()).then_some(b)
    }

    /// The uplink's part of `P/status` and `status`: broker and refusals and drops.
    pub fn health(&self) -> serde_json::Value {
        let mut health = serde_json::json!({
            "connected": self.connected.load(Ordering::Relaxed),
            "broker": self.broker(),
            "refused": self.refused(),
            "too_large": self.too_large.load(Ordering::Relaxed),
            "live_dropped": self.live_dropped.load(Ordering::Relaxed),
            "replies_dropped": self.replies_dropped.load(Ordering::Relaxed),
            "status_dropped": self.status_dropped.load(Ordering::Relaxed),
            "commands_rejected": self.commands_rejected.load(Ordering::Relaxed),
            "inbound_oversized": self.inbound_oversized.load(Ordering::Relaxed),
        });
        if self.sparkplug.configured.load(Ordering::Relaxed) {
            health["sparkplug"] = self.sparkplug.json();
        }
        health
    }

    /// Every broker with a `mqtt_connected` series, and whether it is the one in use.
    pub fn brokers(&self) -> Vec<(String, bool)> {
        let current = self.broker();
        let connected = self.connected.load(Ordering::Relaxed);
        lock(&self.brokers)
            .iter()
            .map(|b| (b.clone(), connected && current.as_deref() == Some(b)))
            .collect()
    }

    /// (command, result) → count, copied.
    pub fn commands(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        lock(&self.commands).clone()
    }

    /// Every PLC's series, copied.
    pub fn plcs(&self) -> BTreeMap<String, PlcSeries> {
        lock(&self.plcs).clone()
    }

    /// Every equipment's state and OEE, copied.
    pub fn equipment(&self) -> BTreeMap<String, EquipmentSeries> {
        lock(&self.equipment).clone()
    }

    /// The outbox as last counted by the core.
    pub fn outbox(&self) -> OutboxGauge {
        *lock(&self.outbox)
    }

    /// Age of the oldest unsent message at `now_ms` (0 when the outbox is empty).
    pub fn outbox_oldest_age_ms(&self, now_ms: i64) -> u64 {
        self.outbox()
            .oldest_created_ms
            .map_or(0, |t| u64::try_from(now_ms - t).unwrap_or(0))
    }

    /// (class, reason) → messages dropped, copied.
    pub fn dropped(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        lock(&self.dropped).clone()
    }

    /// The core made a pass of its loop at `now`.
    pub fn beat(&self, now: Instant) {
        lock(&self.progress).beat = now;
    }

    /// The watchdog's rule at `now`: `Ok` while the core passes through its loop and every PLC
    /// loop delivers reports; else the reasons.
    pub fn liveness(&self, now: Instant) -> Result<(), NotReady> {
        let p = lock(&self.progress).clone();
        let mut reasons = Vec::new();
        let since = now.saturating_duration_since(p.beat);
        if since > p.budget {
            reasons.push(format!(
                "core loop stalled: no pass for {} s",
                since.as_secs()
            ));
        }
        reasons.extend(
            p.stalled
                .iter()
                .map(|plc| format!("plc {plc}: poll loop stalled (no report within its budget)")),
        );
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(NotReady(reasons))
        }
    }

    /// SPEC §10 readiness at `now_ms`: every PLC online, the broker connected (when one is
    /// configured), the oldest unsent message younger than `ready_max_backlog_s`.
    pub fn readiness(&self, now_ms: i64) -> Result<(), NotReady> {
        let mut reasons = Vec::new();
        for (name, s) in lock(&self.plcs).iter() {
            if !s.reported {
                reasons.push(format!("plc {name}: not polled yet"));
            } else if !s.online {
                reasons.push(format!("plc {name}: offline"));
            }
        }
        // With `[sparkplug] cloudevents = false` the Sparkplug connection is the only one.
        let connected = if self.sparkplug_only.load(Ordering::Relaxed) {
            self.sparkplug.connected.load(Ordering::Relaxed)
        } else {
            self.connected.load(Ordering::Relaxed)
        };
        if self.mqtt_configured.load(Ordering::Relaxed) && !connected {
            reasons.push("broker: disconnected".to_string());
        }
        let age_ms = self.outbox_oldest_age_ms(now_ms);
        let max_ms = self.ready_max_backlog_ms.load(Ordering::Relaxed);
        if age_ms > max_ms {
            reasons.push(format!(
                "outbox: oldest unsent message is {} s old (ready_max_backlog_s = {})",
                age_ms / 1000,
                max_ms / 1000
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(NotReady(reasons))
        }
    }

    /// `ready_max_backlog_s` in milliseconds.
    pub fn ready_max_backlog_ms(&self) -> u64 {
        self.ready_max_backlog_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_are_classified_by_their_wording() {
        let t = |m: &str| failure_kind(&PollError::Transport(m.into()));
        assert_eq!(t("read hr:0 timed out after 5 ms"), "timeout");
        assert_eq!(
            t("connect to 127.0.0.1:1: Connection refused (os error 111)"),
            "refused"
        );
        assert_eq!(t("read hr:0: malformed answer with 3 words"), "malformed");
        assert_eq!(t("read hr:0: connection closed by the PLC"), "other");
        assert_eq!(
            failure_kind(&PollError::Exception("IllegalDataAddress".into())),
            "exception"
        );
        assert_eq!(
            failure_kind(&PollError::Unsupported("opc-ua".into())),
            "other"
        );
    }

    #[test]
    fn a_made_up_command_name_is_counted_as_other() {
        assert_eq!(command_label("andon/ack"), "andon/ack");
        assert_eq!(command_label("x/../../etc"), "other");
    }

    #[test]
    fn lateness_falls_in_the_first_bucket_at_or_above_it() {
        let mut s = PlcSeries::default();
        s.observe_lateness(100); // 0.0001 s: the first bucket, inclusive
        s.observe_lateness(101);
        s.observe_lateness(10_000_000); // 10 s: +Inf
        assert_eq!(s.lateness_buckets[0], 1);
        assert_eq!(s.lateness_buckets[1], 1);
        assert_eq!(s.lateness_buckets[14], 1);
        assert_eq!(s.lateness_count, 3);
        assert_eq!(s.lateness_sum_us, 10_000_201);
    }

    #[test]
    fn a_core_without_a_pass_for_longer_than_its_budget_is_not_alive() {
        let r = Registry::default();
        let t0 = Instant::now();
        r.beat(t0);
        assert!(r.liveness(t0 + Duration::from_secs(1)).is_ok());
        let e = r.liveness(t0 + Duration::from_secs(11)).unwrap_err();
        assert!(e.0[0].contains("core loop stalled"), "{e:?}");
    }

    #[test]
    fn readiness_names_every_reason() {
        let r = Registry::default();
        r.mqtt_configured.store(true, Ordering::Relaxed);
        lock(&r.plcs).insert("p1".into(), PlcSeries::default());
        *lock(&r.outbox) = OutboxGauge {
            messages: 3,
            oldest_created_ms: Some(0),
            over_backlog: false,
        };
        let e = r.readiness(301_000).unwrap_err();
        assert_eq!(e.0.len(), 3, "{e:?}");
        assert!(e.0[0].contains("p1"));
        assert!(e.0[1].contains("broker"));
        assert!(e.0[2].contains("301 s old"));
        assert!(r.readiness(299_000).unwrap_err().0.len() == 2);
    }

    #[test]
    fn with_sparkplug_only_the_broker_is_ready_when_the_sparkplug_connection_is_up() {
        let r = Registry::default();
        r.mqtt_configured.store(true, Ordering::Relaxed);
        r.sparkplug_only.store(true, Ordering::Relaxed);
        assert!(r.readiness(0).unwrap_err().0[0].contains("broker"));
        r.sparkplug.connected.store(true, Ordering::Relaxed);
        assert_eq!(r.readiness(0), Ok(()));
    }
}
