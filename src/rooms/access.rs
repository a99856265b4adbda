//! Who may read a room: whether a user may read its history at all
//! ([`history_access`]: members, former members up to their leave, anyone in
//! a `world_readable` room), and which of a run of its events they may see
//! ([`visible_events`], by the history visibility rules of
//! [`super::visibility`]). `/messages`, `/context`, `/event`, `/state` and
//! `/sync` all ask here. The rules themselves are pure
//! ([`access_for`], [`VisibilityWalk`]); this module reads what they need.

use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::visibility::{HistoryVisibility, VisibilityWalk, HISTORY_VISIBILITY};
use crate::storage::rooms;
use crate::storage::rooms::{Membership, StoredEvent};

/// How far back into a room's history a user may read, before each event
/// is checked with [`visible_events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryAccess {
    /// The last position the user may read: their leave, or `i64::MAX`.
    pub upto: i64,
    /// Not joined now: `shared` history is closed to them.
    pub is_peeking: bool,
}

/// The rule of [`history_access`]: from the user's membership of the room
/// (if any) and the room's current history visibility.
pub fn access_for(
    membership: Option<&Membership>,
    visibility: HistoryVisibility,
) -> Option<HistoryAccess> {
    match membership {
        // "Once forgotten, the user will no longer be able to retrieve
        // history for this room."
        Some(m) if m.forgotten => return None,
        Some(m) if m.membership == "join" => {
            return Some(HistoryAccess {
                upto: i64::MAX,
                is_peeking: false,
            })
        }
        Some(m) if m.membership == "leave" || m.membership == "ban" => {
            return Some(HistoryAccess {
                upto: m.stream_ordering,
                is_peeking: true,
            })
        }
        _ => {}
    }
    (visibility == HistoryVisibility::WorldReadable).then_some(HistoryAccess {
        upto: i64::MAX,
        is_peeking: true,
    })
}

/// Whether the user may read the room's history at all: members, former
/// members (up to their leave), and anyone when the room is
/// `world_readable`; `None` for the others.
pub async fn history_access(
    node: &Node,
    room_id: &str,
    user_id: &str,
) -> ApiResult<Option<HistoryAccess>> {
    let membership = rooms::membership(&node.pool, room_id, user_id).await?;
    if let Some(access) = access_for(membership.as_ref(), HistoryVisibility::Shared) {
        // A member's access does not depend on the visibility: no read.
        return Ok(Some(access));
    }
    if membership.as_ref().is_some_and(|m| m.forgotten) {
        return Ok(None);
    }
    let visibility =
        rooms::current_state_event(&node.pool, room_id, HISTORY_VISIBILITY, "").await?;
    let visibility = HistoryVisibility::from_content(visibility.as_ref().map(|e| e.content()));
    Ok(access_for(membership.as_ref(), visibility))
}

/// The one answer to a user who may not see into a room, whether the room
/// exists or not, and whoever else is in it (Synapse's text): an answer that
/// named the room or a user would tell a non-member more than this.
pub const NOT_A_MEMBER: &str = "You aren't a member of the room";

/// [`history_access`], or 403 [`NOT_A_MEMBER`].
pub async fn require_history_access(
    node: &Node,
    room_id: &str,
    user_id: &str,
) -> ApiResult<HistoryAccess> {
    history_access(node, room_id, user_id)
        .await?
        .ok_or_else(|| ApiError::forbidden(NOT_A_MEMBER))
}

/// 403 [`NOT_A_MEMBER`] unless the user is joined to the room.
pub async fn require_joined(node: &Node, room_id: &str, user_id: &str) -> ApiResult<()> {
    match rooms::membership(&node.pool, room_id, user_id).await? {
        Some(m) if m.membership == "join" => Ok(()),
        _ => Err(ApiError::forbidden(NOT_A_MEMBER)),
    }
}

