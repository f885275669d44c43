//! Shared end-to-end harness: free loopback ports, temp dirs, a real mosquitto, an MQTT
//! subscriber that records everything, and helpers to await conditions (never bare sleeps).
//! [`rig::Rig`] puts them together with the simulated line, its config and the daemon
//! (in-process or as a process), the set-up most end-to-end tests share.
#![allow(dead_code)]
// Each test crate uses part of this module; its items are `pub` for all of them.
#![allow(unreachable_pub)]

pub mod flush;
pub mod http;
pub mod line;
#[cfg(feature = "opcua")]
pub mod opcua;
pub mod pki;
pub mod proxy;
pub mod python;
pub mod rig;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::Notify;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().expect("local addr").port()
}

/// Waits for `cond` to hold, re-checking every few milliseconds, up to `timeout`.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mosquitto_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v mosquitto"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return p.into();
        }
    }
    panic!(
        "mosquitto is not installed: these tests need a real broker. \
         Run scripts/test (it installs it), or `apt-get install mosquitto`."
    );
}

/// A real mosquitto on a free loopback port, persistent across restarts (its database lives in
/// the given directory), so a test subscriber's session survives a broker restart.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra mosquitto.conf lines (e.g. a TLS listener); `allow_anonymous` in them replaces
    /// the default `allow_anonymous true`.
    extra: String,
}

impl Broker {
    pub async fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, "").await
    }

    /// Like [`Broker::start`] with extra configuration lines appended after the plain listener.
    pub async fn start_with(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        let mut b = Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
            extra: extra.to_string(),
        };
        b.restart().await;
        b
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// The broker's URL for configs.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        std::fs::create_dir_all(&self.dir).expect("broker dir");
        let conf = self.dir.join("mosquitto.conf");
        // Started as root, mosquitto drops to the `mosquitto` user, which cannot write into a
        // private temp dir (no persistence, no log); keep the invoking user instead.
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let user = if is_root { "user root\n" } else { "" };
        let anonymous = if self.extra.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        std::fs::write(
            &conf,
            format!(
                "{user}listener {port} 127.0.0.1\n{anonymous}persistence true\n\
                 persistence_location {dir}/\nmax_queued_messages 0\nmax_inflight_messages 0\n\
                 log_dest file {dir}/mosquitto.log\n{extra}",
                port = self.port,
                dir = self.dir.display(),
                extra = self.extra,
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_for(
            "mosquitto to accept connections",
            Duration::from_secs(10),
            || TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok(),
        )
        .await;
    }

    /// Makes mosquitto re-read its configuration files (ACL and password files) with SIGHUP.
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            unsafe_kill(child.id(), "HUP");
        }
    }

    /// Stops it gracefully (SIGTERM, so it saves its persistence file) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe_kill(child.id(), "TERM");
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal through `kill(1)` (keeps the tests free of unsafe code and libc).
pub fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Value,
    pub retain: bool,
}

/// A subscriber on `prefix/#` with a persistent session; records every message.
#[derive(Clone)]
pub struct Subscriber {
    pub messages: Arc<Mutex<Vec<Received>>>,
    pub arrived: Arc<Notify>,
}

impl Subscriber {
    pub async fn start(port: u16, filter: &str) -> Subscriber {
        let mut opts = MqttOptions::new(format!("test-sub-{port}"), "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        // Large enough for the oversized commands the hostile-network tests send.
        opts.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let sub = Subscriber {
            messages: Arc::new(Mutex::new(Vec::new())),
            arrived: Arc::new(Notify::new()),
        };
        let (messages, arrived) = (sub.messages.clone(), sub.arrived.clone());
        let subscribed = Arc::new(Notify::new());
        let ready = subscribed.clone();
        let filter = filter.to_string();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => ready.notify_one(),
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let payload = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        messages.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload,
                            retain: p.retain,
                        });
                        arrived.notify_waiters();
                    }
                    Ok(_) => {}
                    // Broker away: rumqttc reconnects on the next poll; pace the retries.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed.notified())
            .await
            .expect("test subscriber could not subscribe");
        sub
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// CloudEvents that carry a `seq` (outbox messages), in arrival order, retained copies out.
    pub fn events(&self) -> Vec<Value> {
        self.snapshot()
            .into_iter()
            .filter(|m| !m.retain && m.payload.get("seq").is_some())
            .map(|m| m.payload)
            .collect()
    }

    /// Waits until `cond(messages)` holds.
    pub async fn wait<F: FnMut(&[Received]) -> bool>(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: F,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if cond(&self.messages.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // Copied out first: panicking with the lock held would poison it for the
                // subscriber's task.
                let m = self.snapshot();
                let last: Vec<String> = m
                    .iter()
                    .rev()
                    .take(6)
                    .map(|r| format!("{} {}", r.topic, r.payload))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what} ({} messages received; \
                     the last, newest first: {last:#?})",
                    m.len()
                );
            }
        }
    }
}

/// Asserts outbox messages of one stream arrived in seq order with no gap: the distinct seqs,
/// in first-arrival order, are exactly `first..=last`. Returns (first, last, duplicates).
pub fn assert_gapless(events: &[Value]) -> (i64, i64, usize) {
    assert!(!events.is_empty(), "no events received");
    let stream = events[0]["stream"].as_str().expect("stream").to_string();
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    let mut duplicates = 0;
    for e in events {
        assert_eq!(
            e["stream"].as_str(),
            Some(stream.as_str()),
            "stream changed: {e}"
        );
        let seq = e["seq"].as_i64().expect("seq is an integer");
        if seen.insert(seq) {
            order.push(seq);
        } else {
            duplicates += 1;
        }
    }
    let first = order[0];
    let last = *order.last().unwrap_or(&first);
    let expected: Vec<i64> = (first..=last).collect();
    assert_eq!(order, expected, "seqs out of order or with gaps");
    (first, last, duplicates)
}

/// The daemon as a separate process (so it can be SIGKILLed), logging to a file.
pub struct DaemonProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl DaemonProcess {
    pub fn start(config: &Path, log: &Path) -> DaemonProcess {
        DaemonProcess::start_with_env(config, log, &[])
    }

    /// Like [`DaemonProcess::start`] with extra environment variables (the store's test knobs).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, String)]) -> DaemonProcess {
        let log_file = std::fs::File::create(log).expect("daemon log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
            .arg("run")
            .arg("-c")
            .arg(config)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("MS5_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start ms5-edge");
        DaemonProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().expect("wait for ms5-edge")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
