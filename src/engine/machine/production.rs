//! Units: what the counter deltas of one sample feed — the OEE minute buckets, the running
//! job, and the two sliding windows the quality and speed andons judge.
//!
//! Owns: the memory's quality window (good/reject per 10 s slot over 15 min), rate window
//! (total units, about one point per second, over 60 s) and unit total.
//!
//! Never does: compute a counter delta (that is `counter`, fed typed [`crate::sample::Count`]s),
//! raise an andon, change the state.
//!
//! Invariants: units reported by a poll were made since the previous observation and are
//! booked there; they count for a job only when that interval began at or after the job's
//! start; both windows stay bounded at any poll rate.

use super::Machine;
use crate::engine::calendar::Calendar;

/// The quality andon judges the reject rate over this window.
const QUALITY_WINDOW_MS: i64 = 15 * 60_000;
/// Without a speed signal, the speed andon judges the unit rate over this window.
pub(super) const RATE_WINDOW_MS: i64 = 60_000;

impl Machine {
    /// Books `dg` good and `dr` reject units made in `[produced_at, t)`.
    pub(super) fn count_units(
        &mut self,
        produced_at: i64,
        t: i64,
        dg: u64,
        dr: u64,
        cal: &Calendar,
    ) {
        self.buckets.add_counts(produced_at, dg, dr, cal);
        if dg + dr > 0 {
            self.mem.context.last_production_update = Some(t);
            // Units a poll reports were made since the previous poll: they count for a job
            // only when that interval began at or after the job's start.
            if let Some(job) = self
                .mem
                .job
                .as_mut()
                .filter(|j| j.started_ms.is_some_and(|s| produced_at >= s))
            {
                job.good += dg;
                job.reject += dr;
            }
        }
        self.update_job_figures(t);
        self.mem.units_total += dg + dr;
        // 10 s slots keep the window (and the persisted memory) small at any poll rate.
        let slot = t.div_euclid(10_000) * 10_000;
        match self.mem.quality_window.back_mut() {
            Some((at, g, r)) if *at == slot => {
                *g += dg;
                *r += dr;
            }
            _ => self.mem.quality_window.push_back((slot, dg, dr)),
        }
        while self
            .mem
            .quality_window
            .front()
            .is_some_and(|(at, _, _)| *at <= t - QUALITY_WINDOW_MS)
        {
            self.mem.quality_window.pop_front();
        }
        // One point per second is enough for a rate over 60 s.
        let several = self.mem.rate_window.len() > 1;
        match self.mem.rate_window.back_mut() {
            Some((at, units)) if several && at.div_euclid(1000) == t.div_euclid(1000) => {
                *at = t;
                *units = self.mem.units_total;
            }
            _ => self.mem.rate_window.push_back((t, self.mem.units_total)),
        }
        while self.mem.rate_window.len() > 2
            && self
                .mem
                .rate_window
                .get(1)
                .is_some_and(|(at, _)| *at <= t - RATE_WINDOW_MS)
        {
            self.mem.rate_window.pop_front();
        }
    }
}
