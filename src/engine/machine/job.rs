//! Jobs and the production context they write: `context`, `job/assign`, `job/start`,
//! `job/complete` and `job/cancel`, and the job's running figures.
//!
//! Owns: the memory's [`Job`] and the production [`crate::engine::context::Context`] fields a
//! command sets (job, schedule, product, operator, targets); every change to the context goes
//! out as one `context.changed` built here.
//!
//! Never does: count units itself (`production` adds a poll's units to the started job), stop
//! or start the machine.
//!
//! Invariants the tests defend: one job at a time — a running job must be completed or
//! cancelled before another is assigned; a job counts good units only from its start and
//! reports them when it completes; completing needs a started job, cancelling does not.

use serde::{Deserialize, Serialize};

use super::Machine;
use crate::engine::command::ContextPatch;
use crate::engine::event::{Event, JobEvent};

/// A job on this equipment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub target_quantity: Option<u64>,
    pub started_ms: Option<i64>,
    pub good: u64,
    pub reject: u64,
}

impl Machine {
    pub(super) fn update_job_figures(&mut self, t: i64) {
        let ideal = self.rules.ideal_cycle_s();
        let ctx = &mut self.mem.context;
        match &self.mem.job {
            Some(job) if job.started_ms.is_some() => {
                let total = job.good + job.reject;
                ctx.actual_quantity = job.good;
                ctx.quality_rate = (total > 0).then(|| job.good as f64 / total as f64);
                let elapsed_s = (t - job.started_ms.unwrap_or(t)) as f64 / 1000.0;
                ctx.production_efficiency =
                    (elapsed_s > 0.0).then(|| ideal * total as f64 / elapsed_s);
            }
            _ => {
                ctx.actual_quantity = 0;
                ctx.quality_rate = None;
                ctx.production_efficiency = None;
            }
        }
    }

    pub(super) fn context_changed(&self, at: i64, reason: &str, by: &str) -> Event {
        let mut context = self.mem.context.clone();
        context.run_hours_since_maintenance = Some(self.run_hours_since_maintenance());
        context.next_maintenance_due = self.next_maintenance_due(at);
        Event::ContextChanged {
            equipment: self.code(),
            at_ms: at,
            context: Box::new(context),
            change_reason: reason.into(),
            changed_by: by.into(),
        }
    }

    fn job_event(&self, at: i64, kind: JobEvent, job: &Job, by: &str) -> Event {
        Event::Job {
            equipment: self.code(),
            at_ms: at,
            kind,
            job_id: job.job_id.clone(),
            target_quantity: job.target_quantity,
            actual_quantity: job.good,
            by: by.into(),
        }
    }

    fn job_named(&self, job_id: &Option<String>) -> Result<&Job, String> {
        let Some(job) = self.mem.job.as_ref() else {
            return Err(format!("no job is assigned to {}", self.rules.code));
        };
        if let Some(id) = job_id {
            if id != &job.job_id {
                return Err(format!(
                    "job \"{id}\" is not the assigned job (\"{}\")",
                    job.job_id
                ));
            }
        }
        Ok(job)
    }

    /// `context`: sets the fields the command carries; the others stay.
    pub(super) fn set_context(
        &mut self,
        now: i64,
        p: &ContextPatch,
        reason: &str,
        by: &str,
    ) -> Vec<Event> {
        let c = &mut self.mem.context;
        if let Some(v) = &p.job_id {
            c.job_id = v.clone();
        }
        if let Some(v) = &p.schedule_id {
            c.schedule_id = v.clone();
        }
        if let Some(v) = &p.product_type_id {
            c.product_type_id = v.clone();
        }
        if let Some(v) = &p.operator {
            c.operator = v.clone();
        }
        if let Some(v) = p.target_speed {
            c.target_speed = v;
        }
        if let Some(v) = p.target_quantity {
            c.target_quantity = v;
        }
        vec![self.context_changed(now, reason, by)]
    }

