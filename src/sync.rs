//! `/sync`'s answer, built from sections (DESIGN §9): one module per part of
//! the response, each reading its own stream between the request's `since`
//! and `upto` tokens and saying whether it has anything.
//!
//! - [`rooms`]: the `join`, `invite` and `leave` room lists and each room's
//!   assembly, from [`timeline`] (events, `limited`, `prev_batch`),
//!   [`state`], [`ephemeral`] (typing, receipts) and [`account_data`]'s room
//!   part;
//! - [`account_data`] (global part), [`presence`], [`to_device`] and
//!   [`device_lists`]: the top-level sections; [`one_time_keys`]: the
//!   device's key counts, added to every answer as it leaves.
//!
//! A section whose stream does not exist yet answers its spec-valid empty
//! value from its own module, so a new stream fills in one file. The HTTP
//! side (query parsing, the long-poll loop, encoding) is
//! `api/client/sync.rs`: it builds a [`SyncContext`] per attempt, asks
//! [`sync`] for the answer and waits while it [`is_empty`](SyncResponse::is_empty).

pub mod account_data;
pub mod device_lists;
pub mod ephemeral;
pub mod notifications;
pub mod one_time_keys;
pub mod presence;
pub mod push_rules;
pub mod rooms;
pub mod state;
pub mod timeline;
pub mod to_device;

use serde_json::Value;

use crate::api::Requester;
use crate::error::ApiResult;
use crate::node::Node;
use crate::rooms::filter::Filter;
use crate::storage::rooms::Membership;
use crate::streams::token::{RoomStreamToken, StreamToken};
use crate::util::json_object;

/// What one computation of a `/sync` answer works from.
pub struct SyncContext<'a> {
    pub node: &'a Node,
    pub requester: &'a Requester,
    pub filter: &'a Filter,
    /// The client's token, clamped to `upto` ([`clamp`]); `None` for an
    /// initial sync.
    pub since: Option<StreamToken>,
    /// Where this answer ends: its `next_batch`. Every section reads its
    /// stream up to here and no further.
    pub upto: StreamToken,
    /// Every joined room's state in full, as for an initial sync.
    pub full_state: bool,
    /// The user's memberships, as read when the long-poll registered its
    /// listener ([`listen_keys`]).
    pub memberships: &'a [Membership],
}

impl SyncContext<'_> {
    /// The events stream position of `since` (`None`: initial sync).
    pub fn since_events(&self) -> Option<i64> {
        self.since.as_ref().map(|since| since.room.stream())
    }

    /// The events stream position of `upto`.
    pub fn upto_events(&self) -> i64 {
        self.upto.room.stream()
    }

    /// The user the answer is for.
    pub fn user_id(&self) -> &str {
        &self.requester.user_id
    }
}

/// The sections of one answer.
#[derive(Default)]
pub struct SyncResponse {
    pub rooms: rooms::Rooms,
    pub presence: Vec<Value>,
    pub account_data: Vec<Value>,
    pub to_device: to_device::ToDevice,
    pub device_lists: device_lists::DeviceLists,
}

impl SyncResponse {
    /// Nothing new in any section: a long-poll keeps waiting.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
            && self.presence.is_empty()
            && self.account_data.is_empty()
            && self.to_device.is_empty()
            && self.device_lists.is_empty()
    }

    /// The response body, with `next_batch` as its token.
    pub fn into_json(self, next_batch: &StreamToken) -> Value {
        // Cut short, the to-device section moves the token only as far as
        // what it shows.
        let next_batch = self.to_device.next_batch(next_batch);
        let events = |events: Vec<Value>| json_object([("events", Value::Array(events))]);
        json_object([
            ("next_batch", Value::String(next_batch.to_string())),
            ("rooms", self.rooms.into_json()),
            ("presence", events(self.presence)),
            ("account_data", events(self.account_data)),
            ("to_device", events(self.to_device.events)),
            ("device_lists", self.device_lists.into_json()),
        ])
    }
}

