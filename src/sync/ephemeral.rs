//! A joined room's `ephemeral` section: events that are not part of the
//! room's history, one contribution per stream (`m.typing` from typing,
//! `m.receipt` from receipts), each read between the answer's `since` and
//! `upto` in its own function below. A stream adds its events here with
//! one call in [`ephemeral`].

use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;

/// The ephemeral events of `room_id` for this answer: every stream's
/// contribution, in order. Empty when nothing changed since `since`.
pub async fn ephemeral(ctx: &SyncContext<'_>, room_id: &str) -> ApiResult<Vec<Value>> {
    let mut events = Vec::new();
    events.extend(typing(ctx, room_id).await?);

    events.extend(receipts(ctx, room_id).await?);
    Ok(events)
}

/// The room's `m.typing` event, when its typing users changed since
/// `since` (or on an initial sync, when someone is typing).
async fn typing(ctx: &SyncContext<'_>, room_id: &str) -> ApiResult<Vec<Value>> {
    let event = crate::streams::typing::sync_event(
        &ctx.node.streams,
        room_id,
        ctx.since.as_ref(),
        &ctx.upto,
    );
    Ok(event.into_iter().collect())
}

/// The room's `m.receipt` event with the receipts since `since` (all of
/// them on an initial sync); another user's private receipts are left out.
async fn receipts(ctx: &SyncContext<'_>, room_id: &str) -> ApiResult<Vec<Value>> {
    let event = crate::streams::receipts::room_receipt_event(
        &ctx.node.pool,
        &ctx.node.notifier,
        room_id,
        ctx.since.as_ref().map(|since| since.receipts.stream()),
        ctx.upto.receipts.stream(),
        ctx.user_id(),
    )
    .await?;
    Ok(event.into_iter().collect())
}
