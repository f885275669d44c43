//! SPEC §7 "Safety is never planned away": safety andons during planned stops and changeovers,
//! and commanded planned stops that end by themselves after `max_planned_stop_min`.

use super::*;

/// The golden line plus two safety faults: OVERTEMP (bit 1, electrical, critical, andon,
/// raised after 5 s) and GUARD_OPEN (bit 2, category safety, low, andon, after the default
/// 600 s). Shift A has the 10:00–10:20 break.
fn safety_config() -> Config {
    let mut c = line_config();
    let e = &mut c.equipment[0];
    e.andon.raise_after_s[3] = 5;
    e.faults.push(Fault {
        bit: 1,
        code: "OVERTEMP".into(),
        description: "Sealing jaw over temperature".into(),
        category: FaultCategory::Electrical,
        severity: Severity::Critical,
        andon: true,
    });
    e.faults.push(Fault {
        bit: 2,
        code: "GUARD_OPEN".into(),
        description: "Safety guard open".into(),
        category: FaultCategory::Safety,
        severity: Severity::Low,
        andon: true,
    });
    c
}

const FILM_BREAK: [u64; 2] = [1, 0];
const OVERTEMP: [u64; 2] = [2, 0];
const GUARD_OPEN: [u64; 2] = [4, 0];
const NONE: [u64; 2] = [0, 0];

fn start_planned_stop(d: &mut Drive) {
    d.command(
        "BAG1/planned-stop/start",
        json!({"request_id":"r","by":"lead","reason":"cleaning"}),
    )
    .unwrap();
}

#[test]
fn a_critical_fault_during_a_calendar_planned_stop_raises_its_andon_at_raise_after_s_critical() {
    let mut d = Drive::new(&safety_config(), "2026-11-25T09:59:00Z");
    d.run(60, true, NONE);
    d.run(30, false, NONE); // the break from 10:00
    d.run(600, false, OVERTEMP); // from 10:00:30
    let started = d.named("downtime.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].1["planned"], true);
    let raised = d.named("andon.raised");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(
        raised[0].0,
        ts("2026-11-25T10:00:35Z"),
        "5 s after the fault appeared in the stop"
    );
    assert_eq!(raised[0].1["priority"], "critical");
    assert_eq!(raised[0].1["reason_code"], "OVERTEMP");
    assert_eq!(raised[0].1["level"], 1);
    assert_eq!(
        raised[0].1["downtime_id"], started[0].1["downtime_id"],
        "it names the planned downtime it happened in"
    );
    let escalated = d.named("andon.escalated");
    assert_eq!(
        escalated[0].0,
        ts("2026-11-25T10:05:35Z"),
        "escalate_after_s[0] = 300"
    );
    assert!(
        d.named("downtime.ended").is_empty(),
        "the planned stop stays a planned stop"
    );
    assert_eq!(
        d.engine.machine("BAG1").unwrap().mem.state,
        MachineState::PlannedStop
    );
}

#[test]
fn a_safety_category_low_severity_fault_during_a_changeover_raises_its_andon() {
    let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, NONE);
    d.command(
        "BAG1/changeover/start",
        json!({"request_id":"r","by":"lead","product_type_id":"BAG-2KG"}),
    )
    .unwrap();
    d.run(700, false, GUARD_OPEN);
    let raised = d.named("andon.raised");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(
        raised[0].0,
        ts("2026-11-25T07:10:10Z"),
        "raise_after_s.low = 600 from the changeover start"
    );
    assert_eq!(raised[0].1["priority"], "low");
    assert_eq!(raised[0].1["reason_code"], "GUARD_OPEN");
    assert_eq!(d.named("downtime.started")[0].1["category"], "changeover");
}

#[test]
fn a_high_fault_that_is_not_safety_raises_nothing_during_a_planned_stop() {
    let mut d = Drive::new(&safety_config(), "2026-11-25T09:59:00Z");
    d.run(60, true, NONE);
    d.run(1190, false, FILM_BREAK); // the whole break, and 30 s of the first FILM_BREAK
    assert!(d.named("andon.raised").is_empty());
    // Nor during a commanded one, nor during a changeover.
    let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
    d.run(10, true, NONE);
    start_planned_stop(&mut d);
    d.run(900, false, FILM_BREAK);
    d.command(
        "BAG1/planned-stop/end",
        json!({"request_id":"r","by":"lead"}),
    )
    .unwrap();
    d.run(10, true, NONE);
    d.command(
        "BAG1/changeover/start",
        json!({"request_id":"r","by":"lead"}),
    )
    .unwrap();
    d.run(900, false, FILM_BREAK);
    assert!(d.named("andon.raised").is_empty());
}