/// The answer for `ctx`, every section computed between `ctx.since` and
/// `ctx.upto`.
pub async fn sync(ctx: &SyncContext<'_>) -> ApiResult<SyncResponse> {
    Ok(SyncResponse {
        rooms: Box::pin(rooms::rooms(ctx)).await?,
        presence: presence::presence(ctx).await?,
        account_data: account_data::global(ctx).await?,
        to_device: to_device::to_device(ctx).await?,
        device_lists: device_lists::device_lists(ctx).await?,
    })
}

/// The notifier keys a long-poll of `user_id` listens on: the user (their
/// memberships, their own data) and every room they are joined to.
pub fn listen_keys(user_id: &str, memberships: &[Membership]) -> Vec<String> {
    let mut keys: Vec<String> = memberships
        .iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id.clone())
        .collect();
    keys.push(user_id.to_owned());
    keys
}

/// The token of everything this instance has told its long-polls about: the
/// notifier's position of every registered stream in that stream's slot.
/// Components of streams this instance does not have are carried forward
/// from `since` (0 without one).
pub fn current_token(node: &Node, since: Option<&StreamToken>) -> StreamToken {
    node.streams.advance(since.unwrap_or(&StreamToken::START))
}

/// `since` with every component no further than `upto`'s: a token from
/// the future (forged, or from before a restore) reads as "up to now". The
/// room component becomes a live position (the largest of a multi-writer
/// token's).
pub fn clamp(since: &StreamToken, upto: &StreamToken) -> StreamToken {
    StreamToken {
        room: RoomStreamToken::live(since.room.max_stream_pos().min(upto.room.stream())),
        presence: since.presence.min(upto.presence),
        typing: since.typing.min(upto.typing),
        receipts: since.receipts.bound(upto.receipts.max_stream_pos()),
        account_data: since.account_data.min(upto.account_data),
        push_rules: since.push_rules.min(upto.push_rules),
        to_device: since.to_device.min(upto.to_device),
        device_lists: since.device_lists.bound(upto.device_lists.max_stream_pos()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn token(text: &str) -> StreamToken {
        text.parse().expect("token")
    }

    #[test]
    fn a_token_from_the_future_is_clamped_component_by_component() {
        let upto = token("s7_3_4_m5~1.6_6_7_8_9");
        let since = token("s90_1_40_m5~1.9~2.8_2_70_8_1");
        assert_eq!(
            clamp(&since, &upto).to_string(),
            "s7_1_4_m5~1.6~2.6_2_7_8_1"
        );
        // A token from the past is kept as it was.
        let past = token("s2_1_1_1_1_1_1_1");
        assert_eq!(clamp(&past, &upto), past);
    }

    #[test]
    fn a_multi_writer_room_position_reads_as_its_furthest_writer() {
        let upto = token("s10_0_0_0_0_0_0_0");
        assert_eq!(
            clamp(&token("m5~1.7~2.6_0_0_0_0_0_0_0"), &upto).room,
            RoomStreamToken::live(7)
        );
    }

    fn membership(room_id: &str, membership: &str) -> Membership {
        Membership {
            room_id: room_id.to_owned(),
            membership: membership.to_owned(),
            event_id: format!("$join-{room_id}"),
            stream_ordering: 1,
            forgotten: false,
        }
    }

    #[test]
    fn a_long_poll_listens_on_the_user_and_their_joined_rooms() {
        let memberships = [
            membership("!a:x", "join"),
            membership("!b:x", "invite"),
            membership("!c:x", "leave"),
            membership("!d:x", "join"),
        ];
        assert_eq!(
            listen_keys("@u:x", &memberships),
            vec!["!a:x", "!d:x", "@u:x"]
        );
    }

    #[test]
    fn an_empty_answer_has_every_section_spec_valid() {
        let response = SyncResponse::default();
        assert!(response.is_empty());
        let body = response.into_json(&token("s3_0_0_0_0_0_0_0"));
        assert_eq!(body["next_batch"], "s3_0_0_0_0_0_0_0");
        assert_eq!(
            body["rooms"],
            json!({ "join": {}, "invite": {}, "leave": {}, "knock": {} })
        );
        for section in ["presence", "account_data", "to_device"] {
            assert_eq!(body[section], json!({ "events": [] }), "{section}");
        }
        assert_eq!(body["device_lists"], json!({ "changed": [], "left": [] }));
    }
}
