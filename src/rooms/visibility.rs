//! History visibility (the spec's "Room History Visibility", Synapse's
//! `synapse/visibility.py`): whether a user may see one event of a room,
//! from the room's `m.room.history_visibility` and the user's membership
//! as they were at that event, and whether the user is peeking (not joined
//! now).
//!
//! [`VisibilityWalk`] decides for a run of a room's events in stream order,
//! starting from the state before the first one: every event's state is its
//! predecessor's plus itself. That holds while a room's history is one line
//! (no federation yet); forks will need each event's own state group.

use serde_json::Value;

use crate::storage::rooms::StoredEvent;

pub const HISTORY_VISIBILITY: &str = "m.room.history_visibility";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryVisibility {
    /// Anyone, member or not.
    WorldReadable,
    /// Every member, including for events before they joined (the default).
    Shared,
    /// Members, from the point they were invited.
    Invited,
    /// Members, from the point they joined.
    Joined,
}

impl HistoryVisibility {
    /// From an `m.room.history_visibility` content; absent or unknown is
    /// `shared`, as the spec says.
    pub fn from_content(content: Option<&Value>) -> HistoryVisibility {
        match content
            .and_then(|c| c.get("history_visibility"))
            .and_then(Value::as_str)
        {
            Some("world_readable") => HistoryVisibility::WorldReadable,
            Some("invited") => HistoryVisibility::Invited,
            Some("joined") => HistoryVisibility::Joined,
            _ => HistoryVisibility::Shared,
        }
    }

    /// Higher is more open.
    fn openness(self) -> u8 {
        match self {
            HistoryVisibility::Joined => 0,
            HistoryVisibility::Invited => 1,
            HistoryVisibility::Shared => 2,
            HistoryVisibility::WorldReadable => 3,
        }
    }

    fn more_open(self, other: HistoryVisibility) -> HistoryVisibility {
        if other.openness() > self.openness() {
            other
        } else {
            self
        }
    }
}

/// Memberships from most to least privileged (Synapse's `MEMBERSHIP_PRIORITY`);
/// anything unknown counts as `leave`.
const MEMBERSHIP_PRIORITY: [&str; 5] = ["join", "invite", "knock", "leave", "ban"];

fn membership_rank(membership: Option<&str>) -> usize {
    membership
        .and_then(|m| MEMBERSHIP_PRIORITY.iter().position(|known| *known == m))
        .unwrap_or(3)
}

/// Whether a user whose membership at an event was `membership` may see it.
pub fn may_see(visibility: HistoryVisibility, membership: Option<&str>, is_peeking: bool) -> bool {
    if membership == Some("join") {
        return true;
    }
    match visibility {
        HistoryVisibility::WorldReadable => true,
        HistoryVisibility::Shared => !is_peeking,
        HistoryVisibility::Invited => membership == Some("invite"),
        HistoryVisibility::Joined => false,
    }
}

/// Walks a room's events in stream order for one user, deciding each.
#[derive(Debug, Clone)]
pub struct VisibilityWalk<'a> {
    user_id: &'a str,
    is_peeking: bool,
    visibility: HistoryVisibility,
    membership: Option<String>,
}

