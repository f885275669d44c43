//! The daemon: wires acquisition, engine, store and uplink together.
//!
//! ```text
//! PLC tasks ──PollReport──► core thread (Engine + Store) ──notify──► uplink task ──► broker
//!                               ▲                                        │
//!                               └────────────── commands ◄───────────────┘
//! ```
//!
//! The core runs on its own OS thread with a single-threaded runtime: it owns the engine and
//! the SQLite writer, so blocking SQLite calls never stall the async worker threads that poll
//! PLCs and talk MQTT. All channels are bounded.
//!
//! Shutdown (SIGTERM/SIGINT → the `shutdown` watch): PLC tasks stop and drop their senders; the
//! core commits what it has and exits when the poll channel closes; the uplink waits briefly for
//! in-flight PUBACKs, publishes `{"state":"offline"}` and disconnects. Every committed event
//! stays in the outbox until acknowledged, so nothing committed is lost at any step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};

use crate::acquire::{self, PlcCounters, PollReport};
use crate::clock::{rfc3339_ms, Clock};
use crate::config::Config;
use crate::engine::{Engine, Event, MachineView, PollInput};
use crate::store::{Batch, Store, StoreError};
use crate::uplink::{self, InboundCommand, LiveMessage, UplinkStats};

/// Memory queue for events that could not be committed (disk full): at least 10 000 (SPEC §6).
const PENDING_CAP: usize = crate::store::pending::PENDING_CAP;

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("core thread: {0}")]
    Core(String),
}

/// What the daemon shows to the demo view and tests while it runs.
#[derive(Debug, Clone, Default)]
pub struct DaemonView {
    pub stream: String,
    pub machines: Vec<MachineView>,
    pub plcs: BTreeMap<String, PlcCounters>,
    /// Highest outbox seq committed so far.
    pub last_seq: i64,
    /// Most recent non-telemetry events, newest last (bounded).
    pub recent: Vec<String>,
    /// Events waiting in memory because the database refused them.
    pub pending: usize,
}

/// Handles a caller of [`run`] may keep.
#[derive(Clone)]
pub struct Observers {
    pub view: watch::Sender<DaemonView>,
    pub uplink: Arc<UplinkStats>,
}

impl Default for Observers {
    fn default() -> Self {
        Observers {
            view: watch::channel(DaemonView::default()).0,
            uplink: Arc::new(UplinkStats::default()),
        }
    }
}

/// Runs the whole pipeline until `shutdown` becomes true.
pub async fn run(
    config: Config,
    shutdown: watch::Receiver<bool>,
    observers: Observers,
) -> Result<(), DaemonError> {
    let clock = Clock::system();
    let data_dir = config.gateway.data_dir.clone();
    let limits = crate::store::Limits::from_storage(&config.storage);
    let store = tokio::task::spawn_blocking(move || Store::open_with(&data_dir, limits))
        .await
        .map_err(|e| DaemonError::Core(e.to_string()))??;
    let stream = store.stream().to_string();
    tracing::info!(db = %store.path().display(), %stream, "database open");

    let (poll_tx, poll_rx) = mpsc::channel::<PollReport>(256);
    let (cmd_tx, cmd_rx) = mpsc::channel::<InboundCommand>(64);
    let (live_tx, live_rx) = mpsc::channel::<LiveMessage>(1024);
    let outbox_changed = Arc::new(Notify::new());
    let status = serde_json::json!({
        "state": "online",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339_ms(clock.now_ms()),
        "stream": stream,
    });
    let (status_tx, status_rx) = watch::channel(status.clone());

    // The core thread: engine + SQLite writer.
    let core = {
        let config = config.clone();
        let notify = outbox_changed.clone();
        let view = observers.view.clone();
        let stats = observers.uplink.clone();
        std::thread::Builder::new()
            .name("ms5-core".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| DaemonError::Core(e.to_string()))?;
                rt.block_on(core_loop(CoreParts {
                    config,
                    clock,
                    store,
                    polls: poll_rx,
                    commands: cmd_rx,
                    live: live_tx,
                    notify,
                    view,
                    status: status_tx,
                    status_base: status,
                    _uplink: stats,
                }))
            })
            .map_err(|e| DaemonError::Core(e.to_string()))?
    };

    let uplink = match &config.mqtt {
        Some(mqtt) => {
            let reader = crate::store::outbox::OutboxReader::open(&config.gateway.data_dir)?;
            let settings = uplink::UplinkSettings {
                mqtt: mqtt.clone(),
                gateway_id: config.gateway.id.clone(),
                stream: stream.clone(),
                started_at: rfc3339_ms(clock.now_ms()),
                version: crate::version_string(),
            };
            let channels = uplink::UplinkChannels {
                outbox_changed,
                live: live_rx,
                commands: cmd_tx,
                status: status_rx,
                shutdown: shutdown.clone(),
            };
            Some(tokio::spawn(uplink::run(
                settings,
                reader,
                channels,
                observers.uplink.clone(),
            )))
        }
        None => {
            tracing::info!(
                "no [mqtt] section: events are kept in the outbox until a broker is configured"
            );
            drop(cmd_tx);
            drop(live_rx);
            None
        }
    };

    let plcs = acquire::spawn_all(&config, clock, poll_tx, shutdown.clone());
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!(
                "polling {} PLC(s), {} equipment",
                config.plcs.len(),
                config.equipment.len()
            )),
        ],
    );
    tracing::info!(
        plcs = config.plcs.len(),
        equipment = config.equipment.len(),
        "ms5-edge running"
    );

    for plc in plcs {
        let _ = plc.await;
    }
    // PLC tasks are gone: the poll channel closes and the core commits its last batch.
    let core_result = tokio::task::spawn_blocking(move || core.join())
        .await
        .map_err(|e| DaemonError::Core(e.to_string()))?
        .map_err(|_| DaemonError::Core("core thread panicked".into()))?;
    if let Some(uplink) = uplink {
        let _ = uplink.await;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    core_result
}

