//! The core: the engine and the SQLite writer of one pipeline, on their own OS thread.
//!
//! ## Design constraints
//! - **One owner.** [`Core`] owns the [`Engine`], the [`Store`] and the disk-full
//!   [`Queue`]; nothing else touches them, so no lock is needed and blocking SQLite calls
//!   never stall the I/O thread that polls the PLCs. The CloudEvents uplink shares this
//!   thread's runtime (see [`super`]): it runs whenever the loop waits, and a commit holds it
//!   only for as long as the commit it was waiting for.
//! - **Thin loop.** [`Core::run`] only waits for an input (a poll report, a command, the beat)
//!   and calls one method per concern: [`Core::ingest`], [`Core::tick`], [`Core::commit`],
//!   [`Core::health`]. Each method's doc says what it must keep.
//! - **Committed before told.** Nothing leaves for the uplink (`outbox_changed`, a command
//!   reply) before the transaction it refers to committed.
//! - **Never stops for a full disk.** A refused commit queues the events in memory (bounded,
//!   [`crate::store::pending`]) and polling goes on; only a database file that went away
//!   stops the core ([`Core::check_file`], exit status 3).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::journal::{self, RECENT_LINES};
use super::{knobs, DaemonError, DaemonView, Takeover, EXIT_DATABASE_GONE};
use crate::acquire::{PlcCounters, PollReport};
use crate::clock::{rfc3339_ms, Clock};
use crate::config::Config;
use crate::engine::{Engine, Event, PollInput, BUCKET_HORIZON_MS};
use crate::health::events::{self, CommandResult};
use crate::notify::{Notifier, Watchdog};
use crate::store::pending::{Bookkeeping, Queue};
use crate::store::{Batch, Store, StoreError};
use crate::uplink::{guard, InboundCommand, LiveMessage, UplinkStats};

/// Longest time the persisted engine memory may lag when nothing but telemetry happened.
const MEMORY_EVERY_MS: i64 = 1_000;
/// PLC counters for `status` are written at most this often (and when a link changes).
const HEALTH_EVERY_MS: i64 = 1_000;

/// The engine's time-driven rules run at most this often.
const TICK_EVERY_MS: i64 = 250;

/// Poll reports taken per wake-up at most (one transaction for the lot).
const REPORTS_PER_BATCH: usize = 512;

/// How often the systemd `STATUS=` line is recomputed (it counts the outbox).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// How stale the `health` in the `P/status` watch may get between counter changes. Rebuilding
/// it on every batch would cost CPU at fast poll rates for a message sent once a minute.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// How often the core checks that the database file is still the one it opened.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The first retention step runs this long after start; then every minute, every second while
/// a backlog remains.
const PRUNE_FIRST: Duration = Duration::from_secs(10);

/// Granularity of the second level of tokio's timer wheel (deadlines 64 ms to 4 s away).
const TIMER_SLOT: Duration = Duration::from_millis(64);

/// How far a poll report pushes the beat back.
///
/// tokio's timer wheel wakes its thread at the start of the 64 ms slot a deadline falls in,
/// to move the timer into the millisecond level. A beat one poll interval after the report
/// sits in the slot before the next report, so the core woke once per poll for nothing
/// (a tenth of its context switches at 100 ms, issue 10). Two intervals plus a slot put that
/// wake after the next report, which pushes the beat back again. The watchdog ping interval
/// stays the limit: a ping is never later than it was.
fn beat_after_report(beat_every: Duration, ping_every: Option<Duration>) -> Duration {
    let past_next_report = beat_every * 2 + TIMER_SLOT;
    ping_every.map_or(past_next_report, |ping| {
        past_next_report.min(ping.max(beat_every))
    })
}

/// What [`super::Pipeline::start`] hands to the core thread.
pub(super) struct CoreParts {
    pub config: Config,
    pub clock: Clock,
    pub store: Store,
    pub polls: mpsc::Receiver<PollReport>,
    pub commands: mpsc::Receiver<InboundCommand>,
    pub live: mpsc::Sender<LiveMessage>,
    pub outbox_changed: Arc<Notify>,
    pub view: watch::Sender<DaemonView>,
    pub status: watch::Sender<serde_json::Value>,
    pub status_base: serde_json::Value,
    pub uplink: Arc<UplinkStats>,
    pub notifier: Notifier,
    pub takeover: Takeover,
    /// Events the previous pipeline could not commit (disk full), committed first.
    pub carried: Vec<Event>,
    /// Equipment to retire when the poll channel closes (a reload removed it).
    pub retire: watch::Receiver<Vec<String>>,
    /// Sent once every equipment is restored; dropped unsent when restoring failed.
    pub restored: oneshot::Sender<()>,
}

