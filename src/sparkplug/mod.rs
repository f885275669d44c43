//! Sparkplug B 3.0 (SPEC §8): the gateway as an Edge Node, each equipment a Device.
//!
//! - [`proto`]: the protobuf messages of Tahu's `sparkplug_b.proto`, written by hand for
//!   `prost` (no `protoc` at build time; why in its doc and docs/decisions.md "Sparkplug").
//! - [`codec`]: the one owner of Sparkplug framing (values, arrays, `is_null`,
//!   `is_historical`, the `quality` property, NDEATH, inbound commands).
//! - [`model`]: pure: the metric catalogue (names, datatypes, aliases) and the
//!   report-by-exception [`model::Recorder`] the store runs in each commit.
//! - [`session`]: the edge node's own MQTT connection: bdSeq, births, DDATA from the outbox's
//!   Sparkplug queue, the primary host, commands.
//! - [`host`]: the primary host's STATE messages (pure).
//!
//! Never: writes to a PLC (every DCMD/NCMD write is refused and counted), invents data (every
//! DDATA is a committed row; BIRTH values are the committed current values).

pub mod codec;
pub mod host;
pub mod model;
pub mod proto;
pub mod session;
