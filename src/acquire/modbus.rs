//! Modbus acquisition: one [`ModbusPoller`] per PLC, built on tokio-modbus — over its own TCP
//! connection (`modbus-tcp`) or through a shared serial bus (`modbus-rtu`, see [`super::rtu`]).
//! Both use this one read path: plan, coalescing, decode and error classes are the same.
//!
//! ## Design
//!
//! The reads are planned once, in [`ModbusPoller::new`] (see [`super::plan`]): every signal
//! of every equipment on the PLC becomes a place in the fewest requests the protocol allows.
//! A poll issues those requests one after another on one connection (many PLCs serve one
//! outstanding request at a time), then decodes every signal from the answers (see
//! [`super::decode`]) into one [`EquipmentSample`] per equipment.
//!
//! Errors come in two layers, as tokio-modbus reports them, and are handled differently:
//!
//! - **Transport** (refused, reset, timed out, malformed or truncated answer): the poll fails
//!   with [`PollError::Transport`] and the connection is dropped, so the next poll reconnects
//!   with fresh transaction ids. Backoff is `run_plc`'s job.
//! - **Device exception**: the PLC is reachable and answered "no". The affected signals are
//!   reported [`Quality::Bad`] with no value; everything else in the poll stays good.
//!   - Illegal function / data address / data value mean the *configuration* is wrong for
//!     this PLC. An address or value exception on a request that merged several signals
//!     first splits it into one request per signal, so the bad address is isolated instead
//!     of blinding its neighbours. A request that still draws one is logged once, as an
//!     error naming the signals and addresses, and re-tried only every
//!     [`EXCEPTION_RETRY`], not hammered every poll.
//!   - Busy, device failure, gateway path / target unavailable describe the device's
//!     condition, not the config: logged once per change as a warning, re-tried next poll.
//!
//!   Only when nothing at all could be read does the poll fail, with
//!   [`PollError::Exception`].
//!
//! Equipment may override the PLC's unit id (SPEC §9: a TCP gateway with serial units behind
//! it, or several units on one bus behind one `[[plc]]`): the reads are planned per unit, and
//! each request carries its unit.
//!
//! ## Invariants
//!
//! - Every network step — connect (including name resolution) and each request — has a
//!   `timeout_ms` deadline; tokio-modbus has none of its own. Timeout messages say
//!   "timed out" (`run_plc` counts timeouts by those words).
//! - After any transport error the connection is gone (`connected()` is false).
//! - Only read function codes (1–4) are ever sent: the gateway never writes to a PLC.
//! - Nothing on the network or decode path panics: answers are length-checked before use.

use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::{ExceptionCode, Request, Response};

use super::decode::{decode_bits, decode_register_bits, decode_registers};
use super::link::Link;
use super::plan::{self, format_address, Placement, PlanError, ReadRequest, Span, Table};
use super::rtu::{BusHandle, CallError, CallResult};
use super::{EquipmentSample, PollError, Poller, PollerStats, Quality, SignalReading, Value};
use crate::config::{ByteOrder, Equipment, ModbusAddress, Plc, Protocol, Signal, SignalSource};

/// How long a request that drew a device exception rests before it is tried again.
pub const EXCEPTION_RETRY: Duration = Duration::from_secs(60);

/// Polls one Modbus PLC: owns its connection (or its place on a bus) and its read plan.
pub struct ModbusPoller {
    plc: String,
    link: Link,
    timeout: Duration,
    equipment: Vec<String>,
    /// Every signal, with its place in `requests` (or why it has none).
    slots: Vec<Slot>,
    requests: Vec<LiveRequest>,
    stats: PollerStats,
}

/// One signal of one equipment and where its data is.
struct Slot {
    equipment: usize,
    name: crate::sample::SignalName,
    signal: Signal,
    span: Option<Span>,
    placement: Result<Placement, PlanError>,
    /// Whether the last decode failed (so a failing value is logged once, not every poll).
    decode_failing: bool,
}

/// A planned request and what the PLC has been saying to it.
#[derive(Clone, Copy)]
struct LiveRequest {
    request: ReadRequest,
    /// The unit (slave) id it goes to.
    unit: u8,
    health: Health,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    Ok,
    /// Answered with an exception; not re-issued before `retry_at`.
    Excepted {
        code: ExceptionCode,
        retry_at: Instant,
    },
    /// Replaced by one request per signal after an exception; never issued again.
    Split,
}

