//! Signed commands (SPEC §7): the one definition of how a command body is signed, shared by the
//! gate ([`super::guard`]) and the reference signer (`ms5-edge sign`).
//!
//! ## The algorithm
//!
//! `sig` = lowercase hex of HMAC-SHA256(key, UTF-8 of `topic + "\n" + body`), where
//! - `topic` is the **full MQTT topic as published**, prefix included
//!   (`ms5/bp01-gw1/cmd/BP01.PACK.BAG1/andon/ack`), so a signature is bound to one gateway, one
//!   equipment and one command;
//! - `body` is the body as the sender wrote it, before the signature was added.
//!
//! On the wire the body carries `,"sig":"<64 hex>"` inserted just before its final `}`, or
//! `"sig":"<64 hex>"` alone when the object is empty (`{}` → `{"sig":"…"}`).
//!
//! ## Invariants
//! - **Never re-serialise.** The verifier removes exactly that suffix from the received bytes
//!   and checks the MAC over what is left, so spacing and member order are the sender's.
//!   [`insert_member`] and [`split`] are exact inverses (unit-tested).
//! - **Constant time.** Tags are compared with `ring::hmac::verify`.
//! - **The key is never printed**; it is at least [`MIN_KEY_BYTES`] bytes (the config compiler
//!   checks the file, [`read_key`] checks again at start).
//! - Everything here is pure except [`read_key`] / [`load_key`], which read the key file.

use std::path::Path;

use ring::hmac;
use thiserror::Error;

/// Length of the hex signature.
pub const SIG_HEX_LEN: usize = 64;
/// Shortest accepted key (SPEC §7).
pub const MIN_KEY_BYTES: usize = crate::config::MIN_COMMAND_KEY_BYTES as usize;

/// Why a key cannot be used or a body cannot be signed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignError {
    #[error("cannot read the command key {path}: {why}")]
    Unreadable { path: String, why: String },
    #[error("the command key {path} is {len} bytes; at least {MIN_KEY_BYTES} are required")]
    ShortKey { path: String, len: usize },
    #[error("the body must be a JSON object: {0}")]
    NotAnObject(String),
    #[error("the body already carries a \"sig\" member")]
    AlreadySigned,
}

/// Why a received body does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// No `"sig":"<64 lowercase hex>"` just before the final `}`.
    Missing,
    /// A signature is there but does not match.
    Mismatch,
}

/// The signature of `body` (without its `sig`) sent on `topic`.
pub fn sign(key: &[u8], topic: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, &message(topic, body));
    hex(tag.as_ref())
}

/// `topic + "\n" + body`, the bytes that are MACed.
fn message(topic: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(topic.len() + 1 + body.len());
    m.extend_from_slice(topic.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

/// Inserts the member text `"name":value` before the final `}` of a JSON object text: with a
/// leading `,` unless the object is empty. `None` when there is no final `}`.
pub fn insert_member(body: &str, member: &str) -> Option<String> {
    let close = body.rfind('}')?;
    let head = &body[..close];
    let empty = head.trim_end().ends_with('{');
    let comma = if empty { "" } else { "," };
    Some(format!("{head}{comma}{member}{}", &body[close..]))
}

/// A received signed body taken apart: the body as it was signed (`head` + `tail`, the
/// signature suffix removed) and the signature's hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed<'a> {
    pub head: &'a [u8],
    pub tail: &'a [u8],
    pub sig: &'a [u8],
}

impl Signed<'_> {
    /// The body as signed.
    pub fn body(&self) -> Vec<u8> {
        [self.head, self.tail].concat()
    }
}

