//! Room state: read all of it or one event, and set state events.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::client::events::client_events;
use crate::api::client::membership::check_room_id;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::rooms::access::require_history_access;
use crate::storage::rooms::{self, StoredEvent};

/// The state a user may see: the current state when joined (or peeking
/// into a `world_readable` room), the state when they left otherwise.
async fn visible_state(node: &Node, room_id: &str, user_id: &str) -> ApiResult<Vec<StoredEvent>> {
    let access = require_history_access(node, room_id, user_id).await?;
    if access.upto == i64::MAX {
        return Ok(rooms::current_state(&node.pool, room_id).await?);
    }
    match rooms::state_group_at(&node.pool, room_id, access.upto).await? {
        Some(group) => Ok(rooms::state_group_events(&node.pool, group).await?),
        None => Ok(Vec::new()),
    }
}

/// GET /_matrix/client/v3/rooms/{roomId}/state
pub async fn get_state(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    check_room_id(&room_id)?;
    let state = visible_state(&node, &room_id, &requester.user_id).await?;
    Ok(HttpResponse::Ok().json(client_events(&node, &state, Some(&requester)).await?))
}

#[derive(Deserialize)]
pub struct StateQuery {
    format: Option<String>,
}

/// GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}
pub async fn get_state_event(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
    query: web::Query<StateQuery>,
) -> ApiResult<HttpResponse> {
    let (room_id, kind, state_key) = path.into_inner();
    state_event(
        &node,
        &requester,
        room_id,
        kind,
        state_key,
        query.into_inner(),
    )
    .await
}

/// GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}
pub async fn get_state_event_empty_key(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    query: web::Query<StateQuery>,
) -> ApiResult<HttpResponse> {
    let (room_id, kind) = path.into_inner();
    state_event(
        &node,
        &requester,
        room_id,
        kind,
        String::new(),
        query.into_inner(),
    )
    .await
}

async fn state_event(
    node: &Node,
    requester: &Requester,
    room_id: String,
    kind: String,
    state_key: String,
    query: StateQuery,
) -> ApiResult<HttpResponse> {
    check_room_id(&room_id)?;
    let state = visible_state(node, &room_id, &requester.user_id).await?;
    let event = state
        .into_iter()
        .find(|e| e.kind == kind && e.state_key.as_deref() == Some(state_key.as_str()))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no {kind} state with key `{state_key}` in this room"
            ))
        })?;
    if query.format.as_deref() == Some("event") {
        let mut formatted =
            client_events(node, std::slice::from_ref(&event), Some(requester)).await?;
        return Ok(HttpResponse::Ok().json(formatted.pop().unwrap_or(Value::Null)));
    }
    if event.redacted_by.is_some() {
        let mut formatted =
            client_events(node, std::slice::from_ref(&event), Some(requester)).await?;
        let content = formatted
            .pop()
            .and_then(|mut e| e.get_mut("content").map(Value::take))
            .unwrap_or(json!({}));
        return Ok(HttpResponse::Ok().json(content));
    }
    Ok(HttpResponse::Ok().json(event.content()))
}

/// PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}
pub async fn put_state_event(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (room_id, kind, state_key) = path.into_inner();
    set_state(&node, &requester, room_id, kind, state_key, body).await
}

/// PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}
pub async fn put_state_event_empty_key(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (room_id, kind) = path.into_inner();
    set_state(&node, &requester, room_id, kind, String::new(), body).await
}

async fn set_state(
    node: &Node,
    requester: &Requester,
    room_id: String,
    kind: String,
    state_key: String,
    content: serde_json::Map<String, Value>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(&room_id)?;
    if kind == "m.room.canonical_alias" {
        check_canonical_alias(node, room_id.as_str(), &content).await?;
    }
    if kind == "m.room.member" && content.get("membership").and_then(Value::as_str).is_none() {
        return Err(ApiError::bad_json(
            "m.room.member content needs a `membership` string",
        ));
    }
    let persisted = node
        .send_state_event(
            &room_id,
            &requester.user()?,
            &kind,
            &state_key,
            Value::Object(content),
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "event_id": persisted.event_id })))
}

/// The aliases named by `m.room.canonical_alias` must exist and point to the room.
async fn check_canonical_alias(
    node: &Node,
    room_id: &str,
    content: &serde_json::Map<String, Value>,
) -> ApiResult<()> {
    let mut aliases: Vec<&Value> = content
        .get("alt_aliases")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if let Some(alias) = content.get("alias").filter(|a| !a.is_null()) {
        aliases.push(alias);
    }
    for alias in aliases {
        let alias = alias
            .as_str()
            .ok_or_else(|| ApiError::bad_json("aliases must be strings"))?;
        ruma::RoomAliasId::parse(alias).map_err(|_| {
            ApiError::new(
                ErrCode::InvalidParam,
                format!("`{alias}` is not a room alias"),
            )
        })?;
        if rooms::alias_room(&node.pool, alias).await?.as_deref() != Some(room_id) {
            return Err(ApiError::new(
                ErrCode::BadAlias,
                format!("{alias} does not point to this room"),
            ));
        }
    }
    Ok(())
}
