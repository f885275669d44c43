//! The edge node's MQTT session (SPEC §8 "Session", "Primary host", "Store and forward",
//! "Connections").
//!
//! ## Design constraints
//! - **Its own connection.** Client id `client_id` + `-spb`, clean session, will = NDEATH
//!   with this session's `bdSeq` (QoS 1, not retained). The `bdSeq` is taken from SQLite
//!   *before* the CONNECT ([`SpbReader::next_bd_seq`]): every CONNECT, across restarts, has
//!   the previous one + 1 (wrapping 255 → 0).
//! - **Births.** NBIRTH (`seq` 0, `bdSeq`, `Node Control/Rebirth = false`, the node metrics)
//!   then one DBIRTH per equipment with every metric's name, alias, datatype and committed
//!   current value; `seq` +1 per message, mod 256. With `primary_host_id`, births wait for
//!   the host's STATE online; an offline (not stale) ends the session with an NDEATH.
//! - **DDATA from the outbox only.** Each row of the Sparkplug queue is one DDATA, aliases
//!   only, each metric timestamped with the row's tick time, rows in `id` order. Rows up to
//!   the last one the BIRTH's values include are historical (`is_historical` on every
//!   metric): after a reconnect that is the stored backlog *and* the unproven window.
//! - **Deleted only when provably read.** BIRTH and DATA go at QoS 0, so there is no PUBACK
//!   per row. After every [`FENCE_EVERY`] DDATA (and when the queue runs dry) the session
//!   publishes a QoS 1 *fence* (empty, not retained) on `{topic_prefix}/spb/fence` on the
//!   same connection. MQTT keeps a connection's packets in order and the broker processes them
//!   in order, so its PUBACK of the fence — with any reason code — proves that the broker has
//!   read every DDATA before it: only then are the rows up to it deleted. A disconnect loses
//!   the unfenced rows' proof, never the rows: the next session sends them again, historical
//!   (duplicates, never gaps).
//! - **Read-only.** NCMD `Node Control/Rebirth = true` is honoured (new NBIRTH and DBIRTHs,
//!   same `bdSeq`); every other DCMD/NCMD metric is a write: refused, counted, logged once per
//!   minute at most; nothing reaches a PLC.
//! - **`cloudevents = false`.** The session subscribes to `P/cmd/#` and runs the same command
//!   gate as the CloudEvents uplink; the only other messages it publishes under `P/` are the
//!   `P/reply` answers and the fences.
//! - **Brokers.** `url`, then each of `failover_urls` when one cannot be reached (the backoff
//!   waits only after a whole round); on a failover broker `url` is probed every
//!   `return_to_primary_s`, and once it answers the session says goodbye (NDEATH) and moves
//!   back. A primary host that goes offline is waited for on the same broker (SPEC §8).
//! - Never publishes a value the store did not commit.

mod births;
mod inbound;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use super::codec::{self, Out, BD_SEQ};
use super::host::HostState;
use super::model::Catalogue;
use super::proto::Metric;
use crate::config::{Mqtt, MqttUrl, Sparkplug};
use crate::health::Registry;
use crate::store::sparkplug::{SpbReader, SpbRow};
use crate::store::StoreError;
use crate::uplink::client::{self, Client, Wire};
use crate::uplink::{backoff, guard, InboundCommand, LiveMessage};

/// Rows one read fetches.
const PAGE: usize = 256;
/// A fence after this many DDATA.
pub const FENCE_EVERY: usize = 256;
/// Fences awaiting their PUBACK, at most.
const FENCES_MAX: usize = 4;
/// Publishes handed to the client and not yet written, at most.
const QUEUED_MAX: usize = 1024;
/// Node metrics (outbox depth and age) are re-read this often; NDATA only when changed.
const NODE_EVERY: Duration = Duration::from_secs(10);

