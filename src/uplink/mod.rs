//! Uplink: drains the outbox to the MQTT broker and hands inbound commands to the core.
//!
//! ## Design constraints
//! - **A row leaves SQLite only on its PUBACK.** `AsyncClient::publish()` returning `Ok` means
//!   "queued in rumqttc's memory", nothing more, and it does not return the packet id
//!   (rumqtt issues #349 and #1007). So the uplink correlates itself:
//!   1. every publish we hand to rumqttc is pushed, in order, onto a FIFO of tags
//!      (`Outbox(seq)` or `Other`);
//!   2. rumqttc's event loop takes requests from its channel strictly in order and reports each
//!      one as `Outgoing::Publish(pkid)` when it writes it, so popping the FIFO on that event
//!      pairs the packet id with the `seq`;
//!   3. `Incoming::PubAck(pkid)` then names the `seq` to delete. Deletes are batched into one
//!      transaction per wake-up on the uplink's own SQLite connection.
//!
//!   rumqttc reports `Outgoing::AwaitAck` when a broker acknowledges out of order and a packet
//!   id is still taken; that breaks the pairing, so the session is dropped and replayed.
//! - **Resend from SQLite, never from library memory.** rumqttc keeps its in-flight publishes in
//!   memory and would replay them itself after a reconnect. We never let it: every connection
//!   gets a brand-new `AsyncClient`/`EventLoop`, and a new session starts reading the outbox
//!   again from its oldest row. Duplicates are therefore exactly the messages that were in
//!   flight at the disconnect, and order is always `seq` order.
//! - **Bounded.** At most `mqtt.max_inflight` outbox messages are unacknowledged at once; the
//!   outbox is read in pages; live (QoS 0) telemetry arrives on a bounded channel and is
//!   dropped, counted, while disconnected.
//! - **Reconnect without storms.** Capped (30 s) exponential backoff with decorrelated jitter,
//!   reset only after a connection has stayed up for a minute. `clean_session = false` with a
//!   fixed client id, so the broker keeps our command subscription across reconnects.
//! - The uplink never invents events: birth/will on `P/status` and command replies are the only
//!   messages it publishes that are not outbox rows.

pub mod backoff;
pub mod guard;
pub mod signature;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS};
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::Mqtt;
use crate::store::outbox::{OutboxReader, OutboxRow};

/// How many outbox rows one read fetches.
const PAGE: usize = 512;

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
#[derive(Debug, Clone)]
pub struct InboundCommand {
    /// The topic below `P/cmd/`, e.g. `BP01.PACK.BAG1/andon/ack`.
    pub path: String,
    pub payload: Vec<u8>,
}

/// Counters the demo view, `status` and tests read.
#[derive(Debug, Default)]
pub struct UplinkStats {
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub acknowledged: AtomicU64,
    pub connects: AtomicU64,
    pub live_dropped: AtomicU64,
    /// Highest seq whose PUBACK arrived.
    pub last_acked_seq: AtomicU64,
    /// Commands refused by the gate ([`guard`]) with an `ok:false` reply.
    pub commands_rejected: AtomicU64,
}

/// Everything the uplink needs besides its channels.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub mqtt: Mqtt,
    pub gateway_id: String,
    pub stream: String,
    pub started_at: String,
    /// Extra fields for the retained birth message (health), refreshed by the core.
    pub version: String,
    /// What the command gate is built from (equipment, `[commands]`, the key).
    pub guard: guard::GuardSettings,
}

/// Why a session ended.
#[derive(Debug, Error)]
enum SessionError {
    #[error("{}", describe_connection_error(.0))]
    Connection(Box<rumqttc::ConnectionError>),
    #[error("broker acknowledged out of order (packet id {0} still in flight); resyncing")]
    OutOfOrder(u16),
    #[error("outbox: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("event loop stopped")]
    EventLoopGone,
    #[error("mqtt client: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("tls: {0}")]
    Tls(String),
}

impl From<rumqttc::ConnectionError> for SessionError {
    fn from(e: rumqttc::ConnectionError) -> Self {
        SessionError::Connection(Box::new(e))
    }
}

/// The channels the uplink is wired with.
pub struct UplinkChannels {
    /// Signalled by the core after each commit that added outbox rows.
    pub outbox_changed: Arc<Notify>,
    pub live: mpsc::Receiver<LiveMessage>,
    pub commands: mpsc::Sender<InboundCommand>,
    /// The current `P/status` payload (birth + health), kept fresh by the daemon.
    pub status: watch::Receiver<serde_json::Value>,
    pub shutdown: watch::Receiver<bool>,
}

