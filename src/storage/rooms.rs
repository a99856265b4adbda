//! Rooms, their events, state and memberships: the read side. Writes happen
//! in one place, the event persister (`roles::events`).

use std::collections::HashMap;

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{StorageError, StorageResult};
use crate::rooms::filter::{RoomEventFilter, TypePattern};

/// An event as stored, with what the client views need beyond the PDU.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub stream_ordering: i64,
    pub event_id: String,
    pub room_id: String,
    pub depth: i64,
    pub sender: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub origin_server_ts: i64,
    /// Shared: events are cloned into caches and answers, their PDUs need not be.
    pub pdu: std::sync::Arc<Value>,
    pub redacted_by: Option<String>,
    pub txn_device_id: Option<String>,
    pub txn_id: Option<String>,
}

/// The columns `StoredEvent::from_row` reads, for `SELECT {EVENT_COLUMNS} FROM events e`.
pub const EVENT_COLUMNS: &str =
    "e.stream_ordering, e.event_id, e.room_id, e.depth, e.sender, e.type, \
     e.state_key, e.origin_server_ts, e.pdu, e.redacted_by, e.txn_device_id, e.txn_id";

impl StoredEvent {
    pub fn from_row(row: &Row) -> StoredEvent {
        StoredEvent {
            stream_ordering: row.get(0),
            event_id: row.get(1),
            room_id: row.get(2),
            depth: row.get(3),
            sender: row.get(4),
            kind: row.get(5),
            state_key: row.get(6),
            origin_server_ts: row.get(7),
            pdu: std::sync::Arc::new(row.get(8)),
            redacted_by: row.get(9),
            txn_device_id: row.get(10),
            txn_id: row.get(11),
        }
    }

    pub fn content(&self) -> &Value {
        self.pdu.get("content").unwrap_or(&Value::Null)
    }
}

#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
    pub is_public: bool,
}

pub async fn room_info(pool: &Pool, room_id: &str) -> StorageResult<Option<RoomInfo>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT room_id, room_version, creator, is_public FROM rooms WHERE room_id = $1",
        )
        .await?;
    let row = client.query_opt(&statement, &[&room_id]).await?;
    Ok(row.map(|row| RoomInfo {
        room_id: row.get(0),
        room_version: row.get(1),
        creator: row.get(2),
        is_public: row.get(3),
    }))
}

pub async fn set_room_public(pool: &Pool, room_id: &str, is_public: bool) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE rooms SET is_public = $2 WHERE room_id = $1",
            &[&room_id, &is_public],
        )
        .await?;
    Ok(())
}

/// A user's current membership of a room and the position of that event.
#[derive(Debug, Clone)]
pub struct Membership {
    pub room_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream_ordering: i64,
    /// The user forgot the room (only ever true after leaving it).
    pub forgotten: bool,
}

pub async fn memberships_of_user(pool: &Pool, user_id: &str) -> StorageResult<Vec<Membership>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT c.room_id, c.membership, c.event_id, c.stream_ordering, f.room_id IS NOT NULL
             FROM current_state c
             LEFT JOIN forgotten_rooms f ON f.user_id = c.state_key AND f.room_id = c.room_id
             WHERE c.type = 'm.room.member' AND c.state_key = $1",
        )
        .await?;
    let rows = client.query(&statement, &[&user_id]).await?;
    Ok(rows
        .iter()
        .map(|row| Membership {
            room_id: row.get(0),
            membership: row.get::<_, Option<String>>(1).unwrap_or_default(),
            event_id: row.get(2),
            stream_ordering: row.get(3),
            forgotten: row.get(4),
        })
        .collect())
}

