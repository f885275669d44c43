//! OPC UA driver (SPEC §9): one session per PLC, one Read service call per poll for all of the
//! PLC's nodes (split only by the server's MaxNodesPerRead).
//!
//! Owns: the slots (one per configured signal), the node check on connect (DataType and
//! ValueRank, [`check`]), the Read calls and turning a `DataValue` into a [`SignalReading`];
//! the session itself (secure channel, certificate trust, user identity) is [`session`]'s.
//! Never does:
//! Write, Call, or any service that changes the server (no subscriptions either: the schedule
//! is [`super::run_plc`]'s); reconnect timing (that is `run_plc`'s backoff; the library's own
//! reconnect is switched off, so a lost session ends in a transport error and a new session at
//! the next allowed tick).
//!
//! ## Rules the tests defend
//!
//! - A node whose DataType contradicts the declared `type`, or whose ValueRank contradicts the
//!   declared shape (a scalar, or `count` > 1: an array), is published as `null`/`bad` and
//!   reported once (counted in `type_mismatches`); a node the server does not have is a device
//!   exception, reported once; the PLC's other signals are unaffected.
//! - A `Bad` status code is quality `bad` (no value), an `Uncertain` one `stale` (no value);
//!   `Good` values are decoded into the declared type (a Variant of another type is `bad`).
//! - Fault classes: no answer in `timeout_ms` → "timed out"; TCP refused → "refused"; an
//!   undecodable answer → "malformed"; everything else (security rejected, session lost,
//!   certificate untrusted) → other. Every one of them drops the session, except a value Read
//!   that timed out on a live session: that session is kept (the next tick reads on it) until
//!   [`DROP_AFTER_TIMEOUTS`] Reads in a row timed out. A connect whose node check fails keeps
//!   nothing.
//! - The own certificate and key live under `pki_dir/own/` (created on first connect, kept);
//!   server certificates are trusted from `pki_dir/trusted/` (DER); an unknown one is saved
//!   in `pki_dir/rejected/`. `trust_server = "first-use"` trusts (and stores) a certificate
//!   only while `trusted/` is empty. A refused server certificate is named, with the move that
//!   trusts it, in the poll error (`status` / `P/status`: the PLC's `last_error`).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use opcua::types::{AttributeId, DataValue, NodeId, ReadValueId, Variant};

use super::decode::{engineering, widen_f32, Raw};
use super::{EquipmentSample, PollError, Poller, PollerStats, Quality, SignalReading, Value};
use crate::config::{DataType, Equipment, OpcUa, Plc, Protocol, Signal, SignalSource};

mod check;
mod session;

use check::Verdict;

/// Consecutive value Read timeouts after which a live session is dropped (and reopened after
/// the backoff): a server that answers late keeps its session, a black hole does not.
pub const DROP_AFTER_TIMEOUTS: u32 = 3;
use session::{open, read_all, read_id, Conn};

/// One configured signal and what is known about its node.
struct Slot {
    equipment: usize,
    name: crate::sample::SignalName,
    node_text: String,
    node: Option<NodeId>,
    signal: Signal,
    /// Why this node is not read (bad node id, DataType contradiction, unknown node); checked
    /// again at every connect.
    refused: Option<String>,
}

/// The OPC UA [`Poller`].
pub struct OpcUaPoller {
    plc: String,
    ua: Option<OpcUa>,
    timeout: Duration,
    equipment: Vec<String>,
    slots: Vec<Slot>,
    conn: Option<Conn>,
    stats: PollerStats,
    /// Slots whose refusal was logged already (once per episode of the same message).
    reported: HashSet<(usize, String)>,
    /// Value Reads that timed out in a row on the live session.
    read_timeouts: u32,
}

impl OpcUaPoller {
    pub fn new(plc: &Plc, equipment: &[Equipment]) -> Self {
        let ua = match &plc.protocol {
            Protocol::OpcUa(o) => Some(o.clone()),
            _ => None,
        };
        let mut slots = Vec::new();
        for (e, eq) in equipment.iter().enumerate() {
            for (name, signal) in eq.signals.all() {
                let node_text = match &signal.source {
                    SignalSource::Node { node } => node.clone(),
                    _ => String::new(),
                };
                let node = NodeId::from_str(&node_text).ok();
                let refused = match (&signal.source, &node) {
                    (SignalSource::Node { .. }, Some(_)) => None,
                    (SignalSource::Node { .. }, None) => Some("not a node id".to_string()),
                    _ => Some("not an OPC UA node".to_string()),
                };
                slots.push(Slot {
                    equipment: e,
                    name: name.into(),
                    node_text,
                    node,
                    signal: signal.clone(),
                    refused,
                });
            }
        }
        OpcUaPoller {
            plc: plc.name.clone(),
            ua,
            timeout: Duration::from_millis(plc.timeout_ms.max(1)),
            equipment: equipment.iter().map(|e| e.code.clone()).collect(),
            slots,
            conn: None,
            stats: PollerStats::default(),
            reported: HashSet::new(),
            read_timeouts: 0,
        }
    }

