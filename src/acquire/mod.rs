//! Acquisition: talks to PLCs, knows protocols, not OEE.
//!
//! Each PLC gets its own task ([`run_plc`]) on an absolute schedule (see [`schedule`]); a slow
//! or dead PLC therefore delays no other. A poll turns raw registers into typed
//! [`SignalReading`]s here, at the edge, so the engine never sees a register slice.
//!
//! Invariants: every request has a timeout; after a transport error the connection is dropped
//! and re-opened (a reused Modbus TCP connection can fall out of step with transaction ids);
//! reconnects back off exponentially with jitter, capped at 10 s; the gateway never writes to
//! a PLC.

pub mod decode;
pub mod modbus;
pub mod plan;
pub mod schedule;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{Config, Plc, Protocol};

/// A decoded engineering value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Array(Vec<Value>),
}

impl Value {
    /// Truthiness for `running`: a bool, or a non-zero number.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            Value::UInt(u) => Some(*u != 0),
            Value::Float(f) => Some(*f != 0.0),
            Value::Array(_) => None,
        }
    }

    /// Numeric view for rates and speeds.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Array(_) => None,
        }
    }

    /// Counter view: non-negative integers only (a float counter is truncated).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Bool(b) => Some(u64::from(*b)),
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::UInt(u) => Some(*u),
            Value::Float(f) if *f >= 0.0 && f.is_finite() => Some(*f as u64),
            _ => None,
        }
    }

    /// Fault words as a list of integers (a scalar is a one-word list).
    pub fn as_words(&self) -> Vec<u64> {
        match self {
            Value::Array(items) => items.iter().map(|v| v.as_u64().unwrap_or(0)).collect(),
            other => vec![other.as_u64().unwrap_or(0)],
        }
    }
}

/// Signal quality, published beside each value (SPEC §4 telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good,
    Bad,
    Stale,
}

/// One signal's value in one poll; `value` is `None` when the read failed.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalReading {
    pub value: Option<Value>,
    pub quality: Quality,
}

/// Every signal of one equipment, read in one poll, keyed by signal name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EquipmentSample {
    pub equipment: String,
    pub signals: BTreeMap<String, SignalReading>,
}

/// Why a poll failed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PollError {
    /// Timeout, reset, refused, malformed or truncated frame: back off and reconnect.
    #[error("transport: {0}")]
    Transport(String),
    /// The PLC answered with an exception: the configuration is wrong for this PLC.
    #[error("PLC exception: {0}")]
    Exception(String),
    /// The protocol is configured but acquisition for it is not built into this binary.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Cadence and fault counters of one PLC, reported in `status` and `P/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlcCounters {
    pub polls: u64,
    pub failed_polls: u64,
    pub consecutive_failures: u32,
    pub skipped_ticks: u64,
    pub timeouts: u64,
    pub reconnects: u64,
    pub exceptions: u64,
    /// Lateness (actual start − scheduled) of the last poll, microseconds.
    pub last_lateness_us: u64,
    pub max_lateness_us: u64,
    /// Duration of the last poll cycle, microseconds.
    pub last_cycle_us: u64,
    pub last_error: Option<String>,
}

/// What one PLC task reports per scheduled tick.
#[derive(Debug, Clone)]
pub struct PollReport {
    pub plc: String,
    /// Scheduled tick time, UTC epoch milliseconds (the sample's timestamp).
    pub scheduled_ms: i64,
    pub outcome: Result<Vec<EquipmentSample>, PollError>,
    pub counters: PlcCounters,
}