/// What one request returned.
enum Answer {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl ModbusPoller {
    /// Plans the reads for every signal of `equipment` once, at config load.
    ///
    /// Signals that cannot be planned (see [`PlanError`]) are logged here, once, and read as
    /// [`Quality::Bad`] on every poll.
    pub fn new(plc: &Plc, equipment: &[Equipment]) -> Self {
        let link = Link::Tcp {
            host: plc.host.clone(),
            port: plc.port,
            ctx: None,
        };
        Self::with_link(plc, equipment, link)
    }

    /// A poller for a `modbus-rtu` PLC, sending through `bus` (see [`super::rtu`]).
    pub fn on_bus(plc: &Plc, equipment: &[Equipment], bus: BusHandle) -> Self {
        Self::with_link(plc, equipment, Link::Bus { bus, up: false })
    }

    fn with_link(plc: &Plc, equipment: &[Equipment], link: Link) -> Self {
        let default_unit = match &plc.protocol {
            Protocol::ModbusTcp { unit_id, .. } => *unit_id,
            Protocol::ModbusRtu(rtu) => rtu.unit_id,
            Protocol::EthernetIp { .. } | Protocol::OpcUa(_) => 1,
        };
        // One plan per unit: a request never spans two units.
        let unit_of = |e: &Equipment| e.unit_id.unwrap_or(default_unit);
        let mut units: Vec<u8> = equipment.iter().map(unit_of).collect();
        units.sort_unstable();
        units.dedup();
        let mut slots: Vec<Slot> = Vec::new();
        let mut requests: Vec<LiveRequest> = Vec::new();
        for unit in units {
            let members: Vec<usize> = (0..equipment.len())
                .filter(|&i| unit_of(&equipment[i]) == unit)
                .collect();
            let group: Vec<Equipment> = members.iter().map(|&i| equipment[i].clone()).collect();
            let read_plan = plan::plan(&group);
            let base = requests.len();
            slots.extend(read_plan.signals.into_iter().map(|s| Slot {
                equipment: members.get(s.equipment).copied().unwrap_or(usize::MAX),
                name: s.name.into(),
                signal: s.signal,
                span: s.span,
                placement: s.placement.map(|p| Placement {
                    request: base + p.request,
                    ..p
                }),
                decode_failing: false,
            }));
            requests.extend(read_plan.requests.into_iter().map(|request| LiveRequest {
                request,
                unit,
                health: Health::Ok,
            }));
        }
        for slot in &slots {
            if let Err(e) = &slot.placement {
                tracing::error!(
                    plc = %plc.name,
                    equipment = %equipment.get(slot.equipment).map_or("?", |e| e.code.as_str()),
                    signal = %slot.name,
                    error = %e,
                    "signal cannot be read; it will be reported with bad quality"
                );
            }
        }
        tracing::debug!(
            plc = %plc.name,
            requests = requests.len(),
            signals = slots.len(),
            "Modbus read plan: {}",
            requests
                .iter()
                .map(|r| format!("unit {} {}", r.unit, r.request))
                .collect::<Vec<_>>()
                .join(", ")
        );
        ModbusPoller {
            plc: plc.name.clone(),
            link,
            timeout: Duration::from_millis(plc.timeout_ms.max(1)),
            equipment: equipment.iter().map(|e| e.code.clone()).collect(),
            slots,
            requests,
            stats: PollerStats::default(),
        }
    }

    /// The requests a poll issues while every address answers (for `status` and tests).
    pub fn planned_requests(&self) -> Vec<ReadRequest> {
        self.requests
            .iter()
            .filter(|r| r.health != Health::Split)
            .map(|r| r.request)
            .collect()
    }

    /// Sends one request over the link. Outer `Err`: the connection could not be opened.
    async fn call(&mut self, unit: u8, pdu: Request<'static>) -> Result<CallResult, PollError> {
        self.link
            .call(&self.plc, unit, pdu, self.timeout, &mut self.stats)
            .await
    }

    /// After a transport error: see [`Link::disconnect`].
    fn disconnect(&mut self) {
        self.link.disconnect();
    }

