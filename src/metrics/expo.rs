//! The Prometheus text exposition format 0.0.4 of the registry (SPEC §10).
//!
//! Why not the `prometheus-client` crate's encoder: it writes OpenMetrics 1.0 (a counter is
//! declared as `# TYPE ms5_edge_plc_polls counter` and sampled as `…_polls_total`, an info
//! metric as `# TYPE … info`, and the text ends in `# EOF`). A 0.0.4 parser, Prometheus's
//! own `promtool check metrics` or python's `text_string_to_metric_families`, then sees the
//! counters as untyped families without HELP. SPEC §10 asks for 0.0.4, whose writer is this
//! small: one `# HELP` and one `# TYPE` per family (always, even before the family has a
//! series), then `name{label="value",…} number` lines with label values escaped.
//!
//! Pure: the registry is read through its copying getters (each a short lock); the times are
//! arguments.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::health::{Registry, FAILURE_KINDS, FIGURES, LATENESS_BUCKETS_S, OEE_MAX_AGE, STATES};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family of SPEC §10: name, type, help. The order is the order of the exposition.
pub const FAMILIES: [(&str, &str, &str); 16] = [
    ("ms5_edge_plc_polls_total", "counter", "Polls made, per PLC (good and failed)."),
    ("ms5_edge_plc_poll_failures_total", "counter", "Failed polls, per PLC and kind (timeout, refused, exception, malformed, other)."),
    ("ms5_edge_plc_skipped_ticks_total", "counter", "Poll ticks skipped because a cycle overran its interval, per PLC."),
    ("ms5_edge_plc_lateness_seconds", "histogram", "How late each poll started after its scheduled tick, per PLC."),
    ("ms5_edge_plc_online", "gauge", "1 while the PLC's last poll succeeded, else 0."),
    ("ms5_edge_outbox_messages", "gauge", "Messages waiting in the outbox."),
    ("ms5_edge_outbox_oldest_age_seconds", "gauge", "Age of the oldest unsent outbox message; 0 when the outbox is empty."),
    ("ms5_edge_outbox_dropped_total", "counter", "Outbox messages given up, per class and reason (the drop ledger, since the database was created)."),
    ("ms5_edge_mqtt_connected", "gauge", "1 while connected to this broker (host:port), else 0."),
    ("ms5_edge_mqtt_published_total", "counter", "Outbox messages published (sent to the broker, not yet acknowledged)."),
    ("ms5_edge_mqtt_acknowledged_total", "counter", "Outbox messages the broker acknowledged (deleted from the outbox)."),
    ("ms5_edge_mqtt_refused_total", "counter", "Publishes the broker refused (MQTT 5 PUBACK reason >= 0x80), per reason."),
    ("ms5_edge_commands_total", "counter", "Inbound commands, per command and result (ok, refused, not_committed)."),
    ("ms5_edge_equipment_state", "gauge", "1 for the equipment's current state, 0 for the others."),
    ("ms5_edge_oee_ratio", "gauge", "Current-shift OEE figures per equipment (absent while null)."),
    ("ms5_edge_build_info", "gauge", "Always 1; the labels name the build."),
];

/// A label value, escaped for the exposition (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, i: usize) {
        let (name, kind, help) = FAMILIES[i];
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A float as the exposition writes it (`+Inf`, integers without a fraction).
fn num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// The whole exposition at `now` (monotonic, for the OEE gauges' age) and `now_ms` (wall, for
/// the outbox age).
pub fn render(reg: &Registry, now: Instant, now_ms: i64) -> String {
    let mut o = Out {
        text: String::with_capacity(8 * 1024),
    };
    let plcs = reg.plcs();

    o.family(0);
    for (plc, s) in &plcs {
        o.sample(FAMILIES[0].0, &[("plc", plc)], s.polls);
    }
    o.family(1);
    for (plc, s) in &plcs {
        for (k, n) in FAILURE_KINDS.iter().zip(s.failures) {
            o.sample(FAMILIES[1].0, &[("plc", plc), ("kind", k)], n);
        }
    }
    o.family(2);
    for (plc, s) in &plcs {
        o.sample(FAMILIES[2].0, &[("plc", plc)], s.skipped_ticks);
    }
    o.family(3);
    for (plc, s) in &plcs {
        let mut cumulative = 0;
        for (i, b) in LATENESS_BUCKETS_S.iter().enumerate() {
            cumulative += s.lateness_buckets[i];
            o.sample(
                "ms5_edge_plc_lateness_seconds_bucket",
                &[("plc", plc), ("le", &num(*b))],
                cumulative,
            );
        }
        o.sample(
            "ms5_edge_plc_lateness_seconds_bucket",
            &[("plc", plc), ("le", "+Inf")],
            s.lateness_count,
        );
        o.sample(
            "ms5_edge_plc_lateness_seconds_sum",
            &[("plc", plc)],
            num(s.lateness_sum_us as f64 / 1e6),
        );
        o.sample(
            "ms5_edge_plc_lateness_seconds_count",
            &[("plc", plc)],
            s.lateness_count,
        );
    }
    o.family(4);
    for (plc, s) in &plcs {
        o.sample(FAMILIES[4].0, &[("plc", plc)], u8::from(s.online));
    }

    let outbox = reg.outbox();
    o.family(5);
    o.sample(FAMILIES[5].0, &[], outbox.messages);
    o.family(6);
    o.sample(
        FAMILIES[6].0,
        &[],
        num(reg.outbox_oldest_age_ms(now_ms) as f64 / 1000.0),
    );
    o.family(7);
    for ((class, reason), n) in reg.dropped() {
        o.sample(FAMILIES[7].0, &[("class", class), ("reason", reason)], n);
    }

    o.family(8);
    for (broker, up) in reg.brokers() {
        o.sample(FAMILIES[8].0, &[("broker", &broker)], u8::from(up));
    }
    o.family(9);
    o.sample(FAMILIES[9].0, &[], reg.published.load(Ordering::Relaxed));
    o.family(10);
    o.sample(
        FAMILIES[10].0,
        &[],
        reg.acknowledged.load(Ordering::Relaxed),
    );
    o.family(11);
    for (reason, n) in reg.refused() {
        o.sample(FAMILIES[11].0, &[("reason", reason)], n);
    }
    o.family(12);
    for ((command, result), n) in reg.commands() {
        o.sample(
            FAMILIES[12].0,
            &[("command", command), ("result", result)],
            n,
        );
    }

    let equipment = reg.equipment();
    o.family(13);
    for (code, e) in &equipment {
        for s in STATES {
            o.sample(
                FAMILIES[13].0,
                &[("equipment", code), ("state", s.as_str())],
                u8::from(e.state == s),
            );
        }
    }
    o.family(14);
    for (code, e) in &equipment {
        let fresh = e
            .oee_at
            .is_some_and(|at| now.saturating_duration_since(at) <= OEE_MAX_AGE);
        if !fresh {
            continue;
        }
        for (figure, v) in FIGURES.iter().zip(e.oee) {
            if let Some(v) = v {
                o.sample(
                    FAMILIES[14].0,
                    &[("equipment", code), ("figure", figure)],
                    num(v),
                );
            }
        }
    }
    o.family(15);
    o.sample(
        FAMILIES[15].0,
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("MS5_GIT_COMMIT")),
        ],
        1,
    );
    if reg
        .sparkplug
        .configured
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        sparkplug(&mut o.text, &reg.sparkplug);
    }
    o.text
}

