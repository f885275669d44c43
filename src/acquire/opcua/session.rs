//! One OPC UA session of the driver: building the client (own certificate, trust store, user
//! identity), discovery, activation, the Read calls, and the wording of failures.
//!
//! Owns: the [`Conn`] (closed politely when dropped), the fault classes of
//! [`classify`] and the operator's hint when a certificate is refused ([`trust_hint`]: the
//! rejected server certificate is named by its file under `pki_dir/rejected`, the one an
//! engineer moves to `pki_dir/trusted`). Never does: Write, Call or subscriptions; it never
//! trusts a certificate on its own except under `trust_server = "first-use"` while
//! `trusted/` is empty; it never retries (the schedule's backoff does).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opcua::client::{Client, ClientBuilder, IdentityToken, Password, Session};
use opcua::crypto::{CertificateStore, SecurityPolicy as UaPolicy, X509};
use opcua::types::{
    AttributeId, DataValue, MessageSecurityMode, NodeId, NumericRange, QualifiedName, ReadValueId,
    StatusCode, TimestampsToReturn, VariableId, Variant,
};

use super::super::PollError;

/// The most elements of one array in a message from the server (the Read's results, an array
/// value): more than a gateway's PLC has nodes.
pub(super) const MAX_ARRAY_LENGTH: usize = 100_000;
use crate::config::{OpcUa, SecurityMode, SecurityPolicy, TrustServer};

/// A live session.
pub(super) struct Conn {
    pub(super) session: Arc<Session>,
    /// Always `Some` until dropped.
    pub(super) event_loop: Option<tokio::task::JoinHandle<StatusCode>>,
    /// Nodes per Read call; `usize::MAX` when the server sets no limit.
    pub(super) max_nodes: usize,
}

impl Conn {
    /// Whether the session's event loop still runs (the secure channel is up).
    pub(super) fn alive(&self) -> bool {
        self.event_loop.as_ref().is_some_and(|h| !h.is_finished())
    }
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

pub(super) fn read_id(node_id: NodeId, attribute: AttributeId) -> ReadValueId {
    ReadValueId {
        node_id,
        attribute_id: attribute as u32,
        index_range: NumericRange::None,
        data_encoding: QualifiedName::null(),
    }
}

/// Reads `ids` in as few Read calls as `max_nodes` allows, each under `timeout`.
pub(super) async fn read_all(
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
pub(super) async fn open(plc: &str, ua: &OpcUa, timeout: Duration) -> Result<Conn, PollError> {
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
        // One Read carries every node of the PLC (and the connect check two attributes of
        // each): the library's default of 1 000 array elements per message would refuse a
        // PLC of 500+ nodes. The message size limit (5 × 64 KiB) still bounds the memory.
        .max_array_length(MAX_ARRAY_LENGTH)
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
        // The library's words for "no endpoint with this policy and mode" (0.19: "Cannot find
        // matching endpoint", BadTcpEndpointUrlInvalid).
        if detail.contains("No matching endpoint")
            || detail.contains("Cannot find matching endpoint")
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
            let hint = if status == StatusCode::BadCertificateUntrusted
                || status == StatusCode::BadSecurityChecksFailed
            {
                trust_hint(&client, ua, deadline, policy, mode).await
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

/// Why a session was refused over certificates, for the operator: when the server's
/// certificate (fetched again with GetEndpoints, which needs no trust) lies in
/// `pki_dir/rejected`, its file and the move that trusts it; otherwise the other side's
/// refusal of ours. Best effort: no answer gives the general hint.
async fn trust_hint(
    client: &Client,
    ua: &OpcUa,
    deadline: Duration,
    policy: UaPolicy,
    mode: MessageSecurityMode,
) -> String {
    let pki = &ua.pki_dir;
    let (rejected, trusted) = (pki.join("rejected"), pki.join("trusted"));
    let endpoints = tokio::time::timeout(
        deadline,
        client.get_server_endpoints_from_url(ua.endpoint.as_str()),
    )
    .await;
    let cert = match endpoints {
        Ok(Ok(list)) => list
            .iter()
            .filter(|e| e.security_policy_uri.as_ref() == policy.to_uri())
            .chain(list.iter().filter(|e| e.security_mode == mode))
            .chain(list.iter())
            .find_map(|e| X509::from_byte_string(&e.server_certificate).ok()),
        _ => None,
    };
    let Some(cert) = cert else {
        return format!(
            " (if the server certificate is unknown it was saved in {}; move it to {} to trust it)",
            rejected.display(),
            trusted.display()
        );
    };
    let name = CertificateStore::cert_file_name(&cert);
    let saved = rejected.join(&name);
    if saved.is_file() {
        format!(
            ": the server certificate is not trusted and was saved as {}; to trust it, move it \
             to {}/ (read again at the next connect, no restart needed)",
            saved.display(),
            trusted.display()
        )
    } else if trusted.join(&name).is_file() {
        format!(
            ": the server certificate is trusted ({}), so the server may not trust ours: trust \
             {} on the server",
            trusted.join(&name).display(),
            pki.join("own/cert.der").display()
        )
    } else {
        format!(
            ": the server certificate {name} is neither in {} nor in {}",
            trusted.display(),
            rejected.display()
        )
    }
}
