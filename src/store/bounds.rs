//! Bounded storage: `storage.max_outbox_mb` and the ledger of every message given up.
//!
//! ## Design constraints
//! - **What is bounded** is the sum of the outbox's `bytes` column (topic + payload estimate,
//!   SPEC §6), not the file size: the file also holds samples and domain rows, and SQLite
//!   reuses freed pages rather than shrinking.
//! - **Drop order** (SPEC §5): when a commit leaves the outbox above the limit, the *fewest*
//!   oldest rows of the lowest non-empty class are deleted until it is back under: telemetry
//!   (kind 0) first, then OEE snapshots (kind 1), then everything else (kind 2), oldest `seq`
//!   first within a class. Drops happen inside the commit's transaction, so the outbox never
//!   stays above the limit after a commit and the ledger always agrees with the deletes.
//! - **Cheap when under the limit.** The store keeps an upper estimate of the outbox bytes
//!   (last exact sum + bytes inserted since; the uplink's deletes only lower the truth). The
//!   exact `SUM(bytes)` runs only when the estimate crosses the limit.
//! - **Every loss is in the ledger** (`outbox_drops`, persisted in the same transaction as the
//!   deletes, so counters survive restarts): one row per (episode, reason, class) with the
//!   count, bytes and the `seq` span. An *episode* starts with the first drop after a period
//!   without drops and ends when an exact check (at a commit, or at the minutely retention
//!   step) finds the outbox under 90 % of the limit; it is logged once when it starts and once
//!   when it ends.
//! - Disk-full losses (events shed from the memory queue before they ever got a `seq`) go in the
//!   same ledger with reason `disk_full` and no `seq` span, written by the first commit that
//!   succeeds again.
//!
//! A row the uplink has already handed to the broker when it is dropped is still delivered;
//! it is counted as dropped all the same (the count is an upper bound of what consumers miss).

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::outbox::Kind;
use super::StoreError;
use crate::clock::rfc3339_ms;

/// Why messages were given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The outbox reached `max_outbox_mb`.
    OutboxFull,
    /// The database refused writes and the memory queue overflowed.
    DiskFull,
    /// One message larger than the broker (or `max_packet_kb`) accepts: it could never be sent,
    /// and it must not block the rows behind it (SPEC §7).
    TooLarge,
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            DropReason::OutboxFull => "outbox_full",
            DropReason::DiskFull => "disk_full",
            DropReason::TooLarge => "too_large",
        }
    }

    fn parse(s: &str) -> Option<DropReason> {
        match s {
            "outbox_full" => Some(DropReason::OutboxFull),
            "disk_full" => Some(DropReason::DiskFull),
            "too_large" => Some(DropReason::TooLarge),
            _ => None,
        }
    }
}

/// The ledger's class of the Sparkplug queue's rows (SPEC §8; never an `outbox.kind`: those
/// rows live in `spb_outbox` and have no `seq`, so their ledger rows have no `seq` span).
pub const SPARKPLUG_KIND: i64 = 3;

/// The name of a drop class in reports.
pub fn kind_name(kind: i64) -> &'static str {
    match kind {
        0 => "telemetry",
        1 => "oee_snapshot",
        SPARKPLUG_KIND => "sparkplug",
        _ => "event",
    }
}

/// Messages of one class given up for one reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DropCount {
    pub count: u64,
    pub bytes: u64,
}

/// One ledger row: what one episode gave up of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropRange {
    pub episode: i64,
    pub reason: DropReason,
    pub class: &'static str,
    pub count: u64,
    pub bytes: u64,
    /// Oldest and newest `seq` dropped (none for disk-full losses, which never had one). Other
    /// classes' messages inside the span were kept.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub first_at: String,
    pub last_at: String,
}

impl DropRange {
    /// `outbox_full`, `disk_full` or `too_large`.
    pub fn reason_name(&self) -> &'static str {
        self.reason.as_str()
    }
}

/// Totals and the most recent ranges, for `status` and `P/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DropReport {
    /// reason → class → totals since the database was created.
    pub totals: BTreeMap<&'static str, BTreeMap<&'static str, DropCount>>,
    /// The newest ledger rows, newest first (at most [`RECENT_RANGES`]).
    pub recent: Vec<DropRange>,
}

impl DropReport {
    /// Messages lost for any reason.
    pub fn total(&self) -> u64 {
        self.totals
            .values()
            .flat_map(|m| m.values())
            .map(|c| c.count)
            .sum()
    }

    /// Totals of one reason and class (0 when none).
    pub fn count(&self, reason: DropReason, kind: Kind) -> u64 {
        self.totals
            .get(reason.as_str())
            .and_then(|m| m.get(kind_name(kind as i64)))
            .map(|c| c.count)
            .unwrap_or(0)
    }
}

/// How many ledger rows reports carry.
pub const RECENT_RANGES: usize = 10;

