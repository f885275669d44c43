//! Uplink: drains the outbox to the MQTT broker and hands inbound commands to the core.
//!
//! ## Design constraints
//! - **A row leaves SQLite only when the broker took it.** A successful `publish()` only means
//!   "queued in rumqttc's memory", and rumqttc does not return the packet id, so the pairing of
//!   PUBACKs with rows is a pure state machine of its own ([`correlator`]). With MQTT 5 a PUBACK
//!   with a reason code ≥ 0x80 is a *refusal*: the row stays, the refusal is counted per reason
//!   (`health.refused`), logged once per episode, and the outbox is replayed from its oldest row
//!   after a backoff (SPEC §7).
//! - **Resend from SQLite, never from library memory.** Every connection gets a brand-new client
//!   and event loop with a clean session ([`client`]); a new connection reads the outbox again
//!   from its oldest row. Duplicates are exactly the messages in flight at a disconnect, and
//!   order is `seq` order — also across brokers (`failover_urls`), so a consumer of both sees
//!   every `seq`.
//! - **Nothing inbound costs the session.** Commands are gated ([`guard`]) and queued to the
//!   core under a byte budget ([`INBOUND_BUDGET`]); a queue that is full refuses the command
//!   with a reply. Replies, live telemetry and `P/status` are best effort: they wait in a
//!   bounded queue of their own ([`OTHERS_QUEUE`] messages, [`OTHERS_QUEUE_BYTES`]) and use at
//!   most [`OTHERS_SLOTS`] of the client's slots; beyond that they are dropped and counted. The
//!   outbox always keeps its window (`max_inflight`, shrunk to fit the broker's Receive
//!   Maximum), and a full queue is never a reason to end the session.
//! - **Nothing outbound blocks the outbox.** A row larger than `max_packet_kb` or the broker's
//!   Maximum Packet Size goes to the drop ledger with reason `too_large` instead of being sent.
//! - **Live telemetry is live.** QoS 0 telemetry (`store_and_forward = false`) arriving while
//!   disconnected is dropped and counted, never queued for later (SPEC §4).
//! - **Reconnect quickly, without storms.** Decorrelated jitter from 0.5 s capped at
//!   `reconnect_max_s`, reset after a connection stayed up 60 s; an unreachable broker moves
//!   on to the next URL at once. While waiting, a TCP probe about once a second (jittered)
//!   cuts the wait short when the broker accepts connections again. On a failover broker the primary is probed every
//!   `return_to_primary_s`; only when it answers is the current connection closed.
//! - The uplink never invents events: `P/status` and command replies are the only messages it
//!   publishes that are not outbox rows.
//!
//! ## Sparkplug B (SPEC §8)
//! Sparkplug is a second queue of the same outbox (`spb_outbox`, its own order, no `seq`),
//! drained by its own session on its own connection ([`crate::sparkplug::session`]; a
//! connection has one will). Its rows go at QoS 0 as Sparkplug requires, so a row is deleted
//! only after a later QoS 1 *fence* on the same connection was acknowledged: the broker reads
//! a connection's packets in order, so that PUBACK proves it read every DDATA before it; a
//! disconnect resends the unproven window, historical. What a row is and the rest of the
//! argument: [`crate::store::sparkplug`] and docs/decisions.md "Sparkplug B". With
//! `sparkplug.cloudevents = false` this uplink does not run at all.

pub mod backoff;
pub mod client;
pub mod correlator;
pub mod guard;
pub mod signature;
pub mod tls;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::config::{Mqtt, MqttUrl};
use crate::health::events;
use crate::store::outbox::{OutboxReader, OutboxRow};
use client::{Client, Wire};
use correlator::{Acked, Correlator, Tag};

