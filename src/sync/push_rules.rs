//! The `m.push_rules` global account data event of `/sync`: the user's
//! whole ruleset, on an initial sync and whenever the `push_rules` stream
//! changed for the user since the token.

use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;

/// The `m.push_rules` event for this answer, if it carries one.
pub async fn push_rules(ctx: &SyncContext<'_>) -> ApiResult<Option<Value>> {
    Ok(crate::streams::push_rules::push_rules_event(
        &ctx.node.pool,
        &ctx.node.notifier,
        &ctx.node.push.rules,
        ctx.user_id(),
        ctx.since.as_ref().map(|since| since.push_rules),
        ctx.upto.push_rules,
    )
    .await?)
}
