//! Read planning: every signal of every equipment on one PLC → the fewest Modbus requests.
//!
//! Planning happens once, when a [`ModbusPoller`](super::modbus::ModbusPoller) is built from a
//! validated config; polling then only replays the plan. Pure: no I/O, no clock.
//!
//! ## Rules
//!
//! - One request reads one table: coils (FC 1), discrete inputs (FC 2), holding registers
//!   (FC 3) or input registers (FC 4). `hr:N.B` / `ir:N.B` bits ride on register reads.
//! - Per table, signals are sorted by address and merged greedily into blocks while the hole
//!   between the block and the next signal is at most [`MAX_GAP_REGISTERS`] registers
//!   (8 registers = 16 bytes, far cheaper than a second round trip on any network) or
//!   [`MAX_GAP_BITS`] bits, and the block stays within the protocol limits of
//!   [`MAX_REGISTERS`] = 125 registers or [`MAX_BITS`] = 2000 bits per request.
//! - Greedy merging over sorted spans gives the minimum number of requests for these rules.
//!
//! ## Invariants (defended by the tests)
//!
//! - A signal is never split across requests: its whole span — all `count` elements of its
//!   type — lies inside exactly one request, so a `u32` or an `f64` never straddles two.
//! - No request exceeds the protocol limit for its table, and none reaches past address 65535.
//! - A signal that cannot fit in any single request (longer than the limit, past the end of the
//!   address space, or not a Modbus address at all) is reported as a [`PlanError`] and gets no
//!   request; the rest of the plan is unaffected.
//!
//! Holes are read on purpose. A PLC whose map is sparse may answer a merged read with an
//! exception even though every configured signal exists; the poller then re-reads that
//! request's signals one by one (see [`isolate`]) so the bad address is found and the good
//! signals stay good.

use std::fmt;

use crate::config::{Equipment, ModbusAddress, Signal, SignalSource};

/// Most registers one read may return (FC 3 / FC 4).
pub const MAX_REGISTERS: u16 = 125;
/// Most bits one read may return (FC 1 / FC 2).
pub const MAX_BITS: u16 = 2000;
/// Largest hole, in registers, read to merge two register signals into one request.
pub const MAX_GAP_REGISTERS: u16 = 8;
/// Largest hole, in bits, read to merge two coil or discrete-input signals into one request.
pub const MAX_GAP_BITS: u16 = 32;

/// A Modbus data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `co:N`, read with FC 1.
    Coils,
    /// `di:N`, read with FC 2.
    DiscreteInputs,
    /// `ir:N`, read with FC 4.
    InputRegisters,
    /// `hr:N`, read with FC 3.
    HoldingRegisters,
}

impl Table {
    /// Coils and discrete inputs hold bits; the register tables hold 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coils | Table::DiscreteInputs)
    }

    /// Protocol limit of one read request.
    pub fn max_quantity(self) -> u16 {
        if self.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        }
    }

    /// Largest hole read to merge two signals.
    pub fn max_gap(self) -> u16 {
        if self.is_bits() {
            MAX_GAP_BITS
        } else {
            MAX_GAP_REGISTERS
        }
    }

    /// The config prefix: `co`, `di`, `ir`, `hr`.
    pub fn prefix(self) -> &'static str {
        match self {
            Table::Coils => "co",
            Table::DiscreteInputs => "di",
            Table::InputRegisters => "ir",
            Table::HoldingRegisters => "hr",
        }
    }

    fn unit(self) -> &'static str {
        if self.is_bits() {
            "bits"
        } else {
            "registers"
        }
    }
}

/// The addresses one signal occupies: `len` bits or registers from `start` in `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    /// The table the addresses are in.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Number of bits or registers.
    ///
    /// `u32` because `count × width` of a misconfigured signal may exceed 65535.
    pub len: u32,
}

impl Span {
    /// One past the last address (may be 65536).
    pub fn end(&self) -> u32 {
        u32::from(self.start) + self.len
    }

