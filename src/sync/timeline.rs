//! A room's `timeline`: its events from the events stream between `since`
//! and the room's end (the answer's `upto`, or the user's leave), newest
//! `limit` of them, what the user may see of them, whether older ones were
//! left out (`limited`), and the `prev_batch` token to paginate back from;
//! and the bundled aggregations of all rooms' timeline events at once.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::SyncContext;
use crate::api::client::events::client_events;
use crate::error::ApiResult;
use crate::rooms::access::visible_events;
use crate::rooms::filter::Filter;
use crate::rooms::relations;
use crate::storage::rooms;
use crate::storage::rooms::{Membership, StoredEvent};
use crate::streams::events::EVENTS_STREAM;
use crate::streams::token::RoomStreamToken;
use crate::util::json_object;

/// Timeline events per room when the filter sets no limit.
pub const DEFAULT_TIMELINE_LIMIT: i64 = 10;
/// The most timeline events per room a filter may ask for.
pub const MAX_TIMELINE_LIMIT: i64 = 1000;

/// The timeline events per room `filter` asks for.
pub fn limit(filter: &Filter) -> i64 {
    filter
        .room
        .timeline
        .limit
        .map(|l| l as i64)
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(0, MAX_TIMELINE_LIMIT)
}

/// The joined rooms' events after `since` up to `upto` that pass the
/// timeline filter, newest first, at most `limit + 1` per room (one more
/// tells that there are more). Rooms the notifier's change cache knows did
/// not move are not read.
pub async fn recent_per_room(
    ctx: &SyncContext<'_>,
    joined: &[&Membership],
    limit: i64,
) -> ApiResult<HashMap<String, Vec<StoredEvent>>> {
    let node = ctx.node;
    let since = ctx.since_events();
    let incremental = since.is_some() && !ctx.full_state;
    let changed: Vec<String> = joined
        .iter()
        .filter(|m| match since {
            Some(since) if incremental => {
                m.stream_ordering > since
                    || node
                        .notifier
                        .has_changed_since(EVENTS_STREAM, &m.room_id, since)
            }
            _ => true,
        })
        .map(|m| m.room_id.clone())
        .collect();
    let after = since.unwrap_or(0);
    let upto = ctx.upto_events();
    // The filter is applied before the limit, by the reads themselves.
    let filter = &ctx.filter.room.timeline;
    // Incremental syncs mostly want the event that woke them, which another
    // member's sync has usually just read: the recent-events cache has it.
    let recent = if incremental {
        node.recent_events
            .recent_events_per_room(
                &node.pool,
                &node.notifier,
                &changed,
                after,
                upto,
                limit,
                filter,
            )
            .await?
    } else {
        rooms::recent_events_per_room(&node.pool, &changed, after, upto, limit, filter).await?
    };
    Ok(recent)
}

/// A left room's events after `since` up to the leave, as
/// [`recent_per_room`] gives them.
pub async fn until_leave(
    ctx: &SyncContext<'_>,
    membership: &Membership,
    limit: i64,
) -> ApiResult<Vec<StoredEvent>> {
    Ok(rooms::recent_events_per_room(
        &ctx.node.pool,
        std::slice::from_ref(&membership.room_id),
        ctx.since_events().unwrap_or(0),
        membership.stream_ordering,
        limit,
        &ctx.filter.room.timeline,
    )
    .await?
    .remove(&membership.room_id)
    .unwrap_or_default())
}

/// One room's timeline.
pub struct Timeline {
    /// Oldest first.
    pub events: Vec<StoredEvent>,
    /// Older events since `since` were left out.
    pub limited: bool,
    /// The position just before the first event (the room's end when
    /// there are none): where `prev_batch` paginates back from, and what the
    /// state section describes the room at.
    pub before: i64,
}

impl Timeline {
    /// The `timeline` object.
    pub async fn to_json(&self, ctx: &SyncContext<'_>) -> ApiResult<Value> {
        let events = client_events(ctx.node, &self.events, Some(ctx.requester)).await?;
        let prev_batch = RoomStreamToken::live(self.before.max(0)).to_string();
        Ok(json_object([
            ("events", Value::Array(events)),
            ("limited", Value::Bool(self.limited)),
            ("prev_batch", Value::String(prev_batch)),
        ]))
    }
}

/// Bundles the aggregations of the timeline events of every room of
/// `sections` (`join`, `leave`), with one query for the whole answer.
pub async fn bundle_aggregations(
    ctx: &SyncContext<'_>,
    sections: [&mut Map<String, Value>; 2],
) -> ApiResult<()> {
    let events: Vec<&mut Value> = sections
        .into_iter()
        .flat_map(|section| section.values_mut())
        .filter_map(|room| room.get_mut("timeline")?.get_mut("events")?.as_array_mut())
        .flatten()
        .collect();
    relations::bundle_aggregations(ctx.node, ctx.requester, events).await
}

/// The timeline of `membership`'s room from `events` (newest first, one
/// more than `limit` when there are more), described at `end`.
pub async fn timeline(
    ctx: &SyncContext<'_>,
    membership: &Membership,
    mut events: Vec<StoredEvent>,
    limit: i64,
    end: i64,
) -> ApiResult<Timeline> {
    let limited = events.len() as i64 > limit;
    events.truncate(limit.max(0) as usize);
    // What came before the user's current membership is shown by the room's
    // history visibility; what came after their join is theirs to see.
    let is_peeking = membership.membership != "join";
    if is_peeking
        || events
            .iter()
            .any(|e| e.stream_ordering < membership.stream_ordering)
    {
        events = visible_events(
            ctx.node,
            &membership.room_id,
            ctx.user_id(),
            is_peeking,
            events,
        )
        .await?;
    }
    if events.is_empty() && is_peeking {
        // Nothing of the room is theirs to see (a rejected invite, a ban
        // before joining): their membership event is what there is to show.
        let filter = &ctx.filter.room.timeline;
        events = rooms::events_by_ids(&ctx.node.pool, std::slice::from_ref(&membership.event_id))
            .await?
            .into_iter()
            .filter(|e| filter.matches(&e.room_id, &e.sender, &e.kind, e.content()))
            .collect();
    }
    events.reverse();
    let before = events.first().map(|e| e.stream_ordering - 1).unwrap_or(end);
    Ok(Timeline {
        events,
        limited,
        before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_limit_is_the_filters_within_bounds_or_ten() {
        assert_eq!(limit(&Filter::default()), DEFAULT_TIMELINE_LIMIT);
        let filter = |limit: i64| {
            Filter::parse(json!({ "room": { "timeline": { "limit": limit } } })).expect("filter")
        };
        assert_eq!(limit(&filter(3)), 3);
        assert_eq!(limit(&filter(0)), 0);
        assert_eq!(limit(&filter(5000)), MAX_TIMELINE_LIMIT);
    }
}
