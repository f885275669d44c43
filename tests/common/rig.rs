//! One rig for the end-to-end tests: a temp dir, a real mosquitto, a subscriber recording
//! `P/#`, the simulated line BP01, its config (written to `ms5-edge.toml` in the temp dir) and
//! the daemon, either in-process (`daemon::run(cfg, stop, observers)`, like mini-redis's
//! `run(config, shutdown)`) or as a process the test may SIGKILL and restart.
//!
//! Every helper awaits the thing itself (a message, a reply, a counter) with a deadline; none
//! sleeps in place of synchronisation. The rig changes nothing the tests assert on: it only
//! gathers the set-up each file used to copy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ms5_edge::daemon::{self, DaemonError, Observers};
use ms5_edge::engine::MachineState;
use ms5_edge::sim::{self, Machine, Override};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::{watch, OnceCell};

use super::line::{config, config_text, Line, BAGGER, PREFIX};
use super::{Broker, DaemonProcess, Received, Subscriber};

/// Edits the generated config text; gets the rig's temp dir (for key files and the like).
pub type ConfigEdit = Box<dyn FnOnce(String, &Path) -> String + Send>;

/// What differs between the tests' set-ups. `RigOptions::default()` is the plain demo line on
/// a plain broker, the subscriber on `P/#`.
#[derive(Default)]
pub struct RigOptions {
    /// A temp dir made by the test (to put an ACL or key file in before the broker starts).
    pub dir: Option<tempfile::TempDir>,
    /// Extra mosquitto.conf lines ([`Broker::start_with`]).
    pub broker_extra: String,
    /// The subscriber's filter; `P/#` when `None`.
    pub subscribe: Option<String>,
    /// Start the bagger's scenario at this many ms ([`sim::start_at`]); from 0 when `None`.
    pub bagger_at_ms: Option<u64>,
    /// An override held on the bagger before the daemon starts.
    pub bagger: Option<Override>,
    /// Extra `[mqtt]` lines ([`config_text`]).
    pub mqtt_extra: String,
    /// A last edit of the config text, after `mqtt_extra`.
    pub config_edit: Option<ConfigEdit>,
}

/// The daemon running in this test's runtime.
pub struct InProcess {
    pub observers: Observers,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
}

/// Options of a test MQTT client (each test file had its own; these keep them as they were).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub id: String,
    /// Incoming and outgoing packet size limit; rumqttc's default when `None`.
    pub max_packet: Option<usize>,
    /// Outgoing in-flight QoS 1 window; rumqttc's default when `None`.
    pub inflight: Option<u16>,
    /// Keep-alive; rumqttc's default when `None`.
    pub keep_alive: Option<Duration>,
    /// Request channel capacity.
    pub cap: usize,
    /// Keep polling after an error (rumqttc reconnects), 100 ms apart; otherwise stop.
    pub reconnect: bool,
}

impl ClientOptions {
    /// The commander: 1 MiB packets (for oversized commands), stops on the first error.
    pub fn commander() -> ClientOptions {
        ClientOptions {
            id: "test-commander".into(),
            max_packet: Some(1 << 20),
            inflight: None,
            keep_alive: None,
            cap: 100,
            reconnect: false,
        }
    }

    /// A client that rides out broker restarts: 5 s keep-alive, reconnects.
    pub fn reconnecting(id: impl Into<String>) -> ClientOptions {
        ClientOptions {
            id: id.into(),
            max_packet: None,
            inflight: None,
            keep_alive: Some(Duration::from_secs(5)),
            cap: 16,
            reconnect: true,
        }
    }
}

/// A plain MQTT 3.1.1 client on the loopback broker at `port`, its event loop driven in the
/// background.
pub async fn client(port: u16, o: ClientOptions) -> AsyncClient {
    let mut opts = MqttOptions::new(o.id, "127.0.0.1", port);
    if let Some(n) = o.max_packet {
        opts.set_max_packet_size(n, n);
    }
    if let Some(n) = o.inflight {
        opts.set_inflight(n);
    }
    if let Some(k) = o.keep_alive {
        opts.set_keep_alive(k);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, o.cap);
    let reconnect = o.reconnect;
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                if !reconnect {
                    return;
                }
                // Broker away: rumqttc reconnects on the next poll; pace the retries.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    client
}

