//! Push actions in PostgreSQL (`event_push_actions`, one row per event since
//! migration 0020): what each new event does for the members it notifies or
//! highlights, stored by the event persister with the event ([`insert`]),
//! counted for `/sync` after each user's read receipts ([`unread_counts`]),
//! listed for `GET /notifications` ([`notifications`]).
//! Also the one read a push rule evaluation makes of its room
//! ([`room_push_context`]).

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Pool};
use serde_json::{Map, Value};

use super::rooms::{StoredEvent, EVENT_COLUMNS};
use super::StorageResult;
use crate::push::evaluator::{PushActions, UserActions};
use crate::push::recent::Floors;

/// What evaluating an event needs of its room.
#[derive(Debug, Clone, Default)]
pub struct RoomPushContext {
    pub room_version: String,
    /// The joined members and their display names ("" without one).
    pub members: Vec<(String, String)>,
    /// The content of `m.room.power_levels`, if the room has one.
    pub power_levels: Option<Value>,
    pub create_sender: Option<String>,
    pub create_content: Option<Value>,
}

/// The room's members, display names, power levels and creators, in one
/// query; None for a room this server does not know.
pub async fn room_push_context(
    pool: &Pool,
    room_id: &str,
) -> StorageResult<Option<RoomPushContext>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT r.room_version, c.type, c.state_key, e.sender, e.pdu -> 'content'
             FROM rooms r
             LEFT JOIN current_state c ON c.room_id = r.room_id
               AND ((c.type = 'm.room.member' AND c.membership = 'join')
                 OR (c.type IN ('m.room.power_levels', 'm.room.create') AND c.state_key = ''))
             LEFT JOIN events e ON e.event_id = c.event_id
             WHERE r.room_id = $1",
        )
        .await?;
    let rows = client.query(&statement, &[&room_id]).await?;
    let mut context: Option<RoomPushContext> = None;
    for row in &rows {
        let context = context.get_or_insert_with(|| RoomPushContext {
            room_version: row.get(0),
            ..RoomPushContext::default()
        });
        let kind: Option<String> = row.get(1);
        let state_key: Option<String> = row.get(2);
        let sender: Option<String> = row.get(3);
        let content: Option<Value> = row.get(4);
        match (kind.as_deref(), state_key) {
            (Some("m.room.member"), Some(user_id)) => {
                let name = content
                    .as_ref()
                    .and_then(|c| c.get("displayname"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                context.members.push((user_id, name));
            }
            (Some("m.room.power_levels"), _) => context.power_levels = content,
            (Some("m.room.create"), _) => {
                context.create_sender = sender;
                context.create_content = content;
            }
            _ => {}
        }
    }
    Ok(context)
}

/// Stores the push actions of a batch of new events, in the persister's
/// transaction: one row per event at its stream position (the members it
/// notifies, those it highlights, the actions that are not `["notify"]`),
/// in one statement for the batch.
pub async fn insert(
    client: &impl GenericClient,
    events: &[(&str, &str, i64, &PushActions)],
) -> StorageResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut room_ids = Vec::with_capacity(events.len());
    let mut orderings = Vec::with_capacity(events.len());
    let mut thread_ids = Vec::with_capacity(events.len());
    // PostgreSQL's arrays of arrays must be rectangular: each event's
    // users go in as a JSON array, made a `text[]` by the statement.
    let mut notify = Vec::with_capacity(events.len());
    let mut highlight = Vec::with_capacity(events.len());
    let mut actions = Vec::with_capacity(events.len());
    for (room_id, _event_id, ordering, push) in events {
        room_ids.push(*room_id);
        orderings.push(*ordering);
        thread_ids.push(push.thread_id.as_str());
        let users = |pick: fn(&UserActions) -> bool| -> Value {
            Value::Array(
                push.users
                    .iter()
                    .filter(|u| pick(u))
                    .map(|u| Value::String(u.user_id.clone()))
                    .collect(),
            )
        };
        notify.push(users(|u| u.notify));
        highlight.push(users(|u| u.highlight));
        let uncommon: Map<String, Value> = push
            .users
            .iter()
            .filter(|u| !is_commonest(&u.actions))
            .map(|u| (u.user_id.clone(), u.actions.clone()))
            .collect();
        actions.push((!uncommon.is_empty()).then_some(Value::Object(uncommon)));
    }
    let statement = client
        .prepare_cached(
            "INSERT INTO event_push_actions
               (room_id, stream_ordering, thread_id, notify_users, highlight_users, actions)
             SELECT q.room_id, q.ordering, q.thread_id,
               ARRAY(SELECT jsonb_array_elements_text(q.notify)),
               ARRAY(SELECT jsonb_array_elements_text(q.highlight)),
               q.actions
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::jsonb[], $5::jsonb[], $6::jsonb[])
               AS q (room_id, ordering, thread_id, notify, highlight, actions)",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &room_ids,
                &orderings,
                &thread_ids,
                &notify,
                &highlight,
                &actions,
            ],
        )
        .await?;
    Ok(())
}