pub async fn membership(
    pool: &Pool,
    room_id: &str,
    user_id: &str,
) -> StorageResult<Option<Membership>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT c.room_id, c.membership, c.event_id, c.stream_ordering, f.room_id IS NOT NULL
             FROM current_state c
             LEFT JOIN forgotten_rooms f ON f.user_id = c.state_key AND f.room_id = c.room_id
             WHERE c.room_id = $1 AND c.type = 'm.room.member' AND c.state_key = $2",
        )
        .await?;
    let row = client.query_opt(&statement, &[&room_id, &user_id]).await?;
    Ok(row.map(|row| Membership {
        room_id: row.get(0),
        membership: row.get::<_, Option<String>>(1).unwrap_or_default(),
        event_id: row.get(2),
        stream_ordering: row.get(3),
        forgotten: row.get(4),
    }))
}

pub async fn joined_rooms(pool: &Pool, user_id: &str) -> StorageResult<Vec<String>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT room_id FROM current_state
             WHERE type = 'm.room.member' AND state_key = $1 AND membership = 'join'",
            &[&user_id],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The rooms both users are joined to (in no particular order).
pub async fn mutual_joined_rooms(
    pool: &Pool,
    user_id: &str,
    other_user_id: &str,
) -> StorageResult<Vec<String>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT a.room_id FROM current_state a
             JOIN current_state b ON b.room_id = a.room_id AND b.type = 'm.room.member'
               AND b.state_key = $2 AND b.membership = 'join'
             WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'",
            &[&user_id, &other_user_id],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

pub async fn joined_members(pool: &Pool, room_id: &str) -> StorageResult<Vec<StoredEvent>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM current_state c JOIN events e ON e.event_id = c.event_id
                 WHERE c.room_id = $1 AND c.type = 'm.room.member' AND c.membership = 'join'"
            ),
            &[&room_id],
        )
        .await?;
    Ok(rows.iter().map(StoredEvent::from_row).collect())
}

/// The content of the user's current member event in the room.
pub async fn current_member_content(
    pool: &Pool,
    room_id: &str,
    user_id: &str,
) -> StorageResult<Option<serde_json::Map<String, Value>>> {
    let event = current_state_event(pool, room_id, "m.room.member", user_id).await?;
    Ok(event.and_then(|e| e.content().as_object().cloned()))
}

pub async fn current_state(pool: &Pool, room_id: &str) -> StorageResult<Vec<StoredEvent>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM current_state c JOIN events e ON e.event_id = c.event_id
                 WHERE c.room_id = $1 ORDER BY e.stream_ordering"
            ),
            &[&room_id],
        )
        .await?;
    Ok(rows.iter().map(StoredEvent::from_row).collect())
}

pub async fn current_state_event(
    pool: &Pool,
    room_id: &str,
    kind: &str,
    state_key: &str,
) -> StorageResult<Option<StoredEvent>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM current_state c JOIN events e ON e.event_id = c.event_id
             WHERE c.room_id = $1 AND c.type = $2 AND c.state_key = $3"
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&room_id, &kind, &state_key])
        .await?;
    Ok(row.as_ref().map(StoredEvent::from_row))
}

pub async fn event(pool: &Pool, event_id: &str) -> StorageResult<Option<StoredEvent>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1"
        ))
        .await?;
    let row = client.query_opt(&statement, &[&event_id]).await?;
    Ok(row.as_ref().map(StoredEvent::from_row))
}

/// Who sent an event, where and of what type: what a redaction of it is
/// checked against.
#[derive(Debug, Clone)]
pub struct EventOrigin {
    pub room_id: String,
    pub sender: String,
    pub kind: String,
}

pub async fn event_origin(pool: &Pool, event_id: &str) -> StorageResult<Option<EventOrigin>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT room_id, sender, type FROM events WHERE event_id = $1")
        .await?;
    let row = client.query_opt(&statement, &[&event_id]).await?;
    Ok(row.map(|row| EventOrigin {
        room_id: row.get(0),
        sender: row.get(1),
        kind: row.get(2),
    }))
}

