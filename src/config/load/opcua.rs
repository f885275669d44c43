//! `protocol = "opc-ua"` (SPEC §9): the endpoint, security and trust keys of an OPC UA PLC, and
//! the syntax of node ids.
//!
//! Owns the checks that need no server: the endpoint URL's form, the security policy/mode
//! pairing, where the password and the PKI live. Never connects, never reads the trust store
//! (the driver reads it at every connect).
//!
//! ## Decisions where SPEC §9 leaves a choice
//!
//! - `endpoint` is `opc.tcp://host[:port][/path]`; the port defaults to 4840. `Plc::host` and
//!   `port` hold the endpoint's host and port (logs and `status` name the PLC by them).
//! - `security_policy` and `security_mode` both default to `None`; `None` on one side requires
//!   `None` on the other (an error at the second key). Security `None` is a notice.
//! - `password_file` without `username` is an error; `username` without `password_file`
//!   sends an empty password. An unreadable `password_file` is a warning for check-config and
//!   refuses `run`, like every other file.
//! - `pki_dir` defaults to `{data_dir}/pki` (filled in by the compiler once `data_dir` is known).
//! - Node ids: `[ns=N;]i=…|s=…|g=…|b=…` with N ≤ 65535, i ≤ 2³²−1, g a 8-4-4-4-12 hex GUID, b
//!   base64, s any non-empty text.

use super::super::{OpcUa, SecurityMode, SecurityPolicy, TrustServer};
use super::walk::{Need, Table};
use super::Compiler;

/// The keys only an opc-ua PLC has.
pub(super) const OPCUA_KEYS: &[&str] = &[
    "endpoint",
    "security_policy",
    "security_mode",
    "username",
    "password_file",
    "pki_dir",
    "trust_server",
];

impl Compiler<'_, '_> {
    /// The opc-ua keys of one `[[plc]]`, and the endpoint's host and port.
    pub(super) fn opcua(&mut self, t: &Table<'_, '_>) -> Option<(OpcUa, String, u16)> {
        let endpoint =
            self.cx
                .text(t, "endpoint", Need::Required)
                .and_then(|e| match parse_endpoint(&e) {
                    Ok((host, port)) => Some((e, host, port)),
                    Err(why) => {
                        self.cx.error_hint(
                            &t.span_of("endpoint"),
                            &t.path_of("endpoint"),
                            format!("\"{e}\" is not an OPC UA endpoint: {why}"),
                            Some("write it as opc.tcp://host:4840 (path optional)".into()),
                        );
                        None
                    }
                });
        let policy = self
            .cx
            .choice(t, "security_policy", Need::Optional, SecurityPolicy::NAMES);
        let mode = self
            .cx
            .choice(t, "security_mode", Need::Optional, SecurityMode::NAMES);
        let (policy_ok, mode_ok) = (
            policy.is_some() || !t.has("security_policy"),
            mode.is_some() || !t.has("security_mode"),
        );
        let policy = policy.unwrap_or(SecurityPolicy::None);
        let mode = mode.unwrap_or(SecurityMode::None);
        let mut valid = policy_ok && mode_ok;
        if valid && (policy == SecurityPolicy::None) != (mode == SecurityMode::None) {
            let key = if t.has("security_mode") {
                "security_mode"
            } else {
                "security_policy"
            };
            self.cx.error_hint(
                &t.span_of(key),
                &t.path_of(key),
                format!(
                    "security_policy \"{policy}\" cannot be used with security_mode \"{mode}\""
                ),
                Some(if policy == SecurityPolicy::None {
                    "security mode None needs policy None; with a policy use Sign or SignAndEncrypt"
                        .into()
                } else {
                    "a security policy needs security_mode Sign or SignAndEncrypt".into()
                }),
            );
            valid = false;
        }
        if valid && policy == SecurityPolicy::None {
            let key = if t.has("security_policy") {
                "security_policy"
            } else {
                "endpoint"
            };
            self.cx.notice(
                &t.span_of(key),
                &t.path_of(key),
                "OPC UA security None: values and the password travel unsigned and unencrypted",
                Some("use security_policy = \"Basic256Sha256\" with security_mode = \"SignAndEncrypt\" where the server offers it".into()),
            );
        }
        let username = self.cx.text(t, "username", Need::Optional);
        let password_file = self.readable_file(t, "password_file");
        if password_file.is_some() && username.is_none() {
            self.cx.error(
                &t.key_span("password_file"),
                &t.path_of("password_file"),
                "\"password_file\" needs a \"username\"",
            );
            valid = false;
        }
        let pki_dir = self.path(t, "pki_dir").unwrap_or_default();
        let trust_server = self
            .cx
            .choice(t, "trust_server", Need::Optional, TrustServer::NAMES);
        if t.has("trust_server") && trust_server.is_none() {
            valid = false;
        }
        let (endpoint, host, port) = endpoint?;
        valid.then(|| {
            (
                OpcUa {
                    endpoint,
                    security_policy: policy,
                    security_mode: mode,
                    username,
                    password_file,
                    pki_dir,
                    trust_server: trust_server.unwrap_or(TrustServer::Pinned),
                },
                host,
                port,
            )
        })
    }
}

