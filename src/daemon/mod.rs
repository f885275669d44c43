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
//! ## P/status
//!
//! The core owns the `P/status` payload and keeps it in a watch channel the uplink reads. The
//! value is refreshed at least every second (silently), so whatever the uplink publishes —
//! on connect, on its 60 s timer — carries current health; the channel is *notified* (the
//! uplink publishes at once) only when a health counter changes: a PLC's error state, the
//! drop and loss counts, entering or leaving the disk-full state.
//!
//! ## systemd
//!
//! `READY=1` is sent when the core has opened the database and restored every equipment and
//! every PLC task has been spawned (see [`crate::notify`] for what the watchdog means). The
//! integrity check of the open runs before it; while it runs, `EXTEND_TIMEOUT_USEC=` is sent
//! every 2 s so a large database never trips `TimeoutStartSec`.

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

/// How stale the `health` in the `P/status` watch may get between counter changes. Rebuilding
/// it on every batch would cost CPU at fast poll rates for a message sent once a minute.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// Test-only knob: `N` makes the core notify the `P/status` watch every `N` s (so the uplink
/// republishes what it holds), standing in for the uplink's 60 s timer in
/// `tests/status_health.rs`. Never set in production.
const STATUS_KNOB: &str = "MS5_EDGE_TEST_STATUS_S";

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

/// Exit status of `ms5-edge run` when the database file was deleted or replaced under it
/// (SPEC §7 "The database file"): systemd restarts the unit on a fresh database.
pub const EXIT_DATABASE_GONE: u8 = 3;

/// While the database is being opened and checked, systemd is asked every
/// `OPEN_EXTEND_EVERY` for `OPEN_EXTEND_BY` more (`EXTEND_TIMEOUT_USEC`).
const OPEN_EXTEND_EVERY: Duration = Duration::from_secs(2);
const OPEN_EXTEND_BY: Duration = Duration::from_secs(10);

/// How often the core checks that the database file is still the one it opened.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