/// The core thread's body: restore, report it, run until the poll channel closes. Returns the
/// events it could not commit, for the next pipeline.
pub(super) async fn run(parts: CoreParts) -> Result<Vec<Event>, DaemonError> {
    let takeover = parts.takeover;
    let restored = parts.restored;
    let mut core = Core::new(
        parts.config,
        parts.clock,
        parts.store,
        Inputs {
            polls: parts.polls,
            commands: Some(parts.commands),
            retire: parts.retire,
        },
        Outputs {
            live: parts.live,
            outbox_changed: parts.outbox_changed,
            view: parts.view,
            status: parts.status,
            status_base: parts.status_base,
            uplink: parts.uplink,
            notifier: parts.notifier,
        },
        parts.carried,
    );
    core.restore(takeover)?;
    let _ = restored.send(());
    core.run().await
}

/// What the core waits on.
struct Inputs {
    /// Poll reports from every PLC task; closed once they all returned (shutdown or reload).
    polls: mpsc::Receiver<PollReport>,
    /// Commands the uplink accepted; `None` once closed (no broker, or the uplink ended), so
    /// the loop stops selecting on it.
    commands: Option<mpsc::Receiver<InboundCommand>>,
    /// Equipment to retire in the last batch (set by a reload just before the stop).
    retire: watch::Receiver<Vec<String>>,
}

/// Where the core tells others what happened.
struct Outputs {
    /// Live QoS 0 telemetry and command replies for the uplink. `try_send`: the core never
    /// waits on the network.
    live: mpsc::Sender<LiveMessage>,
    /// Wakes the uplink after a commit wrote outbox rows.
    outbox_changed: Arc<Notify>,
    view: watch::Sender<DaemonView>,
    /// The `P/status` payload the uplink publishes (module doc of [`super`]).
    status: watch::Sender<serde_json::Value>,
    /// The birth fields of `P/status`; `health` is added to a copy.
    status_base: serde_json::Value,
    /// The counter registry ([`crate::health`]; the uplink's counters are its fields): read
    /// for the systemd status line, written with what the core sees (poll reports mirrored,
    /// command results, outbox depth, states and OEE, progress).
    uplink: Arc<UplinkStats>,
    notifier: Notifier,
}

/// The state of the core between two wake-ups. Every field replaces what used to be a local
/// of one long loop; each says why it is kept.
pub(super) struct Core {
    config: Config,
    clock: Clock,
    engine: Engine,
    store: Store,
    /// Events produced but not committed yet: empty after every successful commit, a bounded
    /// backlog while the database refuses writes.
    queue: Queue,
    inputs: Inputs,
    outputs: Outputs,
    /// Watchdog gating: pings only while every PLC loop makes progress.
    watchdog: Watchdog,
    /// Wakes the loop when no input arrives: the engine's rules and the pings need time to
    /// pass, not reports (the shorter of the fastest poll interval and the ping interval).
    beat: tokio::time::Interval,
    /// How far a report pushes the beat back: past the next report, so that the beat never
    /// comes due while reports flow ([`beat_after_report`]).
    beat_after_report: Duration,
    /// Wall time of the last [`Engine::on_tick`], to run it at most every [`TICK_EVERY_MS`].
    last_tick_ms: i64,
    /// Wall time the engine memory was last committed, for [`MEMORY_EVERY_MS`].
    last_memory_ms: i64,
    /// When the PLC counters were last written for `status` (at most once a second, or at
    /// once when a PLC's link or error changes: a row per poll was a third of each commit).
    last_health_ms: i64,
    /// When the heartbeat was last committed, and how often a commit that carries nothing
    /// else is worth it: half the slowest poll interval (`status` calls the daemon stalled
    /// after three), at most a second.
    last_heartbeat_ms: i64,
    heartbeat_every_ms: i64,
    /// Per PLC: (time of the last poll tick, counters), for `P/status` and the view.
    plc_health: BTreeMap<String, (i64, PlcCounters)>,
    /// Highest outbox seq committed so far (the view).
    last_seq: i64,
    /// Recent non-telemetry events, described (the view), at most [`RECENT_LINES`].
    recent: Vec<String>,
    /// The next retention step.
    next_prune: tokio::time::Instant,
    /// (store health version, disk-full) at the last `P/status` notification: a change
    /// republishes at once.
    last_store_key: (u64, bool),
    /// The next check that the database file is still ours.
    next_file_check: Instant,
    /// The next silent refresh of the `P/status` watch.
    next_status_refresh: Instant,
    /// Test knob ([`knobs::STATUS_KNOB`]): republish `P/status` this often.
    status_republish: Option<Duration>,
    next_republish: Instant,
    /// The next recomputation of the systemd `STATUS=` line, and the line last sent (sent
    /// again only when it changes).
    next_status_line: Instant,
    last_status_line: String,
    /// The uplink's `too_large` count when the drop ledger was last read.
    seen_too_large: u64,
    /// The outbox's (rows, oldest `created_ms`) as last counted, and the next count.
    outbox: Option<(u64, Option<i64>)>,
    next_outbox_count: Instant,
}