/// How many outbox rows one read fetches: enough that a replay's reads cost a few percent of
/// its time; few enough that a backlog's rows in memory at once (and the heap they leave
/// behind after a long outage's drain) stay under 100 KB (it was 512, issue 10).
const PAGE: usize = 128;
/// Client slots (queued + in flight) that replies, live telemetry and `P/status` may take at
/// most, beside the outbox's window.
pub const OTHERS_SLOTS: usize = 16;
/// Replies and live messages waiting for a client slot, at most (then dropped and counted).
pub const OTHERS_QUEUE: usize = 1024;
/// Bytes of replies and live messages waiting for a client slot, at most.
pub const OTHERS_QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// Committed rows handed from the core to the uplink without a read-back, at most (beyond
/// that the uplink reads them from SQLite).
pub const FRESH_ROWS: usize = 1024;
/// Acknowledged rows are deleted in one transaction once this many are waiting …
const ACK_BATCH: usize = 64;
/// … or once the oldest has waited this long (a row deleted late is only resent after a
/// crash, which at-least-once allows). Each flush is a transaction and a hop to a blocking
/// thread: once a second at a steady 100 ms poll (it was 250 ms, four per second; issue 10).
const ACK_DELAY: Duration = Duration::from_millis(1000);
/// Bytes of accepted commands waiting for the core, at most.
pub const INBOUND_BUDGET: usize = 1024 * 1024;
/// The reply to a command refused because the queue to the core or its byte budget is full.
pub const BUSY: &str = "gateway busy: command queue full, try again";

/// A message published outside the outbox: QoS 0 telemetry, command replies.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    /// Below `topic_prefix`.
    pub topic: String,
    pub payload: String,
    pub qos: QoS,
    pub retain: bool,
}

/// A command received on `P/cmd/{equipment}/{command}`.
#[derive(Debug)]
pub struct InboundCommand {
    /// The topic below `P/cmd/`, e.g. `BP01.PACK.BAG1/andon/ack`.
    pub path: String,
    pub payload: Vec<u8>,
    /// Returns the command's bytes to the inbound budget when the core is done with it.
    _budget: BudgetPermit,
}

impl InboundCommand {
    /// A command that holds its bytes from `budget` until the core is done with it; `None`
    /// when the budget ([`INBOUND_BUDGET`]) has no room for them.
    pub fn within(budget: &Arc<AtomicUsize>, path: String, payload: Vec<u8>) -> Option<Self> {
        let permit = BudgetPermit::take(budget, path.len() + payload.len())?;
        Some(InboundCommand {
            path,
            payload,
            _budget: permit,
        })
    }

    /// A command outside any byte budget (tests, benches).
    pub fn unbudgeted(path: String, payload: Vec<u8>) -> Self {
        InboundCommand {
            path,
            payload,
            _budget: BudgetPermit {
                pool: Arc::new(AtomicUsize::new(0)),
                bytes: 0,
            },
        }
    }
}

/// Bytes held from the inbound budget until dropped.
#[derive(Debug)]
struct BudgetPermit {
    pool: Arc<AtomicUsize>,
    bytes: usize,
}

impl BudgetPermit {
    fn take(pool: &Arc<AtomicUsize>, bytes: usize) -> Option<BudgetPermit> {
        pool.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used + bytes <= INBOUND_BUDGET).then_some(used + bytes)
        })
        .ok()
        .map(|_| BudgetPermit {
            pool: pool.clone(),
            bytes,
        })
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The uplink's counters are the registry's ([`crate::health::Registry`]): the uplink task,
/// the core, `P/status`, `status` and `/metrics` read the same atomics. The old name stays for
/// the callers that know the uplink only.
pub use crate::health::Registry as UplinkStats;

/// Everything the uplink needs besides its channels.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub mqtt: Mqtt,
    pub gateway_id: String,
    pub stream: String,
    pub started_at: String,
    pub version: String,
    /// What the command gate is built from (equipment, `[commands]`, the key).
    pub guard: guard::GuardSettings,
}

/// The channels the uplink is wired with.
pub struct UplinkChannels {
    /// Signalled by the core after each commit that added outbox rows.
    pub outbox_changed: Arc<Notify>,
    /// The rows of those commits, in `seq` order, best effort (see [`FRESH_ROWS`]).
    pub fresh: mpsc::Receiver<OutboxRow>,
    /// The highest seq committed (see [`crate::store::Handoff`]).
    pub committed: Arc<std::sync::atomic::AtomicI64>,
    pub live: mpsc::Receiver<LiveMessage>,
    pub commands: mpsc::Sender<InboundCommand>,
    /// The current `P/status` payload (birth + health), kept fresh by the daemon.
    pub status: watch::Receiver<serde_json::Value>,
    pub shutdown: watch::Receiver<bool>,
}

/// Why a session ended.
#[derive(Debug, Error)]
enum SessionError {
    #[error("{}", .0.message)]
    Lost(client::Lost),
    #[error("{0}; resyncing from the outbox")]
    Desync(#[from] correlator::Desync),
    #[error("outbox: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("mqtt client request queue closed")]
    ClientGone,
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("tls: {0}")]
    Tls(String),
}

