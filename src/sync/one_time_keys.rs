//! The top-level `device_one_time_keys_count` and
//! `device_unused_fallback_key_types` of every `/sync` answer: how many
//! one-time keys the syncing device has left, by algorithm, and which of
//! its fallback keys nobody claimed yet, so it uploads more in time. They
//! are read when the answer leaves (an answer that waited included), not
//! while a long-poll waits.

use serde_json::{json, Value};

use crate::api::client::keys::one_time_key_counts;
use crate::api::Requester;
use crate::error::ApiResult;
use crate::node::Node;
use crate::storage::keys;

/// Adds both fields to `body`, a `/sync` answer for `requester`'s device.
pub async fn add_key_counts(node: &Node, requester: &Requester, body: &mut Value) -> ApiResult<()> {
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let (user_id, device_id) = (requester.user_id.as_str(), requester.device_id.as_str());
    let counts = one_time_key_counts(&client, user_id, device_id).await?;
    let fallback = keys::unused_fallback_key_types(&client, user_id, device_id).await?;
    if let Some(body) = body.as_object_mut() {
        body.insert("device_one_time_keys_count".into(), json!(counts));
        body.insert("device_unused_fallback_key_types".into(), json!(fallback));
    }
    Ok(())
}