    /// Opens a session and checks every node's DataType.
    async fn connect(&mut self) -> Result<(), PollError> {
        let ua = self
            .ua
            .clone()
            .ok_or_else(|| PollError::Unsupported("not an opc-ua PLC".into()))?;
        let conn = open(&self.plc, &ua, self.timeout).await?;
        let max_nodes = conn.max_nodes;
        let session = conn.session.clone();
        // The session is kept only once checked: a failed check drops it (and closes it).
        let pending = conn;
        self.stats.connects += 1;
        tracing::info!(plc = %self.plc, endpoint = %ua.endpoint, policy = %ua.security_policy, mode = %ua.security_mode, "OPC UA session open");
        // DataType and ValueRank check: one Read (two attributes) for every node.
        let ids: Vec<(usize, ReadValueId)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.node.clone().map(|n| (i, n)))
            .flat_map(|(i, n)| {
                [
                    (i, read_id(n.clone(), AttributeId::DataType)),
                    (i, read_id(n, AttributeId::ValueRank)),
                ]
            })
            .collect();
        let answers = read_all(&session, &ids, max_nodes, self.timeout).await?;
        for (pair, dv) in ids.chunks(2).zip(answers.chunks(2)) {
            let (i, [data_type, value_rank]) = (pair[0].0, dv) else {
                continue;
            };
            let slot = &mut self.slots[i];
            slot.refused = match check::judge(&slot.signal, data_type, value_rank) {
                Verdict::Readable => None,
                Verdict::Mismatch(why) => {
                    self.stats.type_mismatches += 1;
                    Some(why)
                }
                Verdict::Exception(why) => {
                    self.stats.exceptions += 1;
                    Some(why)
                }
            };
            if let Some(why) = &slot.refused {
                if self.reported.insert((i, why.clone())) {
                    tracing::error!(plc = %self.plc, equipment = %self.equipment[slot.equipment], signal = %slot.name, node = %slot.node_text, error = %why, "signal cannot be read; it will be reported with bad quality");
                }
            }
        }
        self.conn = Some(pending);
        Ok(())
    }

    async fn poll_inner(&mut self) -> Result<Vec<EquipmentSample>, PollError> {
        if let Some(c) = &self.conn {
            if !c.alive() {
                self.conn = None;
                return Err(PollError::Transport("OPC UA session lost".into()));
            }
        }
        if self.conn.is_none() {
            self.connect().await?;
        }
        let Some(conn) = &self.conn else {
            return Err(PollError::Transport("OPC UA session lost".into()));
        };
        let ids: Vec<(usize, ReadValueId)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.refused.is_none())
            .filter_map(|(i, s)| Some((i, read_id(s.node.clone()?, AttributeId::Value))))
            .collect();
        let answers = read_all(&conn.session, &ids, conn.max_nodes, self.timeout).await?;
        let mut readings: Vec<Option<SignalReading>> = vec![None; self.slots.len()];
        for ((i, _), dv) in ids.iter().zip(answers) {
            readings[*i] = Some(reading(&self.slots[*i].signal, &dv));
        }
        let mut samples: Vec<EquipmentSample> = self
            .equipment
            .iter()
            .map(|code| EquipmentSample {
                equipment: code.clone(),
                signals: Default::default(),
            })
            .collect();
        for (slot, r) in self.slots.iter().zip(readings) {
            samples[slot.equipment].signals.insert(
                slot.name.clone(),
                r.unwrap_or(SignalReading {
                    value: None,
                    quality: Quality::Bad,
                }),
            );
        }
        Ok(samples)
    }
}

impl Poller for OpcUaPoller {
    async fn poll(&mut self) -> Result<Vec<EquipmentSample>, PollError> {
        let r = self.poll_inner().await;
        match &r {
            Ok(_) => self.read_timeouts = 0,
            Err(e @ PollError::Transport(_)) => {
                // A slow answer on a live session is a failed poll, not a lost session: the
                // late answer is discarded by the library and the next tick reads again on
                // the same session (no reconnect, no new check of every node). A session
                // whose reads keep timing out is dropped like a lost one.
                let live = self.conn.as_ref().is_some_and(Conn::alive);
                self.read_timeouts += 1;
                if !(e.is_timeout() && live && self.read_timeouts < DROP_AFTER_TIMEOUTS) {
                    self.conn = None;
                    self.read_timeouts = 0;
                }
            }
            Err(_) => {}
        }
        r
    }

