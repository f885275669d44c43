//! OPC UA driver (SPEC §9): one session per PLC, one Read service call per poll for all of the
//! PLC's nodes (split only by the server's MaxNodesPerRead).
//!
//! Owns: the session (secure channel, certificate trust, user identity), the DataType check on
//! connect, the Read calls and turning a `DataValue` into a [`SignalReading`]. Never does:
//! Write, Call, or any service that changes the server (no subscriptions either: the schedule
//! is [`super::run_plc`]'s); reconnect timing (that is `run_plc`'s backoff; the library's own
//! reconnect is switched off, so a lost session ends in a transport error and a new session at
//! the next allowed tick).
//!
//! ## Rules the tests defend
//!
//! - A node whose DataType contradicts the declared `type` is published as `null`/`bad` and
//!   reported once (counted in `type_mismatches`); a node the server does not have is a device
//!   exception, reported once; the PLC's other signals are unaffected.
//! - A `Bad` status code is quality `bad` (no value), an `Uncertain` one `stale` (no value);
//!   `Good` values are decoded into the declared type (a Variant of another type is `bad`).
//! - Fault classes: no answer in `timeout_ms` → "timed out"; TCP refused → "refused"; an
//!   undecodable answer → "malformed"; everything else (security rejected, session lost,
//!   certificate untrusted) → other. Every one of them drops the session.
//! - The own certificate and key live under `pki_dir/own/` (created on first connect, kept);
//!   server certificates are trusted from `pki_dir/trusted/` (DER); an unknown one is saved
//!   in `pki_dir/rejected/`. `trust_server = "first-use"` trusts (and stores) a certificate
//!   only while `trusted/` is empty.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use opcua::client::{ClientBuilder, IdentityToken, Password, Session};
use opcua::crypto::SecurityPolicy as UaPolicy;
use opcua::types::{
    AttributeId, DataValue, MessageSecurityMode, NodeId, NumericRange, QualifiedName, ReadValueId,
    StatusCode, TimestampsToReturn, VariableId, Variant,
};

use super::decode::{engineering, widen_f32, Raw};
use super::{EquipmentSample, PollError, Poller, PollerStats, Quality, SignalReading, Value};
use crate::config::{
    DataType, Equipment, OpcUa, Plc, Protocol, SecurityMode, SecurityPolicy, Signal, SignalSource,
    TrustServer,
};

/// One configured signal and what is known about its node.
struct Slot {
    equipment: usize,
    name: String,
    node_text: String,
    node: Option<NodeId>,
    signal: Signal,
    /// Why this node is not read (bad node id, DataType contradiction, unknown node); checked
    /// again at every connect.
    refused: Option<String>,
}

/// A live session.
struct Conn {
    session: Arc<Session>,
    /// Always `Some` until dropped.
    event_loop: Option<tokio::task::JoinHandle<StatusCode>>,
    /// Nodes per Read call; `usize::MAX` when the server sets no limit.
    max_nodes: usize,
}

impl Drop for Conn {
    /// Closes the session politely (so the server frees it now, not at its timeout), then
    /// stops the event loop; at most 1 s, in the background.
    fn drop(&mut self) {
        let session = self.session.clone();
        let Some(event_loop) = self.event_loop.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !event_loop.is_finished() => {
                rt.spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), session.disconnect()).await;
                    event_loop.abort();
                });
            }
            _ => event_loop.abort(),
        }
    }
}

/// The OPC UA [`Poller`].
pub struct OpcUaPoller {
    plc: String,
    ua: Option<OpcUa>,
    timeout: Duration,
    equipment: Vec<String>,
    slots: Vec<Slot>,
    conn: Option<Conn>,
    stats: PollerStats,
    /// Slots whose refusal was logged already (once per episode of the same message).
    reported: HashSet<(usize, String)>,
}

