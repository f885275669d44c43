//! Samples: what one poll read, in the types both `acquire` and `engine` speak.
//!
//! This is the representation layer between the two. `acquire` decodes raw registers and tag
//! bytes into [`Value`]s with a [`Quality`] and hands over one [`EquipmentSample`] per
//! equipment; the engine never sees a register slice and never looks a signal up by name:
//! [`EngineSignals::read`] turns a sample, once, into typed engine signals — `running` as a
//! `bool`, `speed` as an `f64`, the counters as a [`Count`] that carries its declared type's
//! wrap point, the fault words as active bit numbers.
//!
//! Owns: the sample types and that one conversion. Never does: I/O, clocks, protocol
//! knowledge (that is `acquire`), OEE rules (that is `engine`); it imports neither.
//!
//! Invariants the tests defend:
//! - a typed engine signal is `Some` only for a `good` reading whose value converts; a `bad`
//!   or `stale` reading, or a missing one, is `None` (the engine then treats it as unread);
//! - fault bit n of word k is fault `width·k + n`, a word masked to its declared width (a
//!   negative DINT keeps its bit 31);
//! - the readings published as `telemetry` are the sample's own, unchanged (names, order,
//!   values, qualities).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{DataType, Signals};

/// A decoded engineering value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Array(Vec<Value>),
}

impl Value {
    /// Truthiness for `running`: a bool, or a non-zero number.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            Value::UInt(u) => Some(*u != 0),
            Value::Float(f) => Some(*f != 0.0),
            Value::Array(_) => None,
        }
    }

    /// Numeric view for rates and speeds.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Array(_) => None,
        }
    }

    /// Counter view: non-negative integers only (a float counter is truncated).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Bool(b) => Some(u64::from(*b)),
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::UInt(u) => Some(*u),
            Value::Float(f) if *f >= 0.0 && f.is_finite() => Some(*f as u64),
            _ => None,
        }
    }

    /// Fault words as a list of bit patterns (a scalar is a one-word list).
    ///
    /// A signed word is taken as its two's complement bit pattern: a Logix DINT fault word with
    /// bit 31 set is negative, and that bit must still read as set (the engine masks each word
    /// to its width).
    pub fn as_words(&self) -> Vec<u64> {
        match self {
            Value::Array(items) => items.iter().map(Value::word_bits).collect(),
            other => vec![other.word_bits()],
        }
    }

    fn word_bits(&self) -> u64 {
        match self {
            Value::Int(i) => *i as u64,
            other => other.as_u64().unwrap_or(0),
        }
    }
}

/// Signal quality, published beside each value (SPEC §4 telemetry); see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good,
    Bad,
    Stale,
}

/// One signal's value in one poll; `value` is `None` when the read failed.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalReading {
    pub value: Option<Value>,
    pub quality: Quality,
}

/// A signal's name as a sample carries it: shared with the poller's plan, so a poll of 100
/// signals copies 100 pointers, not 100 strings (allocating, comparing and freeing those
/// names was the largest user-space item of the 20-PLC profile; BENCHMARKS.md "Fourth
/// session").
pub type SignalName = std::sync::Arc<str>;

/// Every signal of one equipment, read in one poll, keyed by signal name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EquipmentSample {
    pub equipment: String,
    pub signals: BTreeMap<SignalName, SignalReading>,
}

/// How one equipment's engine signals are read: compiled once from its `[equipment.signals]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalLayout {
    /// Bit width of one fault word: 16 per register of the declared type (32 for a DINT).
    pub fault_word_width: u32,
    /// The largest value `good_count`'s declared type holds (its wrap point).
    pub good_max: u64,
    /// The largest value `reject_count`'s declared type holds; `u64::MAX` when not configured.
    pub reject_max: u64,
}

impl SignalLayout {
    /// The layout of `signals` as configured.
    pub fn of(signals: &Signals) -> SignalLayout {
        SignalLayout {
            fault_word_width: signals
                .faults
                .as_ref()
                .map(|s| u32::from(s.data_type.registers()) * 16)
                .unwrap_or(16),
            good_max: type_max(signals.good_count.data_type),
            reject_max: signals
                .reject_count
                .as_ref()
                .map(|s| type_max(s.data_type))
                .unwrap_or(u64::MAX),
        }
    }
}

/// The largest non-negative value a declared type holds: where its counter wraps.
fn type_max(t: DataType) -> u64 {
    match t {
        DataType::Bool => 1,
        DataType::I8 => i8::MAX as u64,
        DataType::U8 => u8::MAX as u64,
        DataType::U16 => u16::MAX as u64,
        DataType::I16 => i16::MAX as u64,
        DataType::U32 => u32::MAX as u64,
        DataType::I32 => i32::MAX as u64,
        DataType::U64 | DataType::F32 | DataType::F64 => u64::MAX,
        DataType::I64 => i64::MAX as u64,
    }
}

/// One counter reading and the wrap point of its declared type (see `engine::counter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub value: u64,
    pub max: u64,
}

/// The engine signals of one sample, typed. Each is `None` when this poll has no good reading
/// of it (not configured, `bad`, `stale`, or a value of a kind that does not convert).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSignals<'a> {
    /// Truthiness of `running`: a bool, or a non-zero number.
    pub running: Option<bool>,
    pub speed: Option<f64>,
    pub good_count: Option<Count>,
    pub reject_count: Option<Count>,
    /// Active fault bit numbers, every configured word masked to its width (configured or not
    /// in the fault table: the engine filters).
    pub faults: Option<Vec<u32>>,
    /// Every signal as read, engine signals included, keyed (and so ordered) by name. Only the
    /// `telemetry` event reads it, and publishes it unchanged; no rule looks into it.
    pub telemetry: &'a BTreeMap<SignalName, SignalReading>,
}

