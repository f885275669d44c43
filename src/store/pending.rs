//! The memory queue for events the database refused (disk full, SPEC §6).
//!
//! ## Design constraints
//! - Bounded: at most [`PENDING_CAP`] events (SPEC: at least 10 000) wait in memory.
//! - On overflow the oldest telemetry goes first, then the oldest of anything: the same order as
//!   the outbox bound, so a long disk-full period loses the least valuable messages.
//! - Every event shed is counted (by drop class, with its outbox byte estimate); the store
//!   writes the counts into the drop ledger with the first commit that succeeds again
//!   ([`super::Store::note_losses`]).
//! - Order is kept: the queue is committed oldest first, ahead of anything newer, so outbox
//!   seqs follow event order across a disk-full period.
//! - A full database frees space a little at a time (acknowledged outbox rows, retention): once
//!   the whole queue does not fit, it is committed in chunks of [`FULL_CHUNK`] events, so a
//!   backlog larger than the space just freed still drains. The engine's memory goes with the
//!   last chunk only, never ahead of the events it explains.
//!
//! The queue itself ([`Queue`]) belongs to the core, which owns the engine whose events it
//! holds; [`Store::commit_or_queue`] and [`Store::commit_queued`] are the only ways to empty it
//! into the database. A reload hands the queue to the next core ([`Queue::into_events`]).

use super::outbox::{self, Kind};
use super::{Batch, Store, StoreError};
use crate::acquire::PlcCounters;
use crate::engine::{Engine, Event};

/// Events that may wait in memory while the database refuses writes.
pub const PENDING_CAP: usize = 10_000;

/// Events per transaction while the database is full: small enough to fit in the space a few
/// acknowledged outbox rows free.
pub const FULL_CHUNK: usize = 16;

/// The events not committed yet, oldest first: the next batch while the database accepts
/// writes, a bounded backlog while it does not.
#[derive(Debug, Default)]
pub struct Queue {
    events: Vec<Event>,
    /// Set from the first refused commit until the queue drained: the error is logged once
    /// per episode, and entering or leaving the state republishes `P/status`.
    full: bool,
}

impl Queue {
    /// A queue holding `events` (those a previous core could not commit), oldest first.
    pub fn with(events: Vec<Event>) -> Queue {
        Queue {
            events,
            full: false,
        }
    }

    /// Appends events, after everything already waiting.
    pub fn extend(&mut self, events: impl IntoIterator<Item = Event>) {
        self.events.extend(events);
    }

    /// The waiting events, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether the last commit left events waiting (the disk-full state of `P/status`).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The waiting events, for the core of the next pipeline.
    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    /// The queue drained: log the end of a disk-full episode once.
    fn leave_full(&mut self) {
        if self.full {
            tracing::info!("database accepts writes again; queued events committed");
            self.full = false;
        }
    }
}

/// What [`Store::commit_or_queue`] writes beside the queued events.
#[derive(Debug, Default)]
pub struct Bookkeeping {
    /// Telemetry goes through the outbox only with `telemetry.store_and_forward = true`.
    pub telemetry_to_outbox: bool,
    /// (plc, last poll tick time, counters), written with the whole batch only.
    pub health: Vec<(String, i64, PlcCounters)>,
    pub heartbeat_ms: i64,
    /// Write the engine's memory with the whole batch (it always goes with a last chunk).
    pub save_memory: bool,
}

/// What one [`Store::commit_or_queue`] committed.
#[derive(Debug, Default)]
pub struct Committed {
    /// Highest outbox seq written by any transaction of the call.
    pub max_seq: Option<i64>,
    /// The whole queue and the bookkeeping went in one transaction (the memory too when
    /// `Bookkeeping::save_memory` asked for it); `false` when the database refused it, even if
    /// chunks drained the queue afterwards.
    pub batch: bool,
    /// With `batch`, the events it committed (taken out of the queue); else empty.
    pub events: Vec<Event>,
}