impl OpcUaPoller {
    pub fn new(plc: &Plc, equipment: &[Equipment]) -> Self {
        let ua = match &plc.protocol {
            Protocol::OpcUa(o) => Some(o.clone()),
            _ => None,
        };
        let mut slots = Vec::new();
        for (e, eq) in equipment.iter().enumerate() {
            for (name, signal) in eq.signals.all() {
                let node_text = match &signal.source {
                    SignalSource::Node { node } => node.clone(),
                    _ => String::new(),
                };
                let node = NodeId::from_str(&node_text).ok();
                let refused = match (&signal.source, &node) {
                    (SignalSource::Node { .. }, Some(_)) => None,
                    (SignalSource::Node { .. }, None) => Some("not a node id".to_string()),
                    _ => Some("not an OPC UA node".to_string()),
                };
                slots.push(Slot {
                    equipment: e,
                    name: name.to_string(),
                    node_text,
                    node,
                    signal: signal.clone(),
                    refused,
                });
            }
        }
        OpcUaPoller {
            plc: plc.name.clone(),
            ua,
            timeout: Duration::from_millis(plc.timeout_ms.max(1)),
            equipment: equipment.iter().map(|e| e.code.clone()).collect(),
            slots,
            conn: None,
            stats: PollerStats::default(),
            reported: HashSet::new(),
        }
    }

    /// Opens a session and checks every node's DataType.
    async fn connect(&mut self) -> Result<(), PollError> {
        let ua = self
            .ua
            .clone()
            .ok_or_else(|| PollError::Unsupported("not an opc-ua PLC".into()))?;
        let conn = open(&self.plc, &ua, self.timeout).await?;
        let max_nodes = conn.max_nodes;
        let session = conn.session.clone();
        self.conn = Some(conn);
        self.stats.connects += 1;
        tracing::info!(plc = %self.plc, endpoint = %ua.endpoint, policy = %ua.security_policy, mode = %ua.security_mode, "OPC UA session open");
        // DataType check: one Read of the DataType attribute of every node.
        let ids: Vec<(usize, ReadValueId)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, read_id(s.node.clone()?, AttributeId::DataType))))
            .collect();
        let answers = read_all(&session, &ids, max_nodes, self.timeout).await?;
        for ((i, _), dv) in ids.iter().zip(answers) {
            let slot = &mut self.slots[*i];
            let status = dv.status();
            slot.refused = if status.is_bad() {
                self.stats.exceptions += 1;
                Some(format!("the server refused the node: {status}"))
            } else {
                match &dv.value {
                    Some(Variant::NodeId(dt)) => {
                        let want = ua_data_type(slot.signal.data_type);
                        if **dt == want {
                            None
                        } else {
                            self.stats.type_mismatches += 1;
                            Some(format!(
                                "declared type {} but the server's DataType is {}",
                                slot.signal.data_type.as_str(),
                                data_type_name(dt)
                            ))
                        }
                    }
                    other => {
                        self.stats.exceptions += 1;
                        Some(format!("the server gave no DataType ({other:?})"))
                    }
                }
            };
            if let Some(why) = &slot.refused {
                if self.reported.insert((*i, why.clone())) {
                    tracing::error!(plc = %self.plc, equipment = %self.equipment[slot.equipment], signal = %slot.name, node = %slot.node_text, error = %why, "signal cannot be read; it will be reported with bad quality");
                }
            }
        }
        Ok(())
    }

    async fn poll_inner(&mut self) -> Result<Vec<EquipmentSample>, PollError> {
        if let Some(c) = &self.conn {
            if c.event_loop.as_ref().is_none_or(|h| h.is_finished()) {
                self.conn = None;
                return Err(PollError::Transport("OPC UA session lost".into()));
            }
        }
        if self.conn.is_none() {
            self.connect().await?;
        }
        let Some(conn) = &self.conn else {
            return Err(PollError::Transport("OPC UA session lost".into()));
        };
        let ids: Vec<(usize, ReadValueId)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.refused.is_none())
            .filter_map(|(i, s)| Some((i, read_id(s.node.clone()?, AttributeId::Value))))
            .collect();
        let answers = read_all(&conn.session, &ids, conn.max_nodes, self.timeout).await?;
        let mut readings: Vec<Option<SignalReading>> = vec![None; self.slots.len()];
        for ((i, _), dv) in ids.iter().zip(answers) {
            readings[*i] = Some(reading(&self.slots[*i].signal, &dv));
        }
        let mut samples: Vec<EquipmentSample> = self
            .equipment
            .iter()
            .map(|code| EquipmentSample {
                equipment: code.clone(),
                signals: Default::default(),
            })
            .collect();
        for (slot, r) in self.slots.iter().zip(readings) {
            samples[slot.equipment].signals.insert(
                slot.name.clone(),
                r.unwrap_or(SignalReading {
                    value: None,
                    quality: Quality::Bad,
                }),
            );
        }
        Ok(samples)
    }
}

