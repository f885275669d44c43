//! The MQTT client of one connection, MQTT 5 or 3.1.1, behind one small interface.
//!
//! rumqttc has two clients with different types (`rumqttc::v5` and the 3.1.1 one at the crate
//! root). The session logic in [`super`] is written once against [`Client`] and [`Wire`]: this
//! module builds the options of SPEC §7 for either protocol, drives the event loop in its own
//! task (so the session's `select!` never cancels it mid-packet) and translates its events.
//!
//! ## Design constraints
//! - **Clean sessions.** MQTT 5: clean start, session expiry 0; 3.1.1: clean session. The
//!   broker never queues commands for us while we are away, so a poisonous message cannot be
//!   redelivered after every reconnect. What must survive an outage is in the outbox.
//! - **Maximum Packet Size.** `max_packet_kb` bounds what we accept (announced in CONNECT with
//!   MQTT 5, so a conforming broker discards larger messages instead of sending them) and what
//!   we send (with the broker's own CONNACK limit, whichever is smaller: [`Wire::Connected`]).
//! - **A bounded bridge.** Events reach the session through a bounded channel; when the
//!   session is slow the driver waits, which stops reading the socket (TCP back-pressure), not
//!   memory growth.
//! - Never sends on its own: every publish comes from the session, tagged in its correlator.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as v5b;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::QoS;
use tokio::sync::mpsc;

use crate::config::{Mqtt, MqttProtocol, MqttUrl};

/// What happened on the connection, in the order the client reported it.
#[derive(Debug)]
pub enum Wire {
    /// CONNACK: the broker accepted us, with its Maximum Packet Size and Receive Maximum
    /// (MQTT 5), if it announced them.
    Connected {
        max_packet: Option<u32>,
        receive_max: Option<u16>,
    },
    /// The client wrote the oldest publish handed to it, with this packet id (0 for QoS 0).
    Written(u16),
    /// The client holds a publish back because its packet id is still awaiting a PUBACK.
    Collision(u16),
    /// PUBACK; `reason` is the MQTT 5 reason code (always 0 with 3.1.1).
    Acked { pkid: u16, reason: u8 },
    /// An inbound PUBLISH.
    Message(Inbound),
    /// DISCONNECT written by us.
    Disconnected,
    /// The connection ended.
    Lost(Lost),
}

/// An inbound PUBLISH, protocol-neutral.
#[derive(Debug)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// Why a connection ended, in words an engineer can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub message: String,
    /// An inbound packet exceeded `max_packet_kb` (the MQTT 3.1.1 client cannot skip one).
    pub oversized_inbound: bool,
    /// The broker could not be reached at all (TCP refused, timed out, no route): probing it
    /// is cheap and tells when it is back. Not set for refusals by a broker that answered.
    pub unreachable: bool,
}

/// The request side of one connection.
pub enum Client {
    V5(rumqttc::v5::AsyncClient),
    V3(rumqttc::AsyncClient),
}

/// The client's request queue is full or the event loop is gone.
#[derive(Debug, thiserror::Error)]
#[error("mqtt client request queue full or closed")]
pub struct Busy;

/// How one connection is set up.
pub struct Connect<'a> {
    pub mqtt: &'a Mqtt,
    pub broker: &'a MqttUrl,
    pub password: Option<&'a str>,
    pub transport: Option<rumqttc::Transport>,
    /// Requests the client queues (publishes + subscribes) before `try_*` refuses.
    pub queue: usize,
    /// Unacknowledged QoS 1 publishes the client allows itself.
    pub inflight: u16,
    /// Topic and payload of the last will (QoS 1).
    pub will: (String, Vec<u8>),
    /// Whether the will is retained (`P/status`: yes; a Sparkplug NDEATH: no).
    pub will_retain: bool,
}

