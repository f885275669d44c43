//! ms5-edge: the edge daemon of the MS5.0 floor system.
//!
//! Data flows one way, and the module map shows it:
//!
//! ```text
//! config ─► acquire (modbus, schedule) ─► engine (pure) ─► store (SQLite + outbox) ─► uplink (MQTT)
//!                                            ▲                                          │
//!                                            └──────────── commands ◄───────────────────┘
//! ```
//!
//! - [`config`]: the TOML file, parsed and compiled into a validated [`config::Config`].
//! - [`acquire`]: one task per PLC on an absolute schedule; decodes raw registers into samples.
//! - [`sample`]: the sample types `acquire` produces and `engine` reads, and the typed engine
//!   signals built from them once at that boundary.
//! - [`engine`]: pure domain logic — samples and time in, events and state out. No I/O.
//! - [`store`]: SQLite; an event's domain rows and its outbox row commit in one transaction.
//! - [`cloudevents`]: the CloudEvents 1.0 envelope of every message, in one place.
//! - [`uplink`]: drains the outbox to MQTT, deleting a row only on the broker's PUBACK.
//! - [`daemon`]: wires the pieces together; `run(config, shutdown)` is what the tests call;
//!   `run_with_reload` adds SIGHUP reloads for `ms5-edge run`.
//! - [`health`]: the one registry of counters (typed internal events update it) that
//!   `P/status`, `status` and the metrics endpoints read.
//! - [`metrics`]: the `[metrics]` HTTP server: `/metrics`, `/healthz`, `/readyz`.
//! - [`notify`]: systemd readiness, status lines and a watchdog that fires when a poll loop stalls.
//! - [`top`]: the live full-screen view of the running daemon (and of `demo`), read-only.
//! - [`sim`]: Modbus TCP simulators of Bagger 1 and Basket Loader 1 for `demo` and tests.
//! - [`clock`]: the only place clocks are read.

pub mod acquire;
pub mod clock;
pub mod cloudevents;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod sample;
pub mod sim;
pub mod sparkplug;
pub mod status;
pub mod store;
pub mod top;
pub mod uplink;

/// Version string for `--version`: crate version, git commit, target triple, build profile.
pub fn version_string() -> String {
    format!(
        "ms5-edge {} (commit {}, target {}, profile {})",
        env!("CARGO_PKG_VERSION"),
        env!("MS5_GIT_COMMIT"),
        env!("MS5_TARGET"),
        env!("MS5_PROFILE"),
    )
}