impl Poller for OpcUaPoller {
    async fn poll(&mut self) -> Result<Vec<EquipmentSample>, PollError> {
        let r = self.poll_inner().await;
        if matches!(r, Err(PollError::Transport(_))) {
            self.conn = None;
        }
        r
    }

    fn connected(&self) -> bool {
        self.conn.is_some()
    }

    fn stats(&self) -> PollerStats {
        self.stats
    }
}

fn read_id(node_id: NodeId, attribute: AttributeId) -> ReadValueId {
    ReadValueId {
        node_id,
        attribute_id: attribute as u32,
        index_range: NumericRange::None,
        data_encoding: QualifiedName::null(),
    }
}

/// Reads `ids` in as few Read calls as `max_nodes` allows, each under `timeout`.
async fn read_all(
    session: &Session,
    ids: &[(usize, ReadValueId)],
    max_nodes: usize,
    timeout: Duration,
) -> Result<Vec<DataValue>, PollError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(max_nodes.max(1)) {
        let nodes: Vec<ReadValueId> = chunk.iter().map(|(_, r)| r.clone()).collect();
        let answer = tokio::time::timeout(
            timeout,
            session.read(&nodes, TimestampsToReturn::Neither, 0.0),
        )
        .await
        .map_err(|_| {
            PollError::Transport(format!(
                "OPC UA read timed out after {} ms",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| classify(e.status(), &e.to_string()))?;
        if answer.len() != nodes.len() {
            return Err(PollError::Transport(format!(
                "malformed OPC UA read answer: {} results for {} nodes",
                answer.len(),
                nodes.len()
            )));
        }
        out.extend(answer);
    }
    Ok(out)
}

/// A service-level failure → a transport error worded for [`crate::health::failure_kind`].
fn classify(status: StatusCode, detail: &str) -> PollError {
    let s = status.to_string();
    let kind = if status == StatusCode::BadTimeout || status == StatusCode::BadRequestTimeout {
        "timed out"
    } else if status == StatusCode::BadDecodingError
        || status == StatusCode::BadEncodingError
        || status == StatusCode::BadUnknownResponse
    {
        "malformed answer"
    } else if status == StatusCode::BadCommunicationError
        || status == StatusCode::BadConnectionRejected
        || status == StatusCode::BadNotConnected
    {
        if detail.to_ascii_lowercase().contains("refused") {
            "connection refused"
        } else {
            "no connection"
        }
    } else {
        "failed"
    };
    PollError::Transport(format!("OPC UA {kind}: {s} ({detail})"))
}

/// Builds a client for `ua`, connects, creates and activates a session.
async fn open(plc: &str, ua: &OpcUa, timeout: Duration) -> Result<Conn, PollError> {
    let io = |what: &str, e: std::io::Error| PollError::Transport(format!("{what}: {e}"));
    let pki = &ua.pki_dir;
    for sub in ["own", "trusted", "rejected"] {
        std::fs::create_dir_all(pki.join(sub))
            .map_err(|e| io(&format!("cannot create {}", pki.join(sub).display()), e))?;
    }
    let trust_unknown =
        ua.trust_server == TrustServer::FirstUse && dir_is_empty(&pki.join("trusted"));
    let identity = match (&ua.username, &ua.password_file) {
        (None, _) => IdentityToken::Anonymous,
        (Some(u), None) => IdentityToken::UserName(u.clone(), Password::new(String::new())),
        (Some(u), Some(f)) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| io(&format!("cannot read {}", f.display()), e))?;
            IdentityToken::UserName(
                u.clone(),
                Password::new(text.trim_end_matches(['\r', '\n']).to_string()),
            )
        }
    };
    let builder = ClientBuilder::new()
        .application_name("ms5-edge")
        .application_uri("urn:ms5-edge:client")
        .product_uri("urn:ms5-edge")
        .pki_dir(pki.clone())
        .certificate_path("own/cert.der")
        .private_key_path("own/private.pem")
        .create_sample_keypair(true)
        .trust_server_certs(trust_unknown)
        .verify_server_certs(true)
        .session_retry_limit(0)
        .request_timeout(timeout)
        .session_timeout(60_000)
        .session_name(format!("ms5-edge {plc}"));
    let mut client = builder.client().map_err(|errors| {
        PollError::Transport(format!(
            "OPC UA client config failed: {}",
            errors.join("; ")
        ))
    })?;
    let policy = match ua.security_policy {
        SecurityPolicy::None => UaPolicy::None,
        SecurityPolicy::Basic256Sha256 => UaPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep => UaPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss => UaPolicy::Aes256Sha256RsaPss,
    };
    let mode = match ua.security_mode {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    };
    let deadline = timeout.max(Duration::from_secs(1));
    let timed_out = |what: &str| {
        PollError::Transport(format!(
            "OPC UA {what} timed out after {} ms",
            deadline.as_millis()
        ))
    };
    let (session, event_loop) = tokio::time::timeout(
        deadline,
        client
            .connect_to_matching_endpoint((ua.endpoint.as_str(), policy.to_uri(), mode), identity),
    )
    .await
    .map_err(|_| timed_out("endpoint discovery"))?
    .map_err(|e| {
        let detail = e.to_string();
        if detail.contains("No matching endpoint")
            || e.status() == StatusCode::BadSecurityPolicyRejected
        {
            PollError::Transport(format!(
                "OPC UA server offers no endpoint {} with {} / {}: {detail}",
                ua.endpoint, ua.security_policy, ua.security_mode
            ))
        } else {
            classify(e.status(), &detail)
        }
    })?;
    session.disable_reconnects();
    let mut event_loop = event_loop.spawn();
    tokio::select! {
        ok = tokio::time::timeout(deadline, session.wait_for_connection()) => {
            if !matches!(ok, Ok(true)) {
                event_loop.abort();
                return Err(timed_out("session activation"));
            }
        }
        ended = &mut event_loop => {
            let status = ended.unwrap_or(StatusCode::BadUnexpectedError);
            let rejected = pki.join("rejected");
            let hint = if status == StatusCode::BadCertificateUntrusted
                || status == StatusCode::BadSecurityChecksFailed
            {
                format!(
                    " (if the server certificate is unknown it was saved in {}; move it to {} to trust it)",
                    rejected.display(),
                    pki.join("trusted").display()
                )
            } else {
                String::new()
            };
            return Err(classify(status, &format!("session not established{hint}")));
        }
    }
    let mut conn = Conn {
        session: session.clone(),
        event_loop: Some(event_loop),
        max_nodes: usize::MAX,
    };
    // MaxNodesPerRead (0 or unreadable = no limit).
    let limit = read_id(
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead.into(),
        AttributeId::Value,
    );
    conn.max_nodes = match tokio::time::timeout(
        deadline,
        session.read(&[limit], TimestampsToReturn::Neither, 0.0),
    )
    .await
    {
        Ok(Ok(v)) => match v.first().and_then(|d| d.value.as_ref()) {
            Some(Variant::UInt32(n)) if *n > 0 => usize::try_from(*n).unwrap_or(usize::MAX),
            _ => usize::MAX,
        },
        _ => usize::MAX,
    };
    Ok(conn)
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

/// The standard DataType node of a declared type (namespace 0).
fn ua_data_type(t: DataType) -> NodeId {
    let id: u32 = match t {
        DataType::Bool => 1,
        DataType::I8 => 2,
        DataType::U8 => 3,
        DataType::I16 => 4,
        DataType::U16 => 5,
        DataType::I32 => 6,
        DataType::U32 => 7,
        DataType::I64 => 8,
        DataType::U64 => 9,
        DataType::F32 => 10,
        DataType::F64 => 11,
    };
    NodeId::new(0, id)
}

/// A DataType node for messages: the standard name where it has one.
fn data_type_name(dt: &NodeId) -> String {
    const NAMES: [&str; 11] = [
        "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
        "Float", "Double",
    ];
    if dt.namespace == 0 {
        if let opcua::types::Identifier::Numeric(n) = dt.identifier {
            if (1..=11).contains(&n) {
                return NAMES[(n - 1) as usize].to_string();
            }
        }
    }
    dt.to_string()
}

/// One `DataValue` → one reading of `signal` (see the module doc for the quality rules).
fn reading(signal: &Signal, dv: &DataValue) -> SignalReading {
    let status = dv.status();
    let none = |quality| SignalReading {
        value: None,
        quality,
    };
    if status.is_bad() {
        return none(Quality::Bad);
    }
    if status.is_uncertain() {
        return none(Quality::Stale);
    }
    match dv.value.as_ref().and_then(|v| value_of(signal, v)) {
        Some(value) => SignalReading {
            value: Some(value),
            quality: Quality::Good,
        },
        None => none(Quality::Bad),
    }
}

/// The engineering value of a Variant, `None` if its type or length is not the declared one.
fn value_of(signal: &Signal, v: &Variant) -> Option<Value> {
    if signal.count > 1 {
        let Variant::Array(a) = v else { return None };
        if a.values.len() != usize::from(signal.count) {
            return None;
        }
        return a
            .values
            .iter()
            .map(|e| scalar(signal, e))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array);
    }
    scalar(signal, v)
}