impl Core {
    fn new(
        config: Config,
        clock: Clock,
        store: Store,
        inputs: Inputs,
        outputs: Outputs,
        carried: Vec<Event>,
    ) -> Core {
        let engine = Engine::new(&config, clock.now_ms());
        let ping_every = outputs.notifier.ping_every();
        let mut beat_every = Duration::from_millis(
            config
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
        let heartbeat_every_ms = config
            .plcs
            .iter()
            .map(|plc| i64::try_from(plc.poll_interval_ms / 2).unwrap_or(i64::MAX))
            .max()
            .unwrap_or(1000)
            .clamp(10, 1000);
        let mut beat = tokio::time::interval(beat_every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let now = Instant::now();
        Core {
            beat_after_report: beat_after_report(beat_every, ping_every),
            watchdog: Watchdog::new(&config.plcs, ping_every, now),
            config,
            clock,
            engine,
            store,
            queue: Queue::with(carried),
            inputs,
            outputs,
            beat,
            last_tick_ms: i64::MIN,
            last_memory_ms: i64::MIN / 2,
            last_health_ms: i64::MIN / 2,
            last_heartbeat_ms: i64::MIN / 2,
            heartbeat_every_ms,
            plc_health: BTreeMap::new(),
            last_seq: 0,
            recent: Vec::new(),
            next_prune: tokio::time::Instant::now() + PRUNE_FIRST,
            last_store_key: (u64::MAX, false),
            next_file_check: now + FILE_CHECK_EVERY,
            next_status_refresh: now,
            status_republish: knobs::status_republish(),
            next_republish: now,
            next_status_line: now + STATUS_EVERY,
            last_status_line: String::new(),
            seen_too_large: 0,
            outbox: None,
            next_outbox_count: now,
        }
    }

    /// Takes over the engine's memory from the database.
    ///
    /// - [`Takeover::Restart`]: each equipment resumes from its full memory when the previous
    ///   run left one (open downtime, andons, context, jobs, counters survive a restart), else
    ///   from its last state; either way it goes offline from the previous run's last
    ///   heartbeat (the events are queued for the first commit).
    /// - [`Takeover::Reload`]: the memory was committed by this process a moment ago; nothing
    ///   went offline. Equipment new in this configuration starts fresh (offline until polled).
    ///
    /// Minutes are read back as far as the engine keeps them ([`BUCKET_HORIZON_MS`]).
    fn restore(&mut self, takeover: Takeover) -> Result<(), DaemonError> {
        let now = self.clock.now_ms();
        let since = now - BUCKET_HORIZON_MS;
        match takeover {
            Takeover::Restart => {
                let previous = self.store.machine_views()?;
                let last_seen = self.store.heartbeat_ms()?.unwrap_or(now);
                let mut without_memory = Vec::new();
                for code in self.engine.codes() {
                    match self.store.engine_state(&code, since)? {
                        (Some(memory), minutes) => self.queue.extend(
                            self.engine
                                .restore_memory(&code, memory, minutes, last_seen),
                        ),
                        (None, _) => without_memory
                            .extend(previous.iter().filter(|v| v.equipment == code).cloned()),
                    }
                }
                self.queue
                    .extend(self.engine.restore(&without_memory, last_seen));
            }
            Takeover::Reload => {
                for code in self.engine.codes() {
                    if let (Some(memory), minutes) = self.store.engine_state(&code, since)? {
                        self.engine.resume_memory(&code, memory, minutes);
                    }
                }
            }
        }
        // Every deadline starts now, after the restore: each PLC gets its whole report budget
        // from the moment its task can start.
        let now = Instant::now();
        self.watchdog = Watchdog::new(&self.config.plcs, self.watchdog.every(), now);
        self.next_file_check = now + FILE_CHECK_EVERY;
        self.next_status_refresh = now;
        self.next_republish = now;
        self.next_status_line = now + STATUS_EVERY;
        Ok(())
    }

    /// Runs until the poll channel closes (every PLC task returned), then returns after one
    /// last commit (with the retirement a reload asked for). Returns the events still queued.
    async fn run(mut self) -> Result<Vec<Event>, DaemonError> {
        let mut closed = false;
        while !closed {
            // 1. Wait for one input: a poll report, a command (handled and replied to at once)
            //    or the beat.
            let mut reports = Vec::new();
            tokio::select! {
                r = self.inputs.polls.recv() => match r {
                    Some(r) => {
                        reports.push(r);
                        // The beat is for when reports stop coming: while they come, each
                        // one wakes the loop, and a beat in between would only cost a wake-up.
                        self.beat.reset_after(self.beat_after_report);
                    }
                    None => closed = true,
                },
                c = recv_command(&mut self.inputs.commands) => match c {
                    Some(c) => self.commit_command(&c),
                    None => self.inputs.commands = None,
                },
                _ = self.beat.tick() => {}
            }
            // 2. A database file that went away stops the core (exit status 3).
            self.check_file()?;
            self.count_outbox();
            // 3. Everything else already queued joins this batch.
            while reports.len() < REPORTS_PER_BATCH {
                match self.inputs.polls.try_recv() {
                    Ok(r) => reports.push(r),
                    Err(_) => break,
                }
            }
            let health_changed = self.ingest(&mut reports);
            self.tick(closed);
            self.commit(closed, health_changed);
            self.prune();
            self.health(health_changed);
            self.show();
            self.systemd(closed);
        }
        Ok(self.queue.into_events())
    }

    /// A database file deleted or replaced under us: every later commit would go to a file
    /// nobody can see. Stop (exit status 3) so that systemd restarts on a fresh database.
    fn check_file(&mut self) -> Result<(), DaemonError> {
        if Instant::now() < self.next_file_check {
            return Ok(());
        }
        self.next_file_check = Instant::now() + FILE_CHECK_EVERY;
        if let Err(e) = self.store.check_file() {
            tracing::error!(
                error = %e,
                uncommitted = self.queue.len(),
                "DATABASE FILE GONE: stopping with exit status {EXIT_DATABASE_GONE} so that the service restarts on a new database (a new stream)"
            );
            return Err(e.into());
        }
        Ok(())
    }

    /// Feeds poll reports to the engine (events queued), marks each PLC's progress for the
    /// watchdog and keeps its health. Returns whether a PLC's error state changed (online /
    /// offline, or its last error), which republishes `P/status`.
    ///
    /// The samples are moved out of the reports into the engine (a report's `Ok` is empty
    /// afterwards): nothing reads them after this, so a copy of every signal per poll was
    /// work for nothing.
    fn ingest(&mut self, reports: &mut [PollReport]) -> bool {
        let mut changed = false;
        for r in reports {
            let input = match &mut r.outcome {
                Ok(samples) => PollInput::Samples(std::mem::take(samples)),
                Err(_) => PollInput::Failed {
                    consecutive: r.counters.consecutive_failures,
                },
            };
            self.queue
                .extend(self.engine.on_poll(&r.plc, r.scheduled_ms, &input));
            self.watchdog.observe(&r.plc, Instant::now());
            self.mirror(r);
            let before = self
                .plc_health
                .get(&r.plc)
                .map(|(_, c)| (c.consecutive_failures > 0, c.last_error.clone()));
            let after = (
                r.counters.consecutive_failures > 0,
                r.counters.last_error.clone(),
            );
            changed |= before.as_ref() != Some(&after);
            self.plc_health
                .insert(r.plc.clone(), (r.scheduled_ms, r.counters.clone()));
        }
        changed
    }

    /// Mirrors one poll report into the counter registry (`/metrics`; the task's own
    /// counters stay what `P/status` and `status` show, so both read the same numbers).
    fn mirror(&self, r: &PollReport) {
        let reg = &*self.outputs.uplink;
        events::PollCompleted {
            plc: &r.plc,
            polls: r.counters.polls,
            lateness_us: r.counters.last_lateness_us,
        }
        .emit(reg);
        if let Err(e) = &r.outcome {
            events::PollFailed {
                plc: &r.plc,
                kind: crate::health::failure_kind(e),
            }
            .emit(reg);
        }
        events::TickSkipped {
            plc: &r.plc,
            total: r.counters.skipped_ticks,
        }
        .emit(reg);
        events::PlcLinkChanged {
            plc: &r.plc,
            online: r.counters.consecutive_failures == 0,
        }
        .emit(reg);
    }

    /// Time-driven rules (downtime after micro_stop_s, andon timing, escalation, shift changes,
    /// OEE snapshots), at most every [`TICK_EVERY_MS`]. In the last batch of a pipeline a
    /// reload replaces (`closed`), closes what is open on equipment the new configuration
    /// removes (SPEC §6 "Reload").
    fn tick(&mut self, closed: bool) {
        let now = self.clock.now_ms();
        if now >= self.last_tick_ms + TICK_EVERY_MS {
            self.last_tick_ms = now;
            self.queue.extend(self.engine.on_tick(now));
        }
        if closed {
            let removed = self.inputs.retire.borrow().clone();
            if !removed.is_empty() {
                self.queue.extend(self.engine.retire(&removed, now));
            }
        }
    }

    /// Commits the queue (with the PLC counters at most once a second, or when a PLC's link
    /// changed) in one transaction, or keeps it
    /// queued when the database refuses it ([`Store::commit_or_queue`]); wakes the uplink when
    /// outbox rows were written.
    ///
    /// Telemetry that is not stored-and-forwarded goes live at QoS 0 first, never into the
    /// outbox. The engine's memory is written with every batch that carries an event other
    /// than telemetry (so it never lags the events it explains), and otherwise at most once a
    /// second: a memory and its open minute buckets are saved together, so a snapshot up to a
    /// second old loses no count after a crash, it only re-derives it. This keeps SD-card
    /// writes at fast poll rates an order of magnitude lower.
    fn commit(&mut self, closed: bool, links_changed: bool) {
        let to_outbox = self.config.telemetry.store_and_forward;
        if !to_outbox {
            self.send_live_telemetry();
        }
        let now_ms = self.clock.now_ms();
        let write_health =
            closed || links_changed || now_ms >= self.last_health_ms + HEALTH_EVERY_MS;
        let save_memory = closed
            || now_ms >= self.last_memory_ms + MEMORY_EVERY_MS
            || self
                .queue
                .events()
                .iter()
                .any(|e| !matches!(e, Event::Telemetry { .. }));
        // Nothing to write but the heartbeat, and it is fresh: no transaction at all.
        if self.queue.is_empty()
            && !write_health
            && !save_memory
            && now_ms < self.last_heartbeat_ms + self.heartbeat_every_ms
        {
            return;
        }
        let done = self.store.commit_or_queue(
            &mut self.queue,
            &self.engine,
            Bookkeeping {
                telemetry_to_outbox: to_outbox,
                health: if write_health {
                    self.plc_health
                        .iter()
                        .map(|(plc, (at, c))| (plc.clone(), *at, c.clone()))
                        .collect()
                } else {
                    Vec::new()
                },
                heartbeat_ms: now_ms,
                save_memory,
            },
        );
        if done.batch && save_memory {
            self.last_memory_ms = now_ms;
        }
        if done.batch && write_health {
            self.last_health_ms = now_ms;
        }
        if done.batch {
            self.last_heartbeat_ms = now_ms;
        }
        if let Some(max) = done.max_seq {
            self.last_seq = max;
            self.outputs.outbox_changed.notify_one();
        }
        self.recent.extend(
            done.events
                .iter()
                .filter(|e| !matches!(e, Event::Telemetry { .. }))
                .map(journal::describe),
        );
        if done.batch && self.recent.len() > RECENT_LINES {
            self.recent.drain(..self.recent.len() - RECENT_LINES);
        }
    }

    /// Every queued telemetry event, framed and sent live at QoS 0 (best effort).
    fn send_live_telemetry(&self) {
        for e in self
            .queue
            .events()
            .iter()
            .filter(|e| matches!(e, Event::Telemetry { .. }))
        {
            let (_, event_type, topic, data, _) = crate::store::outbox::describe(e);
            let id = uuid::Uuid::now_v7().to_string();
            let data = data.to_string();
            let msg = LiveMessage {
                topic,
                payload: crate::cloudevents::frame(
                    &self.config.gateway.id,
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
            let _ = self.outputs.live.try_send(msg);
        }
    }

    /// Applies one command, commits what it caused, and only then replies: `ok:true` means
    /// committed (SPEC §7 "Replies after commit"; [`apply_command`]).
    fn commit_command(&mut self, cmd: &InboundCommand) {
        if crate::store::query::is_query(&cmd.path) {
            return self.spawn_query(cmd);
        }
        let done = apply_command(
            &mut self.store,
            &mut self.engine,
            &mut self.queue,
            self.clock.now_ms(),
            self.config.telemetry.store_and_forward,
            cmd,
        );
        events::CommandHandled {
            command: events::command_of_path(&cmd.path),
            result: done.result,
        }
        .emit(&self.outputs.uplink);
        if let Some(seq) = done.committed_seq {
            self.last_seq = self.last_seq.max(seq);
            self.outputs.outbox_changed.notify_one();
        }
        self.recent
            .extend(done.events.iter().map(journal::describe));
        let _ = self.outputs.live.try_send(LiveMessage {
            topic: "reply".into(),
            payload: done.reply,
            qos: rumqttc::QoS::AtLeastOnce,
            retain: false,
        });
    }

    /// A read-only query (SPEC §11) is answered from its own read-only connection on a
    /// blocking task: the core's thread never waits for it ([`crate::store::query`]).
    fn spawn_query(&mut self, cmd: &InboundCommand) {
        let config = self.config.clone();
        let (path, payload) = (cmd.path.clone(), cmd.payload.clone());
        let now = self.clock.now_ms();
        let live = self.outputs.live.clone();
        let uplink = self.outputs.uplink.clone();
        tokio::task::spawn_blocking(move || {
            let (ok, reply) = crate::store::query::answer(&config, &path, &payload, now);
            events::CommandHandled {
                command: events::command_of_path(&path),
                result: if ok {
                    events::CommandResult::Ok
                } else {
                    events::CommandResult::Refused
                },
            }
            .emit(&uplink);
            let _ = live.try_send(LiveMessage {
                topic: "reply".into(),
                payload: reply,
                qos: rumqttc::QoS::AtLeastOnce,
                retain: false,
            });
        });
    }

    /// Retention in small steps (store-and-forward, issue 5): every minute, every second while
    /// a backlog remains; a failure (e.g. disk full) is retried at the next step.
    fn prune(&mut self) {
        if tokio::time::Instant::now() < self.next_prune {
            return;
        }
        let more = match self.store.prune_step(self.clock.now_ms()) {
            Ok(r) => r.more,
            Err(e) => {
                tracing::debug!(error = %e, "retention step failed; retrying later");
                false
            }
        };
        self.next_prune =
            tokio::time::Instant::now() + Duration::from_secs(if more { 1 } else { 60 });
    }

    /// Keeps the `P/status` watch current. The watch always holds the current health (at most
    /// [`STATUS_REFRESH`] old, refreshed silently with `send_if_modified` returning false), so
    /// every `P/status` the uplink publishes — on connect, on its 60 s timer — is current; the
    /// receiver is *notified* (an immediate publish) only when a health counter changed:
    /// `plcs_changed` from [`Core::ingest`], the store's drop and loss counters, entering or
    /// leaving the disk-full state.
    fn health(&mut self, plcs_changed: bool) {
        let mut changed = plcs_changed;
        let too_large = self.outputs.uplink.too_large.load(Ordering::Relaxed);
        if too_large != self.seen_too_large {
            // The uplink wrote `too_large` rows to the ledger on its own connection.
            self.seen_too_large = too_large;
            if let Err(e) = self.store.reread_drops() {
                tracing::debug!(error = %e, "drop ledger not re-read; retrying later");
                self.seen_too_large = u64::MAX;
            }
        }
        let store_key = (self.store.health_version(), self.queue.is_full());
        if store_key != self.last_store_key {
            self.last_store_key = store_key;
            changed = true;
        }
        let now = Instant::now();
        if changed || now >= self.next_status_refresh {
            self.next_status_refresh = now + STATUS_REFRESH;
            let store = self.store.health(self.queue.len());
            events::mirror_drops(&self.outputs.uplink, &store.drops);
            let s = status_payload(&self.outputs.status_base, &self.plc_health, store);
            self.outputs.status.send_if_modified(|current| {
                *current = s;
                changed
            });
        }
        if let Some(every) = self.status_republish {
            if now >= self.next_republish {
                self.next_republish = now + every;
                // Test knob: publish what the watch holds now, without refreshing it first.
                self.outputs.status.send_modify(|_| {});
            }
        }
    }

    /// The demo view and tests' window on the core.
    fn show(&self) {
        let pending = self.queue.len();
        self.outputs.view.send_modify(|v| {
            v.stream = self.store.stream().to_string();
            v.machines = self.engine.views();
            v.plcs = self
                .plc_health
                .iter()
                .map(|(k, (_, c))| (k.clone(), c.clone()))
                .collect();
            v.last_seq = self.last_seq;
            v.recent = self.recent.clone();
            v.pending = pending;
        });
    }

    /// systemd: the watchdog is pinged only while every PLC keeps delivering reports (this
    /// thread reaching here is the core's own proof of life; [`Watchdog`]), and the status
    /// line is kept fresh. A disk-full commit failure is not a stall: polling goes on
    /// (SPEC §5).
    fn systemd(&mut self, closed: bool) {
        let now = Instant::now();
        self.watchdog.check(now, &self.outputs.notifier);
        self.outputs.uplink.beat(now);
        if now < self.next_status_line && !closed {
            return;
        }
        self.next_status_line = now + STATUS_EVERY;
        self.refresh_metrics(now);
        let online = self
            .config
            .plcs
            .iter()
            .filter(|plc| {
                self.plc_health
                    .get(&plc.name)
                    .is_some_and(|(_, c)| c.consecutive_failures == 0)
            })
            .count();
        let stalled = self.watchdog.stalled(now);
        let line = crate::notify::status_line(
            online,
            self.config.plcs.len(),
            self.outbox.map(|(n, _)| n),
            self.config
                .mqtt
                .as_ref()
                .map(|_| self.outputs.uplink.connected.load(Ordering::Relaxed)),
            &stalled,
        );
        if line != self.last_status_line && !closed {
            self.outputs.notifier.status(&line);
            self.last_status_line = line;
        }
    }
}

impl Core {
    /// Counts the outbox every [`STATUS_EVERY`] for the status line and the registry, at the
    /// top of a pass (before this pass commits): rows committed by the previous pass have had
    /// a wait's worth of time to be acknowledged, so a drained outbox reads 0.
    fn count_outbox(&mut self) {
        let now = Instant::now();
        if now < self.next_outbox_count {
            return;
        }
        self.next_outbox_count = now + STATUS_EVERY;
        self.outbox = self.store.outbox_stats().ok();
        if let Some((messages, oldest_created_ms)) = self.outbox {
            events::OutboxCounted {
                messages,
                oldest_created_ms,
                now_ms: self.clock.now_ms(),
            }
            .emit(&self.outputs.uplink);
        }
    }

    /// What the registry shows beside the counters, refreshed with the status line (every
    /// [`STATUS_EVERY`]): the outbox depth and age (the HTTP task never calls SQLite), each
    /// equipment's state and current-shift OEE (SPEC §10: at most 10 s old), and the PLC loops
    /// the watchdog finds stalled (`/healthz`).
    fn refresh_metrics(&self, now: Instant) {
        let reg = &*self.outputs.uplink;
        let now_ms = self.clock.now_ms();
        for v in self.engine.views() {
            events::EquipmentObserved {
                equipment: &v.equipment,
                state: v.state,
            }
            .emit(reg);
        }
        for (code, figures) in self.engine.current_oee(now_ms) {
            events::OeeComputed::from_json(&code, figures.as_ref(), now).emit(reg);
        }
        events::CoreProgress {
            at: now,
            stalled: &self.watchdog.stalled(now),
        }
        .emit(reg);
    }
}

/// The next command, or pending forever once the channel closed (so `select!` skips it).
async fn recv_command(
    commands: &mut Option<mpsc::Receiver<InboundCommand>>,
) -> Option<InboundCommand> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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

/// What handling one command came to: the reply to send and what was committed.
struct CommandDone {
    /// The `P/reply` payload ([`guard::reply_ok`] or [`guard::reply`]).
    reply: String,
    /// The events the command caused, committed (empty when it was refused).
    events: Vec<Event>,
    /// Highest outbox seq committed on the way (the backlog and the command's events).
    committed_seq: Option<i64>,
    /// What it came to, for `ms5_edge_commands_total`.
    result: CommandResult,
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
    queue: &mut Queue,
    now_ms: i64,
    telemetry_to_outbox: bool,
    cmd: &InboundCommand,
) -> CommandDone {
    let refuse = |request_id: Option<String>, error: String| {
        tracing::info!(command = %cmd.path, %error, "command rejected");
        CommandDone {
            reply: guard::reply(&request_id.into(), &error),
            events: Vec::new(),
            committed_seq: None,
            result: CommandResult::Refused,
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
    if !queue.is_empty() {
        match store.commit_queued(queue, telemetry_to_outbox, now_ms) {
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
            reply: guard::reply_ok(&rid.into()),
            events,
            committed_seq: seq.or(committed_seq),
            result: CommandResult::Ok,
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
            done.result = CommandResult::NotCommitted;
            done
        }
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

    #[test]
    fn a_report_pushes_the_beat_past_the_next_report_but_never_past_a_ping() {
        let ms = Duration::from_millis;
        // The wheel's wake for a deadline comes at most one slot before it: after the next
        // report (one interval away), so no wake-up between two reports.
        for every in [ms(50), ms(100), ms(1000)] {
            let after = beat_after_report(every, None);
            assert!(after - TIMER_SLOT > every, "{every:?} -> {after:?}");
        }
        // A watchdog ping due before that keeps the beat at the ping interval.
        assert_eq!(beat_after_report(ms(100), Some(ms(150))), ms(150));
        assert_eq!(beat_after_report(ms(100), Some(ms(15_000))), ms(264));
        // A beat set by the ping (faster than the polls) is not shortened further.
        assert_eq!(beat_after_report(ms(50), Some(ms(50))), ms(50));
    }

    fn reply(done: &CommandDone) -> serde_json::Value {
        serde_json::from_str(&done.reply).expect("a reply is JSON")
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
                Err(StoreError::Full(_)) => break,
                Err(e) => panic!("unexpected store error {e}"),
            }
        }
        // Full for state changes; other tables may still have room in their last page. Fill
        // those with the command the tests send, until it no longer fits either.
        for _ in 0..10_000 {
            let done = apply_command(
                &mut store,
                &mut engine(),
                &mut Queue::default(),
                NOW,
                false,
                &context_command("fill"),
            );
            if reply(&done)["ok"] == false {
                return store;
            }
        }
        panic!("the page limit was never reached");
    }

    #[test]
    fn a_command_is_acknowledged_only_with_its_events_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut engine = engine();
        let mut queue = Queue::default();
        let done = apply_command(
            &mut store,
            &mut engine,
            &mut queue,
            NOW,
            false,
            &context_command("r1"),
        );
        assert_eq!(reply(&done)["ok"], true, "{}", done.reply);
        assert_eq!(reply(&done)["request_id"], "r1");
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
        let mut queue = Queue::with(vec![state_change(NOW - 10)]);
        let done = apply_command(
            &mut store,
            &mut engine,
            &mut queue,
            NOW,
            false,
            &context_command("r2"),
        );
        assert_eq!(reply(&done)["ok"], true, "{}", done.reply);
        assert!(queue.is_empty(), "the backlog went first");
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
        let mut queue = Queue::default();
        let done = apply_command(
            &mut store,
            &mut engine,
            &mut queue,
            NOW,
            false,
            &context_command("r3"),
        );
        assert_eq!(reply(&done)["ok"], false, "{}", done.reply);
        assert_eq!(reply(&done)["request_id"], "r3");
        assert_eq!(reply(&done)["error"], "not committed: disk full");
        assert!(done.events.is_empty());
        assert!(queue.is_empty(), "nothing of the command waits in memory");
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
        let mut queue = Queue::with(vec![state_change(NOW - 10)]);
        let done = apply_command(
            &mut store,
            &mut engine,
            &mut queue,
            NOW,
            false,
            &context_command("r4"),
        );
        assert_eq!(reply(&done)["ok"], false, "{}", done.reply);
        assert_eq!(queue.len(), 1, "the backlog still waits, in order");
        assert_eq!(engine.memories(), before);
    }
}
