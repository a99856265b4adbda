//! Room events as clients see them (`ClientEvent`): the PDU's client fields,
//! redactions applied, and `unsigned` (age, the sender's own transaction id,
//! `redacted_because`).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::api::Requester;
use crate::error::ApiResult;
use crate::node::Node;
use crate::rooms::{pdu, version::parse_supported};
use crate::storage::rooms::{self, StoredEvent};
use crate::util::now_ms;

/// Formats `events` for `viewer`, in the order given.
pub async fn client_events(
    node: &Node,
    events: &[StoredEvent],
    viewer: Option<&Requester>,
) -> ApiResult<Vec<Value>> {
    // Redacted events need their room's version and the redaction itself.
    let redaction_ids: Vec<String> = events
        .iter()
        .filter_map(|e| e.redacted_by.clone())
        .collect();
    let mut redactions: HashMap<String, Value> = HashMap::new();
    let mut versions: HashMap<String, String> = HashMap::new();
    if !redaction_ids.is_empty() {
        for redaction in rooms::events_by_ids(&node.pool, &redaction_ids).await? {
            redactions.insert(
                redaction.event_id.clone(),
                format(&redaction, None, None, viewer),
            );
        }
        for event in events.iter().filter(|e| e.redacted_by.is_some()) {
            if !versions.contains_key(&event.room_id) {
                if let Some(info) = rooms::room_info(&node.pool, &event.room_id).await? {
                    versions.insert(event.room_id.clone(), info.room_version);
                }
            }
        }
    }
    Ok(events
        .iter()
        .map(|event| {
            let redaction = event.redacted_by.as_ref().and_then(|id| redactions.get(id));
            let version = versions.get(&event.room_id).map(String::as_str);
            format(event, redaction, version, viewer)
        })
        .collect())
}

fn format(
    event: &StoredEvent,
    redaction: Option<&Value>,
    room_version: Option<&str>,
    viewer: Option<&Requester>,
) -> Value {
    let mut content = event.content().clone();
    if let (Some(_), Some(version)) = (redaction, room_version.and_then(parse_supported)) {
        content =
            pdu::redact_content(&version, &event.kind, &content).unwrap_or_else(|_| json!({}));
    }
    let mut object = Map::new();
    if let Some(redacts) = event.pdu.get("redacts").or_else(|| content.get("redacts")) {
        object.insert("redacts".into(), redacts.clone());
    }
    object.insert("content".into(), content);
    object.insert("event_id".into(), json!(event.event_id));
    object.insert("origin_server_ts".into(), json!(event.origin_server_ts));
    object.insert("room_id".into(), json!(event.room_id));
    object.insert("sender".into(), json!(event.sender));
    object.insert("type".into(), json!(event.kind));
    if let Some(state_key) = &event.state_key {
        object.insert("state_key".into(), json!(state_key));
    }
    let mut unsigned = Map::new();
    unsigned.insert(
        "age".into(),
        json!((now_ms() - event.origin_server_ts).max(0)),
    );
    if let (Some(viewer), Some(device), Some(txn_id)) =
        (viewer, &event.txn_device_id, &event.txn_id)
    {
        if viewer.user_id == event.sender && &viewer.device_id == device {
            unsigned.insert("transaction_id".into(), json!(txn_id));
        }
    }
    if let Some(redaction) = redaction {
        unsigned.insert("redacted_because".into(), redaction.clone());
    }
    object.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(object)
}

/// The stripped state of an invite (`invite_state`, also `knock_state`).
pub fn stripped_state(event: &StoredEvent) -> Value {
    json!({
        "type": event.kind,
        "state_key": event.state_key.clone().unwrap_or_default(),
        "content": event.content(),
        "sender": event.sender,
    })
}

/// The state types a user sees of a room they are invited to.
pub const STRIPPED_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];