    /// The span of a Modbus signal; `None` for a signal with a tag instead of an address.
    pub fn of(signal: &Signal) -> Option<Span> {
        let SignalSource::Modbus { address, .. } = &signal.source else {
            return None;
        };
        let count = u32::from(signal.count.max(1));
        let words = u32::from(signal.data_type.registers()) * count;
        let bits_in_registers = |bit: u8| (u32::from(bit) + count).div_ceil(16);
        Some(match *address {
            ModbusAddress::Coil(n) => Span {
                table: Table::Coils,
                start: n,
                len: count,
            },
            ModbusAddress::DiscreteInput(n) => Span {
                table: Table::DiscreteInputs,
                start: n,
                len: count,
            },
            ModbusAddress::InputRegister(n) => Span {
                table: Table::InputRegisters,
                start: n,
                len: words,
            },
            ModbusAddress::HoldingRegister(n) => Span {
                table: Table::HoldingRegisters,
                start: n,
                len: words,
            },
            ModbusAddress::InputRegisterBit(n, b) => Span {
                table: Table::InputRegisters,
                start: n,
                len: bits_in_registers(b),
            },
            ModbusAddress::HoldingRegisterBit(n, b) => Span {
                table: Table::HoldingRegisters,
                start: n,
                len: bits_in_registers(b),
            },
        })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len <= 1 {
            write!(f, "{}:{}", self.table.prefix(), self.start)
        } else {
            write!(
                f,
                "{}:{}..={}",
                self.table.prefix(),
                self.start,
                self.end() - 1
            )
        }
    }
}

/// One read request: `quantity` bits or registers of `table` from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// The table read (decides the function code).
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Bits or registers, at most [`Table::max_quantity`].
    pub quantity: u16,
}

impl ReadRequest {
    /// The addresses this request covers.
    pub fn span(&self) -> Span {
        Span {
            table: self.table,
            start: self.start,
            len: u32::from(self.quantity),
        }
    }
}

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} {})",
            self.span(),
            self.quantity,
            self.table.unit()
        )
    }
}

/// Where a signal's data sits: `length` items from `offset` in the answer to request
/// `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Index of the request in the plan.
    pub request: usize,
    /// Bits or registers from the start of the answer.
    pub offset: u16,
    /// Bits or registers the signal occupies.
    pub length: u16,
}

/// Why a signal has no place in the plan; a configuration problem, logged once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The signal has a tag, not a Modbus address.
    #[error("not a Modbus address")]
    NotModbus,
    /// `count × width` exceeds what one request may read.
    #[error("{span} needs {len} {unit}, more than one request may read ({max})")]
    TooLong {
        /// The signal's addresses.
        span: Span,
        /// Its length.
        len: u32,
        /// The protocol limit.
        max: u16,
        /// `registers` or `bits`.
        unit: &'static str,
    },
    /// The signal's last element would lie beyond address 65535.
    #[error("{span} reaches past address 65535")]
    PastAddressSpace {
        /// The signal's addresses.
        span: Span,
    },
}

/// One signal of one equipment in the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSignal {
    /// Index into the equipment slice given to [`plan`].
    pub equipment: usize,
    /// The name it is published under (see `Signals::all`).
    pub name: String,
    /// The signal as configured.
    pub signal: Signal,
    /// `None` for a signal without a Modbus address.
    pub span: Option<Span>,
    /// Where its data is, or why it has no place.
    pub placement: Result<Placement, PlanError>,
}

/// The reads of one PLC and where every signal's data sits in them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReadPlan {
    /// Ordered by table, then address.
    pub requests: Vec<ReadRequest>,
    /// Every signal of every equipment, equipment in the given order, signals in
    /// `Signals::all()` order.
    pub signals: Vec<PlannedSignal>,
}

impl ReadPlan {
    /// The planned signal `name` of equipment number `equipment`.
    pub fn signal(&self, equipment: usize, name: &str) -> Option<&PlannedSignal> {
        self.signals
            .iter()
            .find(|s| s.equipment == equipment && s.name == name)
    }
}

/// Plans the reads for every signal of `equipment` (all on one PLC).
pub fn plan(equipment: &[Equipment]) -> ReadPlan {
    let mut signals = Vec::new();
    for (e, eq) in equipment.iter().enumerate() {
        for (name, signal) in eq.signals.all() {
            signals.push(PlannedSignal {
                equipment: e,
                name: name.to_string(),
                signal: signal.clone(),
                span: Span::of(signal),
                placement: Err(PlanError::NotModbus),
            });
        }
    }
    let spans: Vec<Option<Span>> = signals.iter().map(|s| s.span).collect();
    let (requests, placements) = plan_spans(&spans, true);
    for (s, p) in signals.iter_mut().zip(placements) {
        s.placement = p;
    }
    ReadPlan { requests, signals }
}