fn scalar(signal: &Signal, v: &Variant) -> Option<Value> {
    let raw = match (signal.data_type, v) {
        (DataType::Bool, Variant::Boolean(b)) => Raw::Bool(*b),
        (DataType::I8, Variant::SByte(i)) => Raw::Int(i64::from(*i)),
        (DataType::U8, Variant::Byte(u)) => Raw::UInt(u64::from(*u)),
        (DataType::I16, Variant::Int16(i)) => Raw::Int(i64::from(*i)),
        (DataType::U16, Variant::UInt16(u)) => Raw::UInt(u64::from(*u)),
        (DataType::I32, Variant::Int32(i)) => Raw::Int(i64::from(*i)),
        (DataType::U32, Variant::UInt32(u)) => Raw::UInt(u64::from(*u)),
        (DataType::I64, Variant::Int64(i)) => Raw::Int(*i),
        (DataType::U64, Variant::UInt64(u)) => Raw::UInt(*u),
        (DataType::F32, Variant::Float(f)) => Raw::Float(widen_f32(*f)),
        (DataType::F64, Variant::Double(f)) => Raw::Float(*f),
        _ => return None,
    };
    engineering(raw, signal.scale, signal.offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(data_type: DataType, count: u16) -> Signal {
        Signal {
            source: SignalSource::Node {
                node: "ns=2;i=1".into(),
            },
            data_type,
            count,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn dv(value: Variant, status: StatusCode) -> DataValue {
        DataValue {
            value: Some(value),
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn status_codes_map_to_quality() {
        let s = signal(DataType::I16, 1);
        let good = reading(&s, &dv(Variant::Int16(-3), StatusCode::Good));
        assert_eq!(good.value, Some(Value::Int(-3)));
        assert_eq!(good.quality, Quality::Good);
        let bad = reading(&s, &dv(Variant::Int16(1), StatusCode::BadSensorFailure));
        assert_eq!((bad.value, bad.quality), (None, Quality::Bad));
        let unc = reading(
            &s,
            &dv(Variant::Int16(1), StatusCode::UncertainLastUsableValue),
        );
        assert_eq!((unc.value, unc.quality), (None, Quality::Stale));
    }

    #[test]
    fn a_variant_of_another_type_is_bad_never_converted() {
        let s = signal(DataType::U32, 1);
        let r = reading(&s, &dv(Variant::Int32(5), StatusCode::Good));
        assert_eq!((r.value, r.quality), (None, Quality::Bad));
    }

    #[test]
    fn arrays_need_the_declared_length() {
        let s = signal(DataType::I32, 3);
        let arr = Variant::from(vec![1i32, 2, 3]);
        let r = reading(&s, &dv(arr, StatusCode::Good));
        assert_eq!(
            r.value,
            Some(Value::Array(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Int(3)
            ]))
        );
        let short = reading(&s, &dv(Variant::from(vec![1i32, 2]), StatusCode::Good));
        assert_eq!(short.quality, Quality::Bad);
    }

    #[test]
    fn declared_types_name_the_standard_data_type_nodes() {
        assert_eq!(ua_data_type(DataType::Bool), NodeId::new(0, 1u32));
        assert_eq!(ua_data_type(DataType::F64), NodeId::new(0, 11u32));
        assert_eq!(data_type_name(&NodeId::new(0, 7u32)), "UInt32");
        assert_eq!(data_type_name(&NodeId::new(2, 7u32)), "ns=2;i=7");
    }
}
