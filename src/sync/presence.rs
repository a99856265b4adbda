//! The `presence` section: `m.presence` events of the users the user shares
//! a room with, changed since `since`. There is no presence stream yet:
//! empty.

use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;

/// The presence events for this answer.
pub async fn presence(_ctx: &SyncContext<'_>) -> ApiResult<Vec<Value>> {
    Ok(Vec::new())
}
