//! The `rooms` section: which rooms are in `join`, `invite`, `knock` and `leave`, and
//! each room's assembly from the [`timeline`], [`state`], [`ephemeral`] and
//! [`account_data`] sections.
//!
//! A joined room is listed when it is new to the client (or `full_state`)
//! or when one of its per-room sections has something since `since`; an
//! invite, a knock or a leave is listed once, in the first sync after it (a leave
//! also in an initial sync whose filter sets `include_leave`).

use serde_json::{json, Map, Value};

use super::{account_data, ephemeral, notifications, state, timeline, SyncContext};
use crate::api::client::events::{client_events, stripped_state, STRIPPED_STATE_TYPES};
use crate::error::ApiResult;
use crate::storage::rooms;
use crate::storage::rooms::{Membership, StoredEvent};
use crate::util::json_object;

/// The four room lists, by room id.
#[derive(Default)]
pub struct Rooms {
    pub join: Map<String, Value>,
    pub invite: Map<String, Value>,
    pub leave: Map<String, Value>,
    pub knock: Map<String, Value>,
}

impl Rooms {
    pub fn is_empty(&self) -> bool {
        self.join.is_empty()
            && self.invite.is_empty()
            && self.leave.is_empty()
            && self.knock.is_empty()
    }

    /// The `rooms` object.
    pub fn into_json(self) -> Value {
        json_object([
            ("join", Value::Object(self.join)),
            ("invite", Value::Object(self.invite)),
            ("leave", Value::Object(self.leave)),
            ("knock", Value::Object(self.knock)),
        ])
    }
}

/// The memberships an answer describes: those the filter wants, not
/// forgotten, and not after `upto` (left for the next sync).
fn described<'a>(ctx: &'a SyncContext<'_>) -> impl Iterator<Item = &'a Membership> {
    let upto = ctx.upto_events();
    ctx.memberships.iter().filter(move |m| {
        m.stream_ordering <= upto && ctx.filter.wants_room(&m.room_id) && !m.forgotten
    })
}

/// The `rooms` section of `ctx`'s answer.
pub async fn rooms(ctx: &SyncContext<'_>) -> ApiResult<Rooms> {
    let mut rooms = Rooms {
        join: joined(ctx).await?,
        invite: stripped(ctx, "invite", "invite_state").await?,
        leave: Box::pin(left(ctx)).await?,
        knock: stripped(ctx, "knock", "knock_state").await?,
    };
    timeline::bundle_aggregations(ctx, [&mut rooms.join, &mut rooms.leave]).await?;
    Ok(rooms)
}

async fn joined(ctx: &SyncContext<'_>) -> ApiResult<Map<String, Value>> {
    let limit = timeline::limit(ctx.filter);
    let joined: Vec<&Membership> = described(ctx).filter(|m| m.membership == "join").collect();
    let mut recent = timeline::recent_per_room(ctx, &joined, limit).await?;
    let mut listed = Vec::new();
    for membership in joined {
        let room_id = &membership.room_id;
        let newly_joined = ctx
            .since_events()
            .is_none_or(|since| membership.stream_ordering > since);
        let events = recent.remove(room_id).unwrap_or_default();
        let ephemeral = ephemeral::ephemeral(ctx, room_id).await?;
        let account_data = account_data::room(ctx, room_id).await?;
        if events.is_empty()
            && ephemeral.is_empty()
            && account_data.is_empty()
            && !newly_joined
            && !ctx.full_state
        {
            continue;
        }
        let parts = RoomParts {
            membership,
            events,
            limit,
            full_state: newly_joined || ctx.full_state,
            end: ctx.upto_events(),
            ephemeral: Some(ephemeral),
            account_data,
            unread: Map::new(),
        };
        listed.push(parts);
    }
    let room_ids: Vec<&str> = listed
        .iter()
        .map(|p| p.membership.room_id.as_str())
        .collect();
    let mut unread = notifications::unread(ctx, &room_ids).await?;
    let mut section = Map::new();
    for mut parts in listed {
        let room_id = parts.membership.room_id.clone();
        parts.unread = unread.remove(&room_id).unwrap_or_default();
        section.insert(room_id, room(ctx, parts).await?);
    }
    Ok(section)
}