/// Replies on `P/reply` among `m`, in arrival order.
pub fn replies_in(m: &[Received]) -> Vec<Value> {
    m.iter()
        .filter(|r| r.topic == format!("{PREFIX}/reply"))
        .map(|r| r.payload.clone())
        .collect()
}

/// The first reply to `request_id` among `m` (for [`Subscriber::wait`] conditions).
pub fn reply_in(m: &[Received], request_id: &str) -> Option<Value> {
    m.iter()
        .find(|r| r.topic == format!("{PREFIX}/reply") && r.payload["request_id"] == request_id)
        .map(|r| r.payload.clone())
}

/// `P/{BAGGER}/state` reached `to` among `m` after the first `after` messages.
pub fn bagger_state_in(m: &[Received], to: &str, after: usize) -> bool {
    m.iter()
        .skip(after)
        .any(|r| r.topic == format!("{PREFIX}/{BAGGER}/state") && r.payload["data"]["to"] == to)
}

/// The topic of command `name` for `equipment`.
pub fn cmd_topic(equipment: &str, name: &str) -> String {
    format!("{PREFIX}/cmd/{equipment}/{name}")
}

/// The whole set-up of one end-to-end test. Drop order: the daemon, then the line, the
/// subscriber, the broker and the temp dir.
pub struct Rig {
    /// The in-process daemon, if [`Rig::start`] made one and it was not stopped yet.
    pub daemon: Option<InProcess>,
    pub line: Line,
    pub sub: Subscriber,
    pub broker: Broker,
    /// `dir/data`, the daemon's data directory.
    pub data: PathBuf,
    /// `dir/ms5-edge.toml`, the config as written.
    pub config_path: PathBuf,
    pub config_text: String,
    commander: OnceCell<AsyncClient>,
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// Broker, subscriber, line and config, and the daemon in-process.
    pub async fn start(opts: RigOptions) -> Rig {
        let mut rig = Rig::prepare(opts).await;
        let (stop, rx) = watch::channel(false);
        let observers = Observers::default();
        let task = tokio::spawn(daemon::run(config(&rig.config_text), rx, observers.clone()));
        rig.daemon = Some(InProcess {
            observers,
            stop,
            task,
        });
        rig
    }

    /// Broker, subscriber, line and config, no daemon yet ([`Rig::spawn`] starts a process).
    pub async fn prepare(opts: RigOptions) -> Rig {
        let mut dir = match opts.dir {
            Some(dir) => dir,
            None => tempfile::tempdir().unwrap(),
        };
        // Opt-in for post-mortems: MS5_KEEP_RIG=1 keeps the temp dir (daemon and broker logs,
        // database) after the test.
        if std::env::var_os("MS5_KEEP_RIG").is_some() {
            dir.disable_cleanup(true);
            eprintln!("rig: keeping {}", dir.path().display());
        }
        let broker = Broker::start_with(&dir.path().join("broker"), &opts.broker_extra).await;
        let filter = opts.subscribe.unwrap_or_else(|| format!("{PREFIX}/#"));
        let sub = Subscriber::start(broker.port, &filter).await;
        let any = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        let line = Line {
            bagger: match opts.bagger_at_ms {
                Some(at) => sim::start_at(Machine::Bagger, any, at)
                    .await
                    .expect("bagger sim"),
                None => sim::start(Machine::Bagger, any).await.expect("bagger sim"),
            },
            loader: sim::start(Machine::Loader, any).await.expect("loader sim"),
        };
        if let Some(o) = opts.bagger {
            line.bagger.set_override(o);
        }
        let data = dir.path().join("data");
        let mut text = config_text(&line, &data, Some(&broker.url()), &opts.mqtt_extra);
        if let Some(edit) = opts.config_edit {
            text = edit(text, dir.path());
        }
        let config_path = dir.path().join("ms5-edge.toml");
        std::fs::write(&config_path, &text).unwrap();
        Rig {
            daemon: None,
            line,
            sub,
            broker,
            data,
            config_path,
            config_text: text,
            commander: OnceCell::new(),
            dir,
        }
    }

    /// The daemon as a process on the rig's config, logging to `dir/{log}`.
    pub fn spawn(&self, log: &str) -> DaemonProcess {
        DaemonProcess::start(&self.config_path, &self.dir.path().join(log))
    }