    /// Issues one request. Outer `Err`: transport (the caller drops the connection); inner
    /// `Err`: the device answered with an exception.
    async fn read(
        &mut self,
        unit: u8,
        request: ReadRequest,
    ) -> Result<Result<Answer, ExceptionCode>, PollError> {
        let timeout = self.timeout;
        let ReadRequest {
            table,
            start,
            quantity,
        } = request;
        let pdu = match table {
            Table::Coils => Request::ReadCoils(start, quantity),
            Table::DiscreteInputs => Request::ReadDiscreteInputs(start, quantity),
            Table::InputRegisters => Request::ReadInputRegisters(start, quantity),
            Table::HoldingRegisters => Request::ReadHoldingRegisters(start, quantity),
        };
        // `Client::call` rather than the `Reader` helpers: those `debug_assert` the answer's
        // length (a panic on a misbehaving PLC in debug builds); we check it ourselves.
        let response = match self.call(unit, pdu).await? {
            Err(CallError::TimedOut) => {
                return Err(PollError::Transport(format!(
                    "read {request} timed out after {} ms",
                    timeout.as_millis()
                )))
            }
            Err(CallError::Failed(e)) => {
                return Err(PollError::Transport(transport_message(&request, &e)))
            }
            Err(CallError::Port(message)) => return Err(PollError::Transport(message)),
            Ok(Err(code)) => return Ok(Err(code)),
            Ok(Ok(response)) => response,
        };
        let want = usize::from(quantity);
        let answer = match response {
            Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits)
                if table.is_bits() && bits.len() >= want =>
            {
                // Bits come packed in bytes; the padding of the last byte is not data.
                bits.truncate(want);
                Answer::Bits(bits)
            }
            Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words)
                if !table.is_bits() && words.len() == want =>
            {
                Answer::Words(words)
            }
            other => {
                return Err(PollError::Transport(format!(
                    "read {request}: malformed answer {}",
                    describe(&other)
                )))
            }
        };
        Ok(Ok(answer))
    }

    /// Indices of the slots whose data comes from request `index`.
    fn members(&self, index: usize) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&s| matches!(&self.slots[s].placement, Ok(p) if p.request == index))
            .collect()
    }

    fn describe_members(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&s| {
                let slot = &self.slots[s];
                let at = match &slot.signal.source {
                    SignalSource::Modbus { address, .. } => format_address(address),
                    SignalSource::Tag { tag } => tag.clone(),
                    SignalSource::Node { node } => node.clone(),
                };
                let code = self
                    .equipment
                    .get(slot.equipment)
                    .map_or("?", String::as_str);
                format!("{code}/{} ({at})", slot.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Replaces request `index` by one request per distinct signal span; returns whether it
    /// did (a request covering a single span cannot be split further).
    fn split(&mut self, index: usize, code: ExceptionCode) -> bool {
        let members = self.members(index);
        let spans: Vec<Option<Span>> = members.iter().map(|&s| self.slots[s].span).collect();
        let (requests, placements) = plan::isolate(&spans);
        if requests.len() <= 1 {
            return false;
        }
        tracing::warn!(
            plc = %self.plc,
            request = %self.requests[index].request,
            exception = %exception_name(code),
            signals = %self.describe_members(&members),
            "PLC refused a merged read; reading its signals one by one to find the bad address"
        );
        let base = self.requests.len();
        let unit = self.requests[index].unit;
        self.requests
            .extend(requests.into_iter().map(|request| LiveRequest {
                request,
                unit,
                health: Health::Ok,
            }));
        for (&s, p) in members.iter().zip(placements) {
            self.slots[s].placement = p.map(|p| Placement {
                request: base + p.request,
                ..p
            });
        }
        self.requests[index].health = Health::Split;
        true
    }

    /// Turns the answers of one poll into one sample per equipment; signals of a request in
    /// `held` (not asked this poll, held off after an exception) are [`Quality::Stale`].
    fn samples(&mut self, answers: &[Option<Answer>], held: &[bool]) -> Vec<EquipmentSample> {
        let ModbusPoller {
            plc,
            equipment,
            slots,
            ..
        } = self;
        let mut samples: Vec<EquipmentSample> = equipment
            .iter()
            .map(|code| EquipmentSample {
                equipment: code.clone(),
                signals: Default::default(),
            })
            .collect();
        for slot in slots.iter_mut() {
            let code = equipment.get(slot.equipment).map_or("?", String::as_str);
            let answer = match &slot.placement {
                Ok(p) => answers
                    .get(p.request)
                    .and_then(Option::as_ref)
                    .map(|a| (a, *p)),
                Err(_) => None,
            };
            let value = answer.and_then(|(answer, p)| match decode_slot(&slot.signal, answer, p) {
                Ok(v) => {
                    if slot.decode_failing {
                        tracing::info!(%plc, equipment = %code, signal = %slot.name, "signal decodes again");
                    }
                    slot.decode_failing = false;
                    Some(v)
                }
                Err(e) => {
                    if !slot.decode_failing {
                        tracing::warn!(%plc, equipment = %code, signal = %slot.name, error = %e, "signal value cannot be decoded; reported with bad quality");
                    }
                    slot.decode_failing = true;
                    None
                }
            });
            let was_held = matches!(&slot.placement, Ok(p) if held.get(p.request) == Some(&true));
            let reading = SignalReading {
                quality: if value.is_some() {
                    Quality::Good
                } else if was_held {
                    Quality::Stale
                } else {
                    Quality::Bad
                },
                value,
            };
            if let Some(sample) = samples.get_mut(slot.equipment) {
                sample.signals.insert(slot.name.clone(), reading);
            }
        }
        samples
    }
}

impl Poller for ModbusPoller {
    async fn poll(&mut self) -> Result<Vec<EquipmentSample>, PollError> {
        let now = Instant::now();
        let mut answers: Vec<Option<Answer>> = Vec::new();
        let mut held: Vec<bool> = Vec::new();
        let mut any_read = false;
        let mut refused: Vec<String> = Vec::new();
        // `split` appends requests; they are issued in this same poll.
        let mut next = 0;
        while let Some(&LiveRequest {
            request,
            unit,
            health,
        }) = self.requests.get(next)
        {
            let i = next;
            next += 1;
            answers.resize_with(self.requests.len(), || None);
            held.resize(self.requests.len(), false);
            match health {
                Health::Split => continue,
                Health::Excepted { code, retry_at } if now < retry_at => {
                    refused.push(format!("{request}: {}", exception_name(code)));
                    held[i] = true;
                    continue;
                }
                Health::Ok | Health::Excepted { .. } => {}
            }
            match self.read(unit, request).await {
                Err(e) => {
                    // Transport: the connection may be out of step; start afresh next poll.
                    self.disconnect();
                    tracing::debug!(plc = %self.plc, error = %e, "dropping connection");
                    return Err(e);
                }
                Ok(Ok(answer)) => {
                    if let Health::Excepted { .. } = health {
                        tracing::info!(plc = %self.plc, %request, signals = %self.describe_members(&self.members(i)), "PLC answers this read again");
                    }
                    self.requests[i].health = Health::Ok;
                    answers[i] = Some(answer);
                    any_read = true;
                }
                Ok(Err(code)) => {
                    self.stats.exceptions += 1;
                    let config_problem = is_configuration_exception(code);
                    let isolatable = matches!(
                        code,
                        ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
                    );
                    if isolatable && self.split(i, code) {
                        continue;
                    }
                    let previous = match health {
                        Health::Excepted { code, .. } => Some(code),
                        _ => None,
                    };
                    if previous != Some(code) {
                        let signals = self.describe_members(&self.members(i));
                        if config_problem {
                            tracing::error!(
                                plc = %self.plc,
                                %request,
                                exception = %exception_name(code),
                                %signals,
                                retry_s = EXCEPTION_RETRY.as_secs(),
                                "PLC refused a read: check these signals' addresses and types; they are reported with bad quality"
                            );
                        } else {
                            tracing::warn!(
                                plc = %self.plc,
                                %request,
                                exception = %exception_name(code),
                                %signals,
                                "PLC cannot serve a read right now; its signals are reported with bad quality until it can"
                            );
                        }
                    }
                    self.requests[i].health = Health::Excepted {
                        code,
                        // A configuration problem will not fix itself soon; a busy or
                        // unreachable device behind a gateway may answer on the next poll.
                        retry_at: if config_problem {
                            now + EXCEPTION_RETRY
                        } else {
                            now
                        },
                    };
                    refused.push(format!("{request}: {}", exception_name(code)));
                }
            }
        }
        answers.resize_with(self.requests.len(), || None);
        held.resize(self.requests.len(), false);
        if !any_read {
            return Err(PollError::Exception(if refused.is_empty() {
                "no signal of this PLC has a readable Modbus address".to_string()
            } else {
                refused.join("; ")
            }));
        }
        Ok(self.samples(&answers, &held))
    }

    fn connected(&self) -> bool {
        self.link.is_up()
    }

    fn stats(&self) -> PollerStats {
        self.stats
    }
}

/// Decodes one signal from its request's answer.
fn decode_slot(
    signal: &Signal,
    answer: &Answer,
    p: Placement,
) -> Result<Value, super::decode::DecodeError> {
    let (address, order) = match &signal.source {
        SignalSource::Modbus {
            address,
            byte_order,
        } => (*address, *byte_order),
        // Never planned, so never here; decode as plain registers if it were.
        SignalSource::Tag { .. } | SignalSource::Node { .. } => {
            (ModbusAddress::HoldingRegister(0), ByteOrder::Abcd)
        }
    };
    let range = usize::from(p.offset)..usize::from(p.offset) + usize::from(p.length);
    match answer {
        Answer::Bits(bits) => decode_bits(bits.get(range).unwrap_or(&[]), signal.count),
        Answer::Words(words) => {
            let words = words.get(range).unwrap_or(&[]);
            match address {
                ModbusAddress::HoldingRegisterBit(_, bit)
                | ModbusAddress::InputRegisterBit(_, bit) => {
                    decode_register_bits(words, bit, signal.count)
                }
                _ => decode_registers(
                    words,
                    signal.data_type,
                    signal.count,
                    order,
                    signal.scale,
                    signal.offset,
                ),
            }
        }
    }
}

/// Exceptions that mean the request itself is wrong for this PLC (a function it does not
/// implement, an address it does not have, a quantity it will not serve). The others — busy,
/// device failure, gateway path or target unavailable — describe the device's condition.
fn is_configuration_exception(code: ExceptionCode) -> bool {
    matches!(
        code,
        ExceptionCode::IllegalFunction
            | ExceptionCode::IllegalDataAddress
            | ExceptionCode::IllegalDataValue
    )
}

/// A transport error in words an engineer can act on.
fn transport_message(request: &ReadRequest, e: &tokio_modbus::Error) -> String {
    match e {
        tokio_modbus::Error::Transport(io) => {
            // tokio-modbus reports a connection closed by the PLC as `last_os_error()`, which
            // is usually errno 0 ("Success"): say what happened instead. (On a serial bus an
            // end of file means the port went away.)
            if io.raw_os_error() == Some(0) || io.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("read {request}: connection closed by the PLC")
            } else {
                format!("read {request}: {io}")
            }
        }
        tokio_modbus::Error::Protocol(p) => format!("read {request}: malformed answer: {p}"),
    }
}

/// `IllegalDataAddress (0x02)`.
fn exception_name(code: ExceptionCode) -> String {
    format!("{code:?} (0x{:02X})", u8::from(code))
}

fn describe(response: &Response) -> String {
    match response {
        Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => {
            format!("with {} bits", b.len())
        }
        Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => {
            format!("with {} registers", w.len())
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataType;

    fn signal(address: ModbusAddress, data_type: DataType, count: u16) -> Signal {
        Signal {
            source: SignalSource::Modbus {
                address,
                byte_order: ByteOrder::Abcd,
            },
            data_type,
            count,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn at(request: usize, offset: u16, length: u16) -> Placement {
        Placement {
            request,
            offset,
            length,
        }
    }

    #[test]
    fn a_signal_decodes_from_its_offset_in_the_answer() {
        let s = signal(ModbusAddress::HoldingRegister(102), DataType::U32, 1);
        let answer = Answer::Words(vec![0x42DC, 0x0000, 0x0001, 0x0002]);
        assert_eq!(
            decode_slot(&s, &answer, at(0, 2, 2)),
            Ok(Value::UInt(0x0001_0002))
        );
    }

    #[test]
    fn a_register_bit_decodes_from_the_register_value() {
        let s = signal(ModbusAddress::HoldingRegisterBit(111, 3), DataType::Bool, 1);
        let answer = Answer::Words(vec![0, 0x0008]);
        assert_eq!(decode_slot(&s, &answer, at(0, 1, 1)), Ok(Value::Bool(true)));
    }

    #[test]
    fn coils_decode_from_their_offset() {
        let s = signal(ModbusAddress::Coil(2), DataType::Bool, 1);
        let answer = Answer::Bits(vec![false, false, true]);
        assert_eq!(decode_slot(&s, &answer, at(0, 2, 1)), Ok(Value::Bool(true)));
    }

    #[test]
    fn a_placement_past_the_answer_is_an_error_not_a_panic() {
        let s = signal(ModbusAddress::HoldingRegister(0), DataType::U32, 1);
        let answer = Answer::Words(vec![1]);
        assert!(decode_slot(&s, &answer, at(0, 5, 2)).is_err());
    }

    #[test]
    fn exceptions_are_named_with_their_code() {
        assert_eq!(
            exception_name(ExceptionCode::IllegalDataAddress),
            "IllegalDataAddress (0x02)"
        );
    }
}
