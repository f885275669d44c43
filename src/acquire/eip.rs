//! EtherNet/IP acquisition of Allen-Bradley Logix tags: one [`EipPoller`] per PLC, built on
//! `rust-ethernet-ip` (pinned `=1.2.1`) behind our [`Poller`] trait, so the crate can be
//! replaced without touching `run_plc`, the engine or the tests of the trait's behaviour.
//!
//! ## Design
//!
//! Every signal is turned once, in [`EipPoller::new`], into an [`Access`]: the tag names the
//! poll reads and how the value is rebuilt from them. A poll then issues **one batch**
//! (`read_tags_batch`, CIP Multiple Service Packet through Unconnected Send) with every tag
//! not held off, and decodes each signal from the answers. Nothing is read tag by tag.
//!
//! What the crate lacks, we own:
//!
//! - **A timeout on every call.** The crate has fixed 5 s / 10 s read deadlines and ignores
//!   `BatchConfig::packet_timeout_ms` (1.2.1 only logs it). Connect, session registration and
//!   every batch run under the PLC's `timeout_ms` here; an expired deadline drops the client,
//!   whose stream may hold half a reply.
//! - **Reconnect after a reset.** The crate marks its stream "poisoned" after an incomplete
//!   transaction and never reconnects. Any transport error drops the client; the next poll
//!   (after `run_plc`'s backoff) opens a fresh TCP connection and session.
//! - **Whole arrays.** Reading `Faults` without an index returns element 0 only. A signal with
//!   `count = n` reads `Faults[0]` … `Faults[n-1]` (or from the index the tag names) as `n`
//!   services *inside the same batch*. We chose that over the crate's `read_array_range`,
//!   which costs a probe request plus one request per chunk, per array, per poll — it cannot
//!   join a Multiple Service Packet.
//! - **Bits of DINT fault words.** `Faults.5` (or `Faults[1].5`) declared `bool` reads the
//!   integer word in the batch and takes the bit here (Logix has no bit segment for atomic
//!   tags); `count = n` takes `n` consecutive bits.
//! - **Declared type contradicted by the controller**: the reply's CIP type decides the
//!   [`PlcValue`] variant; a variant other than the declared type is *reported, not
//!   converted* — the signal is [`Quality::Bad`], an error is logged once per change naming
//!   the tag and both types, and [`PlcCounters::type_mismatches`](super::PlcCounters) counts
//!   every such read.
//!
//! Errors are classified like Modbus ones (see the `acquire` module doc): a CIP error status
//! that means "no such tag / bad path / wrong request" is a configuration problem, logged once
//! with the signal's name and tag, the signal bad and the tag held off for
//! [`EXCEPTION_RETRY`] (its signals `stale` meanwhile); "resource unavailable", "connection
//! failure" and state conflicts are the device's condition, re-tried next poll. A failed
//! batch, a timeout, or a per-service network error is a transport error: drop and back off.
//!
//! ## Why this crate
//!
//! It is the maintained pure-Rust Logix client with Multiple Service Packet batching and
//! program-scoped tags; the alternatives are bindings to libplctag (C, a build-time
//! dependency and its own thread pool) or unmaintained crates. Its surface is large (UDTs,
//! subscriptions, FFI, writes); we use four calls (`connect_with_stream`,
//! `configure_batch_operations`, `read_tags_batch`, and dropping the client), so a
//! replacement is a contained change.
//!
//! Verified against cpppo 5.2.5 (`tests/peer_eip.rs`): BOOL, DINT, REAL, DINT array elements
//! and batches work. Found while doing so: a *single* read of an unknown tag makes cpppo end
//! the session, while the same tag inside a batch is a per-service status 0x05 and the
//! session survives — one more reason to always batch.
//!
//! ## Invariants
//!
//! - Every network step has a `timeout_ms` deadline; timeout messages say "timed out".
//! - After any transport error the client is gone (`connected()` is false).
//! - Only read services are sent: the gateway never writes to a PLC.
//! - Nothing on the network or decode path panics.

use std::collections::HashMap;
use std::time::Duration;

