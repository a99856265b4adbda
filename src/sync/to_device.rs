//! The `to_device` section: messages sent to the requesting device, after
//! `since` (a later `since` acknowledges them). There is no to-device
//! stream yet: empty.

use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;

/// The to-device messages for this answer.
pub async fn to_device(_ctx: &SyncContext<'_>) -> ApiResult<Vec<Value>> {
    Ok(Vec::new())
}
