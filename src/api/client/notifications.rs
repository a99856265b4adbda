//! `GET /notifications`: the events that notified the user, newest first,
//! from the push actions the push evaluator stored with each event
//! (`storage::push_actions`), as Synapse lists them: each with the user's
//! actions, whether one of their read receipts covers it, its room and
//! time, and the event in the client format. Only events the user may
//! still see are listed: none of a room they forgot, none after they left
//! one, each checked against the room's history visibility.
//!
//! `from` is the position of the last notification of the page before
//! (Synapse's token, a number); `next_token` is absent once there is no
//! more.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::client::events::client_events;
use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::access::visible_scattered_events;
use crate::storage::push_actions::{self, Notification};
use crate::storage::rooms;

/// Notifications in a page unless the client asks for fewer (Synapse's).
const DEFAULT_LIMIT: i64 = 50;
/// The most in one page (Synapse's cap).
const MAX_LIMIT: i64 = 500;

#[derive(Deserialize)]
pub struct NotificationsQuery {
    from: Option<String>,
    limit: Option<String>,
    only: Option<String>,
}

/// GET /_matrix/client/v3/notifications
pub async fn get_notifications(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<NotificationsQuery>,
) -> ApiResult<HttpResponse> {
    let before = match query.from.as_deref() {
        None | Some("") => i64::MAX,
        Some(from) => from
            .parse::<i64>()
            .ok()
            .filter(|from| *from > 0)
            .ok_or_else(|| ApiError::invalid_param("`from` is not a token of this endpoint"))?,
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(limit) => limit
            .parse::<i64>()
            .ok()
            .filter(|limit| *limit >= 0)
            .ok_or_else(|| ApiError::invalid_param("`limit` must be a non-negative integer"))?
            .min(MAX_LIMIT),
    };
    // Other values filter nothing, as in Synapse.
    let only_highlight = query.only.as_deref() == Some("highlight");

    // The rooms whose history the user may still read: up to now where
    // they are joined, up to their leave where they left (unless they
    // forgot it), up to their invite where they are invited (which
    // notified them; the room's history visibility decides whether they
    // see it yet). Nothing notifies a knock.
    let memberships = rooms::memberships_of_user(&node.pool, &requester.user_id).await?;
    let readable: Vec<(&str, i64)> = memberships
        .iter()
        .filter(|m| !m.forgotten)
        .filter_map(|m| match m.membership.as_str() {
            "join" => Some((m.room_id.as_str(), i64::MAX)),
            "leave" | "ban" | "invite" => Some((m.room_id.as_str(), m.stream_ordering)),
            _ => None,
        })
        .collect();
    // One more than asked: whether there is a next page.
    let mut found = push_actions::notifications(
        &node.pool,
        &requester.user_id,
        &readable,
        before,
        limit.saturating_add(1),
        only_highlight,
    )
    .await?;
    let next_token = (found.len() as i64 > limit)
        .then(|| {
            found.truncate(limit as usize);
            found.last().map(|n| n.event.stream_ordering.to_string())
        })
        .flatten();

    let visible = visible_notifications(&node, &requester.user_id, &memberships, found).await?;
    let events: Vec<_> = visible.iter().map(|n| n.event.clone()).collect();
    let formatted = client_events(&node, &events, Some(&requester)).await?;
    let notifications: Vec<Value> = visible
        .into_iter()
        .zip(formatted)
        .map(|(notification, event)| {
            json!({
                "actions": notification.actions,
                "event": event,
                "read": notification.read,
                "room_id": notification.event.room_id,
                "ts": notification.event.origin_server_ts,
            })
        })
        .collect();
    let mut answer = json!({ "notifications": notifications });
    if let Some(next_token) = next_token {
        answer["next_token"] = json!(next_token);
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// The notifications whose events the user may see by their rooms'
/// history visibility, newest first as they came.
async fn visible_notifications(
    node: &Node,
    user_id: &str,
    memberships: &[rooms::Membership],
    found: Vec<Notification>,
) -> ApiResult<Vec<Notification>> {
    let mut by_room: BTreeMap<String, Vec<Notification>> = BTreeMap::new();
    for notification in found {
        by_room
            .entry(notification.event.room_id.clone())
            .or_default()
            .push(notification);
    }
    let mut visible = Vec::new();
    for (room_id, notifications) in by_room {
        let is_peeking = !memberships
            .iter()
            .any(|m| m.room_id == room_id && m.membership == "join");
        let events = notifications.iter().map(|n| n.event.clone()).collect();
        let shown: std::collections::HashSet<i64> =
            visible_scattered_events(node, &room_id, user_id, is_peeking, events)
                .await?
                .iter()
                .map(|e| e.stream_ordering)
                .collect();
        visible.extend(
            notifications
                .into_iter()
                .filter(|n| shown.contains(&n.event.stream_ordering)),
        );
    }
    visible.sort_by_key(|n| std::cmp::Reverse(n.event.stream_ordering));
    Ok(visible)
}
