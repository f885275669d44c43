//! Changeovers: `changeover/start` and `changeover/complete`, from one product or job to the
//! next.
//!
//! Owns: the memory's open [`ChangeoverState`] and the context's changeover fields.
//!
//! Never does: decide the state by itself — starting and completing re-derive it
//! (`downtime`), so a stopped machine in a changeover is `changeover` and its time is setup
//! downtime (unplanned, SPEC §6), not a planned stop.
//!
//! Invariants the tests defend: at most one changeover at a time; completing it (not failing
//! it) moves the context to the product and job it named.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Machine;
use crate::clock::rfc3339_ms;
use crate::engine::calendar::Calendar;
use crate::engine::event::Event;

/// An open changeover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeoverState {
    pub start_ms: i64,
    pub job_before: Option<String>,
    pub product_before: Option<String>,
    pub job_after: Option<String>,
    pub product_after: Option<String>,
}

impl Machine {
    /// `changeover/start`: the equipment is set up for `product_type_id` / `job_id`.
    pub(super) fn start_changeover(
        &mut self,
        now: i64,
        product_type_id: &Option<String>,
        job_id: &Option<String>,
        cal: &Calendar,
        reason: &str,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        if self.mem.changeover.is_some() {
            return Err("a changeover is already in progress".into());
        }
        let co = ChangeoverState {
            start_ms: now,
            job_before: self.mem.context.job_id.clone(),
            product_before: self.mem.context.product_type_id.clone(),
            job_after: job_id.clone(),
            product_after: product_type_id.clone(),
        };
        self.mem.context.changeover_status = "in_progress".into();
        self.mem.context.changeover_start_time = Some(now);
        self.mem.context.changeover_end_time = None;
        let mut ev = vec![changeover_event(&self.rules.code, &co, None, by)];
        self.mem.changeover = Some(co);
        ev.extend(self.rederive(now, cal, by));
        ev.push(self.context_changed(now, reason, by));
        Ok(ev)
    }

    /// `changeover/complete`: the changeover ends, `failed` or not.
    pub(super) fn complete_changeover(
        &mut self,
        now: i64,
        failed: bool,
        cal: &Calendar,
        reason: &str,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        let Some(co) = self.mem.changeover.take() else {
            return Err("no changeover is in progress".into());
        };
        let c = &mut self.mem.context;
        c.changeover_status = if failed { "failed" } else { "completed" }.into();
        c.changeover_end_time = Some(now);
        if !failed {
            if co.product_after.is_some() {
                c.product_type_id = co.product_after.clone();
            }
            if co.job_after.is_some() {
                c.job_id = co.job_after.clone();
            }
        }
        let mut ev = vec![changeover_event(&self.rules.code, &co, Some(now), by)];
        ev.extend(self.rederive(now, cal, by));
        ev.push(self.context_changed(now, reason, by));
        Ok(ev)
    }
}

fn changeover_event(code: &str, co: &ChangeoverState, ended: Option<i64>, by: &str) -> Event {
    Event::Changeover {
        equipment: code.to_string(),
        at_ms: ended.unwrap_or(co.start_ms),
        completed: ended.is_some(),
        data: json!({
            "job_id_before": co.job_before,
            "product_type_id_before": co.product_before,
            "job_id_after": co.job_after,
            "product_type_id_after": co.product_after,
            "started_at": rfc3339_ms(co.start_ms),
            "ended_at": ended.map(rfc3339_ms),
            "by": by,
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testkit::*;

    #[test]
    fn a_changeover_is_setup_downtime_not_a_planned_stop() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.run(1, false, [0, 0]);
        d.command(
            "BAG1/changeover/start",
            json!({"request_id":"r","by":"lead","product_type_id":"BAG-2KG"}),
        )
        .unwrap();
        d.run(300, false, [0, 0]);
        d.command(
            "BAG1/changeover/complete",
            json!({"request_id":"r","by":"lead"}),
        )
        .unwrap();
        d.run(10, true, [0, 0]);
        let started = d.named("downtime.started");
        let co = started
            .iter()
            .find(|(_, s)| s["category"] == "changeover")
            .unwrap();
        assert_eq!(co.1["planned"], false);
        assert_eq!(
            d.named("changeover.completed")[0].1["product_type_id_after"],
            "BAG-2KG"
        );
        assert!(d.named("context.changed").iter().any(
            |(_, c)| c["product_type_id"] == "BAG-2KG" && c["changeover_status"] == "completed"
        ));
    }
}
