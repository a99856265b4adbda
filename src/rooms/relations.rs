//! Relations between events (the spec's "Forming relationships between
//! events"): what makes an event a child of another ([`Relation::of`]), and
//! the aggregations of its children a server bundles into an event's
//! `unsigned.m.relations` ([`bundle_aggregations`]): `m.thread` (count,
//! latest reply with its own bundle, whether the viewer took part),
//! `m.replace` (the latest valid edit, whole: since v1.7 the server no
//! longer puts the edit's content in place of the original's) and
//! `m.reference` (the referencing event ids). Annotations are not bundled.
//! `/sync`, `/messages`, `/context`, `/event`, `/relations` and `/threads`
//! all bundle here, with one query for all the events of a response.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Map, Value};

use crate::api::client::events::client_events;
use crate::api::Requester;
use crate::error::ApiResult;
use crate::node::Node;
use crate::storage::relations::{self as stored, Aggregations, Parent};
use crate::storage::rooms;
use crate::streams::events::EVENTS_STREAM;

pub const THREAD: &str = "m.thread";
pub const REPLACE: &str = "m.replace";
pub const REFERENCE: &str = "m.reference";
pub const ANNOTATION: &str = "m.annotation";

/// An event's relation to its parent, from its content's `m.relates_to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relation<'a> {
    pub rel_type: &'a str,
    /// The parent.
    pub event_id: &'a str,
    /// An annotation's key.
    pub key: Option<&'a str>,
}

impl<'a> Relation<'a> {
    /// The relation `content` declares: `m.relates_to` with a `rel_type`
    /// and an `event_id` that is an event id. A reply (`m.in_reply_to`
    /// alone) is none.
    pub fn of(content: &'a Value) -> Option<Relation<'a>> {
        let relates_to = content.get("m.relates_to")?;
        let rel_type = relates_to.get("rel_type")?.as_str()?;
        let event_id = relates_to.get("event_id")?.as_str()?;
        if rel_type.is_empty() || rel_type.len() > 255 || ruma::EventId::parse(event_id).is_err() {
            return None;
        }
        let key = match rel_type {
            ANNOTATION => relates_to.get("key").and_then(Value::as_str),
            _ => None,
        };
        Some(Relation {
            rel_type,
            event_id,
            key,
        })
    }
}

/// What [`bundle_aggregations`] reads of a client event to decide which
/// aggregations it may have (Synapse's rules): none for state events and
/// for edits and annotations themselves; a thread summary only for an
/// event without a relation of its own; edits only while not redacted.
fn parent_of(event: &Value) -> Option<Parent<'_>> {
    if event.get("state_key").is_some() {
        return None;
    }
    let relation = event.get("content").and_then(Relation::of);
    if relation.is_some_and(|r| r.rel_type == ANNOTATION || r.rel_type == REPLACE) {
        return None;
    }
    let redacted = event
        .get("unsigned")
        .is_some_and(|u| u.get("redacted_because").is_some());
    Some(Parent {
        event_id: event.get("event_id")?.as_str()?,
        room_id: event.get("room_id")?.as_str()?,
        sender: event.get("sender")?.as_str()?,
        kind: event.get("type")?.as_str()?,
        thread: relation.is_none(),
        edits: !redacted,
    })
}

/// Drops the parents known to have no children: those the recent events
/// cache holds (so their stream position is known) whose event id no event
/// has named as its relation's parent since (the events stream records a
/// relation under its parent's id). A timeline of new messages, the usual
/// `/sync` answer, then reads nothing.
fn drop_childless(node: &Node, parents: &mut Vec<Parent<'_>>) {
    let ids: Vec<(&str, &str)> = parents.iter().map(|p| (p.room_id, p.event_id)).collect();
    let positions = node.recent_events.positions_of(&ids);
    let mut positions = positions.into_iter();
    parents.retain(|parent| match positions.next().flatten() {
        Some(position) => node
            .notifier
            .has_changed_since(EVENTS_STREAM, parent.event_id, position),
        None => true,
    });
}

/// Adds `unsigned.m.relations` to each of `events` (client events, as
/// `client_events` made them for `viewer`) that has aggregations. One query
/// for all of them; none when there are no events. The events the bundles
/// carry (latest thread replies, edits) take one more, only when there are
/// some, and the latest replies' own bundles one more again.
pub async fn bundle_aggregations(
    node: &Node,
    viewer: &Requester,
    events: Vec<&mut Value>,
) -> ApiResult<()> {
    bundle(node, viewer, events, true).await
}

