//! Typed internal events: one small type per thing that happens, after vector's
//! `src/internal_events/`.
//!
//! Each type's `emit(&Registry)` updates the counters of [`super::Registry`] and writes a log
//! line only when a *state* changes (a link goes down, a backlog starts, a broker connects),
//! never once per occurrence: a PLC failing ten times a second is one line, not ten. Where
//! another module already logs the same change with more context (the PLC task logs "PLC
//! offline" with the failure count), the event logs at `debug` only, so each change is said
//! once at `info`/`warn`.
//!
//! Invariants: `emit` never blocks beyond one short mutex; no event takes a lock while
//! logging; counters only grow (a new PLC task after a reload starts its own counts at 0 and
//! the registry adds the difference).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{command_label, lock, EquipmentSeries, Registry, FAILURE_KINDS};
use crate::engine::MachineState;

/// A PLC task reported one poll (good or failed): its cumulative poll count and the tick's
/// lateness. The registry counts the difference to the last report.
#[derive(Debug, Clone, Copy)]
pub struct PollCompleted<'a> {
    pub plc: &'a str,
    /// The task's cumulative `polls`.
    pub polls: u64,
    pub lateness_us: u64,
}

impl PollCompleted<'_> {
    pub fn emit(self, reg: &Registry) {
        let mut plcs = lock(&reg.plcs);
        let s = plcs.entry(self.plc.to_string()).or_default();
        let delta = if self.polls >= s.seen_polls {
            self.polls - s.seen_polls
        } else {
            self.polls // a new task (reload): its count starts again at 0
        };
        s.seen_polls = self.polls;
        s.polls += delta;
        s.reported = true;
        s.observe_lateness(self.lateness_us);
    }
}

/// One poll failed; `kind` is one of [`FAILURE_KINDS`] ([`super::failure_kind`]).
#[derive(Debug, Clone, Copy)]
pub struct PollFailed<'a> {
    pub plc: &'a str,
    pub kind: &'static str,
}

impl PollFailed<'_> {
    pub fn emit(self, reg: &Registry) {
        let i = FAILURE_KINDS
            .iter()
            .position(|k| *k == self.kind)
            .unwrap_or(FAILURE_KINDS.len() - 1);
        lock(&reg.plcs)
            .entry(self.plc.to_string())
            .or_default()
            .failures[i] += 1;
        // The PLC task logs each new error message already ("poll failed").
    }
}

/// Ticks the PLC task skipped because a cycle overran; `total` is the task's cumulative count.
/// The start of a skipping episode is logged once.
#[derive(Debug, Clone, Copy)]
pub struct TickSkipped<'a> {
    pub plc: &'a str,
    pub total: u64,
}

impl TickSkipped<'_> {
    pub fn emit(self, reg: &Registry) {
        let (started, ended) = {
            let mut plcs = lock(&reg.plcs);
            let s = plcs.entry(self.plc.to_string()).or_default();
            let delta = if self.total >= s.seen_skipped {
                self.total - s.seen_skipped
            } else {
                self.total
            };
            s.seen_skipped = self.total;
            s.skipped_ticks += delta;
            let was = s.skipping;
            s.skipping = delta > 0;
            (!was && s.skipping, was && !s.skipping)
        };
        if started {
            tracing::warn!(plc = %self.plc, "poll ticks skipped: a poll cycle took longer than poll_interval_ms");
        } else if ended {
            tracing::info!(plc = %self.plc, "poll ticks on schedule again");
        }
    }
}

/// The PLC's link as of its last report (`online` = its last poll succeeded). Emitted with
/// every report; only a change is logged.
#[derive(Debug, Clone, Copy)]
pub struct PlcLinkChanged<'a> {
    pub plc: &'a str,
    pub online: bool,
}

impl PlcLinkChanged<'_> {
    /// Returns whether the link changed.
    pub fn emit(self, reg: &Registry) -> bool {
        let changed = {
            let mut plcs = lock(&reg.plcs);
            let s = plcs.entry(self.plc.to_string()).or_default();
            let changed = s.online != self.online;
            s.online = self.online;
            changed
        };
        if changed {
            // The PLC task logs "PLC offline" / "PLC reachable again" with the details.
            tracing::debug!(plc = %self.plc, online = self.online, "PLC link changed");
        }
        changed
    }
}

