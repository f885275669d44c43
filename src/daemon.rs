//! The daemon: wires acquisition, engine, store and uplink together, and supervises reloads.
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
//!
//! ## Reload (SIGHUP, SPEC §1 and §6)
//!
//! [`run_with_reload`] runs one *pipeline* (PLC tasks + core + uplink) per configuration. A valid
//! new configuration stops the running pipeline exactly as a shutdown does and starts a new one
//! in the same process. Nothing is lost on the way because the engine's per-equipment memory
//! (open downtime, andons, context, jobs, counter baselines, unsettled OEE minutes) is committed
//! with every batch: the new core reads it back with [`Engine::resume_memory`], which — unlike a
//! restart — does *not* send the equipment `offline` (the daemon never stopped watching). Events
//! the old core could not commit (disk full) are handed to the new core, not dropped.
//!
//! Equipment the new configuration removes is retired by the *old* core, which still has its
//! rules, just before it exits: open downtime ends with `closed_by = "reload"`, open andons
//! resolve with `resolved_by = "reload"`, committed in its last batch.
//!
//! What a reload restarts: every PLC task (added, removed, changed and unchanged alike — one
//! code path, and the per-PLC cadence counters start again from zero), and the MQTT session
//! (the birth `P/status` is re-published; the retained status reads `offline` for the moment
//! between the two sessions). An invalid file never reaches this module: `ms5-edge run` checks
//! it and keeps the running configuration.
//!
//! ## systemd
//!
//! `READY=1` is sent when the core has opened the database and restored every equipment and
//! every PLC task has been spawned (see [`crate::notify`] for what the watchdog means).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::acquire::{self, PlcCounters, PollReport};
use crate::clock::{rfc3339_ms, Clock};
use crate::config::Config;
use crate::engine::{Engine, Event, MachineView, PollInput};
use crate::notify::{Liveness, Notifier};
use crate::store::{Batch, Store, StoreError};

/// Events per transaction while the database is full: small enough to fit in the space a few
/// acknowledged outbox rows free.
const FULL_CHUNK: usize = 16;

/// Longest time the persisted engine memory may lag when nothing but telemetry happened.
const MEMORY_EVERY_MS: i64 = 1_000;
use crate::uplink::{self, InboundCommand, LiveMessage, UplinkStats};

/// Memory queue for events that could not be committed (disk full): at least 10 000 (SPEC §6).
const PENDING_CAP: usize = crate::store::pending::PENDING_CAP;

/// How often the systemd `STATUS=` line is recomputed (it counts the outbox).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Test-only knob (like the store's `MS5_EDGE_TEST_*`): `NAME:N` lets PLC `NAME` deliver `N`
/// poll reports and then blocks its task on a channel nobody reads, which is exactly what a
/// hung downstream does to a real poll loop. `tests/systemd_notify.rs` uses it to check that
/// the watchdog stops. Never set in production; ignored when the PLC does not exist.
const STALL_KNOB: &str = "MS5_EDGE_TEST_STALL_PLC";

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
    /// Configurations applied so far: 1 after start, +1 per successful reload.
    pub generation: u64,
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

/// Runs the whole pipeline until `shutdown` becomes true (no reloads, no systemd).
pub async fn run(
    config: Config,
    shutdown: watch::Receiver<bool>,
    observers: Observers,
) -> Result<(), DaemonError> {
    let (_no_reloads, reloads) = mpsc::channel(1);
    run_with_reload(config, reloads, shutdown, observers, Notifier::disabled()).await
}

/// How a pipeline takes over the engine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// Process start: the previous run stopped watching at its last heartbeat; every
    /// equipment goes `offline` from then (docs/decisions.md "Restart").
    Restart,
    /// Configuration reload: the previous pipeline of this process committed a moment ago.
    Reload,
}