use rust_ethernet_ip::{BatchConfig, BatchError, EipClient, PlcValue, RoutePath};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::decode::{engineering, widen_f32, Raw};
use super::modbus::EXCEPTION_RETRY;
use super::{EquipmentSample, PollError, Poller, PollerStats, Quality, SignalReading, Value};
use crate::config::{DataType, Equipment, Plc, Protocol, Signal, SignalSource};

/// Largest request the batch packs into one Unconnected Send: 504 bytes is what every Logix
/// controller accepts for unconnected messaging.
const MAX_PACKET_BYTES: usize = 504;

/// How a signal's value is read and rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// One tag, one value.
    Scalar {
        /// The tag read.
        tag: String,
    },
    /// An array: one service per element, all in the poll's batch.
    Elements {
        /// `Base[i]` … in order.
        tags: Vec<String>,
    },
    /// Bits `bit .. bit + count` of an integer tag.
    Bits {
        /// The integer word read.
        word: String,
        /// First bit.
        bit: u8,
        /// Number of bits.
        count: u16,
    },
}

impl Access {
    /// Works out how to read `tag` declared as `data_type` with `count` elements.
    ///
    /// Pure, so it is tested without a controller. An error is a configuration problem that
    /// the config loader cannot see (it does not know Logix array syntax beyond characters).
    pub fn of(tag: &str, data_type: DataType, count: u16) -> Result<Access, String> {
        if data_type == DataType::Bool {
            if let Some((word, bit)) = tag.rsplit_once('.') {
                if !bit.is_empty() && bit.bytes().all(|b| b.is_ascii_digit()) {
                    let bit: u8 = bit.parse().ok().filter(|b| *b < 64).ok_or_else(|| {
                        format!("bit {bit} of \"{word}\": Logix words have at most 64 bits")
                    })?;
                    if word.is_empty() {
                        return Err(format!("\"{tag}\" names a bit of nothing"));
                    }
                    return Ok(Access::Bits {
                        word: word.to_string(),
                        bit,
                        count: count.max(1),
                    });
                }
            }
        }
        if count <= 1 {
            return Ok(Access::Scalar {
                tag: tag.to_string(),
            });
        }
        let (base, first) = match tag.strip_suffix(']').and_then(|t| t.rsplit_once('[')) {
            Some((base, index)) => {
                let first: u32 = index.parse().map_err(|_| {
                    format!("\"{tag}\": an array signal names its first element with one index, like \"Faults[0]\"")
                })?;
                (base, first)
            }
            None => (tag, 0),
        };
        // The loader refuses an index range past u32::MAX; never wrap or panic here either.
        if first.checked_add(u32::from(count) - 1).is_none() {
            return Err(format!(
                "\"{tag}\": {count} elements run past the largest array index {}",
                u32::MAX
            ));
        }
        let tags = (0..u32::from(count))
            .map(|i| format!("{base}[{}]", u64::from(first) + u64::from(i)))
            .collect();
        Ok(Access::Elements { tags })
    }

    /// The tags the batch reads for this signal.
    pub fn reads(&self) -> Vec<&str> {
        match self {
            Access::Scalar { tag } => vec![tag.as_str()],
            Access::Elements { tags } => tags.iter().map(String::as_str).collect(),
            Access::Bits { word, .. } => vec![word.as_str()],
        }
    }
}

/// Polls one Logix controller: owns its client and the read list.
pub struct EipPoller {
    plc: String,
    host: String,
    port: u16,
    slot: u8,
    timeout: Duration,
    equipment: Vec<String>,
    slots: Vec<TagSlot>,
    /// `None` until the first poll and after every transport error.
    client: Option<EipClient>,
    stats: PollerStats,
}

/// One signal of one equipment.
struct TagSlot {
    equipment: usize,
    name: crate::sample::SignalName,
    tag: String,
    signal: Signal,
    access: Result<Access, String>,
    /// Refused by the controller as a configuration problem: not asked before this time.
    held_until: Option<Instant>,
    /// The problem logged last (so each is logged once per change, not every poll).
    logged: Option<String>,
}