/// Messages of one class given up for one reason (the drop ledger, SPEC §5 and §7).
#[derive(Debug, Clone, Copy)]
pub struct OutboxDropped {
    /// `telemetry | oee_snapshot | event | sparkplug`.
    pub class: &'static str,
    /// `outbox_full | disk_full | too_large`.
    pub reason: &'static str,
    pub n: u64,
}

impl OutboxDropped {
    pub fn emit(self, reg: &Registry) {
        if self.n == 0 {
            return;
        }
        *lock(&reg.dropped)
            .entry((self.class, self.reason))
            .or_insert(0) += self.n;
        // The store and the uplink log each drop episode with its seq range.
        tracing::debug!(
            class = self.class,
            reason = self.reason,
            n = self.n,
            "outbox messages dropped"
        );
    }
}

/// The drop ledger's totals as the store reports them (`health.store.drops`): the registry
/// takes each (class, reason) up to the ledger's count, so `/metrics` and `P/status` agree.
pub fn mirror_drops(reg: &Registry, report: &crate::store::bounds::DropReport) {
    let mut deltas = Vec::new();
    {
        let have = lock(&reg.dropped);
        for (reason, classes) in &report.totals {
            for (class, c) in classes {
                let now = have.get(&(*class, *reason)).copied().unwrap_or(0);
                if c.count > now {
                    deltas.push(OutboxDropped {
                        class,
                        reason,
                        n: c.count - now,
                    });
                }
            }
        }
    }
    for d in deltas {
        d.emit(reg);
    }
}

/// The core counted the outbox (it owns the database; the HTTP task never does).
#[derive(Debug, Clone, Copy)]
pub struct OutboxCounted {
    pub messages: u64,
    pub oldest_created_ms: Option<i64>,
    pub now_ms: i64,
}

impl OutboxCounted {
    pub fn emit(self, reg: &Registry) {
        let max_ms = reg.ready_max_backlog_ms();
        let age_ms = self
            .oldest_created_ms
            .map_or(0, |t| u64::try_from(self.now_ms - t).unwrap_or(0));
        let over = age_ms > max_ms;
        let was = {
            let mut o = lock(&reg.outbox);
            let was = o.over_backlog;
            o.messages = self.messages;
            o.oldest_created_ms = self.oldest_created_ms.filter(|_| self.messages > 0);
            o.over_backlog = over;
            was
        };
        if over && !was {
            tracing::warn!(
                messages = self.messages,
                oldest_age_s = age_ms / 1000,
                "outbox backlog older than ready_max_backlog_s: /readyz fails until it drains"
            );
        } else if was && !over {
            tracing::info!(
                messages = self.messages,
                "outbox backlog drained below ready_max_backlog_s"
            );
        }
    }
}

/// What became of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandResult {
    /// Applied and committed; replied `ok:true`.
    Ok,
    /// Refused by the gate, the parser or the engine; replied `ok:false`.
    Refused,
    /// Applied but its events could not be committed; undone, replied `ok:false`.
    NotCommitted,
}

impl CommandResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandResult::Ok => "ok",
            CommandResult::Refused => "refused",
            CommandResult::NotCommitted => "not_committed",
        }
    }
}

/// One command handled; `command` is its name as in its topic (`andon/ack`).
#[derive(Debug, Clone, Copy)]
pub struct CommandHandled<'a> {
    pub command: &'a str,
    pub result: CommandResult,
}

impl CommandHandled<'_> {
    pub fn emit(self, reg: &Registry) {
        let label = command_label(self.command);
        *lock(&reg.commands)
            .entry((label, self.result.as_str()))
            .or_insert(0) += 1;
        // The gate logs refusals at most once per 10 s per reason; the core logs each applied
        // or refused command once.
    }
}

/// The command name of a command path below `P/cmd/` (`EQUIP/andon/ack` → `andon/ack`).
pub fn command_of_path(path: &str) -> &str {
    path.split_once('/').map_or("", |(_, c)| c)
}

