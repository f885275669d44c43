//! Production context per equipment (SPEC §3): what is being made, by whom, in which shift.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::clock::rfc3339_ms;

/// Changeover status values.
pub const CHANGEOVER_STATUSES: [&str; 4] = ["none", "in_progress", "completed", "failed"];

/// The context fields of SPEC §3. Times are UTC epoch ms.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Context {
    pub job_id: Option<String>,
    pub schedule_id: Option<String>,
    pub product_type_id: Option<String>,
    pub line_id: String,
    pub shift: Option<String>,
    pub operator: Option<String>,
    pub target_speed: Option<f64>,
    pub target_quantity: Option<u64>,
    pub actual_quantity: u64,
    pub production_efficiency: Option<f64>,
    pub quality_rate: Option<f64>,
    pub changeover_status: String,
    pub changeover_start_time: Option<i64>,
    pub changeover_end_time: Option<i64>,
    pub last_production_update: Option<i64>,
    /// Running hours since the last maintenance (SPEC §11), filled in when published.
    #[serde(default)]
    pub run_hours_since_maintenance: Option<f64>,
    /// When the next maintenance is estimated to fall due (UTC epoch ms), when published.
    #[serde(default)]
    pub next_maintenance_due: Option<i64>,
}

impl Context {
    /// A fresh context for an equipment of `line_id`.
    pub fn new(line_id: &str) -> Self {
        Context {
            line_id: line_id.to_string(),
            changeover_status: "none".into(),
            ..Context::default()
        }
    }

    /// The published form: every field, times as RFC 3339.
    pub fn to_json(&self) -> Json {
        json!({
            "job_id": self.job_id,
            "schedule_id": self.schedule_id,
            "product_type_id": self.product_type_id,
            "line_id": self.line_id,
            "shift": self.shift,
            "operator": self.operator,
            "target_speed": self.target_speed,
            "target_quantity": self.target_quantity,
            "actual_quantity": self.actual_quantity,
            "production_efficiency": self.production_efficiency,
            "quality_rate": self.quality_rate,
            "changeover_status": self.changeover_status,
            "changeover_start_time": self.changeover_start_time.map(rfc3339_ms),
            "changeover_end_time": self.changeover_end_time.map(rfc3339_ms),
            "last_production_update": self.last_production_update.map(rfc3339_ms),
            "run_hours_since_maintenance": self.run_hours_since_maintenance,
            "next_maintenance_due": self.next_maintenance_due.map(rfc3339_ms),
        })
    }
}