pub async fn events_by_ids(pool: &Pool, event_ids: &[String]) -> StorageResult<Vec<StoredEvent>> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = ANY($1) ORDER BY e.stream_ordering"),
            &[&event_ids],
        )
        .await?;
    Ok(rows.iter().map(StoredEvent::from_row).collect())
}

/// The state group after the last event at or before `stream_ordering`.
pub async fn state_group_at(
    pool: &Pool,
    room_id: &str,
    stream_ordering: i64,
) -> StorageResult<Option<i64>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT state_group FROM events WHERE room_id = $1 AND stream_ordering <= $2
             ORDER BY stream_ordering DESC LIMIT 1",
            &[&room_id, &stream_ordering],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

pub async fn state_group_of_event(pool: &Pool, event_id: &str) -> StorageResult<Option<i64>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT state_group FROM events WHERE event_id = $1",
            &[&event_id],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// `chain (state_group, prev_group, delta, n)`: the state group `$1` and the
/// groups it is a delta over, back to its snapshot (`n` counts back from `$1`).
const STATE_GROUP_CHAIN: &str = "WITH RECURSIVE chain (state_group, prev_group, delta, n) AS (
    SELECT state_group, prev_group, delta, 0 FROM state_groups WHERE state_group = $1
    UNION ALL
    SELECT s.state_group, s.prev_group, s.delta, c.n + 1
    FROM state_groups s JOIN chain c ON s.state_group = c.prev_group
)";

/// The state map of a state group: (type, state_key) → event id, read by
/// following the delta chain back to its snapshot.
pub async fn state_group_map(
    pool: &Pool,
    state_group: i64,
) -> StorageResult<HashMap<(String, String), String>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "{STATE_GROUP_CHAIN} SELECT delta FROM chain ORDER BY n DESC"
        ))
        .await?;
    let rows = client.query(&statement, &[&state_group]).await?;
    if rows.is_empty() {
        return Err(StorageError::Corrupt(format!(
            "state group {state_group} is missing"
        )));
    }
    let mut state = HashMap::new();
    for row in rows {
        let delta: Value = row.get(0);
        for entry in delta.as_array().into_iter().flatten() {
            let (Some(kind), Some(state_key), Some(event_id)) = (
                entry.get(0).and_then(Value::as_str),
                entry.get(1).and_then(Value::as_str),
                entry.get(2).and_then(Value::as_str),
            ) else {
                return Err(StorageError::Corrupt(format!(
                    "malformed delta in state group {state_group}"
                )));
            };
            state.insert((kind.to_owned(), state_key.to_owned()), event_id.to_owned());
        }
    }
    Ok(state)
}

/// The contents of a few state entries of the room as they were after the
/// last event at or before `stream_ordering` (`None` for entries not set
/// then), in the order of `keys`. Reads only those entries of the state
/// group's delta chain, not the whole state.
pub async fn state_contents_at(
    pool: &Pool,
    room_id: &str,
    stream_ordering: i64,
    keys: &[(&str, &str)],
) -> StorageResult<Vec<Option<Value>>> {
    let Some(state_group) = state_group_at(pool, room_id, stream_ordering).await? else {
        return Ok(vec![None; keys.len()]);
    };
    let kinds: Vec<&str> = keys.iter().map(|(kind, _)| *kind).collect();
    let state_keys: Vec<&str> = keys.iter().map(|(_, state_key)| *state_key).collect();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "{STATE_GROUP_CHAIN},
             wanted AS (
                 SELECT DISTINCT ON (entry ->> 0, entry ->> 1)
                     entry ->> 0 AS type, entry ->> 1 AS state_key, entry ->> 2 AS event_id
                 FROM chain, jsonb_array_elements(chain.delta) entry,
                      unnest($2::TEXT[], $3::TEXT[]) AS k (type, state_key)
                 WHERE entry ->> 0 = k.type AND entry ->> 1 = k.state_key
                 ORDER BY entry ->> 0, entry ->> 1, chain.n
             )
             SELECT w.type, w.state_key, e.pdu -> 'content'
             FROM wanted w JOIN events e ON e.event_id = w.event_id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&state_group, &kinds, &state_keys])
        .await?;
    Ok(keys
        .iter()
        .map(|(kind, state_key)| {
            rows.iter()
                .find(|row| row.get::<_, &str>(0) == *kind && row.get::<_, &str>(1) == *state_key)
                .map(|row| row.get::<_, Value>(2))
        })
        .collect())
}

