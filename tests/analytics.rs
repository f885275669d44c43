//! Edge analytics end to end (SPEC §11): `query/oee`, `query/downtime` and `query/jobs` sent
//! over a real mosquitto to the daemon, answered on `P/reply` from a database seeded with
//! minute buckets, downtime and jobs two days ago (figures computed by hand below).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::Duration;

use common::line::{hold_running, BAGGER};
use common::rig::{Rig, RigOptions};
use ms5_edge::clock::rfc3339_ms;
use ms5_edge::engine::event::{DowntimeRecord, JobEvent, Reason};
use ms5_edge::engine::oee::Bucket;
use ms5_edge::engine::Event;
use ms5_edge::store::{Batch, Store};
use serde_json::json;

const MIN: i64 = 60_000;

fn downtime(id: &str, start: i64, end: i64, code: &str, category: &str) -> Vec<Event> {
    let record = DowntimeRecord {
        downtime_id: id.into(),
        start_ms: start,
        end_ms: Some(end),
        reason: Reason {
            code: code.into(),
            description: code.into(),
            category: category.into(),
        },
        planned: false,
        fault_bits: vec![],
        minor: false,
        closed_by: None,
        ended_by: None,
    };
    vec![Event::DowntimeEnded {
        equipment: BAGGER.into(),
        at_ms: end,
        record,
    }]
}

fn job(kind: JobEvent, at: i64, actual: u64) -> Event {
    Event::Job {
        equipment: BAGGER.into(),
        at_ms: at,
        kind,
        job_id: "J-7".into(),
        target_quantity: Some(6000),
        actual_quantity: actual,
        by: "lead".into(),
    }
}