impl Store {
    /// Commits every queued event in one transaction with `book`; when the database is full,
    /// commits what fits in chunks of [`FULL_CHUNK`], oldest first. Whatever still does not
    /// fit stays queued — shed to [`PENDING_CAP`] (telemetry first) and counted — and polling
    /// goes on: this never fails.
    pub fn commit_or_queue(
        &mut self,
        queue: &mut Queue,
        engine: &Engine,
        book: Bookkeeping,
    ) -> Committed {
        let memories = if book.save_memory {
            self.memories_of(engine)
        } else {
            Vec::new()
        };
        let batch = Batch {
            events: &queue.events,
            telemetry_to_outbox: book.telemetry_to_outbox,
            health: book.health,
            heartbeat_ms: book.heartbeat_ms,
            memories,
        };
        let error = match self.commit(&batch) {
            Ok(seqs) => {
                queue.leave_full();
                return Committed {
                    max_seq: seqs.into_iter().max(),
                    batch: true,
                    events: std::mem::take(&mut queue.events),
                };
            }
            Err(e) => e,
        };
        let mut max_seq = None;
        if matches!(error, StoreError::Full(_)) {
            let mut committed = 0;
            while committed < queue.events.len() {
                let end = (committed + FULL_CHUNK).min(queue.events.len());
                let memories = if end == queue.events.len() {
                    self.memories_of(engine)
                } else {
                    Vec::new()
                };
                let chunk = Batch {
                    events: &queue.events[committed..end],
                    telemetry_to_outbox: book.telemetry_to_outbox,
                    health: Vec::new(),
                    heartbeat_ms: book.heartbeat_ms,
                    memories,
                };
                match self.commit(&chunk) {
                    Ok(seqs) => {
                        max_seq = seqs.into_iter().max().or(max_seq);
                        committed = end;
                    }
                    Err(_) => break,
                }
            }
            queue.events.drain(..committed);
        }
        if queue.events.is_empty() {
            queue.leave_full();
        } else {
            if !queue.full {
                tracing::error!(error = %error, queued = queue.events.len(), "cannot commit to the database; keeping events in memory and polling on");
                queue.full = true;
            }
            let lost = shed(&mut queue.events, PENDING_CAP);
            self.note_losses(lost);
            // Still polling: say so where `status` looks, if the database takes that much.
            if let Err(e) = self.touch_heartbeat(book.heartbeat_ms) {
                tracing::debug!(error = %e, "the heartbeat alone cannot be written either");
            }
        }
        Committed {
            max_seq,
            batch: false,
            events: Vec::new(),
        }
    }

    /// Commits every queued event in chunks of [`FULL_CHUNK`], oldest first, removing what was
    /// committed (no memory, no health rows): what must go ahead of a command's events.
    /// Returns the highest seq written; `Err` when some remain. Sheds nothing and leaves the
    /// disk-full state to the next [`Store::commit_or_queue`].
    pub fn commit_queued(
        &mut self,
        queue: &mut Queue,
        telemetry_to_outbox: bool,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut max_seq = None;
        let mut committed = 0;
        let mut last_error = None;
        while committed < queue.events.len() {
            let end = (committed + FULL_CHUNK).min(queue.events.len());
            let chunk = Batch {
                events: &queue.events[committed..end],
                telemetry_to_outbox,
                health: Vec::new(),
                heartbeat_ms: now_ms,
                memories: Vec::new(),
            };
            match self.commit(&chunk) {
                Ok(seqs) => {
                    max_seq = seqs.into_iter().max().or(max_seq);
                    committed = end;
                }
                Err(e) => {
                    last_error = Some(e);
                    break;
                }
            }
        }
        queue.events.drain(..committed);
        match last_error {
            Some(e) => Err(e),
            None => Ok(max_seq),
        }
    }
}

/// Losses by drop class: (kind, count, bytes).
pub type Losses = Vec<(i64, u64, u64)>;

