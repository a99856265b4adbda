//! A room's `state` section: what the client needs besides the timeline to
//! know the room's state at the timeline's start. All of it for a room new
//! to the client (or `full_state`); the state changes between `since` and
//! the timeline's start when the timeline is `limited` (a gap the client
//! did not see); nothing otherwise (the timeline carries the changes).
//! Filtered by the filter's `room.state`.

use super::timeline::Timeline;
use super::SyncContext;
use crate::error::ApiResult;
use crate::storage::rooms;
use crate::storage::rooms::StoredEvent;

/// The state events of `room_id` to send before `timeline`.
pub async fn state(
    ctx: &SyncContext<'_>,
    room_id: &str,
    timeline: &Timeline,
    full_state: bool,
) -> ApiResult<Vec<StoredEvent>> {
    let pool = &ctx.node.pool;
    let events = if full_state {
        match rooms::state_group_at(pool, room_id, timeline.before).await? {
            Some(group) => rooms::state_group_events(pool, group).await?,
            None => Vec::new(),
        }
    } else if timeline.limited {
        let since = ctx.since_events().unwrap_or(0);
        rooms::state_changes_between(pool, room_id, since, timeline.before).await?
    } else {
        Vec::new()
    };
    let filter = &ctx.filter.room.state;
    Ok(events
        .into_iter()
        .filter(|e| filter.matches(&e.room_id, &e.sender, &e.kind, e.content()))
        .collect())
}
