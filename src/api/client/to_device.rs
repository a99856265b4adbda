//! `PUT /sendToDevice/{eventType}/{txnId}`: messages to single devices.
//!
//! The body is checked here, before anything is stored: `messages` must be
//! there (`400 M_MISSING_PARAM`), an object of objects of objects
//! (`400 M_BAD_JSON`), and each message's content at most
//! [`MAX_TO_DEVICE_CONTENT_BYTES`] (`413 M_TOO_LARGE`, Synapse's
//! `MAX_TO_DEVICE_CONTENT_SIZE`). Users that are not valid user ids, or not
//! of this server, and devices that do not exist are skipped, as Synapse
//! skips them (there is no federation yet to carry the remote ones).
//!
//! The send is split by the writers of the receiving users (the
//! `to_device` stream is sharded by receiving user): each writer stores its
//! part, and the request is answered once every part is stored in
//! PostgreSQL (and this instance has seen it). The txnId makes the send
//! idempotent per (user, device, txnId), as the spec's transaction
//! identifiers are: a part already stored is not stored again (a retry
//! after a partial failure completes the send), and once the whole send is
//! stored, a request with the same txnId answers the same `200 {}`
//! whatever its body, and stores nothing (the spec: the server answers a
//! retransmission as it answered the original; Synapse's transaction cache
//! does the same).

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use ruma::OwnedUserId;
use serde_json::{json, Map, Value};

use crate::api::limits::{check_bytes, check_json_no_nul, check_no_nul, check_txn_id};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::roles::to_device::{SendToDevice, ToDeviceWritten, TO_DEVICE_STREAM};
use crate::roles::WriteError;
use crate::storage::to_device;

/// The largest content of one to-device message, in bytes of its JSON
/// (Synapse's `MAX_TO_DEVICE_CONTENT_SIZE`, its largest EDU: 64 KiB).
pub const MAX_TO_DEVICE_CONTENT_BYTES: usize = 65536;

/// An event type, in bytes (as the events writer's).
const MAX_TYPE_BYTES: usize = 255;

/// A device id of `messages`, in bytes (as clients may choose them).
const MAX_DEVICE_ID_BYTES: usize = crate::api::limits::MAX_DEVICE_ID_BYTES;

/// Receiving user → device id (or `*`) → content.
type Messages = BTreeMap<OwnedUserId, BTreeMap<String, Map<String, Value>>>;

/// PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}
pub async fn send_to_device(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (kind, txn_id) = path.into_inner();
    check_txn_id(&txn_id)?;
    check_bytes("event type", &kind, MAX_TYPE_BYTES)?;
    check_no_nul("event type", &kind)?;
    let user_id = requester.user_id.as_str();
    let device_id = requester.device_id.as_str();
    if to_device::txn_complete(&node.pool, user_id, device_id, &txn_id).await? {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    let messages = parse_messages(&body, &node.config.server_name)?;
    let stored = send_to_owners(&node, &requester, device_id, &txn_id, &kind, messages).await?;
    for written in stored {
        if let Some(position) = written.position {
            node.wait_for_write(TO_DEVICE_STREAM, &written.instance, position)
                .await;
        }
    }
    // Every part is stored: the whole send is, whatever comes again.
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    to_device::record_whole_txn(&client, user_id, device_id, &txn_id).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Sends `messages` to the to-device writers, one part per writer with the
/// receiving users whose shards it owns. A part its writer refuses because
/// a shard moved is split again by the owners read anew and sent on, until
/// the write deadline. Answers what each writer stored.
async fn send_to_owners(
    node: &Node,
    requester: &Requester,
    device_id: &str,
    txn_id: &str,
    kind: &str,
    mut messages: Messages,
) -> ApiResult<Vec<ToDeviceWritten>> {
    let sender = requester.user()?;
    let deadline = tokio::time::Instant::now() + node.write_deadline();
    let mut stored = Vec::new();
    loop {
        let mut parts: BTreeMap<String, Messages> = BTreeMap::new();
        let mut unowned = Messages::new();
        for (user, by_device) in messages {
            match node
                .mailboxes
                .owner_instance(TO_DEVICE_STREAM, user.as_str())
            {
                Some(instance) => {
                    parts.entry(instance).or_default().insert(user, by_device);
                }
                None => {
                    unowned.insert(user, by_device);
                }
            }
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut calls = Vec::with_capacity(parts.len());
        for (instance, part) in parts {
            let writer = node
                .mailboxes
                .on_instance::<SendToDevice>(TO_DEVICE_STREAM, &instance)?;
            let request = SendToDevice {
                sender: sender.clone(),
                sender_device: device_id.to_owned(),
                txn_id: txn_id.to_owned(),
                kind: kind.to_owned(),
                messages: part,
            };
            calls.push(async move {
                let answer = writer.call(request.clone(), remaining).await;
                (request.messages, answer)
            });
        }
        messages = unowned;
        for (part, answer) in futures::future::join_all(calls).await {
            match answer? {
                Err(WriteError::NotOwner(_)) => messages.extend(part),
                answer => stored.push(answer?),
            }
        }
        if messages.is_empty() {
            return Ok(stored);
        }
        if tokio::time::Instant::now() + SHARD_RETRY_PAUSE >= deadline {
            return Err(WriteError::NotOwner(0).into());
        }
        if let Some(map) = node.shard_map(TO_DEVICE_STREAM) {
            map.refresh(SHARD_RETRY_PAUSE).await;
        }
    }
}

/// How long a send waits for the owners of moving shards to be read again.
const SHARD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// The `messages` of a body, checked, with the users that are not valid
/// ids of `server_name` left out.
fn parse_messages(body: &Map<String, Value>, server_name: &str) -> ApiResult<Messages> {
    let messages = match body.get("messages") {
        None => return Err(ApiError::new(ErrCode::MissingParam, "missing messages")),
        Some(Value::Object(messages)) => messages,
        Some(_) => return Err(ApiError::bad_json("messages must be an object")),
    };
    let mut parsed = Messages::new();
    for (user, by_device) in messages {
        let Value::Object(by_device) = by_device else {
            return Err(ApiError::bad_json(
                "messages must map each user to an object of devices",
            ));
        };
        let mut devices = BTreeMap::new();
        for (device, content) in by_device {
            let Value::Object(content) = content else {
                return Err(ApiError::bad_json("a message's content must be an object"));
            };
            check_bytes("device id", device, MAX_DEVICE_ID_BYTES)?;
            let size = serde_json::to_vec(content).map_or(usize::MAX, |json| json.len());
            if size > MAX_TO_DEVICE_CONTENT_BYTES {
                return Err(ApiError::new(
                    ErrCode::TooLarge,
                    format!(
                        "the to-device message for {user}:{device} is too large \
                         ({size} > {MAX_TO_DEVICE_CONTENT_BYTES} bytes)"
                    ),
                ));
            }
            check_json_no_nul("to-device message", &Value::Object(content.clone()))?;
            check_no_nul("device id", device)?;
            devices.insert(device.clone(), content.clone());
        }
        // Not a user id, or a user of another server: skipped, as Synapse
        // skips invalid ones (remote ones would go over federation).
        let Ok(user) = OwnedUserId::try_from(user.as_str()) else {
            continue;
        };
        if user.server_name().as_str() != server_name || devices.is_empty() {
            continue;
        }
        parsed.insert(user, devices);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn messages_are_checked_and_other_users_skipped() {
        let parsed = parse_messages(
            &body(json!({ "messages": {
                "@a:x": { "D": { "k": 1 }, "*": {} },
                "@b:elsewhere": { "D": {} },
                "not a user": { "D": {} },
                "@c:x": {},
            }})),
            "x",
        )
        .expect("valid");
        assert_eq!(parsed.len(), 1);
        let a: OwnedUserId = "@a:x".try_into().expect("user id");
        assert_eq!(parsed[&a].len(), 2);
        for (bad, errcode) in [
            (json!({}), ErrCode::MissingParam),
            (json!({ "messages": [] }), ErrCode::BadJson),
            (json!({ "messages": { "@a:x": "D" } }), ErrCode::BadJson),
            (
                json!({ "messages": { "@a:x": { "D": 1 } } }),
                ErrCode::BadJson,
            ),
            (
                json!({ "messages": { "@a:x": { "D": { "k": "x".repeat(70_000) } } } }),
                ErrCode::TooLarge,
            ),
        ] {
            let error = parse_messages(&body(bad.clone()), "x").err();
            assert_eq!(error.map(|e| e.errcode), Some(errcode), "{bad}");
        }
    }
}
