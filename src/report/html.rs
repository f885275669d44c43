//! The HTML report: one self-contained file (inline CSS, inline SVG, no script, no network)
//! that reads on a phone. Per equipment: the figures against their targets, a loss waterfall
//! from calendar time to valuable operating time, a downtime Pareto and a state timeline, each
//! chart drawn by `plotters` with its SVG backend.
//!
//! Never does: read the database (it renders the JSON of [`super::build`]), fetch anything.

use plotters::prelude::*;
use serde_json::Value;

/// Chart size in SVG units: small enough that its text stays legible when a phone scales the
/// chart to its width.
const W: u32 = 480;
const H: u32 = 320;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.1} %", x * 100.0))
        .unwrap_or_else(|| "–".into())
}

/// The colour of a machine state on the timeline (and in its legend).
fn state_colour(state: &str) -> RGBColor {
    match state {
        "running" => RGBColor(46, 160, 67),
        "stopped" => RGBColor(230, 150, 30),
        "faulted" => RGBColor(210, 50, 50),
        "planned_stop" => RGBColor(60, 120, 210),
        "changeover" => RGBColor(140, 80, 190),
        _ => RGBColor(150, 150, 150),
    }
}

fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

type Drawn = Result<String, String>;

/// Bars over named segments: `(label, low, high, colour)` in hours.
fn bars(title: &str, y_desc: &str, items: &[(String, f64, f64, RGBColor)]) -> Drawn {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let top = items
            .iter()
            .map(|(_, lo, hi, _)| lo.max(*hi))
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.08;
        let bottom = items
            .iter()
            .map(|(_, lo, hi, _)| lo.min(*hi))
            .fold(0.0f64, f64::min);
        let n = items.len().max(1) as i32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(95)
            .y_label_area_size(50)
            .build_cartesian_2d((0..n).into_segmented(), bottom..top)
            .map_err(|e| e.to_string())?;
        let label = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => items
                .get(*i as usize)
                .map(|it| it.0.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(items.len().max(1))
            .x_label_formatter(&label)
            .x_label_style(
                ("sans-serif", 14)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(items.iter().enumerate().map(|(i, (_, lo, hi, c))| {
                let i = i as i32;
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), lo.min(*hi)),
                        (SegmentValue::Exact(i + 1), lo.max(*hi)),
                    ],
                    c.filled(),
                );
                r.set_margin(0, 0, 6, 6);
                r
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Calendar time stepped down to valuable operating time, loss by loss (hours).
fn waterfall(e: &Value) -> Drawn {
    let h = |k: &str| f(&e[k]) / 3600.0;
    let calendar = h("calendar_time_s");
    let scheduled = h("planned_busy_time_s") + h("planned_downtime_s") + h("offline_s");
    let steps = [
        ("not scheduled", calendar - scheduled),
        ("offline", h("offline_s")),
        ("planned", h("planned_loss_s")),
        ("breakdowns", h("breakdown_loss_s")),
        ("setup", h("setup_loss_s")),
        ("minor stops", h("minor_stop_loss_s")),
        ("speed", h("speed_loss_s")),
        ("rejects", h("reject_loss_s")),
    ];
    let mut items = vec![("calendar".to_string(), 0.0, calendar, RGBColor(90, 90, 90))];
    let mut level = calendar;
    for (name, loss) in steps {
        items.push((name.to_string(), level, level - loss, RGBColor(210, 70, 60)));
        level -= loss;
    }
    items.push((
        "valuable".into(),
        0.0,
        h("valuable_operating_time_s"),
        RGBColor(46, 160, 67),
    ));
    bars("Loss waterfall", "hours", &items)
}

/// Downtime by reason, largest first (minutes).
fn pareto(e: &Value) -> Drawn {
    let items: Vec<_> = e["pareto"]
        .as_array()
        .into_iter()
        .flatten()
        .take(10)
        .map(|p| {
            (
                p["reason_code"].as_str().unwrap_or("?").to_string(),
                0.0,
                f(&p["seconds"]) / 60.0,
                RGBColor(230, 120, 40),
            )
        })
        .collect();
    bars("Downtime Pareto", "minutes", &items)
}

/// The machine's states over the window (hours from its start).
fn timeline(e: &Value, from_ms: i64, to_ms: i64) -> Drawn {
    let hours = ((to_ms - from_ms) as f64 / 3_600_000.0).max(1e-3);
    let at = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .map(|t| (t.as_millisecond() - from_ms) as f64 / 3_600_000.0)
            .unwrap_or(0.0)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, 150)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption("State timeline", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(10)
            .build_cartesian_2d(0f64..hours, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_desc("hours from the window's start")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(e["states"].as_array().into_iter().flatten().map(|s| {
                let c = state_colour(s["state"].as_str().unwrap_or("offline"));
                Rectangle::new([(at(&s["from"]), 0.1), (at(&s["to"]), 0.9)], c.filled())
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;padding:12px;color:#222;\
background:#f6f6f6}h1{font-size:1.3em}h2{font-size:1.15em;margin-top:1.5em}\
section{background:#fff;border-radius:8px;padding:12px;margin:12px 0;\
box-shadow:0 1px 3px #0002}svg{width:100%;height:auto;display:block}\
table{border-collapse:collapse;width:100%;font-size:.95em}td,th{padding:4px 6px;\
border-bottom:1px solid #eee;text-align:left}td.n{text-align:right}\
.legend span{display:inline-block;margin-right:10px;font-size:.85em}\
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}";

/// The whole report as one HTML document.
pub fn render(report: &Value) -> Result<String, String> {
    let w = &report["window"];
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .unwrap_or(0)
    };
    let (from, to) = (parse(&w["from"]), parse(&w["to"]));
    let title = format!(
        "OEE report {} – {}{}",
        w["from"].as_str().unwrap_or("?"),
        w["to"].as_str().unwrap_or("?"),
        w["shift"]
            .as_str()
            .map(|s| format!(" (shift {s})"))
            .unwrap_or_default()
    );
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>\n",
        t = esc(&title)
    );
    for (code, e) in report["equipment"].as_object().into_iter().flatten() {
        h.push_str(&format!("<section><h2>{}</h2>\n<table>", esc(code)));
        let tg = &e["targets"];
        for &(label, key) in super::FIGURES {
            h.push_str(&format!(
                "<tr><th>{label}</th><td class=n>{}</td><td class=n>target {}</td></tr>",
                pct(&e[key]),
                pct(&tg[key])
            ));
        }
        h.push_str(&format!(
            "<tr><th>TEEP</th><td class=n>{}</td><td></td></tr>\
<tr><th>MTBF / MTTR</th><td class=n>{}</td><td class=n>{}</td></tr>\
<tr><th>Failures / minor stops</th><td class=n>{}</td><td class=n>{}</td></tr>\
<tr><th>Good / reject</th><td class=n>{}</td><td class=n>{}</td></tr></table>\n",
            pct(&e["teep"]),
            e["mtbf_s"]
                .as_f64()
                .map(|s| format!("{:.0} s", s))
                .unwrap_or_else(|| "–".into()),
            e["mttr_s"]
                .as_f64()
                .map(|s| format!("{:.0} s", s))
                .unwrap_or_else(|| "–".into()),
            e["failures"],
            e["minor_stops"],
            e["good_count"],
            e["reject_count"],
        ));
        h.push_str(&waterfall(e)?);
        h.push_str(&pareto(e)?);
        h.push_str("<table><tr><th>Reason</th><th>Count</th><th>Seconds</th><th>Share</th></tr>");
        for p in e["pareto"].as_array().into_iter().flatten() {
            h.push_str(&format!(
                "<tr><td>{}</td><td class=n>{}</td><td class=n>{:.0}</td><td class=n>{}</td></tr>",
                esc(p["reason_code"].as_str().unwrap_or("?")),
                p["count"],
                f(&p["seconds"]),
                pct(&p["share"])
            ));
        }
        h.push_str("</table>\n");
        h.push_str(&timeline(e, from, to)?);
        h.push_str("<div class=legend>");
        for s in [
            "running",
            "stopped",
            "faulted",
            "planned_stop",
            "changeover",
            "offline",
        ] {
            h.push_str(&format!(
                "<span><i style=\"background:{}\"></i>{s}</span>",
                hex(state_colour(s))
            ));
        }
        h.push_str("</div>\n");
        let jobs = e["jobs"].as_array().cloned().unwrap_or_default();
        if !jobs.is_empty() {
            h.push_str("<h3>Jobs</h3><table><tr><th>Job</th><th>Status</th><th>Actual / target</th><th>Efficiency</th><th>Quality</th></tr>");
            for j in &jobs {
                h.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td class=n>{} / {}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                    esc(j["job_id"].as_str().unwrap_or("?")),
                    esc(j["status"].as_str().unwrap_or("?")),
                    j["actual_quantity"],
                    j["target_quantity"],
                    pct(&j["production_efficiency"]),
                    pct(&j["quality_rate"])
                ));
            }
            h.push_str("</table>\n");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}