/// What the session is built from.
#[derive(Debug, Clone)]
pub struct SpbSettings {
    /// The `[mqtt]` section (the client id gets `-spb`).
    pub mqtt: Mqtt,
    pub sparkplug: Sparkplug,
    pub catalogue: Catalogue,
    pub version: String,
    /// Present with `cloudevents = false`: commands arrive on this connection.
    pub guard: Option<guard::GuardSettings>,
}

/// The session's channels.
pub struct SpbChannels {
    /// Woken by the store after a commit that wrote Sparkplug rows.
    pub changed: Arc<Notify>,
    pub shutdown: watch::Receiver<bool>,
    /// Equipment a reload removes (DDEATH before the NDEATH of the stop).
    pub retire: watch::Receiver<Vec<String>>,
    /// With `cloudevents = false`: accepted commands to the core, replies from it.
    pub commands: Option<mpsc::Sender<InboundCommand>>,
    pub live: Option<mpsc::Receiver<LiveMessage>>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{}", .0.message)]
    Lost(client::Lost),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("mqtt client request queue closed")]
    ClientGone,
    #[error("packet id {0} reused while awaiting its PUBACK")]
    Desync(u16),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("tls: {0}")]
    Tls(String),
}

enum End {
    Shutdown,
    /// The primary host went offline: reconnect (a new `bdSeq`) and wait for it.
    HostOffline,
    /// On a failover broker, `url` accepts connections again: NDEATH here, then connect there.
    ReturnToPrimary,
    Failed(SessionError),
}

/// What a publish handed to the client was.
#[derive(Debug, Clone, Copy)]
enum Tag {
    /// QoS 0: a BIRTH, DATA or DEATH.
    Plain,
    /// QoS 1 fence covering rows up to this id.
    Fence(i64),
    /// QoS 1 reply or NDEATH: acknowledged, nothing to do.
    Other,
}

/// Runs until shutdown: connect, birth, forward, reconnect with backoff.
pub async fn run(
    settings: SpbSettings,
    reader: SpbReader,
    mut ch: SpbChannels,
    stats: Arc<Registry>,
) {
    let reader = Arc::new(Mutex::new(reader));
    let cap = Duration::from_secs(settings.mqtt.reconnect_max_s);
    let mut backoff = backoff::Backoff::with_cap(cap);
    let mut guard = settings.guard.clone().map(guard::CommandGuard::new);
    let gauge = &stats.sparkplug;
    gauge.host_online.store(-1, Ordering::Relaxed);
    let mut last_error: Option<String> = None;
    // `url` then `failover_urls` (SPEC §7 "Failover"): a broker this session cannot reach is
    // left for the next one at once; the backoff waits only after a whole round.
    let brokers = settings.mqtt.brokers();
    let mut current = 0usize;
    // Bytes of accepted commands waiting for the core (`cloudevents = false`); it outlives a
    // connection, as the commands do.
    let budget = Arc::new(AtomicUsize::new(0));
    loop {
        let broker = &brokers[current];
        let bd_seq = match with_reader(&reader, |r| r.next_bd_seq()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "sparkplug: bdSeq could not be stored; not connecting");
                if wait_or_shutdown(&mut ch, Duration::from_secs(5)).await {
                    return;
                }
                continue;
            }
        };
        gauge.bd_seq.store(u64::from(bd_seq), Ordering::Relaxed);
        let (end, connected_for) = session(
            &settings,
            broker,
            bd_seq,
            &reader,
            &mut ch,
            &stats,
            guard.as_mut(),
            &budget,
        )
        .await;
        gauge.connected.store(false, Ordering::Relaxed);
        save_state(&reader, &stats);
        if connected_for.is_some() {
            last_error = None;
        }
        match end {
            End::Shutdown => return,
            End::HostOffline => {
                tracing::warn!(host = ?settings.sparkplug.primary_host_id, "sparkplug: primary host offline; NDEATH sent, reconnecting to wait for it");
                backoff.reset();
                continue;
            }
            End::ReturnToPrimary => {
                tracing::info!(broker = %brokers[0].authority(), "sparkplug: primary broker answers again; NDEATH sent, moving back to it");
                current = 0;
                backoff.reset();
                continue;
            }
            End::Failed(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(broker = %broker.authority(), error = %message, "sparkplug: MQTT connection lost or refused; DDATA waits in the outbox");
                    last_error = Some(message);
                }
            }
        }
        if connected_for.is_none() && brokers.len() > 1 {
            current = (current + 1) % brokers.len();
            tracing::info!(broker = %brokers[current].authority(), "sparkplug: trying the next broker");
            if current != 0 {
                continue;
            }
        }
        let delay = backoff.next(connected_for, |lo, hi| fastrand::u64(lo..hi));
        if wait_or_shutdown(&mut ch, delay).await {
            return;
        }
    }
}

