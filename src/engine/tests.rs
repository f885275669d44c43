//! Cross-cutting engine tests: restart and reload, determinism, golden shifts computed by
//! hand and properties over random input streams. The tests of each rule live next to it, in
//! `engine::machine::*`; the builders they share are in `engine::testkit`.

use super::testkit::*;

#[test]
fn a_restart_marks_machines_offline_from_the_last_heartbeat() {
    let mut engine = Engine::new(&config(1000), 50_000);
    let previous = vec![MachineView {
        equipment: "BAG1".into(),
        state: MachineState::Running,
        since_ms: 10_000,
    }];
    let events = engine.restore(&previous, 40_000);
    assert_eq!(
        states(&events),
        vec![(MachineState::Running, MachineState::Offline, 40_000)]
    );
}

#[test]
fn replaying_the_same_inputs_gives_the_same_events() {
    let inputs: Vec<(i64, PollInput)> = (0..50)
        .map(|n| {
            (
                n * 1000,
                sample(n % 7 < 4, [0, if n % 5 == 0 { 2 } else { 0 }]),
            )
        })
        .collect();
    let run = || {
        let mut engine = Engine::new(&config(1000), 0);
        inputs
            .iter()
            .flat_map(|(t, i)| engine.on_poll("bagger", *t, i))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

// ------------------------------------------------------------------------------------------
// Golden shifts, computed by hand. Bagger: ideal 150/min → ideal cycle 0.4 s; while running it
// makes 2 good units a second; the reject counter reads floor(running seconds / 20).
// ------------------------------------------------------------------------------------------

fn assert_figures(
    s: &serde_json::Value,
    run: f64,
    unplanned: f64,
    planned: f64,
    offline: f64,
    good: u64,
    reject: u64,
) {
    let pbt = run + unplanned;
    let total = (good + reject) as f64;
    assert_eq!(s["run_time_s"], run, "run time: {s}");
    assert_eq!(s["unplanned_downtime_s"], unplanned, "unplanned: {s}");
    assert_eq!(s["planned_downtime_s"], planned, "planned: {s}");
    assert_eq!(s["offline_s"], offline, "offline: {s}");
    assert_eq!(s["planned_busy_time_s"], pbt, "PBT: {s}");
    assert_eq!(s["good_count"], good);
    assert_eq!(s["reject_count"], reject);
    assert!(close(&s["availability"], run / pbt), "A: {s}");
    assert!(close(&s["performance"], 0.4 * total / run), "P: {s}");
    assert!(close(&s["quality"], good as f64 / total), "Q: {s}");
    assert!(close(&s["oee"], 0.4 * good as f64 / pbt), "OEE: {s}");
    let (a, p, q) = (
        s["availability"].as_f64().unwrap(),
        s["performance"].as_f64().unwrap(),
        s["quality"].as_f64().unwrap(),
    );
    assert!(
        (a * p * q - s["oee"].as_f64().unwrap()).abs() < 1e-12,
        "A×P×Q = OEE"
    );
    assert_eq!(s["final"], true);
}

#[test]
fn golden_day_shift_with_a_minor_stop_a_film_break_and_the_break() {
    // Shift A, 2026-11-25 06:00–14:00 London (= UTC in November), 28 800 s.
    let mut d = Drive::new(&line_config(), "2026-11-25T06:00:00Z");
    d.run(3600, true, [0, 0]); //   06:00:00–07:00:00 running
    d.run(10, false, [0, 0]); //    07:00:00–07:00:10 minor stop (10 s < 30 s): run time
    d.run(3600, true, [0, 0]); //   07:00:10–08:00:10 running
    d.run(600, false, [1, 0]); //   08:00:10–08:10:10 FILM_BREAK: 600 s unplanned
    d.run(6590, true, [0, 0]); //   08:10:10–10:00:00 running
    d.run(1200, false, [0, 0]); //  10:00:00–10:20:00 the break: 1200 s planned
    d.run(13200, true, [0, 0]); //  10:20:00–14:00:00 running
    d.finish(true);
    // Running 3600+3600+6590+13200 = 26 990 s; run time = 26 990 + 10 (minor) = 27 000 s.
    // Good = 2 × 26 990 = 53 980; rejects = floor(26 990 / 20) = 1 349.
    // PBT = 28 800 − 1 200 = 27 600; A = 27 000/27 600 = 0.97826; P = 0.4 × 55 329/27 000
    // = 0.81969; Q = 53 980/55 329 = 0.97562; OEE = 0.4 × 53 980/27 600 = 0.78232.
    let s = d.final_snapshot("A");
    assert_figures(&s, 27_000.0, 600.0, 1_200.0, 0.0, 53_980, 1_349);
    assert_eq!(s["minor_stop_s"], 10.0);
    assert_eq!(s["window_start"], "2026-11-25T06:00:00.000Z");
    assert_eq!(s["window_end"], "2026-11-25T14:00:00.000Z");

    let ended: Vec<_> = d
        .named("downtime.ended")
        .into_iter()
        .map(|(_, e)| {
            (
                e["started_at"].as_str().unwrap().to_string(),
                e["duration_s"].as_f64().unwrap(),
                e["reason_code"].as_str().unwrap().to_string(),
                e["minor"].as_bool().unwrap(),
                e["planned"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ended,
        vec![
            (
                "2026-11-25T07:00:00.000Z".into(),
                10.0,
                "UNASSIGNED".into(),
                true,
                false
            ),
            (
                "2026-11-25T08:00:10.000Z".into(),
                600.0,
                "FILM_BREAK".into(),
                false,
                false
            ),
            (
                "2026-11-25T10:00:00.000Z".into(),
                1200.0,
                "PLANNED".into(),
                false,
                true
            ),
        ]
    );
    let raised = d.named("andon.raised");
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].0, ts("2026-11-25T08:01:10Z"));
    let escalated = d.named("andon.escalated");
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].0, ts("2026-11-25T08:06:10Z"));
    let resolved = d.named("andon.resolved");
    assert_eq!(resolved[0].0, ts("2026-11-25T08:10:10Z"));
    assert_eq!(resolved[0].1["duration_s"], 540.0);
    assert_eq!(resolved[0].1["resolved_by"], "auto");
}

#[test]
fn golden_night_shift_across_midnight_with_an_outage_a_counter_reset_and_a_jam() {
    // Shift C, 2026-11-24 22:00 → 2026-11-25 06:00 London (= UTC), 28 800 s.
    let mut d = Drive::new(&line_config(), "2026-11-24T22:00:00Z");
    d.run(10_800, true, [0, 0]); // 22:00–01:00 running
    d.unreachable(1_800); //        01:00:00–01:30:00 polls fail; offline after the 3rd (01:00:02)
    d.run(1_800, true, [0, 0]); //  01:30–02:00 running
    d.good = d.per_second; //       the PLC reset its counter just before 02:00:00
    d.run(3_600, true, [0, 0]); //  02:00–03:00 running
    d.run(120, false, [0, 2]); //   03:00:00–03:02:00 JAM: 120 s, below raise_after_s.medium
    d.run(10_680, true, [0, 0]); // 03:02–06:00 running
    d.finish(true);
    // Running 10 800+1 800+3 600+10 680 = 26 880 s, plus the 2 s between the first failed poll
    // and the third (state holds) = 26 882 s run time. Offline 01:00:02–01:30:00 = 1 798 s.
    // Good = 2 × 26 880 = 53 760 (the reset loses nothing); rejects = floor(26 880/20) = 1 344.
    // PBT = 28 800 − 1 798 = 27 002; OEE = 0.4 × 53 760 / 27 002 = 0.79639.
    let s = d.final_snapshot("C");
    assert_figures(&s, 26_882.0, 120.0, 0.0, 1_798.0, 53_760, 1_344);
    assert_eq!(s["window_start"], "2026-11-24T22:00:00.000Z");
    assert_eq!(s["window_end"], "2026-11-25T06:00:00.000Z");
    let started = d.named("downtime.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].1["reason_code"], "JAM");
    assert_eq!(started[0].1["started_at"], "2026-11-25T03:00:00.000Z");
    assert!(d.named("andon.raised").is_empty());
    let offline: Vec<_> = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StateChanged {
                to: MachineState::Offline,
                at_ms,
                ..
            } => Some(*at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(offline, vec![ts("2026-11-25T01:00:02Z")]);
}

#[test]
fn golden_night_shift_when_the_clocks_go_back_lasts_nine_hours() {
    // Shift C, 2026-10-24 22:00 BST (21:00 UTC) → 2026-10-25 06:00 GMT (06:00 UTC): 32 400 s.
    let mut d = Drive::new(&line_config(), "2026-10-24T21:00:00Z");
    d.run(14_400, true, [0, 0]); // 21:00–01:00 UTC running
    d.run(1_800, false, [1, 0]); // 01:00–01:30 UTC FILM_BREAK
    d.run(16_200, true, [0, 0]); // 01:30–06:00 UTC running
    d.finish(true);
    // Running 30 600 s; good 61 200; rejects 1 530; unplanned 1 800; PBT 32 400;
    // A = 0.94444; OEE = 0.4 × 61 200 / 32 400 = 0.75556.
    let s = d.final_snapshot("C");
    assert_figures(&s, 30_600.0, 1_800.0, 0.0, 0.0, 61_200, 1_530);
    assert_eq!(s["window_start"], "2026-10-24T21:00:00.000Z");
    assert_eq!(s["window_end"], "2026-10-25T06:00:00.000Z");
    // The andon escalates twice (300 s and 900 s after 01:01:00) and clears at 01:30:00.
    let levels: Vec<_> = d
        .named("andon.escalated")
        .into_iter()
        .map(|(t, e)| (t, e["level"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        levels,
        vec![
            (ts("2026-10-25T01:06:00Z"), 2),
            (ts("2026-10-25T01:16:00Z"), 3)
        ]
    );
    assert_eq!(d.named("andon.resolved")[0].1["duration_s"], 1_740.0);
}

// ------------------------------------------------------------------------------------------
// Properties over random sample streams and commands.
// ------------------------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Run {
            secs: u16,
            running: bool,
            faults: u8,
            rate: u8,
        },
        Fail {
            secs: u8,
        },
        Reset,
        ClockBack {
            secs: u8,
        },
        Command(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (1u16..400, any::<bool>(), 0u8..4, 0u8..4)
                .prop_map(|(secs, running, faults, rate)| Step::Run { secs, running, faults, rate }),
            1 => (1u8..20).prop_map(|secs| Step::Fail { secs }),
            1 => Just(Step::Reset),
            1 => (1u8..90).prop_map(|secs| Step::ClockBack { secs }),
            1 => (0u8..6).prop_map(Step::Command),
        ]
    }

    fn play(steps: &[Step]) -> Drive {
        let mut d = Drive::new(&line_config(), "2026-11-25T05:50:00Z");
        for s in steps {
            match s {
                Step::Run {
                    secs,
                    running,
                    faults,
                    rate,
                } => {
                    d.per_second = u64::from(*rate);
                    let words = match faults {
                        0 => [0, 0],
                        1 => [1, 0],
                        2 => [0, 2],
                        _ => [8, 2],
                    };
                    d.run(u64::from(*secs), *running, words);
                }
                Step::Fail { secs } => d.unreachable(u64::from(*secs)),
                Step::Reset => d.good = 0,
                Step::ClockBack { secs } => d.t -= i64::from(*secs) * 1000,
                Step::Command(n) => {
                    let body =
                        json!({"request_id":"p","by":"prop","job_id":"J","target_quantity":100});
                    let path = match n {
                        0 => "BAG1/job/assign",
                        1 => "BAG1/job/start",
                        2 => "BAG1/job/complete",
                        3 => "BAG1/planned-stop/start",
                        4 => "BAG1/planned-stop/end",
                        _ => "BAG1/changeover/start",
                    };
                    let body = match n {
                        0 => body,
                        1 | 2 => json!({"request_id":"p","by":"prop","job_id":"J"}),
                        _ => json!({"request_id":"p","by":"prop"}),
                    };
                    let _ = d.command(path, body);
                }
            }
        }
        d.finish(true);
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn oee_figures_stay_in_range_and_obey_the_identity(steps in proptest::collection::vec(step(), 1..25)) {
            let d = play(&steps);
            let m = d.engine.machine("BAG1").unwrap();
            for b in m.buckets.minutes.values() {
                prop_assert_eq!(b.scheduled_ms, b.run_ms + b.unplanned_ms + b.planned_ms + b.offline_ms);
                prop_assert!(b.minor_stop_ms <= b.run_ms);
                prop_assert!(b.scheduled_ms <= 60_000, "a minute holds at most 60 s: {:?}", b);
            }
            for (_, s) in d.named("oee.snapshot") {
                for k in ["availability", "quality"] {
                    if let Some(v) = s[k].as_f64() {
                        prop_assert!((0.0..=1.0).contains(&v), "{} = {} in {}", k, v, s);
                    }
                }
                let pbt = s["planned_busy_time_s"].as_f64().unwrap();
                let losses: f64 = ["breakdown_loss_s", "setup_loss_s", "minor_stop_loss_s",
                    "speed_loss_s", "reject_loss_s", "valuable_operating_time_s"]
                    .iter()
                    .map(|k| s[*k].as_f64().unwrap())
                    .sum();
                prop_assert!((losses - pbt).abs() < 1e-6, "losses + VOT = PBT: {}", s);
                if pbt > 0.0 {
                    let good = s["good_count"].as_f64().unwrap();
                    prop_assert!((s["oee"].as_f64().unwrap() - 0.4 * good / pbt).abs() < 1e-9);
                } else {
                    prop_assert!(s["oee"].is_null());
                }
            }
        }

        #[test]
        fn state_intervals_tile_time_without_gap_overlap_or_negative_duration(steps in proptest::collection::vec(step(), 1..25)) {
            let d = play(&steps);
            let mut prev: Option<(MachineState, i64)> = None;
            for e in &d.events {
                if let Event::StateChanged { from, to, at_ms, .. } = e {
                    if let Some((last_to, last_at)) = prev {
                        prop_assert_eq!(*from, last_to, "each interval starts where the last ended");
                        prop_assert!(*at_ms >= last_at, "time never runs backwards");
                    }
                    prev = Some((*to, *at_ms));
                }
            }
            for (_, e) in d.named("downtime.ended") {
                prop_assert!(e["duration_s"].as_f64().unwrap() >= 0.0);
            }
            for (_, e) in d.named("andon.resolved") {
                prop_assert!(e["duration_s"].as_f64().unwrap() >= 0.0);
            }
        }

        #[test]
        fn replaying_the_same_inputs_gives_the_same_events_prop(steps in proptest::collection::vec(step(), 1..15)) {
            prop_assert_eq!(play(&steps).events, play(&steps).events);
        }
    }
}

#[test]
fn a_reload_that_removes_equipment_closes_its_downtime_and_andons_by_reload() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(400, false, [1, 0]);
    assert_eq!(d.named("andon.raised").len(), 1);
    let started = d.named("downtime.started");
    assert_eq!(started.len(), 1);
    let at = d.t;
    let code = d.engine.codes()[0].clone();
    let events = d.engine.retire(std::slice::from_ref(&code), at);
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e.name() == "downtime.ended")
        .collect();
    assert_eq!(ended.len(), 1, "{events:?}");
    let Event::DowntimeEnded { record, at_ms, .. } = ended[0] else {
        unreachable!()
    };
    assert_eq!(*at_ms, at);
    assert_eq!(record.closed_by.as_deref(), Some("reload"));
    assert_eq!(
        serde_json::json!(record.downtime_id),
        started[0].1["downtime_id"]
    );
    let resolved: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::AndonResolved { resolved_by, .. } => Some(resolved_by.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(resolved, vec!["reload"]);
    assert!(
        d.engine.retire(&[code], at + 1000).is_empty(),
        "nothing is left open to close twice"
    );
}

#[test]
fn resuming_memory_after_a_reload_keeps_open_downtime_and_sends_nothing_offline() {
    let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, [0, 0]);
    d.run(400, false, [1, 0]);
    let code = d.engine.codes()[0].clone();
    let memory: machine::Memory = serde_json::from_str(
        &d.engine
            .memories()
            .into_iter()
            .find(|(c, _)| *c == code)
            .unwrap()
            .1,
    )
    .unwrap();
    let before = d.engine.machine(&code).unwrap().mem.clone();
    let mut fresh = Engine::new(&line_config(), d.t);
    fresh.resume_memory(&code, memory, Vec::new());
    let after = &fresh.machine(&code).unwrap().mem;
    assert_eq!(after.state, before.state);
    assert_eq!(after.stop, before.stop, "the open downtime carries on");
    assert_eq!(after.andons, before.andons);
    d.engine = fresh;
    let seen = d.events.len();
    d.run(5, false, [1, 0]);
    assert!(
        d.events[seen..].iter().all(|e| e.name() != "state.changed"
            && e.name() != "downtime.ended"
            && e.name() != "andon.resolved"),
        "{:?}",
        &d.events[seen..]
    );
}

mod losses;
mod safety;