/// 09:59–10:00 running, the break stopped (with `faults` shown from 10:00:30 until 10:19:50),
/// then running until 10:30; the shift figures at 10:30.
fn break_with(faults: [u64; 2]) -> (Drive, serde_json::Value) {
    let mut d = Drive::new(&safety_config(), "2026-11-25T09:59:00Z");
    d.run(60, true, NONE);
    d.run(30, false, NONE);
    d.run(1160, false, faults);
    d.run(10, false, NONE);
    d.run(600, true, NONE);
    d.finish(true);
    let figures = d
        .engine
        .current_oee(d.t)
        .into_iter()
        .find_map(|(code, f)| (code == "BAG1").then_some(f).flatten())
        .expect("shift A figures");
    (d, figures)
}

#[test]
fn planned_stop_time_with_a_safety_andon_is_still_planned_downtime() {
    let (with, figures) = break_with(OVERTEMP);
    assert_eq!(with.named("andon.raised").len(), 1);
    let (without, plain) = break_with(NONE);
    assert!(without.named("andon.raised").is_empty());
    assert_eq!(figures["planned_downtime_s"], 1200.0, "{figures}");
    assert_eq!(figures["unplanned_downtime_s"], 0.0, "{figures}");
    assert_eq!(figures, plain, "the andon changes no OEE bucket");
}

#[test]
fn a_safety_andon_raised_in_a_planned_stop_resolves_when_its_fault_clears_though_still_stopped() {
    let (d, _) = break_with(OVERTEMP);
    let resolved = d.named("andon.resolved");
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].0, ts("2026-11-25T10:19:50Z"));
    assert_eq!(resolved[0].1["resolved_by"], "auto");
}

#[test]
fn a_commanded_planned_stop_ends_with_ended_by_timeout_exactly_at_start_plus_max() {
    let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
    d.engine.set_max_planned_stop_ms(10 * 60_000);
    d.run(10, true, NONE);
    start_planned_stop(&mut d); // at 07:00:10
    d.run(600, false, NONE); // samples up to 07:10:09
    assert!(d.named("downtime.ended").is_empty());
    // A tick that arrives late still stamps the end with the deadline itself.
    let events = d.engine.on_tick(ts("2026-11-25T07:10:10.700Z"));
    d.events.extend(events.clone());
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e.name() == "downtime.ended")
        .filter_map(|e| e.message().map(|m| (e.at_ms(), m.data)))
        .collect();
    assert_eq!(ended.len(), 1, "{events:?}");
    assert_eq!(ended[0].0, ts("2026-11-25T07:10:10Z"));
    assert_eq!(ended[0].1["ended_by"], "timeout");
    assert_eq!(ended[0].1["planned"], true);
    assert_eq!(ended[0].1["duration_s"], 600.0);
    assert_eq!(
        states(&events),
        vec![(
            MachineState::PlannedStop,
            MachineState::Stopped,
            ts("2026-11-25T07:10:10Z")
        )]
    );
    // Still stopped: from the deadline on it is an ordinary stop, downtime after micro_stop_s.
    d.t = ts("2026-11-25T07:10:11Z");
    d.run(60, false, NONE);
    let started = d.named("downtime.started");
    assert_eq!(started.len(), 2);
    assert_eq!(started[1].1["planned"], false);
    assert_eq!(started[1].1["started_at"], "2026-11-25T07:10:10.000Z");
    assert!(
        d.command(
            "BAG1/planned-stop/end",
            json!({"request_id":"r","by":"lead"})
        )
        .is_err(),
        "nothing left to end"
    );
}