/// `opc.tcp://host[:port][/path]` → (host, port).
fn parse_endpoint(e: &str) -> Result<(String, u16), String> {
    let rest = e
        .strip_prefix("opc.tcp://")
        .ok_or("it must start with opc.tcp://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('@') {
        return Err("no host".into());
    }
    let port = match port {
        None => 4840,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port \"{p}\" is not 1..=65535"))?,
    };
    Ok((host.to_string(), port))
}

/// Checks an OPC UA node id's text form (`[ns=N;]i=…|s=…|g=…|b=…`).
pub(super) fn check_node_id(s: &str) -> Result<(), String> {
    let body = match s.strip_prefix("ns=") {
        Some(rest) => {
            let (ns, body) = rest
                .split_once(';')
                .ok_or("expected ns=N; before the identifier")?;
            ns.parse::<u16>()
                .map_err(|_| format!("namespace \"{ns}\" is not 0..=65535"))?;
            body
        }
        None => s,
    };
    let (kind, id) = body
        .split_once('=')
        .ok_or("expected i=, s=, g= or b= after the namespace")?;
    match kind {
        "i" => id
            .parse::<u32>()
            .map(|_| ())
            .map_err(|_| format!("numeric identifier \"{id}\" is not 0..=4294967295")),
        "s" if !id.is_empty() => Ok(()),
        "s" => Err("the string identifier is empty".into()),
        "g" => {
            let groups: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            if lens == [8, 4, 4, 4, 12]
                && groups
                    .iter()
                    .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
            {
                Ok(())
            } else {
                Err(format!("GUID \"{id}\" is not 8-4-4-4-12 hex digits"))
            }
        }
        "b" if !id.is_empty()
            && id.len() % 4 == 0
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')) =>
        {
            Ok(())
        }
        "b" => Err(format!("opaque identifier \"{id}\" is not base64")),
        other => Err(format!(
            "unknown identifier type \"{other}=\" (expected i=, s=, g= or b=)"
        )),
    }
}

