//! The `events` stream: room events, written by the event persisters
//! (`roles/events`), sharded by room, stored in the `events` table. A row
//! carries what readers need to wake the right long-polls without reading
//! the event (Synapse's columns: event id, room, type, state key,
//! membership), then the stored event itself, so that readers can serve it
//! from memory, then the event its relation points at. A row read back from
//! PostgreSQL by a catch-up carries the columns and the relation, not the
//! event.
//!
//! A row's keys ([`row_keys`]) are what its event changes, in the
//! notifier's change cache: its room; a member event's member; a state
//! event's [`state_changes_key`] (caches of a room's state check it); a
//! relation's parent event id (a parent without that key since it was
//! persisted has no children).

use std::sync::Arc;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::notifier::Notifier;
use super::registry::{ShardBy, Storage, StreamError, StreamRows, StreamSpec, TokenSlot};
use crate::caches::RecentEventsCache;
use crate::push::recent::{RecentPushActions, RowActions};
use crate::storage::rooms::StoredEvent;
use crate::storage::streams::StreamTable;

/// The events stream's name.
pub const EVENTS_STREAM: &str = "events";

pub const SPEC: StreamSpec = StreamSpec {
    name: EVENTS_STREAM,
    shard_by: ShardBy::Room,
    storage: Storage::Postgres(&StreamTable {
        table: "events",
        instance_column: "instance_name",
        id_column: "stream_ordering",
    }),
    sequence: "events_stream_seq",
    token: Some(TokenSlot::Room),
};

/// The events stream on one instance.
pub struct EventsRows {
    pool: Pool,
    notifier: Notifier,
    /// Fed with the events other instances persisted.
    recent_events: Arc<RecentEventsCache>,
    /// Fed with their push actions.
    recent_push: Arc<RecentPushActions>,
}

impl EventsRows {
    pub fn new(
        pool: Pool,
        notifier: Notifier,
        recent_events: Arc<RecentEventsCache>,
        recent_push: Arc<RecentPushActions>,
    ) -> EventsRows {
        EventsRows {
            pool,
            notifier,
            recent_events,
            recent_push,
        }
    }
}

impl StreamRows for EventsRows {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// See [`row_keys`].
    fn keys(&self, row: &Value) -> Vec<String> {
        let Some(room_id) = row.get(1).and_then(Value::as_str) else {
            return Vec::new();
        };
        row_keys(
            room_id,
            row.get(2).and_then(Value::as_str).unwrap_or_default(),
            row.get(3).and_then(Value::as_str),
            row.get(6).and_then(Value::as_str),
        )
    }

    fn read_rows<'a>(
        &'a self,
        writer: &'a str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT stream_ordering, event_id, room_id, type, state_key, pdu -> 'content' -> 'membership',
                       pdu -> 'content' -> 'm.relates_to' ->> 'event_id'
                     FROM events WHERE instance_name = $1 AND stream_ordering > $2 AND stream_ordering <= $3
                     ORDER BY stream_ordering",
                    &[&writer, &after, &upto],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    let membership: Option<Value> = row.get(5);
                    (
                        row.get::<_, i64>(0),
                        json!([
                            row.get::<_, String>(1),
                            row.get::<_, String>(2),
                            row.get::<_, String>(3),
                            row.get::<_, Option<String>>(4),
                            membership,
                            Value::Null,
                            row.get::<_, Option<String>>(6),
                        ]),
                    )
                })
                .collect())
        })
    }

    fn apply(&self, _writer: &str, position: i64, row: &Value) {
        if let Some(room_id) = row.get(1).and_then(Value::as_str) {
            self.recent_push
                .record(room_id, position, RowActions::from_json(row.get(7)));
        }
        if let Some(event) = stored_event_of_row(position, row) {
            self.recent_events
                .extend(&self.notifier, std::slice::from_ref(&event), position);
        }
    }
}

/// The notifier keys of an event: its room (every member's long-poll
/// wakes), a member event's member (so invitees wake), a state event's
/// [`state_changes_key`], and the parent its relation points at.
pub fn row_keys(
    room_id: &str,
    kind: &str,
    state_key: Option<&str>,
    parent: Option<&str>,
) -> Vec<String> {
    let mut keys = vec![room_id.to_owned()];
    if let Some(state_key) = state_key {
        if kind == "m.room.member" {
            keys.push(state_key.to_owned());
        }
        keys.push(state_changes_key(room_id));
    }
    if let Some(parent) = parent {
        keys.push(parent.to_owned());
    }
    keys
}

