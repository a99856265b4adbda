//! The `device_lists` section: the users whose device lists the client
//! should fetch again (`changed`) and those it may stop tracking (`left`),
//! between `since` and `upto`; computed by [`changes_between`], which
//! `GET /keys/changes` shares. As Synapse's sync handler
//! (`_generate_sync_entry_for_device_list`):
//!
//! - `changed`: users sharing a room with the user (the user included:
//!   their other devices) whose devices changed in the `device_lists`
//!   stream; users whose keys the user signed with their user-signing key;
//!   everyone in a room the user joined; users who joined or were invited
//!   to a room the user is in;
//! - `left`: users of rooms the user left, and users who left the user's
//!   rooms, who share no room with the user any more.
//!
//! An initial sync has neither (the client fetches every list it needs).
//! Nothing is read when neither the device lists stream nor any of the
//! user's rooms moved since `since`: the notifier says so.

use std::collections::BTreeSet;

use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;
use crate::node::Node;
use crate::storage::device_lists as stored;
use crate::storage::rooms::Membership;
use crate::streams::device_lists::DEVICE_LISTS_STREAM;
use crate::streams::events::{state_changes_key, EVENTS_STREAM};
use crate::streams::token::StreamToken;
use crate::util::json_object;

/// User ids whose device lists the client should refresh or drop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceLists {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

impl DeviceLists {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }

    /// The `device_lists` object.
    pub fn into_json(self) -> Value {
        let ids = |ids: Vec<String>| Value::Array(ids.into_iter().map(Value::String).collect());
        json_object([("changed", ids(self.changed)), ("left", ids(self.left))])
    }
}

/// The device list changes for this answer.
pub async fn device_lists(ctx: &SyncContext<'_>) -> ApiResult<DeviceLists> {
    let Some(since) = &ctx.since else {
        return Ok(DeviceLists::default());
    };
    changes_between(ctx.node, ctx.user_id(), ctx.memberships, since, &ctx.upto).await
}

/// Whose device lists changed for `user_id` between `since` and `upto`
/// (`memberships`: the user's current memberships).
pub async fn changes_between(
    node: &Node,
    user_id: &str,
    memberships: &[Membership],
    since: &StreamToken,
    upto: &StreamToken,
) -> ApiResult<DeviceLists> {
    let joined: Vec<&str> = memberships
        .iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id.as_str())
        .collect();
    let mut changed = BTreeSet::new();
    let mut maybe_left = BTreeSet::new();
    let notifier = &node.notifier;

    let (since_lists, upto_lists) = (since.device_lists.stream(), upto.device_lists.stream());
    let lists_moved = since_lists < upto_lists
        && std::iter::once(user_id)
            .chain(joined.iter().copied())
            .any(|key| notifier.has_changed_since(DEVICE_LISTS_STREAM, key, since_lists));
    let (since_events, upto_events) = (since.room.stream(), upto.room.stream());
    // The user's own joins and leaves since `since`.
    let own_changes: Vec<&Membership> = memberships
        .iter()
        .filter(|m| m.stream_ordering > since_events && m.stream_ordering <= upto_events)
        .collect();
    // The rooms the user stayed in whose state changed (a membership is
    // state): messages alone move only the room's own key.
    let busy_rooms: Vec<String> = if since_events < upto_events {
        joined
            .iter()
            .filter(|room| !own_changes.iter().any(|m| m.room_id == **room))
            .filter(|room| {
                notifier.has_changed_since(EVENTS_STREAM, &state_changes_key(room), since_events)
            })
            .map(|room| (*room).to_owned())
            .collect()
    } else {
        Vec::new()
    };
    if !lists_moved && own_changes.is_empty() && busy_rooms.is_empty() {
        return Ok(DeviceLists::default());
    }

    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    if lists_moved {
        let mut users = stored::users_sharing_a_room(&client, user_id).await?;
        users.push(user_id.to_owned());
        changed.extend(
            stored::users_with_changed_devices(&client, &users, since_lists, upto_lists).await?,
        );
        changed.extend(stored::users_signed_by(&client, user_id, since_lists, upto_lists).await?);
    }
    let newly_joined: Vec<String> = own_changes
        .iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id.clone())
        .collect();
    if !newly_joined.is_empty() {
        changed.extend(stored::members_of_rooms(&client, &newly_joined).await?);
    }
    let newly_left: Vec<String> = own_changes
        .iter()
        .filter(|m| m.membership == "leave" || m.membership == "ban")
        .map(|m| m.room_id.clone())
        .collect();
    if !newly_left.is_empty() {
        maybe_left.extend(stored::members_of_rooms(&client, &newly_left).await?);
    }
    if !busy_rooms.is_empty() {
        let changes =
            stored::membership_changes_in_rooms(&client, &busy_rooms, since_events, upto_events)
                .await?;
        for (_, member, membership) in changes {
            match membership.as_str() {
                "join" | "invite" => {
                    changed.insert(member);
                }
                "leave" | "ban" => {
                    maybe_left.insert(member);
                }
                _ => {}
            }
        }
    }
    maybe_left.remove(user_id);
    if !maybe_left.is_empty() {
        // Those who still share a room with the user did not leave them.
        let candidates: Vec<String> = maybe_left.iter().cloned().collect();
        for (member, room_id) in stored::joined_rooms_of_users(&client, &candidates).await? {
            if joined.contains(&room_id.as_str()) {
                maybe_left.remove(&member);
            }
        }
    }
    for member in &maybe_left {
        changed.remove(member);
    }
    Ok(DeviceLists {
        changed: changed.into_iter().collect(),
        left: maybe_left.into_iter().collect(),
    })
}