/// Connects (lazily: the event loop dials on its first poll) and returns the client and the
/// channel its events arrive on. The driver task ends with the connection.
pub fn open(c: Connect<'_>) -> (Client, mpsc::Receiver<Wire>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let max = u32::try_from(c.mqtt.max_packet_bytes()).unwrap_or(u32::MAX);
    let keep_alive = Duration::from_secs(c.mqtt.keep_alive_s.max(5));
    match c.mqtt.protocol {
        MqttProtocol::V5 => {
            let mut o =
                rumqttc::v5::MqttOptions::new(&c.mqtt.client_id, &c.broker.host, c.broker.port);
            o.set_keep_alive(keep_alive);
            o.set_clean_start(true);
            o.set_session_expiry_interval(Some(0));
            o.set_max_packet_size(Some(max));
            o.set_outgoing_inflight_upper_limit(c.inflight.max(1));
            o.set_connection_timeout(10);
            o.set_last_will(v5b::LastWill::new(
                c.will.0,
                c.will.1,
                QoS5::AtLeastOnce,
                c.will_retain,
                None,
            ));
            if let (Some(user), Some(pass)) = (&c.mqtt.username, c.password) {
                o.set_credentials(user, pass);
            } else if let Some(user) = &c.mqtt.username {
                o.set_credentials(user, "");
            }
            if let Some(t) = c.transport {
                o.set_transport(t);
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, c.queue);
            let task = tokio::spawn(drive_v5(eventloop, tx));
            (Client::V5(client), rx, task)
        }
        MqttProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&c.mqtt.client_id, &c.broker.host, c.broker.port);
            o.set_keep_alive(keep_alive);
            o.set_clean_session(true);
            o.set_inflight(c.inflight.max(1));
            o.set_max_packet_size(max as usize, max as usize);
            o.set_last_will(rumqttc::LastWill::new(
                c.will.0,
                c.will.1,
                QoS::AtLeastOnce,
                c.will_retain,
            ));
            if let Some(user) = &c.mqtt.username {
                o.set_credentials(user, c.password.unwrap_or(""));
            }
            if let Some(t) = c.transport {
                o.set_transport(t);
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(o, c.queue);
            let task = tokio::spawn(drive_v3(eventloop, tx));
            (Client::V3(client), rx, task)
        }
    }
}

impl Client {
    /// Queues a publish; `Err(Busy)` when the request queue is full.
    pub fn publish(
        &self,
        topic: String,
        qos1: bool,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), Busy> {
        match self {
            Client::V5(c) => {
                let qos = if qos1 {
                    QoS5::AtLeastOnce
                } else {
                    QoS5::AtMostOnce
                };
                c.try_publish(topic, qos, retain, payload).map_err(|_| Busy)
            }
            Client::V3(c) => {
                let qos = if qos1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                c.try_publish(topic, qos, retain, payload).map_err(|_| Busy)
            }
        }
    }

    /// Queues SUBSCRIBE `filter` at QoS 1.
    pub fn subscribe(&self, filter: String) -> Result<(), Busy> {
        match self {
            Client::V5(c) => c.try_subscribe(filter, QoS5::AtLeastOnce).map_err(|_| Busy),
            Client::V3(c) => c.try_subscribe(filter, QoS::AtLeastOnce).map_err(|_| Busy),
        }
    }

    /// Queues DISCONNECT (no will).
    pub fn disconnect(&self) -> Result<(), Busy> {
        match self {
            Client::V5(c) => c.try_disconnect().map_err(|_| Busy),
            Client::V3(c) => c.try_disconnect().map_err(|_| Busy),
        }
    }
}

/// Bytes of a PUBLISH packet with this topic and payload (fixed header, topic, packet id,
/// and an empty MQTT 5 property block): what Maximum Packet Size limits.
pub fn publish_packet_size(topic_len: usize, payload_len: usize) -> usize {
    let remaining = 2 + topic_len + 2 + 1 + payload_len;
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + remaining
}

async fn drive_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::Sender<Wire>) {
    use rumqttc::v5::{Event, Incoming};
    loop {
        let wire = match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => Wire::Connected {
                max_packet: ack.properties.as_ref().and_then(|p| p.max_packet_size),
                receive_max: ack.properties.as_ref().and_then(|p| p.receive_max),
            },
            Ok(Event::Incoming(Incoming::PubAck(ack))) => Wire::Acked {
                pkid: ack.pkid,
                reason: puback_code(ack.reason),
            },
            Ok(Event::Incoming(Incoming::Publish(p))) => Wire::Message(Inbound {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
                retain: p.retain,
            }),
            Ok(Event::Outgoing(o)) => match outgoing(o) {
                Some(w) => w,
                None => continue,
            },
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Wire::Lost(lost_v5(&e))).await;
                return;
            }
        };
        if tx.send(wire).await.is_err() {
            return;
        }
    }
}

async fn drive_v3(mut eventloop: rumqttc::EventLoop, tx: mpsc::Sender<Wire>) {
    use rumqttc::{Event, Incoming};
    loop {
        let wire = match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => Wire::Connected {
                max_packet: None,
                receive_max: None,
            },
            Ok(Event::Incoming(Incoming::PubAck(ack))) => Wire::Acked {
                pkid: ack.pkid,
                reason: 0,
            },
            Ok(Event::Incoming(Incoming::Publish(p))) => Wire::Message(Inbound {
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
            }),
            Ok(Event::Outgoing(o)) => match outgoing(o) {
                Some(w) => w,
                None => continue,
            },
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Wire::Lost(lost_v3(&e))).await;
                return;
            }
        };
        if tx.send(wire).await.is_err() {
            return;
        }
    }
}