/// Sheds events beyond `cap`, telemetry first, oldest first; returns what was lost.
pub fn shed(pending: &mut Vec<Event>, cap: usize) -> Losses {
    if pending.len() <= cap {
        return Vec::new();
    }
    let mut lost: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
    let mut count = |e: &Event| {
        let (kind, _, topic, data, _) = outbox::describe(e);
        let entry = lost.entry(kind as i64).or_default();
        entry.0 += 1;
        entry.1 += outbox::estimate_bytes(&topic, &data.to_string()) as u64;
    };
    for class in [Kind::Telemetry, Kind::OeeSnapshot] {
        let mut excess = pending.len().saturating_sub(cap);
        if excess == 0 {
            break;
        }
        pending.retain(|e| {
            if excess > 0 && outbox::describe(e).0 == class {
                excess -= 1;
                count(e);
                false
            } else {
                true
            }
        });
    }
    if pending.len() > cap {
        let n = pending.len() - cap;
        for e in pending.drain(..n) {
            count(&e);
        }
    }
    lost.into_iter().map(|(k, (c, b))| (k, c, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MachineState;

    fn telemetry(at_ms: i64) -> Event {
        Event::Telemetry {
            equipment: "E1".into(),
            at_ms,
            values: Default::default(),
            quality: Default::default(),
        }
    }

    fn change(at_ms: i64) -> Event {
        Event::StateChanged {
            equipment: "E1".into(),
            from: MachineState::Running,
            to: MachineState::Stopped,
            at_ms,
        }
    }

    #[test]
    fn an_overflowing_queue_sheds_the_oldest_telemetry_before_any_state_change() {
        let mut q: Vec<Event> = (0..6)
            .map(|i| if i % 2 == 0 { telemetry(i) } else { change(i) })
            .collect();
        let lost = shed(&mut q, 4);
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].0, lost[0].1), (Kind::Telemetry as i64, 2));
        let kept: Vec<i64> = q.iter().map(|e| e.at_ms()).collect();
        assert_eq!(kept, vec![1, 3, 4, 5], "telemetry 0 and 2 went first");
    }

    #[test]
    fn with_no_telemetry_left_the_oldest_events_are_shed() {
        let mut q: Vec<Event> = (0..5).map(change).collect();
        let lost = shed(&mut q, 3);
        assert_eq!((lost[0].0, lost[0].1), (Kind::Event as i64, 2));
        assert_eq!(q.first().map(|e| e.at_ms()), Some(2));
    }

    #[test]
    fn a_queue_under_its_cap_loses_nothing() {
        let mut q = vec![telemetry(1)];
        assert!(shed(&mut q, 10).is_empty());
        assert_eq!(q.len(), 1);
    }

    fn engine() -> Engine {
        let text = crate::demo::config_text(1502, 1503, "/tmp/unused", None);
        let config = crate::config::load_str(&text, "t.toml").unwrap().config;
        Engine::new(&config, 0)
    }

    /// A store whose page limit is reached: the next commit fails with `StoreError::Full`.
    fn full_store(dir: &std::path::Path) -> Store {
        let pages: u64 = {
            drop(Store::open(dir).unwrap());
            let conn = rusqlite::Connection::open(dir.join(super::super::DB_FILE)).unwrap();
            conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
                .unwrap() as u64
        };
        let limits = super::super::Limits {
            max_page_count: Some(pages + 4),
            ..Default::default()
        };
        let mut store = Store::open_with(dir, limits).unwrap();
        for i in 0..100_000 {
            let events = vec![change(i)];
            let batch = Batch {
                events: &events,
                ..Batch::default()
            };
            if let Err(StoreError::Full(_)) = store.commit(&batch) {
                return store;
            }
        }
        panic!("the page limit was never reached");
    }

    #[test]
    fn a_queue_the_database_accepts_is_committed_as_one_batch_and_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut queue = Queue::with(vec![change(1), change(2)]);
        let done = store.commit_or_queue(
            &mut queue,
            &engine(),
            Bookkeeping {
                save_memory: true,
                ..Bookkeeping::default()
            },
        );
        assert!(done.batch);
        assert_eq!(done.max_seq, Some(2));
        assert_eq!(
            done.events.len(),
            2,
            "what the batch committed is handed back"
        );
        assert!(queue.is_empty() && !queue.is_full());
    }

    #[test]
    fn a_queue_the_full_database_refuses_waits_in_order_and_marks_the_disk_full_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = full_store(dir.path());
        let mut queue = Queue::with((0..40).map(|i| change(1_000_000 + i)).collect());
        let book = Bookkeeping {
            heartbeat_ms: 7_000_000,
            ..Bookkeeping::default()
        };
        let done = store.commit_or_queue(&mut queue, &engine(), book);
        assert_eq!(
            store.heartbeat_ms().unwrap(),
            Some(7_000_000),
            "the heartbeat still moves: `status` must not call a daemon that polls on dead"
        );
        assert!(!done.batch);
        assert!(done.events.is_empty());
        assert!(queue.is_full(), "the disk-full state is entered");
        let times: Vec<i64> = queue.events().iter().map(|e| e.at_ms()).collect();
        assert!(!times.is_empty(), "some events still wait");
        assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first");
        assert_eq!(store.health(queue.len()).pending, queue.len());
    }

    #[test]
    fn a_backlog_ahead_of_a_command_is_committed_in_chunks_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut queue = Queue::with((0..(FULL_CHUNK as i64 * 2 + 1)).map(change).collect());
        let seq = store.commit_queued(&mut queue, false, 0).unwrap();
        assert_eq!(seq, Some(FULL_CHUNK as i64 * 2 + 1));
        assert!(queue.is_empty());
    }
}
