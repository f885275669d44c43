//! Sparkplug B framing: the one place a metric value becomes protobuf bytes, and inbound
//! NCMD/DCMD bytes become a [`Command`].
//!
//! ## Invariants (unit tests below; the interop test decodes with pysparkplug)
//! - Integers follow Sparkplug 3.0 §6.4.16: Int8/16/32 and UInt8/16/32 in `int_value`, signed
//!   ones as their two's complement at their own width; Int64/UInt64 in `long_value`.
//! - Arrays go in `bytes_value`, little-endian packed; a Boolean array is a 4-byte
//!   little-endian count followed by the bits, most significant bit first; a String array is
//!   NUL-terminated strings.
//! - A value that is JSON `null`, or that does not fit its datatype, is sent as `is_null`
//!   (never as a made-up 0).
//! - `quality` is an Int32 metric property: 192 good, 0 bad, 500 stale (the Ignition codes).

use prost::Message as _;
use serde_json::Value as Json;

use super::proto::{
    DataType, Metric, MetricValue, Payload, PropertySet, PropertyValue, PropertyValueValue,
};

/// The quality codes of the `quality` property (Ignition's numbers).
pub const QUALITY_GOOD: i32 = 192;
pub const QUALITY_BAD: i32 = 0;
pub const QUALITY_STALE: i32 = 500;

/// The name of the property carrying a metric's quality.
pub const QUALITY_PROPERTY: &str = "quality";

/// The metric a host writes to ask for a rebirth (NCMD).
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The NBIRTH/NDEATH metric carrying the session number.
pub const BD_SEQ: &str = "bdSeq";

/// One metric as it goes into a payload.
#[derive(Debug, Clone, Copy)]
pub struct Out<'a> {
    /// Sent in BIRTH only.
    pub name: Option<&'a str>,
    pub alias: Option<u64>,
    pub datatype: DataType,
    /// Sent in BIRTH only.
    pub with_datatype: bool,
    pub value: &'a Json,
    pub quality: Option<i32>,
    pub timestamp_ms: i64,
    pub historical: bool,
}

/// The protobuf metric of `m`.
pub fn metric(m: &Out<'_>) -> Metric {
    let value = encode(m.datatype, m.value);
    Metric {
        name: m.name.map(str::to_string),
        alias: m.alias,
        timestamp: Some(u64::try_from(m.timestamp_ms).unwrap_or(0)),
        datatype: m.with_datatype.then_some(m.datatype.code()),
        is_historical: m.historical.then_some(true),
        is_transient: None,
        is_null: value.is_none().then_some(true),
        properties: m.quality.map(quality),
        value,
    }
}

/// The `quality` property set.
pub fn quality(code: i32) -> PropertySet {
    PropertySet {
        keys: vec![QUALITY_PROPERTY.to_string()],
        values: vec![PropertyValue {
            r#type: Some(DataType::Int32.code()),
            is_null: None,
            value: Some(PropertyValueValue::IntValue(code as u32)),
        }],
    }
}

/// Encodes a payload.
pub fn payload(timestamp_ms: i64, seq: Option<u8>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(u64::try_from(timestamp_ms).unwrap_or(0)),
        metrics,
        seq: seq.map(u64::from),
        uuid: None,
    }
    .encode_to_vec()
}

/// The `bdSeq` metric (Int64), as NBIRTH and NDEATH carry it.
pub fn bd_seq_metric(bd_seq: u8, timestamp_ms: i64) -> Metric {
    metric(&Out {
        name: Some(BD_SEQ),
        alias: None,
        datatype: DataType::Int64,
        with_datatype: true,
        value: &Json::from(bd_seq),
        quality: None,
        timestamp_ms,
        historical: false,
    })
}

/// The NDEATH payload: `bdSeq` only, no `seq` (Sparkplug 3.0 §7.1).
pub fn ndeath(bd_seq: u8, timestamp_ms: i64) -> Vec<u8> {
    payload(
        timestamp_ms,
        None,
        vec![bd_seq_metric(bd_seq, timestamp_ms)],
    )
}