fn bundle<'a>(
    node: &'a Node,
    viewer: &'a Requester,
    mut events: Vec<&'a mut Value>,
    with_thread_replies: bool,
) -> Pin<Box<dyn Future<Output = ApiResult<()>> + Send + 'a>> {
    Box::pin(async move {
        let aggregations = {
            let mut seen = HashSet::new();
            let mut parents: Vec<Parent<'_>> = events
                .iter()
                .filter_map(|event| parent_of(event))
                .filter(|parent| seen.insert(parent.event_id))
                .collect();
            drop_childless(node, &mut parents);
            if parents.is_empty() {
                return Ok(());
            }
            stored::aggregations(&node.pool, &parents, &viewer.user_id).await?
        };
        let mut children = children(node, viewer, &aggregations).await?;
        if with_thread_replies {
            let latest: HashSet<&str> = aggregations
                .threads
                .values()
                .map(|t| t.latest_event_id.as_str())
                .collect();
            let replies: Vec<&mut Value> = children
                .iter_mut()
                .filter(|(id, _)| latest.contains(id.as_str()))
                .map(|(_, event)| event)
                .collect();
            bundle(node, viewer, replies, false).await?;
        }
        for event in events.iter_mut() {
            let Some(event_id) = event.get("event_id").and_then(Value::as_str) else {
                continue;
            };
            let relations =
                relations_of(&viewer.user_id, event_id, event, &aggregations, &children);
            if relations.is_empty() {
                continue;
            }
            if let Some(object) = event.as_object_mut() {
                let unsigned = object
                    .entry("unsigned")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(unsigned) = unsigned.as_object_mut() {
                    unsigned.insert("m.relations".into(), Value::Object(relations));
                }
            }
        }
        Ok(())
    })
}

/// The events the aggregations carry whole (latest thread replies and
/// edits), as client events for `viewer`, by event id.
async fn children(
    node: &Node,
    viewer: &Requester,
    aggregations: &Aggregations,
) -> ApiResult<HashMap<String, Value>> {
    let ids: Vec<String> = aggregations
        .threads
        .values()
        .map(|t| t.latest_event_id.clone())
        .chain(aggregations.edits.values().cloned())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let events = rooms::events_by_ids(&node.pool, &ids).await?;
    let formatted = client_events(node, &events, Some(viewer)).await?;
    Ok(events
        .into_iter()
        .map(|e| e.event_id)
        .zip(formatted)
        .collect())
}

/// The `m.relations` object of one event (empty when it has none).
fn relations_of(
    viewer: &str,
    event_id: &str,
    event: &Value,
    aggregations: &Aggregations,
    children: &HashMap<String, Value>,
) -> Map<String, Value> {
    let mut relations = Map::new();
    if let Some(thread) = aggregations.threads.get(event_id) {
        if let Some(latest) = children.get(&thread.latest_event_id) {
            // Taking part is starting the thread or replying in it.
            let participated =
                thread.replied || event.get("sender").and_then(Value::as_str) == Some(viewer);
            relations.insert(
                THREAD.into(),
                json!({
                    "latest_event": latest,
                    "count": thread.count,
                    "current_user_participated": participated,
                }),
            );
        }
    }
    if let Some(edit) = aggregations
        .edits
        .get(event_id)
        .and_then(|id| children.get(id))
    {
        relations.insert(REPLACE.into(), edit.clone());
    }
    if let Some(references) = aggregations.references.get(event_id) {
        let chunk: Vec<Value> = references
            .iter()
            .map(|id| json!({ "event_id": id }))
            .collect();
        relations.insert(REFERENCE.into(), json!({ "chunk": chunk }));
    }
    relations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relation_needs_a_type_and_an_event_id() {
        let thread = json!({ "m.relates_to": { "rel_type": "m.thread", "event_id": "$root" } });
        assert_eq!(
            Relation::of(&thread),
            Some(Relation {
                rel_type: THREAD,
                event_id: "$root",
                key: None
            })
        );
        let reaction = json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": "$e", "key": "👍" } });
        assert_eq!(Relation::of(&reaction).and_then(|r| r.key), Some("👍"));
        let reply = json!({ "m.relates_to": { "m.in_reply_to": { "event_id": "$e" } } });
        assert_eq!(Relation::of(&reply), None);
        let not_an_id = json!({ "m.relates_to": { "rel_type": "m.thread", "event_id": "root" } });
        assert_eq!(Relation::of(&not_an_id), None);
        let no_type = json!({ "m.relates_to": { "event_id": "$e" } });
        assert_eq!(Relation::of(&no_type), None);
    }

    #[test]
    fn state_events_edits_and_reactions_get_no_bundles() {
        let event = |extra: Value| {
            let mut event = json!({
                "event_id": "$e", "room_id": "!r:x", "sender": "@a:x", "type": "m.room.message",
                "content": {}
            });
            if let (Some(object), Value::Object(extra)) = (event.as_object_mut(), extra) {
                object.extend(extra);
            }
            event
        };
        let plain = event(json!({}));
        let parent = parent_of(&plain).expect("a message may have bundles");
        assert!(parent.thread && parent.edits);
        assert!(parent_of(&event(json!({ "state_key": "" }))).is_none());
        let edit = event(
            json!({ "content": { "m.relates_to": { "rel_type": "m.replace", "event_id": "$o" } } }),
        );
        assert!(parent_of(&edit).is_none());
        let in_thread = event(
            json!({ "content": { "m.relates_to": { "rel_type": "m.thread", "event_id": "$o" } } }),
        );
        let parent = parent_of(&in_thread).expect("a thread reply may be edited");
        assert!(!parent.thread && parent.edits);
        let redacted = event(json!({ "unsigned": { "redacted_because": {} } }));
        assert!(!parent_of(&redacted).expect("redacted").edits);
    }
}
