//! Receipts: `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}` with
//! `m.read`, `m.read.private` (seen by its sender only) and `m.fully_read`
//! (the read marker, which the spec lets this endpoint set as
//! `/read_markers` does), optionally in a thread.
//!
//! Only joined members set receipts (403 otherwise). An event that is not
//! one of the room's is `404 M_NOT_FOUND`: the spec names no errcode for it
//! (Synapse answers 200 and stores nothing, `handlers/receipts.py`), and
//! `404 M_NOT_FOUND` is the spec's answer for an event a user cannot find in
//! a room (`GET /rooms/{roomId}/event/{eventId}`); `/read_markers` says "the
//! event MUST belong to the room". A receipt for an event before the one
//! already receipted is accepted and changes nothing, as in Synapse.

use actix_web::{web, HttpResponse};
use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::{json, Map, Value};

use crate::api::client::membership::check_room_id;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::roles::account_data::{SetReadMarker, ACCOUNT_DATA_STREAM, FULLY_READ};
use crate::roles::receipts::{PutReceipt, ReceiptType, RECEIPTS_STREAM};
use crate::rooms::access::require_joined;
use crate::storage::rooms;

/// The thread id of receipts on the main timeline (not in any thread).
pub const MAIN_TIMELINE: &str = "main";

/// How many relations are followed to find an event's thread (a reaction
/// to an edit of a threaded reply is three).
const MAX_RELATION_HOPS: usize = 3;

/// What a receipt request sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Receipt(ReceiptType),
    /// `m.fully_read`: the read marker, room account data.
    FullyRead,
}

impl Marker {
    /// Parses a receipt type of the path (or a key of `/read_markers`).
    pub fn parse(receipt_type: &str) -> ApiResult<Marker> {
        match receipt_type {
            "m.read" => Ok(Marker::Receipt(ReceiptType::Read)),
            "m.read.private" => Ok(Marker::Receipt(ReceiptType::ReadPrivate)),
            FULLY_READ => Ok(Marker::FullyRead),
            other => Err(ApiError::invalid_param(format!(
                "receipt type must be m.read, m.read.private or m.fully_read, not `{other}`"
            ))),
        }
    }
}

/// An event id of a path or body, or 400.
pub fn parse_event_id(event_id: &str) -> ApiResult<OwnedEventId> {
    OwnedEventId::try_from(event_id)
        .map_err(|_| ApiError::invalid_param(format!("`{event_id}` is not a valid event id")))
}

/// The `thread_id` of a receipt's body: absent (unthreaded), `main`, or a
/// thread root's event id (the spec's 400 `M_INVALID_PARAM` otherwise).
pub fn parse_thread_id(marker: Marker, body: &Map<String, Value>) -> ApiResult<Option<String>> {
    let Some(thread_id) = body.get("thread_id") else {
        return Ok(None);
    };
    let thread_id = match thread_id.as_str() {
        Some(thread_id) if !thread_id.is_empty() => thread_id,
        _ => {
            return Err(ApiError::invalid_param(
                "thread_id field must be a non-empty string",
            ))
        }
    };
    if marker == Marker::FullyRead {
        return Err(ApiError::invalid_param(
            "thread_id is not compatible with m.fully_read receipts",
        ));
    }
    if thread_id != MAIN_TIMELINE {
        parse_event_id(thread_id).map_err(|_| {
            ApiError::invalid_param("thread_id must be `main` or the event id of a thread root")
        })?;
    }
    Ok(Some(thread_id.to_owned()))
}

/// POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}
pub async fn post_receipt(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (room_id, receipt_type, event_id) = path.into_inner();
    let room_id = check_room_id(&room_id)?;
    let event_id = parse_event_id(&event_id)?;
    let marker = Marker::parse(&receipt_type)?;
    let thread_id = parse_thread_id(marker, &body)?;
    require_joined(&node, room_id.as_str(), &requester.user_id).await?;
    crate::sync::presence::user_active(&node, &requester.user_id);
    if let Some(thread_id) = &thread_id {
        check_event_in_thread(&node, &room_id, &event_id, thread_id).await?;
    }
    match marker {
        Marker::Receipt(receipt_type) => {
            put_receipt(
                &node,
                &requester,
                room_id,
                receipt_type,
                event_id,
                thread_id,
            )
            .await?
        }
        Marker::FullyRead => set_read_marker(&node, &requester, room_id, event_id).await?,
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Sets a receipt through the receipts writer of the room, and waits until
/// this instance has seen it (what the client syncs next includes it).
pub async fn put_receipt(
    node: &Node,
    requester: &Requester,
    room_id: OwnedRoomId,
    receipt_type: ReceiptType,
    event_id: OwnedEventId,
    thread_id: Option<String>,
) -> ApiResult<()> {
    let shard_key = room_id.to_string();
    let request = PutReceipt {
        room_id,
        user_id: requester.user()?,
        receipt_type,
        thread_id,
        event_id,
        ts: crate::util::now_ms(),
    };
    let written = node
        .call_owner(RECEIPTS_STREAM, &shard_key, request)
        .await??;
    if let Some(position) = written.position {
        node.wait_for_write(RECEIPTS_STREAM, &written.instance, position)
            .await;
    }
    Ok(())
}

/// Moves the read marker through the account data writer of the user, and
/// waits until this instance has seen it.
pub async fn set_read_marker(
    node: &Node,
    requester: &Requester,
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
) -> ApiResult<()> {
    let request = SetReadMarker {
        user_id: requester.user()?,
        room_id,
        event_id,
    };
    let written = node
        .call_owner(ACCOUNT_DATA_STREAM, &requester.user_id, request)
        .await??;
    if let Some(position) = written.position {
        node.wait_for_write(ACCOUNT_DATA_STREAM, &written.instance, position)
            .await;
    }
    Ok(())
}

/// 404 unless `event_id` is an event of `room_id`; 400 unless it is in the
/// thread `thread_id` (the spec's "the event_id is not related to the
/// thread_id"), as Synapse decides it (`rest/client/receipts.py`): an event
/// is in thread T when it (or an event it relates to, over a few hops) has
/// an `m.thread` relation to T, or when it is T or relates to T without a
/// thread; it is on `main` when no event of its relations is threaded.
async fn check_event_in_thread(
    node: &Node,
    room_id: &OwnedRoomId,
    event_id: &OwnedEventId,
    thread_id: &str,
) -> ApiResult<()> {
    let mut current = event_id.to_string();
    let mut chain = Vec::new();
    let thread = loop {
        let event = rooms::event(&node.pool, &current)
            .await?
            .filter(|event| event.room_id == room_id.as_str());
        let Some(event) = event else {
            if chain.is_empty() {
                return Err(ApiError::not_found(format!(
                    "event {event_id} not found in this room"
                )));
            }
            // A relation to an event this server does not have: as far as
            // it knows, on the main timeline.
            break None;
        };
        chain.push(current.clone());
        let relation = event.content().get("m.relates_to");
        let parent = relation
            .and_then(|r| r.get("event_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (
            relation
                .and_then(|r| r.get("rel_type"))
                .and_then(Value::as_str),
            parent,
        ) {
            (Some("m.thread"), Some(root)) => break Some(root),
            (_, Some(parent)) if chain.len() <= MAX_RELATION_HOPS => current = parent,
            _ => break None,
        }
    };
    let in_thread = match (thread_id, thread) {
        (MAIN_TIMELINE, thread) => thread.is_none(),
        (root, Some(thread)) => thread == root,
        (root, None) => chain.iter().any(|id| id == root),
    };
    if in_thread {
        Ok(())
    } else {
        Err(ApiError::invalid_param(format!(
            "event_id {event_id} is not related to thread {thread_id}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrCode;

    #[test]
    fn receipt_types_are_the_specs() {
        assert_eq!(
            Marker::parse("m.read").ok(),
            Some(Marker::Receipt(ReceiptType::Read))
        );
        assert_eq!(
            Marker::parse("m.read.private").ok(),
            Some(Marker::Receipt(ReceiptType::ReadPrivate))
        );
        assert_eq!(Marker::parse("m.fully_read").ok(), Some(Marker::FullyRead));
        let unknown = Marker::parse("m.unread").err().map(|e| e.errcode);
        assert_eq!(unknown, Some(ErrCode::InvalidParam));
    }

    #[test]
    fn a_thread_id_is_main_or_an_event_id_and_never_on_a_read_marker() {
        let body = |value: Value| match json!({ "thread_id": value }) {
            Value::Object(body) => body,
            _ => unreachable!(),
        };
        let read = Marker::Receipt(ReceiptType::Read);
        assert_eq!(parse_thread_id(read, &Map::new()).ok(), Some(None));
        assert_eq!(
            parse_thread_id(read, &body(json!("main"))).ok(),
            Some(Some("main".to_owned()))
        );
        assert_eq!(
            parse_thread_id(read, &body(json!("$root"))).ok(),
            Some(Some("$root".to_owned()))
        );
        for bad in [json!(""), json!(5), json!(null), json!("thread")] {
            let error = parse_thread_id(read, &body(bad.clone())).err();
            assert_eq!(
                error.map(|e| e.errcode),
                Some(ErrCode::InvalidParam),
                "{bad}"
            );
        }
        let error = parse_thread_id(Marker::FullyRead, &body(json!("main"))).err();
        assert_eq!(error.map(|e| e.errcode), Some(ErrCode::InvalidParam));
    }
}