/// The state events of a state group.
pub async fn state_group_events(pool: &Pool, state_group: i64) -> StorageResult<Vec<StoredEvent>> {
    let ids: Vec<String> = state_group_map(pool, state_group)
        .await?
        .into_values()
        .collect();
    events_by_ids(pool, &ids).await
}

/// The latest `limit` events of each room in `(after, upto]` that pass
/// `filter`, newest first within each room, with one more than `limit` so the
/// caller can tell a gap.
pub async fn recent_events_per_room(
    pool: &Pool,
    room_ids: &[String],
    after: i64,
    upto: i64,
    limit: i64,
    filter: &RoomEventFilter,
) -> StorageResult<HashMap<String, Vec<StoredEvent>>> {
    let mut by_room: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    if room_ids.is_empty() {
        return Ok(by_room);
    }
    let wanted = limit.saturating_add(1);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&room_ids, &after, &upto, &wanted];
    let filtered = FilterClause::new(filter, "x", params.len());
    params.extend(filtered.params());
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM unnest($1::text[]) AS r (room_id)
             CROSS JOIN LATERAL (
                 SELECT * FROM events x WHERE x.room_id = r.room_id
                   AND x.stream_ordering > $2 AND x.stream_ordering <= $3{}
                 ORDER BY x.stream_ordering DESC LIMIT $4
             ) e",
            filtered.sql
        ))
        .await?;
    let rows = client.query(&statement, &params).await?;
    for row in &rows {
        let event = StoredEvent::from_row(row);
        by_room
            .entry(event.room_id.clone())
            .or_default()
            .push(event);
    }
    for events in by_room.values_mut() {
        events.sort_by_key(|e| std::cmp::Reverse(e.stream_ordering));
    }
    Ok(by_room)
}

/// A [`RoomEventFilter`] as SQL conditions on the events table, so that a
/// query's `LIMIT` counts only the events the client asked for (Synapse's
/// `filter_to_clause`). It keeps exactly the events
/// [`RoomEventFilter::matches`] keeps; a filter that keeps everything adds
/// nothing, so an unfiltered query is the same statement as before.
pub(crate) struct FilterClause {
    /// `AND ...` conditions on the table alias, or empty.
    pub(crate) sql: String,
    rooms: Option<Vec<String>>,
    not_rooms: Vec<String>,
    senders: Option<Vec<String>>,
    not_senders: Vec<String>,
    /// (exact types, `LIKE` patterns) a type must be one of.
    types: Option<(Vec<String>, Vec<String>)>,
    not_types: Option<(Vec<String>, Vec<String>)>,
    contains_url: Option<bool>,
}

