//! The Sparkplug session's numbers in the registry (SPEC §8: refused DCMD/NCMD counted in
//! `status`, `P/status` and the metrics). Written by [`crate::sparkplug::session`] only.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Sparkplug counters and gauges.
#[derive(Debug, Default)]
pub struct SparkplugGauge {
    /// A `[sparkplug]` section is configured (the section is shown only then).
    pub configured: AtomicBool,
    pub connected: AtomicBool,
    /// The `bdSeq` of the current (or last) session.
    pub bd_seq: AtomicU64,
    /// The primary host: 1 online, 0 offline, -1 unknown or none configured.
    pub host_online: AtomicI64,
    /// NBIRTHs published (first births and rebirths).
    pub births: AtomicU64,
    pub rebirths: AtomicU64,
    /// DDATA published (live and historical).
    pub ddata: AtomicU64,
    /// Stored rows the broker provably read and that were deleted.
    pub delivered: AtomicU64,
    /// DCMD/NCMD that asked to write something: refused, never applied.
    pub commands_refused: AtomicU64,
    /// Notified (one stored permit) when a counter `P/status` shows changed outside the
    /// core's view: the CloudEvents uplink then republishes `P/status` at once instead of at
    /// its next 60 s refresh.
    pub changed: tokio::sync::Notify,
}

impl SparkplugGauge {
    /// The `sparkplug` member of the uplink health (`P/status`, `status`).
    pub fn json(&self) -> serde_json::Value {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "connected": self.connected.load(Ordering::Relaxed),
            "bd_seq": r(&self.bd_seq),
            "host_online": match self.host_online.load(Ordering::Relaxed) {
                1 => serde_json::json!(true),
                0 => serde_json::json!(false),
                _ => serde_json::Value::Null,
            },
            "births": r(&self.births),
            "rebirths": r(&self.rebirths),
            "ddata": r(&self.ddata),
            "delivered": r(&self.delivered),
            "commands_refused": r(&self.commands_refused),
        })
    }
}