/// The Sparkplug families (SPEC §8), only with `[sparkplug]`.
fn sparkplug(text: &mut String, g: &crate::health::sparkplug::SparkplugGauge) {
    use std::sync::atomic::Ordering::Relaxed;
    let families: [(&str, &str, &str, u64); 4] = [
        (
            "ms5_edge_sparkplug_connected",
            "gauge",
            "1 while the Sparkplug edge node's MQTT connection is up.",
            u64::from(g.connected.load(Relaxed)),
        ),
        (
            "ms5_edge_sparkplug_bdseq",
            "gauge",
            "The bdSeq of the current Sparkplug session.",
            g.bd_seq.load(Relaxed),
        ),
        (
            "ms5_edge_sparkplug_ddata_total",
            "counter",
            "Sparkplug DDATA messages published (live and historical).",
            g.ddata.load(Relaxed),
        ),
        (
            "ms5_edge_sparkplug_commands_refused_total",
            "counter",
            "Sparkplug DCMD/NCMD writes refused (the gateway is read-only).",
            g.commands_refused.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        let _ = writeln!(text, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::events;

    #[test]
    fn every_family_is_declared_before_it_has_a_series() {
        let text = render(&Registry::default(), Instant::now(), 0);
        for (name, kind, _) in FAMILIES {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}\n{text}");
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        }
        assert!(
            text.contains("ms5_edge_outbox_oldest_age_seconds 0\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn the_lateness_histogram_is_cumulative_and_ends_with_inf() {
        let r = Registry::default();
        for us in [50, 2_000, 3_000_000] {
            events::PollCompleted {
                plc: "p",
                polls: 1,
                lateness_us: us,
            }
            .emit(&r);
        }
        let text = render(&r, Instant::now(), 0);
        assert!(
            text.contains("ms5_edge_plc_lateness_seconds_bucket{plc=\"p\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("ms5_edge_plc_lateness_seconds_bucket{plc=\"p\",le=\"0.0025\"} 2\n"));
        assert!(text.contains("ms5_edge_plc_lateness_seconds_bucket{plc=\"p\",le=\"2.5\"} 2\n"));
        assert!(text.contains("ms5_edge_plc_lateness_seconds_bucket{plc=\"p\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("ms5_edge_plc_lateness_seconds_count{plc=\"p\"} 3\n"));
    }

    #[test]
    fn oee_gauges_older_than_ten_seconds_are_not_exposed() {
        let r = Registry::default();
        let t0 = Instant::now();
        events::EquipmentObserved {
            equipment: "E1",
            state: crate::engine::MachineState::Running,
        }
        .emit(&r);
        events::OeeComputed {
            equipment: "E1",
            figures: [Some(0.5), None, Some(1.0), None],
            at: t0,
        }
        .emit(&r);
        let text = render(&r, t0, 0);
        assert!(
            text.contains("ms5_edge_oee_ratio{equipment=\"E1\",figure=\"availability\"} 0.5\n"),
            "{text}"
        );
        assert!(
            !text.contains("figure=\"performance\""),
            "null figures are absent"
        );
        let later = render(&r, t0 + std::time::Duration::from_secs(11), 0);
        assert!(!later.contains("ms5_edge_oee_ratio{"), "{later}");
        assert!(later.contains("ms5_edge_equipment_state{equipment=\"E1\",state=\"running\"} 1\n"));
        assert!(later.contains("ms5_edge_equipment_state{equipment=\"E1\",state=\"offline\"} 0\n"));
    }
}
