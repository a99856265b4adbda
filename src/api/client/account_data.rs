//! Account data and room tags: `GET`/`PUT /user/{userId}/account_data/{type}`,
//! `GET`/`PUT /user/{userId}/rooms/{roomId}/account_data/{type}`, and
//! `GET /user/{userId}/rooms/{roomId}/tags`, `PUT`/`DELETE .../tags/{tag}`.
//!
//! Requests are checked here, in Synapse's order (`rest/client/account_data.py`,
//! `tags.py`): only the user reads and writes their own (`403 M_FORBIDDEN`),
//! a room id must be valid (`400 M_INVALID_PARAM`), the body a JSON object
//! (`400 M_NOT_JSON` / `M_BAD_JSON`), and types the server owns
//! (`m.fully_read` in a room, `m.push_rules` globally) are refused with the
//! spec's `405 M_BAD_JSON`; a refused request changes nothing. Writes go to
//! the account data writer of the user (`roles/account_data`), and the
//! answer waits until this instance has seen them, so the client's next
//! `GET` or `/sync` has them. Reads come from PostgreSQL, whichever
//! instance serves them. Tags are stored as the room's `m.tag` account data,
//! which is how `/sync` shows them.

use actix_web::{web, HttpResponse};
use ruma::OwnedRoomId;
use serde_json::{json, Map, Value};

use crate::api::client::membership::check_room_id;
use crate::api::limits::{check_bytes, check_json_no_nul, check_no_nul};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::roles::account_data::{
    AccountDataChange, ChangeAccountData, ACCOUNT_DATA_STREAM, FULLY_READ, TAGS,
};
use crate::storage::account_data;

/// The global account data type of push rules: the push rules endpoints
/// own it.
pub const PUSH_RULES: &str = "m.push_rules";

/// An account data type, in bytes (as an event type; it is part of the
/// table's key).
const MAX_TYPE_BYTES: usize = 255;

/// A tag name, in bytes (as Synapse's event types; it is a key of `m.tag`).
const MAX_TAG_BYTES: usize = 255;

/// 403 unless the path's user is the requester.
fn require_own(requester: &Requester, user_id: &str) -> ApiResult<()> {
    if requester.user_id != user_id {
        return Err(ApiError::forbidden(
            "cannot read or change account data of other users",
        ));
    }
    Ok(())
}

/// An account data type of the path: at most 255 bytes, no NUL.
fn check_type(kind: &str) -> ApiResult<()> {
    check_bytes("account data type", kind, MAX_TYPE_BYTES)?;
    check_no_nul("account data type", kind)
}

/// A body that PostgreSQL can store.
fn check_content(content: &Map<String, Value>) -> ApiResult<()> {
    check_json_no_nul("account data", &Value::Object(content.clone()))
}

fn server_controlled(kind: &str) -> ApiError {
    ApiError::new(
        ErrCode::ServerControlled,
        format!("cannot set {kind} through this API"),
    )
}

/// GET /_matrix/client/v3/user/{userId}/account_data/{type}
pub async fn get_account_data(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (user_id, kind) = path.into_inner();
    require_own(&requester, &user_id)?;
    if kind == PUSH_RULES {
        // Kept by the push rules writers, not stored here: the ruleset, as
        // `/sync` shows it (and as Synapse answers).
        let event = crate::streams::push_rules::push_rules_event(
            &node.pool,
            &node.notifier,
            &node.push.rules,
            &user_id,
            None,
            0,
        )
        .await?;
        return match event.and_then(|mut event| event.get_mut("content").map(Value::take)) {
            Some(content) => Ok(HttpResponse::Ok().json(content)),
            None => Err(ApiError::not_found("account data not found")),
        };
    }
    stored_content(&node, &user_id, None, &kind).await
}

/// PUT /_matrix/client/v3/user/{userId}/account_data/{type}
pub async fn put_account_data(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (user_id, kind) = path.into_inner();
    require_own(&requester, &user_id)?;
    check_type(&kind)?;
    if kind == PUSH_RULES {
        return Err(server_controlled(&kind));
    }
    check_content(&content)?;
    let change = AccountDataChange::Put {
        room_id: None,
        kind,
        content,
    };
    change_account_data(&node, &requester, change).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}
pub async fn get_room_account_data(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
) -> ApiResult<HttpResponse> {
    let (user_id, room_id, kind) = path.into_inner();
    require_own(&requester, &user_id)?;
    let room_id = check_room_id(&room_id)?;
    stored_content(&node, &user_id, Some(&room_id), &kind).await
}

/// PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}
pub async fn put_room_account_data(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (user_id, room_id, kind) = path.into_inner();
    require_own(&requester, &user_id)?;
    let room_id = check_room_id(&room_id)?;
    check_type(&kind)?;
    if kind == FULLY_READ {
        return Err(ApiError::new(
            ErrCode::ServerControlled,
            "cannot set m.fully_read through this API: use /rooms/{roomId}/read_markers",
        ));
    }
    check_content(&content)?;
    let change = AccountDataChange::Put {
        room_id: Some(room_id),
        kind,
        content,
    };
    change_account_data(&node, &requester, change).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags
pub async fn get_tags(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (user_id, room_id) = path.into_inner();
    require_own(&requester, &user_id)?;
    let room_id = check_room_id(&room_id)?;
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let content = account_data::room_content(&client, &user_id, room_id.as_str(), TAGS).await?;
    let tags = match content.as_ref().and_then(|content| content.get("tags")) {
        Some(Value::Object(tags)) => tags.clone(),
        _ => Map::new(),
    };
    Ok(HttpResponse::Ok().json(json!({ "tags": tags })))
}

/// PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
pub async fn put_tag(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (user_id, room_id, tag) = path.into_inner();
    let room_id = check_tag_path(&requester, &user_id, &room_id, &tag)?;
    check_tag_content(&content)?;
    let change = AccountDataChange::PutTag {
        room_id,
        tag,
        content,
    };
    change_account_data(&node, &requester, change).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
pub async fn delete_tag(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
) -> ApiResult<HttpResponse> {
    let (user_id, room_id, tag) = path.into_inner();
    let room_id = check_tag_path(&requester, &user_id, &room_id, &tag)?;
    let change = AccountDataChange::DeleteTag { room_id, tag };
    change_account_data(&node, &requester, change).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// The checks of a tag's path: the requester's own, a valid room id, a tag
/// name of at most 255 bytes without NUL.
fn check_tag_path(
    requester: &Requester,
    user_id: &str,
    room_id: &str,
    tag: &str,
) -> ApiResult<OwnedRoomId> {
    require_own(requester, user_id)?;
    let room_id = check_room_id(room_id)?;
    check_bytes("tag", tag, MAX_TAG_BYTES)?;
    check_no_nul("tag", tag)?;
    Ok(room_id)
}

/// A tag's body: an object whose `order`, if any, is a number in `[0, 1]`
/// (the spec's "a number in a range [0,1]"); other keys are kept, as
/// Synapse keeps them.
fn check_tag_content(content: &Map<String, Value>) -> ApiResult<()> {
    match content.get("order") {
        None => {}
        Some(Value::Number(order)) => {
            let in_range = order.as_f64().is_some_and(|o| (0.0..=1.0).contains(&o));
            if !in_range {
                return Err(ApiError::invalid_param(
                    "order must be a number between 0 and 1",
                ));
            }
        }
        Some(_) => return Err(ApiError::bad_json("order must be a number")),
    }
    check_json_no_nul("tag", &Value::Object(content.clone()))
}

/// `200` with the stored content of the user's account data `kind` (in
/// `room_id`), or `404 M_NOT_FOUND`.
async fn stored_content(
    node: &Node,
    user_id: &str,
    room_id: Option<&OwnedRoomId>,
    kind: &str,
) -> ApiResult<HttpResponse> {
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let room_id = room_id.map(|room_id| room_id.as_str());
    match account_data::content(&client, user_id, room_id, kind).await? {
        Some(content) => Ok(HttpResponse::Ok().json(content)),
        None => Err(ApiError::not_found("account data not found")),
    }
}

/// Sends `change` to the account data writer of the requester, and waits
/// until this instance has seen what it wrote.
async fn change_account_data(
    node: &Node,
    requester: &Requester,
    change: AccountDataChange,
) -> ApiResult<()> {
    let request = ChangeAccountData {
        user_id: requester.user()?,
        change,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn a_tag_order_is_a_number_from_0_to_1() {
        for good in [
            json!({}),
            json!({ "order": 0 }),
            json!({ "order": 0.25 }),
            json!({ "order": 1 }),
        ] {
            assert!(check_tag_content(&body(good.clone())).is_ok(), "{good}");
        }
        for (bad, errcode) in [
            (json!({ "order": "0.5" }), ErrCode::BadJson),
            (json!({ "order": null }), ErrCode::BadJson),
            (json!({ "order": 1.5 }), ErrCode::InvalidParam),
            (json!({ "order": -0.1 }), ErrCode::InvalidParam),
        ] {
            let error = check_tag_content(&body(bad.clone())).err();
            assert_eq!(error.map(|e| e.errcode), Some(errcode), "{bad}");
        }
    }
}