/// Runs until shutdown: connect, drain, reconnect with backoff.
pub async fn run(
    settings: UplinkSettings,
    reader: OutboxReader,
    mut ch: UplinkChannels,
    stats: Arc<UplinkStats>,
) {
    let reader = Arc::new(Mutex::new(reader));
    let mut backoff = backoff::Backoff::default();
    let mut guard = guard::CommandGuard::new(settings.guard.clone());
    let mut last_error: Option<String> = None;
    loop {
        let (outcome, connected_for) =
            session(&settings, &reader, &mut ch, &stats, &mut guard).await;
        stats.connected.store(false, Ordering::Relaxed);
        if connected_for.is_some() {
            // A new error after a working connection is worth a log line again.
            last_error = None;
        }
        match outcome {
            Ok(()) => return,
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(broker = %format!("{}:{}", settings.mqtt.url.host, settings.mqtt.url.port), error = %message, "MQTT connection lost or refused; buffering in the outbox and retrying");
                    last_error = Some(message);
                }
            }
        }
        let delay = backoff.next(connected_for, |lo, hi| fastrand::u64(lo..hi));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ch.shutdown.changed() => return,
        }
        if *ch.shutdown.borrow() {
            return;
        }
    }
}

/// Tag of a publish handed to rumqttc, in request order.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Outbox(i64),
    Other,
}

struct Session<'a> {
    client: AsyncClient,
    prefix: &'a str,
    settings: &'a UplinkSettings,
    reader: &'a Arc<Mutex<OutboxReader>>,
    stats: &'a UplinkStats,
    fifo: VecDeque<Tag>,
    inflight: HashMap<u16, i64>,
    queue: VecDeque<OutboxRow>,
    /// Next seq to read from the outbox.
    cursor: i64,
    /// More rows may be waiting in SQLite.
    dirty: bool,
    acked: Vec<i64>,
    connected: bool,
    /// When the broker's CONNACK arrived, for the backoff reset.
    connected_at: Option<tokio::time::Instant>,
    guard: &'a mut guard::CommandGuard,
}

