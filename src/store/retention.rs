//! Retention: old rows pruned in small batches that never stall polling.
//!
//! ## Design constraints
//! - **Table-driven.** [`RULES`] lists every pruned table with its time column and retention
//!   class; a new domain table is pruned by appending one line (its time column should be
//!   indexed, or each step scans the table).
//! - **Appended tables need no time index.** `samples` gets a row with almost every durable
//!   commit, and an index on its time would be one more page in each (issue 10). Its rows are
//!   appended in time order, so the expired rows are the oldest rowids: a step looks only at
//!   the first `budget` rows in rowid order and deletes those that expired. A row more than
//!   `budget` rows behind a newer one (written after the wall clock was set back) goes once
//!   the rows before it have gone: later than its time says, never earlier, and no step
//!   ever scans the table.
//! - **Small steps.** [`prune_step`] deletes at most `budget` rows in total, in one short
//!   transaction on the core's connection, and says whether more is due; the core calls it
//!   about once a minute, or about once a second while a backlog remains (e.g. after the
//!   retention was shortened), so a big prune never holds the write lock for long.
//! - **Open rows are kept.** A row whose time column is `NULL` (an open interval) never
//!   matches `< cutoff` and is never pruned.
//! - Outbox rows are never pruned by age: they leave on PUBACK or through the
//!   `max_outbox_mb` drop order only (see [`super::bounds`]).

use rusqlite::{params, Connection};

use super::StoreError;

/// Which retention setting applies to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `storage.telemetry_retention_days` (samples).
    Telemetry,
    /// `storage.retention_days` (events, intervals, OEE minutes).
    Events,
}

/// One pruned table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub table: &'static str,
    /// Epoch milliseconds; rows older than the cutoff are deleted.
    pub time_column: &'static str,
    pub class: Class,
    /// Rows are appended in time order and the time column has no index: look at the oldest
    /// rowids only (module doc).
    pub appended: bool,
}

/// Every pruned table. Append new domain tables here (downtime, andon, OEE minutes, …).
pub const RULES: &[Rule] = &[
    Rule {
        table: "samples",
        time_column: "time_ms",
        class: Class::Telemetry,
        appended: true,
    },
    Rule {
        table: "state_intervals",
        time_column: "end_ms",
        class: Class::Events,
        appended: false,
    },
    Rule {
        table: "downtimes",
        time_column: "ended_ms",
        class: Class::Events,
        appended: false,
    },
    Rule {
        table: "andons",
        time_column: "resolved_ms",
        class: Class::Events,
        appended: false,
    },
    Rule {
        table: "context_history",
        time_column: "changed_ms",
        class: Class::Events,
        appended: false,
    },
    Rule {
        table: "jobs",
        time_column: "at_ms",
        class: Class::Events,
        appended: false,
    },
    Rule {
        table: "oee_minutes",
        time_column: "minute_ms",
        class: Class::Events,
        appended: false,
    },
];

/// Retention settings in days (from `[storage]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub telemetry_days: u32,
    pub events_days: u32,
}

impl Retention {
    fn cutoff_ms(&self, class: Class, now_ms: i64) -> i64 {
        let days = match class {
            Class::Telemetry => self.telemetry_days,
            Class::Events => self.events_days,
        };
        now_ms - i64::from(days) * 86_400_000
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub deleted: u64,
    /// The budget ran out before every table was clean: call again soon.
    pub more: bool,
}

/// Deletes at most `budget` expired rows across [`RULES`] in one transaction.
pub fn prune_step(
    conn: &mut Connection,
    retention: &Retention,
    now_ms: i64,
    budget: usize,
) -> Result<PruneReport, StoreError> {
    let tx = conn.transaction()?;
    let mut report = PruneReport::default();
    let mut left = budget;
    for rule in RULES {
        if left == 0 {
            report.more = true;
            break;
        }
        let cutoff = retention.cutoff_ms(rule.class, now_ms);
        let sql = if rule.appended {
            format!(
                "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM \
                 (SELECT rowid, {c} AS t FROM {t} ORDER BY rowid LIMIT ?2) WHERE t < ?1)",
                t = rule.table,
                c = rule.time_column
            )
        } else {
            format!(
                "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE {c} < ?1 LIMIT ?2)",
                t = rule.table,
                c = rule.time_column
            )
        };
        let n = tx
            .prepare_cached(&sql)?
            .execute(params![cutoff, left as i64])?;
        report.deleted += n as u64;
        left -= n.min(left);
        if left == 0 {
            report.more = true;
        }
    }
    tx.commit()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, DB_FILE, PRUNE_BUDGET};

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_800_000_000_000;

