//! Command dispatch: one parsed [`Command`] to the rule module that owns it.
//!
//! Owns: the order of what a command does — a planned-stop deadline that has passed ends its
//! stop first, then the command's own rule runs — and the `reason` its `context.changed`
//! carries (the command's `note`, else `"command"`).
//!
//! Never does: apply a rule itself (each lives with its concept: `job`, `changeover`,
//! `downtime`, `andon`), or keep a half-applied command: `Err` means "not applicable", and
//! the engine then drops the trial copy it ran the command on ([`crate::engine::Engine::on_command`]).

use super::Machine;
use crate::engine::calendar::Calendar;
use crate::engine::command::{Command, CommandKind};
use crate::engine::event::Event;

impl Machine {
    /// Applies a command at `now`. `Err` = not applicable; the caller discards the machine.
    pub fn on_command(
        &mut self,
        now: i64,
        cmd: &Command,
        cal: &Calendar,
    ) -> Result<Vec<Event>, String> {
        let by = cmd.by.as_str();
        let reason = cmd.note.clone().unwrap_or_else(|| "command".into());
        // A deadline that has passed ends its planned stop first (a `planned-stop/end` after it
        // then finds nothing to end); ticks normally get there before any command does.
        let mut ev = self.planned_timeout(now, cal);
        ev.extend(match &cmd.kind {
            CommandKind::Context(p) => self.set_context(now, p, &reason, by),
            CommandKind::JobAssign {
                job_id,
                target_quantity,
                product_type_id,
                schedule_id,
                target_speed,
            } => self.assign_job(
                now,
                job_id,
                *target_quantity,
                product_type_id,
                schedule_id,
                *target_speed,
                &reason,
                by,
            )?,
            CommandKind::JobStart { job_id } => self.start_job(now, job_id, &reason, by)?,
            CommandKind::JobComplete { job_id } => {
                self.finish_job(now, job_id, true, &reason, by)?
            }
            CommandKind::JobCancel { job_id } => {
                self.finish_job(now, job_id, false, &reason, by)?
            }
            CommandKind::ChangeoverStart {
                product_type_id,
                job_id,
            } => self.start_changeover(now, product_type_id, job_id, cal, &reason, by)?,
            CommandKind::ChangeoverComplete { failed } => {
                self.complete_changeover(now, *failed, cal, &reason, by)?
            }
            CommandKind::PlannedStopStart { reason: why } => {
                self.start_planned_stop(now, why, cal, by)?
            }
            CommandKind::PlannedStopEnd => self.end_planned_stop(now, cal, by)?,
            CommandKind::AndonAck { andon_id } => self.acknowledge(now, andon_id, by)?,
            CommandKind::AndonResolve { andon_id } => self.resolve_by_command(now, andon_id, by)?,
            CommandKind::DowntimeReason {
                downtime_id,
                reason_code,
            } => self.set_downtime_reason(now, downtime_id, reason_code, &cmd.note, by)?,
            CommandKind::MaintenanceDone => self.maintenance_done(now, &cmd.note, by)?,
        });
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testkit::*;

    #[test]
    fn commands_that_do_not_apply_change_nothing() {
        let mut d = Drive::new(&line_config(), "2026-11-25T07:00:00Z");
        d.run(5, true, [0, 0]);
        let before = d.engine.memories();
        let e = d
            .command("BAG1/job/start", json!({"request_id":"r","by":"x"}))
            .unwrap_err();
        assert!(e.contains("no job"), "{e}");
        let e = d
            .command(
                "BAG1/andon/ack",
                json!({"request_id":"r","by":"x","andon_id":"nope"}),
            )
            .unwrap_err();
        assert!(e.contains("no open andon"), "{e}");
        let e = d
            .command(
                "BAG1/changeover/complete",
                json!({"request_id":"r","by":"x"}),
            )
            .unwrap_err();
        assert!(e.contains("no changeover"), "{e}");
        let cmd = parse("NOPE/planned-stop/end", br#"{"request_id":"r","by":"x"}"#).unwrap();
        assert!(d
            .engine
            .on_command(d.t, &cmd)
            .unwrap_err()
            .contains("unknown equipment"));
        assert_eq!(d.engine.memories(), before);
    }
}