/// The key a room's state events change: a cache of the room's state is
/// good while the notifier says it has not changed since the cache's read.
pub fn state_changes_key(room_id: &str) -> String {
    format!("{room_id}/state")
}

/// The event a relation in `content` points at (any `m.relates_to` with an
/// `event_id`: a superset of what the relations table keeps, which only
/// makes a parent look as if it may have children).
pub fn relation_parent(content: &Value) -> Option<&str> {
    content.get("m.relates_to")?.get("event_id")?.as_str()
}

/// An events stream row as replication carries it: what readers need to
/// wake the right long-polls without reading the event (Synapse's columns),
/// the stored event itself, so that readers can serve it from memory, and
/// the event its relation points at, then what its push actions did for
/// each member ([`RowActions`]).
pub fn event_row(event: &StoredEvent, push: &RowActions) -> Value {
    let content = event.content();
    let membership = (event.kind == "m.room.member")
        .then(|| content.get("membership").cloned())
        .flatten();
    json!([
        event.event_id,
        event.room_id,
        event.kind,
        event.state_key,
        membership,
        {
            "depth": event.depth,
            "sender": event.sender,
            "origin_server_ts": event.origin_server_ts,
            "pdu": *event.pdu,
            "txn_device_id": event.txn_device_id,
            "txn_id": event.txn_id,
        },
        relation_parent(content),
        push.to_json(),
    ])
}

/// The stored event an events row carries (None for rows without one: read
/// from the database by a catch-up, or from an older writer).
pub fn stored_event_of_row(position: i64, row: &Value) -> Option<StoredEvent> {
    let text = |value: &Value| value.as_str().map(str::to_owned);
    let optional_text = |value: &Value| match value {
        Value::Null => Some(None),
        value => text(value).map(Some),
    };
    let event = row.get(5)?;
    Some(StoredEvent {
        stream_ordering: position,
        event_id: text(row.get(0)?)?,
        room_id: text(row.get(1)?)?,
        kind: text(row.get(2)?)?,
        state_key: optional_text(row.get(3)?)?,
        depth: event.get("depth")?.as_i64()?,
        sender: text(event.get("sender")?)?,
        origin_server_ts: event.get("origin_server_ts")?.as_i64()?,
        pdu: Arc::new(event.get("pdu")?.clone()),
        redacted_by: None,
        txn_device_id: optional_text(event.get("txn_device_id")?)?,
        txn_id: optional_text(event.get("txn_id")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> EventsRows {
        let pool = crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1)
            .expect("a pool is made without connecting");
        EventsRows::new(
            pool,
            Notifier::new(),
            Arc::new(RecentEventsCache::default()),
            Arc::new(RecentPushActions::default()),
        )
    }

    #[test]
    fn a_member_event_wakes_its_room_and_the_member() {
        let rows = rows();
        let member = json!(["$e", "!r:x", "m.room.member", "@bob:x", "invite"]);
        assert_eq!(rows.keys(&member), vec!["!r:x", "@bob:x", "!r:x/state"]);
        let message = json!(["$e", "!r:x", "m.room.message", null, null]);
        assert_eq!(rows.keys(&message), vec!["!r:x"]);
        // A reply in a thread changes its root; a catch-up row carries the
        // relation without the event.
        let reply = json!(["$e", "!r:x", "m.room.message", null, null, null, "$root"]);
        assert_eq!(rows.keys(&reply), vec!["!r:x", "$root"]);
        // A row read back carries no event: nothing to serve from memory.
        assert!(stored_event_of_row(5, &message).is_none());
    }

    #[test]
    fn an_events_row_carries_the_stored_event() {
        let event = StoredEvent {
            stream_ordering: 42,
            event_id: "$e".into(),
            room_id: "!r:x".into(),
            depth: 7,
            sender: "@a:x".into(),
            kind: "m.room.member".into(),
            state_key: Some("@a:x".into()),
            origin_server_ts: 1_700_000_000_000,
            pdu: Arc::new(json!({ "content": { "membership": "join" }, "depth": 7 })),
            redacted_by: None,
            txn_device_id: Some("DEV".into()),
            txn_id: None,
        };
        let row = event_row(&event, &RowActions::None);
        // Synapse's columns first: what wakes the right long-polls.
        assert_eq!(row[0], "$e");
        assert_eq!(row[4], "join");
        let read = stored_event_of_row(42, &row).expect("a stored event");
        assert_eq!(format!("{read:?}"), format!("{event:?}"));
        // A catch-up row (read from the database) carries none.
        assert!(
            stored_event_of_row(42, &json!(["$e", "!r:x", "m.room.message", null, null])).is_none()
        );
    }
}