/// What went wrong with one signal in one poll.
#[derive(Debug, Clone, PartialEq)]
enum Problem {
    /// Transport failure reported per service: fails the whole poll.
    Transport(String),
    /// The controller refused the tag: configuration problem, held off.
    Refused(String),
    /// The controller cannot serve it right now: re-tried next poll.
    Busy(String),
    /// The controller's type is not the declared one.
    TypeMismatch(String),
    /// Answered, but not a usable value (NaN, bit out of range, …).
    Undecodable(String),
}

impl EipPoller {
    /// Prepares the reads of every signal of `equipment`; signals whose tag cannot be read are
    /// logged here, once, and reported bad on every poll.
    pub fn new(plc: &Plc, equipment: &[Equipment]) -> Self {
        let slot = match plc.protocol {
            Protocol::EthernetIp { slot } => slot,
            Protocol::ModbusTcp { .. } | Protocol::ModbusRtu(_) | Protocol::OpcUa(_) => 0,
        };
        let mut slots = Vec::new();
        for (e, eq) in equipment.iter().enumerate() {
            for (name, signal) in eq.signals.all() {
                let (tag, access) = match &signal.source {
                    SignalSource::Tag { tag } => {
                        (tag.clone(), Access::of(tag, signal.data_type, signal.count))
                    }
                    SignalSource::Modbus { .. } => (
                        String::new(),
                        Err("a Modbus address on an EtherNet/IP PLC".into()),
                    ),
                    SignalSource::Node { .. } => (
                        String::new(),
                        Err("an OPC UA node on an EtherNet/IP PLC".into()),
                    ),
                };
                if let Err(why) = &access {
                    tracing::error!(plc = %plc.name, equipment = %eq.code, signal = name, %tag, error = %why, "signal cannot be read; it will be reported with bad quality");
                }
                slots.push(TagSlot {
                    equipment: e,
                    name: name.into(),
                    tag,
                    signal: signal.clone(),
                    access,
                    held_until: None,
                    logged: None,
                });
            }
        }
        EipPoller {
            plc: plc.name.clone(),
            host: plc.host.clone(),
            port: plc.port,
            slot,
            timeout: Duration::from_millis(plc.timeout_ms.max(1)),
            equipment: equipment.iter().map(|e| e.code.clone()).collect(),
            slots,
            client: None,
            stats: PollerStats::default(),
        }
    }

    /// Opens TCP and registers a session, each under the deadline.
    async fn connection(&mut self) -> Result<&mut EipClient, PollError> {
        if self.client.is_none() {
            let target = format!("{}:{}", self.host, self.port);
            let ms = self.timeout.as_millis();
            let stream = match tokio::time::timeout(
                self.timeout,
                TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(PollError::Transport(format!("connect to {target}: {e}")))
                }
                Err(_) => {
                    return Err(PollError::Transport(format!(
                        "connect to {target} timed out after {ms} ms"
                    )))
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(plc = %self.plc, error = %e, "could not set TCP_NODELAY");
            }
            let route = RoutePath::new().add_slot(self.slot);
            let mut client = match tokio::time::timeout(
                self.timeout,
                EipClient::connect_with_stream(stream, Some(route)),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(PollError::Transport(format!(
                        "register session with {target}: {e}"
                    )))
                }
                Err(_) => {
                    return Err(PollError::Transport(format!(
                        "register session with {target} timed out after {ms} ms"
                    )))
                }
            };
            client.configure_batch_operations(BatchConfig {
                max_operations_per_packet: 200,
                max_packet_size: MAX_PACKET_BYTES,
                packet_timeout_ms: u64::try_from(ms).unwrap_or(u64::MAX),
                // A failed packet fails the call: it is a transport error, not 200 bad tags.
                continue_on_error: false,
                optimize_packet_packing: false,
            });
            tracing::debug!(plc = %self.plc, %target, slot = self.slot, "EtherNet/IP session registered");
            self.client = Some(client);
            self.stats.connects += 1;
        }
        self.client
            .as_mut()
            .ok_or_else(|| PollError::Transport("not connected".into()))
    }

    /// The one batch of this poll.
    async fn read_batch(
        &mut self,
        tags: &[String],
    ) -> Result<HashMap<String, Result<PlcValue, BatchError>>, PollError> {
        if tags.is_empty() {
            return Ok(HashMap::new());
        }
        let timeout = self.timeout;
        let client = self.connection().await?;
        let names: Vec<&str> = tags.iter().map(String::as_str).collect();
        let answer = tokio::time::timeout(timeout, client.read_tags_batch(&names)).await;
        let results = match answer {
            Err(_) => Err(PollError::Transport(format!(
                "batch read of {} tags timed out after {} ms",
                names.len(),
                timeout.as_millis()
            ))),
            Ok(Err(e)) => Err(PollError::Transport(format!(
                "batch read of {} tags: {e}",
                names.len()
            ))),
            Ok(Ok(results)) => Ok(results),
        };
        match results {
            Ok(results) => Ok(results.into_iter().collect()),
            Err(e) => {
                self.client = None;
                Err(e)
            }
        }
    }
}