/// Whether `actions` are the commonest, `["notify"]`, which are not stored
/// (read back with [`actions_of`]).
fn is_commonest(actions: &Value) -> bool {
    matches!(actions.as_array().map(Vec::as_slice), Some([only]) if only == "notify")
}

/// The actions an event's stored `actions` column gives `user_id`, one of
/// the members it notifies or highlights.
pub fn actions_of(stored: Option<&Value>, user_id: &str) -> Value {
    stored
        .and_then(|stored| stored.get(user_id))
        .cloned()
        .unwrap_or_else(|| serde_json::json!(["notify"]))
}

/// Unread counts of one thread (or the main timeline) of one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub notifications: i64,
    pub highlights: i64,
}

/// One room's unread counts by thread, and the floors they were counted
/// above.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomUnread {
    pub counts: HashMap<String, Counts>,
    pub floors: Floors,
}

/// `user_id`'s unread counts in `rooms` by room and thread, for the
/// events after each room's given position (0: all) up to `upto`: the
/// actions after the user's latest `m.read` or `m.read.private` receipt
/// that covers them (unthreaded receipts cover every thread, threaded ones
/// their own) and after the user's last membership that was not a join (an
/// invite, a leave: what they were sent before this join does not count,
/// nor does their invite). One query for all the rooms; each room's floors
/// come back with its counts.
pub async fn unread_counts(
    pool: &Pool,
    user_id: &str,
    rooms: &[(&str, i64)],
    upto: i64,
) -> StorageResult<HashMap<String, RoomUnread>> {
    let mut unread: HashMap<String, RoomUnread> = HashMap::new();
    if rooms.is_empty() {
        return Ok(unread);
    }
    let (room_ids, afters): (Vec<&str>, Vec<i64>) = rooms.iter().copied().unzip();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            // Each room's floor (the last non-join membership, the
            // unthreaded receipt) is found once, then the room's actions
            // above it are one range of the primary key, of which the
            // user's are counted; a threaded
            // receipt raises its own thread's floor. Rows of kind 0 are a
            // room's floor, 1 a thread's, 2 a thread's counts.
            "WITH read AS (
               SELECT room_id, thread_id, MAX(event_stream_ordering) AS upto FROM receipts
               WHERE user_id = $1 AND room_id = ANY($2)
                 AND receipt_type IN ('m.read', 'm.read.private')
               GROUP BY room_id, thread_id
             ),
             floors AS (
               SELECT q.room_id, q.after, GREATEST(
                 COALESCE((
                   SELECT MAX(h.stream_ordering) FROM membership_history h
                   WHERE h.user_id = $1 AND h.room_id = q.room_id AND h.membership <> 'join'
                 ), 0),
                 COALESCE((
                   SELECT r.upto FROM read r WHERE r.room_id = q.room_id AND r.thread_id IS NULL
                 ), 0)
               ) AS floor
               FROM unnest($2::text[], $4::bigint[]) AS q (room_id, after)
             )
             SELECT 0, f.room_id, NULL, f.floor, 0::bigint FROM floors f
             UNION ALL
             SELECT 1, r.room_id, r.thread_id, r.upto, 0::bigint FROM read r WHERE r.thread_id IS NOT NULL
             UNION ALL
             SELECT 2, a.room_id, a.thread_id,
               COUNT(*) FILTER (WHERE $1 = ANY(a.notify_users)),
               COUNT(*) FILTER (WHERE $1 = ANY(a.highlight_users))
             FROM floors f
             JOIN event_push_actions a ON a.room_id = f.room_id
               AND a.stream_ordering > GREATEST(f.floor, f.after) AND a.stream_ordering <= $3
             LEFT JOIN read t ON t.room_id = a.room_id AND t.thread_id = a.thread_id
             WHERE a.stream_ordering > COALESCE(t.upto, 0)
               AND ($1 = ANY(a.notify_users) OR $1 = ANY(a.highlight_users))
             GROUP BY a.room_id, a.thread_id",
        )
        .await?;
    let rows = client
        .query(&statement, &[&user_id, &room_ids, &upto, &afters])
        .await?;
    for row in &rows {
        let kind: i32 = row.get(0);
        let room = unread.entry(row.get(1)).or_default();
        let thread_id: Option<String> = row.get(2);
        let first: i64 = row.get(3);
        match (kind, thread_id) {
            (0, _) => room.floors.room = first,
            (1, Some(thread_id)) => {
                room.floors.threads.insert(thread_id, first);
            }
            (_, Some(thread_id)) => {
                room.counts.insert(
                    thread_id,
                    Counts {
                        notifications: first,
                        highlights: row.get(4),
                    },
                );
            }
            _ => {}
        }
    }
    Ok(unread)
}