/// The events of one room that `user_id` may see, by the room's history
/// visibility and their membership at each event; in the order given.
pub async fn visible_events(
    node: &Node,
    room_id: &str,
    user_id: &str,
    is_peeking: bool,
    events: Vec<StoredEvent>,
) -> ApiResult<Vec<StoredEvent>> {
    let Some(first) = events.iter().map(|e| e.stream_ordering).min() else {
        return Ok(events);
    };
    let before = rooms::state_contents_at(
        &node.pool,
        room_id,
        first - 1,
        &[(HISTORY_VISIBILITY, ""), ("m.room.member", user_id)],
    )
    .await?;
    let mut walk = VisibilityWalk::new(
        user_id,
        is_peeking,
        before.first().and_then(Option::as_ref),
        before.get(1).and_then(Option::as_ref),
    );
    let mut in_stream_order: Vec<&StoredEvent> = events.iter().collect();
    in_stream_order.sort_by_key(|e| e.stream_ordering);
    let visible: std::collections::HashSet<i64> = in_stream_order
        .into_iter()
        .filter(|e| walk.next(e))
        .map(|e| e.stream_ordering)
        .collect();
    Ok(events
        .into_iter()
        .filter(|e| visible.contains(&e.stream_ordering))
        .collect())
}

/// [`visible_events`] for events scattered over a room's history (the
/// children of an event, thread roots), not a run of it: the user's
/// membership changes and the room's history visibility changes between
/// them are read and walked with them, so that a join or a leave between two
/// of them counts.
pub async fn visible_scattered_events(
    node: &Node,
    room_id: &str,
    user_id: &str,
    is_peeking: bool,
    events: Vec<StoredEvent>,
) -> ApiResult<Vec<StoredEvent>> {
    let (Some(first), Some(last)) = (
        events.iter().map(|e| e.stream_ordering).min(),
        events.iter().map(|e| e.stream_ordering).max(),
    ) else {
        return Ok(events);
    };
    let changes =
        rooms::visibility_changes_between(&node.pool, room_id, user_id, first, last).await?;
    let wanted: std::collections::HashSet<i64> = events.iter().map(|e| e.stream_ordering).collect();
    let mut walked: Vec<StoredEvent> = changes
        .into_iter()
        .filter(|change| !wanted.contains(&change.stream_ordering))
        .collect();
    walked.extend(events.iter().cloned());
    let visible: std::collections::HashSet<i64> =
        visible_events(node, room_id, user_id, is_peeking, walked)
            .await?
            .into_iter()
            .map(|e| e.stream_ordering)
            .filter(|position| wanted.contains(position))
            .collect();
    Ok(events
        .into_iter()
        .filter(|e| visible.contains(&e.stream_ordering))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(membership: &str, stream_ordering: i64, forgotten: bool) -> Membership {
        Membership {
            room_id: "!r:x".to_owned(),
            membership: membership.to_owned(),
            event_id: "$m".to_owned(),
            stream_ordering,
            forgotten,
        }
    }

    #[test]
    fn members_read_everything_and_former_members_up_to_their_leave() {
        let joined = membership("join", 5, false);
        assert_eq!(
            access_for(Some(&joined), HistoryVisibility::Joined),
            Some(HistoryAccess {
                upto: i64::MAX,
                is_peeking: false
            })
        );
        for left in ["leave", "ban"] {
            let left = membership(left, 9, false);
            assert_eq!(
                access_for(Some(&left), HistoryVisibility::Shared),
                Some(HistoryAccess {
                    upto: 9,
                    is_peeking: true
                })
            );
        }
    }

    #[test]
    fn others_read_only_world_readable_rooms_and_forgetting_closes_the_room() {
        let invited = membership("invite", 3, false);
        for who in [None, Some(&invited)] {
            assert_eq!(access_for(who, HistoryVisibility::Shared), None);
            assert_eq!(access_for(who, HistoryVisibility::Invited), None);
            assert_eq!(
                access_for(who, HistoryVisibility::WorldReadable),
                Some(HistoryAccess {
                    upto: i64::MAX,
                    is_peeking: true
                })
            );
        }
        let forgotten = membership("leave", 4, true);
        assert_eq!(
            access_for(Some(&forgotten), HistoryVisibility::WorldReadable),
            None
        );
    }
}