    /// Like [`Rig::spawn`] with extra environment variables (the store's test knobs).
    pub fn spawn_with_env(&self, log: &str, env: &[(&str, String)]) -> DaemonProcess {
        DaemonProcess::start_with_env(&self.config_path, &self.dir.path().join(log), env)
    }

    /// The in-process daemon's observers.
    pub fn observers(&self) -> &Observers {
        &self
            .daemon
            .as_ref()
            .expect("an in-process daemon")
            .observers
    }

    /// The in-process daemon's view of `equipment`'s state.
    pub fn state_of(&self, equipment: &str) -> Option<MachineState> {
        self.observers()
            .view
            .borrow()
            .machines
            .iter()
            .find(|m| m.equipment == equipment)
            .map(|m| m.state)
    }

    /// The in-process daemon's last committed seq.
    pub fn last_seq(&self) -> i64 {
        self.observers().view.borrow().last_seq
    }

    /// Stops the in-process daemon and awaits a clean exit (no deadline of its own).
    pub async fn stop(&mut self) {
        let d = self.daemon.take().expect("an in-process daemon");
        let _ = d.stop.send(true);
        d.task.await.unwrap().unwrap();
    }

    /// Stops the in-process daemon and awaits a clean exit within `limit`.
    pub async fn stop_within(&mut self, limit: Duration) {
        let d = self.daemon.take().expect("an in-process daemon");
        let _ = d.stop.send(true);
        tokio::time::timeout(limit, d.task)
            .await
            .expect("daemon stops")
            .expect("daemon task")
            .expect("daemon exits cleanly");
    }

    /// A new client with `opts` on the rig's broker.
    pub async fn client(&self, opts: ClientOptions) -> AsyncClient {
        client(self.broker.port, opts).await
    }

    /// The rig's commander ([`ClientOptions::commander`]), connected on first use.
    pub async fn publisher(&self) -> &AsyncClient {
        self.commander
            .get_or_init(|| client(self.broker.port, ClientOptions::commander()))
            .await
    }

    /// Publishes `body` at QoS 1 on `topic` through the commander.
    pub async fn publish(&self, topic: &str, body: impl Into<Vec<u8>>) {
        self.publisher()
            .await
            .publish(topic, QoS::AtLeastOnce, false, body.into())
            .await
            .unwrap();
    }

    /// Sends command `name` to `equipment` and returns the reply with the body's
    /// `request_id` (waiting up to 20 s).
    pub async fn command(&self, equipment: &str, name: &str, body: Value) -> Value {
        self.command_within(equipment, name, body, Duration::from_secs(20))
            .await
    }

    /// Like [`Rig::command`], waiting up to `timeout` for the reply.
    pub async fn command_within(
        &self,
        equipment: &str,
        name: &str,
        body: Value,
        timeout: Duration,
    ) -> Value {
        let id = body["request_id"]
            .as_str()
            .expect("a command with a request_id")
            .to_string();
        self.publish(&cmd_topic(equipment, name), body.to_string())
            .await;
        self.wait_reply(&id, timeout).await
    }

    /// Every reply on `P/reply` so far.
    pub fn replies(&self) -> Vec<Value> {
        replies_in(&self.sub.snapshot())
    }

    /// Waits for the reply to `request_id` and returns it.
    pub async fn wait_reply(&self, request_id: &str, timeout: Duration) -> Value {
        self.sub
            .wait(&format!("the reply to {request_id}"), timeout, |m| {
                reply_in(m, request_id).is_some()
            })
            .await;
        reply_in(&self.sub.snapshot(), request_id).unwrap_or(Value::Null)
    }

    /// Waits up to 30 s for the bagger's state to reach `to`.
    pub async fn wait_state(&self, to: &str) {
        self.wait_state_after(to, 0, Duration::from_secs(30)).await;
    }

    /// Waits for the bagger's state to reach `to` in the messages after the first `after`.
    pub async fn wait_state_after(&self, to: &str, after: usize, timeout: Duration) {
        self.sub
            .wait(&format!("bagger {to}"), timeout, |m| {
                bagger_state_in(m, to, after)
            })
            .await;
    }

    /// Outbox events received so far ([`Subscriber::events`]).
    pub fn events(&self) -> Vec<Value> {
        self.sub.events()
    }
}