/// Plans requests for `spans`; the result has one placement per input span, in input order.
///
/// With `merge == false` every distinct span gets its own request (identical spans share
/// one): used to isolate a bad address after an exception.
pub fn plan_spans(
    spans: &[Option<Span>],
    merge: bool,
) -> (Vec<ReadRequest>, Vec<Result<Placement, PlanError>>) {
    let mut placements: Vec<Result<Placement, PlanError>> =
        vec![Err(PlanError::NotModbus); spans.len()];
    let mut order: Vec<usize> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        let Some(span) = *span else { continue };
        let max = span.table.max_quantity();
        if span.len > u32::from(max) {
            placements[i] = Err(PlanError::TooLong {
                span,
                len: span.len,
                max,
                unit: span.table.unit(),
            });
        } else if span.end() > 65536 {
            placements[i] = Err(PlanError::PastAddressSpace { span });
        } else {
            order.push(i);
        }
    }
    // Sort by table, then start, longest first, so a block opens with its widest member.
    order.sort_by_key(|&i| {
        let s = spans[i].unwrap_or(Span {
            table: Table::Coils,
            start: 0,
            len: 0,
        });
        (s.table, s.start, std::cmp::Reverse(s.len))
    });

    let mut requests: Vec<ReadRequest> = Vec::new();
    // The open block: table, start, end (exclusive, u32), and the members placed in it.
    let mut open: Option<(Table, u16, u32, Vec<usize>)> = None;
    let close = |block: (Table, u16, u32, Vec<usize>),
                 requests: &mut Vec<ReadRequest>,
                 placements: &mut Vec<Result<Placement, PlanError>>| {
        let (table, start, end, members) = block;
        let index = requests.len();
        requests.push(ReadRequest {
            table,
            start,
            // Bounded by `max_quantity` (≤ 2000) by construction.
            quantity: (end - u32::from(start)) as u16,
        });
        for m in members {
            if let Some(span) = spans[m] {
                placements[m] = Ok(Placement {
                    request: index,
                    offset: span.start - start,
                    length: span.len as u16,
                });
            }
        }
    };
    for i in order {
        let Some(span) = spans[i] else { continue };
        let fits = match &open {
            Some((table, start, end, _)) if *table == span.table => {
                let joined_end = (*end).max(span.end());
                let gap_ok = if merge {
                    u32::from(span.start) <= *end + u32::from(span.table.max_gap())
                } else {
                    // Only an identical span shares a request.
                    span.start == *start && span.end() == *end
                };
                gap_ok && joined_end - u32::from(*start) <= u32::from(span.table.max_quantity())
            }
            _ => false,
        };
        if fits {
            if let Some((_, _, end, members)) = open.as_mut() {
                *end = (*end).max(span.end());
                members.push(i);
            }
        } else {
            if let Some(block) = open.take() {
                close(block, &mut requests, &mut placements);
            }
            open = Some((span.table, span.start, span.end(), vec![i]));
        }
    }
    if let Some(block) = open.take() {
        close(block, &mut requests, &mut placements);
    }
    (requests, placements)
}

/// Formats a Modbus address as written in the config (`hr:110`, `hr:5.3`).
pub fn format_address(address: &ModbusAddress) -> String {
    match *address {
        ModbusAddress::Coil(n) => format!("co:{n}"),
        ModbusAddress::DiscreteInput(n) => format!("di:{n}"),
        ModbusAddress::InputRegister(n) => format!("ir:{n}"),
        ModbusAddress::HoldingRegister(n) => format!("hr:{n}"),
        ModbusAddress::HoldingRegisterBit(n, b) => format!("hr:{n}.{b}"),
        ModbusAddress::InputRegisterBit(n, b) => format!("ir:{n}.{b}"),
    }
}

