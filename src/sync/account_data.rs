//! Account data in `/sync`: the top-level `account_data` section (the
//! user's global account data, [`global`]) and each room's `account_data`
//! section ([`room`]: read marker, tags, anything the client stored), both
//! what changed since `since` (everything on an initial sync), read from
//! the account data stream. A user whose account data did not change costs
//! no read. The sync filter's `account_data` / `room.account_data` `types`
//! and `not_types` apply.

use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;
use crate::rooms::filter::type_matches;
use crate::streams::account_data::account_data_events;

/// The user's global account data events for this answer.
pub async fn global(ctx: &SyncContext<'_>) -> ApiResult<Vec<Value>> {
    let mut events = stored(ctx, None).await?;
    // Global account data the server keeps elsewhere, before the filter.
    events.extend(super::push_rules::push_rules(ctx).await?);
    let filter = &ctx.filter.account_data;
    events.retain(|event| wanted(event, filter.types.as_deref(), &filter.not_types));
    Ok(events)
}

/// The user's account data events for `room_id` for this answer.
pub async fn room(ctx: &SyncContext<'_>, room_id: &str) -> ApiResult<Vec<Value>> {
    let filter = &ctx.filter.room.account_data;
    if filter.not_rooms.iter().any(|r| r == room_id)
        || filter
            .rooms
            .as_ref()
            .is_some_and(|rooms| !rooms.iter().any(|r| r == room_id))
    {
        return Ok(Vec::new());
    }
    let mut events = stored(ctx, Some(room_id)).await?;
    events.retain(|event| wanted(event, filter.types.as_deref(), &filter.not_types));
    Ok(events)
}

/// The account data of the stream in `room_id` (global without one) that
/// changed between `since` and `upto`.
async fn stored(ctx: &SyncContext<'_>, room_id: Option<&str>) -> ApiResult<Vec<Value>> {
    Ok(account_data_events(
        &ctx.node.pool,
        &ctx.node.notifier,
        ctx.user_id(),
        room_id,
        ctx.since.as_ref().map(|since| since.account_data),
        ctx.upto.account_data,
    )
    .await?)
}

/// Whether an account data event passes a filter's `types` and `not_types`.
fn wanted(event: &Value, types: Option<&[String]>, not_types: &[String]) -> bool {
    let kind = event["type"].as_str().unwrap_or_default();
    !not_types.iter().any(|pattern| type_matches(pattern, kind))
        && types.is_none_or(|types| types.iter().any(|pattern| type_matches(pattern, kind)))
}