impl<'a> VisibilityWalk<'a> {
    /// `visibility_content` and `member_content`: the room's history
    /// visibility and `user_id`'s member event content before the first
    /// event walked.
    pub fn new(
        user_id: &'a str,
        is_peeking: bool,
        visibility_content: Option<&Value>,
        member_content: Option<&Value>,
    ) -> VisibilityWalk<'a> {
        VisibilityWalk {
            user_id,
            is_peeking,
            visibility: HistoryVisibility::from_content(visibility_content),
            membership: member_content
                .and_then(|c| c.get("membership"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }

    /// Whether the user may see `event`, the next event in stream order.
    pub fn next(&mut self, event: &StoredEvent) -> bool {
        let state_key = event.state_key.as_deref();
        let mut visibility = self.visibility;
        let mut membership = self.membership.clone();
        if event.kind == HISTORY_VISIBILITY && state_key == Some("") {
            // The change is visible under the more open of the two settings.
            let new = HistoryVisibility::from_content(Some(event.content()));
            visibility = visibility.more_open(new);
            self.visibility = new;
        } else if event.kind == "m.room.member" && state_key == Some(self.user_id) {
            let new = event
                .content()
                .get("membership")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let before = membership_rank(membership.as_deref());
            let after = membership_rank(new.as_deref());
            self.membership = new.clone();
            // One's own leave after being joined or invited is always shown
            // (the room must be seen to go); otherwise the more privileged
            // of the memberships before and after decides.
            if after == membership_rank(Some("leave")) && before <= membership_rank(Some("invite"))
            {
                return true;
            }
            if after < before {
                membership = new;
            }
        }
        may_see(visibility, membership.as_deref(), self.is_peeking)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn event(kind: &str, state_key: Option<&str>, content: Value) -> StoredEvent {
        StoredEvent {
            stream_ordering: 0,
            event_id: "$e".into(),
            room_id: "!r:x".into(),
            depth: 0,
            sender: "@alice:x".into(),
            kind: kind.into(),
            state_key: state_key.map(str::to_owned),
            origin_server_ts: 0,
            pdu: Arc::new(json!({ "content": content })),
            redacted_by: None,
            txn_device_id: None,
            txn_id: None,
        }
    }

    fn message() -> StoredEvent {
        event("m.room.message", None, json!({ "body": "hi" }))
    }

    fn member(user: &str, membership: &str) -> StoredEvent {
        event(
            "m.room.member",
            Some(user),
            json!({ "membership": membership }),
        )
    }

    fn history(visibility: &str) -> StoredEvent {
        event(
            HISTORY_VISIBILITY,
            Some(""),
            json!({ "history_visibility": visibility }),
        )
    }

    #[test]
    fn the_rules_of_the_spec() {
        use HistoryVisibility::*;
        for visibility in [WorldReadable, Shared, Invited, Joined] {
            assert!(may_see(visibility, Some("join"), false));
            assert!(may_see(visibility, Some("join"), true));
        }
        assert!(may_see(WorldReadable, None, true));
        assert!(may_see(Shared, None, false), "joined now: earlier history");
        assert!(!may_see(Shared, None, true), "not joined now");
        assert!(may_see(Invited, Some("invite"), true));
        assert!(!may_see(Invited, None, false));
        assert!(!may_see(Joined, Some("invite"), false));
        assert!(!may_see(Joined, Some("leave"), false));
        assert_eq!(HistoryVisibility::from_content(None), Shared);
        assert_eq!(
            HistoryVisibility::from_content(Some(&json!({ "history_visibility": "bogus" }))),
            Shared
        );
    }

    #[test]
    fn with_joined_visibility_bob_sees_from_his_join_until_his_leave() {
        let joined = json!({ "history_visibility": "joined" });
        let mut walk = VisibilityWalk::new("@bob:x", true, Some(&joined), None);
        let seen: Vec<bool> = [
            message(),
            member("@bob:x", "invite"),
            message(),
            member("@bob:x", "join"),
            message(),
            member("@bob:x", "leave"),
            message(),
        ]
        .iter()
        .map(|e| walk.next(e))
        .collect();
        assert_eq!(seen, [false, false, false, true, true, true, false]);
    }

    #[test]
    fn with_invited_visibility_bob_sees_from_his_invite() {
        let invited = json!({ "history_visibility": "invited" });
        let mut walk = VisibilityWalk::new("@bob:x", false, Some(&invited), None);
        let seen: Vec<bool> = [message(), member("@bob:x", "invite"), message()]
            .iter()
            .map(|e| walk.next(e))
            .collect();
        assert_eq!(seen, [false, true, true]);
    }

    #[test]
    fn a_change_of_visibility_is_seen_under_the_more_open_setting() {
        let shared = json!({ "history_visibility": "shared" });
        let mut walk = VisibilityWalk::new("@bob:x", false, Some(&shared), None);
        assert!(walk.next(&history("joined")), "the change itself: shared");
        assert!(!walk.next(&message()), "after it: joined");
        assert!(walk.next(&history("world_readable")));
        let mut peeking = VisibilityWalk::new("@bob:x", true, Some(&shared), None);
        assert!(!peeking.next(&message()));
        assert!(peeking.next(&history("world_readable")));
        assert!(peeking.next(&message()));
    }

    #[test]
    fn others_membership_changes_do_not_matter() {
        let joined = json!({ "history_visibility": "joined" });
        let mut walk = VisibilityWalk::new("@bob:x", true, Some(&joined), None);
        assert!(!walk.next(&member("@carol:x", "join")));
    }
}