/// Finds `,"sig":"<64 lowercase hex>"` (or, in an empty object, `"sig":"…"`) just before the
/// final `}` of `payload`.
pub fn split(payload: &[u8]) -> Result<Signed<'_>, VerifyError> {
    const OPEN: &[u8] = br#""sig":""#;
    let close = payload
        .iter()
        .rposition(|&b| b == b'}')
        .ok_or(VerifyError::Missing)?;
    let before = &payload[..close];
    let member_len = OPEN.len() + SIG_HEX_LEN + 1;
    let Some(start) = before.len().checked_sub(member_len) else {
        return Err(VerifyError::Missing);
    };
    let member = &before[start..];
    let sig = &member[OPEN.len()..OPEN.len() + SIG_HEX_LEN];
    if !member.starts_with(OPEN)
        || member.last() != Some(&b'"')
        || !sig.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(VerifyError::Missing);
    }
    let rest = &before[..start];
    let head = match rest.last() {
        Some(b',') => &rest[..rest.len() - 1],
        // An empty object: `{"sig":…}`, possibly with the sender's spacing after `{`.
        _ if rest.trim_ascii_end().ends_with(b"{") => rest,
        _ => return Err(VerifyError::Missing),
    };
    Ok(Signed {
        head,
        tail: &payload[close..],
        sig,
    })
}

/// A verifier for one key.
pub struct Verifier {
    key: hmac::Key,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(***)")
    }
}

