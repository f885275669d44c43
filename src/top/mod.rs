//! `ms5-edge top`: a live full-screen view of the running daemon, read from its database
//! read-only (SPEC §10), and the same view for `ms5-edge demo`.
//!
//! ## Design constraints
//!
//! - **Read-only, no IPC.** Everything shown comes from [`crate::status::read`] (the same
//!   snapshot `status --json` prints: state and since, open downtime, andons, context, shift
//!   OEE, PLC counters, outbox, heartbeat) plus the recent domain rows
//!   ([`crate::store::ReadOnly::recent_events`]). `top` never writes to the database and never
//!   talks to the daemon, the PLCs or the broker.
//! - **A pure model.** [`View`] is built from a status report and a time by
//!   [`View::from_status`]; it reads no clock and no database, so tests build one from JSON.
//!   [`render`] draws a `View` into a ratatui buffer of any size (it clips; it never panics on
//!   a tiny terminal). [`plain`] turns two successive views into the lines `--plain` prints.
//! - **A thin terminal.** [`term`] owns raw mode and the alternate screen, restores both on
//!   exit, on error and on panic, redraws once a second and on resize, and quits on `q`, Esc
//!   or Ctrl-C. No `unwrap` on a terminal path: a terminal error restores the screen and is
//!   returned.
//! - **Colours that survive a plain SSH terminal**: only the 8 basic ANSI colours, bold and
//!   reverse; bars are ASCII (`#` filled, `-` empty, `|` the target).

pub mod plain;
pub mod render;
pub mod term;

use jiff::tz::TimeZone;
use serde_json::Value;

use crate::config::Config;
use crate::store::{ReadOnly, StoreError};

/// How many recent events `top` reads (the screen shows as many as fit).
pub const RECENT_EVENTS: usize = 50;
/// How far back recent events are looked for.
pub const RECENT_HORIZON_MS: i64 = 24 * 3_600_000;

/// Everything one screen shows, at one instant.
#[derive(Debug, Clone)]
pub struct View {
    pub gateway: String,
    /// The instant the view describes (UTC epoch ms).
    pub now_ms: i64,
    /// The gateway's timezone, for clock times.
    pub tz: TimeZone,
    /// The daemon wrote a heartbeat within 3 poll intervals.
    pub alive: bool,
    pub heartbeat_age_s: Option<f64>,
    pub outbox_depth: u64,
    pub oldest_unsent_age_s: Option<f64>,
    /// `Some((broker, connected))` when the uplink saved its state.
    pub broker: Option<(String, bool)>,
    pub equipment: Vec<EquipmentView>,
    pub plcs: Vec<PlcView>,
    /// Newest first.
    pub events: Vec<EventLine>,
    /// A line above everything else (the demo's note, a read error), if any.
    pub banner: Option<String>,
}

/// One equipment's part of the screen.
#[derive(Debug, Clone, PartialEq)]
pub struct EquipmentView {
    pub code: String,
    pub name: String,
    pub state: String,
    pub since_ms: Option<i64>,
    pub downtime: Option<DowntimeView>,
    pub andons: Vec<AndonView>,
    pub job: Option<JobView>,
    /// The current shift's name, if a shift is on.
    pub shift: Option<String>,
    /// A, P, Q, OEE in that order.
    pub figures: [Figure; 4],
    /// Running hours since the last maintenance and the interval, when one is configured.
    pub maintenance: Option<(f64, f64)>,
}

/// The open downtime of an equipment.
#[derive(Debug, Clone, PartialEq)]
pub struct DowntimeView {
    pub reason_code: String,
    pub reason: String,
    pub category: String,
    pub started_ms: Option<i64>,
    pub duration_s: f64,
}

/// One open andon.
#[derive(Debug, Clone, PartialEq)]
pub struct AndonView {
    pub id: String,
    pub priority: String,
    pub level: i64,
    pub reason_code: String,
    pub description: String,
    pub raised_ms: Option<i64>,
    pub acknowledged_by: Option<String>,
}

/// The job on the equipment and its progress.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub job_id: String,
    pub product: Option<String>,
    pub actual: u64,
    pub target: Option<u64>,
}

/// One OEE figure of the current shift against its target (ratios 0..1).
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub label: &'static str,
    pub value: Option<f64>,
    pub target: Option<f64>,
}

/// One PLC's cadence counters.
#[derive(Debug, Clone, PartialEq)]
pub struct PlcView {
    pub name: String,
    pub online: bool,
    pub polls: u64,
    pub failed: u64,
    pub lateness_p99_us: u64,
    pub last_error: Option<String>,
}

/// One recent happening.
#[derive(Debug, Clone, PartialEq)]
pub struct EventLine {
    pub at_ms: i64,
    pub equipment: String,
    pub what: String,
}

