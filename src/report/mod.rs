//! `ms5-edge report` (SPEC §10): the figures of a finished or running window, from the minute
//! buckets, as text for the terminal, JSON for scripts or one self-contained HTML file.
//!
//! Owns: choosing the window (`--shift`/`--date`, `--from`/`--to`, or the current or last
//! shift), gathering each equipment's figures through [`crate::store::query`] (the same
//! functions `query/oee` answers with, so the two always agree), and the text form. The HTML
//! form and its charts are [`html`].
//!
//! Never does: write to the database (a [`ReadOnly`] connection), contact the daemon, the
//! broker or the network.

pub mod html;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::clock::rfc3339_ms;
use crate::config::Config;
use crate::engine::calendar::Calendar;
use crate::engine::oee::minute_of;
use crate::store::query::{self, MAX_WINDOW_MS};
use crate::store::{ReadOnly, StoreError};

/// Report failures: a bad request (exit 2) or an unreadable database (exit 1).
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What was asked on the command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub shift: Option<String>,
    pub date: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub equipment: Option<String>,
}

/// The window a report covers: `[from, to)`, minute-aligned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
    pub shift: Option<String>,
}

/// RFC 3339, or `YYYY-MM-DD HH:MM` in `tz`.
fn parse_time(text: &str, tz: &TimeZone) -> Result<i64, ReportError> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    text.parse::<DateTime>()
        .ok()
        .and_then(|dt| dt.to_zoned(tz.clone()).ok())
        .map(|z| z.timestamp().as_millisecond())
        .ok_or_else(|| {
            ReportError::Usage(format!(
                "\"{text}\" is neither RFC 3339 nor \"YYYY-MM-DD HH:MM\" (gateway.timezone)"
            ))
        })
}

/// The window of `req` at `now`.
pub fn window(config: &Config, req: &Request, now: i64) -> Result<Window, ReportError> {
    let tz = TimeZone::get(&config.gateway.timezone).unwrap_or(TimeZone::UTC);
    let cal = Calendar::new(
        &config.gateway.timezone,
        &config.shifts,
        &config.planned_stops,
    );
    let running_end = |end: i64| end.min(minute_of(now)).max(0);
    let w = match (&req.from, &req.to) {
        (Some(from), Some(to)) => {
            if req.shift.is_some() || req.date.is_some() {
                return Err(ReportError::Usage(
                    "--from/--to cannot be combined with --shift/--date".into(),
                ));
            }
            Window {
                from: minute_of(parse_time(from, &tz)?),
                to: minute_of(parse_time(to, &tz)?),
                shift: None,
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(ReportError::Usage("--from and --to go together".into()))
        }
        (None, None) => {
            let date = match &req.date {
                Some(d) => Some(d.parse::<Date>().map_err(|_| {
                    ReportError::Usage(format!("--date \"{d}\" is not YYYY-MM-DD"))
                })?),
                None => None,
            };
            let instance = match (&req.shift, date) {
                (Some(name), Some(date)) => cal.shift_on(name, date),
                (Some(name), None) => {
                    // The latest instance that has started: today's, else yesterday's.
                    let today = cal.date_of(now);
                    let yesterday = today.and_then(|d| d.yesterday().ok());
                    [today, yesterday]
                        .into_iter()
                        .flatten()
                        .filter_map(|d| cal.shift_on(name, d))
                        .find(|s| s.start_ms <= now)
                }
                (None, Some(date)) => {
                    return Err(ReportError::Usage(format!(
                        "--date {date} needs --shift NAME"
                    )))
                }
                // The current shift, else the last one that ended (within two days).
                (None, None) => (0..2 * 24 * 60)
                    .filter_map(|m| cal.shift_at(now - m * 60_000))
                    .next(),
            };
            let Some(s) = instance else {
                let names: Vec<_> = config.shifts.iter().map(|s| s.name.as_str()).collect();
                return Err(ReportError::Usage(format!(
                    "no such shift (configured: {})",
                    names.join(", ")
                )));
            };
            Window {
                from: s.start_ms,
                to: running_end(s.end_ms),
                shift: Some(s.name),
            }
        }
    };
    if w.to <= w.from {
        return Err(ReportError::Usage(
            "the window is empty (it has not started yet, or --to is not after --from)".into(),
        ));
    }
    if w.to - w.from > MAX_WINDOW_MS {
        return Err(ReportError::Usage(
            "the window is longer than 31 days".into(),
        ));
    }
    Ok(w)
}

/// The report as JSON (SPEC §10): `{"window":{from,to,shift}, "equipment":{code:{…}}}`.
pub fn build(
    config: &Config,
    db: &ReadOnly,
    w: &Window,
    only: Option<&str>,
    now: i64,
) -> Result<Value, ReportError> {
    if let Some(code) = only {
        if !config.equipment.iter().any(|e| e.code == code) {
            return Err(ReportError::Usage(format!("no equipment \"{code}\"")));
        }
    }
    let mut equipment = Map::new();
    for e in config
        .equipment
        .iter()
        .filter(|e| only.is_none_or(|c| c == e.code))
    {
        let mut v = query::oee(db, e, w.from, w.to, w.shift.as_deref())?;
        let downtime = query::downtime(db, &e.code, w.from, w.to, now)?;
        v["pareto"] = downtime["pareto"].clone();
        v["andons"] = query::andons(db, &e.code, w.from, w.to)?;
        v["jobs"] = json!(query::jobs(
            db,
            e,
            query::MAX_JOBS,
            Some((w.from, w.to)),
            now
        )?);
        v["states"] = json!(query::states(db, &e.code, w.from, w.to, now)?);
        equipment.insert(e.code.clone(), v);
    }
    Ok(json!({
        "window": {
            "from": rfc3339_ms(w.from),
            "to": rfc3339_ms(w.to),
            "shift": w.shift,
        },
        "equipment": equipment,
    }))
}

/// The four OEE figures as the text and HTML reports label them, with their `oee.snapshot` keys.
const FIGURES: &[(&str, &str)] = &[
    ("Availability", "availability"),
    ("Performance", "performance"),
    ("Quality", "quality"),
    ("OEE", "oee"),
];

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|f| format!("{:5.1} %", f * 100.0))
        .unwrap_or_else(|| "    -  ".into())
}