/// Waits `delay` (dropping replies that cannot be sent); true on shutdown.
async fn wait_or_shutdown(ch: &mut SpbChannels, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return *ch.shutdown.borrow(),
            _ = ch.shutdown.changed() => return true,
            msg = recv_live(&mut ch.live) => if msg.is_none() { ch.live = None },
        }
    }
}

async fn recv_live(live: &mut Option<mpsc::Receiver<LiveMessage>>) -> Option<LiveMessage> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes the registry's uplink health where `status` reads it, in the background.
fn save_state(reader: &Arc<Mutex<SpbReader>>, stats: &Registry) {
    let json = stats.health().to_string();
    let reader = reader.clone();
    tokio::spawn(async move {
        if let Err(e) = with_reader(&reader, move |r| r.save_uplink_state(&json)).await {
            tracing::debug!(error = %e, "sparkplug: uplink state not saved for status");
        }
    });
}

async fn with_reader<T: Send + 'static>(
    reader: &Arc<Mutex<SpbReader>>,
    f: impl FnOnce(&mut SpbReader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SessionError> {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || match reader.lock() {
        Ok(mut r) => f(&mut r),
        Err(_) => Err(StoreError::Missing("sparkplug reader lock poisoned".into())),
    })
    .await
    .map_err(|_| SessionError::ClientGone)?
    .map_err(SessionError::Store)
}

/// The topics of one edge node.
struct Topics {
    ns: String,
    node: String,
    state: Option<String>,
    fence: String,
    prefix: String,
}

impl Topics {
    fn of(s: &SpbSettings) -> Topics {
        let g = &s.sparkplug.group_id;
        Topics {
            ns: format!("spBv1.0/{g}"),
            node: s.sparkplug.edge_node_id.clone(),
            state: s
                .sparkplug
                .primary_host_id
                .as_ref()
                .map(|h| format!("spBv1.0/STATE/{h}")),
            fence: format!("{}/spb/fence", s.mqtt.topic_prefix),
            prefix: s.mqtt.topic_prefix.clone(),
        }
    }
    fn node(&self, kind: &str) -> String {
        format!("{}/{kind}/{}", self.ns, self.node)
    }
    fn device(&self, kind: &str, device: &str) -> String {
        format!("{}/{kind}/{}/{device}", self.ns, self.node)
    }
}