/// Reads the ledger (through any connection: the writer's or `status`'s read-only one).
pub fn read_report(conn: &rusqlite::Connection) -> Result<DropReport, StoreError> {
    let mut report = DropReport::default();
    let mut stmt = conn.prepare_cached(
        "SELECT reason, kind, sum(count), sum(bytes) FROM outbox_drops GROUP BY reason, kind",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (reason, kind, count, bytes) = row?;
        let Some(reason) = DropReason::parse(&reason) else {
            continue;
        };
        report.totals.entry(reason.as_str()).or_default().insert(
            kind_name(kind),
            DropCount {
                count: count.max(0) as u64,
                bytes: bytes.max(0) as u64,
            },
        );
    }
    let mut stmt = conn.prepare_cached(
        "SELECT episode, reason, kind, count, bytes, first_seq, last_seq, first_ms, last_ms
         FROM outbox_drops ORDER BY last_ms DESC, id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![RECENT_RANGES as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, Option<i64>>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, i64>(8)?,
        ))
    })?;
    for row in rows {
        let (episode, reason, kind, count, bytes, first_seq, last_seq, first_ms, last_ms) = row?;
        let Some(reason) = DropReason::parse(&reason) else {
            continue;
        };
        report.recent.push(DropRange {
            episode,
            reason,
            class: kind_name(kind),
            count: count.max(0) as u64,
            bytes: bytes.max(0) as u64,
            first_seq,
            last_seq,
            first_at: rfc3339_ms(first_ms),
            last_at: rfc3339_ms(last_ms),
        });
    }
    Ok(report)
}

/// What one enforcement pass deleted, per class: (count, bytes, first seq, last seq).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub by_kind: BTreeMap<i64, (u64, u64, i64, i64)>,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty()
    }

    pub fn count(&self) -> u64 {
        self.by_kind.values().map(|v| v.0).sum()
    }
}

/// Exact bytes waiting in the outbox.
pub fn outbox_bytes(tx: &rusqlite::Connection) -> Result<u64, StoreError> {
    let b: i64 = tx.query_row("SELECT coalesce(sum(bytes), 0) FROM outbox", [], |r| {
        r.get(0)
    })?;
    Ok(b.max(0) as u64)
}

/// Deletes the fewest oldest rows of the lowest classes so that at most `limit` bytes wait.
/// `total` is the exact current sum. Returns what was deleted and the new exact sum.
pub fn enforce(tx: &Connection, total: u64, limit: u64) -> Result<(Dropped, u64), StoreError> {
    let mut dropped = Dropped::default();
    let mut total = total;
    for kind in [Kind::Telemetry, Kind::OeeSnapshot, Kind::Event] {
        if total <= limit {
            break;
        }
        let kind = kind as i64;
        // Walk the class oldest first in pages until enough bytes are freed.
        let mut last_seq: Option<i64> = None;
        let mut first_seq: Option<i64> = None;
        let mut count = 0u64;
        let mut freed = 0u64;
        'pages: loop {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, bytes FROM outbox WHERE kind = ?1 AND seq > ?2 ORDER BY seq LIMIT 256",
            )?;
            let page = stmt
                .query_map(params![kind, last_seq.unwrap_or(0)], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            if page.is_empty() {
                break;
            }
            for (seq, bytes) in page {
                first_seq.get_or_insert(seq);
                last_seq = Some(seq);
                count += 1;
                freed += bytes.max(0) as u64;
                if total.saturating_sub(freed) <= limit {
                    break 'pages;
                }
            }
        }
        if let (Some(first), Some(last)) = (first_seq, last_seq) {
            tx.prepare_cached("DELETE FROM outbox WHERE kind = ?1 AND seq BETWEEN ?2 AND ?3")?
                .execute(params![kind, first, last])?;
            total = total.saturating_sub(freed);
            dropped.by_kind.insert(kind, (count, freed, first, last));
        }
    }
    Ok((dropped, total))
}

/// Adds drops to the ledger row of (episode, reason, class), creating it if needed.
#[allow(clippy::too_many_arguments)]
pub fn record(
    tx: &Connection,
    episode: i64,
    reason: DropReason,
    kind: i64,
    count: u64,
    bytes: u64,
    seqs: Option<(i64, i64)>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let (first, last) = match seqs {
        Some((f, l)) => (Some(f), Some(l)),
        None => (None, None),
    };
    tx.prepare_cached(
        "INSERT INTO outbox_drops (episode, reason, kind, count, bytes, first_seq, last_seq, first_ms, last_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT(episode, reason, kind) DO UPDATE SET
            count = count + excluded.count,
            bytes = bytes + excluded.bytes,
            first_seq = coalesce(min(first_seq, excluded.first_seq), first_seq, excluded.first_seq),
            last_seq = coalesce(max(last_seq, excluded.last_seq), last_seq, excluded.last_seq),
            last_ms = excluded.last_ms",
    )?
    .execute(params![
        episode,
        reason.as_str(),
        kind,
        count as i64,
        bytes as i64,
        first,
        last,
        now_ms
    ])?;
    Ok(())
}