fn secs(v: &Value) -> String {
    v.as_f64()
        .map(|s| format!("{:>9.0} s", s))
        .unwrap_or_else(|| "        - s".into())
}

/// The terminal form of a report built by [`build`].
pub fn text(report: &Value) -> String {
    let w = &report["window"];
    let mut t = format!(
        "Report {} – {}{}\n",
        w["from"].as_str().unwrap_or("?"),
        w["to"].as_str().unwrap_or("?"),
        w["shift"]
            .as_str()
            .map(|s| format!("  (shift {s})"))
            .unwrap_or_default()
    );
    for (code, e) in report["equipment"].as_object().into_iter().flatten() {
        let tg = &e["targets"];
        t.push_str(&format!("\n{code}\n"));
        for &(label, key) in FIGURES {
            t.push_str(&format!(
                "  {label:<13}{}   target {}\n",
                pct(&e[key]),
                pct(&tg[key])
            ));
        }
        t.push_str(&format!("  {:<13}{}\n", "TEEP", pct(&e["teep"])));
        t.push_str(&format!(
            "  calendar {}  planned busy {}  run {}\n",
            secs(&e["calendar_time_s"]),
            secs(&e["planned_busy_time_s"]),
            secs(&e["run_time_s"])
        ));
        t.push_str("  losses:\n");
        for (label, key) in [
            ("breakdowns", "breakdown_loss_s"),
            ("setup/changeover", "setup_loss_s"),
            ("minor stops", "minor_stop_loss_s"),
            ("speed loss", "speed_loss_s"),
            ("rejects", "reject_loss_s"),
            ("planned", "planned_loss_s"),
            ("= valuable time", "valuable_operating_time_s"),
        ] {
            t.push_str(&format!("    {label:<17}{}\n", secs(&e[key])));
        }
        t.push_str(&format!(
            "  failures {}  MTBF {}  MTTR {}  minor stops {}\n",
            e["failures"],
            secs(&e["mtbf_s"]).trim(),
            secs(&e["mttr_s"]).trim(),
            e["minor_stops"]
        ));
        t.push_str(&format!(
            "  units: good {} reject {}\n",
            e["good_count"], e["reject_count"]
        ));
        let pareto = e["pareto"].as_array().cloned().unwrap_or_default();
        if pareto.is_empty() {
            t.push_str("  no downtime\n");
        } else {
            t.push_str("  downtime Pareto (reason, count, seconds, share):\n");
            for p in &pareto {
                t.push_str(&format!(
                    "    {:<20}{:>5} {} {}\n",
                    p["reason_code"].as_str().unwrap_or("?"),
                    p["count"],
                    secs(&p["seconds"]),
                    pct(&p["share"])
                ));
            }
        }
        for (cause, a) in e["andons"]["by_cause"].as_object().into_iter().flatten() {
            t.push_str(&format!(
                "  andons {cause}: {} raised, {} acknowledged, mean time to acknowledge {}\n",
                a["count"],
                a["acknowledged"],
                secs(&a["mean_time_to_acknowledge_s"]).trim()
            ));
        }
        for j in e["jobs"].as_array().into_iter().flatten() {
            t.push_str(&format!(
                "  job {} {}: {} / {}  efficiency {}  quality {}\n",
                j["job_id"].as_str().unwrap_or("?"),
                j["status"].as_str().unwrap_or("?"),
                j["actual_quantity"],
                j["target_quantity"],
                pct(&j["production_efficiency"]).trim(),
                pct(&j["quality_rate"]).trim()
            ));
        }
    }
    t
}
