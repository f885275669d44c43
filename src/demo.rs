//! `ms5-edge demo`: the real pipeline against simulated PLCs, on one machine, with nothing
//! installed. Two Modbus TCP simulators (Bagger 1, Basket Loader 1) listen on free loopback
//! ports; the daemon polls them with the embedded `demo.toml`, keeps its database in a
//! temporary directory and forwards to `--mqtt URL` when given.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

use crate::clock::rfc3339_ms;
use crate::config::{self, ConfigErrors};
use crate::daemon::{self, DaemonError, Observers};
use crate::sim::{self, Machine};

/// The demo's config template.
pub const DEMO_TOML: &str = include_str!("demo.toml");

/// Why the demo could not run.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error("simulator: {0}")]
    Sim(#[from] std::io::Error),
    #[error("demo config: {0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Builds the demo config for simulators on the given ports.
pub fn config_text(
    bagger_port: u16,
    loader_port: u16,
    data_dir: &str,
    mqtt: Option<&str>,
) -> String {
    let mqtt = match mqtt {
        Some(url) => format!("[mqtt]\nurl = \"{url}\"\nkeep_alive_s = 10\n"),
        None => String::new(),
    };
    DEMO_TOML
        .replace("{DATA_DIR}", data_dir)
        .replace("{MQTT}", &mqtt)
        .replace("{BAGGER_PORT}", &bagger_port.to_string())
        .replace("{LOADER_PORT}", &loader_port.to_string())
}

/// Runs until `shutdown`; `plain` prints one line per event instead of redrawing.
pub async fn run(
    mqtt: Option<&str>,
    shutdown: watch::Receiver<bool>,
    plain: bool,
) -> Result<(), DemoError> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let bagger = sim::start(Machine::Bagger, loopback).await?;
    let loader = sim::start(Machine::Loader, loopback).await?;
    let dir = std::env::temp_dir().join(format!("ms5-edge-demo-{}", std::process::id()));
    let text = config_text(
        bagger.addr().port(),
        loader.addr().port(),
        &dir.display().to_string(),
        mqtt,
    );
    let loaded = config::load_str(&text, "demo.toml").map_err(DemoError::Config)?;
    let config = loaded.config;
    let observers = Observers::default();
    let mut view_rx = observers.view.subscribe();
    let uplink = observers.uplink.clone();
    let daemon = tokio::spawn(daemon::run(config.clone(), shutdown.clone(), observers));

    let mut out = std::io::stdout();
    let mut shown = 0usize;
    let mut shutdown_rx = shutdown.clone();
    let mut redraw = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = redraw.tick() => {}
            _ = shutdown_rx.changed() => break,
            r = view_rx.changed() => if r.is_err() { break },
        }
        let v = view_rx.borrow_and_update().clone();
        if plain {
            for line in v.recent.iter().skip(shown.min(v.recent.len())) {
                let _ = writeln!(out, "{line}");
            }
            shown = v.recent.len();
            continue;
        }
        let mut s = String::from("\x1b[2J\x1b[H");
        s.push_str("ms5-edge demo — line BP01 on simulated PLCs (Ctrl-C to stop)\n");
        s.push_str(&format!(
            "database: {}  stream {}\n",
            dir.display(),
            v.stream
        ));
        match mqtt {
            Some(url) => s.push_str(&format!(
                "broker {url}: {}  published {}  acknowledged {}\n\n",
                if uplink.connected.load(std::sync::atomic::Ordering::Relaxed) {
                    "connected"
                } else {
                    "DISCONNECTED (buffering)"
                },
                uplink.published.load(std::sync::atomic::Ordering::Relaxed),
                uplink
                    .acknowledged
                    .load(std::sync::atomic::Ordering::Relaxed),
            )),
            None => s.push_str(&format!(
                "no broker: outbox holds {} event(s) (last seq {})\n\n",
                v.last_seq, v.last_seq
            )),
        }
        s.push_str(&format!(
            "{:<20} {:<16} {:<14} since\n",
            "equipment", "name", "state"
        ));
        for m in &v.machines {
            let name = config
                .equipment
                .iter()
                .find(|e| e.code == m.equipment)
                .map(|e| e.name.as_str())
                .unwrap_or("");
            s.push_str(&format!(
                "{:<20} {:<16} {:<14} {}\n",
                m.equipment,
                name,
                m.state.as_str(),
                rfc3339_ms(m.since_ms)
            ));
        }
        s.push_str(&format!(
            "\n{:<8} {:>7} {:>7} {:>8} {:>9}  error\n",
            "plc", "polls", "failed", "skipped", "late(us)"
        ));
        for (name, c) in &v.plcs {
            s.push_str(&format!(
                "{:<8} {:>7} {:>7} {:>8} {:>9}  {}\n",
                name,
                c.polls,
                c.failed_polls,
                c.skipped_ticks,
                c.last_lateness_us,
                c.last_error.as_deref().unwrap_or("-")
            ));
        }
        s.push_str("\nrecent events:\n");
        for line in v.recent.iter().rev().take(12) {
            s.push_str(&format!("  {line}\n"));
        }
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    }
    let result = daemon.await.map_err(|e| DaemonError::Core(e.to_string()))?;
    bagger.shutdown().await;
    loader.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(())
}
