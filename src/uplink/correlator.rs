//! PUBACK ↔ outbox row correlation, as a pure state machine (no I/O, no clock).
//!
//! rumqttc's `publish()` does not return the packet id it will use (rumqtt issues #349 and
//! #1007), so the uplink pairs them itself:
//! 1. every publish handed to the client is recorded here, in order, with a [`Tag`]
//!    ([`Correlator::queued`]);
//! 2. the client takes requests from its channel strictly in order and reports each one as
//!    `Outgoing::Publish(pkid)` when it writes it: [`Correlator::written`] pops the oldest tag
//!    and pairs it with that packet id;
//! 3. the broker's PUBACK names the packet id; [`Correlator::acked`] returns what it
//!    acknowledged: an outbox row delivered, an outbox row *refused* (MQTT 5 reason code
//!    ≥ 0x80), or a message outside the outbox.
//!
//! ## Invariants (the unit tests defend them)
//! - An outbox `seq` is reported delivered at most once per session, and only for a PUBACK of
//!   the packet id it was written with; a refusal is never reported as a delivery.
//! - A packet id still awaiting its PUBACK that is written again (the client reusing it: a
//!   broker acknowledging out of order) is a [`Desync`]: the pairing can no longer be trusted
//!   and the session must be dropped; the rows go back to SQLite and are resent.
//! - A duplicate or unknown PUBACK changes nothing.
//! - Counts: [`Correlator::outbox_outstanding`] and [`Correlator::others_outstanding`] are
//!   the publishes queued or in flight of each kind, so the session can keep a share of the
//!   window for the outbox whatever replies and status messages do.
//! - [`Correlator::reset`] (a reconnect) forgets everything; nothing is ever "delivered" by a
//!   reset.

use std::collections::{HashMap, VecDeque};

/// What a publish handed to the client was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An outbox row (QoS 1).
    Outbox(i64),
    /// A message outside the outbox (status, reply, live telemetry); `qos1` if a PUBACK will
    /// come for it.
    Other { qos1: bool },
}

/// What one PUBACK acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// The broker took responsibility for this outbox row: it may be deleted.
    Delivered(i64),
    /// The broker refused this row (reason code ≥ 0x80): it stays in the outbox.
    Refused { seq: i64, reason: u8 },
    /// A status or reply message was acknowledged (or refused).
    Other { refused: Option<u8> },
    /// A packet id we are not waiting for (a duplicate PUBACK): ignored.
    Unknown,
}

/// The pairing broke: a packet id was reused while still awaiting its PUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet id {0} reused while still awaiting its PUBACK (broker acknowledged out of order)")]
pub struct Desync(pub u16);

/// Publishes handed to the client, and those written and awaiting their PUBACK.
#[derive(Debug, Default)]
pub struct Correlator {
    queued: VecDeque<Tag>,
    inflight: HashMap<u16, Tag>,
    outbox: usize,
    others: usize,
}

impl Correlator {
    /// A publish was handed to the client.
    pub fn queued(&mut self, tag: Tag) {
        match tag {
            Tag::Outbox(_) => self.outbox += 1,
            Tag::Other { .. } => self.others += 1,
        }
        self.queued.push_back(tag);
    }

    /// The client wrote the oldest queued publish with packet id `pkid` (0 for QoS 0).
    pub fn written(&mut self, pkid: u16) -> Result<(), Desync> {
        let Some(tag) = self.queued.pop_front() else {
            // Not ours (the client's own retransmission): nothing to pair.
            return Ok(());
        };
        match tag {
            Tag::Other { qos1: false } => {
                self.others = self.others.saturating_sub(1);
                Ok(())
            }
            _ if pkid == 0 => {
                // A QoS 1 publish written without a packet id cannot be acknowledged.
                self.forget(tag);
                Ok(())
            }
            _ => {
                if self.inflight.insert(pkid, tag).is_some() {
                    return Err(Desync(pkid));
                }
                Ok(())
            }
        }
    }

    /// The broker acknowledged `pkid`; `reason` is the MQTT 5 reason code (0 for 3.1.1).
    pub fn acked(&mut self, pkid: u16, reason: u8) -> Acked {
        let Some(tag) = self.inflight.remove(&pkid) else {
            return Acked::Unknown;
        };
        self.forget(tag);
        let refused = (reason >= 0x80).then_some(reason);
        match (tag, refused) {
            (Tag::Outbox(seq), None) => Acked::Delivered(seq),
            (Tag::Outbox(seq), Some(reason)) => Acked::Refused { seq, reason },
            (Tag::Other { .. }, refused) => Acked::Other { refused },
        }
    }

    /// Outbox publishes queued or awaiting a PUBACK.
    pub fn outbox_outstanding(&self) -> usize {
        self.outbox
    }

