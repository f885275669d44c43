//! Golden loss figures (SPEC §10, §11), computed by hand: a shift with a changeover, a minor
//! stop, a jam, an unassigned stop an operator later explains and one nobody does.

use super::*;

#[test]
fn golden_afternoon_shift_with_a_changeover_a_jam_and_two_unassigned_stops() {
    // Shift B, 2026-11-25 14:00–22:00 London (= UTC in November), 28 800 s, no break.
    let mut d = Drive::new(&line_config(), "2026-11-25T14:00:00Z");
    d.run(3600, true, [0, 0]); //    14:00:00–15:00:00 running
    d.command(
        "BAG1/changeover/start",
        json!({"request_id":"c1","by":"lead","product_type_id":"P2"}),
    )
    .unwrap();
    d.run(900, false, [0, 0]); //    15:00:00–15:15:00 changeover: 900 s setup
    d.run(1, true, [0, 0]); //       15:15:00 running again
    d.command(
        "BAG1/changeover/complete",
        json!({"request_id":"c2","by":"lead"}),
    )
    .unwrap();
    d.run(2699, true, [0, 0]); //    15:15:01–16:00:00 running
    d.run(20, false, [0, 0]); //     16:00:00–16:00:20 minor stop (20 s < 30 s)
    d.run(3580, true, [0, 0]); //    16:00:20–17:00:00 running
    d.run(300, false, [0, 2]); //    17:00:00–17:05:00 JAM (mechanical): a failure
    d.run(3300, true, [0, 0]); //    17:05:00–18:00:00 running
    d.run(120, false, [0, 0]); //    18:00:00–18:02:00 unassigned ...
    let waiting = d
        .named("downtime.started")
        .into_iter()
        .find(|(_, e)| e["started_at"] == "2026-11-25T18:00:00.000Z")
        .map(|(_, e)| e["downtime_id"].as_str().unwrap().to_string())
        .unwrap();
    d.run(3480, true, [0, 0]); //    18:02:00–19:00:00 running
    d.command(
        "BAG1/downtime/reason",
        json!({"request_id":"r1","by":"lead","downtime_id":waiting,"reason_code":"NO_OPERATOR"}),
    )
    .unwrap(); //                    ... explained: category operator, no longer a failure
    d.run(180, false, [0, 0]); //    19:00:00–19:03:00 unassigned: a failure
    d.run(10_620, true, [0, 0]); //  19:03:00–22:00:00 running
    d.finish(true);
    let s = d.final_snapshot("B");
    // Running 3 600 + 1 + 2 699 + 3 580 + 3 300 + 3 480 + 10 620 = 27 280 s; run time 27 300 s
    // with the 20 s minor stop. Unplanned 900 + 300 + 120 + 180 = 1 500 s, setup 900 s, so
    // breakdowns 600 s. Good 2 × 27 280 = 54 560; rejects 27 280 / 20 = 1 364; total 55 924.
    assert_eq!(s["run_time_s"], 27_300.0, "{s}");
    assert_eq!(s["unplanned_downtime_s"], 1_500.0);
    assert_eq!(s["planned_busy_time_s"], 28_800.0);
    assert_eq!(s["good_count"], 54_560);
    assert_eq!(s["reject_count"], 1_364);
    assert_eq!(s["setup_loss_s"], 900.0);
    assert_eq!(s["breakdown_loss_s"], 600.0);
    assert_eq!(s["minor_stop_loss_s"], 20.0);
    assert_eq!(s["minor_stops"], 1);
    assert_eq!(s["planned_loss_s"], 0.0);
    // Speed: (27 300 − 20) − 0.4 × 55 924 = 27 280 − 22 369.6 = 4 910.4 s.
    assert!(close(&s["speed_loss_s"], 4_910.4), "{s}");
    // Rejects: 0.4 × 1 364 = 545.6 s; valuable operating time 0.4 × 54 560 = 21 824 s.
    assert!(close(&s["reject_loss_s"], 545.6));
    assert!(close(&s["valuable_operating_time_s"], 21_824.0));
    // 600 + 900 + 20 + 4 910.4 + 545.6 + 21 824 = 28 800 = PBT.
    // Failures: the jam and the 19:00 stop (the 18:00 one is an operator reason now) = 2;
    // MTBF = 27 300 / 2 = 13 650 s; MTTR = unplanned 1 500 / 2 = 750 s (SPEC §11).
    assert_eq!(s["failures"], 2);
    assert_eq!(s["mtbf_s"], 13_650.0);
    assert_eq!(s["mttr_s"], 750.0);
    // TEEP = 21 824 / 28 800 = 0.75778 (= OEE: the calendar time is all planned busy time).
    assert!(close(&s["teep"], 21_824.0 / 28_800.0));
    assert!(close(&s["oee"], 21_824.0 / 28_800.0));
    assert_eq!(s["calendar_time_s"], 28_800.0);
}

#[test]
fn the_losses_of_the_golden_day_shift_add_up_to_its_planned_busy_time() {
    // The day shift of `golden_day_shift_with_a_minor_stop_a_film_break_and_the_break`.
    let mut d = Drive::new(&line_config(), "2026-11-25T06:00:00Z");
    d.run(3600, true, [0, 0]);
    d.run(10, false, [0, 0]);
    d.run(3600, true, [0, 0]);
    d.run(600, false, [1, 0]);
    d.run(6590, true, [0, 0]);
    d.run(1200, false, [0, 0]);
    d.run(13200, true, [0, 0]);
    d.finish(true);
    let s = d.final_snapshot("A");
    // Breakdowns 600 s (FILM_BREAK, material: not a failure), setup 0, minor stops 10 s (1),
    // speed (27 000 − 10) − 0.4 × 55 329 = 26 990 − 22 131.6 = 4 858.4 s, rejects 0.4 × 1 349
    // = 539.6 s, VOT 0.4 × 53 980 = 21 592 s: 600 + 10 + 4 858.4 + 539.6 + 21 592 = 27 600.
    // Planned 1 200 s. TEEP = 21 592 / 28 800 = 0.74972; no failure, so no MTBF/MTTR.
    assert_eq!(s["breakdown_loss_s"], 600.0);
    assert_eq!(s["setup_loss_s"], 0.0);
    assert_eq!(s["minor_stops"], 1);
    assert!(close(&s["speed_loss_s"], 4_858.4));
    assert!(close(&s["reject_loss_s"], 539.6));
    assert!(close(&s["valuable_operating_time_s"], 21_592.0));
    assert_eq!(s["planned_loss_s"], 1_200.0);
    assert!(close(&s["teep"], 21_592.0 / 28_800.0));
    assert_eq!(s["failures"], 0);
    assert!(s["mtbf_s"].is_null() && s["mttr_s"].is_null());
}