/// A CONNACK from `broker` (`host:port`).
#[derive(Debug, Clone, Copy)]
pub struct MqttConnected<'a> {
    pub broker: &'a str,
}

impl MqttConnected<'_> {
    pub fn emit(self, reg: &Registry) {
        lock(&reg.brokers).insert(self.broker.to_string());
        *lock(&reg.broker) = self.broker.to_string();
        reg.connects.fetch_add(1, Ordering::Relaxed);
        reg.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            broker = %self.broker,
            "MQTT connected; replaying the outbox from its oldest row"
        );
    }
}

/// The session ended (or never started): the broker's series goes to 0 and stays.
#[derive(Debug, Clone, Copy)]
pub struct MqttDisconnected;

impl MqttDisconnected {
    pub fn emit(self, reg: &Registry) {
        let was = reg.connected.swap(false, Ordering::Relaxed);
        let broker = std::mem::take(&mut *lock(&reg.broker));
        if was {
            // The uplink logs why, once per distinct error.
            tracing::debug!(%broker, "MQTT disconnected");
        }
    }
}

/// The broker refused an outbox row's publish (PUBACK reason ≥ 0x80). The first refusal of an
/// episode is logged; the episode is the session's to track (it ends with the next delivery).
#[derive(Debug, Clone, Copy)]
pub struct PublishRefused<'a> {
    /// [`crate::uplink::client::reason_name`] of `code`.
    pub reason: &'static str,
    pub code: u8,
    /// The refused row, when it was an outbox row.
    pub seq: Option<i64>,
    pub broker: &'a str,
    pub episode_starts: bool,
}

impl PublishRefused<'_> {
    pub fn emit(self, reg: &Registry) {
        *lock(&reg.refused).entry(self.reason).or_insert(0) += 1;
        if self.episode_starts {
            tracing::warn!(
                seq = self.seq,
                reason = self.reason,
                code = format!("0x{:02x}", self.code),
                broker = %self.broker,
                "broker refused a publish; the row stays in the outbox and is retried with backoff (check the broker's ACL for the gateway's user)"
            );
        }
    }
}

/// The state of each equipment, as the engine sees it now.
#[derive(Debug, Clone, Copy)]
pub struct EquipmentObserved<'a> {
    pub equipment: &'a str,
    pub state: MachineState,
}

impl EquipmentObserved<'_> {
    pub fn emit(self, reg: &Registry) {
        let mut eq = lock(&reg.equipment);
        match eq.get_mut(self.equipment) {
            Some(e) => e.state = self.state,
            None => {
                eq.insert(
                    self.equipment.to_string(),
                    EquipmentSeries {
                        state: self.state,
                        oee: [None; 4],
                        oee_at: None,
                    },
                );
            }
        }
        // State changes are events of their own (`ms5.state.changed`), logged by the core.
    }
}

/// Current-shift OEE of one equipment, computed at `at` (`None` figures while `null`).
#[derive(Debug, Clone, Copy)]
pub struct OeeComputed<'a> {
    pub equipment: &'a str,
    /// Per [`super::FIGURES`].
    pub figures: [Option<f64>; 4],
    pub at: Instant,
}

impl OeeComputed<'_> {
    /// From the engine's current-shift figures (`availability`, `performance`, `quality`,
    /// `oee`, each a number or `null`; `None` outside any shift).
    pub fn from_json<'e>(
        equipment: &'e str,
        figures: Option<&serde_json::Value>,
        at: Instant,
    ) -> OeeComputed<'e> {
        let get = |k: &str| {
            figures
                .and_then(|f| f.get(k))
                .and_then(serde_json::Value::as_f64)
        };
        OeeComputed {
            equipment,
            figures: super::FIGURES.map(get),
            at,
        }
    }

    pub fn emit(self, reg: &Registry) {
        if let Some(e) = lock(&reg.equipment).get_mut(self.equipment) {
            e.oee = self.figures;
            e.oee_at = Some(self.at);
        }
    }
}

/// The core's loop passed at `at`; `stalled` are the PLCs whose reports are overdue (the
/// watchdog's rule). A change of the stalled set is logged by the watchdog itself.
#[derive(Debug, Clone)]
pub struct CoreProgress<'a> {
    pub at: Instant,
    pub stalled: &'a [&'a str],
}

