//! `ms5-edge demo`: the real pipeline against simulated PLCs, on one machine, with nothing
//! installed. Two Modbus TCP simulators (Bagger 1, Basket Loader 1) listen on free loopback
//! ports; the daemon polls them with the embedded `demo.toml`, keeps its database in a
//! temporary directory and forwards to `--mqtt URL` when given. Its screen is `top`'s
//! ([`crate::top`]), read from that database: states, shift OEE against targets, open downtime
//! and andons, jobs, PLC counters, the outbox and recent events (SPEC §1).

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};

use thiserror::Error;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{self, ConfigErrors};
use crate::daemon::{self, DaemonError, Observers};
use crate::sim::{self, Machine};
use crate::top;

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

/// Runs until `external` becomes true (or `q` on the screen). On a terminal it shows the
/// [`top`] screen of its own database; with `plain` (or without a terminal) it prints one
/// line per committed event instead.
pub async fn run(
    mqtt: Option<&str>,
    external: watch::Receiver<bool>,
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
    // The demo stops on the caller's `shutdown` or on `q` on the screen.
    let (stop, shutdown) = {
        let (tx, rx) = watch::channel(*external.borrow());
        let forward = tx.clone();
        let mut external = external.clone();
        tokio::spawn(async move {
            let _ = external.wait_for(|s| *s).await;
            let _ = forward.send(true);
        });
        (tx, rx)
    };
    let daemon = tokio::spawn(daemon::run(
        config.clone(),
        shutdown.clone(),
        observers.clone(),
    ));

    let screen = if !plain && std::io::stdout().is_terminal() {
        // The same screen as `ms5-edge top`, read from the demo's database each second; `q`
        // or Ctrl-C on it stops the demo (raw mode turns Ctrl-C into a key).
        let stopped = shutdown.clone();
        let quit = stop.clone();
        let mqtt = mqtt.map(str::to_string);
        // The uplink's live counters (the database holds only its last saved state).
        let uplink = observers.uplink.clone();
        let banner = move || match &mqtt {
            Some(url) => {
                use std::sync::atomic::Ordering::Relaxed;
                format!(
                    "demo, simulated PLCs → {url}: {} pub {} ack {}",
                    if uplink.connected.load(Relaxed) {
                        "up"
                    } else {
                        "DOWN"
                    },
                    uplink.published.load(Relaxed),
                    uplink.acknowledged.load(Relaxed)
                )
            }
            None => "demo: line BP01 on simulated PLCs, no broker (q or Ctrl-C stops)".into(),
        };
        let config = config.clone();
        Some(tokio::task::spawn_blocking(move || {
            let result = top::term::run(
                || {
                    let now = Clock::system().now_ms();
                    let mut v = top::read(&config, now).unwrap_or_else(|_| {
                        top::View::from_status(&config, &serde_json::Value::Null, vec![], now)
                    });
                    v.banner = Some(banner());
                    v
                },
                || *stopped.borrow(),
            );
            let _ = quit.send(true);
            result
        }))
    } else {
        None
    };
    if screen.is_none() {
        // `--plain` (or no terminal): one line per committed event, as the daemon journals it.
        let mut out = std::io::stdout();
        let mut shown = 0usize;
        let mut shutdown_rx = shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown_rx.changed() => break,
                r = view_rx.changed() => if r.is_err() { break },
            }
            let v = view_rx.borrow_and_update().clone();
            for line in v.recent.iter().skip(shown.min(v.recent.len())) {
                let _ = writeln!(out, "{line}");
            }
            shown = v.recent.len();
        }
    }
    let result = daemon.await.map_err(|e| DaemonError::Core(e.to_string()))?;
    if let Some(screen) = screen {
        // The daemon stopped, so `shutdown` is set and the screen has returned (or will within
        // a quarter second); a terminal error is reported, the demo still stopped cleanly.
        if let Ok(Err(e)) = screen.await {
            eprintln!("ms5-edge demo: terminal: {e}");
        }
    }
    bagger.shutdown().await;
    loader.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(())
}