/// A protocol driver: one poll reads every signal of every equipment on one PLC.
///
/// Implementations own their connection, open it lazily, drop it on any transport error and
/// put a timeout on every request.
pub trait Poller: Send {
    /// Reads everything once.
    fn poll(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Vec<EquipmentSample>, PollError>> + Send;
    /// Whether the last failure dropped the connection (counted as a reconnect on the next poll).
    fn connected(&self) -> bool;
}

/// Capped exponential backoff with full jitter for PLC reconnects (cap 10 s, SPEC §6).
pub fn reconnect_backoff(failures: u32, base: Duration) -> Duration {
    let cap = Duration::from_secs(10);
    let exp = base.saturating_mul(1u32 << failures.min(16));
    let ceiling = exp.min(cap);
    let jittered = fastrand::u64(ceiling.as_millis() as u64 / 2..=ceiling.as_millis() as u64);
    Duration::from_millis(jittered)
}

/// Spawns one task per PLC; each sends a [`PollReport`] per tick into `out`.
pub fn spawn_all(
    config: &Config,
    clock: Clock,
    out: mpsc::Sender<PollReport>,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    config
        .plcs
        .iter()
        .map(|plc| {
            let plc = plc.clone();
            let equipment: Vec<_> = config.equipment_of(&plc.name).cloned().collect();
            let out = out.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                match &plc.protocol {
                    Protocol::ModbusTcp { .. } => {
                        let poller = modbus::ModbusPoller::new(&plc, &equipment);
                        run_plc(plc, poller, clock, out, shutdown).await
                    }
                    Protocol::EthernetIp { .. } => {
                        let poller = Unsupported("EtherNet/IP acquisition is not built yet");
                        run_plc(plc, poller, clock, out, shutdown).await
                    }
                }
            })
        })
        .collect()
}

/// A poller for a protocol this build cannot speak: every poll fails, visibly.
struct Unsupported(&'static str);

impl Poller for Unsupported {
    async fn poll(&mut self) -> Result<Vec<EquipmentSample>, PollError> {
        Err(PollError::Unsupported(self.0.to_string()))
    }
    fn connected(&self) -> bool {
        false
    }
}

/// The poll loop of one PLC: absolute schedule, counters, backoff after failures.
pub async fn run_plc<P: Poller>(
    plc: Plc,
    mut poller: P,
    clock: Clock,
    out: mpsc::Sender<PollReport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(plc.poll_interval_ms);
    let mut ticks = schedule::Schedule::new(clock.mono_now(), interval);
    let mut counters = PlcCounters::default();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut was_connected = false;
    loop {
        let tick = ticks.next_tick(clock.mono_now());
        counters.skipped_ticks += tick.skipped;
        tokio::select! {
            _ = tokio::time::sleep_until(tick.at.into()) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        // During backoff, ticks pass without a request: the PLC is still failing.
        if let Some(at) = retry_at {
            if tokio::time::Instant::now() < at {
                continue;
            }
        }
        let started = std::time::Instant::now();
        let lateness = started.saturating_duration_since(tick.at);
        counters.last_lateness_us = lateness.as_micros() as u64;
        counters.max_lateness_us = counters.max_lateness_us.max(counters.last_lateness_us);
        let outcome = tokio::time::timeout(
            Duration::from_millis(plc.timeout_ms.saturating_mul(4).max(1000)),
            poller.poll(),
        )
        .await
        .unwrap_or_else(|_| Err(PollError::Transport("poll cycle timed out".into())));
        counters.last_cycle_us = started.elapsed().as_micros() as u64;
        counters.polls += 1;
        match &outcome {
            Ok(_) => {
                if counters.consecutive_failures > 0 {
                    tracing::info!(plc = %plc.name, "PLC reachable again");
                }
                if !was_connected && counters.polls > 1 {
                    counters.reconnects += 1;
                }
                was_connected = true;
                counters.consecutive_failures = 0;
                counters.last_error = None;
                retry_at = None;
            }
            Err(e) => {
                counters.failed_polls += 1;
                counters.consecutive_failures += 1;
                match e {
                    PollError::Transport(m) if m.contains("timed out") => counters.timeouts += 1,
                    PollError::Exception(_) => counters.exceptions += 1,
                    _ => {}
                }
                let message = e.to_string();
                if counters.last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(plc = %plc.name, error = %message, "poll failed");
                }
                counters.last_error = Some(message);
                was_connected = poller.connected();
                if !was_connected {
                    let wait = reconnect_backoff(
                        counters.consecutive_failures.saturating_sub(1),
                        Duration::from_millis(200),
                    );
                    retry_at = Some(tokio::time::Instant::now() + wait);
                }
            }
        }
        let report = PollReport {
            plc: plc.name.clone(),
            scheduled_ms: clock.wall_ms_at(tick.at),
            outcome,
            counters: counters.clone(),
        };
        // Bounded channel: if the core is behind, the poll loop waits rather than piling up.
        if out.send(report).await.is_err() {
            return;
        }
    }
}