impl Poller for EipPoller {
    async fn poll(&mut self) -> Result<Vec<EquipmentSample>, PollError> {
        let now = Instant::now();
        // Which tags this poll asks for: every readable signal not held off, each tag once.
        let mut tags: Vec<String> = Vec::new();
        for slot in &self.slots {
            if slot.held_until.is_some_and(|t| now < t) {
                continue;
            }
            if let Ok(access) = &slot.access {
                for t in access.reads() {
                    if !tags.iter().any(|x| x == t) {
                        tags.push(t.to_string());
                    }
                }
            }
        }
        let answers = self.read_batch(&tags).await?;

        let mut samples: Vec<EquipmentSample> = self
            .equipment
            .iter()
            .map(|code| EquipmentSample {
                equipment: code.clone(),
                signals: Default::default(),
            })
            .collect();
        let mut any_good = false;
        let mut refused: Vec<String> = Vec::new();
        let mut transport: Option<String> = None;
        for slot in &mut self.slots {
            let code = self
                .equipment
                .get(slot.equipment)
                .map_or("?", String::as_str);
            let held = slot.held_until.is_some_and(|t| now < t);
            let outcome = match (&slot.access, held) {
                (Err(why), _) => Err(Problem::Undecodable(why.clone())),
                (Ok(_), true) => {
                    refused.push(format!("{} (held off)", slot.tag));
                    if let Some(sample) = samples.get_mut(slot.equipment) {
                        sample.signals.insert(
                            slot.name.clone(),
                            SignalReading {
                                value: None,
                                quality: Quality::Stale,
                            },
                        );
                    }
                    continue;
                }
                (Ok(access), false) => decode(access, &slot.signal, &answers),
            };
            let reading = match outcome {
                Ok(value) => {
                    if slot.logged.take().is_some() {
                        tracing::info!(plc = %self.plc, equipment = %code, signal = %slot.name, tag = %slot.tag, "signal reads again");
                    }
                    slot.held_until = None;
                    any_good = true;
                    SignalReading {
                        value: Some(value),
                        quality: Quality::Good,
                    }
                }
                Err(problem) => {
                    let message = match &problem {
                        Problem::Transport(m) => {
                            transport.get_or_insert_with(|| m.clone());
                            continue;
                        }
                        Problem::Refused(m) => {
                            self.stats.exceptions += 1;
                            slot.held_until = Some(now + EXCEPTION_RETRY);
                            refused.push(format!("{}: {m}", slot.tag));
                            m.clone()
                        }
                        Problem::Busy(m) => {
                            self.stats.exceptions += 1;
                            refused.push(format!("{}: {m}", slot.tag));
                            m.clone()
                        }
                        Problem::TypeMismatch(m) => {
                            self.stats.type_mismatches += 1;
                            m.clone()
                        }
                        Problem::Undecodable(m) => m.clone(),
                    };
                    if slot.logged.as_deref() != Some(message.as_str()) {
                        match problem {
                            Problem::Refused(_) => {
                                tracing::error!(plc = %self.plc, equipment = %code, signal = %slot.name, tag = %slot.tag, error = %message, retry_s = EXCEPTION_RETRY.as_secs(), "controller refused a tag: check its name and scope; reported with bad quality")
                            }
                            Problem::TypeMismatch(_) => {
                                tracing::error!(plc = %self.plc, equipment = %code, signal = %slot.name, tag = %slot.tag, error = %message, "declared type contradicted by the controller: reported with bad quality, not converted")
                            }
                            _ => {
                                tracing::warn!(plc = %self.plc, equipment = %code, signal = %slot.name, tag = %slot.tag, error = %message, "signal unreadable this poll; reported with bad quality")
                            }
                        }
                        slot.logged = Some(message);
                    }
                    SignalReading {
                        value: None,
                        quality: Quality::Bad,
                    }
                }
            };
            if let Some(sample) = samples.get_mut(slot.equipment) {
                sample.signals.insert(slot.name.clone(), reading);
            }
        }
        if let Some(m) = transport {
            self.client = None;
            return Err(PollError::Transport(m));
        }
        if !any_good && !refused.is_empty() {
            return Err(PollError::Exception(refused.join("; ")));
        }
        if !any_good && tags.is_empty() {
            return Err(PollError::Exception(
                "no signal of this PLC has a readable tag".into(),
            ));
        }
        Ok(samples)
    }