struct Session<'a> {
    settings: &'a SpbSettings,
    reader: &'a Arc<Mutex<SpbReader>>,
    stats: &'a Registry,
    guard: Option<&'a mut guard::CommandGuard>,
    /// The command byte budget ([`crate::uplink::INBOUND_BUDGET`]).
    budget: &'a Arc<AtomicUsize>,
    client: Client,
    topics: Topics,
    bd_seq: u8,
    /// The `seq` of the next message.
    seq: u8,
    connected: bool,
    born: bool,
    host: HostState,
    /// Next row id to send.
    cursor: i64,
    /// Rows up to this id go out historical.
    historical_through: i64,
    /// Highest row id published on this connection.
    sent_through: i64,
    /// DDATA since the last fence.
    since_fence: usize,
    page: VecDeque<SpbRow>,
    /// More rows may be waiting in SQLite.
    dirty: bool,
    queued: VecDeque<Tag>,
    /// Fences written, by packet id, with the row they cover.
    fences: HashMap<u16, i64>,
    fences_outstanding: usize,
    last_node: Option<(u64, Option<i64>)>,
    last_refusal_log: Option<Instant>,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    settings: &SpbSettings,
    broker: &MqttUrl,
    bd_seq: u8,
    reader: &Arc<Mutex<SpbReader>>,
    ch: &mut SpbChannels,
    stats: &Registry,
    guard: Option<&mut guard::CommandGuard>,
    budget: &Arc<AtomicUsize>,
) -> (End, Option<Duration>) {
    let m = &settings.mqtt;
    let password = match &m.password_file {
        Some(p) => match crate::uplink::tls::read_secret(p) {
            Ok(s) => Some(s),
            Err(e) => return (End::Failed(SessionError::Credentials(e)), None),
        },
        None => None,
    };
    let transport = if broker.tls {
        match crate::uplink::tls::transport(m) {
            Ok(t) => Some(t),
            Err(e) => return (End::Failed(SessionError::Tls(e)), None),
        }
    } else {
        None
    };
    let mut mqtt = m.clone();
    mqtt.client_id = format!("{}-spb", m.client_id);
    let topics = Topics::of(settings);
    let now_ms = crate::clock::Clock::system().now_ms();
    let (client, mut wire, driver) = client::open(client::Connect {
        mqtt: &mqtt,
        broker,
        password: password.as_ref().map(|p| p.expose()),
        transport,
        queue: QUEUED_MAX + settings.catalogue.devices.len() + 64,
        inflight: (FENCES_MAX + crate::uplink::OTHERS_SLOTS + 2) as u16,
        will: (topics.node("NDEATH"), codec::ndeath(bd_seq, now_ms)),
        will_retain: false,
    });
    let mut s = Session {
        settings,
        reader,
        stats,
        guard,
        budget,
        client,
        topics,
        bd_seq,
        seq: 0,
        connected: false,
        born: false,
        host: HostState::default(),
        cursor: 0,
        historical_through: 0,
        sent_through: 0,
        since_fence: 0,
        page: VecDeque::new(),
        dirty: true,
        queued: VecDeque::new(),
        fences: HashMap::new(),
        fences_outstanding: 0,
        last_node: None,
        last_refusal_log: None,
    };
    let mut connected_at: Option<Instant> = None;
    // On a failover broker, `url` is probed every `return_to_primary_s` (SPEC §7 "Failover"):
    // the move back happens only once it answers, so the node is never without a broker.
    let primary_every = (broker != &m.url && m.return_to_primary_s > 0)
        .then(|| Duration::from_secs(m.return_to_primary_s));
    let mut probe_at = primary_every.map(|d| Instant::now() + d);
    let far = Duration::from_secs(86_400);
    let mut node_timer = tokio::time::interval_at(Instant::now() + NODE_EVERY, NODE_EVERY);
    node_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        if let Err(e) = s.pump().await {
            break End::Failed(e);
        }
        tokio::select! {
            w = wire.recv() => {
                let Some(w) = w else { break End::Failed(SessionError::ClientGone) };
                let was = s.connected;
                match s.on_wire(w, ch).await {
                    Ok(Some(End::HostOffline)) => {
                        s.goodbye(&mut wire, &[]).await;
                        break End::HostOffline;
                    }
                    Ok(Some(end)) => break end,
                    Ok(None) => {}
                    Err(e) => break End::Failed(e),
                }
                if !was && s.connected {
                    connected_at = Some(Instant::now());
                }
            }
            _ = ch.changed.notified() => s.dirty = true,
            msg = recv_live(&mut ch.live) => match msg {
                Some(msg) => s.on_live(msg),
                None => ch.live = None,
            },
            _ = node_timer.tick(), if s.born => {
                if let Err(e) = s.node_data().await {
                    break End::Failed(e);
                }
            }
            _ = tokio::time::sleep_until(probe_at.unwrap_or_else(|| Instant::now() + far)), if probe_at.is_some() && s.connected => {
                if crate::uplink::probe(&m.url).await {
                    s.goodbye(&mut wire, &[]).await;
                    break End::ReturnToPrimary;
                }
                probe_at = primary_every.map(|d| Instant::now() + d);
            }
            _ = ch.shutdown.changed() => {
                let retire = ch.retire.borrow().clone();
                s.goodbye(&mut wire, &retire).await;
                break End::Shutdown;
            }
        }
    };
    driver.abort();
    (end, connected_at.map(|t| t.elapsed()))
}