/// How a session ended.
enum End {
    Shutdown,
    /// The primary answered a probe: connect to it now.
    ReturnToPrimary,
    Failed(SessionError),
}

/// Runs until shutdown: connect, drain, reconnect with backoff, fail over.
pub async fn run(
    settings: UplinkSettings,
    reader: OutboxReader,
    mut ch: UplinkChannels,
    stats: Arc<UplinkStats>,
) {
    let reader = Arc::new(Mutex::new(reader));
    let brokers = settings.mqtt.brokers();
    let cap = Duration::from_secs(settings.mqtt.reconnect_max_s);
    let mut backoff = backoff::Backoff::with_cap(cap);
    let mut guard = guard::CommandGuard::new(settings.guard.clone());
    let budget = Arc::new(AtomicUsize::new(0));
    let mut current = 0usize;
    let mut last_error: Option<String> = None;
    let mut unreachable;
    loop {
        let broker = &brokers[current % brokers.len()];
        let (end, connected_for) = session(
            &settings, broker, current, &reader, &mut ch, &stats, &mut guard, &budget,
        )
        .await;
        events::MqttDisconnected.emit(&stats);
        // Written before the next attempt, so `status` never shows the old connection.
        let _ = save_state(&reader, &stats).await;
        if connected_for.is_some() {
            last_error = None;
        }
        match end {
            End::Shutdown => return,
            End::ReturnToPrimary => {
                tracing::info!(broker = %brokers[0].authority(), "primary broker answers again; moving back to it");
                current = 0;
                backoff.reset();
                continue;
            }
            End::Failed(e) => {
                unreachable = matches!(&e, SessionError::Lost(l) if l.unreachable);
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(broker = %broker.authority(), error = %message, "MQTT connection lost or refused; buffering in the outbox and retrying");
                    last_error = Some(message);
                }
            }
        }
        if connected_for.is_none() && brokers.len() > 1 {
            // Never reached this broker: try the next one at once; wait only after a round.
            current = (current + 1) % brokers.len();
            if current != 0 {
                continue;
            }
        }
        let delay = backoff.next(connected_for, |lo, hi| fastrand::u64(lo..hi));
        let until = Instant::now() + delay;
        // While waiting, a cheap TCP probe of the next broker about once a second: a broker
        // that comes back is dialled at once instead of at the end of a long step (SPEC §7:
        // reconnected within one backoff step). Jittered, so a fleet does not probe in step.
        let next = &brokers[current % brokers.len()];
        let mut probe_at = Instant::now() + Duration::from_millis(fastrand::u64(750..1250));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = tokio::time::sleep_until(probe_at), if unreachable && probe_at < until => {
                    if probe(next).await {
                        break;
                    }
                    probe_at = Instant::now() + Duration::from_millis(fastrand::u64(750..1250));
                }
                _ = ch.shutdown.changed() => return,
                // Rows committed while disconnected are read from SQLite after the reconnect.
                Some(_) = ch.fresh.recv() => {}
                msg = ch.live.recv() => match msg {
                    Some(msg) => count_dropped(&stats, msg.qos != QoS::AtMostOnce),
                    None => tokio::time::sleep_until(until).await,
                },
            }
        }
        if *ch.shutdown.borrow() {
            return;
        }
    }
}