    fn connected(&self) -> bool {
        self.client.is_some()
    }

    fn stats(&self) -> PollerStats {
        self.stats
    }
}

/// Rebuilds one signal's value from the batch's answers.
fn decode(
    access: &Access,
    signal: &Signal,
    answers: &HashMap<String, Result<PlcValue, BatchError>>,
) -> Result<Value, Problem> {
    let get = |tag: &str| -> Result<&PlcValue, Problem> {
        match answers.get(tag) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(classify(e)),
            None => Err(Problem::Transport(format!(
                "no answer for tag {tag} in the batch reply"
            ))),
        }
    };
    let scalar = |tag: &str| -> Result<Value, Problem> {
        let v = get(tag)?;
        let raw = typed(v, signal.data_type).ok_or_else(|| {
            Problem::TypeMismatch(format!(
                "controller holds {tag} as {}, config declares {}",
                type_name(v),
                logix_name(signal.data_type)
            ))
        })?;
        engineering(raw, signal.scale, signal.offset)
            .map_err(|e| Problem::Undecodable(format!("{tag}: {e}")))
    };
    match access {
        Access::Scalar { tag } => scalar(tag),
        Access::Elements { tags } => tags
            .iter()
            .map(|t| scalar(t))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Access::Bits { word, bit, count } => {
            let v = get(word)?;
            let (bits, width) = word_of(v).ok_or_else(|| {
                Problem::TypeMismatch(format!(
                    "bit access needs an integer word, controller holds {word} as {}",
                    type_name(v)
                ))
            })?;
            let end = u32::from(*bit) + u32::from(*count);
            if end > width {
                return Err(Problem::Undecodable(format!(
                    "bits {bit}..{end} of {word}: a {} has {width} bits",
                    type_name(v)
                )));
            }
            let one = |n: u32| Value::Bool(bits >> n & 1 == 1);
            if *count <= 1 {
                Ok(one(u32::from(*bit)))
            } else {
                Ok(Value::Array((u32::from(*bit)..end).map(one).collect()))
            }
        }
    }
}

/// The raw value if the controller's type is the declared one; `None` is a contradiction.
fn typed(v: &PlcValue, declared: DataType) -> Option<Raw> {
    Some(match (declared, v) {
        (DataType::Bool, PlcValue::Bool(b)) => Raw::Bool(*b),
        (DataType::I8, PlcValue::Sint(i)) => Raw::Int(i64::from(*i)),
        (DataType::I16, PlcValue::Int(i)) => Raw::Int(i64::from(*i)),
        (DataType::I32, PlcValue::Dint(i)) => Raw::Int(i64::from(*i)),
        (DataType::I64, PlcValue::Lint(i)) => Raw::Int(*i),
        (DataType::U16, PlcValue::Uint(u)) => Raw::UInt(u64::from(*u)),
        (DataType::U32, PlcValue::Udint(u)) => Raw::UInt(u64::from(*u)),
        (DataType::U64, PlcValue::Ulint(u)) => Raw::UInt(*u),
        (DataType::F32, PlcValue::Real(f)) => Raw::Float(widen_f32(*f)),
        (DataType::F64, PlcValue::Lreal(f)) => Raw::Float(*f),
        _ => return None,
    })
}

