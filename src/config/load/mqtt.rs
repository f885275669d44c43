//! `[mqtt]`: the broker connection, its failover brokers and the limits of the session.
//!
//! Owns the URL and TLS checks, `client_id` and `topic_prefix` syntax, the protocol version
//! and the packet and reconnect limits. Never opens a connection or a socket: secret and
//! certificate files are only checked for readability (a warning, see
//! [`Loaded::warnings`](super::Loaded::warnings)).
//!
//! ## Decisions where SPEC §2 leaves a choice
//!
//! - `ca_file` and client certificates require an `mqtts://` URL (silently talking plain TCP
//!   when the engineer asked for TLS would be worse than refusing); `client_cert_file` and
//!   `client_key_file` come together.
//! - `failover_urls` are tried in order after `url`, with the same TLS settings.
//! - `protocol` is 5 (default) or 3; MQTT 3.1.1 is a *notice* (a broker that refuses a
//!   publish still acknowledges it), as is a `password_file` over `mqtt://`.
//! - Ranges: `keep_alive_s` 1..=65535 (0 would switch keep-alive off and a dead broker
//!   connection would go unnoticed); `max_inflight` 1..=65535 (the MQTT packet-id space;
//!   memory, not the protocol, is the practical bound); `max_packet_kb` 1..=65536 (default
//!   256); `reconnect_max_s` 1..=600 (default 5); `return_to_primary_s` 0..=86400 (default 300).
//! - `client_id` defaults to `ms5-edge-` + `gateway.id`, `topic_prefix` to `ms5/` +
//!   `gateway.id`; a prefix has no wildcards, no trailing `/`, no leading `$`.

use super::super::{Mqtt, MqttProtocol, MqttUrl};
use super::syntax::parse_mqtt_url;
use super::walk::{Need, Table};
use super::Compiler;