/// The `invite` or `knock` section: each room the user is invited to (or
/// knocked on) since `since`, as its stripped state and the user's own
/// member event, under `state_section` (`invite_state`, `knock_state`).
async fn stripped(
    ctx: &SyncContext<'_>,
    wanted: &str,
    state_section: &str,
) -> ApiResult<Map<String, Value>> {
    let node = ctx.node;
    let mut section = Map::new();
    for membership in described(ctx).filter(|m| m.membership == wanted) {
        if ctx
            .since_events()
            .is_some_and(|since| membership.stream_ordering <= since)
        {
            continue;
        }
        let mut state = Vec::new();
        for event in rooms::current_state(&node.pool, &membership.room_id).await? {
            if STRIPPED_STATE_TYPES.contains(&event.kind.as_str()) {
                state.push(stripped_state(&event));
            }
        }
        if let Some(invite) =
            rooms::events_by_ids(&node.pool, std::slice::from_ref(&membership.event_id))
                .await?
                .pop()
        {
            let mut formatted = client_events(node, &[invite], Some(ctx.requester)).await?;
            if let Some(event) = formatted.pop() {
                state.push(event);
            }
        }
        section.insert(
            membership.room_id.clone(),
            json_object([(state_section, events_object(state))]),
        );
    }
    Ok(section)
}

async fn left(ctx: &SyncContext<'_>) -> ApiResult<Map<String, Value>> {
    let limit = timeline::limit(ctx.filter);
    let mut section = Map::new();
    for membership in described(ctx).filter(|m| m.membership == "leave" || m.membership == "ban") {
        let include = match ctx.since_events() {
            Some(since) => membership.stream_ordering > since,
            None => ctx.filter.room.include_leave,
        };
        if !include {
            continue;
        }
        let events = timeline::until_leave(ctx, membership, limit).await?;
        let parts = RoomParts {
            membership,
            events,
            limit,
            full_state: false,
            end: membership.stream_ordering,
            ephemeral: None,
            account_data: account_data::room(ctx, &membership.room_id).await?,
            unread: Map::new(),
        };
        section.insert(membership.room_id.clone(), room(ctx, parts).await?);
    }
    Ok(section)
}

/// What one room of `join` or `leave` is assembled from.
struct RoomParts<'a> {
    membership: &'a Membership,
    /// The events that pass the timeline filter, newest first, with one
    /// more than `limit` when there are more.
    events: Vec<StoredEvent>,
    limit: i64,
    /// Send the room's whole state (new to the client, or `full_state`).
    full_state: bool,
    /// The position the room is described at: the answer's end for a
    /// joined room, the leave for a left one.
    end: i64,
    /// The room's ephemeral events (joined rooms only).
    ephemeral: Option<Vec<Value>>,
    account_data: Vec<Value>,
    /// The unread counts (joined rooms only): `unread_notifications` and,
    /// when asked for, `unread_thread_notifications`.
    unread: Map<String, Value>,
}

/// One room of the `join` or `leave` section.
async fn room(ctx: &SyncContext<'_>, parts: RoomParts<'_>) -> ApiResult<Value> {
    let membership = parts.membership;
    let timeline =
        timeline::timeline(ctx, membership, parts.events, parts.limit, parts.end).await?;
    let state = state::state(ctx, &membership.room_id, &timeline, parts.full_state).await?;
    let mut section = Map::new();
    section.insert("timeline".into(), timeline.to_json(ctx).await?);
    let state_events = client_events(ctx.node, &state, Some(ctx.requester)).await?;
    section.insert("state".into(), events_object(state_events));
    section.insert("account_data".into(), events_object(parts.account_data));
    if let Some(ephemeral) = parts.ephemeral {
        section.insert("ephemeral".into(), events_object(ephemeral));
        section.extend(parts.unread);
        // The summary changes only with membership: send it when the client
        // has none yet or a member event is in this batch.
        let members_changed = timeline
            .events
            .iter()
            .chain(&state)
            .any(|e| e.kind == "m.room.member");
        if parts.full_state || members_changed {
            section.insert("summary".into(), summary(ctx, &membership.room_id).await?);
        }
    }
    Ok(Value::Object(section))
}

/// `{"events": [...]}`, the shape of every list of events in a room.
fn events_object(events: Vec<Value>) -> Value {
    json_object([("events", Value::Array(events))])
}

/// The room summary: heroes and member counts, for clients to name the room.
async fn summary(ctx: &SyncContext<'_>, room_id: &str) -> ApiResult<Value> {
    let summary = rooms::member_summary(&ctx.node.pool, room_id, ctx.user_id()).await?;
    Ok(json!({
        "m.heroes": summary.heroes,
        "m.joined_member_count": summary.joined,
        "m.invited_member_count": summary.invited,
    }))
}