/// An integer word's bit pattern and width.
fn word_of(v: &PlcValue) -> Option<(u64, u32)> {
    Some(match v {
        PlcValue::Sint(i) => (u64::from(*i as u8), 8),
        PlcValue::Usint(u) => (u64::from(*u), 8),
        PlcValue::Int(i) => (u64::from(*i as u16), 16),
        PlcValue::Uint(u) => (u64::from(*u), 16),
        PlcValue::Dint(i) => (u64::from(*i as u32), 32),
        PlcValue::Udint(u) => (u64::from(*u), 32),
        PlcValue::Lint(i) => (*i as u64, 64),
        PlcValue::Ulint(u) => (*u, 64),
        _ => return None,
    })
}

/// Per-service errors: CIP general status codes per CIP Vol. 1 Appendix B.
fn classify(e: &BatchError) -> Problem {
    match e {
        BatchError::NetworkError(m) => Problem::Transport(format!("batch: {m}")),
        BatchError::Timeout => Problem::Transport("batch service timed out".into()),
        // 0x01 connection failure, 0x02 resource unavailable, 0x0C object state conflict,
        // 0x10 device state conflict: the controller's condition, not our config.
        BatchError::CipError { status, message } if matches!(status, 0x01 | 0x02 | 0x0C | 0x10) => {
            Problem::Busy(format!("CIP status 0x{status:02X}: {message}"))
        }
        BatchError::CipError { status, message } => {
            Problem::Refused(format!("CIP status 0x{status:02X}: {message}"))
        }
        BatchError::TagNotFound(m) => Problem::Refused(format!("tag not found: {m}")),
        BatchError::TagPathError(m) => Problem::Refused(format!("tag path: {m}")),
        BatchError::DataTypeMismatch { expected, actual } => Problem::TypeMismatch(format!(
            "controller type {actual} where {expected} was expected"
        )),
        other => Problem::Undecodable(other.to_string()),
    }
}

fn type_name(v: &PlcValue) -> &'static str {
    match v {
        PlcValue::Bool(_) => "BOOL",
        PlcValue::Sint(_) => "SINT",
        PlcValue::Int(_) => "INT",
        PlcValue::Dint(_) => "DINT",
        PlcValue::Lint(_) => "LINT",
        PlcValue::Usint(_) => "USINT",
        PlcValue::Uint(_) => "UINT",
        PlcValue::Udint(_) => "UDINT",
        PlcValue::Ulint(_) => "ULINT",
        PlcValue::Real(_) => "REAL",
        PlcValue::Lreal(_) => "LREAL",
        PlcValue::String(_) => "STRING",
        PlcValue::Udt(_) => "a structure (UDT)",
    }
}