/// The value of `v` in datatype `dt`, or `None` (sent as `is_null`).
pub fn encode(dt: DataType, v: &Json) -> Option<MetricValue> {
    use DataType as D;
    if v.is_null() {
        return None;
    }
    Some(match dt {
        D::Boolean => MetricValue::BooleanValue(as_bool(v)?),
        D::Int8 => MetricValue::IntValue(u32::from(i8::try_from(v.as_i64()?).ok()? as u8)),
        D::Int16 => MetricValue::IntValue(u32::from(i16::try_from(v.as_i64()?).ok()? as u16)),
        D::Int32 => MetricValue::IntValue(i32::try_from(v.as_i64()?).ok()? as u32),
        D::Int64 => MetricValue::LongValue(v.as_i64()? as u64),
        D::UInt8 => MetricValue::IntValue(u32::from(u8::try_from(v.as_u64()?).ok()?)),
        D::UInt16 => MetricValue::IntValue(u32::from(u16::try_from(v.as_u64()?).ok()?)),
        D::UInt32 => MetricValue::IntValue(u32::try_from(v.as_u64()?).ok()?),
        D::UInt64 | D::DateTime => MetricValue::LongValue(v.as_u64()?),
        D::Float => MetricValue::FloatValue(v.as_f64()? as f32),
        D::Double => MetricValue::DoubleValue(v.as_f64()?),
        D::String | D::Text => MetricValue::StringValue(v.as_str()?.to_string()),
        array => MetricValue::BytesValue(encode_array(array, v.as_array()?)?),
    })
}

fn as_bool(v: &Json) -> Option<bool> {
    match v {
        Json::Bool(b) => Some(*b),
        Json::Number(n) => n.as_f64().map(|f| f != 0.0),
        _ => None,
    }
}