/// A live message that cannot be published (no broker, no free slot): dropped and counted.
fn count_dropped(stats: &UplinkStats, qos1: bool) {
    if !qos1 {
        stats.live_dropped.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.replies_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `f` on the uplink's SQLite connection on the blocking pool (never on a runtime worker).
async fn with_reader<T: Send + 'static>(
    reader: &Arc<Mutex<OutboxReader>>,
    f: impl FnOnce(&mut OutboxReader) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, SessionError> {
    let reader = reader.clone();
    let result = tokio::task::spawn_blocking(move || match reader.lock() {
        Ok(mut r) => f(&mut r),
        Err(_) => Err(crate::store::StoreError::Missing(
            "outbox lock poisoned".into(),
        )),
    })
    .await
    .map_err(|_| SessionError::ClientGone)?;
    Ok(result?)
}

/// Writes the uplink's state where `status` can read it, in the background (best effort:
/// `status` then shows the previous state); await the handle to know it is written.
fn save_state(
    reader: &Arc<Mutex<OutboxReader>>,
    stats: &UplinkStats,
) -> tokio::task::JoinHandle<()> {
    let json = stats.health().to_string();
    let reader = reader.clone();
    tokio::spawn(async move {
        if let Err(e) = with_reader(&reader, move |r| r.save_uplink_state(&json)).await {
            tracing::debug!(error = %e, "uplink state not saved for status");
        }
    })
}

/// Refused publishes: paused until the window settles, then replayed after a backoff.
struct Refusal {
    /// Set once nothing of the outbox is in flight any more.
    resume_at: Option<Instant>,
}

struct Session<'a> {
    client: Client,
    prefix: &'a str,
    settings: &'a UplinkSettings,
    broker: &'a MqttUrl,
    reader: &'a Arc<Mutex<OutboxReader>>,
    stats: &'a UplinkStats,
    guard: &'a mut guard::CommandGuard,
    budget: &'a Arc<AtomicUsize>,
    corr: Correlator,
    queue: VecDeque<OutboxRow>,
    /// Next seq to read from the outbox.
    cursor: i64,
    /// More rows may be waiting in SQLite.
    dirty: bool,
    acked: Vec<i64>,
    /// When the oldest row in `acked` was acknowledged.
    acked_since: Option<Instant>,
    too_large: Vec<(i64, i64, u64)>,
    connected: bool,
    connected_at: Option<Instant>,
    /// Largest packet we may send: `max_packet_kb`, or the broker's limit if smaller.
    max_send: usize,
    window: usize,
    /// Client slots replies and status may hold.
    others_slots: usize,
    /// Replies and live messages waiting for a slot.
    others: VecDeque<LiveMessage>,
    others_bytes: usize,
    refusal: Option<Refusal>,
    /// An episode of refusals is open (logged when it starts and when it ends).
    refusing: u64,
    refusal_backoff: backoff::Backoff,
    status_pending: bool,
    /// The last `P/status` sent on this connection: an identical one is not sent again
    /// except by the 60 s refresh.
    last_status: Option<String>,
    status_refresh: bool,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    settings: &UplinkSettings,
    broker: &MqttUrl,
    index: usize,
    reader: &Arc<Mutex<OutboxReader>>,
    ch: &mut UplinkChannels,
    stats: &UplinkStats,
    guard: &mut guard::CommandGuard,
    budget: &Arc<AtomicUsize>,
) -> (End, Option<Duration>) {
    let m = &settings.mqtt;
    let password = match &m.password_file {
        Some(p) => match tls::read_secret(p) {
            Ok(s) => Some(s),
            Err(e) => return (End::Failed(SessionError::Credentials(e)), None),
        },
        None => None,
    };
    let transport = if broker.tls {
        match tls::transport(m) {
            Ok(t) => Some(t),
            Err(e) => return (End::Failed(SessionError::Tls(e)), None),
        }
    } else {
        None
    };
    let window = usize::from(m.max_inflight.max(1));
    let (client, mut wire, driver) = client::open(client::Connect {
        mqtt: m,
        broker,
        password: password.as_ref().map(|p| p.expose()),
        transport,
        queue: window + OTHERS_SLOTS + 8,
        inflight: u16::try_from(window + OTHERS_SLOTS).unwrap_or(u16::MAX),
        will: (
            format!("{}/status", m.topic_prefix),
            r#"{"state":"offline"}"#.as_bytes().to_vec(),
        ),
        will_retain: true,
    });
    let mut s = Session {
        client,
        prefix: &m.topic_prefix,
        settings,
        broker,
        reader,
        stats,
        guard,
        budget,
        corr: Correlator::default(),
        queue: VecDeque::new(),
        cursor: 0,
        dirty: true,
        acked: Vec::new(),
        acked_since: None,
        too_large: Vec::new(),
        connected: false,
        connected_at: None,
        max_send: m.max_packet_bytes(),
        window,
        others_slots: OTHERS_SLOTS,
        others: VecDeque::new(),
        others_bytes: 0,
        refusal: None,
        refusing: 0,
        refusal_backoff: backoff::Backoff::with_cap(Duration::from_secs(m.reconnect_max_s)),
        status_pending: false,
        last_status: None,
        status_refresh: false,
    };
    // The first refresh is a minute after the birth (a plain `interval` fires at once, which
    // published every birth twice).
    let mut status_timer = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    );
    status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let primary_every = (index > 0 && m.return_to_primary_s > 0)
        .then(|| Duration::from_secs(m.return_to_primary_s));
    let mut probe_at = primary_every.map(|d| Instant::now() + d);
    let far = Duration::from_secs(86_400 * 365);
    let end = loop {
        if let Err(e) = s.pump(ch).await {
            break End::Failed(e);
        }
        let resume_at = s.refusal.as_ref().and_then(|r| r.resume_at);
        let flush_at = s.acked_since.map(|t| t + ACK_DELAY);
        tokio::select! {
            w = wire.recv() => {
                // Handle everything already queued before pumping again: acks of a whole
                // window are then deleted in one transaction.
                let mut next = w;
                let mut handled = 0;
                let outcome = loop {
                    match next {
                        Some(w) => {
                            if let Err(e) = s.on_wire(w, ch) {
                                break Err(e);
                            }
                        }
                        None => break Err(SessionError::ClientGone),
                    }
                    handled += 1;
                    if handled >= 4096 {
                        break Ok(());
                    }
                    next = match wire.try_recv() {
                        Ok(w) => Some(w),
                        Err(mpsc::error::TryRecvError::Empty) => break Ok(()),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                };
                if let Err(e) = outcome {
                    break End::Failed(e);
                }
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(|| Instant::now() + far)), if flush_at.is_some() => {
                // The pump at the top of the loop deletes what waited ACK_DELAY.
            }
            _ = ch.outbox_changed.notified() => {
                // Rows normally arrive on `fresh` too; read SQLite only if one went missing.
                s.take_fresh(ch);
            }
            row = ch.fresh.recv() => {
                if let Some(row) = row {
                    s.on_fresh(row);
                    s.take_fresh(ch);
                }
            }
            msg = ch.live.recv() => {
                if let Some(msg) = msg {
                    if s.connected {
                        s.enqueue_other(msg);
                    } else {
                        count_dropped(s.stats, msg.qos != QoS::AtMostOnce);
                    }
                }
            }
            _ = status_timer.tick(), if s.connected => {
                s.status_pending = true;
                s.status_refresh = true;
            }
            r = ch.status.changed(), if s.connected => {
                if r.is_ok() {
                    s.status_pending = true;
                }
            }
            // A Sparkplug counter shown in `P/status` changed (a refused DCMD/NCMD).
            _ = s.stats.sparkplug.changed.notified(), if s.connected => s.status_pending = true,
            _ = tokio::time::sleep_until(resume_at.unwrap_or_else(|| Instant::now() + far)), if resume_at.is_some() => {
                s.resume_after_refusal();
            }
            _ = tokio::time::sleep_until(probe_at.unwrap_or_else(|| Instant::now() + far)), if probe_at.is_some() && s.connected => {
                if probe(&settings.mqtt.url).await {
                    s.goodbye(&mut wire).await;
                    break End::ReturnToPrimary;
                }
                probe_at = primary_every.map(|d| Instant::now() + d);
            }
            _ = ch.shutdown.changed() => {
                s.goodbye(&mut wire).await;
                break End::Shutdown;
            }
        }
    };
    // Whatever was acknowledged is deleted before the session's memory is thrown away.
    let flushed = s.flush().await;
    driver.abort();
    let connected_for = s.connected_at.map(|t| t.elapsed());
    let end = match (end, flushed) {
        (End::Failed(e), _) => End::Failed(e),
        (_, Err(e)) => End::Failed(e),
        (end, Ok(())) => end,
    };
    (end, connected_for)
}

/// Whether a broker accepts TCP connections (2 s at most); used to return to the primary and
/// to cut a reconnect wait short.
pub(crate) async fn probe(url: &MqttUrl) -> bool {
    let addr = (url.host.as_str(), url.port);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

impl Session<'_> {
    /// Publishes a message outside the outbox if a client slot is free; never fails.
    fn publish_other(&mut self, topic: &str, qos1: bool, retain: bool, payload: String) -> bool {
        let topic = format!("{}/{}", self.prefix, topic);
        if self.corr.others_outstanding() >= self.others_slots
            || client::publish_packet_size(topic.len(), payload.len()) > self.max_send
        {
            return false;
        }
        match self
            .client
            .publish(topic, qos1, retain, payload.into_bytes())
        {
            Ok(()) => {
                self.corr.queued(Tag::Other { qos1 });
                true
            }
            Err(client::Busy) => false,
        }
    }

    /// Queues a reply or live message for the next free slot; full queue: dropped, counted.
    fn enqueue_other(&mut self, msg: LiveMessage) {
        let bytes = msg.topic.len() + msg.payload.len();
        if self.others.len() >= OTHERS_QUEUE || self.others_bytes + bytes > OTHERS_QUEUE_BYTES {
            count_dropped(self.stats, msg.qos != QoS::AtMostOnce);
            return;
        }
        self.others_bytes += bytes;
        self.others.push_back(msg);
    }

    /// Hands waiting replies and live messages to the client while slots are free.
    fn feed_others(&mut self) {
        while self.corr.others_outstanding() < self.others_slots {
            let Some(msg) = self.others.pop_front() else {
                break;
            };
            self.others_bytes = self
                .others_bytes
                .saturating_sub(msg.topic.len() + msg.payload.len());
            let qos1 = msg.qos != QoS::AtMostOnce;
            if !self.publish_other(&msg.topic, qos1, msg.retain, msg.payload) {
                // Too large for the broker, or the client refused it: it cannot be sent.
                count_dropped(self.stats, qos1);
            }
        }
    }

    /// The retained `P/status`: the daemon's birth and health plus the uplink's own.
    fn publish_status(&mut self, ch: &mut UplinkChannels) {
        if self.corr.others_outstanding() >= self.others_slots {
            // Stays pending: sent as soon as a slot frees up.
            return;
        }
        let mut status = ch.status.borrow_and_update().clone();
        if let Some(obj) = status.as_object_mut() {
            obj.insert("broker".into(), self.broker.authority().into());
            let health = obj.entry("health").or_insert_with(|| serde_json::json!({}));
            if let Some(h) = health.as_object_mut() {
                h.insert("refused".into(), serde_json::json!(self.stats.refused()));
                h.insert("uplink".into(), self.stats.health());
            }
        }
        let text = status.to_string();
        self.status_pending = false;
        if !std::mem::take(&mut self.status_refresh) && self.last_status.as_ref() == Some(&text) {
            return;
        }
        if self.publish_other("status", true, true, text.clone()) {
            self.last_status = Some(text);
        } else {
            self.stats.status_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A committed row handed over by the core: queued when it is the next one expected and
    /// nothing older is waiting in SQLite; otherwise SQLite has it and is read.
    fn on_fresh(&mut self, row: OutboxRow) {
        if !self.connected || self.refusal.is_some() {
            self.dirty = true;
        } else if row.seq < self.cursor {
            // Already read from SQLite.
        } else if !self.dirty && row.seq == self.cursor {
            self.cursor = row.seq + 1;
            self.queue.push_back(row);
        } else {
            self.dirty = true;
        }
    }

    /// Drains the hand-off channel; if a committed row still was not seen (the channel was
    /// full, or the commit dropped rows for the outbox bound), the outbox is read.
    fn take_fresh(&mut self, ch: &mut UplinkChannels) {
        while let Ok(row) = ch.fresh.try_recv() {
            self.on_fresh(row);
        }
        if ch.committed.load(Ordering::Acquire) >= self.cursor {
            self.dirty = true;
        }
    }

    /// Deletes acknowledged rows, reads more rows, and publishes while the window allows.
    async fn pump(&mut self, ch: &mut UplinkChannels) -> Result<(), SessionError> {
        let due = self.acked.len() >= ACK_BATCH
            || self.acked_since.is_some_and(|t| t.elapsed() >= ACK_DELAY)
            || !self.too_large.is_empty();
        if due {
            self.flush().await?;
        }
        if !self.connected {
            return Ok(());
        }
        if self.status_pending {
            self.publish_status(ch);
        }
        self.feed_others();
        if let Some(r) = &mut self.refusal {
            if r.resume_at.is_none() && self.corr.outbox_outstanding() == 0 {
                let delay = self
                    .refusal_backoff
                    .next(None, |lo, hi| fastrand::u64(lo..hi));
                r.resume_at = Some(Instant::now() + delay);
            }
            return Ok(());
        }
        while self.corr.outbox_outstanding() < self.window {
            if self.queue.is_empty() {
                if !self.dirty {
                    break;
                }
                let from = self.cursor;
                let rows = with_reader(self.reader, move |r| r.fetch(from, PAGE)).await?;
                if rows.len() < PAGE {
                    self.dirty = false;
                }
                if let Some(last) = rows.last() {
                    self.cursor = last.seq + 1;
                }
                self.queue.extend(rows);
                if self.queue.is_empty() {
                    break;
                }
            }
            let Some(row) = self.queue.pop_front() else {
                break;
            };
            let payload = row.envelope(&self.settings.gateway_id, &self.settings.stream);
            let topic = format!("{}/{}", self.prefix, row.topic);
            let size = client::publish_packet_size(topic.len(), payload.len());
            if size > self.max_send {
                tracing::error!(
                    seq = row.seq,
                    r#type = %row.event_type,
                    bytes = size,
                    limit = self.max_send,
                    "outbox message larger than the broker accepts; moved to the drop ledger as too_large"
                );
                self.too_large.push((row.seq, row.kind, size as u64));
                continue;
            }
            if self
                .client
                .publish(topic, true, row.retain, payload.into_bytes())
                .is_err()
            {
                // Cannot happen while others stay within OTHERS_MAX; resend it next time.
                self.queue.push_front(row);
                break;
            }
            self.corr.queued(Tag::Outbox(row.seq));
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The broker took outbox row `seq`: counted now, deleted with its batch (up to
    /// [`ACK_DELAY`] later).
    fn delivered(&mut self, seq: i64) {
        self.acked.push(seq);
        self.acked_since.get_or_insert_with(Instant::now);
        self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_acked_seq
            .fetch_max(u64::try_from(seq).unwrap_or(0), Ordering::Relaxed);
    }

    /// Deletes delivered rows and moves too-large ones to the ledger, on the uplink's own
    /// SQLite connection, off the core's thread (`spawn_blocking`).
    async fn flush(&mut self) -> Result<(), SessionError> {
        if self.acked.is_empty() && self.too_large.is_empty() {
            return Ok(());
        }
        let seqs = std::mem::take(&mut self.acked);
        self.acked_since = None;
        let too_large = std::mem::take(&mut self.too_large);
        let large = too_large.len() as u64;
        with_reader(self.reader, move |r| {
            r.delete(&seqs)?;
            r.drop_too_large(&too_large, crate::clock::Clock::system().now_ms())
        })
        .await?;
        self.stats.too_large.fetch_add(large, Ordering::Relaxed);
        if large > 0 {
            self.status_pending = true;
        }
        Ok(())
    }

    fn on_wire(&mut self, w: Wire, ch: &mut UplinkChannels) -> Result<(), SessionError> {
        match w {
            Wire::Connected {
                max_packet,
                receive_max,
            } => {
                self.connected = true;
                self.connected_at = Some(Instant::now());
                if let Some(limit) = max_packet {
                    self.max_send = self.max_send.min(limit as usize);
                }
                if let Some(r) = receive_max {
                    // The broker lets us have `r` unacknowledged QoS 1 publishes: the outbox
                    // keeps three quarters of them (at least one), replies and status the rest.
                    let total = (self.window + OTHERS_SLOTS).min(usize::from(r.max(2)));
                    self.others_slots = OTHERS_SLOTS.min(total / 4).max(1);
                    self.window = self.window.min(total - self.others_slots).max(1);
                }
                events::MqttConnected {
                    broker: &self.broker.authority(),
                }
                .emit(self.stats);
                // Clean session: subscribe after every CONNACK.
                self.client
                    .subscribe(format!("{}/cmd/#", self.prefix))
                    .map_err(|_| SessionError::ClientGone)?;
                self.status_pending = true;
                self.publish_status(ch);
                self.dirty = true;
                drop(save_state(self.reader, self.stats));
            }
            Wire::Written(pkid) => self.corr.written(pkid)?,
            Wire::Collision(pkid) => return Err(correlator::Desync(pkid).into()),
            Wire::Acked { pkid, reason } => match self.corr.acked(pkid, reason) {
                Acked::Delivered(seq) => {
                    self.delivered(seq);
                    if self.refusing > 0 && self.refusal.is_none() {
                        tracing::info!(
                            refused = self.refusing,
                            "broker accepts the outbox's publishes again"
                        );
                        self.refusing = 0;
                        self.refusal_backoff.reset();
                        self.status_pending = true;
                    }
                }
                Acked::Refused { seq, reason } => self.on_refused(seq, reason),
                Acked::Other {
                    refused: Some(reason),
                } => events::PublishRefused {
                    reason: client::reason_name(reason),
                    code: reason,
                    seq: None,
                    broker: &self.broker.authority(),
                    episode_starts: false,
                }
                .emit(self.stats),
                Acked::Other { refused: None } | Acked::Unknown => {}
            },
            Wire::Message(p) => self.on_inbound(p, ch),
            Wire::Disconnected => {}
            Wire::Lost(lost) => {
                if lost.oversized_inbound {
                    self.stats.inbound_oversized.fetch_add(1, Ordering::Relaxed);
                }
                return Err(SessionError::Lost(lost));
            }
        }
        Ok(())
    }

    /// The broker refused an outbox row: keep it, stop sending, replay after a backoff.
    fn on_refused(&mut self, seq: i64, reason: u8) {
        events::PublishRefused {
            reason: client::reason_name(reason),
            code: reason,
            seq: Some(seq),
            broker: &self.broker.authority(),
            episode_starts: self.refusing == 0,
        }
        .emit(self.stats);
        if self.refusing == 0 {
            self.status_pending = true;
        }
        self.refusing += 1;
        if self.refusal.is_none() {
            self.refusal = Some(Refusal { resume_at: None });
        }
    }

    /// The refusal backoff elapsed: read the outbox again from its oldest row.
    fn resume_after_refusal(&mut self) {
        self.refusal = None;
        self.queue.clear();
        self.cursor = 0;
        self.dirty = true;
    }

    fn on_inbound(&mut self, p: client::Inbound, ch: &mut UplinkChannels) {
        let verdict = self.guard.check(
            self.prefix,
            &p.topic,
            &p.payload,
            p.retain,
            std::time::Instant::now(),
            jiff::Timestamp::now().as_millisecond(),
        );
        let refusal = match verdict {
            guard::Verdict::Ignore => None,
            guard::Verdict::Accept { path } => {
                let queued = InboundCommand::within(self.budget, path, p.payload.to_vec())
                    .is_some_and(|cmd| ch.commands.try_send(cmd).is_ok());
                if queued {
                    None
                } else {
                    let request_id = guard::request_id_of(&p.payload);
                    // Never applied: the same signed bytes may be sent again.
                    self.guard.forget(request_id.as_str().unwrap_or_default());
                    Some((request_id, BUSY.to_string()))
                }
            }
            guard::Verdict::Reject { request_id, error } => Some((request_id, error)),
        };
        if let Some((request_id, error)) = refusal {
            tracing::debug!(topic = %p.topic, bytes = p.payload.len(), %error, "command refused");
            let path = p
                .topic
                .strip_prefix(self.prefix)
                .and_then(|t| t.strip_prefix("/cmd/"))
                .unwrap_or_default();
            events::CommandHandled {
                command: events::command_of_path(path),
                result: events::CommandResult::Refused,
            }
            .emit(self.stats);
            self.stats.commands_rejected.fetch_add(1, Ordering::Relaxed);
            self.enqueue_other(LiveMessage {
                topic: "reply".into(),
                payload: guard::reply(&request_id, &error),
                qos: QoS::AtLeastOnce,
                retain: false,
            });
        }
    }

    /// Clean shutdown: wait briefly for in-flight acks, publish `offline`, disconnect.
    async fn goodbye(&mut self, wire: &mut mpsc::Receiver<Wire>) {
        if !self.connected {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut disconnecting = false;
        loop {
            if !disconnecting && self.corr.outbox_outstanding() == 0 {
                let offline = serde_json::json!({"state": "offline"}).to_string();
                // The goodbye must get out even under a flood of replies.
                let topic = format!("{}/status", self.prefix);
                let _ = self.client.publish(topic, true, true, offline.into_bytes());
                self.corr.queued(Tag::Other { qos1: true });
                let _ = self.client.disconnect();
                disconnecting = true;
            }
            let Ok(Some(w)) = tokio::time::timeout_at(deadline, wire.recv()).await else {
                break;
            };
            match w {
                Wire::Acked { pkid, reason } => {
                    if let Acked::Delivered(seq) = self.corr.acked(pkid, reason) {
                        self.delivered(seq);
                    }
                }
                Wire::Written(pkid) if self.corr.written(pkid).is_err() => break,
                Wire::Disconnected | Wire::Lost(_) => break,
                _ => {}
            }
        }
    }
}