impl CoreProgress<'_> {
    pub fn emit(self, reg: &Registry) {
        let mut p = lock(&reg.progress);
        p.beat = self.at;
        if p.stalled.len() != self.stalled.len()
            || p.stalled.iter().zip(self.stalled).any(|(a, b)| a != b)
        {
            p.stalled = self.stalled.iter().map(|s| s.to_string()).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_counts_stay_monotonic_when_a_reload_restarts_the_task() {
        let r = Registry::default();
        for polls in [1, 2, 3] {
            PollCompleted {
                plc: "p",
                polls,
                lateness_us: 10,
            }
            .emit(&r);
        }
        // A new task after a reload counts from 1 again.
        PollCompleted {
            plc: "p",
            polls: 1,
            lateness_us: 10,
        }
        .emit(&r);
        PollCompleted {
            plc: "p",
            polls: 2,
            lateness_us: 10,
        }
        .emit(&r);
        assert_eq!(r.plcs()["p"].polls, 5);
        assert_eq!(r.plcs()["p"].lateness_count, 5);
    }

    #[test]
    fn skipped_ticks_are_counted_as_the_difference_to_the_last_report() {
        let r = Registry::default();
        TickSkipped { plc: "p", total: 0 }.emit(&r);
        TickSkipped { plc: "p", total: 3 }.emit(&r);
        TickSkipped { plc: "p", total: 3 }.emit(&r);
        TickSkipped { plc: "p", total: 4 }.emit(&r);
        assert_eq!(r.plcs()["p"].skipped_ticks, 4);
    }

    #[test]
    fn only_a_change_of_link_counts_as_one() {
        let r = Registry::default();
        assert!(PlcLinkChanged {
            plc: "p",
            online: true
        }
        .emit(&r));
        assert!(!PlcLinkChanged {
            plc: "p",
            online: true
        }
        .emit(&r));
        assert!(PlcLinkChanged {
            plc: "p",
            online: false
        }
        .emit(&r));
    }

    #[test]
    fn a_refused_command_counts_as_rejected_and_under_its_name() {
        let r = Registry::default();
        CommandHandled {
            command: command_of_path("E1/andon/ack"),
            result: CommandResult::Ok,
        }
        .emit(&r);
        CommandHandled {
            command: "nonsense/x",
            result: CommandResult::Refused,
        }
        .emit(&r);
        let c = r.commands();
        assert_eq!(c[&("andon/ack", "ok")], 1);
        assert_eq!(c[&("other", "refused")], 1);
    }

    #[test]
    fn a_disconnected_broker_keeps_its_series() {
        let r = Registry::default();
        MqttConnected { broker: "b:1883" }.emit(&r);
        assert_eq!(r.brokers(), vec![("b:1883".to_string(), true)]);
        MqttDisconnected.emit(&r);
        assert_eq!(r.brokers(), vec![("b:1883".to_string(), false)]);
        assert_eq!(r.broker(), None);
    }

    #[test]
    fn the_drop_mirror_takes_each_count_up_to_the_ledger_once() {
        let r = Registry::default();
        let mut report = crate::store::bounds::DropReport::default();
        report
            .totals
            .entry("outbox_full")
            .or_default()
            .entry("telemetry")
            .or_default()
            .count = 7;
        mirror_drops(&r, &report);
        mirror_drops(&r, &report);
        assert_eq!(r.dropped()[&("telemetry", "outbox_full")], 7);
    }

    #[test]
    fn an_empty_outbox_has_no_oldest_message() {
        let r = Registry::default();
        OutboxCounted {
            messages: 2,
            oldest_created_ms: Some(1_000),
            now_ms: 4_000,
        }
        .emit(&r);
        assert_eq!(r.outbox_oldest_age_ms(4_000), 3_000);
        OutboxCounted {
            messages: 0,
            oldest_created_ms: None,
            now_ms: 5_000,
        }
        .emit(&r);
        assert_eq!(r.outbox_oldest_age_ms(9_000), 0);
        assert_eq!(r.outbox().messages, 0);
    }
}