/// Re-plans the given spans one request each (identical spans share), for finding the bad
/// address inside a merged request that drew an exception. Same contract as [`plan_spans`].
pub fn isolate(spans: &[Option<Span>]) -> (Vec<ReadRequest>, Vec<Result<Placement, PlanError>>) {
    plan_spans(spans, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hr(start: u16, len: u32) -> Option<Span> {
        Some(Span {
            table: Table::HoldingRegisters,
            start,
            len,
        })
    }

    fn co(start: u16, len: u32) -> Option<Span> {
        Some(Span {
            table: Table::Coils,
            start,
            len,
        })
    }

    fn req(table: Table, start: u16, quantity: u16) -> ReadRequest {
        ReadRequest {
            table,
            start,
            quantity,
        }
    }

    /// Every placed span lies wholly inside its request and matches its addresses.
    fn assert_consistent(
        spans: &[Option<Span>],
        requests: &[ReadRequest],
        placements: &[Result<Placement, PlanError>],
    ) {
        for r in requests {
            assert!(
                r.quantity >= 1 && r.quantity <= r.table.max_quantity(),
                "{r}"
            );
            assert!(r.span().end() <= 65536);
        }
        for (span, p) in spans.iter().zip(placements) {
            let (Some(span), Ok(p)) = (span, p) else {
                continue;
            };
            let r = requests[p.request];
            assert_eq!(r.table, span.table);
            assert_eq!(
                u32::from(r.start) + u32::from(p.offset),
                u32::from(span.start)
            );
            assert_eq!(u32::from(p.length), span.len);
            assert!(u32::from(p.offset) + u32::from(p.length) <= u32::from(r.quantity));
        }
    }

    #[test]
    fn one_hundred_contiguous_registers_are_one_request() {
        let spans: Vec<_> = (0..100).map(|i| hr(1000 + i, 1)).collect();
        let (requests, placements) = plan_spans(&spans, true);
        assert_eq!(requests, vec![req(Table::HoldingRegisters, 1000, 100)]);
        assert_consistent(&spans, &requests, &placements);
        assert_eq!(
            placements[42],
            Ok(Placement {
                request: 0,
                offset: 42,
                length: 1
            })
        );
    }

    #[test]
    fn three_hundred_contiguous_registers_are_three_requests_of_125_125_and_50() {
        let spans: Vec<_> = (0..300).map(|i| hr(i, 1)).collect();
        let (requests, placements) = plan_spans(&spans, true);
        assert_eq!(
            requests,
            vec![
                req(Table::HoldingRegisters, 0, 125),
                req(Table::HoldingRegisters, 125, 125),
                req(Table::HoldingRegisters, 250, 50),
            ]
        );
        assert_consistent(&spans, &requests, &placements);
    }

    #[test]
    fn a_small_gap_is_read_through_and_a_big_gap_splits() {
        // hr:100..=105, then hr:110 (gap of 4): merged. hr:200 (gap of 89): its own request.
        let spans = vec![hr(100, 2), hr(102, 2), hr(104, 2), hr(110, 4), hr(200, 1)];
        let (requests, placements) = plan_spans(&spans, true);
        assert_eq!(
            requests,
            vec![
                req(Table::HoldingRegisters, 100, 14),
                req(Table::HoldingRegisters, 200, 1)
            ]
        );
        assert_consistent(&spans, &requests, &placements);
        // Exactly MAX_GAP_REGISTERS merges, one more splits.
        let gap = MAX_GAP_REGISTERS;
        let (r, _) = plan_spans(&[hr(0, 1), hr(1 + gap, 1)], true);
        assert_eq!(r.len(), 1);
        let (r, _) = plan_spans(&[hr(0, 1), hr(2 + gap, 1)], true);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn bits_are_coalesced_within_the_bit_gap() {
        let spans = vec![co(0, 1), co(5, 1), co(3, 1), co(37, 1), co(100, 1)];
        let (requests, placements) = plan_spans(&spans, true);
        assert_eq!(
            requests,
            vec![req(Table::Coils, 0, 38), req(Table::Coils, 100, 1)]
        );
        assert_consistent(&spans, &requests, &placements);
    }

    #[test]
    fn two_thousand_bits_fill_one_request_and_the_next_bit_opens_another() {
        let spans: Vec<_> = (0..2001).map(|i| co(i, 1)).collect();
        let (requests, _) = plan_spans(&spans, true);
        assert_eq!(
            requests,
            vec![req(Table::Coils, 0, 2000), req(Table::Coils, 2000, 1)]
        );
    }

    #[test]
    fn a_u32_never_straddles_two_requests() {
        // 63 u32s from hr:0: 62 fit in 124 registers, the 63rd would straddle 125.
        let spans: Vec<_> = (0..63).map(|i| hr(i * 2, 2)).collect();
        let (requests, placements) = plan_spans(&spans, true);
        assert_eq!(
            requests,
            vec![
                req(Table::HoldingRegisters, 0, 124),
                req(Table::HoldingRegisters, 124, 2)
            ]
        );
        assert_consistent(&spans, &requests, &placements);
    }

    #[test]
    fn tables_are_never_mixed_in_one_request() {
        let spans = vec![
            hr(0, 1),
            Some(Span {
                table: Table::InputRegisters,
                start: 1,
                len: 1,
            }),
            co(0, 1),
            Some(Span {
                table: Table::DiscreteInputs,
                start: 0,
                len: 1,
            }),
        ];
        let (requests, placements) = plan_spans(&spans, true);
        assert_eq!(requests.len(), 4);
        assert_consistent(&spans, &requests, &placements);
    }

    #[test]
    fn overlapping_signals_share_the_registers_they_overlap() {
        // faults hr:110 ×4 and a bit signal hr:111.3 read the same register.
        let spans = vec![hr(110, 4), hr(111, 1)];
        let (requests, placements) = plan_spans(&spans, true);
        assert_eq!(requests, vec![req(Table::HoldingRegisters, 110, 4)]);
        assert_eq!(placements[1].as_ref().map(|p| p.offset), Ok(1));
    }

    #[test]
    fn a_signal_too_long_for_one_request_is_a_plan_error_and_the_rest_is_planned() {
        let spans = vec![hr(0, 126), hr(200, 1), hr(65535, 2)];
        let (requests, placements) = plan_spans(&spans, true);
        assert_eq!(requests, vec![req(Table::HoldingRegisters, 200, 1)]);
        assert!(matches!(placements[0], Err(PlanError::TooLong { .. })));
        assert!(matches!(
            placements[2],
            Err(PlanError::PastAddressSpace { .. })
        ));
        assert_eq!(placements[1].as_ref().map(|p| p.request), Ok(0));
    }

    #[test]
    fn the_last_register_of_the_address_space_is_readable() {
        let (requests, placements) = plan_spans(&[hr(65534, 2)], true);
        assert_eq!(requests, vec![req(Table::HoldingRegisters, 65534, 2)]);
        assert!(placements[0].is_ok());
    }

    #[test]
    fn isolating_gives_every_distinct_span_its_own_request() {
        let spans = vec![hr(998, 2), hr(1002, 2), hr(998, 2)];
        let (requests, placements) = isolate(&spans);
        assert_eq!(
            requests,
            vec![
                req(Table::HoldingRegisters, 998, 2),
                req(Table::HoldingRegisters, 1002, 2)
            ]
        );
        assert_eq!(placements[0], placements[2]);
        assert_consistent(&spans, &requests, &placements);
    }

    #[test]
    fn signal_spans_follow_type_width_count_and_bit_position() {
        use crate::config::{ByteOrder, DataType};
        let signal = |address, data_type, count| Signal {
            source: SignalSource::Modbus {
                address,
                byte_order: ByteOrder::Abcd,
            },
            data_type,
            count,
            scale: 1.0,
            offset: 0.0,
        };
        let span = |a, t, c| Span::of(&signal(a, t, c)).unwrap();
        assert_eq!(
            span(ModbusAddress::HoldingRegister(100), DataType::F64, 3),
            hr(100, 12).unwrap()
        );
        assert_eq!(
            span(ModbusAddress::Coil(7), DataType::Bool, 4),
            co(7, 4).unwrap()
        );
        assert_eq!(
            span(ModbusAddress::HoldingRegisterBit(5, 15), DataType::Bool, 1),
            hr(5, 1).unwrap()
        );
        assert_eq!(
            span(ModbusAddress::HoldingRegisterBit(5, 15), DataType::Bool, 2),
            hr(5, 2).unwrap()
        );
        let tag = Signal {
            source: SignalSource::Tag { tag: "X".into() },
            ..signal(ModbusAddress::Coil(0), DataType::Bool, 1)
        };
        assert_eq!(Span::of(&tag), None);
    }
}