impl Verifier {
    pub fn new(key: &[u8]) -> Verifier {
        Verifier {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Checks the signature carried by `payload`, received on `topic`.
    pub fn verify(&self, topic: &str, payload: &[u8]) -> Result<(), VerifyError> {
        let signed = split(payload)?;
        let tag = unhex(signed.sig).ok_or(VerifyError::Missing)?;
        hmac::verify(&self.key, &message(topic, &signed.body()), &tag)
            .map_err(|_| VerifyError::Mismatch)
    }
}

/// Signs `body` for `topic` as `ms5-edge sign` does: adds `"issued_at":"<issued_at>"` when the
/// body has no top-level `issued_at` (inserted as text, nothing re-serialised), then appends
/// the signature. Returns the body to publish.
pub fn sign_body(
    key: &[u8],
    topic: &str,
    body: &str,
    issued_at: &str,
) -> Result<String, SignError> {
    let parsed: serde_json::Value =
        serde_json::from_str(body).map_err(|e| SignError::NotAnObject(e.to_string()))?;
    let Some(object) = parsed.as_object() else {
        return Err(SignError::NotAnObject("found another JSON value".into()));
    };
    if object.contains_key("sig") {
        return Err(SignError::AlreadySigned);
    }
    let not_object = || SignError::NotAnObject("no closing brace".into());
    let body = if object.contains_key("issued_at") {
        body.to_string()
    } else {
        let member = format!(r#""issued_at":{}"#, serde_json::Value::from(issued_at));
        insert_member(body, &member).ok_or_else(not_object)?
    };
    let sig = sign(key, topic, body.as_bytes());
    insert_member(&body, &format!(r#""sig":"{sig}""#)).ok_or_else(not_object)
}

/// Reads a command key: the file's bytes exactly, at least [`MIN_KEY_BYTES`].
pub fn read_key(path: &Path) -> Result<Vec<u8>, SignError> {
    super::tls::warn_if_world_readable(path);
    let key = std::fs::read(path).map_err(|e| SignError::Unreadable {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    if key.len() < MIN_KEY_BYTES {
        return Err(SignError::ShortKey {
            path: path.display().to_string(),
            len: key.len(),
        });
    }
    Ok(key)
}

/// The key of `[commands] key_file` for a starting pipeline. An unreadable key is logged and
/// returned as `None`: the gate then refuses every command (it fails closed, see
/// [`super::guard`]), it never accepts unsigned ones.
pub fn load_key(commands: &crate::config::Commands) -> Option<Vec<u8>> {
    let path = commands.key_file.as_ref()?;
    match read_key(path) {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::error!(error = %e, "command key unusable: every command will be refused");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = {
        let mut k = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            k[i] = i as u8;
            i += 1;
        }
        k
    };
    const TOPIC: &str = "ms5/gw/cmd/E1/andon/ack";

    #[test]
    fn the_signature_is_lowercase_hex_hmac_sha256_of_topic_newline_body() {
        // Computed independently with python3: hmac.new(bytes(range(32)), msg, sha256).
        assert_eq!(
            sign(&KEY, TOPIC, br#"{"request_id":"r1"}"#),
            "3716f9b9d718f929f6a84c47981842873f4dc172778f11f35443da3e30b79af5"
        );
    }

    #[test]
    fn splitting_a_signed_body_gives_back_the_exact_bytes_that_were_signed() {
        for body in [
            r#"{"request_id":"r1"}"#,
            "{ \"b\" : 2,\n  \"a\": [1, {\"x\":\"}\"}] }\n",
            "{}",
            "{ }",
        ] {
            let signed = insert_member(
                body,
                r#""sig":"0000000000000000000000000000000000000000000000000000000000000000""#,
            )
            .unwrap();
            let parts = split(signed.as_bytes()).unwrap();
            assert_eq!(parts.body(), body.as_bytes(), "{signed}");
        }
    }

    #[test]
    fn an_empty_object_is_signed_with_the_sig_member_alone() {
        let signed = sign_body(&KEY, TOPIC, "{}", "2026-12-01T00:00:00Z").unwrap();
        assert!(signed.starts_with(r#"{"issued_at":"2026-12-01T00:00:00Z","sig":""#));
        let mut bare = String::from("{}");
        let sig = sign(&KEY, TOPIC, bare.as_bytes());
        bare = insert_member(&bare, &format!(r#""sig":"{sig}""#)).unwrap();
        assert_eq!(bare, format!(r#"{{"sig":"{sig}"}}"#));
        assert_eq!(Verifier::new(&KEY).verify(TOPIC, bare.as_bytes()), Ok(()));
    }

    #[test]
    fn a_signed_body_verifies_and_any_changed_byte_does_not() {
        let signed = sign_body(
            &KEY,
            TOPIC,
            r#"{"request_id":"r1", "by":"x"}"#,
            "2026-12-01T00:00:00Z",
        )
        .unwrap();
        let v = Verifier::new(&KEY);
        assert_eq!(v.verify(TOPIC, signed.as_bytes()), Ok(()));
        assert_eq!(
            v.verify("ms5/gw/cmd/E2/andon/ack", signed.as_bytes()),
            Err(VerifyError::Mismatch)
        );
        let tampered = signed.replace("\"x\"", "\"y\"");
        assert_eq!(
            v.verify(TOPIC, tampered.as_bytes()),
            Err(VerifyError::Mismatch)
        );
        let respaced = signed.replace(", ", ",");
        assert_eq!(
            v.verify(TOPIC, respaced.as_bytes()),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_body_without_a_signature_suffix_is_missing_its_signature() {
        for payload in [
            r#"{"request_id":"r1"}"#,
            r#"{"request_id":"r1","sig":"ABCDEF"}"#,
            r#"{"sig":"3716F9B9D718F929F6A84C47981842873F4DC172778F11F35443DA3E30B79AF5"}"#,
            r#"{"a":{"sig":"3716f9b9d718f929f6a84c47981842873f4dc172778f11f35443da3e30b79af5"}}"#,
            "",
            "}",
        ] {
            assert_eq!(
                Verifier::new(&KEY).verify(TOPIC, payload.as_bytes()),
                Err(VerifyError::Missing),
                "{payload}"
            );
        }
    }

    #[test]
    fn signing_keeps_an_existing_issued_at_and_refuses_a_second_signature() {
        let body = r#"{"request_id":"r1","issued_at":"2026-01-01T00:00:00Z"}"#;
        let signed = sign_body(&KEY, TOPIC, body, "2026-12-01T00:00:00Z").unwrap();
        assert!(signed.starts_with(body.trim_end_matches('}')));
        assert_eq!(
            sign_body(&KEY, TOPIC, &signed, "x"),
            Err(SignError::AlreadySigned)
        );
        assert!(matches!(
            sign_body(&KEY, TOPIC, "[1]", "x"),
            Err(SignError::NotAnObject(_))
        ));
    }

    #[test]
    fn a_key_shorter_than_32_bytes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, [7u8; 31]).unwrap();
        assert!(matches!(
            read_key(&short),
            Err(SignError::ShortKey { len: 31, .. })
        ));
        let good = dir.path().join("good.key");
        std::fs::write(&good, KEY).unwrap();
        assert_eq!(read_key(&good).unwrap(), KEY.to_vec());
    }

    #[test]
    fn a_verifier_never_prints_its_key() {
        assert_eq!(format!("{:?}", Verifier::new(&KEY)), "Verifier(***)");
    }
}
