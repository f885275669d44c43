//! `[metrics]` (SPEC §10): where the metrics and health endpoints listen, and when the gateway
//! counts as ready.
//!
//! Owns the check of `listen` (a socket address, `host:port` with a literal IP) and the rule
//! that keeps the endpoints on the loopback interface unless the file says otherwise. Never
//! binds the address: a port in use is a start-up error of `run`, not a config error.
//!
//! ## Decisions where SPEC §10 leaves a choice
//!
//! - An absent table means no server. A present table with no keys serves on
//!   `127.0.0.1:9105`.
//! - `listen` is `IP:port` (`[::1]:9105` for IPv6); host names are refused, so what is checked
//!   here is what is bound. Port 0 is accepted (the OS picks one; tests use it).
//! - A `listen` address that is not loopback without `allow_remote = true` is an error with a
//!   hint: the endpoints have no authentication, so exposing them is a decision the file must
//!   state.
//! - `ready_max_backlog_s` 1..=86400, default 300.

use std::net::SocketAddr;

use super::super::Metrics;
use super::walk::{Need, Table};
use super::Compiler;

impl Compiler<'_, '_> {
    pub(super) fn metrics(&mut self, t: &Table<'_, '_>) -> Option<Metrics> {
        self.cx
            .known_keys(t, &["listen", "allow_remote", "ready_max_backlog_s"]);
        let defaults = Metrics::default();
        let allow_remote = self
            .cx
            .bool_(t, "allow_remote", Need::Optional)
            .unwrap_or(defaults.allow_remote);
        let ready_max_backlog_s = self
            .cx
            .int(t, "ready_max_backlog_s", Need::Optional, 1..=86_400)
            .map_or(defaults.ready_max_backlog_s, |n| n as u64);
        let listen = match self.cx.str_(t, "listen", Need::Optional) {
            None if t.has("listen") => None,
            None => Some(defaults.listen),
            Some(text) => match text.parse::<SocketAddr>() {
                Err(_) => {
                    self.cx.error_hint(
                        &t.span_of("listen"),
                        &t.path_of("listen"),
                        format!("\"{text}\" is not an IP address and port"),
                        Some("write it as \"127.0.0.1:9105\" (or \"[::1]:9105\")".into()),
                    );
                    None
                }
                Ok(addr) if !addr.ip().is_loopback() && !allow_remote => {
                    self.cx.error_hint(
                        &t.span_of("listen"),
                        &t.path_of("listen"),
                        format!(
                            "listen = \"{text}\" is not a loopback address, and the metrics \
                             endpoints have no authentication"
                        ),
                        Some(
                            "set allow_remote = true in [metrics] to serve on this address, \
                             or listen on 127.0.0.1"
                                .into(),
                        ),
                    );
                    None
                }
                Ok(addr) => Some(addr),
            },
        };
        Some(Metrics {
            listen: listen?,
            allow_remote,
            ready_max_backlog_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, loaded, with};

    #[test]
    fn an_empty_metrics_table_listens_on_loopback_port_9105() {
        let m = loaded(&with("\n[metrics]\n"))
            .config
            .metrics
            .expect("a server");
        assert_eq!(m.listen.to_string(), "127.0.0.1:9105");
        assert!(!m.allow_remote);
        assert_eq!(m.ready_max_backlog_s, 300);
    }

    #[test]
    fn without_a_metrics_table_there_is_no_server() {
        assert!(loaded(&with("")).config.metrics.is_none());
    }

    #[test]
    fn a_non_loopback_listen_needs_allow_remote() {
        let e = error_at(
            &with("\n[metrics]\nlisten = \"0.0.0.0:9105\"\n"),
            "metrics.listen",
        );
        assert!(e.message.contains("not a loopback address"), "{e}");
        assert!(
            e.hint.as_deref().unwrap_or("").contains("allow_remote"),
            "{e}"
        );
        let m = loaded(&with(
            "\n[metrics]\nlisten = \"0.0.0.0:9105\"\nallow_remote = true\n",
        ))
        .config
        .metrics
        .expect("a server");
        assert_eq!(m.listen.to_string(), "0.0.0.0:9105");
    }

    #[test]
    fn a_host_name_is_not_a_listen_address() {
        let e = error_at(
            &with("\n[metrics]\nlisten = \"localhost:9105\"\n"),
            "metrics.listen",
        );
        assert!(e.message.contains("not an IP address and port"), "{e}");
    }

    #[test]
    fn ready_max_backlog_s_is_between_one_second_and_a_day() {
        error_at(
            &with("\n[metrics]\nready_max_backlog_s = 0\n"),
            "metrics.ready_max_backlog_s",
        );
        error_at(
            &with("\n[metrics]\nready_max_backlog_s = 86401\n"),
            "metrics.ready_max_backlog_s",
        );
    }

    #[test]
    fn an_unknown_metrics_key_gets_a_did_you_mean() {
        let e = error_at(
            &with("\n[metrics]\nlistn = \"127.0.0.1:1\"\n"),
            "metrics.listn",
        );
        assert!(e.hint.as_deref().unwrap_or("").contains("listen"), "{e}");
    }
}