fn options(settings: &UplinkSettings) -> Result<MqttOptions, SessionError> {
    let m = &settings.mqtt;
    let mut o = MqttOptions::new(&m.client_id, &m.url.host, m.url.port);
    o.set_keep_alive(Duration::from_secs(m.keep_alive_s.max(5)));
    o.set_clean_session(false);
    // rumqttc's own window is a little wider than ours so birth and replies never block it.
    o.set_inflight(m.max_inflight.saturating_add(8));
    // Incoming limit well above the 64 KiB command limit: an oversized command must get an
    // `ok:false` reply, not make rumqttc drop the connection (the broker would redeliver it
    // after every reconnect). Outgoing: our largest messages are a few KiB.
    o.set_max_packet_size(1024 * 1024, 256 * 1024);
    o.set_last_will(LastWill::new(
        format!("{}/status", m.topic_prefix),
        r#"{"state":"offline"}"#,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &m.username {
        let password = match &m.password_file {
            Some(p) => tls::read_secret(p).map_err(SessionError::Tls)?,
            None => tls::Secret::default(),
        };
        o.set_credentials(user, password.expose());
    }
    if m.url.tls {
        o.set_transport(tls::transport(m).map_err(SessionError::Tls)?);
    }
    Ok(o)
}

/// One connection, from CONNECT to its end; also returns how long it stayed connected.
async fn session(
    settings: &UplinkSettings,
    reader: &Arc<Mutex<OutboxReader>>,
    ch: &mut UplinkChannels,
    stats: &UplinkStats,
    guard: &mut guard::CommandGuard,
) -> (Result<(), SessionError>, Option<Duration>) {
    let opts = match options(settings) {
        Ok(o) => o,
        Err(e) => return (Err(e), None),
    };
    let window = usize::from(settings.mqtt.max_inflight.max(1));
    let (client, eventloop) = AsyncClient::new(opts, window + 64);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    // rumqttc's poll() is driven in its own task so our select! never cancels it mid-packet.
    let driver = tokio::spawn(drive(eventloop, ev_tx));
    let mut s = Session {
        client,
        prefix: &settings.mqtt.topic_prefix,
        settings,
        reader,
        stats,
        fifo: VecDeque::new(),
        inflight: HashMap::new(),
        queue: VecDeque::new(),
        cursor: 0,
        dirty: true,
        acked: Vec::new(),
        connected: false,
        connected_at: None,
        guard,
    };
    let mut status_timer = tokio::time::interval(Duration::from_secs(60));
    status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        if let Err(e) = s.pump(window).await {
            break Err(e);
        }
        tokio::select! {
            ev = ev_rx.recv() => {
                // Handle everything already queued before pumping again: acks of a whole
                // window are then deleted in one transaction, not one per wake-up.
                let mut next = ev;
                let mut handled = 0;
                let outcome = loop {
                    match next {
                        Some(Ok(ev)) => {
                            if let Err(e) = s.on_event(ev, ch).await {
                                break Err(e);
                            }
                        }
                        Some(Err(e)) => break Err(e.into()),
                        None => break Err(SessionError::EventLoopGone),
                    }
                    handled += 1;
                    if handled >= 4096 {
                        break Ok(());
                    }
                    next = match ev_rx.try_recv() {
                        Ok(ev) => Some(ev),
                        Err(mpsc::error::TryRecvError::Empty) => break Ok(()),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                };
                if let Err(e) = outcome {
                    break Err(e);
                }
            }
            _ = ch.outbox_changed.notified() => s.dirty = true,
            msg = ch.live.recv(), if s.connected => {
                if let Some(msg) = msg {
                    if let Err(e) = s.publish(&msg.topic, msg.qos, msg.retain, msg.payload, Tag::Other) {
                        break Err(e);
                    }
                }
            }
            _ = status_timer.tick(), if s.connected => {
                let status = ch.status.borrow().to_string();
                if let Err(e) = s.publish("status", QoS::AtLeastOnce, true, status, Tag::Other) {
                        break Err(e);
                    }
            }
            _ = ch.status.changed(), if s.connected => {
                let status = ch.status.borrow().to_string();
                if let Err(e) = s.publish("status", QoS::AtLeastOnce, true, status, Tag::Other) {
                        break Err(e);
                    }
            }
            _ = ch.shutdown.changed() => {
                s.goodbye(&mut ev_rx).await;
                break Ok(());
            }
        }
    };
    // Whatever was acknowledged is deleted before the session's memory is thrown away.
    let flushed = s.flush_acks().await;
    driver.abort();
    let connected_for = s.connected_at.map(|t| t.elapsed());
    (result.and(flushed), connected_for)
}

/// A connection error in words an engineer can act on (credentials and TLS named as such).
fn describe_connection_error(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode as Rc, ConnectionError as Ce};
    match e {
        Ce::ConnectionRefused(Rc::BadUserNamePassword | Rc::NotAuthorized) => {
            "broker refused the login: bad user name or password, or not authorised \
             (check mqtt.username and the password_file)"
                .into()
        }
        Ce::ConnectionRefused(Rc::BadClientId) => {
            "broker refused the client id (check mqtt.client_id)".into()
        }
        Ce::ConnectionRefused(code) => format!("broker refused the connection: {code:?}"),
        Ce::Tls(t) => format!(
            "TLS handshake with the broker failed: {t} (check mqtt.ca_file, the broker's \
             certificate and name, and the client certificate)"
        ),
        other => other.to_string(),
    }
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Result<Event, rumqttc::ConnectionError>>,
) {
    loop {
        let ev = eventloop.poll().await;
        let stop = ev.is_err();
        if tx.send(ev).await.is_err() || stop {
            return;
        }
    }
}