impl FilterClause {
    /// The conditions on `alias`, their parameters numbered after the
    /// query's own `params_before`.
    pub(crate) fn new(filter: &RoomEventFilter, alias: &str, params_before: usize) -> FilterClause {
        let mut clause = FilterClause {
            sql: String::new(),
            rooms: filter.rooms.clone(),
            not_rooms: filter.not_rooms.clone(),
            senders: filter.senders.clone(),
            not_senders: filter.not_senders.clone(),
            types: filter.types.as_deref().map(split_type_patterns),
            not_types: (!filter.not_types.is_empty())
                .then(|| split_type_patterns(&filter.not_types)),
            contains_url: filter.contains_url,
        };
        let mut next = params_before;
        let mut param = || {
            next += 1;
            next
        };
        let mut conditions = Vec::new();
        if clause.rooms.is_some() {
            conditions.push(format!("{alias}.room_id = ANY(${})", param()));
        }
        if !clause.not_rooms.is_empty() {
            conditions.push(format!("NOT ({alias}.room_id = ANY(${}))", param()));
        }
        if clause.senders.is_some() {
            conditions.push(format!("{alias}.sender = ANY(${})", param()));
        }
        if !clause.not_senders.is_empty() {
            conditions.push(format!("NOT ({alias}.sender = ANY(${}))", param()));
        }
        if clause.types.is_some() {
            let (exact, like) = (param(), param());
            conditions.push(format!(
                "({alias}.type = ANY(${exact}) OR {alias}.type LIKE ANY(${like}))"
            ));
        }
        if clause.not_types.is_some() {
            let (exact, like) = (param(), param());
            conditions.push(format!(
                "NOT ({alias}.type = ANY(${exact}) OR {alias}.type LIKE ANY(${like}))"
            ));
        }
        if clause.contains_url.is_some() {
            conditions.push(format!(
                "(jsonb_typeof({alias}.pdu->'content'->'url') IS NOT DISTINCT FROM 'string') = ${}",
                param()
            ));
        }
        for condition in conditions {
            clause.sql.push_str(" AND ");
            clause.sql.push_str(&condition);
        }
        clause
    }

    /// The parameters, in the order the conditions number them.
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(rooms) = &self.rooms {
            params.push(rooms);
        }
        if !self.not_rooms.is_empty() {
            params.push(&self.not_rooms);
        }
        if let Some(senders) = &self.senders {
            params.push(senders);
        }
        if !self.not_senders.is_empty() {
            params.push(&self.not_senders);
        }
        for (exact, like) in [&self.types, &self.not_types].into_iter().flatten() {
            params.push(exact);
            params.push(like);
        }
        if let Some(contains_url) = &self.contains_url {
            params.push(contains_url);
        }
        params
    }
}

/// Type patterns as (exact types, `LIKE` patterns for the prefixes).
fn split_type_patterns(patterns: &[String]) -> (Vec<String>, Vec<String>) {
    let mut exact = Vec::new();
    let mut like = Vec::new();
    for pattern in patterns {
        match TypePattern::parse(pattern) {
            TypePattern::Exact(kind) => exact.push(kind.to_owned()),
            TypePattern::Prefix(prefix) => {
                let mut escaped = String::with_capacity(prefix.len() + 1);
                for c in prefix.chars() {
                    if matches!(c, '\\' | '%' | '_') {
                        escaped.push('\\');
                    }
                    escaped.push(c);
                }
                escaped.push('%');
                like.push(escaped);
            }
        }
    }
    (exact, like)
}

/// The latest state event per (type, state_key) of a room in `(after, upto]`.
pub async fn state_changes_between(
    pool: &Pool,
    room_id: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<StoredEvent>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM (
                     SELECT DISTINCT ON (type, state_key) * FROM events
                     WHERE room_id = $1 AND state_key IS NOT NULL
                       AND stream_ordering > $2 AND stream_ordering <= $3
                     ORDER BY type, state_key, stream_ordering DESC
                 ) e ORDER BY e.stream_ordering"
            ),
            &[&room_id, &after, &upto],
        )
        .await?;
    Ok(rows.iter().map(StoredEvent::from_row).collect())
}

/// The events of a room strictly between `after` and `before` that change
/// what `user_id` may see of it: their own member events and the room's
/// history visibility changes, in stream order.
pub async fn visibility_changes_between(
    pool: &Pool,
    room_id: &str,
    user_id: &str,
    after: i64,
    before: i64,
) -> StorageResult<Vec<StoredEvent>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id IN (
                 SELECT m.event_id FROM membership_history m
                 WHERE m.user_id = $3 AND m.room_id = $1
                   AND m.stream_ordering > $2 AND m.stream_ordering < $4
                 UNION ALL
                 SELECT v.event_id FROM events v
                 WHERE v.room_id = $1 AND v.type = 'm.room.history_visibility' AND v.state_key = ''
                   AND v.stream_ordering > $2 AND v.stream_ordering < $4
             ) ORDER BY e.stream_ordering"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&room_id, &after, &user_id, &before])
        .await?;
    Ok(rows.iter().map(StoredEvent::from_row).collect())
}

