//! The `to_device` section: the messages sent to the requesting device at
//! positions in `(since, upto]` of the to-device stream, oldest first, at
//! most [`MAX_MESSAGES`] per answer (Synapse's limit); when there are more,
//! the answer's `next_batch` stops at the last one shown, so the next
//! `/sync` shows the rest. A message stays stored until a `/sync` arrives
//! with a `since` at or past it ([`acknowledge`]): the client had the
//! answer that showed it. So a client that lost an answer and asks again
//! with the same `since` gets the same messages, and one that moved on
//! never sees them again.

use serde_json::Value;

use super::SyncContext;
use crate::api::Requester;
use crate::error::ApiResult;
use crate::node::Node;
use crate::storage::to_device;
use crate::streams::to_device::TO_DEVICE_STREAM;
use crate::streams::token::{StreamKey, StreamToken};

/// The most to-device messages one answer shows (Synapse's).
pub const MAX_MESSAGES: i64 = 100;

/// The section, and where the answer's token stops when it is cut short.
#[derive(Debug, Default)]
pub struct ToDevice {
    pub events: Vec<Value>,
    /// The position of the last message shown, when more are waiting.
    pub limited_to: Option<i64>,
}

impl ToDevice {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// `upto` with the to-device position of the last message shown when
    /// the answer was cut short.
    pub fn next_batch(&self, upto: &StreamToken) -> StreamToken {
        match self.limited_to {
            Some(position) => upto.copy_and_replace(StreamKey::ToDevice(position)),
            None => upto.clone(),
        }
    }
}

/// The to-device messages for this answer.
pub async fn to_device(ctx: &SyncContext<'_>) -> ApiResult<ToDevice> {
    let device_id = ctx.requester.device_id.as_str();
    let since = ctx.since.as_ref().map_or(0, |since| since.to_device);
    let upto = ctx.upto.to_device;
    if device_id.is_empty() || since >= upto {
        return Ok(ToDevice::default());
    }
    let user_id = ctx.user_id();
    if ctx.since.is_some()
        && !ctx
            .node
            .notifier
            .has_changed_since(TO_DEVICE_STREAM, user_id, since)
    {
        return Ok(ToDevice::default());
    }
    let messages = to_device::messages_for_device(
        &ctx.node.pool,
        user_id,
        device_id,
        since,
        upto,
        MAX_MESSAGES,
    )
    .await?;
    let limited_to = match messages.last() {
        Some((position, _)) if messages.len() as i64 >= MAX_MESSAGES => Some(*position),
        _ => None,
    };
    Ok(ToDevice {
        events: messages.into_iter().map(|(_, event)| event).collect(),
        limited_to,
    })
}

/// Deletes the requesting device's messages up to `since`'s to-device
/// position: the client got the answer that ended there.
pub async fn acknowledge(node: &Node, requester: &Requester, since: &StreamToken) -> ApiResult<()> {
    if requester.device_id.is_empty() || since.to_device <= 1 {
        return Ok(());
    }
    to_device::delete_delivered(
        &node.pool,
        &requester.user_id,
        &requester.device_id,
        since.to_device,
    )
    .await?;
    Ok(())
}
