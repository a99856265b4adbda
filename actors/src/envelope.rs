//! The wire format shared by every transport.
//!
//! An [`Envelope`] is what travels between processes: the message's wire
//! name, who sent it, a request id to match the reply, an absolute deadline
//! (wall-clock milliseconds, since the two ends do not share a monotonic
//! clock), the JSON body and an optional HMAC. Replies are envelopes too;
//! their body is a serialised [`ReplyBody`] so a caller can tell a handler's
//! answer from a handler's error from a decoding failure on the far side.
//!
//! The envelope knows nothing about Redis or any other medium: a transport
//! stores it however it likes (the in-memory one keeps the struct, a Redis
//! Streams one would store its JSON text in a stream entry).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Suffix appended to a request's wire name to form its reply's wire name, so
/// a signed reply can never be replayed as a request.
pub const REPLY_SUFFIX: &str = "#reply";

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`RemoteMessage::WIRE_NAME`](crate::RemoteMessage::WIRE_NAME) of the
    /// body (with [`REPLY_SUFFIX`] for replies).
    pub wire_name: String,
    /// Instance name of the process that produced this envelope; replies are
    /// routed back to it.
    pub sender_instance: String,
    /// Unique per request; a reply carries the id of its request.
    pub request_id: String,
    /// Absolute deadline in milliseconds since the Unix epoch. An envelope
    /// past its deadline is not handled. `None` (fire-and-forget messages)
    /// never expires.
    pub deadline_unix_ms: Option<u64>,
    /// The serialised message (or [`ReplyBody`] for replies).
    pub body: Value,
    /// Hex HMAC-SHA256 over [`Envelope::signing_bytes`], set by the sending
    /// transport when a shared secret is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
}

impl Envelope {
    /// A new request envelope with a fresh random request id.
    pub fn request(
        wire_name: impl Into<String>,
        sender_instance: impl Into<String>,
        deadline_unix_ms: Option<u64>,
        body: Value,
    ) -> Self {
        Self {
            wire_name: wire_name.into(),
            sender_instance: sender_instance.into(),
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            deadline_unix_ms,
            body,
            hmac: None,
        }
    }

    /// The reply to `request`, produced by `responder_instance`.
    pub fn reply_to(
        request: &Envelope,
        responder_instance: impl Into<String>,
        body: ReplyBody,
    ) -> Self {
        Self {
            wire_name: format!("{}{REPLY_SUFFIX}", request.wire_name),
            sender_instance: responder_instance.into(),
            request_id: request.request_id.clone(),
            deadline_unix_ms: request.deadline_unix_ms,
            body: body.into_value(),
            hmac: None,
        }
    }

    /// Whether the deadline has passed at wall-clock time `now_unix_ms`.
    pub fn is_expired_at(&self, now_unix_ms: u64) -> bool {
        self.deadline_unix_ms.is_some_and(|d| now_unix_ms >= d)
    }

    /// Whether the deadline has passed now.
    pub fn is_expired(&self) -> bool {
        self.is_expired_at(now_unix_ms())
    }

    /// Time left before the deadline (`None` when there is no deadline;
    /// zero when it has passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline_unix_ms
            .map(|d| Duration::from_millis(d.saturating_sub(now_unix_ms())))
    }

    /// The bytes the HMAC covers: every field but `hmac`, as canonical JSON
    /// (object keys sorted, no whitespace), so both ends compute the same
    /// bytes whatever map ordering their `serde_json` build uses.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let fields = Value::Array(vec![
            Value::String(self.wire_name.clone()),
            Value::String(self.sender_instance.clone()),
            Value::String(self.request_id.clone()),
            self.deadline_unix_ms.map_or(Value::Null, Value::from),
            self.body.clone(),
        ]);
        let mut out = String::new();
        write_canonical(&fields, &mut out);
        out.into_bytes()
    }
}

/// The body of a reply envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReplyBody {
    /// The handler's answer, serialised.
    Ok {
        /// Serialised `M::Reply`.
        value: Value,
    },
    /// No answer; why.
    Error {
        /// Category, mapped back to a [`MailboxError`](crate::MailboxError).
        kind: ReplyErrorKind,
        /// Human-readable detail.
        message: String,
    },
}

impl ReplyBody {
    /// Serialise into an envelope body.
    pub fn into_value(self) -> Value {
        match serde_json::to_value(&self) {
            Ok(v) => v,
            // Serialising this enum cannot fail (string keys, plain values);
            // keep a well-formed error body rather than panicking.
            Err(e) => serde_json::json!({
                "status": "error",
                "kind": "decode",
                "message": format!("failed to encode reply: {e}"),
            }),
        }
    }

    /// A handler error.
    pub fn handler_error(message: impl Into<String>) -> Self {
        Self::Error {
            kind: ReplyErrorKind::Handler,
            message: message.into(),
        }
    }
}

/// Why a remote request produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyErrorKind {
    /// The handler returned an error (→ `MailboxError::Remote`).
    Handler,
    /// The request body did not decode as the named message (→ `Decode`).
    Decode,
    /// No handler is registered for the wire name (→ `Decode`).
    UnknownMessage,
    /// The handler (or the local actor behind it) ran out of time (→ `Timeout`).
    Timeout,
    /// The actor behind the endpoint is gone (→ `Unreachable`).
    Unavailable,
}

/// Milliseconds since the Unix epoch, by the wall clock (0 if the clock is
/// before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wall-clock deadline `timeout` from now, in Unix milliseconds.
pub fn deadline_after(timeout: Duration) -> u64 {
    now_unix_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}

/// Canonical JSON: objects with keys sorted by byte order, no whitespace.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(key, out);
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_json_string(s, out),
        // Null, Bool and Number have a single serde_json rendering.
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

fn write_json_string(s: &str, out: &mut String) {
    // Display of a Value::String is its JSON-escaped form.
    let _ = write!(out, "{}", Value::String(s.to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_ignores_key_order() {
        let a = Envelope {
            wire_name: "w".into(),
            sender_instance: "s".into(),
            request_id: "r".into(),
            deadline_unix_ms: Some(5),
            body: json!({"b": 1, "a": {"y": [1, "x"], "x": null}}),
            hmac: None,
        };
        let mut b = a.clone();
        let text = r#"{"a": {"x": null, "y": [1, "x"]}, "b": 1}"#;
        b.body = serde_json::from_str(text).expect("valid json");
        assert_eq!(a.signing_bytes(), b.signing_bytes());
        assert_eq!(
            String::from_utf8(a.signing_bytes()).expect("utf8"),
            r#"["w","s","r",5,{"a":{"x":null,"y":[1,"x"]},"b":1}]"#
        );
    }

    #[test]
    fn reply_body_round_trips() {
        let body = ReplyBody::Error {
            kind: ReplyErrorKind::UnknownMessage,
            message: "x".into(),
        };
        let v = body.clone().into_value();
        assert_eq!(
            v,
            json!({"status": "error", "kind": "unknown_message", "message": "x"})
        );
        assert_eq!(
            serde_json::from_value::<ReplyBody>(v).expect("decodes"),
            body
        );
    }

    #[test]
    fn expiry() {
        let mut e = Envelope::request("w", "s", Some(100), Value::Null);
        assert!(!e.is_expired_at(99));
        assert!(e.is_expired_at(100));
        e.deadline_unix_ms = None;
        assert!(!e.is_expired_at(u64::MAX));
    }
}