    /// Other publishes queued or awaiting a PUBACK.
    pub fn others_outstanding(&self) -> usize {
        self.others
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.outbox == 0 && self.others == 0
    }

    /// The connection ended: forget every pairing (unacknowledged rows are resent from SQLite).
    pub fn reset(&mut self) {
        *self = Correlator::default();
    }

    fn forget(&mut self, tag: Tag) {
        match tag {
            Tag::Outbox(_) => self.outbox = self.outbox.saturating_sub(1),
            Tag::Other { .. } => self.others = self.others.saturating_sub(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(c: &mut Correlator, tag: Tag, pkid: u16) {
        c.queued(tag);
        c.written(pkid).unwrap();
    }

    #[test]
    fn a_puback_names_the_row_written_with_its_packet_id() {
        let mut c = Correlator::default();
        sent(&mut c, Tag::Outbox(10), 1);
        sent(&mut c, Tag::Outbox(11), 2);
        assert_eq!(c.acked(1, 0), Acked::Delivered(10));
        assert_eq!(c.acked(2, 0), Acked::Delivered(11));
        assert!(c.is_idle());
    }

    #[test]
    fn acknowledgements_out_of_order_still_name_the_right_rows() {
        let mut c = Correlator::default();
        sent(&mut c, Tag::Outbox(10), 1);
        sent(&mut c, Tag::Outbox(11), 2);
        sent(&mut c, Tag::Outbox(12), 3);
        assert_eq!(c.acked(3, 0), Acked::Delivered(12));
        assert_eq!(c.acked(1, 0), Acked::Delivered(10));
        assert_eq!(c.acked(2, 0), Acked::Delivered(11));
    }

    #[test]
    fn a_duplicate_puback_changes_nothing() {
        let mut c = Correlator::default();
        sent(&mut c, Tag::Outbox(10), 1);
        assert_eq!(c.acked(1, 0), Acked::Delivered(10));
        assert_eq!(c.acked(1, 0), Acked::Unknown);
        assert_eq!(c.acked(9, 0), Acked::Unknown);
        assert_eq!(c.outbox_outstanding(), 0);
    }

    #[test]
    fn a_refusal_keeps_the_row_and_is_never_a_delivery() {
        let mut c = Correlator::default();
        sent(&mut c, Tag::Outbox(10), 1);
        sent(&mut c, Tag::Outbox(11), 2);
        assert_eq!(
            c.acked(1, 0x87),
            Acked::Refused {
                seq: 10,
                reason: 0x87
            }
        );
        assert_eq!(
            c.acked(2, 0x10),
            Acked::Delivered(11),
            "no matching subscribers is success"
        );
        assert_eq!(c.outbox_outstanding(), 0);
    }

    #[test]
    fn qos0_publishes_pair_without_awaiting_an_ack_and_keep_the_order() {
        let mut c = Correlator::default();
        c.queued(Tag::Other { qos1: false });
        c.queued(Tag::Outbox(5));
        assert_eq!(c.others_outstanding(), 1);
        c.written(0).unwrap();
        assert_eq!(c.others_outstanding(), 0);
        c.written(7).unwrap();
        assert_eq!(c.acked(7, 0), Acked::Delivered(5));
    }

    #[test]
    fn status_and_replies_are_counted_apart_from_the_outbox_window() {
        let mut c = Correlator::default();
        sent(&mut c, Tag::Other { qos1: true }, 1);
        sent(&mut c, Tag::Outbox(3), 2);
        assert_eq!((c.outbox_outstanding(), c.others_outstanding()), (1, 1));
        assert_eq!(
            c.acked(1, 0x87),
            Acked::Other {
                refused: Some(0x87)
            }
        );
        assert_eq!((c.outbox_outstanding(), c.others_outstanding()), (1, 0));
    }

    #[test]
    fn a_packet_id_reused_while_in_flight_is_a_desync() {
        let mut c = Correlator::default();
        sent(&mut c, Tag::Outbox(1), 1);
        c.queued(Tag::Outbox(2));
        assert_eq!(c.written(1), Err(Desync(1)));
    }

    #[test]
    fn a_reconnect_mid_window_forgets_pairings_and_delivers_nothing() {
        let mut c = Correlator::default();
        sent(&mut c, Tag::Outbox(1), 1);
        c.queued(Tag::Outbox(2));
        c.reset();
        assert!(c.is_idle());
        // The new connection reuses packet id 1 for the resent row: no stale pairing answers.
        assert_eq!(c.acked(1, 0), Acked::Unknown);
        sent(&mut c, Tag::Outbox(1), 1);
        assert_eq!(c.acked(1, 0), Acked::Delivered(1));
    }

    #[test]
    fn a_write_with_nothing_queued_is_not_paired() {
        let mut c = Correlator::default();
        c.written(4).unwrap();
        assert_eq!(c.acked(4, 0), Acked::Unknown);
    }
}