    fn connected(&self) -> bool {
        self.conn.is_some()
    }

    fn stats(&self) -> PollerStats {
        self.stats
    }
}

/// One `DataValue` → one reading of `signal` (see the module doc for the quality rules).
fn reading(signal: &Signal, dv: &DataValue) -> SignalReading {
    let status = dv.status();
    let none = |quality| SignalReading {
        value: None,
        quality,
    };
    if status.is_bad() {
        return none(Quality::Bad);
    }
    if status.is_uncertain() {
        return none(Quality::Stale);
    }
    match dv.value.as_ref().and_then(|v| value_of(signal, v)) {
        Some(value) => SignalReading {
            value: Some(value),
            quality: Quality::Good,
        },
        None => none(Quality::Bad),
    }
}

/// The engineering value of a Variant, `None` if its type or length is not the declared one.
fn value_of(signal: &Signal, v: &Variant) -> Option<Value> {
    if signal.count > 1 {
        let Variant::Array(a) = v else { return None };
        if a.values.len() != usize::from(signal.count) {
            return None;
        }
        return a
            .values
            .iter()
            .map(|e| scalar(signal, e))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array);
    }
    scalar(signal, v)
}

fn scalar(signal: &Signal, v: &Variant) -> Option<Value> {
    let raw = match (signal.data_type, v) {
        (DataType::Bool, Variant::Boolean(b)) => Raw::Bool(*b),
        (DataType::I8, Variant::SByte(i)) => Raw::Int(i64::from(*i)),
        (DataType::U8, Variant::Byte(u)) => Raw::UInt(u64::from(*u)),
        (DataType::I16, Variant::Int16(i)) => Raw::Int(i64::from(*i)),
        (DataType::U16, Variant::UInt16(u)) => Raw::UInt(u64::from(*u)),
        (DataType::I32, Variant::Int32(i)) => Raw::Int(i64::from(*i)),
        (DataType::U32, Variant::UInt32(u)) => Raw::UInt(u64::from(*u)),
        (DataType::I64, Variant::Int64(i)) => Raw::Int(*i),
        (DataType::U64, Variant::UInt64(u)) => Raw::UInt(*u),
        (DataType::F32, Variant::Float(f)) => Raw::Float(widen_f32(*f)),
        (DataType::F64, Variant::Double(f)) => Raw::Float(*f),
        _ => return None,
    };
    engineering(raw, signal.scale, signal.offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::StatusCode;

    fn signal(data_type: DataType, count: u16) -> Signal {
        Signal {
            source: SignalSource::Node {
                node: "ns=2;i=1".into(),
            },
            data_type,
            count,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn dv(value: Variant, status: StatusCode) -> DataValue {
        DataValue {
            value: Some(value),
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn status_codes_map_to_quality() {
        let s = signal(DataType::I16, 1);
        let good = reading(&s, &dv(Variant::Int16(-3), StatusCode::Good));
        assert_eq!(good.value, Some(Value::Int(-3)));
        assert_eq!(good.quality, Quality::Good);
        let bad = reading(&s, &dv(Variant::Int16(1), StatusCode::BadSensorFailure));
        assert_eq!((bad.value, bad.quality), (None, Quality::Bad));
        let unc = reading(
            &s,
            &dv(Variant::Int16(1), StatusCode::UncertainLastUsableValue),
        );
        assert_eq!((unc.value, unc.quality), (None, Quality::Stale));
    }

    #[test]
    fn a_variant_of_another_type_is_bad_never_converted() {
        let s = signal(DataType::U32, 1);
        let r = reading(&s, &dv(Variant::Int32(5), StatusCode::Good));
        assert_eq!((r.value, r.quality), (None, Quality::Bad));
    }

    #[test]
    fn arrays_need_the_declared_length() {
        let s = signal(DataType::I32, 3);
        let arr = Variant::from(vec![1i32, 2, 3]);
        let r = reading(&s, &dv(arr, StatusCode::Good));
        assert_eq!(
            r.value,
            Some(Value::Array(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Int(3)
            ]))
        );
        let short = reading(&s, &dv(Variant::from(vec![1i32, 2]), StatusCode::Good));
        assert_eq!(short.quality, Quality::Bad);
    }
}