/// What the session needs of what the client wrote (the same type for both protocols).
fn outgoing(o: rumqttc::Outgoing) -> Option<Wire> {
    use rumqttc::Outgoing;
    match o {
        Outgoing::Publish(pkid) => Some(Wire::Written(pkid)),
        Outgoing::AwaitAck(pkid) => Some(Wire::Collision(pkid)),
        Outgoing::Disconnect => Some(Wire::Disconnected),
        _ => None,
    }
}

/// The MQTT 5 reason code of a PUBACK.
fn puback_code(r: v5b::PubAckReason) -> u8 {
    use v5b::PubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

/// The name of a PUBACK refusal reason, as counted in `health.refused`.
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0x80 => "unspecified_error",
        0x83 => "implementation_specific_error",
        0x87 => "not_authorized",
        0x90 => "topic_name_invalid",
        0x91 => "packet_identifier_in_use",
        0x97 => "quota_exceeded",
        0x99 => "payload_format_invalid",
        _ => "other",
    }
}

const LOGIN_REFUSED: &str = "broker refused the login: bad user name or password, or not \
                             authorised (check mqtt.username and the password_file)";

fn tls_failed(t: &impl std::fmt::Display) -> String {
    format!(
        "TLS handshake with the broker failed: {t} (check mqtt.ca_file, the broker's \
         certificate and name, and the client certificate)"
    )
}

fn lost_v5(e: &rumqttc::v5::ConnectionError) -> Lost {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Rc;
    use rumqttc::v5::mqttbytes::Error as Me;
    use rumqttc::v5::{ConnectionError as Ce, StateError as Se};
    let oversized = matches!(
        e,
        Ce::MqttState(Se::Deserialization(Me::PayloadSizeLimitExceeded { .. }))
    );
    let message = match e {
        Ce::ConnectionRefused(Rc::BadUserNamePassword | Rc::NotAuthorized) => LOGIN_REFUSED.into(),
        Ce::ConnectionRefused(Rc::ClientIdentifierNotValid) => {
            "broker refused the client id (check mqtt.client_id)".into()
        }
        Ce::ConnectionRefused(Rc::UnsupportedProtocolVersion) => {
            "broker does not speak MQTT 5 (set mqtt.protocol = 3 for an MQTT 3.1.1 broker)".into()
        }
        Ce::ConnectionRefused(code) => format!("broker refused the connection: {code:?}"),
        Ce::Tls(t) => tls_failed(t),
        _ if oversized => format!(
            "an inbound packet exceeded max_packet_kb ({e}); the broker ignored our Maximum \
             Packet Size"
        ),
        other => other.to_string(),
    };
    Lost {
        message,
        oversized_inbound: oversized,
        unreachable: matches!(e, Ce::Io(_) | Ce::Timeout(_)),
    }
}

fn lost_v3(e: &rumqttc::ConnectionError) -> Lost {
    use rumqttc::{ConnectReturnCode as Rc, ConnectionError as Ce, StateError as Se};
    let oversized = matches!(
        e,
        Ce::MqttState(Se::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    );
    let message = match e {
        Ce::ConnectionRefused(Rc::BadUserNamePassword | Rc::NotAuthorized) => LOGIN_REFUSED.into(),
        Ce::ConnectionRefused(Rc::BadClientId) => {
            "broker refused the client id (check mqtt.client_id)".into()
        }
        Ce::ConnectionRefused(code) => format!("broker refused the connection: {code:?}"),
        Ce::Tls(t) => tls_failed(t),
        _ if oversized => format!(
            "an inbound packet exceeded max_packet_kb ({e}); MQTT 3.1.1 cannot announce the \
             limit, so the connection is reopened (clean session: it is not redelivered)"
        ),
        other => other.to_string(),
    };
    Lost {
        message,
        oversized_inbound: oversized,
        unreachable: matches!(e, Ce::Io(_) | Ce::NetworkTimeout | Ce::FlushTimeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_size_counts_the_header_topic_packet_id_and_properties() {
        // 2 + 5 + 2 + 1 + 10 = 20 remaining bytes, one length byte, one type byte.
        assert_eq!(publish_packet_size(5, 10), 22);
        assert_eq!(publish_packet_size(0, 122), 1 + 1 + 127);
        assert_eq!(publish_packet_size(0, 123), 1 + 2 + 128);
    }

    #[test]
    fn refusal_reasons_have_stable_names() {
        assert_eq!(
            reason_name(puback_code(v5b::PubAckReason::NotAuthorized)),
            "not_authorized"
        );
        assert_eq!(
            reason_name(puback_code(v5b::PubAckReason::QuotaExceeded)),
            "quota_exceeded"
        );
        assert!(puback_code(v5b::PubAckReason::NoMatchingSubscribers) < 0x80);
    }
}