/// A page of a room's timeline for `/messages` and `/context`: the events
/// that pass `filter` strictly after (`forward`) or at-or-before
/// (`backward`) `from`, bounded by `to`.
pub async fn paginate(
    pool: &Pool,
    room_id: &str,
    from: i64,
    to: Option<i64>,
    forward: bool,
    limit: i64,
    filter: &RoomEventFilter,
) -> StorageResult<Vec<StoredEvent>> {
    let (bound, range, order) = if forward {
        let range = "e.stream_ordering > $2 AND e.stream_ordering <= $3";
        (to.unwrap_or(i64::MAX), range, "ASC")
    } else {
        let range = "e.stream_ordering <= $2 AND e.stream_ordering > $3";
        (to.unwrap_or(0), range, "DESC")
    };
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&room_id, &from, &bound, &limit];
    let filtered = FilterClause::new(filter, "e", params.len());
    params.extend(filtered.params());
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND {range}{}
             ORDER BY e.stream_ordering {order} LIMIT $4",
            filtered.sql
        ))
        .await?;
    let rows = client.query(&statement, &params).await?;
    Ok(rows.iter().map(StoredEvent::from_row).collect())
}

/// Up to `limit` events of a room by their `origin_server_ts`, nearest
/// first: forward, those after `after` (a `(origin_server_ts,
/// stream_ordering)` pair) in ascending order; backward, those before it in
/// descending order. Paging on the pair walks past events of equal times.
pub async fn events_by_timestamp(
    pool: &Pool,
    room_id: &str,
    after: (i64, i64),
    forward: bool,
    limit: i64,
) -> StorageResult<Vec<StoredEvent>> {
    let (compare, order) = if forward { (">", "ASC") } else { ("<", "DESC") };
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e
             WHERE e.room_id = $1 AND (e.origin_server_ts, e.stream_ordering) {compare} ($2, $3)
             ORDER BY e.origin_server_ts {order}, e.stream_ordering {order} LIMIT $4"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&room_id, &after.0, &after.1, &limit])
        .await?;
    Ok(rows.iter().map(StoredEvent::from_row).collect())
}

/// Deletes the request ids (`event_txn_ids` rows of endpoint `request`) of
/// events written before `before_ts`; how many went. A request id only
/// answers a mailbox message delivered again before its deadline, minutes
/// at most, while a client's own transaction ids are kept (a client may
/// retry a send for as long as it likes).
pub async fn delete_request_ids_older_than(pool: &Pool, before_ts: i64) -> StorageResult<u64> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM event_txn_ids t USING events e
             WHERE t.endpoint = 'request' AND e.event_id = t.event_id AND e.origin_server_ts < $1",
            &[&before_ts],
        )
        .await?)
}

/// The events of a txn id sent by this user's device, if any.
pub async fn event_for_txn(
    pool: &Pool,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
) -> StorageResult<Option<String>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT event_id FROM event_txn_ids WHERE user_id = $1 AND device_id = $2 AND txn_id = $3",
            &[&user_id, &device_id, &txn_id],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

pub async fn forget_room(pool: &Pool, user_id: &str, room_id: &str) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&user_id, &room_id],
        )
        .await?;
    Ok(())
}

// Aliases and the room directory.

pub async fn alias_room(pool: &Pool, alias: &str) -> StorageResult<Option<String>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT room_id FROM room_aliases WHERE room_alias = $1",
            &[&alias],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

pub struct AliasRecord {
    pub room_id: String,
    pub creator: String,
}