impl Session<'_> {
    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(seq)
    }

    /// Hands a publish to the client; false when its queue is full.
    fn publish(&mut self, topic: String, tag: Tag, payload: Vec<u8>) -> Result<(), SessionError> {
        let qos1 = !matches!(tag, Tag::Plain);
        self.client
            .publish(topic, qos1, false, payload)
            .map_err(|_| SessionError::ClientGone)?;
        self.queued.push_back(tag);
        Ok(())
    }

    /// A payload with the next `seq`.
    fn payload(&mut self, metrics: Vec<Metric>) -> Vec<u8> {
        let seq = self.next_seq() as u8;
        codec::payload(now_ms(), Some(seq), metrics)
    }

    /// Sends stored rows while the client has room; fences as the module doc says.
    async fn pump(&mut self) -> Result<(), SessionError> {
        if !self.born {
            return Ok(());
        }
        while self.queued.len() < QUEUED_MAX {
            if self.page.is_empty() {
                if !self.dirty {
                    break;
                }
                let from = self.cursor;
                let rows = with_reader(self.reader, move |r| r.fetch(from, PAGE)).await?;
                if rows.len() < PAGE {
                    self.dirty = false;
                }
                self.page.extend(rows);
                if self.page.is_empty() {
                    break;
                }
            }
            let Some(row) = self.page.pop_front() else {
                break;
            };
            self.cursor = row.id + 1;
            self.sent_through = row.id;
            if let Some((topic, metrics)) = self.ddata(&row) {
                let payload = self.payload(metrics);
                self.publish(topic, Tag::Plain, payload)?;
                self.stats.sparkplug.ddata.fetch_add(1, Ordering::Relaxed);
            }
            self.since_fence += 1;
            if self.since_fence >= FENCE_EVERY {
                if self.fences_outstanding >= FENCES_MAX {
                    break;
                }
                self.fence()?;
            }
        }
        if self.since_fence > 0
            && self.page.is_empty()
            && !self.dirty
            && self.fences_outstanding < FENCES_MAX
        {
            self.fence()?;
        }
        Ok(())
    }

    /// The DDATA of a stored row (topic, metrics), or `None` when nothing of it is in this
    /// session's catalogue (equipment or signal removed by a reload).
    fn ddata(&self, row: &SpbRow) -> Option<(String, Vec<Metric>)> {
        let dev = self.settings.catalogue.device(&row.equipment)?;
        let historical = row.id <= self.historical_through;
        let metrics: Vec<Metric> = row
            .metrics
            .iter()
            .filter_map(|(name, r)| {
                let def = dev.get(name)?;
                Some(codec::metric(&Out {
                    name: None,
                    alias: Some(def.alias),
                    datatype: def.datatype,
                    with_datatype: false,
                    value: &r.v,
                    quality: r.q,
                    timestamp_ms: row.time_ms,
                    historical,
                }))
            })
            .collect();
        (!metrics.is_empty()).then(|| (self.topics.device("DDATA", &dev.code), metrics))
    }

    /// A QoS 1 fence after everything sent so far.
    fn fence(&mut self) -> Result<(), SessionError> {
        let through = self.sent_through;
        self.publish(self.topics.fence.clone(), Tag::Fence(through), Vec::new())?;
        self.fences_outstanding += 1;
        self.since_fence = 0;
        Ok(())
    }

    async fn on_wire(
        &mut self,
        w: Wire,
        ch: &mut SpbChannels,
    ) -> Result<Option<End>, SessionError> {
        match w {
            Wire::Connected { .. } => {
                self.connected = true;
                self.stats
                    .sparkplug
                    .connected
                    .store(true, Ordering::Relaxed);
                tracing::info!(bd_seq = self.bd_seq, "sparkplug: connected");
                save_state(self.reader, self.stats);
                let subscribe =
                    |c: &Client, f: String| c.subscribe(f).map_err(|_| SessionError::ClientGone);
                subscribe(&self.client, self.topics.node("NCMD"))?;
                subscribe(&self.client, self.topics.device("DCMD", "+"))?;
                if self.guard.is_some() {
                    subscribe(&self.client, format!("{}/cmd/#", self.topics.prefix))?;
                }
                match self.topics.state.clone() {
                    // Births wait for the host's retained STATE.
                    Some(state) => subscribe(&self.client, state)?,
                    None => self.birth().await?,
                }
            }
            Wire::Written(pkid) => match self.queued.pop_front() {
                Some(Tag::Fence(through)) if pkid != 0 => {
                    let reused = self.fences.insert(pkid, through).is_some();
                    if reused {
                        return Err(SessionError::Desync(pkid));
                    }
                }
                Some(Tag::Fence(_)) => self.fences_outstanding -= 1,
                _ => {}
            },
            Wire::Collision(pkid) => return Err(SessionError::Desync(pkid)),
            Wire::Acked { pkid, .. } => {
                // Even a refusal proves the broker read everything before the fence.
                if let Some(through) = self.fences.remove(&pkid) {
                    self.fences_outstanding = self.fences_outstanding.saturating_sub(1);
                    let n = with_reader(self.reader, move |r| r.delete_through(through)).await?;
                    self.stats
                        .sparkplug
                        .delivered
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Wire::Message(p) => return self.on_inbound(p, ch).await,
            Wire::Disconnected => {}
            Wire::Lost(lost) => return Err(SessionError::Lost(lost)),
        }
        Ok(None)
    }

    /// Clean shutdown: a last fence (so delivered rows are not resent), DDEATH for equipment
    /// a reload removes, NDEATH, DISCONNECT; two seconds at most.
    async fn goodbye(&mut self, wire: &mut mpsc::Receiver<Wire>, retired: &[String]) {
        if !self.connected {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        if self.born && self.since_fence > 0 {
            let _ = self.fence();
        }
        let mut dead = false;
        loop {
            if !dead && self.fences_outstanding == 0 {
                self.death(retired);
                let _ = self.client.disconnect();
                dead = true;
            }
            let Ok(Some(w)) = tokio::time::timeout_at(deadline, wire.recv()).await else {
                break;
            };
            match w {
                Wire::Disconnected | Wire::Lost(_) => break,
                w @ (Wire::Written(_) | Wire::Acked { .. }) => {
                    let mut ch = SpbChannels {
                        changed: Arc::new(Notify::new()),
                        shutdown: watch::channel(true).1,
                        retire: watch::channel(Vec::new()).1,
                        commands: None,
                        live: None,
                    };
                    if self.on_wire(w, &mut ch).await.is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
        if !dead {
            self.death(retired);
            let _ = self.client.disconnect();
        }
    }
}

fn now_ms() -> i64 {
    crate::clock::Clock::system().now_ms()
}

/// The `bdSeq` metric name, for tests.
pub const BD_SEQ_METRIC: &str = BD_SEQ;
