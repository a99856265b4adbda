//! Account data in `/sync`: the top-level `account_data` section (the
//! user's global account data, [`global`]) and each room's `account_data`
//! section ([`room`]), both changes since `since` (everything on an initial
//! sync). There is no account data stream yet: both are empty.

use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;

/// The user's global account data events for this answer.
pub async fn global(_ctx: &SyncContext<'_>) -> ApiResult<Vec<Value>> {
    Ok(Vec::new())
}

/// The user's account data events for `room_id` for this answer.
pub async fn room(_ctx: &SyncContext<'_>, _room_id: &str) -> ApiResult<Vec<Value>> {
    Ok(Vec::new())
}