struct CoreParts {
    config: Config,
    clock: Clock,
    store: Store,
    polls: mpsc::Receiver<PollReport>,
    commands: mpsc::Receiver<InboundCommand>,
    live: mpsc::Sender<LiveMessage>,
    notify: Arc<Notify>,
    view: watch::Sender<DaemonView>,
    status: watch::Sender<serde_json::Value>,
    status_base: serde_json::Value,
    _uplink: Arc<UplinkStats>,
}

async fn core_loop(mut p: CoreParts) -> Result<(), DaemonError> {
    let now = p.clock.now_ms();
    let mut engine = Engine::new(&p.config, now);
    let previous = p.store.machine_views()?;
    let last_seen = p.store.heartbeat_ms()?.unwrap_or(now);
    // Resume each equipment from its full memory when the previous run left one (open
    // downtime, andons, context, jobs, counters survive a restart), else from its last state.
    let mut pending: Vec<Event> = Vec::new();
    let mut without_memory = Vec::new();
    for code in engine.codes() {
        match p.store.engine_state(&code, now - 50 * 3_600_000)? {
            (Some(memory), minutes) => {
                pending.extend(engine.restore_memory(&code, memory, minutes, last_seen))
            }
            (None, _) => {
                without_memory.extend(previous.iter().filter(|v| v.equipment == code).cloned())
            }
        }
    }
    pending.extend(engine.restore(&without_memory, last_seen));
    let mut last_tick_ms = i64::MIN;
    let mut health: BTreeMap<String, (i64, PlcCounters)> = BTreeMap::new();
    let mut commands_open = true;
    let mut last_seq = 0i64;
    let mut recent: Vec<String> = Vec::new();
    let mut reported_full = false;
    let mut next_prune = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last_store_key = (u64::MAX, false);
    let beat_every = Duration::from_millis(
        p.config
            .plcs
            .iter()
            .map(|plc| plc.poll_interval_ms)
            .min()
            .unwrap_or(1000)
            .clamp(50, 1000),
    );
    let mut beat = tokio::time::interval(beat_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let mut closed = false;
    while !closed {
        let mut reports = Vec::new();
        tokio::select! {
            r = p.polls.recv() => match r {
                Some(r) => reports.push(r),
                None => closed = true,
            },
            c = p.commands.recv(), if commands_open => match c {
                Some(c) => pending.extend(apply_command(&p, &mut engine, &c)),
                None => commands_open = false,
            },
            _ = beat.tick() => {}
        }
        // Take whatever else is already queued: one transaction for the lot.
        while reports.len() < 512 {
            match p.polls.try_recv() {
                Ok(r) => reports.push(r),
                Err(_) => break,
            }
        }
        let mut status_changed = false;
        for r in &reports {
            let input = match &r.outcome {
                Ok(samples) => PollInput::Samples(samples.clone()),
                Err(_) => PollInput::Failed {
                    consecutive: r.counters.consecutive_failures,
                },
            };
            pending.extend(engine.on_poll(&r.plc, r.scheduled_ms, &input));
            let before = health
                .get(&r.plc)
                .map(|(_, c)| (c.consecutive_failures > 0, c.last_error.clone()));
            let after = (
                r.counters.consecutive_failures > 0,
                r.counters.last_error.clone(),
            );
            status_changed |= before.as_ref() != Some(&after);
            health.insert(r.plc.clone(), (r.scheduled_ms, r.counters.clone()));
        }

        // Time-driven rules (downtime after micro_stop_s, andon timing, escalation, shift
        // changes, OEE snapshots), at most every 250 ms.
        let now = p.clock.now_ms();
        if now >= last_tick_ms + 250 {
            last_tick_ms = now;
            pending.extend(engine.on_tick(now));
        }

        // Telemetry that is not stored-and-forwarded goes live at QoS 0, never into the outbox.
        let to_outbox = p.config.telemetry.store_and_forward;
        if !to_outbox {
            for e in pending
                .iter()
                .filter(|e| matches!(e, Event::Telemetry { .. }))
            {
                let (_, _, topic, data, _) = crate::store::outbox::describe(e);
                let msg = LiveMessage {
                    topic,
                    payload: serde_json::json!({
                        "specversion": "1.0",
                        "id": uuid::Uuid::now_v7().to_string(),
                        "source": format!("ms5-edge/{}", p.config.gateway.id),
                        "type": "ms5.telemetry",
                        "time": rfc3339_ms(e.at_ms()),
                        "datacontenttype": "application/json",
                        "equipment": e.equipment(),
                        "data": data,
                    })
                    .to_string(),
                    qos: rumqttc::QoS::AtMostOnce,
                    retain: false,
                };
                let _ = p.live.try_send(msg);
            }
        }

        let batch = Batch {
            events: &pending,
            telemetry_to_outbox: to_outbox,
            health: reports
                .iter()
                .map(|r| (r.plc.clone(), r.scheduled_ms, r.counters.clone()))
                .collect(),
            heartbeat_ms: p.clock.now_ms(),
            memories: engine.memories(),
        };
        match p.store.commit(&batch) {
            Ok(seqs) => {
                if reported_full {
                    tracing::info!("database accepts writes again; queued events committed");
                    reported_full = false;
                }
                if let Some(max) = seqs.iter().max() {
                    last_seq = *max;
                    p.notify.notify_one();
                }
                for e in pending
                    .iter()
                    .filter(|e| !matches!(e, Event::Telemetry { .. }))
                {
                    recent.push(describe_event(e));
                }
                if recent.len() > 50 {
                    recent.drain(..recent.len() - 50);
                }
                pending.clear();
                if watchdog {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
            }
            Err(e) => {
                if !reported_full {
                    tracing::error!(error = %e, queued = pending.len(), "cannot commit to the database; keeping events in memory and polling on");
                    reported_full = true;
                }
                // Shed telemetry first, oldest first, then the oldest of anything; counted.
                let lost = crate::store::pending::shed(&mut pending, PENDING_CAP);
                p.store.note_losses(lost);
            }
        }

        // Retention in small steps (store-and-forward, issue 5): every minute, every second
        // while a backlog remains; a failure (e.g. disk full) is retried at the next step.
        if tokio::time::Instant::now() >= next_prune {
            let more = match p.store.prune_step(p.clock.now_ms()) {
                Ok(r) => r.more,
                Err(e) => {
                    tracing::debug!(error = %e, "retention step failed; retrying later");
                    false
                }
            };
            next_prune =
                tokio::time::Instant::now() + Duration::from_secs(if more { 1 } else { 60 });
        }
        // Drop and loss counters, and entering or leaving the disk-full state, republish P/status.
        let store_key = (p.store.health_version(), reported_full);
        if store_key != last_store_key {
            last_store_key = store_key;
            status_changed = true;
        }
        if status_changed {
            let store_health = p.store.health(pending.len());
            let mut s = p.status_base.clone();
            s["health"] = serde_json::json!({
                "plcs": health.iter().map(|(k, (t, c))| (k.clone(), serde_json::json!({
                    "online": c.consecutive_failures == 0,
                    "last_poll": rfc3339_ms(*t),
                    "counters": c,
                }))).collect::<serde_json::Map<_, _>>(),
                "store": store_health,
            });
            let _ = p.status.send(s);
        }
        let pending_len = pending.len();
        p.view.send_modify(|v| {
            v.stream = p.store.stream().to_string();
            v.machines = engine.views();
            v.plcs = health
                .iter()
                .map(|(k, (_, c))| (k.clone(), c.clone()))
                .collect();
            v.last_seq = last_seq;
            v.recent = recent.clone();
            v.pending = pending_len;
        });
    }
    Ok(())
}

fn describe_event(e: &Event) -> String {
    match e {
        Event::StateChanged {
            equipment,
            from,
            to,
            at_ms,
        } => format!("{} {equipment}: {from} → {to}", rfc3339_ms(*at_ms)),
        other => format!(
            "{} {}: {}",
            rfc3339_ms(other.at_ms()),
            other.equipment(),
            other.name()
        ),
    }
}

/// Parses and applies one command; replies exactly once on `P/reply`.
fn apply_command(p: &CoreParts, engine: &mut Engine, cmd: &InboundCommand) -> Vec<Event> {
    let now = p.clock.now_ms();
    let (reply, events) = match crate::engine::command::parse(&cmd.path, &cmd.payload) {
        Err(rejected) => (
            serde_json::json!({"request_id": rejected.request_id, "ok": false, "error": rejected.error}),
            Vec::new(),
        ),
        Ok(parsed) => match engine.on_command(now, &parsed) {
            Ok(events) => (
                serde_json::json!({"request_id": parsed.request_id, "ok": true}),
                events,
            ),
            Err(error) => (
                serde_json::json!({"request_id": parsed.request_id, "ok": false, "error": error}),
                Vec::new(),
            ),
        },
    };
    if reply["ok"] == false {
        tracing::info!(command = %cmd.path, error = %reply["error"], "command rejected");
    }
    let _ = p.live.try_send(LiveMessage {
        topic: "reply".into(),
        payload: reply.to_string(),
        qos: rumqttc::QoS::AtLeastOnce,
        retain: false,
    });
    events
}