impl Session<'_> {
    fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: String,
        tag: Tag,
    ) -> Result<(), SessionError> {
        self.client
            .try_publish(format!("{}/{}", self.prefix, topic), qos, retain, payload)?;
        self.fifo.push_back(tag);
        Ok(())
    }

    /// Deletes acknowledged rows, reads more rows, and publishes while the window allows.
    async fn pump(&mut self, window: usize) -> Result<(), SessionError> {
        self.flush_acks().await?;
        if !self.connected {
            return Ok(());
        }
        while self.outstanding() < window {
            if self.queue.is_empty() {
                if !self.dirty {
                    break;
                }
                let from = self.cursor;
                let reader = self.reader.clone();
                let rows = tokio::task::spawn_blocking(move || {
                    reader
                        .lock()
                        .map_err(|_| {
                            crate::store::StoreError::Missing("outbox lock poisoned".into())
                        })?
                        .fetch(from, PAGE)
                })
                .await
                .map_err(|_| SessionError::EventLoopGone)??;
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
            self.publish(
                &row.topic,
                QoS::AtLeastOnce,
                row.retain,
                payload,
                Tag::Outbox(row.seq),
            )?;
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn outstanding(&self) -> usize {
        self.inflight.len()
            + self
                .fifo
                .iter()
                .filter(|t| matches!(t, Tag::Outbox(_)))
                .count()
    }

    async fn flush_acks(&mut self) -> Result<(), SessionError> {
        if self.acked.is_empty() {
            return Ok(());
        }
        let seqs = std::mem::take(&mut self.acked);
        let reader = self.reader.clone();
        let n = seqs.len() as u64;
        let max = seqs.iter().copied().max().unwrap_or(0);
        tokio::task::spawn_blocking(move || {
            reader
                .lock()
                .map_err(|_| crate::store::StoreError::Missing("outbox lock poisoned".into()))?
                .delete(&seqs)
        })
        .await
        .map_err(|_| SessionError::EventLoopGone)??;
        self.stats.acknowledged.fetch_add(n, Ordering::Relaxed);
        self.stats
            .last_acked_seq
            .fetch_max(u64::try_from(max).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    async fn on_event(&mut self, ev: Event, ch: &mut UplinkChannels) -> Result<(), SessionError> {
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                self.connected = true;
                self.connected_at = Some(tokio::time::Instant::now());
                self.stats.connected.store(true, Ordering::Relaxed);
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    broker = %format!("{}:{}", self.settings.mqtt.url.host, self.settings.mqtt.url.port),
                    "MQTT connected; replaying the outbox from its oldest row"
                );
                let status = ch.status.borrow().to_string();
                self.publish("status", QoS::AtLeastOnce, true, status, Tag::Other)?;
                self.client
                    .try_subscribe(format!("{}/cmd/#", self.prefix), QoS::AtLeastOnce)?;
                self.dirty = true;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => match self.fifo.pop_front() {
                Some(Tag::Outbox(seq)) => {
                    self.inflight.insert(pkid, seq);
                }
                Some(Tag::Other) | None => {}
            },
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                return Err(SessionError::OutOfOrder(pkid));
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(seq) = self.inflight.remove(&ack.pkid) {
                    self.acked.push(seq);
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
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
                        let cmd = InboundCommand {
                            path,
                            payload: p.payload.to_vec(),
                        };
                        match ch.commands.try_send(cmd) {
                            Ok(()) => None,
                            Err(_) => {
                                let request_id = guard::request_id_of(&p.payload);
                                // Never applied: the same signed bytes may be sent again.
                                self.guard.forget(request_id.as_str().unwrap_or_default());
                                Some((
                                    request_id,
                                    "gateway busy: command queue full, try again".to_string(),
                                ))
                            }
                        }
                    }
                    guard::Verdict::Reject { request_id, error } => Some((request_id, error)),
                };
                if let Some((request_id, error)) = refusal {
                    // The gate logs refusals itself, paced per reason (a flood is one line).
                    tracing::debug!(topic = %p.topic, bytes = p.payload.len(), %error, "command refused");
                    self.stats.commands_rejected.fetch_add(1, Ordering::Relaxed);
                    let reply = guard::reply(&request_id, &error);
                    // Best effort under a flood: a full request queue drops the reply, never
                    // the session.
                    if let Err(e) =
                        self.publish("reply", QoS::AtLeastOnce, false, reply, Tag::Other)
                    {
                        tracing::debug!(error = %e, "command reply dropped: request queue full");
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Clean shutdown: wait briefly for in-flight acks, publish `offline`, disconnect.
    async fn goodbye(
        &mut self,
        ev_rx: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    ) {
        if !self.connected {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut disconnecting = false;
        loop {
            if !disconnecting && self.outstanding() == 0 {
                let offline = serde_json::json!({"state": "offline"}).to_string();
                let _ = self.publish("status", QoS::AtLeastOnce, true, offline, Tag::Other);
                let _ = self.client.try_disconnect();
                disconnecting = true;
            }
            let Ok(Some(Ok(ev))) = tokio::time::timeout_at(deadline, ev_rx.recv()).await else {
                break;
            };
            match ev {
                Event::Incoming(Incoming::PubAck(ack)) => {
                    if let Some(seq) = self.inflight.remove(&ack.pkid) {
                        self.acked.push(seq);
                    }
                }
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some(Tag::Outbox(seq)) = self.fifo.pop_front() {
                        self.inflight.insert(pkid, seq);
                    }
                }
                Event::Outgoing(Outgoing::Disconnect) => break,
                _ => {}
            }
        }
    }
}
