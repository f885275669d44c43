//! SPEC §7 "Safety is never planned away", end to end over a day: safety andons during
//! planned stops and changeovers, and commanded planned stops that end by themselves after
//! `max_planned_stop_min`. The single rules are tested in `engine::machine::andon` and
//! `engine::machine::downtime`.

use super::*;

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