impl Compiler<'_, '_> {
    pub(super) fn mqtt(&mut self, t: &Table<'_, '_>, gateway_id: &str) -> Option<Mqtt> {
        self.cx.known_keys(
            t,
            &[
                "url",
                "client_id",
                "topic_prefix",
                "username",
                "password_file",
                "ca_file",
                "client_cert_file",
                "client_key_file",
                "keep_alive_s",
                "max_inflight",
                "failover_urls",
                "protocol",
                "max_packet_kb",
                "reconnect_max_s",
                "return_to_primary_s",
            ],
        );
        let url = self
            .cx
            .str_(t, "url", Need::Required)
            .and_then(|s| match parse_mqtt_url(&s) {
                Ok(u) => Some(u),
                Err(p) => {
                    self.problem(&t.span_of("url"), &t.path_of("url"), p);
                    None
                }
            });
        let client_id = match self.cx.text(t, "client_id", Need::Optional) {
            None => format!("ms5-edge-{gateway_id}"),
            Some(id) => {
                let ok = id.len() <= 128
                    && !id.is_empty()
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    self.cx.error_hint(
                        &t.span_of("client_id"),
                        &t.path_of("client_id"),
                        format!(
                            "client_id \"{id}\" must be 1 to 128 bytes of A-Z a-z 0-9 . _ - \
                             ({} bytes given)",
                            id.len()
                        ),
                        Some("leave it out for the default \"ms5-edge-\" + gateway.id".into()),
                    );
                }
                id
            }
        };
        let failover_urls = self.failover_urls(t);
        let protocol = match self.cx.int(t, "protocol", Need::Optional, 3..=5) {
            None | Some(5) => MqttProtocol::V5,
            Some(3) => {
                self.cx.notice(
                    &t.span_of("protocol"),
                    &t.path_of("protocol"),
                    "with MQTT 3.1.1 a broker that refuses a publish (ACL, quota) still \
                     acknowledges it: refused events are indistinguishable from deliveries",
                    Some("use protocol = 5 unless the broker is too old for MQTT 5".into()),
                );
                MqttProtocol::V311
            }
            Some(_) => {
                self.cx.error_hint(
                    &t.span_of("protocol"),
                    &t.path_of("protocol"),
                    "protocol must be 5 (MQTT 5.0) or 3 (MQTT 3.1.1)",
                    None,
                );
                MqttProtocol::V5
            }
        };
        let max_packet_kb = self
            .cx
            .int(t, "max_packet_kb", Need::Optional, 1..=65536)
            .unwrap_or(256) as u32;
        let reconnect_max_s = self
            .cx
            .int(t, "reconnect_max_s", Need::Optional, 1..=600)
            .unwrap_or(5) as u64;
        let return_to_primary_s = self
            .cx
            .int(t, "return_to_primary_s", Need::Optional, 0..=86400)
            .unwrap_or(300) as u64;
        let topic_prefix = match self.cx.text(t, "topic_prefix", Need::Optional) {
            None => format!("ms5/{gateway_id}"),
            Some(p) => {
                let why = if p.contains(['+', '#']) {
                    Some("must not contain the MQTT wildcards \"+\" or \"#\"")
                } else if p.ends_with('/') {
                    Some("must not end with \"/\" (topics are prefix + \"/\" + …)")
                } else if p.starts_with('$') {
                    Some("must not start with \"$\" (reserved for broker topics)")
                } else if p.contains('\0') {
                    Some("must not contain NUL")
                } else {
                    None
                };
                if let Some(why) = why {
                    self.cx.error(
                        &t.span_of("topic_prefix"),
                        &t.path_of("topic_prefix"),
                        format!("\"{p}\" {why}"),
                    );
                }
                p
            }
        };
        let username = self.cx.text(t, "username", Need::Optional);
        let password_file = self.readable_file(t, "password_file");
        if let (Some(u), true) = (&url, t.has("password_file")) {
            if !u.tls {
                self.cx.notice(
                    &t.span_of("password_file"),
                    &t.path_of("password_file"),
                    "the MQTT password is sent unencrypted: the url is mqtt:// (plain TCP)",
                    Some(
                        "use an mqtts:// url so the password cannot be read off the network".into(),
                    ),
                );
            }
        }
        let ca_file = self.readable_file(t, "ca_file");
        let client_cert_file = self.readable_file(t, "client_cert_file");
        let client_key_file = self.readable_file(t, "client_key_file");
        for (have, other) in [
            ("client_cert_file", "client_key_file"),
            ("client_key_file", "client_cert_file"),
        ] {
            if t.has(have) && !t.has(other) {
                self.cx.error_hint(
                    &t.key_span(have),
                    &t.path_of(have),
                    format!("{have} needs {other}"),
                    Some("mutual TLS needs both the client certificate and its private key".into()),
                );
            }
        }
        if let Some(u) = &url {
            if !u.tls {
                for key in ["ca_file", "client_cert_file", "client_key_file"] {
                    if t.has(key) {
                        self.cx.error_hint(
                            &t.key_span(key),
                            &t.path_of(key),
                            format!("{key} needs TLS, but the url is mqtt:// (plain TCP)"),
                            Some("use an mqtts:// url, or remove this key".into()),
                        );
                    }
                }
            }
        }
        let keep_alive_s = self
            .cx
            .int(t, "keep_alive_s", Need::Optional, 1..=65535)
            .unwrap_or(30) as u64;
        let max_inflight = self
            .cx
            .int(t, "max_inflight", Need::Optional, 1..=65535)
            .unwrap_or(64) as u16;
        Some(Mqtt {
            url: url?,
            client_id,
            topic_prefix,
            username,
            password_file,
            ca_file,
            client_cert_file,
            client_key_file,
            keep_alive_s,
            max_inflight,
            failover_urls,
            protocol,
            max_packet_kb,
            reconnect_max_s,
            return_to_primary_s,
        })
    }

    /// `mqtt.failover_urls`: brokers tried in order after `url`, with the same TLS settings.
    fn failover_urls(&mut self, t: &Table<'_, '_>) -> Vec<MqttUrl> {
        let Some(v) = t.get("failover_urls") else {
            return Vec::new();
        };
        let path = t.path_of("failover_urls");
        let Some(items) = self.cx.as_array(v, &path) else {
            return Vec::new();
        };
        let mut urls = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(s) = self.cx.as_str(item, &item_path) else {
                continue;
            };
            match parse_mqtt_url(&s) {
                Ok(u) => urls.push(u),
                Err(p) => self.problem(&item.span(), &item_path, p),
            }
        }
        urls
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, loaded, with};
    use crate::config::MqttProtocol;

    #[test]
    fn a_ca_file_over_plain_mqtt_is_refused_at_the_key() {
        let e = error_at(
            &with("\n[mqtt]\nurl = \"mqtt://h\"\nca_file = \"ca.pem\"\n"),
            "mqtt.ca_file",
        );
        assert_eq!(
            e.message,
            "ca_file needs TLS, but the url is mqtt:// (plain TCP)"
        );
    }

    #[test]
    fn mqtt_3_is_a_notice_and_ids_default_from_the_gateway() {
        let l = loaded(&with("\n[mqtt]\nurl = \"mqtts://h\"\nprotocol = 3\n"));
        let m = l.config.mqtt.expect("[mqtt] compiled");
        assert_eq!(m.protocol, MqttProtocol::V311);
        assert_eq!(m.client_id, "ms5-edge-gw1");
        assert_eq!(m.topic_prefix, "ms5/gw1");
        assert_eq!(l.notices.len(), 1);
        assert_eq!(l.notices[0].key, "mqtt.protocol");
    }
}
