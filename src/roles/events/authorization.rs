//! What an event must pass beyond its room version's auth rules, checked
//! where the event is built, so that every endpoint (`/send`, `/redact`,
//! `/state`, membership, `createRoom`, later federation) passes the same
//! checks: the redaction rules Synapse's event creation applies.
//!
//! The auth rules of room versions 3 and later let any member send a
//! redaction of any event (event ids no longer name a server to compare);
//! whether the redacted event is then hidden is up to the server, which must
//! check the `redact` power level when the redacted event is someone else's.
//! Lattice refuses such a redaction outright, as Synapse does for its own
//! users.

use ruma::{OwnedEventId, RoomId, UserId};
use serde_json::Value;

use crate::roles::WriteError;
use crate::storage::rooms::EventOrigin;

/// Event type of redaction events.
pub const ROOM_REDACTION: &str = "m.room.redaction";

/// The event a redaction names, looked up before the redaction is built:
/// the lookup reads the database, building does not.
#[derive(Debug)]
pub struct Redaction {
    pub target_id: OwnedEventId,
    /// None when this server does not have the event.
    pub target: Option<EventOrigin>,
}

/// The event a redaction names: `redacts` as the `/redact` endpoint gives
/// it (parsed there), else `content.redacts` (room versions 11 and later
/// carry it there, and clients of any version may put it there through
/// `/send`).
pub fn redacted_event_id(
    redacts: Option<OwnedEventId>,
    content: &Value,
) -> Result<OwnedEventId, WriteError> {
    if let Some(id) = redacts {
        return Ok(id);
    }
    match content.get("redacts") {
        Some(Value::String(id)) => OwnedEventId::try_from(id.as_str())
            .map_err(|_| WriteError::InvalidParam("malformed event id".into())),
        Some(_) => Err(WriteError::BadJson("`redacts` must be an event id".into())),
        None => Err(WriteError::BadJson(
            "an m.room.redaction event needs `redacts`".into(),
        )),
    }
}

/// Whether `sender` may redact what `redaction` names in `room_id`, given
/// whether their power level reaches the room's `redact` level (Synapse's
/// `event_creation_handler`): never a create or server ACL event, never an
/// event of another room, and someone else's event only with that power.
pub fn check_redaction(
    room_id: &RoomId,
    sender: &UserId,
    redaction: &Redaction,
    may_redact_others: bool,
) -> Result<(), WriteError> {
    if let Some(target) = &redaction.target {
        if target.kind == "m.room.create" {
            return Err(WriteError::Forbidden(
                "redacting create events is not permitted".into(),
            ));
        }
        if target.room_id != room_id.as_str() {
            return Err(WriteError::InvalidParam(
                "cannot redact an event from a different room".into(),
            ));
        }
        if target.kind == "m.room.server_acl" {
            return Err(WriteError::Forbidden(
                "redacting server ACL events is not permitted".into(),
            ));
        }
    }
    if may_redact_others {
        return Ok(());
    }
    match &redaction.target {
        None => Err(WriteError::NotFound("event not found".into())),
        Some(target) if target.sender != sender.as_str() => Err(WriteError::Forbidden(
            "you may not redact other users' events".into(),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_event_id, room_id, user_id};
    use serde_json::json;

    use super::*;

    fn redaction_of(room_id: &str, sender: &str, kind: &str) -> Redaction {
        Redaction {
            target_id: owned_event_id!("$target"),
            target: Some(EventOrigin {
                room_id: room_id.into(),
                sender: sender.into(),
                kind: kind.into(),
            }),
        }
    }

    #[test]
    fn others_events_need_the_redact_power() {
        let bob = user_id!("@bob:x");
        let alices = redaction_of("!r:x", "@alice:x", "m.room.message");
        let error = check_redaction(room_id!("!r:x"), bob, &alices, false).expect_err("refused");
        assert!(matches!(error, WriteError::Forbidden(_)));
        assert!(check_redaction(room_id!("!r:x"), bob, &alices, true).is_ok());
        let bobs = redaction_of("!r:x", "@bob:x", "m.room.message");
        assert!(check_redaction(room_id!("!r:x"), bob, &bobs, false).is_ok());
    }

    #[test]
    fn some_events_are_never_redacted_here() {
        let alice = user_id!("@alice:x");
        for kind in ["m.room.create", "m.room.server_acl"] {
            let error = check_redaction(
                room_id!("!r:x"),
                alice,
                &redaction_of("!r:x", "@alice:x", kind),
                true,
            )
            .expect_err("refused");
            assert!(matches!(error, WriteError::Forbidden(_)), "{kind}");
        }
        let elsewhere = redaction_of("!other:x", "@alice:x", "m.room.message");
        let error =
            check_redaction(room_id!("!r:x"), alice, &elsewhere, true).expect_err("refused");
        assert!(matches!(error, WriteError::InvalidParam(_)));
        let unknown = Redaction {
            target_id: owned_event_id!("$unknown"),
            target: None,
        };
        let error = check_redaction(room_id!("!r:x"), alice, &unknown, false).expect_err("refused");
        assert!(matches!(error, WriteError::NotFound(_)));
        assert!(check_redaction(room_id!("!r:x"), alice, &unknown, true).is_ok());
    }

    #[test]
    fn the_target_comes_from_the_endpoint_or_the_content() {
        let from_path = redacted_event_id(Some(owned_event_id!("$a")), &json!({ "redacts": "$b" }))
            .expect("id");
        assert_eq!(from_path.as_str(), "$a");
        let from_content = redacted_event_id(None, &json!({ "redacts": "$b" })).expect("id");
        assert_eq!(from_content.as_str(), "$b");
        assert!(matches!(
            redacted_event_id(None, &json!({})),
            Err(WriteError::BadJson(_))
        ));
        assert!(matches!(
            redacted_event_id(None, &json!({ "redacts": 1 })),
            Err(WriteError::BadJson(_))
        ));
        assert!(matches!(
            redacted_event_id(None, &json!({ "redacts": "no sigil" })),
            Err(WriteError::InvalidParam(_))
        ));
    }
}
