//! CloudEvents 1.0 framing (SPEC §4): the one place an event becomes the JSON a consumer reads.
//!
//! ## Design constraints
//! - **One owner.** Outbox rows (with `stream` and `seq`) and live QoS 0 telemetry (without
//!   them: SPEC §4, a `seq` gap must always mean loss) are framed here and nowhere else, so the
//!   two can never drift apart.
//! - **Byte-for-byte stable.** The envelope is rebuilt from the stored row on every resend; the
//!   same row always gives the same bytes, `id` and `seq` included, so a duplicate after a
//!   reconnect is identical to the original.
//! - **`data` is never re-parsed.** It is stored as JSON text and embedded raw.
//! - Never fails: a row whose `data` is not JSON (a corrupt row) is framed with `data: null`
//!   rather than dropped silently; the row's id and seq still tell the consumer what it was.

use serde::Serialize;

use crate::clock::rfc3339_ms;

/// What identifies one event on the wire besides its data.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub id: &'a str,
    /// Without the `ms5.` prefix: `state.changed`, `telemetry`, …
    pub event_type: &'a str,
    pub time_ms: i64,
    pub equipment: Option<&'a str>,
    /// JSON text of `data`.
    pub data: &'a str,
}

/// Where a message stands in the gateway's numbered stream; `None` for live telemetry.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub stream: &'a str,
    pub seq: i64,
}

/// Bytes the envelope adds around `data` and the type, at most (ids, times, stream, seq at
/// their widest, a 64-character gateway id and equipment code). Used for size bounds.
pub const ENVELOPE_OVERHEAD: usize = 420;

/// The CloudEvents JSON text of one event.
pub fn frame(gateway_id: &str, position: Option<Position<'_>>, e: &Event<'_>) -> String {
    #[derive(Serialize)]
    struct Envelope<'a> {
        specversion: &'static str,
        id: &'a str,
        source: String,
        #[serde(rename = "type")]
        event_type: String,
        time: String,
        datacontenttype: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        equipment: Option<&'a str>,
        data: Box<serde_json::value::RawValue>,
    }
    let data = serde_json::value::RawValue::from_string(e.data.to_string())
        .or_else(|_| serde_json::value::RawValue::from_string("null".into()));
    let Ok(data) = data else {
        return String::new();
    };
    let env = Envelope {
        specversion: "1.0",
        id: e.id,
        source: format!("ms5-edge/{gateway_id}"),
        event_type: format!("ms5.{}", e.event_type.trim_start_matches("ms5.")),
        time: rfc3339_ms(e.time_ms),
        datacontenttype: "application/json",
        stream: position.map(|p| p.stream),
        seq: position.map(|p| p.seq),
        equipment: e.equipment,
        data,
    };
    serde_json::to_string(&env).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event<'_> {
        Event {
            id: "0193-a",
            event_type: "state.changed",
            time_ms: 1_764_000_000_120,
            equipment: Some("BP01.PACK.BAG1"),
            data,
        }
    }

    #[test]
    fn an_outbox_message_carries_stream_and_seq_and_the_ms5_type() {
        let text = frame(
            "gw",
            Some(Position {
                stream: "s-1",
                seq: 7,
            }),
            &event(r#"{"from":"running","to":"stopped"}"#),
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "ms5.state.changed");
        assert_eq!(v["source"], "ms5-edge/gw");
        assert_eq!(v["stream"], "s-1");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["time"], "2025-11-24T16:00:00.120Z");
        assert_eq!(v["data"]["to"], "stopped");
    }

    #[test]
    fn live_telemetry_carries_no_seq_so_a_gap_always_means_loss() {
        let text = frame("gw", None, &event("{}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v.get("seq").is_none());
        assert!(v.get("stream").is_none());
    }

    #[test]
    fn the_same_row_frames_to_the_same_bytes() {
        let p = Some(Position {
            stream: "s",
            seq: 1,
        });
        assert_eq!(
            frame("gw", p, &event(r#"{"a":1}"#)),
            frame("gw", p, &event(r#"{"a":1}"#))
        );
    }

    #[test]
    fn corrupt_data_is_framed_as_null_not_dropped() {
        let v: serde_json::Value =
            serde_json::from_str(&frame("gw", None, &event("{not json"))).unwrap();
        assert!(v["data"].is_null());
        assert_eq!(v["id"], "0193-a");
    }

    #[test]
    fn the_overhead_bound_holds_at_the_widest_fields() {
        let wide = "x".repeat(64);
        let e = Event {
            id: "01936f4e-0000-7000-8000-000000000000",
            event_type: "downtime.reason_set",
            time_ms: 253_402_300_799_999,
            equipment: Some(&wide),
            data: "",
        };
        let text = frame(
            &wide,
            Some(Position {
                stream: "6f1c0000-0000-4000-8000-000000000000",
                seq: i64::MAX,
            }),
            &e,
        );
        assert!(text.len() <= ENVELOPE_OVERHEAD, "{}", text.len());
    }
}