fn parse_ms(v: &Value) -> Option<i64> {
    v.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

impl View {
    /// Builds the view from a `status --json` object taken at `now_ms` and recent events
    /// (newest first, as [`ReadOnly::recent_events`] returns them). Pure.
    pub fn from_status(
        config: &Config,
        status: &Value,
        events: Vec<(i64, String, String)>,
        now_ms: i64,
    ) -> View {
        let tz = TimeZone::get(&config.gateway.timezone).unwrap_or(TimeZone::UTC);
        let heartbeat_age_s = parse_ms(&status["heartbeat"]).map(|h| (now_ms - h) as f64 / 1000.0);
        let broker = status["uplink"].as_object().map(|u| {
            (
                u.get("broker")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string(),
                u.get("connected") == Some(&Value::Bool(true)),
            )
        });
        let equipment = config
            .equipment
            .iter()
            .map(|e| {
                let s = &status["equipment"][e.code.as_str()];
                let d = &s["open_downtime"];
                let downtime = d.is_object().then(|| DowntimeView {
                    reason_code: text(&d["reason_code"]).unwrap_or_else(|| "?".into()),
                    reason: text(&d["reason"]).unwrap_or_default(),
                    category: text(&d["category"]).unwrap_or_default(),
                    started_ms: parse_ms(&d["started_at"]),
                    duration_s: d["duration_s"].as_f64().unwrap_or(0.0),
                });
                let andons = s["andons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| AndonView {
                        id: text(&a["andon_id"]).unwrap_or_default(),
                        priority: text(&a["priority"]).unwrap_or_else(|| "?".into()),
                        level: a["level"].as_i64().unwrap_or(0),
                        reason_code: text(&a["reason_code"]).unwrap_or_else(|| "?".into()),
                        description: text(&a["description"]).unwrap_or_default(),
                        raised_ms: parse_ms(&a["raised_at"]),
                        acknowledged_by: text(&a["acknowledged_by"]),
                    })
                    .collect();
                let c = &s["context"];
                let job = text(&c["job_id"]).map(|job_id| JobView {
                    job_id,
                    product: text(&c["product_type_id"]),
                    actual: c["actual_quantity"].as_u64().unwrap_or(0),
                    target: c["target_quantity"].as_u64(),
                });
                let o = &s["oee"];
                let t = &e.oee_targets;
                let fig = |label, key: &str, target: f64| Figure {
                    label,
                    value: o[key].as_f64(),
                    target: o["targets"][key].as_f64().or(Some(target)),
                };
                EquipmentView {
                    code: e.code.clone(),
                    name: e.name.clone(),
                    state: text(&s["state"]).unwrap_or_else(|| "offline".into()),
                    since_ms: parse_ms(&s["since"]),
                    downtime,
                    andons,
                    job,
                    shift: text(&o["shift"]),
                    maintenance: s["maintenance"]["interval_hours"].as_f64().map(|i| {
                        let m = &s["maintenance"];
                        (m["run_hours_since_maintenance"].as_f64().unwrap_or(0.0), i)
                    }),
                    figures: [
                        fig("A", "availability", t.availability),
                        fig("P", "performance", t.performance),
                        fig("Q", "quality", t.quality),
                        fig("OEE", "oee", t.oee),
                    ],
                }
            })
            .collect();
        let plcs = status["plcs"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, c)| PlcView {
                name: name.clone(),
                online: c["offline"] != true,
                polls: c["polls"].as_u64().unwrap_or(0),
                failed: c["failed_polls"].as_u64().unwrap_or(0),
                lateness_p99_us: c["lateness_p99_us"].as_u64().unwrap_or(0),
                last_error: text(&c["last_error"]),
            })
            .collect();
        View {
            gateway: config.gateway.id.clone(),
            now_ms,
            tz,
            alive: status["alive"] == true,
            heartbeat_age_s,
            outbox_depth: status["outbox_depth"].as_u64().unwrap_or(0),
            oldest_unsent_age_s: status["oldest_unsent_age_s"].as_f64(),
            broker,
            equipment,
            plcs,
            events: events
                .into_iter()
                .map(|(at_ms, equipment, what)| EventLine {
                    at_ms,
                    equipment,
                    what,
                })
                .collect(),
            banner: None,
        }
    }

    /// `HH:MM:SS` of `ms` in the gateway's timezone.
    pub fn clock(&self, ms: i64) -> String {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.to_zoned(self.tz.clone()).strftime("%H:%M:%S").to_string())
            .unwrap_or_else(|_| "--:--:--".into())
    }
}

/// Reads the daemon's database of `config` at `now_ms` (the caller reads the clock).
pub fn read(config: &Config, now_ms: i64) -> Result<View, StoreError> {
    let report = crate::status::read(config)?;
    let events = ReadOnly::open(&config.gateway.data_dir)?
        .recent_events(now_ms - RECENT_HORIZON_MS, RECENT_EVENTS)?;
    Ok(View::from_status(config, &report.json, events, now_ms))
}

