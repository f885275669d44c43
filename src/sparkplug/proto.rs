//! The Sparkplug B payload (`sparkplug_b.proto` of Eclipse Tahu, package
//! `org.eclipse.tahu.protobuf`), as `prost` messages written by hand from the `.proto`.
//!
//! Why hand-written instead of `prost-build` in `build.rs`: the schema is frozen (Sparkplug 3.0
//! kept the 2.2 protobuf), we need a subset of it, and generating it at build time would make
//! every build (the aarch64 cross build included) need `protoc`. The field numbers and types
//! below are the `.proto`'s, one for one; what is left out — `DataSet`, `Template`,
//! `MetaData`, `PropertySetList`, the extension values, `Payload.body` — is never sent, and
//! when a host sends it to us prost skips it as an unknown field (the interop test decodes
//! what we send with an independent implementation built from the same `.proto`).
//!
//! Owns the wire structs only; building payloads is [`super::codec`].

/// `Payload` (proto2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the epoch, when the message was sent.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0..=255 per session; absent in NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// In BIRTH (and in NDEATH's `bdSeq`, commands); never in DATA.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] code; in BIRTH only.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    /// Bytes, File and the array types.
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

/// `Payload.PropertySet`: `keys[i]` names `values[i]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertyValue` (without the nested property sets, which we never send).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyValueValue", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyValueValue>,
}

/// `Payload.PropertyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueValue {
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    #[prost(float, tag = "5")]
    FloatValue(f32),
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    #[prost(string, tag = "8")]
    StringValue(String),
}

/// The Sparkplug B datatype codes (the `.proto`'s comment block and Sparkplug 3.0 §6.4.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DataType {
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
    Int8Array = 22,
    Int16Array = 23,
    Int32Array = 24,
    Int64Array = 25,
    UInt8Array = 26,
    UInt16Array = 27,
    UInt32Array = 28,
    UInt64Array = 29,
    FloatArray = 30,
    DoubleArray = 31,
    BooleanArray = 32,
    StringArray = 33,
}

impl DataType {
    /// The code on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The array type of a scalar type (`None` for the array types and Text/DateTime).
    pub fn array_of(self) -> Option<DataType> {
        use DataType as D;
        Some(match self {
            D::Int8 => D::Int8Array,
            D::Int16 => D::Int16Array,
            D::Int32 => D::Int32Array,
            D::Int64 => D::Int64Array,
            D::UInt8 => D::UInt8Array,
            D::UInt16 => D::UInt16Array,
            D::UInt32 => D::UInt32Array,
            D::UInt64 => D::UInt64Array,
            D::Float => D::FloatArray,
            D::Double => D::DoubleArray,
            D::Boolean => D::BooleanArray,
            D::String => D::StringArray,
            _ => return None,
        })
    }
}
