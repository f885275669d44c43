//! The primary host's `spBv1.0/STATE/{host}` messages (Sparkplug 3.0 §7.2, SPEC §8
//! "Primary host"): retained JSON `{"online": bool, "timestamp": ms}`.
//!
//! Pure. Invariants (unit tests): a message whose timestamp is older than the last one seen
//! changes nothing (a stale offline — e.g. a retained death overtaken by a birth — is
//! ignored); an equal timestamp counts (SPEC: "a timestamp ≥ the last one seen"); a payload
//! that is not that JSON changes nothing.

/// What the node knows of its primary host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostState {
    /// `None` until a STATE message was seen.
    pub online: Option<bool>,
    pub timestamp: i64,
}

impl HostState {
    /// Applies a STATE payload; returns whether `online` changed.
    pub fn apply(&mut self, payload: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return false;
        };
        let (Some(online), Some(ts)) = (
            v.get("online").and_then(serde_json::Value::as_bool),
            v.get("timestamp").and_then(serde_json::Value::as_i64),
        ) else {
            return false;
        };
        if self.online.is_some() && ts < self.timestamp {
            return false;
        }
        self.timestamp = ts;
        let changed = self.online != Some(online);
        self.online = Some(online);
        changed
    }

    /// Whether births may go out.
    pub fn is_online(&self) -> bool {
        self.online == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_offline_is_ignored_and_a_newer_one_counts() {
        let mut h = HostState::default();
        assert!(!h.is_online());
        assert!(h.apply(br#"{"online":true,"timestamp":100}"#));
        assert!(!h.apply(br#"{"online":false,"timestamp":99}"#), "stale");
        assert!(h.is_online());
        assert!(
            h.apply(br#"{"online":false,"timestamp":100}"#),
            "equal counts"
        );
        assert!(!h.is_online());
        assert!(!h.apply(b"not json"));
        assert!(!h.apply(br#"{"online":true}"#));
    }
}