/// A duration for people: `45s`, `12m03s`, `3h04m`, `2d03h`.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The demo's configuration (Europe/London, two equipment, two PLCs).
    pub(crate) fn demo_config() -> Config {
        let text = crate::demo::config_text(1502, 1503, "/tmp/unused", None);
        crate::config::load_str(&text, "demo.toml")
            .map(|l| l.config)
            .unwrap_or_else(|e| panic!("demo config: {e:?}"))
    }

    pub(crate) const NOW: i64 = 1_780_000_000_000; // 2026-05-28T20:26:40Z

    /// A running daemon: the bagger faulted with a film break and an open high andon, the
    /// loader running a job, shift OEE on the bagger, both PLCs polled.
    pub(crate) fn faulted_bagger() -> Value {
        json!({
            "alive": true,
            "heartbeat": "2026-05-28T20:26:39.500Z",
            "outbox_depth": 42,
            "oldest_unsent_age_s": 12.5,
            "uplink": {"broker": "127.0.0.1:1883", "connected": true},
            "equipment": {
                "BP01.PACK.BAG1": {
                    "state": "faulted", "since": "2026-05-28T20:24:40.000Z",
                    "open_downtime": {"reason_code": "F_FILM", "reason": "Film break",
                        "category": "unplanned", "started_at": "2026-05-28T20:24:40.000Z",
                        "duration_s": 120.0},
                    "andons": [{"andon_id": "a1", "priority": "high", "level": 2,
                        "reason_code": "F_FILM", "description": "Film break",
                        "raised_at": "2026-05-28T20:25:40.000Z", "acknowledged_by": null}],
                    "context": {"job_id": "J-100", "product_type_id": "BAG-500",
                        "actual_quantity": 1250, "target_quantity": 5000},
                    "oee": {"shift": "B", "availability": 0.72, "performance": 0.95,
                        "quality": 0.99, "oee": 0.677,
                        "targets": {"availability": 0.9, "performance": 0.95,
                            "quality": 0.99, "oee": 0.85}}
                },
                "BP01.PACK.BAG1.BL": {
                    "state": "running", "since": "2026-05-28T20:00:00.000Z",
                    "open_downtime": null, "andons": [], "context": null, "oee": null
                }
            },
            "plcs": {
                "bagger": {"polls": 1200, "failed_polls": 3, "lateness_p99_us": 850,
                    "offline": false, "last_error": null},
                "loader": {"polls": 1100, "failed_polls": 40, "lateness_p99_us": 1200,
                    "offline": true, "last_error": "timeout"}
            }
        })
    }

    pub(crate) fn view() -> View {
        View::from_status(
            &demo_config(),
            &faulted_bagger(),
            vec![
                (
                    NOW - 60_000,
                    "BP01.PACK.BAG1".into(),
                    "andon high L2 F_FILM".into(),
                ),
                (
                    NOW - 120_000,
                    "BP01.PACK.BAG1".into(),
                    "state faulted".into(),
                ),
            ],
            NOW,
        )
    }

    #[test]
    fn a_status_object_becomes_equipment_with_downtime_andons_job_and_figures() {
        let v = view();
        assert_eq!(v.equipment.len(), 2);
        let bag = &v.equipment[0];
        assert_eq!(bag.code, "BP01.PACK.BAG1");
        assert_eq!(bag.state, "faulted");
        assert_eq!(bag.since_ms, Some(NOW - 120_000));
        assert_eq!(
            bag.downtime.as_ref().map(|d| d.reason_code.as_str()),
            Some("F_FILM")
        );
        assert_eq!(bag.andons.len(), 1);
        assert_eq!(bag.andons[0].raised_ms, Some(NOW - 60_000));
        assert_eq!(
            bag.job.as_ref().map(|j| (j.actual, j.target)),
            Some((1250, Some(5000)))
        );
        assert_eq!(bag.figures[0].value, Some(0.72));
        assert_eq!(bag.figures[3].target, Some(0.85));
        assert_eq!(v.heartbeat_age_s, Some(0.5));
        assert_eq!(v.broker, Some(("127.0.0.1:1883".into(), true)));
        assert!(!v.plcs[1].online);
    }

    #[test]
    fn without_a_shift_the_figures_are_unknown_but_the_targets_come_from_the_config() {
        let v = view();
        let bl = &v.equipment[1];
        assert!(bl.figures.iter().all(|f| f.value.is_none()));
        assert!(bl.figures.iter().all(|f| f.target.is_some()));
        assert!(bl.downtime.is_none() && bl.andons.is_empty() && bl.job.is_none());
    }

    #[test]
    fn equipment_missing_from_the_database_is_offline() {
        let v = View::from_status(&demo_config(), &json!({}), vec![], NOW);
        assert!(v.equipment.iter().all(|e| e.state == "offline"));
        assert!(!v.alive);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(45.2), "45s");
        assert_eq!(duration(723.0), "12m03s");
        assert_eq!(duration(3.0 * 3600.0 + 240.0), "3h04m");
        assert_eq!(duration(2.0 * 86400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(duration(-5.0), "0s");
    }

    #[test]
    fn clock_times_are_in_the_gateway_timezone() {
        // 20:26:40Z is 21:26:40 in London in summer time.
        assert_eq!(view().clock(NOW), "21:26:40");
    }
}