/// Fills the `{data_dir}/pki` default of every opc-ua PLC without its own `pki_dir`.
pub(super) fn default_pki_dirs<'p>(
    plcs: impl Iterator<Item = &'p mut super::super::Plc>,
    data_dir: &std::path::Path,
) {
    for plc in plcs {
        if let super::super::Protocol::OpcUa(o) = &mut plc.protocol {
            if o.pki_dir.as_os_str().is_empty() {
                o.pki_dir = data_dir.join("pki");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "opcua")]
    use super::super::testing::loaded;
    use super::super::testing::{error_at, MINIMAL};
    use super::*;
    #[cfg(feature = "opcua")]
    use crate::config::{DataType, SignalSource};

    /// MINIMAL with its PLC turned into an opc-ua one with `keys`, signals on nodes.
    fn opcua(keys: &str) -> String {
        MINIMAL
            .replacen(
                "protocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"",
                &format!(
                    "protocol = \"opc-ua\"\nendpoint = \"opc.tcp://10.0.0.5:4841/ua\"\n{keys}"
                ),
                1,
            )
            .replacen(
                "{ address = \"co:0\" }",
                "{ node = \"ns=3;s=\\\"DB\\\".\\\"Run\\\"\" }",
                1,
            )
            .replacen(
                "{ address = \"hr:0\" }",
                "{ node = \"ns=2;i=1001\", type = \"u8\" }",
                1,
            )
    }

    #[cfg(feature = "opcua")]
    #[test]
    fn an_opcua_plc_gets_its_defaults_and_security_none_is_a_notice() {
        let l = loaded(&opcua(""));
        let plc = &l.config.plcs[0];
        assert_eq!((plc.host.as_str(), plc.port), ("10.0.0.5", 4841));
        let crate::config::Protocol::OpcUa(o) = &plc.protocol else {
            panic!("{plc:?}")
        };
        assert_eq!(o.security_policy, SecurityPolicy::None);
        assert_eq!(o.trust_server, TrustServer::Pinned);
        assert_eq!(o.pki_dir, std::path::Path::new("/var/lib/ms5-edge/pki"));
        assert!(
            l.notices
                .iter()
                .any(|n| n.message.contains("security None")),
            "{:?}",
            l.notices
        );
        let s = &l.config.equipment[0].signals;
        assert_eq!(s.good_count.data_type, DataType::U8);
        assert_eq!(
            s.running.source,
            SignalSource::Node {
                node: "ns=3;s=\"DB\".\"Run\"".into()
            }
        );
    }

    #[cfg(feature = "opcua")]
    #[test]
    fn policy_and_mode_none_go_together() {
        let e = error_at(
            &opcua("security_policy = \"Basic256Sha256\""),
            "plc[0].security_policy",
        );
        assert!(e.message.contains("cannot be used with"), "{e:?}");
        let e = error_at(&opcua("security_mode = \"Sign\""), "plc[0].security_mode");
        assert!(e.message.contains("cannot be used with"), "{e:?}");
        let ok = loaded(&opcua(
            "security_policy = \"Aes256Sha256RsaPss\"\nsecurity_mode = \"SignAndEncrypt\"\ntrust_server = \"first-use\"",
        ));
        assert!(ok
            .notices
            .iter()
            .all(|n| !n.message.contains("security None")));
    }

    #[cfg(feature = "opcua")]
    #[test]
    fn node_ids_and_misplaced_keys_are_refused_at_the_key() {
        let bad = opcua("").replacen("ns=2;i=1001", "ns=2;q=1", 1);
        let e = error_at(&bad, "equipment[0].signals.good_count.node");
        assert!(e.message.contains("not an OPC UA node id"), "{e:?}");
        let e = error_at(&opcua("unit_id = 2"), "plc[0].unit_id");
        assert!(e.message.contains("this PLC is opc-ua"), "{e:?}");
        let e = error_at(
            &MINIMAL.replacen(
                "host = \"127.0.0.1\"",
                "host = \"127.0.0.1\"\nendpoint = \"x\"",
                1,
            ),
            "plc[0].endpoint",
        );
        assert!(e.message.contains("applies to opc-ua PLCs only"), "{e:?}");
        let e = error_at(
            &opcua("password_file = \"/nonexistent\""),
            "plc[0].password_file",
        );
        assert!(e.message.contains("needs a \"username\""), "{e:?}");
    }

    #[cfg(not(feature = "opcua"))]
    #[test]
    fn without_the_feature_an_opcua_plc_is_a_config_error() {
        let e = error_at(&opcua(""), "plc[0].protocol");
        assert!(e.message.contains("built without OPC UA"), "{e:?}");
    }

    #[test]
    fn node_ids_of_every_form_are_accepted_and_broken_ones_explained() {
        for ok in [
            "ns=2;i=1001",
            "i=2258",
            "ns=3;s=\"DB_Line\".\"Running\"",
            "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            "ns=1;b=M/RbKBsRVkePCePcx24oRA==",
        ] {
            assert_eq!(check_node_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ns=70000;i=1",
            "ns=2;i=-1",
            "ns=2;s=",
            "ns=2;g=1234",
            "ns=2;b=%%",
            "ns=2;x=1",
            "ns=2",
            "Running",
        ] {
            assert!(check_node_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_give_host_and_port() {
        assert_eq!(
            parse_endpoint("opc.tcp://10.0.0.5:4841/ua"),
            Ok(("10.0.0.5".into(), 4841))
        );
        assert_eq!(parse_endpoint("opc.tcp://plc"), Ok(("plc".into(), 4840)));
        assert!(parse_endpoint("http://plc").is_err());
        assert!(parse_endpoint("opc.tcp://plc:0").is_err());
    }
}