/// The packed bytes of an array value.
fn encode_array(dt: DataType, items: &[Json]) -> Option<Vec<u8>> {
    use DataType as D;
    let mut out = Vec::with_capacity(items.len() * 8);
    if dt == D::BooleanArray {
        let count = u32::try_from(items.len()).ok()?;
        out.extend_from_slice(&count.to_le_bytes());
        for chunk in items.chunks(8) {
            let mut byte = 0u8;
            for (i, item) in chunk.iter().enumerate() {
                if as_bool(item)? {
                    byte |= 0x80 >> i;
                }
            }
            out.push(byte);
        }
        return Some(out);
    }
    for item in items {
        match dt {
            D::Int8Array => out.extend(i8::try_from(item.as_i64()?).ok()?.to_le_bytes()),
            D::Int16Array => out.extend(i16::try_from(item.as_i64()?).ok()?.to_le_bytes()),
            D::Int32Array => out.extend(i32::try_from(item.as_i64()?).ok()?.to_le_bytes()),
            D::Int64Array => out.extend(item.as_i64()?.to_le_bytes()),
            D::UInt8Array => out.extend(u8::try_from(item.as_u64()?).ok()?.to_le_bytes()),
            D::UInt16Array => out.extend(u16::try_from(item.as_u64()?).ok()?.to_le_bytes()),
            D::UInt32Array => out.extend(u32::try_from(item.as_u64()?).ok()?.to_le_bytes()),
            D::UInt64Array => out.extend(item.as_u64()?.to_le_bytes()),
            D::FloatArray => out.extend((item.as_f64()? as f32).to_le_bytes()),
            D::DoubleArray => out.extend(item.as_f64()?.to_le_bytes()),
            D::StringArray => {
                out.extend_from_slice(item.as_str()?.as_bytes());
                out.push(0);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// What an inbound NCMD or DCMD asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `Node Control/Rebirth = true`.
    Rebirth,
    /// Anything that would write a value (refused: the gateway is read-only); the metric
    /// names (or `#alias`) asked for.
    Write(Vec<String>),
    /// `Node Control/Rebirth = false` only, or no metric at all: nothing to do.
    Nothing,
    /// Not a Sparkplug B payload.
    Undecodable,
}

/// Classifies an NCMD/DCMD payload. `node` is whether it came on the NCMD topic (a rebirth
/// is only honoured there).
pub fn command(bytes: &[u8], node: bool) -> Command {
    let Ok(p) = Payload::decode(bytes) else {
        return Command::Undecodable;
    };
    let mut rebirth = false;
    let mut writes = Vec::new();
    for m in &p.metrics {
        match (m.name.as_deref(), &m.value) {
            (Some(REBIRTH), Some(MetricValue::BooleanValue(b))) if node => rebirth |= *b,
            (Some(name), _) => writes.push(name.to_string()),
            (None, _) => writes.push(format!("#{}", m.alias.unwrap_or(0))),
        }
    }
    if !writes.is_empty() {
        Command::Write(writes)
    } else if rebirth {
        Command::Rebirth
    } else {
        Command::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signed_integers_are_twos_complement_at_their_width() {
        assert_eq!(
            encode(DataType::Int8, &json!(-1)),
            Some(MetricValue::IntValue(255))
        );
        assert_eq!(
            encode(DataType::Int16, &json!(-2)),
            Some(MetricValue::IntValue(65534))
        );
        assert_eq!(
            encode(DataType::Int32, &json!(-1)),
            Some(MetricValue::IntValue(u32::MAX))
        );
        assert_eq!(
            encode(DataType::Int64, &json!(-1)),
            Some(MetricValue::LongValue(u64::MAX))
        );
        assert_eq!(encode(DataType::UInt16, &json!(70000)), None, "overflow");
    }

    #[test]
    fn arrays_are_packed_little_endian() {
        assert_eq!(
            encode(DataType::UInt16Array, &json!([1, 258])),
            Some(MetricValue::BytesValue(vec![1, 0, 2, 1]))
        );
        assert_eq!(
            encode(DataType::BooleanArray, &json!([true, false, true])),
            Some(MetricValue::BytesValue(vec![3, 0, 0, 0, 0b1010_0000]))
        );
        assert_eq!(
            encode(DataType::StringArray, &json!(["a", "bc"])),
            Some(MetricValue::BytesValue(b"a\0bc\0".to_vec()))
        );
    }

    #[test]
    fn null_is_is_null_with_no_value() {
        let m = metric(&Out {
            name: Some("Signals/speed"),
            alias: Some(7),
            datatype: DataType::Double,
            with_datatype: true,
            value: &Json::Null,
            quality: Some(QUALITY_BAD),
            timestamp_ms: 5,
            historical: true,
        });
        assert_eq!(m.is_null, Some(true));
        assert!(m.value.is_none());
        assert_eq!(m.is_historical, Some(true));
        assert_eq!(m.properties.map(|p| p.keys), Some(vec!["quality".into()]));
    }

    #[test]
    fn only_a_true_rebirth_on_ncmd_is_honoured() {
        let cmd = |name: &str, v: MetricValue| {
            Payload {
                timestamp: Some(1),
                metrics: vec![Metric {
                    name: Some(name.into()),
                    value: Some(v),
                    ..Metric::default()
                }],
                seq: None,
                uuid: None,
            }
            .encode_to_vec()
        };
        let rebirth = cmd(REBIRTH, MetricValue::BooleanValue(true));
        assert_eq!(command(&rebirth, true), Command::Rebirth);
        assert_eq!(
            command(&rebirth, false),
            Command::Write(vec![REBIRTH.into()])
        );
        assert_eq!(
            command(&cmd("Signals/speed", MetricValue::DoubleValue(1.0)), false),
            Command::Write(vec!["Signals/speed".into()])
        );
        assert_eq!(command(b"\xff\xff\xff", true), Command::Undecodable);
    }
}