impl DaemonError {
    /// The process exit status for this error: [`EXIT_DATABASE_GONE`] when the database file
    /// went away, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Store(StoreError::FileGone { .. }) => EXIT_DATABASE_GONE,
            _ => 1,
        }
    }
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
                // The core ended by itself (e.g. the database file went away): stop at once,
                // without waiting for PLC tasks to notice the closed channel.
                _ = pipeline.core_done.notified() => {
                    tracing::error!("the core stopped by itself; stopping the pipeline");
                    break None;
                }
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
    /// Notified when the core thread's loop returns (a stored permit if nobody waits yet).
    core_done: Arc<Notify>,
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
        // Opening runs `PRAGMA quick_check`, O(database size): seconds to minutes for a large
        // database on an SD card. It stays *before* READY=1 (a corrupt file must be moved aside
        // before anything reads or writes it), and systemd is asked for more time while it
        // runs, so TimeoutStartSec never kills a healthy check.
        let opening = tokio::task::spawn_blocking(move || Store::open_with(&data_dir, limits));
        tokio::pin!(opening);
        let started = tokio::time::Instant::now();
        let mut extend = tokio::time::interval_at(started + OPEN_EXTEND_EVERY, OPEN_EXTEND_EVERY);
        let store = loop {
            tokio::select! {
                opened = &mut opening => break opened,
                _ = extend.tick() => {
                    let waited = started.elapsed().as_secs();
                    if waited < OPEN_EXTEND_EVERY.as_secs() * 2 {
                        tracing::info!("checking the database (PRAGMA quick_check); a large database takes a while");
                    }
                    notifier.extend_timeout(
                        OPEN_EXTEND_BY,
                        &format!("checking the database integrity ({waited} s so far)"),
                    );
                }
            }
        }
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
        let core_done = Arc::new(Notify::new());
        let core = {
            let done = core_done.clone();
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
                    let result = rt.block_on(core_loop(parts));
                    done.notify_one();
                    result
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
            core_done,
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
    let mut next_file_check = Instant::now() + FILE_CHECK_EVERY;
    let mut next_status_refresh = Instant::now();
    let status_republish = status_republish_knob();
    let mut next_republish = Instant::now();
    let mut closed = false;
    while !closed {
        let mut reports = Vec::new();
        tokio::select! {
            r = p.polls.recv() => match r {
                Some(r) => reports.push(r),
                None => closed = true,
            },
            c = p.commands.recv(), if commands_open => match c {
                Some(c) => {
                    let done = apply_command(
                        &mut p.store,
                        &mut engine,
                        &mut pending,
                        p.clock.now_ms(),
                        p.config.telemetry.store_and_forward,
                        &c,
                    );
                    if let Some(seq) = done.committed_seq {
                        last_seq = last_seq.max(seq);
                        p.notify.notify_one();
                    }
                    recent.extend(done.events.iter().map(describe_event));
                    // Replied only now: ok:true means committed (SPEC §7 "Replies after commit").
                    let _ = p.live.try_send(LiveMessage {
                        topic: "reply".into(),
                        payload: done.reply.to_string(),
                        qos: rumqttc::QoS::AtLeastOnce,
                        retain: false,
                    });
                }
                None => commands_open = false,
            },
            _ = beat.tick() => {}
        }
        // A database file deleted or replaced under us: every later commit would go to a file
        // nobody can see. Stop (exit status 3) so that systemd restarts on a fresh database.
        if Instant::now() >= next_file_check {
            next_file_check = Instant::now() + FILE_CHECK_EVERY;
            if let Err(e) = p.store.check_file() {
                tracing::error!(
                    error = %e,
                    uncommitted = pending.len(),
                    "DATABASE FILE GONE: stopping with exit status {EXIT_DATABASE_GONE} so that the service restarts on a new database (a new stream)"
                );
                return Err(e.into());
            }
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
                let (_, event_type, topic, data, _) = crate::store::outbox::describe(e);
                let id = uuid::Uuid::now_v7().to_string();
                let data = data.to_string();
                let msg = LiveMessage {
                    topic,
                    payload: crate::cloudevents::frame(
                        &p.config.gateway.id,
                        None,
                        &crate::cloudevents::Event {
                            id: &id,
                            event_type,
                            time_ms: e.at_ms(),
                            equipment: Some(e.equipment()),
                            data: &data,
                        },
                    ),
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
                p.store.memories_of(&engine)
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
                        let memories = if end == pending.len() {
                            p.store.memories_of(&engine)
                        } else {
                            Vec::new()
                        };
                        let chunk = Batch {
                            events: &pending[committed..end],
                            telemetry_to_outbox: to_outbox,
                            health: Vec::new(),
                            heartbeat_ms: p.clock.now_ms(),
                            memories,
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
        // The watch always holds the current health (at most STATUS_REFRESH old), so every
        // `P/status` the uplink publishes — on connect, on its 60 s timer — is current; the
        // receiver is *notified* (an immediate publish) only when a health counter changed.
        let mono_now = Instant::now();
        if status_changed || mono_now >= next_status_refresh {
            next_status_refresh = mono_now + STATUS_REFRESH;
            let s = status_payload(&p.status_base, &health, p.store.health(pending.len()));
            p.status.send_if_modified(|current| {
                *current = s;
                status_changed
            });
        }
        if let Some(every) = status_republish {
            if mono_now >= next_republish {
                next_republish = mono_now + every;
                // Test knob: publish what the watch holds now, without refreshing it first.
                p.status.send_modify(|_| {});
            }
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

/// The `P/status` payload: the birth fields plus the current `health` section.
fn status_payload(
    base: &serde_json::Value,
    health: &BTreeMap<String, (i64, PlcCounters)>,
    store: crate::store::StoreHealth,
) -> serde_json::Value {
    let mut s = base.clone();
    s["health"] = serde_json::json!({
        "plcs": health.iter().map(|(k, (t, c))| (k.clone(), serde_json::json!({
            "online": c.consecutive_failures == 0,
            "last_poll": rfc3339_ms(*t),
            "counters": c,
        }))).collect::<serde_json::Map<_, _>>(),
        "store": store,
    });
    s
}

/// The [`STATUS_KNOB`] period, if set (logged at warn: tests only).
fn status_republish_knob() -> Option<Duration> {
    let secs: u64 = std::env::var(STATUS_KNOB).ok()?.trim().parse().ok()?;
    tracing::warn!(
        knob = STATUS_KNOB,
        value = secs,
        "test knob set in the environment"
    );
    Some(Duration::from_secs(secs.max(1)))
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

/// What handling one command came to: the reply to send and what was committed.
struct CommandDone {
    reply: serde_json::Value,
    /// The events the command caused, committed (empty when it was refused).
    events: Vec<Event>,
    /// Highest outbox seq committed on the way (the backlog and the command's events).
    committed_seq: Option<i64>,
}

/// Parses and applies one command and commits the events it caused *before* the reply is
/// decided (SPEC §7 "Replies after commit"): `ok:true` only once they are committed.
///
/// Events still waiting from a full disk are committed first (their seqs come first). If the
/// command's events cannot be committed — the disk is full, or any other store error — the
/// engine is put back exactly as it was before the command and the reply is `ok:false`,
/// `"not committed: …"`: the command's change is not kept, and nothing of it waits in memory.
/// The engine's memory is committed with the command's events, so a restart keeps the change.
fn apply_command(
    store: &mut Store,
    engine: &mut Engine,
    pending: &mut Vec<Event>,
    now_ms: i64,
    telemetry_to_outbox: bool,
    cmd: &InboundCommand,
) -> CommandDone {
    let refuse = |request_id: Option<String>, error: String| {
        tracing::info!(command = %cmd.path, %error, "command rejected");
        CommandDone {
            reply: serde_json::json!({"request_id": request_id, "ok": false, "error": error}),
            events: Vec::new(),
            committed_seq: None,
        }
    };
    let parsed = match crate::engine::command::parse(&cmd.path, &cmd.payload) {
        Ok(parsed) => parsed,
        Err(rejected) => return refuse(rejected.request_id, rejected.error),
    };
    let rid = Some(parsed.request_id.clone());
    // The whole engine, so that a failed commit can undo the command completely. Commands are
    // rare (budgeted by the uplink); a clone per command is cheap next to an fsync.
    let before = engine.clone();
    let events = match engine.on_command(now_ms, &parsed) {
        Ok(events) => events,
        Err(error) => return refuse(rid, error),
    };
    let mut committed_seq = None;
    let mut backlog_error = None;
    if !pending.is_empty() {
        match commit_backlog(store, pending, telemetry_to_outbox, now_ms) {
            Ok(seq) => committed_seq = seq,
            Err(e) => backlog_error = Some(e),
        }
    }
    let result = match backlog_error {
        Some(e) => Err(e),
        None => {
            let memories = store.memories_of(engine);
            store
                .commit(&Batch {
                    events: &events,
                    telemetry_to_outbox,
                    health: Vec::new(),
                    heartbeat_ms: now_ms,
                    memories,
                })
                .map(|seqs| seqs.into_iter().max())
        }
    };
    match result {
        Ok(seq) => CommandDone {
            reply: serde_json::json!({"request_id": rid, "ok": true}),
            events,
            committed_seq: seq.or(committed_seq),
        },
        Err(e) => {
            *engine = before;
            let why = match e {
                StoreError::Full(_) => "disk full".to_string(),
                other => other.to_string(),
            };
            tracing::warn!(command = %cmd.path, reason = %why, "command not applied: its events could not be committed");
            let mut done = refuse(rid, format!("not committed: {why}"));
            done.committed_seq = committed_seq;
            done
        }
    }
}

/// Commits every event waiting in `pending` (oldest first, in chunks of [`FULL_CHUNK`] once
/// the whole lot does not fit), removing what was committed. `Err` when some remain.
fn commit_backlog(
    store: &mut Store,
    pending: &mut Vec<Event>,
    telemetry_to_outbox: bool,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let mut max_seq = None;
    let mut committed = 0;
    let mut last_error = None;
    while committed < pending.len() {
        let end = (committed + FULL_CHUNK).min(pending.len());
        let chunk = Batch {
            events: &pending[committed..end],
            telemetry_to_outbox,
            health: Vec::new(),
            heartbeat_ms: now_ms,
            memories: Vec::new(),
        };
        match store.commit(&chunk) {
            Ok(seqs) => {
                max_seq = seqs.into_iter().max().or(max_seq);
                committed = end;
            }
            Err(e) => {
                last_error = Some(e);
                break;
            }
        }
    }
    pending.drain(..committed);
    match last_error {
        Some(e) => Err(e),
        None => Ok(max_seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MachineState;
    use crate::store::{Limits, ReadOnly};

    const BAGGER: &str = "BP01.PACK.BAG1";
    const NOW: i64 = 1_780_000_000_000;

    fn engine() -> Engine {
        let text = crate::demo::config_text(1502, 1503, "/tmp/unused", None);
        let config = crate::config::load_str(&text, "t.toml")
            .expect("demo config")
            .config;
        Engine::new(&config, NOW)
    }

    fn context_command(request_id: &str) -> InboundCommand {
        InboundCommand::unbudgeted(
            format!("{BAGGER}/context"),
            format!(r#"{{"request_id":"{request_id}","by":"test","operator":"alice"}}"#)
                .into_bytes(),
        )
    }

    fn state_change(at_ms: i64) -> Event {
        Event::StateChanged {
            equipment: BAGGER.into(),
            from: MachineState::Running,
            to: MachineState::Stopped,
            at_ms,
        }
    }

    /// A store whose page limit is reached: the next commit fails with `StoreError::Full`.
    fn full_store(dir: &std::path::Path) -> Store {
        let pages: u64 = {
            let s = Store::open(dir).expect("store");
            drop(s);
            let conn = rusqlite::Connection::open(dir.join(crate::store::DB_FILE)).unwrap();
            conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
                .unwrap() as u64
        };
        let limits = Limits {
            max_page_count: Some(pages + 4),
            ..Limits::default()
        };
        let mut store = Store::open_with(dir, limits).expect("store with a page limit");
        for i in 0..100_000 {
            let events = vec![state_change(NOW + i)];
            match store.commit(&Batch {
                events: &events,
                ..Batch::default()
            }) {
                Ok(_) => continue,
                Err(StoreError::Full(_)) => return store,
                Err(e) => panic!("unexpected store error {e}"),
            }
        }
        panic!("the page limit was never reached");
    }

    #[test]
    fn a_command_is_acknowledged_only_with_its_events_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut engine = engine();
        let mut pending = Vec::new();
        let done = apply_command(
            &mut store,
            &mut engine,
            &mut pending,
            NOW,
            false,
            &context_command("r1"),
        );
        assert_eq!(done.reply["ok"], true, "{}", done.reply);
        assert_eq!(done.reply["request_id"], "r1");
        assert!(!done.events.is_empty(), "a context change is an event");
        let snap = ReadOnly::open(dir.path()).unwrap().snapshot().unwrap();
        assert_eq!(
            snap.outbox_max_seq, done.committed_seq,
            "the reply's events are in the outbox already"
        );
        assert!(snap.outbox_max_seq.is_some());
    }

    #[test]
    fn events_waiting_from_a_full_disk_are_committed_ahead_of_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut engine = engine();
        let mut pending = vec![state_change(NOW - 10)];
        let done = apply_command(
            &mut store,
            &mut engine,
            &mut pending,
            NOW,
            false,
            &context_command("r2"),
        );
        assert_eq!(done.reply["ok"], true, "{}", done.reply);
        assert!(pending.is_empty(), "the backlog went first");
        assert_eq!(
            done.committed_seq,
            Some(2),
            "backlog seq 1, the command's event seq 2"
        );
    }

    #[test]
    fn a_command_that_cannot_be_committed_on_a_full_disk_is_refused_and_undone() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = full_store(dir.path());
        let mut engine = engine();
        let before = engine.memories();
        let mut pending = Vec::new();
        let done = apply_command(
            &mut store,
            &mut engine,
            &mut pending,
            NOW,
            false,
            &context_command("r3"),
        );
        assert_eq!(done.reply["ok"], false, "{}", done.reply);
        assert_eq!(done.reply["request_id"], "r3");
        assert_eq!(done.reply["error"], "not committed: disk full");
        assert!(done.events.is_empty());
        assert!(pending.is_empty(), "nothing of the command waits in memory");
        assert_eq!(
            engine.memories(),
            before,
            "the command's change is not kept"
        );
    }

    #[test]
    fn with_a_backlog_that_still_does_not_fit_the_command_is_refused_and_the_backlog_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = full_store(dir.path());
        let mut engine = engine();
        let before = engine.memories();
        let mut pending = vec![state_change(NOW - 10)];
        let done = apply_command(
            &mut store,
            &mut engine,
            &mut pending,
            NOW,
            false,
            &context_command("r4"),
        );
        assert_eq!(done.reply["ok"], false, "{}", done.reply);
        assert_eq!(pending.len(), 1, "the backlog still waits, in order");
        assert_eq!(engine.memories(), before);
    }
}