/// Runs pipelines until `shutdown` becomes true: the first with `config`, then one per
/// configuration received on `reloads` (already validated by the caller).
pub async fn run_with_reload(
    mut config: Config,
    mut reloads: mpsc::Receiver<Config>,
    mut shutdown: watch::Receiver<bool>,
    observers: Observers,
    notifier: Notifier,
) -> Result<(), DaemonError> {
    let mut takeover = Takeover::Restart;
    let mut carried: Vec<Event> = Vec::new();
    let mut generation = 0u64;
    let mut reloads_open = true;
    loop {
        generation += 1;
        observers.view.send_modify(|v| v.generation = generation);
        let mut pipeline = Pipeline::start(
            &config,
            takeover,
            std::mem::take(&mut carried),
            &observers,
            &notifier,
        )
        .await?;
        let first_status = crate::notify::status_line(
            0,
            config.plcs.len(),
            None,
            config.mqtt.as_ref().map(|_| false),
            &[],
        );
        notifier.ready(&first_status);
        tracing::info!(
            plcs = config.plcs.len(),
            equipment = config.equipment.len(),
            generation,
            "ms5-edge running"
        );

        // Wait for shutdown, a new configuration, or the pipeline ending by itself (the core
        // failed: its poll channel closed, so every PLC task returned).
        let next = loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break None;
                    }
                }
                r = reloads.recv(), if reloads_open => match r {
                    Some(new) => break Some(new),
                    None => reloads_open = false,
                },
                _ = &mut pipeline.plcs_done => {
                    tracing::error!("the pipeline stopped by itself");
                    break None;
                }
            }
        };
        match next {
            None => {
                notifier.stopping();
                pipeline.stop(Vec::new()).await?;
                return Ok(());
            }
            Some(new) => {
                notifier.reloading();
                let removed: Vec<String> = config
                    .equipment
                    .iter()
                    .map(|e| e.code.clone())
                    .filter(|code| !new.equipment.iter().any(|e| &e.code == code))
                    .collect();
                describe_reload(&config, &new, &removed);
                carried = pipeline.stop(removed).await?;
                config = new;
                takeover = Takeover::Reload;
            }
        }
    }
}

/// Logs what a reload changes, one line per PLC or equipment added, removed or changed.
fn describe_reload(old: &Config, new: &Config, removed: &[String]) {
    for plc in &new.plcs {
        match old.plc(&plc.name) {
            None => tracing::info!(plc = %plc.name, "reload: PLC added"),
            Some(before) if before != plc => tracing::info!(plc = %plc.name, "reload: PLC changed"),
            Some(_) => {}
        }
    }
    for plc in old.plcs.iter().filter(|p| new.plc(&p.name).is_none()) {
        tracing::info!(plc = %plc.name, "reload: PLC removed");
    }
    for e in new.equipment.iter() {
        if !old.equipment.iter().any(|o| o.code == e.code) {
            tracing::info!(equipment = %e.code, "reload: equipment added");
        }
    }
    for code in removed {
        tracing::info!(equipment = %code, "reload: equipment removed; its open downtime and andons are closed by \"reload\"");
    }
}

/// One configuration's running parts.
struct Pipeline {
    /// Stops the PLC tasks and the uplink of this pipeline only.
    stop: watch::Sender<bool>,
    /// Equipment the old core must retire before it exits (set just before `stop`).
    retire: watch::Sender<Vec<String>>,
    /// Resolves when every PLC task has returned.
    plcs_done: tokio::task::JoinHandle<()>,
    core: std::thread::JoinHandle<Result<Vec<Event>, DaemonError>>,
    uplink: Option<tokio::task::JoinHandle<()>>,
}