pub async fn alias_record(pool: &Pool, alias: &str) -> StorageResult<Option<AliasRecord>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT room_id, creator FROM room_aliases WHERE room_alias = $1",
            &[&alias],
        )
        .await?;
    Ok(row.map(|row| AliasRecord {
        room_id: row.get(0),
        creator: row.get(1),
    }))
}

/// Creates the alias; false when it exists already.
pub async fn create_alias(
    pool: &Pool,
    alias: &str,
    room_id: &str,
    creator: &str,
) -> StorageResult<bool> {
    let client = pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO room_aliases (room_alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&alias, &room_id, &creator],
        )
        .await?;
    Ok(inserted == 1)
}

pub async fn delete_alias(pool: &Pool, alias: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    Ok(client
        .execute("DELETE FROM room_aliases WHERE room_alias = $1", &[&alias])
        .await?
        == 1)
}

/// Points every alias of `old_room_id` at `new_room_id` (a room upgrade).
pub async fn move_aliases(pool: &Pool, old_room_id: &str, new_room_id: &str) -> StorageResult<u64> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE room_aliases SET room_id = $2 WHERE room_id = $1",
            &[&old_room_id, &new_room_id],
        )
        .await?)
}

pub async fn room_aliases(pool: &Pool, room_id: &str) -> StorageResult<Vec<String>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT room_alias FROM room_aliases WHERE room_id = $1 ORDER BY room_alias",
            &[&room_id],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// One entry of the public room directory.
pub struct PublicRoom {
    pub room_id: String,
    pub num_joined_members: i64,
    /// (type, state_key) → content of the state shown in the directory.
    pub state: HashMap<String, Value>,
}

/// Public rooms ordered by size, then id; `since` is an offset.
pub async fn public_rooms(pool: &Pool) -> StorageResult<Vec<PublicRoom>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT r.room_id,
                    (SELECT COUNT(*) FROM current_state m WHERE m.room_id = r.room_id
                       AND m.type = 'm.room.member' AND m.membership = 'join') AS members,
                    COALESCE((SELECT jsonb_object_agg(c.type, e.pdu -> 'content')
                       FROM current_state c JOIN events e ON e.event_id = c.event_id
                       WHERE c.room_id = r.room_id AND c.state_key = ''
                         AND c.type IN ('m.room.name', 'm.room.topic', 'm.room.canonical_alias',
                                        'm.room.avatar', 'm.room.join_rules', 'm.room.history_visibility',
                                        'm.room.guest_access', 'm.room.create')), '{}'::jsonb) AS state
             FROM rooms r WHERE r.is_public
             ORDER BY members DESC, r.room_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let state: Value = row.get(2);
            PublicRoom {
                room_id: row.get(0),
                num_joined_members: row.get(1),
                state: state
                    .as_object()
                    .map(|o| o.clone().into_iter().collect())
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// Member counts and up to five other members, for a room summary.
pub struct MemberSummary {
    pub joined: i64,
    pub invited: i64,
    pub heroes: Vec<String>,
}

pub async fn member_summary(
    pool: &Pool,
    room_id: &str,
    viewer: &str,
) -> StorageResult<MemberSummary> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT
                 COUNT(*) FILTER (WHERE membership = 'join'),
                 COUNT(*) FILTER (WHERE membership = 'invite'),
                 (SELECT COALESCE(array_agg(state_key), '{}') FROM (
                     SELECT state_key FROM current_state
                     WHERE room_id = $1 AND type = 'm.room.member' AND state_key <> $2
                       AND membership IN ('join', 'invite')
                     ORDER BY stream_ordering LIMIT 5) h)
             FROM current_state WHERE room_id = $1 AND type = 'm.room.member'",
        )
        .await?;
    let row = client.query_one(&statement, &[&room_id, &viewer]).await?;
    Ok(MemberSummary {
        joined: row.get(0),
        invited: row.get(1),
        heroes: row.get(2),
    })
}