/// The bagger (ideal 120/min = 0.5 s) from `t0` = 06:00 two days ago, for two hours:
/// 06:00–07:00 running, 100 good + 2 rejects a minute; 07:00–07:10 a changeover; 07:10–07:30
/// running, 100 good a minute, a 10 s minor stop at 07:15; 07:30–07:35 a JAM (mechanical);
/// 07:35–08:00 running, 100 good a minute. Job J-7 ran 06:00–07:00 (6 000 made).
fn seed(data: &std::path::Path, t0: i64) {
    let mut events = Vec::new();
    for m in 0..120 {
        let mut b = Bucket {
            scheduled_ms: MIN,
            ..Bucket::default()
        };
        match m {
            0..=59 => {
                b.run_ms = MIN;
                b.good = 100;
                b.reject = 2;
            }
            60..=69 => {
                b.unplanned_ms = MIN;
                b.setup_ms = MIN;
            }
            90..=94 => b.unplanned_ms = MIN,
            _ => {
                b.run_ms = MIN;
                b.good = 100;
            }
        }
        if m == 75 {
            b.minor_stop_ms = 10_000;
            b.minor_stops = 1;
        }
        events.push(Event::OeeMinute {
            equipment: BAGGER.into(),
            minute_ms: t0 + m * MIN,
            bucket: b,
        });
    }
    events.extend(downtime(
        "d-co",
        t0 + 60 * MIN,
        t0 + 70 * MIN,
        "CHANGEOVER",
        "changeover",
    ));
    events.extend(downtime(
        "d-jam",
        t0 + 90 * MIN,
        t0 + 95 * MIN,
        "JAM",
        "mechanical",
    ));
    events.push(job(JobEvent::Assigned, t0, 0));
    events.push(job(JobEvent::Started, t0, 0));
    events.push(job(JobEvent::Completed, t0 + 60 * MIN, 6000));
    let mut store = Store::open(data).unwrap();
    store
        .commit(&Batch {
            events: &events,
            ..Batch::default()
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_mqtt_answer_windows_that_start_and_end_mid_shift() {
    let dir = tempfile::tempdir().unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let t0 = (now / 86_400_000 - 2) * 86_400_000 + 6 * 3_600_000;
    seed(&dir.path().join("data"), t0);
    let mut rig = Rig::start(RigOptions {
        dir: Some(dir),
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    // Commands are subscribed once the daemon is connected: wait until it publishes.
    rig.wait_state_after("running", 0, Duration::from_secs(20))
        .await;
    let at = |m: i64| rfc3339_ms(t0 + m * MIN);
    let within = Duration::from_secs(20);

    // 06:30–07:40 (from mid-run to after the jam), 4 200 s: run 30 + 20 + 5 min = 3 300 s;
    // unplanned 600 s changeover + 300 s JAM = 900 s (setup 600, breakdowns 300); PBT 4 200.
    // Good 3 000 + 2 000 + 500 = 5 500, rejects 60, total 5 560. VOT 0.5 × 5 500 = 2 750 s;
    // speed (3 300 − 10) − 0.5 × 5 560 = 510 s; rejects 0.5 × 60 = 30 s; minor stops 10 s:
    // 300 + 600 + 10 + 510 + 30 + 2 750 = 4 200. OEE = TEEP = 2 750 / 4 200 = 0.65476;
    // A = 3 300 / 4 200; one failure (the JAM): MTBF 3 300 s, MTTR 900 s.
    let r = rig
        .command_within(
            BAGGER,
            "query/oee",
            json!({"request_id":"q-oee","from":at(30),"to":format!("{}", rfc3339_ms(t0 + 100 * MIN + 59_000))}),
            within,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let q = &r["result"];
    assert_eq!(q["window_start"], at(30).as_str(), "{q}");
    assert_eq!(
        q["window_end"],
        at(100).as_str(),
        "rounded down to the minute"
    );
    assert_eq!(q["run_time_s"], 3_300.0);
    assert_eq!(q["unplanned_downtime_s"], 900.0);
    assert_eq!(q["setup_loss_s"], 600.0);
    assert_eq!(q["breakdown_loss_s"], 300.0);
    assert_eq!(q["planned_busy_time_s"], 4_200.0);
    assert_eq!(q["good_count"], 5_500);
    assert_eq!(q["reject_count"], 60);
    assert_eq!(q["valuable_operating_time_s"], 2_750.0);
    assert_eq!(q["speed_loss_s"], 510.0);
    assert_eq!(q["reject_loss_s"], 30.0);
    assert_eq!(q["minor_stop_loss_s"], 10.0);
    assert_eq!(q["minor_stops"], 1);
    assert!((q["oee"].as_f64().unwrap() - 2_750.0 / 4_200.0).abs() < 1e-12);
    assert!((q["teep"].as_f64().unwrap() - 2_750.0 / 4_200.0).abs() < 1e-12);
    assert!((q["availability"].as_f64().unwrap() - 3_300.0 / 4_200.0).abs() < 1e-12);
    assert_eq!(q["failures"], 1);
    assert_eq!(q["mtbf_s"], 3_300.0);
    assert_eq!(q["mttr_s"], 900.0);

    // The downtime of 06:30–07:32: the changeover whole (600 s) and 2 of the JAM's 5 minutes.
    let r = rig
        .command_within(
            BAGGER,
            "query/downtime",
            json!({"request_id":"q-dt","from":at(30),"to":at(92)}),
            within,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let pareto: Vec<_> = r["result"]["pareto"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["reason_code"].as_str().unwrap().to_string(),
                p["count"].as_u64().unwrap(),
                p["seconds"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pareto,
        vec![("CHANGEOVER".into(), 1, 600.0), ("JAM".into(), 1, 120.0)]
    );
    assert_eq!(r["result"]["events"].as_array().unwrap().len(), 2);

    // J-7: 06:00–07:00, 6 000 good of 6 120 made; efficiency 0.5 × 6 120 / 3 600 = 0.85.
    let r = rig
        .command_within(
            BAGGER,
            "query/jobs",
            json!({"request_id":"q-jobs","limit":5}),
            within,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let jobs = r["result"]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{r}");
    assert_eq!(jobs[0]["job_id"], "J-7");
    assert_eq!(jobs[0]["status"], "completed");
    assert_eq!(jobs[0]["actual_quantity"], 6000);
    assert_eq!(jobs[0]["target_quantity"], 6000);
    assert_eq!(jobs[0]["started_at"], at(0).as_str());
    assert_eq!(jobs[0]["ended_at"], at(60).as_str());
    assert!((jobs[0]["production_efficiency"].as_f64().unwrap() - 0.85).abs() < 1e-12);
    assert!((jobs[0]["quality_rate"].as_f64().unwrap() - 6000.0 / 6120.0).abs() < 1e-12);

    // Refused like any bad command: a window over 31 days, an unknown field.
    let r = rig
        .command_within(
            BAGGER,
            "query/oee",
            json!({"request_id":"q-long","from":at(0),"to":rfc3339_ms(t0 + 31 * 86_400_000 + MIN)}),
            within,
        )
        .await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("31 days"), "{r}");
    let r = rig
        .command_within(
            BAGGER,
            "query/jobs",
            json!({"request_id":"q-bad","limit":5,"colour":"red"}),
            within,
        )
        .await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("colour"), "{r}");
    rig.stop_within(Duration::from_secs(20)).await;
}

/// `ms5-edge report` on the rig's config.
fn report(rig: &Rig, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
        .arg("report")
        .arg("-c")
        .arg(&rig.config_path)
        .args(args)
        .output()
        .unwrap()
}

/// Whether a PNG has more than a handful of distinct byte values once inflated (a blank page
/// inflates to a few). Python's zlib does the inflating: it is what `scripts/test` has anyway.
fn png_is_drawn(png: &std::path::Path) -> bool {
    let script = "import sys,zlib\n\
d=open(sys.argv[1],'rb').read();i=8;idat=b''\n\
while i<len(d):\n n=int.from_bytes(d[i:i+4],'big');t=d[i+4:i+8]\n if t==b'IDAT': idat+=d[i+8:i+8+n]\n i+=12+n\n\
print(len(set(zlib.decompress(idat))))";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(png)
        .output()
        .expect("python3 (installed with the test peers by scripts/test)");
    let distinct: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    distinct > 16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_agrees_with_query_oee_and_its_html_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let t0 = (now / 86_400_000 - 2) * 86_400_000 + 6 * 3_600_000;
    seed(&dir.path().join("data"), t0);
    let mut rig = Rig::start(RigOptions {
        dir: Some(dir),
        bagger: Some(hold_running(true)),
        ..RigOptions::default()
    })
    .await;
    rig.wait_state_after("running", 0, Duration::from_secs(20))
        .await;
    let (from, to) = (rfc3339_ms(t0 + 15 * MIN), rfc3339_ms(t0 + 115 * MIN));
    let r = rig
        .command_within(
            BAGGER,
            "query/oee",
            json!({"request_id":"q-r","from":from,"to":to}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");

    let out = report(
        &rig,
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--equipment",
            BAGGER,
            "--format",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["window"]["from"], from.as_str());
    assert_eq!(json["window"]["to"], to.as_str());
    let mut figures = json["equipment"][BAGGER].clone();
    for k in ["pareto", "andons", "jobs", "states"] {
        assert!(figures.as_object_mut().unwrap().remove(k).is_some(), "{k}");
    }
    assert_eq!(figures, r["result"], "report --format json = query/oee");
    assert_eq!(
        json["equipment"][BAGGER]["pareto"][0]["reason_code"],
        "CHANGEOVER"
    );

    let text = report(&rig, &["--from", &from, "--to", &to]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("TEEP") && text.contains("CHANGEOVER"),
        "{text}"
    );

    // The HTML report, opened in headless Chromium with no network; the screenshot is kept.
    let keep = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report");
    std::fs::create_dir_all(&keep).unwrap();
    let html = keep.join("report.html");
    let out = report(
        &rig,
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "html",
            "--output",
            html.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    // Self-contained: nothing to fetch (the SVG namespace URI is a name, not a resource).
    for fetch in [
        "src=\"http",
        "href=\"http",
        "<link",
        "url(http",
        "<script",
        "@import",
    ] {
        assert!(
            !page.contains(fetch),
            "the page would fetch something: {fetch}"
        );
    }
    let chromium = |args: &[&str]| {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .args(["--proxy-server=127.0.0.1:9", "--window-size=430,2600"])
            .args(args)
            .arg(format!("file://{}", html.display()))
            .output()
            .expect("chromium (Debian's package; scripts/test installs it)")
    };
    let dom = chromium(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for title in [
        "Loss waterfall",
        "Downtime Pareto",
        "State timeline",
        BAGGER,
    ] {
        assert!(dom.contains(title), "{title} missing from the DOM");
    }
    assert!(
        dom.matches("<svg").count() >= 3 * 2,
        "three charts per equipment"
    );
    let png = keep.join("report.png");
    let _ = std::fs::remove_file(&png);
    let shot = chromium(&[&format!("--screenshot={}", png.display())]);
    assert!(
        png.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    assert!(png_is_drawn(&png), "the screenshot is blank");
    rig.stop_within(Duration::from_secs(20)).await;
}