fn logix_name(t: DataType) -> &'static str {
    match t {
        DataType::Bool => "bool",
        DataType::I8 => "sint",
        DataType::I16 => "int",
        DataType::I32 => "dint",
        DataType::I64 => "lint",
        DataType::U16 => "uint",
        DataType::U8 => "usint",
        DataType::U32 => "udint",
        DataType::U64 => "ulint",
        DataType::F32 => "real",
        DataType::F64 => "lreal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(data_type: DataType, count: u16) -> Signal {
        Signal {
            source: SignalSource::Tag { tag: "T".into() },
            data_type,
            count,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn answers(pairs: &[(&str, PlcValue)]) -> HashMap<String, Result<PlcValue, BatchError>> {
        pairs
            .iter()
            .map(|(t, v)| (t.to_string(), Ok(v.clone())))
            .collect()
    }

    #[test]
    fn an_array_signal_reads_each_element_in_the_batch() {
        assert_eq!(
            Access::of("Faults", DataType::I32, 2),
            Ok(Access::Elements {
                tags: vec!["Faults[0]".into(), "Faults[1]".into()]
            })
        );
        assert_eq!(
            Access::of("Program:Main.W[3]", DataType::I32, 2),
            Ok(Access::Elements {
                tags: vec!["Program:Main.W[3]".into(), "Program:Main.W[4]".into()]
            })
        );
        assert!(Access::of("M[1,2]", DataType::I32, 2).is_err());
        assert!(Access::of("Arr[4294967290]", DataType::I32, 10).is_err());
        assert!(Access::of("Arr[4294967290]", DataType::I32, 6).is_ok());
    }

    #[test]
    fn a_numbered_member_of_a_bool_signal_is_a_bit_of_its_word() {
        assert_eq!(
            Access::of("Faults[1].31", DataType::Bool, 1),
            Ok(Access::Bits {
                word: "Faults[1]".into(),
                bit: 31,
                count: 1
            })
        );
        // A named BOOL member is a tag like any other.
        assert_eq!(
            Access::of("Bagger.Running", DataType::Bool, 1),
            Ok(Access::Scalar {
                tag: "Bagger.Running".into()
            })
        );
        assert!(Access::of("W.64", DataType::Bool, 1).is_err());
    }

    #[test]
    fn bit_31_of_a_negative_dint_is_set() {
        let a = Access::of("Faults[1].31", DataType::Bool, 1).unwrap();
        let got = decode(
            &a,
            &signal(DataType::Bool, 1),
            &answers(&[("Faults[1]", PlcValue::Dint(i32::MIN))]),
        );
        assert_eq!(got, Ok(Value::Bool(true)));
    }

    #[test]
    fn a_bit_past_the_width_of_its_word_is_an_error_not_a_panic() {
        let a = Access::of("W.20", DataType::Bool, 1).unwrap();
        let got = decode(
            &a,
            &signal(DataType::Bool, 1),
            &answers(&[("W", PlcValue::Int(1))]),
        );
        assert!(matches!(got, Err(Problem::Undecodable(_))), "{got:?}");
    }

    #[test]
    fn a_real_where_a_dint_is_declared_is_a_type_mismatch_not_a_conversion() {
        let a = Access::of("Speed", DataType::I32, 1).unwrap();
        let got = decode(
            &a,
            &signal(DataType::I32, 1),
            &answers(&[("Speed", PlcValue::Real(87.5))]),
        );
        match got {
            Err(Problem::TypeMismatch(m)) => {
                assert!(m.contains("REAL") && m.contains("dint"), "{m}")
            }
            other => panic!("expected a type mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_real_reads_as_its_shortest_decimal_and_scales() {
        let a = Access::of("Speed", DataType::F32, 1).unwrap();
        let mut s = signal(DataType::F32, 1);
        assert_eq!(
            decode(&a, &s, &answers(&[("Speed", PlcValue::Real(1.1))])),
            Ok(Value::Float(1.1))
        );
        s.scale = 2.0;
        assert_eq!(
            decode(&a, &s, &answers(&[("Speed", PlcValue::Real(1.5))])),
            Ok(Value::Float(3.0))
        );
    }

    #[test]
    fn cip_statuses_split_into_config_problems_device_conditions_and_transport() {
        let cip = |status| BatchError::CipError {
            status,
            message: "x".into(),
        };
        assert!(matches!(classify(&cip(0x05)), Problem::Refused(_)));
        assert!(matches!(classify(&cip(0x04)), Problem::Refused(_)));
        assert!(matches!(classify(&cip(0x02)), Problem::Busy(_)));
        assert!(matches!(
            classify(&BatchError::NetworkError("reset".into())),
            Problem::Transport(_)
        ));
    }

    #[test]
    fn a_tag_missing_from_the_reply_is_a_transport_error() {
        let a = Access::of("X", DataType::I32, 1).unwrap();
        let got = decode(&a, &signal(DataType::I32, 1), &HashMap::new());
        assert!(matches!(got, Err(Problem::Transport(_))), "{got:?}");
    }
}