#[test]
fn a_planned_stop_ended_by_command_before_the_deadline_ends_normally_and_no_timeout_follows() {
    let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
    d.engine.set_max_planned_stop_ms(10 * 60_000);
    d.run(10, true, NONE);
    start_planned_stop(&mut d);
    d.run(300, false, NONE);
    d.command(
        "BAG1/planned-stop/end",
        json!({"request_id":"r","by":"jsmith"}),
    )
    .unwrap();
    d.run(40, false, NONE);
    d.run(1200, true, NONE);
    let ended = d.named("downtime.ended");
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert_eq!(ended[0].1["planned"], true);
    assert_eq!(ended[0].1["ended_by"], "jsmith");
    assert_eq!(ended[0].0, ts("2026-11-25T07:05:10Z"));
    assert_eq!(ended[1].1["planned"], false);
    assert_eq!(ended[1].1["ended_by"], "auto", "the machine ran again");
    assert!(ended.iter().all(|(_, e)| e["ended_by"] != "timeout"));
    assert_eq!(
        d.engine.machine("BAG1").unwrap().mem.planned_deadline_ms,
        None
    );
}

#[test]
fn a_calendar_planned_stop_never_times_out() {
    let mut d = Drive::new(&safety_config(), "2026-11-25T09:59:00Z");
    d.engine.set_max_planned_stop_ms(60_000);
    d.run(60, true, NONE);
    d.run(1200, false, NONE);
    assert!(
        d.named("downtime.ended").is_empty(),
        "the 20 min break runs its course"
    );
}

#[test]
fn the_planned_stop_deadline_survives_a_save_and_restore_of_the_engine_memory() {
    let mut d = Drive::new(&safety_config(), "2026-11-25T07:00:00Z");
    d.engine.set_max_planned_stop_ms(10 * 60_000);
    d.run(10, true, NONE);
    start_planned_stop(&mut d);
    d.run(120, false, NONE);
    let (code, json_memory) = d.engine.memories().remove(0);
    assert!(json_memory.contains("planned_deadline_ms"), "{json_memory}");
    let memory: machine::Memory = serde_json::from_str(&json_memory).unwrap();
    // The restarted daemon's engine has the default maximum: the persisted deadline holds.
    let last_seen = d.t - 1000;
    let mut fresh = Engine::new(&safety_config(), d.t + 30_000);
    let restored = fresh.restore_memory(&code, memory, Vec::new(), last_seen);
    assert_eq!(
        states(&restored),
        vec![(MachineState::PlannedStop, MachineState::Offline, last_seen)]
    );
    d.engine = fresh;
    d.events.clear();
    d.t += 30_000;
    d.run(600, false, NONE); // back at 07:02:40, still stopped, until 07:12:39
    let timeouts: Vec<_> = d
        .named("downtime.ended")
        .into_iter()
        .filter(|(_, e)| e["ended_by"] == "timeout")
        .collect();
    assert_eq!(timeouts.len(), 1, "{:?}", d.named("downtime.ended"));
    assert_eq!(timeouts[0].0, ts("2026-11-25T07:10:10Z"));
    assert_eq!(timeouts[0].1["started_at"], "2026-11-25T07:02:40.000Z");
}

/// A commanded planned stop with a critical fault in it that times out, then a calendar break
/// with a safety guard open, then a changeover.
fn safety_day() -> Vec<Event> {
    let mut d = Drive::new(&safety_config(), "2026-11-25T09:00:00Z");
    d.engine.set_max_planned_stop_ms(15 * 60_000);
    d.run(10, true, NONE);
    start_planned_stop(&mut d);
    d.run(60, false, NONE);
    d.run(1200, false, OVERTEMP);
    d.run(60, true, NONE);
    d.run(1400, false, GUARD_OPEN);
    d.run(60, true, NONE);
    d.command(
        "BAG1/changeover/start",
        json!({"request_id":"r","by":"lead"}),
    )
    .unwrap();
    d.run(900, false, [6, 0]);
    d.finish(true);
    d.events
}

#[test]
fn replaying_safety_andons_and_planned_stop_timeouts_gives_the_same_events() {
    let first = safety_day();
    assert_eq!(first, safety_day());
    let raised = first.iter().filter(|e| e.name() == "andon.raised").count();
    assert!(raised >= 3, "{raised} andons");
    assert!(first.iter().any(|e| matches!(
        e,
        Event::DowntimeEnded { record, .. } if record.ended_by.as_deref() == Some("timeout")
    )));
}