/// One event that notified a user, as `GET /notifications` lists it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub event: StoredEvent,
    /// The user's actions for it.
    pub actions: Value,
    /// A read receipt of the user covers it (`m.read` or `m.read.private`,
    /// unthreaded or of its thread).
    pub read: bool,
}

/// The events that notified `user_id` in `rooms` (each up to its given
/// position: the user's leave), newest first, before `before`, at most
/// `limit`; only the highlighted ones if `only_highlight`. Each room's
/// newest are one backward walk of its range of the primary key (the
/// user's entries filtered there), then the rooms' are merged.
pub async fn notifications(
    pool: &Pool,
    user_id: &str,
    rooms: &[(&str, i64)],
    before: i64,
    limit: i64,
    only_highlight: bool,
) -> StorageResult<Vec<Notification>> {
    if rooms.is_empty() || limit <= 0 {
        return Ok(Vec::new());
    }
    let (room_ids, uptos): (Vec<&str>, Vec<i64>) = rooms.iter().copied().unzip();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS}, a.actions,
               EXISTS (
                 SELECT 1 FROM receipts r
                 WHERE r.room_id = a.room_id AND r.user_id = $1
                   AND r.receipt_type IN ('m.read', 'm.read.private')
                   AND (r.thread_id IS NULL OR r.thread_id = a.thread_id)
                   AND r.event_stream_ordering >= a.stream_ordering
               )
             FROM unnest($2::text[], $3::bigint[]) AS q (room_id, upto)
             CROSS JOIN LATERAL (
               SELECT p.room_id, p.stream_ordering, p.thread_id, p.actions
               FROM event_push_actions p
               WHERE p.room_id = q.room_id
                 AND p.stream_ordering <= q.upto AND p.stream_ordering < $4
                 AND $1 = ANY(p.notify_users)
                 AND (NOT $6 OR $1 = ANY(p.highlight_users))
               ORDER BY p.stream_ordering DESC
               LIMIT $5
             ) a
             JOIN events e ON e.stream_ordering = a.stream_ordering
             ORDER BY a.stream_ordering DESC
             LIMIT $5"
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &user_id,
                &room_ids,
                &uptos,
                &before,
                &limit,
                &only_highlight,
            ],
        )
        .await?;
    let columns = EVENT_COLUMNS.split(',').count();
    Ok(rows
        .iter()
        .map(|row| {
            let stored: Option<Value> = row.get(columns);
            Notification {
                event: StoredEvent::from_row(row),
                actions: actions_of(stored.as_ref(), user_id),
                read: row.get(columns + 1),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_uncommon_actions_are_stored_and_the_rest_read_back_as_notify() {
        assert!(is_commonest(&json!(["notify"])));
        for actions in [
            json!(["notify", { "set_tweak": "highlight" }]),
            json!(["notify", { "set_tweak": "sound", "value": "default" }]),
            json!([]),
        ] {
            assert!(!is_commonest(&actions), "{actions}");
        }
        let stored = json!({ "@b:x": ["notify", { "set_tweak": "highlight" }] });
        assert_eq!(actions_of(Some(&stored), "@b:x"), stored["@b:x"]);
        assert_eq!(actions_of(Some(&stored), "@a:x"), json!(["notify"]));
        assert_eq!(actions_of(None, "@a:x"), json!(["notify"]));
    }
}
