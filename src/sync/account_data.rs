//! Account data in `/sync`: the top-level `account_data` section (the
//! user's global account data, [`global`]) and each room's `account_data`
//! section ([`room`]), both changes since `since` (everything on an initial
//! sync). The room part reads the account data stream; the global part has
//! no data yet (issue 13): empty.

use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;

/// The user's global account data events for this answer.
pub async fn global(ctx: &SyncContext<'_>) -> ApiResult<Vec<Value>> {
    let mut events = Vec::new();
    events.extend(super::push_rules::push_rules(ctx).await?);
    Ok(events)
}

/// The user's account data events for `room_id` for this answer (for now
/// the read marker, `m.fully_read`).
pub async fn room(ctx: &SyncContext<'_>, room_id: &str) -> ApiResult<Vec<Value>> {
    Ok(crate::streams::account_data::room_account_data_events(
        &ctx.node.pool,
        &ctx.node.notifier,
        ctx.user_id(),
        room_id,
        ctx.since.as_ref().map(|since| since.account_data),
        ctx.upto.account_data,
    )
    .await?)
}
