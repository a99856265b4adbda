//! Event filters (`/user/{userId}/filter`, `/sync?filter=`, `/messages?filter=`).
//!
//! A room event filter is applied before any limit: the timeline queries
//! take it into their SQL (`storage::rooms`), and the recent-events cache
//! filters what it holds before counting, so `limit` events that match come
//! back whenever there are that many.

use serde::Deserialize;

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Filter {
    pub event_fields: Option<Vec<String>>,
    pub event_format: Option<String>,
    pub presence: EventFilter,
    pub account_data: EventFilter,
    pub room: RoomFilter,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    pub limit: Option<u64>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub include_leave: bool,
    pub timeline: RoomEventFilter,
    pub state: RoomEventFilter,
    pub ephemeral: RoomEventFilter,
    pub account_data: RoomEventFilter,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomEventFilter {
    pub limit: Option<u64>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub contains_url: Option<bool>,
    pub lazy_load_members: bool,
    pub include_redundant_members: bool,
    pub unread_thread_notifications: bool,
}

impl EventFilter {
    /// Whether an event of `kind` (from `sender`, when there is one to
    /// judge) passes: the types, then the senders.
    pub fn matches(&self, sender: Option<&str>, kind: &str) -> bool {
        let types_pass = !self
            .not_types
            .iter()
            .any(|pattern| type_matches(pattern, kind))
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.iter().any(|pattern| type_matches(pattern, kind)));
        let sender_passes = |sender: &str| {
            !self.not_senders.iter().any(|s| s == sender)
                && self
                    .senders
                    .as_ref()
                    .is_none_or(|senders| senders.iter().any(|s| s == sender))
        };
        types_pass && sender.is_none_or(sender_passes)
    }
}

impl Filter {
    /// Reads a filter definition, answering `M_BAD_JSON` for a wrong shape.
    pub fn parse(value: serde_json::Value) -> ApiResult<Filter> {
        if !value.is_object() {
            return Err(ApiError::bad_json("a filter must be a JSON object"));
        }
        serde_json::from_value(value)
            .map_err(|e| ApiError::bad_json(format!("invalid filter: {e}")))
    }

    /// Whether events of `room_id` are wanted at all.
    pub fn wants_room(&self, room_id: &str) -> bool {
        !self.room.not_rooms.iter().any(|r| r == room_id)
            && self
                .room
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
    }
}

impl RoomEventFilter {
    /// Whether an event with these fields passes the filter.
    pub fn matches(
        &self,
        room_id: &str,
        sender: &str,
        kind: &str,
        content: &serde_json::Value,
    ) -> bool {
        if self.not_rooms.iter().any(|r| r == room_id) {
            return false;
        }
        if let Some(rooms) = &self.rooms {
            if !rooms.iter().any(|r| r == room_id) {
                return false;
            }
        }
        if self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(senders) = &self.senders {
            if !senders.iter().any(|s| s == sender) {
                return false;
            }
        }
        if self
            .not_types
            .iter()
            .any(|pattern| type_matches(pattern, kind))
        {
            return false;
        }
        if let Some(types) = &self.types {
            if !types.iter().any(|pattern| type_matches(pattern, kind)) {
                return false;
            }
        }
        if let Some(contains_url) = self.contains_url {
            if content.get("url").is_some_and(|u| u.is_string()) != contains_url {
                return false;
            }
        }
        true
    }
}

/// An entry of a filter's `types` or `not_types`: an event type, or a prefix
/// when it ends in `*` (the one wildcard Synapse honours). Both the check in
/// memory ([`RoomEventFilter::matches`]) and the one in SQL
/// (`storage::rooms`) read patterns through this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypePattern<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}

impl<'a> TypePattern<'a> {
    pub fn parse(pattern: &'a str) -> TypePattern<'a> {
        match pattern.strip_suffix('*') {
            Some(prefix) => TypePattern::Prefix(prefix),
            None => TypePattern::Exact(pattern),
        }
    }

    fn matches(self, kind: &str) -> bool {
        match self {
            TypePattern::Exact(exact) => exact == kind,
            TypePattern::Prefix(prefix) => kind.starts_with(prefix),
        }
    }
}

pub fn type_matches(pattern: &str, kind: &str) -> bool {
    TypePattern::parse(pattern).matches(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_senders_and_rooms_filter_events() {
        let filter = Filter::parse(json!({
            "room": { "timeline": { "types": ["m.room.*"], "not_senders": ["@spam:x"], "limit": 5 } }
        }))
        .expect("valid filter");
        let timeline = &filter.room.timeline;
        assert_eq!(timeline.limit, Some(5));
        assert!(timeline.matches("!r:x", "@a:x", "m.room.message", &json!({})));
        assert!(!timeline.matches("!r:x", "@a:x", "org.custom", &json!({})));
        assert!(!timeline.matches("!r:x", "@spam:x", "m.room.message", &json!({})));
    }

    #[test]
    fn wrong_shapes_are_bad_json() {
        let error = Filter::parse(json!({ "room": { "timeline": { "limit": "ten" } } }))
            .expect_err("must be refused");
        assert_eq!(error.errcode, crate::error::ErrCode::BadJson);
        assert!(Filter::parse(json!([1])).is_err());
    }
}
