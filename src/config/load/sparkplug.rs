//! `[sparkplug]` (SPEC §8): the gateway as a Sparkplug B edge node.
//!
//! Owns the checks of `group_id`, `edge_node_id` and `primary_host_id` (each
//! `[A-Za-z0-9._-]{1,64}`: they are MQTT topic levels, so no `/`, `+`, `#`) and `cloudevents`.
//! Never connects anywhere.
//!
//! ## Decisions where SPEC §8 leaves a choice
//!
//! - The section needs `[mqtt]`: Sparkplug runs on the same broker (its own connection), so
//!   a `[sparkplug]` without `[mqtt]` is an error at the section's header.
//! - `edge_node_id` defaults to `gateway.id`, which must then fit the same alphabet (it
//!   always does: `gateway.id` is checked with it).
//! - `cloudevents = false` with `[commands]` keys is fine: commands then arrive over the
//!   Sparkplug connection (`P/cmd/#`).

use super::super::Sparkplug;
use super::syntax::check_name;
use super::walk::{Need, Table};
use super::Compiler;

/// What the Sparkplug connection appends to `[mqtt] client_id` (SPEC §8 "Connections").
const SUFFIX: &str = "-spb";

impl Compiler<'_, '_> {
    pub(super) fn sparkplug(
        &mut self,
        t: &Table<'_, '_>,
        gateway_id: &str,
        client_id: Option<&str>,
    ) -> Option<Sparkplug> {
        let has_mqtt = client_id.is_some();
        self.cx.known_keys(
            t,
            &["group_id", "edge_node_id", "primary_host_id", "cloudevents"],
        );
        if !has_mqtt {
            self.cx.error_hint(
                &t.span,
                &t.path,
                "[sparkplug] needs an [mqtt] section: Sparkplug uses the same broker",
                Some("add [mqtt] with the broker's url, or remove [sparkplug]".into()),
            );
        }
        let group_id = self.name(t, "group_id", true);
        let edge_node_id = if t.has("edge_node_id") {
            self.name(t, "edge_node_id", true)
        } else {
            check_name(gateway_id, true)
                .ok()
                .map(|()| gateway_id.to_string())
        };
        let primary_host_id = if t.has("primary_host_id") {
            Some(self.name(t, "primary_host_id", true)?)
        } else {
            None
        };
        let cloudevents = self
            .cx
            .bool_(t, "cloudevents", Need::Optional)
            .unwrap_or(true);
        if let Some(id) = client_id.filter(|id| id.len() + SUFFIX.len() > 128) {
            self.cx.error_hint(
                &t.span,
                &t.path,
                format!(
                    "the Sparkplug connection's client id \"{id}{SUFFIX}\" would be longer than 128 bytes"
                ),
                Some(format!(
                    "shorten [mqtt] client_id to at most {} bytes",
                    128 - SUFFIX.len()
                )),
            );
        }
        if !has_mqtt {
            return None;
        }
        Some(Sparkplug {
            group_id: group_id?,
            edge_node_id: edge_node_id?,
            primary_host_id,
            cloudevents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, loaded, with};

    const MQTT: &str = "\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";

    #[test]
    fn the_edge_node_defaults_to_the_gateway_id_and_cloudevents_stay_on() {
        let c = loaded(&with(&format!(
            "{MQTT}\n[sparkplug]\ngroup_id = \"BP01\"\n"
        )))
        .config;
        let s = c.sparkplug.clone().expect("a sparkplug section");
        assert_eq!(s.group_id, "BP01");
        assert_eq!(s.edge_node_id, "gw1");
        assert_eq!(s.primary_host_id, None);
        assert!(s.cloudevents);
        assert!(c.cloudevents());
    }

    #[test]
    fn cloudevents_false_turns_the_cloudevents_connection_off() {
        let c = loaded(&with(&format!(
            "{MQTT}\n[sparkplug]\ngroup_id = \"BP01\"\nedge_node_id = \"bp01-gw1\"\n\
             primary_host_id = \"ignition-1\"\ncloudevents = false\n"
        )))
        .config;
        assert!(!c.cloudevents());
        let s = c.sparkplug.expect("section");
        assert_eq!(s.primary_host_id.as_deref(), Some("ignition-1"));
        assert_eq!(s.edge_node_id, "bp01-gw1");
    }

    #[test]
    fn group_id_is_required_and_topic_safe() {
        error_at(
            &with(&format!("{MQTT}\n[sparkplug]\n")),
            "sparkplug.group_id",
        );
        let e = error_at(
            &with(&format!("{MQTT}\n[sparkplug]\ngroup_id = \"a/b\"\n")),
            "sparkplug.group_id",
        );
        assert!(e.hint.is_some(), "{e}");
        error_at(
            &with(&format!(
                "{MQTT}\n[sparkplug]\ngroup_id = \"g\"\nedge_node_id = \"n+1\"\n"
            )),
            "sparkplug.edge_node_id",
        );
        error_at(
            &with(&format!(
                "{MQTT}\n[sparkplug]\ngroup_id = \"g\"\nprimary_host_id = \"\"\n"
            )),
            "sparkplug.primary_host_id",
        );
    }

    #[test]
    fn sparkplug_without_mqtt_is_refused_at_the_header() {
        let e = error_at(&with("\n[sparkplug]\ngroup_id = \"BP01\"\n"), "sparkplug");
        assert!(e.message.contains("[mqtt]"), "{e}");
    }

    #[test]
    fn the_client_id_leaves_room_for_the_sparkplug_suffix() {
        let id = "a".repeat(125);
        let text = with(&format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"{id}\"\n\n[sparkplug]\ngroup_id = \"BP01\"\n"
        ));
        let e = error_at(&text, "sparkplug");
        assert!(e.message.contains("longer than 128 bytes"), "{e}");
        assert!(
            e.hint.as_deref().is_some_and(|h| h.contains("at most 124")),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_key_gets_a_did_you_mean() {
        let e = error_at(
            &with(&format!(
                "{MQTT}\n[sparkplug]\ngroup_id = \"g\"\ncloudevent = true\n"
            )),
            "sparkplug.cloudevent",
        );
        assert!(
            e.hint.as_deref().unwrap_or("").contains("cloudevents"),
            "{e}"
        );
    }
}