impl<'a> EngineSignals<'a> {
    /// Reads the engine signals of `sample` laid out as `layout`.
    pub fn read(sample: &'a EquipmentSample, layout: &SignalLayout) -> EngineSignals<'a> {
        let good = |name: &str| {
            sample
                .signals
                .get(name)
                .filter(|r| r.quality == Quality::Good)
                .and_then(|r| r.value.as_ref())
        };
        let count = |name: &str, max: u64| {
            good(name)
                .and_then(Value::as_u64)
                .map(|value| Count { value, max })
        };
        EngineSignals {
            running: good("running").and_then(Value::as_bool),
            speed: good("speed").and_then(Value::as_f64),
            good_count: count("good_count", layout.good_max),
            reject_count: count("reject_count", layout.reject_max),
            faults: good("faults").map(|v| active_bits(&v.as_words(), layout.fault_word_width)),
            telemetry: &sample.signals,
        }
    }
}

/// Active fault bit numbers in fault words (bit n of word k is fault `width·k + n`).
pub fn active_bits(words: &[u64], width: u32) -> Vec<u32> {
    let mut bits = Vec::new();
    for (k, word) in words.iter().enumerate() {
        for n in 0..width.min(64) {
            if word >> n & 1 == 1 {
                bits.push(k as u32 * width + n);
            }
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(value: Value, quality: Quality) -> SignalReading {
        SignalReading {
            value: Some(value),
            quality,
        }
    }

    fn sample(signals: &[(&str, SignalReading)]) -> EquipmentSample {
        EquipmentSample {
            equipment: "bagger".into(),
            signals: signals
                .iter()
                .map(|(n, r)| ((*n).into(), r.clone()))
                .collect(),
        }
    }

    const LAYOUT: SignalLayout = SignalLayout {
        fault_word_width: 16,
        good_max: u16::MAX as u64,
        reject_max: u64::MAX,
    };

    #[test]
    fn a_negative_dint_fault_word_keeps_its_bit_31() {
        let words = Value::Array(vec![Value::Int(5), Value::Int(i64::from(i32::MIN))]).as_words();
        assert_eq!(words[0], 5);
        assert_eq!(words[1] & 0xFFFF_FFFF, 0x8000_0000);
    }

    #[test]
    fn only_good_readings_become_engine_signals() {
        let s = sample(&[
            ("running", reading(Value::Bool(true), Quality::Bad)),
            ("speed", reading(Value::Float(80.0), Quality::Stale)),
            ("good_count", reading(Value::UInt(7), Quality::Good)),
        ]);
        let e = EngineSignals::read(&s, &LAYOUT);
        assert_eq!(e.running, None);
        assert_eq!(e.speed, None);
        assert_eq!(
            e.good_count,
            Some(Count {
                value: 7,
                max: 65_535
            })
        );
        assert_eq!(e.reject_count, None);
        assert_eq!(e.faults, None);
    }

    #[test]
    fn a_numeric_running_signal_is_running_when_non_zero() {
        let s = sample(&[("running", reading(Value::UInt(2), Quality::Good))]);
        assert_eq!(EngineSignals::read(&s, &LAYOUT).running, Some(true));
    }

    #[test]
    fn fault_bits_of_the_second_word_are_numbered_after_the_first_word() {
        let words = Value::Array(vec![Value::UInt(0b1), Value::UInt(0x1_0004)]);
        let s = sample(&[("faults", reading(words, Quality::Good))]);
        // Bit 16 of the second word lies outside a 16-bit word and is masked away.
        assert_eq!(EngineSignals::read(&s, &LAYOUT).faults, Some(vec![0, 18]));
    }

    #[test]
    fn counters_carry_the_wrap_point_of_their_declared_type() {
        let mut signals = crate::config::Signals {
            running: signal(DataType::Bool),
            speed: None,
            good_count: signal(DataType::U32),
            reject_count: Some(signal(DataType::I16)),
            faults: Some(signal(DataType::I32)),
            extra: Vec::new(),
        };
        let layout = SignalLayout::of(&signals);
        assert_eq!(layout.good_max, u64::from(u32::MAX));
        assert_eq!(layout.reject_max, i16::MAX as u64);
        assert_eq!(layout.fault_word_width, 32);
        signals.reject_count = None;
        signals.faults = None;
        let layout = SignalLayout::of(&signals);
        assert_eq!((layout.reject_max, layout.fault_word_width), (u64::MAX, 16));
    }

    #[test]
    fn telemetry_is_the_sample_s_own_readings() {
        let s = sample(&[
            ("zeta", reading(Value::Int(-1), Quality::Good)),
            ("running", reading(Value::UInt(1), Quality::Good)),
        ]);
        let e = EngineSignals::read(&s, &LAYOUT);
        assert!(std::ptr::eq(e.telemetry, &s.signals));
    }

    fn signal(data_type: DataType) -> crate::config::Signal {
        crate::config::Signal {
            source: crate::config::SignalSource::Modbus {
                address: crate::config::ModbusAddress::HoldingRegister(0),
                byte_order: crate::config::ByteOrder::default(),
            },
            data_type,
            count: 1,
            scale: 1.0,
            offset: 0.0,
        }
    }
}
