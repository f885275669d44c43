//! The daemon: wires acquisition, engine, store and uplink together, and supervises reloads.
//!
//! ```text
//! PLC tasks ──PollReport──► core thread (Engine + Store) ──notify──► uplink task ──► broker
//!                               ▲                                        │
//!                               └────────────── commands ◄───────────────┘
//! ```
//!
//! Two threads carry a poll. The I/O thread (the process's single-threaded tokio runtime) runs
//! every PLC task, the Sparkplug session and the metrics server: they wait on sockets and
//! timerfds in one `epoll_wait`, and nothing on it ever waits for the disk, so a commit's
//! fsync never delays a poll tick. The core thread runs the engine, the SQLite writer and the
//! CloudEvents uplink (with rumqttc's event loop) on a single-threaded runtime of its own: the
//! uplink publishes what a commit wrote without another thread being woken, and a PUBACK
//! wakes the thread that deletes its row. One poll therefore crosses threads once (the report
//! to the core). A commit holds the uplink for as long as it takes, which costs nothing: the
//! uplink had to wait for that commit anyway, and the keep-alive is tens of seconds. The
//! uplink's batched SQLite deletes go through `spawn_blocking`. All channels are bounded.
//!
//! Shutdown (SIGTERM/SIGINT → the `shutdown` watch): PLC tasks stop and drop their senders; the
//! core commits what it has and exits when the poll channel closes; the uplink waits briefly for
//! in-flight PUBACKs, publishes `{"state":"offline"}` and disconnects. Every committed event
//! stays in the outbox until acknowledged, so nothing committed is lost at any step (each
//! step is commented in `Pipeline::stop`).
//!
//! ## Where things are
//!
//! - this file: [`run`], [`run_with_reload`], [`Observers`], the pipeline wiring (database
//!   open, core thread, uplink, PLC tasks), shutdown and [`DaemonError`].
//! - `core.rs`: the `Core` of one pipeline: `restore`, `ingest` (poll reports), `tick`,
//!   `commit` (replies after commit for commands), `health` (`P/status`), the database-file
//!   watch. The disk-full queue is [`crate::store::pending`]; watchdog gating is
//!   [`crate::notify::Watchdog`].
//! - `journal.rs`: one line per committed event for [`DaemonView::recent`].
//! - `knobs.rs`: the test-only environment knobs.
//!
//! ## Reload (SIGHUP, SPEC §1 and §6)
//!
//! [`run_with_reload`] runs one *pipeline* (PLC tasks + core + uplink) per configuration. A valid
//! new configuration stops the running pipeline exactly as a shutdown does and starts a new one
//! in the same process. Nothing is lost on the way because the engine's per-equipment memory
//! (open downtime, andons, context, jobs, counter baselines, unsettled OEE minutes) is committed
//! with every batch: the new core reads it back with [`Engine::resume_memory`](crate::engine::Engine::resume_memory), which — unlike a
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

mod core;
mod journal;
mod knobs;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::acquire::{self, PlcCounters, PollReport};
use crate::clock::{rfc3339_ms, Clock};
use crate::config::Config;
use crate::engine::{Event, MachineView};
use crate::notify::Notifier;
use crate::store::{Store, StoreError};
use crate::uplink::{self, InboundCommand, LiveMessage, UplinkStats};

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("core thread: {0}")]
    Core(String),
    #[error("{0}")]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Exit status of `ms5-edge run` when the database file was deleted or replaced under it
/// (SPEC §7 "The database file"): systemd restarts the unit on a fresh database.
pub const EXIT_DATABASE_GONE: u8 = 3;

/// While the database is being opened and checked, systemd is asked every
/// `OPEN_EXTEND_EVERY` for `OPEN_EXTEND_BY` more (`EXTEND_TIMEOUT_USEC`).
const OPEN_EXTEND_EVERY: Duration = Duration::from_secs(2);
const OPEN_EXTEND_BY: Duration = Duration::from_secs(10);

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
    /// The counter registry ([`crate::health::Registry`]; the uplink's counters are its
    /// fields, hence the name).
    pub uplink: Arc<UplinkStats>,
    /// The address the `[metrics]` server listens on, once bound (port 0 resolved).
    pub metrics_addr: watch::Sender<Option<std::net::SocketAddr>>,
}

impl Default for Observers {
    fn default() -> Self {
        Observers {
            view: watch::channel(DaemonView::default()).0,
            uplink: Arc::new(UplinkStats::default()),
            metrics_addr: watch::channel(None).0,
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
    // The metrics server outlives reloads (its address is read once, at start): bound before
    // anything else, so a port in use fails the start instead of being found out later.
    let (metrics_stop, metrics_stop_rx) = watch::channel(false);
    let metrics = match &config.metrics {
        Some(m) => {
            observers.uplink.declare(&config);
            let listener = crate::metrics::bind(m.listen).await?;
            let addr = listener.local_addr().ok();
            tracing::info!(listen = ?addr, "metrics endpoints: /metrics, /healthz, /readyz");
            observers.metrics_addr.send_replace(addr);
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                observers.uplink.clone(),
                metrics_stop_rx,
            )))
        }
        None => None,
    };
    let result = pipelines(
        &mut config,
        &mut reloads,
        &mut shutdown,
        &observers,
        &notifier,
        &mut takeover,
        &mut carried,
    )
    .await;
    let _ = metrics_stop.send(true);
    if let Some(m) = metrics {
        let _ = m.await;
    }
    result
}

