//! The `to_device` section: the messages sent to the requesting device at
//! positions in `(since, upto]` of the to-device stream, oldest first, at
//! most [`MAX_MESSAGES`] per answer (Synapse's limit); when there are more,
//! the answer's `next_batch` stops at the last one shown, so the next
//! `/sync` shows the rest. A message stays stored until a `/sync` arrives
//! with a `since` at or past it ([`acknowledge`]): the client had the
//! answer that showed it. So a client that lost an answer and asks again
//! with the same `since` gets the same messages, and one that moved on
//! never sees them again.

use std::sync::Mutex;

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
///
/// Most `/sync` requests have nothing to delete: as Synapse's
/// `delete_messages_for_device`, the instance remembers up to where it last
/// deleted each device's messages and skips the query while no message for
/// the user arrived after that ([`DeletedUpTo`], the notifier's change cache).
pub async fn acknowledge(node: &Node, requester: &Requester, since: &StreamToken) -> ApiResult<()> {
    let (user_id, device_id) = (requester.user_id.as_str(), requester.device_id.as_str());
    let upto = since.to_device;
    if device_id.is_empty() || upto <= 1 {
        return Ok(());
    }
    if let Some(deleted) = node.to_device_deleted.get(user_id, device_id) {
        if deleted >= upto
            || !node
                .notifier
                .has_changed_since(TO_DEVICE_STREAM, user_id, deleted)
        {
            return Ok(());
        }
    }
    to_device::delete_delivered(&node.pool, user_id, device_id, upto).await?;
    node.to_device_deleted.record(user_id, device_id, upto);
    Ok(())
}

/// Devices beyond this many are forgotten (and their next `/sync` deletes
/// once more).
const MAX_REMEMBERED_DEVICES: usize = 100_000;

/// Up to which to-device position this instance deleted each device's
/// messages (Synapse's `_last_device_delete_cache`).
#[derive(Default)]
pub struct DeletedUpTo {
    devices: Mutex<foldhash::HashMap<(String, String), i64>>,
}

impl DeletedUpTo {
    fn get(&self, user_id: &str, device_id: &str) -> Option<i64> {
        let devices = self.devices.lock().ok()?;
        devices
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .copied()
    }

    fn record(&self, user_id: &str, device_id: &str, upto: i64) {
        if let Ok(mut devices) = self.devices.lock() {
            if devices.len() >= MAX_REMEMBERED_DEVICES {
                devices.clear();
            }
            let deleted = devices
                .entry((user_id.to_owned(), device_id.to_owned()))
                .or_insert(upto);
            *deleted = (*deleted).max(upto);
        }
    }
}
