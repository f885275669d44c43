//! What arrives on the edge node's connection: the primary host's STATE, NCMD/DCMD (only
//! `Node Control/Rebirth` is honoured; every write is refused and counted) and, with
//! `cloudevents = false`, `P/cmd/#` through the command gate; and the replies going back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{save_state, End, Session, SessionError, SpbChannels, Tag};
use crate::sparkplug::codec::{self, Command};
use crate::uplink::{client, guard, InboundCommand, LiveMessage};

impl Session<'_> {
    pub(super) async fn on_inbound(
        &mut self,
        p: client::Inbound,
        ch: &mut SpbChannels,
    ) -> Result<Option<End>, SessionError> {
        if Some(&p.topic) == self.topics.state.as_ref() {
            let changed = self.host.apply(&p.payload);
            let online = self.host.is_online();
            self.stats
                .sparkplug
                .host_online
                .store(i64::from(online), Ordering::Relaxed);
            if changed && online && !self.born {
                self.birth().await?;
            } else if changed && !online && self.born {
                // The session loop says goodbye (fence, NDEATH, DISCONNECT) and reconnects.
                return Ok(Some(End::HostOffline));
            }
            return Ok(None);
        }
        let ncmd = self.topics.node("NCMD");
        let dcmd = format!("{}/DCMD/{}/", self.topics.ns, self.topics.node);
        if p.topic == ncmd || p.topic.starts_with(&dcmd) {
            match codec::command(&p.payload, p.topic == ncmd) {
                Command::Rebirth => {
                    tracing::info!("sparkplug: rebirth requested by NCMD");
                    self.stats
                        .sparkplug
                        .rebirths
                        .fetch_add(1, Ordering::Relaxed);
                    if self.born {
                        self.birth().await?;
                    }
                }
                Command::Write(names) => self.refuse(&p.topic, &names),
                Command::Undecodable => self.refuse(&p.topic, &["(undecodable payload)".into()]),
                Command::Nothing => {}
            }
            return Ok(None);
        }
        if let Some(g) = self.guard.as_deref_mut() {
            let verdict = g.check(
                &self.topics.prefix,
                &p.topic,
                &p.payload,
                p.retain,
                std::time::Instant::now(),
                jiff::Timestamp::now().as_millisecond(),
            );
            let refusal = match verdict {
                guard::Verdict::Ignore => None,
                guard::Verdict::Accept { path } => {
                    // The same byte budget as the CloudEvents uplink's: a flood of accepted
                    // commands waits in at most INBOUND_BUDGET bytes, then gets "busy".
                    let queued = InboundCommand::within(self.budget, path, p.payload.to_vec())
                        .zip(ch.commands.as_ref())
                        .is_some_and(|(cmd, c)| c.try_send(cmd).is_ok());
                    if queued {
                        None
                    } else {
                        let request_id = guard::request_id_of(&p.payload);
                        g.forget(request_id.as_str().unwrap_or_default());
                        Some((request_id, crate::uplink::BUSY.to_string()))
                    }
                }
                guard::Verdict::Reject { request_id, error } => Some((request_id, error)),
            };
            if let Some((request_id, error)) = refusal {
                self.stats.commands_rejected.fetch_add(1, Ordering::Relaxed);
                let topic = format!("{}/reply", self.topics.prefix);
                let _ = self.publish(
                    topic,
                    Tag::Other,
                    guard::reply(&request_id, &error).into_bytes(),
                );
            }
        }
        Ok(None)
    }

    /// A DCMD/NCMD write: refused (the gateway is read-only), counted, logged at most once a
    /// minute.
    pub(super) fn refuse(&mut self, topic: &str, names: &[String]) {
        self.stats
            .sparkplug
            .commands_refused
            .fetch_add(1, Ordering::Relaxed);
        self.stats.sparkplug.changed.notify_one();
        save_state(self.reader, self.stats);
        if self
            .last_refusal_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_refusal_log = Some(Instant::now());
            tracing::warn!(%topic, metrics = ?names, refused = self.stats.sparkplug.commands_refused.load(Ordering::Relaxed),
                "sparkplug: command refused: the gateway is read-only (only Node Control/Rebirth is honoured)");
        }
    }

    /// Replies from the core (`cloudevents = false`); live telemetry is not sent (nothing
    /// under `P/` but replies).
    pub(super) fn on_live(&mut self, msg: LiveMessage) {
        if msg.topic == "reply" && self.connected {
            let topic = format!("{}/reply", self.topics.prefix);
            if self
                .publish(topic, Tag::Other, msg.payload.into_bytes())
                .is_err()
            {
                self.stats.replies_dropped.fetch_add(1, Ordering::Relaxed);
            }
        } else if msg.topic == "reply" {
            self.stats.replies_dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