/// The pipelines of [`run_with_reload`], one per configuration.
async fn pipelines(
    config: &mut Config,
    reloads: &mut mpsc::Receiver<Config>,
    shutdown: &mut watch::Receiver<bool>,
    observers: &Observers,
    notifier: &Notifier,
    takeover: &mut Takeover,
    carried: &mut Vec<Event>,
) -> Result<(), DaemonError> {
    let started_with = config.metrics.clone();
    let mut generation = 0u64;
    let mut reloads_open = true;
    loop {
        generation += 1;
        observers.view.send_modify(|v| v.generation = generation);
        let mut pipeline = Pipeline::start(
            config,
            *takeover,
            std::mem::take(carried),
            observers,
            notifier,
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
                describe_reload(config, &new, &removed);
                *carried = pipeline.stop(removed).await?;
                if new.metrics != started_with {
                    tracing::warn!("reload: [metrics] changed; the metrics server keeps its address until the daemon restarts");
                }
                *config = new;
                *takeover = Takeover::Reload;
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
    /// The core's OS thread (not a task: it blocks on SQLite); returns the events it could
    /// not commit, which the next pipeline commits first.
    core: std::thread::JoinHandle<Result<Vec<Event>, DaemonError>>,
    /// Notified when the core thread's loop returns (a stored permit if nobody waits yet).
    core_done: Arc<Notify>,
    /// The Sparkplug session (`[sparkplug]`); it publishes DDEATH/NDEATH when stopped.
    sparkplug: Option<tokio::task::JoinHandle<()>>,
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
        observers.uplink.declare(config);
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
                    // Slow but making progress: /healthz stays 200 while the check runs.
                    observers.uplink.beat(std::time::Instant::now());
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
        let mut store = store;
        let stream = store.stream().to_string();
        tracing::info!(db = %store.path().display(), %stream, "database open");

        let (stop, stop_rx) = watch::channel(false);
        let (retire, retire_rx) = watch::channel(Vec::new());
        let (poll_tx, poll_rx) = mpsc::channel::<PollReport>(256);
        let (cmd_tx, cmd_rx) = mpsc::channel::<InboundCommand>(64);
        let (live_tx, live_rx) = mpsc::channel::<LiveMessage>(1024);
        let (restored_tx, restored_rx) = oneshot::channel::<()>();
        let outbox_changed = Arc::new(Notify::new());
        // Committed rows go straight to the uplink (it reads SQLite only to catch up).
        let (fresh_tx, fresh_rx) = mpsc::channel(uplink::FRESH_ROWS);
        let committed = Arc::new(std::sync::atomic::AtomicI64::new(0));
        // Sparkplug (SPEC §8): the store writes its rows in every commit and wakes the session.
        let spb_changed = Arc::new(Notify::new());
        if config.sparkplug.is_some() && config.mqtt.is_some() {
            store.enable_sparkplug(config.cloudevents(), spb_changed.clone())?;
        }
        if config.cloudevents() {
            store.set_handoff(crate::store::Handoff {
                rows: fresh_tx,
                committed: committed.clone(),
            });
        }
        let status = serde_json::json!({
            "state": "online",
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": rfc3339_ms(clock.now_ms()),
            "stream": stream,
        });
        let (status_tx, status_rx) = watch::channel(status.clone());

        // The core thread: engine + SQLite writer, and the uplink once the core has restored.
        // Its runtime is built here so that the uplink can be spawned onto it; the thread runs
        // the core, then the uplink until it has said goodbye (`Pipeline::stop`, step 5).
        let core_done = Arc::new(Notify::new());
        let core_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DaemonError::Core(e.to_string()))?;
        let core_handle = core_rt.handle().clone();
        let (uplink_tx, uplink_rx) = oneshot::channel::<tokio::task::JoinHandle<()>>();
        let core = {
            let done = core_done.clone();
            let parts = core::CoreParts {
                config: config.clone(),
                clock,
                store,
                polls: poll_rx,
                commands: cmd_rx,
                live: live_tx,
                outbox_changed: outbox_changed.clone(),
                view: observers.view.clone(),
                status: status_tx,
                status_base: status,
                uplink: observers.uplink.clone(),
                notifier: notifier.clone(),
                takeover,
                carried,
                retire: retire_rx.clone(),
                restored: restored_tx,
            };
            std::thread::Builder::new()
                .name("ms5-core".into())
                .spawn(move || {
                    let result = core_rt.block_on(core::run(parts));
                    done.notify_one();
                    // The uplink lives on this runtime: drive it to its end (no uplink, or a
                    // start that failed, drops the sender).
                    core_rt.block_on(async {
                        if let Ok(uplink) = uplink_rx.await {
                            let _ = uplink.await;
                        }
                    });
                    result
                })
                .map_err(|e| DaemonError::Core(e.to_string()))?
        };
        // The core drops the sender without sending when restoring failed: report its error.
        if restored_rx.await.is_err() {
            drop(uplink_tx);
            return Err(join_core(core)
                .await
                .err()
                .unwrap_or_else(|| DaemonError::Core("the core stopped while starting".into())));
        }

        let (cmd_tx, live_rx, sparkplug) = match (&config.mqtt, &config.sparkplug) {
            (Some(mqtt), Some(spb)) => {
                // With `cloudevents = false` the Sparkplug connection carries the commands.
                let own = !config.cloudevents();
                let reader = crate::store::sparkplug::SpbReader::open(&config.gateway.data_dir)?;
                let settings = crate::sparkplug::session::SpbSettings {
                    mqtt: mqtt.clone(),
                    sparkplug: spb.clone(),
                    catalogue: crate::sparkplug::model::Catalogue::of(config),
                    version: crate::version_string(),
                    guard: own.then(|| {
                        uplink::guard::GuardSettings::from_config(
                            config,
                            uplink::signature::load_key(&config.commands),
                        )
                    }),
                };
                let (commands, live, cmd_tx, live_rx) = if own {
                    (Some(cmd_tx), Some(live_rx), None, None)
                } else {
                    (None, None, Some(cmd_tx), Some(live_rx))
                };
                let channels = crate::sparkplug::session::SpbChannels {
                    changed: spb_changed,
                    shutdown: stop_rx.clone(),
                    retire: retire_rx,
                    commands,
                    live,
                };
                let task = tokio::spawn(crate::sparkplug::session::run(
                    settings,
                    reader,
                    channels,
                    observers.uplink.clone(),
                ));
                (cmd_tx, live_rx, Some(task))
            }
            _ => (Some(cmd_tx), Some(live_rx), None),
        };
        let uplink = match (&config.mqtt, cmd_tx, live_rx) {
            (Some(mqtt), Some(cmd_tx), Some(live_rx)) => {
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
                    fresh: fresh_rx,
                    committed,
                    live: live_rx,
                    commands: cmd_tx,
                    status: status_rx,
                    shutdown: stop_rx.clone(),
                };
                Some(core_handle.spawn(uplink::run(
                    settings,
                    reader,
                    channels,
                    observers.uplink.clone(),
                )))
            }
            (None, _, _) => {
                tracing::info!(
                    "no [mqtt] section: events are kept in the outbox until a broker is configured"
                );
                None
            }
            // `sparkplug.cloudevents = false`: no CloudEvents connection.
            _ => None,
        };

        if let Some(uplink) = uplink {
            // The core thread is alive (it restored): it takes the handle.
            let _ = uplink_tx.send(uplink);
        }
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
            sparkplug,
        })
    }

    /// Stops this pipeline: PLC tasks first (the core then commits its last batch, with the
    /// retirement of `removed` equipment, and exits), then the uplink. Returns the events the
    /// core could not commit, for the next pipeline.
    async fn stop(self, removed: Vec<String>) -> Result<Vec<Event>, DaemonError> {
        // 1. Tell the core what to retire *before* anything stops: it reads this list when
        //    its poll channel closes, in its last batch.
        let _ = self.retire.send(removed);
        // 2. Stop the PLC tasks and the uplink of this pipeline (one watch for both).
        let _ = self.stop.send(true);
        // 3. Wait for every PLC task to return: each drops its poll sender on the way.
        let _ = self.plcs_done.await;
        // 4. The poll channel is now closed: the core commits its last batch (the engine's
        //    memory included) and returns what it could not commit.
        // 5. The uplink, stopped in step 2 and running on the core's thread, waits briefly for
        //    in-flight PUBACKs, publishes `{"state":"offline"}` and disconnects; whatever it
        //    did not deliver stays in the outbox for the next session. The core thread ends
        //    after both.
        let core_result = join_core(self.core).await;
        // 6. The Sparkplug session, stopped in step 2 too: a last fence, DDEATH for the
        //    equipment a reload removes, NDEATH, DISCONNECT.
        if let Some(sparkplug) = self.sparkplug {
            let _ = sparkplug.await;
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

/// Spawns every PLC task, honouring the test-only [`knobs::STALL_KNOB`].
fn spawn_plcs(
    config: &Config,
    clock: Clock,
    out: mpsc::Sender<PollReport>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some((name, after)) = knobs::stall_plc(config) else {
        return acquire::spawn_all(config, clock, out, stop);
    };
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