    fn count(db: &Connection, sql: &str) -> i64 {
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn expired_rows_go_in_bounded_steps_and_recent_or_open_rows_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let db = Connection::open(dir.path().join(DB_FILE)).unwrap();
        // Defaults: telemetry 7 days, events 90 days.
        for i in 0..1200 {
            db.execute(
                "INSERT INTO samples (equipment, time_ms, data) VALUES ('E1', ?1, '{}')",
                [NOW - 8 * DAY - i],
            )
            .unwrap();
        }
        db.execute(
            "INSERT INTO samples (equipment, time_ms, data) VALUES ('E1', ?1, '{}')",
            [NOW - 6 * DAY],
        )
        .unwrap();
        db.execute_batch(&format!(
            "INSERT INTO state_intervals (equipment, state, start_ms, end_ms) VALUES
               ('E1', 'running', {old}, {old_end}),
               ('E1', 'stopped', {old}, NULL),
               ('E1', 'running', {recent}, {recent})",
            old = NOW - 200 * DAY,
            old_end = NOW - 100 * DAY,
            recent = NOW - 10 * DAY,
        ))
        .unwrap();

        let mut steps = Vec::new();
        loop {
            let r = store.prune_step(NOW).unwrap();
            assert!(
                r.deleted as usize <= PRUNE_BUDGET,
                "a step is bounded: {r:?}"
            );
            steps.push(r.deleted);
            if !r.more {
                break;
            }
            assert!(steps.len() < 10, "pruning terminates: {steps:?}");
        }
        assert_eq!(steps.iter().sum::<u64>(), 1201, "{steps:?}");
        assert!(steps.len() >= 3, "1201 rows take several steps: {steps:?}");
        assert_eq!(
            count(&db, "SELECT count(*) FROM samples"),
            1,
            "the 6-day sample stays"
        );
        assert_eq!(
            count(&db, "SELECT count(*) FROM state_intervals"),
            2,
            "the open and the recent interval stay"
        );
    }

    #[test]
    fn a_sample_behind_a_full_step_of_newer_ones_waits_for_them_and_is_never_scanned_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let db = Connection::open(dir.path().join(DB_FILE)).unwrap();
        // A budget's worth of fresh samples, then one stamped 8 days ago (the clock was set
        // back), then the wall clock moves on until the fresh ones expire too.
        for i in 0..PRUNE_BUDGET as i64 {
            db.execute(
                "INSERT INTO samples (equipment, time_ms, data) VALUES ('E1', ?1, '{}')",
                [NOW - DAY + i],
            )
            .unwrap();
        }
        db.execute(
            "INSERT INTO samples (equipment, time_ms, data) VALUES ('E1', ?1, '{}')",
            [NOW - 8 * DAY],
        )
        .unwrap();
        let r = store.prune_step(NOW).unwrap();
        assert_eq!(
            r.deleted, 0,
            "the step looks at the oldest rowids only: {r:?}"
        );
        assert_eq!(
            count(&db, "SELECT count(*) FROM samples"),
            PRUNE_BUDGET as i64 + 1
        );

        let later = NOW + 7 * DAY;
        let mut deleted = 0;
        for _ in 0..5 {
            deleted += store.prune_step(later).unwrap().deleted;
        }
        assert_eq!(
            deleted,
            PRUNE_BUDGET as u64 + 1,
            "all expired by then, the set-back row too"
        );
        assert_eq!(count(&db, "SELECT count(*) FROM samples"), 0);
    }
}