    /// `job/assign`: the job the equipment makes next, and the context it implies.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn assign_job(
        &mut self,
        now: i64,
        job_id: &str,
        target_quantity: Option<u64>,
        product_type_id: &Option<String>,
        schedule_id: &Option<String>,
        target_speed: Option<f64>,
        reason: &str,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        if let Some(j) = self.mem.job.as_ref().filter(|j| j.started_ms.is_some()) {
            return Err(format!(
                "job \"{}\" is running: complete or cancel it first",
                j.job_id
            ));
        }
        let job = Job {
            job_id: job_id.to_string(),
            target_quantity,
            started_ms: None,
            good: 0,
            reject: 0,
        };
        let c = &mut self.mem.context;
        c.job_id = Some(job_id.to_string());
        c.target_quantity = target_quantity;
        if product_type_id.is_some() {
            c.product_type_id = product_type_id.clone();
        }
        if schedule_id.is_some() {
            c.schedule_id = schedule_id.clone();
        }
        if target_speed.is_some() {
            c.target_speed = target_speed;
        }
        let mut ev = vec![self.job_event(now, JobEvent::Assigned, &job, by)];
        self.mem.job = Some(job);
        self.update_job_figures(now);
        ev.push(self.context_changed(now, reason, by));
        Ok(ev)
    }

    /// `job/start`: the assigned job starts counting now.
    pub(super) fn start_job(
        &mut self,
        now: i64,
        job_id: &Option<String>,
        reason: &str,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        let job = self.job_named(job_id)?;
        if job.started_ms.is_some() {
            return Err(format!("job \"{}\" has already started", job.job_id));
        }
        let mut job = job.clone();
        job.started_ms = Some(now);
        let mut ev = vec![self.job_event(now, JobEvent::Started, &job, by)];
        self.mem.job = Some(job);
        self.update_job_figures(now);
        ev.push(self.context_changed(now, reason, by));
        Ok(ev)
    }

    /// `job/complete` (`complete`) or `job/cancel`: the job ends and leaves the context.
    pub(super) fn finish_job(
        &mut self,
        now: i64,
        job_id: &Option<String>,
        complete: bool,
        reason: &str,
        by: &str,
    ) -> Result<Vec<Event>, String> {
        let job = self.job_named(job_id)?.clone();
        if complete && job.started_ms.is_none() {
            return Err(format!("job \"{}\" has not started", job.job_id));
        }
        let kind = if complete {
            JobEvent::Completed
        } else {
            JobEvent::Cancelled
        };
        let mut ev = vec![self.job_event(now, kind, &job, by)];
        self.mem.job = None;
        self.mem.context.job_id = None;
        self.mem.context.target_quantity = None;
        self.update_job_figures(now);
        ev.push(self.context_changed(now, reason, by));
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testkit::*;

    #[test]
    fn a_job_counts_good_units_from_its_start_and_reports_them_at_completion() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(10, true, [0, 0]);
        d.command(
            "BAG1/job/assign",
            json!({"request_id":"r1","by":"lead","job_id":"J-1001","target_quantity":5000}),
        )
        .unwrap();
        d.command("BAG1/job/start", json!({"request_id":"r2","by":"lead"}))
            .unwrap();
        d.run(101, true, [0, 0]); // the last sample sees 100 s of production
        d.command("BAG1/job/complete", json!({"request_id":"r3","by":"lead"}))
            .unwrap();
        let done = d.named("job.completed");
        assert_eq!(done[0].1["job_id"], "J-1001");
        assert_eq!(done[0].1["actual_quantity"], 200);
        assert_eq!(done[0].1["target_quantity"], 5000);
        let contexts = d.named("context.changed");
        let last_started = contexts
            .iter()
            .rev()
            .find(|(_, c)| c["change_reason"] == "command" && c["job_id"] == "J-1001")
            .unwrap();
        assert_eq!(last_started.1["target_quantity"], 5000);
    }
}