impl Pipeline {
    /// Opens the database, starts the core (which restores every equipment) and waits until
    /// it has; then starts the uplink and the PLC tasks.
    async fn start(
        config: &Config,
        takeover: Takeover,
        carried: Vec<Event>,
        observers: &Observers,
        notifier: &Notifier,
    ) -> Result<Pipeline, DaemonError> {
        let clock = Clock::system();
        let data_dir = config.gateway.data_dir.clone();
        let limits = crate::store::Limits::from_storage(&config.storage);
        let store = tokio::task::spawn_blocking(move || Store::open_with(&data_dir, limits))
            .await
            .map_err(|e| DaemonError::Core(e.to_string()))??;
        let stream = store.stream().to_string();
        tracing::info!(db = %store.path().display(), %stream, "database open");

        let (stop, stop_rx) = watch::channel(false);
        let (retire, retire_rx) = watch::channel(Vec::new());
        let (poll_tx, poll_rx) = mpsc::channel::<PollReport>(256);
        let (cmd_tx, cmd_rx) = mpsc::channel::<InboundCommand>(64);
        let (live_tx, live_rx) = mpsc::channel::<LiveMessage>(1024);
        let (restored_tx, restored_rx) = oneshot::channel::<()>();
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
            let parts = CoreParts {
                config: config.clone(),
                clock,
                store,
                polls: poll_rx,
                commands: cmd_rx,
                live: live_tx,
                notify: outbox_changed.clone(),
                view: observers.view.clone(),
                status: status_tx,
                status_base: status,
                uplink: observers.uplink.clone(),
                notifier: notifier.clone(),
                takeover,
                carried,
                retire: retire_rx,
                restored: Some(restored_tx),
            };
            std::thread::Builder::new()
                .name("ms5-core".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .map_err(|e| DaemonError::Core(e.to_string()))?;
                    rt.block_on(core_loop(parts))
                })
                .map_err(|e| DaemonError::Core(e.to_string()))?
        };
        // The core drops the sender without sending when restoring failed: report its error.
        if restored_rx.await.is_err() {
            return Err(join_core(core)
                .await
                .err()
                .unwrap_or_else(|| DaemonError::Core("the core stopped while starting".into())));
        }

        let uplink = match &config.mqtt {
            Some(mqtt) => {
                let reader = crate::store::outbox::OutboxReader::open(&config.gateway.data_dir)?;
                let settings = uplink::UplinkSettings {
                    mqtt: mqtt.clone(),
                    gateway_id: config.gateway.id.clone(),
                    stream: stream.clone(),
                    started_at: rfc3339_ms(clock.now_ms()),
                    version: crate::version_string(),
                    guard: uplink::guard::GuardSettings::from_config(
                        config,
                        uplink::signature::load_key(&config.commands),
                    ),
                };
                let channels = uplink::UplinkChannels {
                    outbox_changed,
                    live: live_rx,
                    commands: cmd_tx,
                    status: status_rx,
                    shutdown: stop_rx.clone(),
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

        let handles = spawn_plcs(config, clock, poll_tx, stop_rx);
        let plcs_done = tokio::spawn(async move {
            for h in handles {
                let _ = h.await;
            }
        });
        Ok(Pipeline {
            stop,
            retire,
            plcs_done,
            core,
            uplink,
        })
    }

    /// Stops this pipeline: PLC tasks first (the core then commits its last batch, with the
    /// retirement of `removed` equipment, and exits), then the uplink. Returns the events the
    /// core could not commit, for the next pipeline.
    async fn stop(self, removed: Vec<String>) -> Result<Vec<Event>, DaemonError> {
        let _ = self.retire.send(removed);
        let _ = self.stop.send(true);
        let _ = self.plcs_done.await;
        // PLC tasks are gone: the poll channel closes and the core commits its last batch.
        let core_result = join_core(self.core).await;
        if let Some(uplink) = self.uplink {
            let _ = uplink.await;
        }
        core_result
    }
}

async fn join_core(
    core: std::thread::JoinHandle<Result<Vec<Event>, DaemonError>>,
) -> Result<Vec<Event>, DaemonError> {
    tokio::task::spawn_blocking(move || core.join())
        .await
        .map_err(|e| DaemonError::Core(e.to_string()))?
        .map_err(|_| DaemonError::Core("core thread panicked".into()))?
}

/// Spawns every PLC task, honouring the test-only [`STALL_KNOB`].
fn spawn_plcs(
    config: &Config,
    clock: Clock,
    out: mpsc::Sender<PollReport>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let knob = std::env::var(STALL_KNOB).ok().and_then(|v| {
        let (name, after) = v.rsplit_once(':')?;
        Some((name.to_string(), after.parse::<u64>().ok()?))
    });
    let Some((name, after)) = knob.filter(|(name, _)| config.plc(name).is_some()) else {
        return acquire::spawn_all(config, clock, out, stop);
    };
    tracing::warn!(plc = %name, after_reports = after, "{STALL_KNOB} is set: this PLC's task will stall (test only)");
    let (mut rest, mut stalled) = (config.clone(), config.clone());
    rest.plcs.retain(|p| p.name != name);
    stalled.plcs.retain(|p| p.name == name);
    let (relay_tx, mut relay_rx) = mpsc::channel::<PollReport>(1);
    let mut handles = acquire::spawn_all(&rest, clock, out.clone(), stop.clone());
    handles.extend(acquire::spawn_all(&stalled, clock, relay_tx, stop.clone()));
    let mut stop = stop;
    tokio::spawn(async move {
        for _ in 0..after {
            match relay_rx.recv().await {
                Some(r) => {
                    if out.send(r).await.is_err() {
                        return;
                    }
                }
                None => return,
            }
        }
        // Stop reading: the PLC task blocks on its full channel until the pipeline stops.
        let _ = stop.wait_for(|s| *s).await;
    });
    handles
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
    uplink: Arc<UplinkStats>,
    notifier: Notifier,
    takeover: Takeover,
    /// Events the previous pipeline could not commit (disk full), committed first.
    carried: Vec<Event>,
    /// Equipment to retire when the poll channel closes (a reload removed it).
    retire: watch::Receiver<Vec<String>>,
    /// Sent once every equipment is restored; dropped unsent when restoring failed.
    restored: Option<oneshot::Sender<()>>,
}

async fn core_loop(mut p: CoreParts) -> Result<Vec<Event>, DaemonError> {
    let now = p.clock.now_ms();
    let mut engine = Engine::new(&p.config, now);
    let mut pending: Vec<Event> = std::mem::take(&mut p.carried);
    match p.takeover {
        // Resume each equipment from its full memory when the previous run left one (open
        // downtime, andons, context, jobs, counters survive a restart), else from its last
        // state; either way it goes offline from the previous run's last heartbeat.
        Takeover::Restart => {
            let previous = p.store.machine_views()?;
            let last_seen = p.store.heartbeat_ms()?.unwrap_or(now);
            let mut without_memory = Vec::new();
            for code in engine.codes() {
                match p.store.engine_state(&code, now - 50 * 3_600_000)? {
                    (Some(memory), minutes) => {
                        pending.extend(engine.restore_memory(&code, memory, minutes, last_seen))
                    }
                    (None, _) => without_memory
                        .extend(previous.iter().filter(|v| v.equipment == code).cloned()),
                }
            }
            pending.extend(engine.restore(&without_memory, last_seen));
        }
        // A reload: the memory was committed by this process a moment ago; nothing went
        // offline. Equipment new in this configuration starts fresh (offline until polled).
        Takeover::Reload => {
            for code in engine.codes() {
                if let (Some(memory), minutes) =
                    p.store.engine_state(&code, now - 50 * 3_600_000)?
                {
                    engine.resume_memory(&code, memory, minutes);
                }
            }
        }
    }
    if let Some(restored) = p.restored.take() {
        let _ = restored.send(());
    }
    let mut liveness = Liveness::for_plcs(&p.config.plcs, Instant::now());
    let ping_every = p.notifier.ping_every();
    let mut next_ping = Instant::now();
    let mut next_status = Instant::now() + STATUS_EVERY;
    let mut last_status_line = String::new();
    let mut reported_stall: Vec<String> = Vec::new();
    let mut last_tick_ms = i64::MIN;
    let mut last_memory_ms = i64::MIN / 2;
    let mut health: BTreeMap<String, (i64, PlcCounters)> = BTreeMap::new();
    let mut commands_open = true;
    let mut last_seq = 0i64;
    let mut recent: Vec<String> = Vec::new();
    let mut reported_full = false;
    let mut next_prune = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last_store_key = (u64::MAX, false);
    let mut beat_every = Duration::from_millis(
        p.config
            .plcs
            .iter()
            .map(|plc| plc.poll_interval_ms)
            .min()
            .unwrap_or(1000)
            .clamp(50, 1000),
    );
    if let Some(every) = ping_every {
        beat_every = beat_every.min(every.max(Duration::from_millis(10)));
    }
    let mut beat = tokio::time::interval(beat_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            liveness.observe(&r.plc, Instant::now());
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
        // The last batch of a pipeline a reload replaces: close what is open on equipment the
        // new configuration removes (SPEC §6 "Reload").
        if closed {
            let removed = p.retire.borrow().clone();
            if !removed.is_empty() {
                pending.extend(engine.retire(&removed, now));
            }
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

        // The engine's memory is written with every batch that carries an event other than
        // telemetry (so it never lags the events it explains), and otherwise at most once a
        // second: a memory and its open minute buckets are saved together, so a snapshot up to
        // a second old loses no count after a crash, it only re-derives it. This keeps SD-card
        // writes at fast poll rates an order of magnitude lower.
        let now_ms = p.clock.now_ms();
        let save_memory = closed
            || now_ms >= last_memory_ms + MEMORY_EVERY_MS
            || pending
                .iter()
                .any(|e| !matches!(e, Event::Telemetry { .. }));
        let batch = Batch {
            events: &pending,
            telemetry_to_outbox: to_outbox,
            health: reports
                .iter()
                .map(|r| (r.plc.clone(), r.scheduled_ms, r.counters.clone()))
                .collect(),
            heartbeat_ms: now_ms,
            memories: if save_memory {
                engine.memories()
            } else {
                Vec::new()
            },
        };
        match p.store.commit(&batch) {
            Ok(seqs) => {
                if save_memory {
                    last_memory_ms = now_ms;
                }
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
            }
            Err(e) => {
                // A full database frees space a little at a time (acknowledged outbox rows,
                // retention): commit what fits now, oldest first, in small chunks, so a
                // backlog larger than the space just freed still drains. The engine's memory
                // goes with the last chunk only, never ahead of the events it explains.
                let mut committed = 0;
                if matches!(e, StoreError::Full(_)) {
                    while committed < pending.len() {
                        let end = (committed + FULL_CHUNK).min(pending.len());
                        let chunk = Batch {
                            events: &pending[committed..end],
                            telemetry_to_outbox: to_outbox,
                            health: Vec::new(),
                            heartbeat_ms: p.clock.now_ms(),
                            memories: if end == pending.len() {
                                engine.memories()
                            } else {
                                Vec::new()
                            },
                        };
                        match p.store.commit(&chunk) {
                            Ok(seqs) => {
                                if let Some(max) = seqs.iter().max() {
                                    last_seq = *max;
                                    p.notify.notify_one();
                                }
                                committed = end;
                            }
                            Err(_) => break,
                        }
                    }
                    pending.drain(..committed);
                }
                if pending.is_empty() {
                    if reported_full {
                        tracing::info!("database accepts writes again; queued events committed");
                        reported_full = false;
                    }
                } else {
                    if !reported_full {
                        tracing::error!(error = %e, queued = pending.len(), "cannot commit to the database; keeping events in memory and polling on");
                        reported_full = true;
                    }
                    // Shed telemetry first, oldest first, then the oldest of anything; counted.
                    let lost = crate::store::pending::shed(&mut pending, PENDING_CAP);
                    p.store.note_losses(lost);
                }
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

        // systemd: the watchdog is pinged only while every PLC keeps delivering reports (this
        // thread reaching here is the core's own proof of life), and the status line is kept
        // fresh. A disk-full commit failure is not a stall: polling goes on (SPEC §5).
        let mono = Instant::now();
        if let Some(every) = ping_every {
            if mono >= next_ping {
                next_ping = mono + every;
                let stalled = liveness.stalled(mono);
                if stalled.is_empty() {
                    p.notifier.watchdog();
                    if !reported_stall.is_empty() {
                        tracing::info!("every PLC task is making progress again");
                        reported_stall.clear();
                    }
                } else if reported_stall
                    .iter()
                    .map(String::as_str)
                    .ne(stalled.iter().copied())
                {
                    tracing::error!(plcs = %stalled.join(", "), "PLC poll loop stalled: withholding the systemd watchdog ping");
                    reported_stall = stalled.iter().map(|s| s.to_string()).collect();
                }
            }
        }
        if mono >= next_status || closed {
            next_status = mono + STATUS_EVERY;
            let online = p
                .config
                .plcs
                .iter()
                .filter(|plc| {
                    health
                        .get(&plc.name)
                        .is_some_and(|(_, c)| c.consecutive_failures == 0)
                })
                .count();
            let stalled = liveness.stalled(mono);
            let line = crate::notify::status_line(
                online,
                p.config.plcs.len(),
                p.store.outbox_depth().ok(),
                p.config
                    .mqtt
                    .as_ref()
                    .map(|_| p.uplink.connected.load(Ordering::Relaxed)),
                &stalled,
            );
            if line != last_status_line && !closed {
                p.notifier.status(&line);
                last_status_line = line;
            }
        }
    }
    Ok(pending)
}

fn describe_event(e: &Event) -> String {
    let at = rfc3339_ms(e.at_ms());
    let eq = e.equipment();
    match e {
        Event::StateChanged { from, to, .. } => format!("{at} {eq}: {from} → {to}"),
        Event::DowntimeStarted { record, .. } => format!(
            "{at} {eq}: downtime started ({} {}, since {})",
            record.reason.code,
            record.reason.category,
            rfc3339_ms(record.start_ms)
        ),
        Event::DowntimeEnded { record, .. } => format!(
            "{at} {eq}: {} ended after {:.1} s ({})",
            if record.minor {
                "minor stop"
            } else {
                "downtime"
            },
            (record.end_ms.unwrap_or(record.start_ms) - record.start_ms) as f64 / 1000.0,
            record.reason.code
        ),
        Event::AndonRaised { andon, .. } => format!(
            "{at} {eq}: ANDON {} {} ({})",
            andon.priority, andon.reason_code, andon.description
        ),
        Event::AndonEscalated { level, .. } => {
            format!("{at} {eq}: andon escalated to level {level}")
        }
        Event::AndonResolved { resolved_by, .. } => {
            format!("{at} {eq}: andon resolved by {resolved_by}")
        }
        Event::OeeSnapshot { data, .. } => format!(
            "{at} {eq}: shift {} OEE {}",
            data["shift"].as_str().unwrap_or("-"),
            data["oee"]
                .as_f64()
                .map(|v| format!("{:.1} %", v * 100.0))
                .unwrap_or_else(|| "-".into())
        ),
        other => format!("{at} {eq}: {}", other.name()),
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
