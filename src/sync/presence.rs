//! The `presence` section: `m.presence` events of the user and of the users
//! they share a room with, changed since `since`; on an initial sync the
//! current presence of those who are not offline (as Synapse). Nothing when
//! `presence.enabled` is false.
//!
//! An incremental sync reads nothing unless the notifier says the presence
//! stream moved for the user or one of their joined rooms since `since`
//! (presence rows wake their user's rooms: `streams/presence`), or the user
//! joined a room since: then its members' current presence comes too.
//!
//! [`syncing`] keeps the users syncing on this instance and tells their
//! presence writers when one starts or stops: per transition, batched, not
//! per request.

pub mod syncing;

use ruma::presence::PresenceState;
use serde_json::Value;

use super::SyncContext;
use crate::error::ApiResult;
use crate::node::Node;
use crate::rooms::filter::EventFilter;
use crate::storage::presence;
use crate::streams::presence::{PresenceRows, PRESENCE_STREAM};
use crate::util::json_object;
use syncing::SyncingGuard;

/// The presence events for this answer.
pub async fn presence(ctx: &SyncContext<'_>) -> ApiResult<Vec<Value>> {
    let node = ctx.node;
    if !node.config.presence.enabled || !wants_presence(&ctx.filter.presence, None) {
        return Ok(Vec::new());
    }
    let upto = ctx.upto.presence;
    let since = ctx.since.as_ref().map(|since| since.presence);
    let rooms: Vec<String> = ctx
        .memberships
        .iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id.clone())
        .collect();
    let changed = match since {
        None => true,
        Some(since) => {
            let changed = |key: &str| node.notifier.has_changed_since(PRESENCE_STREAM, key, since);
            since < upto && (changed(ctx.user_id()) || rooms.iter().any(|room| changed(room)))
        }
    };
    let mut stored = if changed {
        presence::visible_to(&node.pool, ctx.user_id(), &rooms, since, upto).await?
    } else {
        Vec::new()
    };
    // Rooms joined since `since`: their members' current presence, as
    // Synapse sends it, since it may not have changed for a long time.
    if let Some(since_events) = ctx.since_events() {
        let joined: Vec<String> = ctx
            .memberships
            .iter()
            .filter(|m| m.membership == "join" && m.stream_ordering > since_events)
            .map(|m| m.room_id.clone())
            .collect();
        if !joined.is_empty() {
            for current in
                presence::visible_to(&node.pool, ctx.user_id(), &joined, None, upto).await?
            {
                if current.user_id != ctx.user_id()
                    && !stored.iter().any(|s| s.user_id == current.user_id)
                {
                    stored.push(current);
                }
            }
        }
    }
    let now = crate::util::now_ms();
    let limit = ctx
        .filter
        .presence
        .limit
        .and_then(|limit| usize::try_from(limit).ok())
        .unwrap_or(usize::MAX);
    Ok(stored
        .into_iter()
        .filter(|stored| wants_presence(&ctx.filter.presence, Some(&stored.user_id)))
        .take(limit)
        .map(|stored| {
            let content = stored.status.content(now);
            json_object([
                ("type", Value::from("m.presence")),
                ("sender", Value::String(stored.user_id)),
                ("content", content),
            ])
        })
        .collect())
}

/// Whether the `presence` filter lets `m.presence` (of `sender`) through.
fn wants_presence(filter: &EventFilter, sender: Option<&str>) -> bool {
    filter.matches(sender, "m.presence")
}

/// `user_id` did something on this instance (sent an event, a receipt):
/// their presence writer hears of it, at most once a minute (Synapse's
/// `bump_presence_active_time`), so a chatting user does not go idle.
pub fn user_active(node: &Node, user_id: &str) {
    if !node.config.presence.enabled {
        return;
    }
    if let Some(rows) = node.streams.rows::<PresenceRows>(PRESENCE_STREAM) {
        rows.syncing().active(user_id, crate::util::now_ms());
    }
}

/// Marks `user_id` as syncing on this instance while the guard lives, with
/// the presence `set_presence` asks for (none for `offline`, which leaves
/// presence alone, and when presence is off).
pub fn syncing(node: &Node, user_id: &str, set_presence: Option<&str>) -> Option<SyncingGuard> {
    if !node.config.presence.enabled {
        return None;
    }
    let state = match set_presence {
        None | Some("online") => PresenceState::Online,
        Some("unavailable") => PresenceState::Unavailable,
        Some(_) => return None,
    };
    let rows = node.streams.rows::<PresenceRows>(PRESENCE_STREAM)?;
    Some(rows.syncing().syncing(user_id, state))
}
