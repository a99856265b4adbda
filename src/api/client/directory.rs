//! The room directory: aliases, room visibility, and the public room list.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::client::membership::check_room_id;
use crate::api::limits::{check_bytes, MAX_PUBLIC_ROOMS_PAGE, MAX_SEARCH_TERM_BYTES};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::roles::events::parse_stored_pdu;
use crate::rooms::access::require_joined;
use crate::rooms::pdu;
use crate::rooms::version::parse_supported;
use crate::storage::rooms;
use ruma::events::StateEventType;

fn check_alias(alias: &str, node: &Node) -> ApiResult<()> {
    let parsed = ruma::RoomAliasId::parse(alias)
        .map_err(|_| ApiError::invalid_param(format!("`{alias}` is not a room alias")))?;
    if parsed.server_name() != node.config.server_name.as_str() {
        return Err(ApiError::invalid_param(
            "aliases of other servers cannot be managed here",
        ));
    }
    Ok(())
}

/// GET /_matrix/client/v3/directory/room/{roomAlias}
pub async fn get_alias(node: web::Data<Node>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let alias = path.into_inner();
    ruma::RoomAliasId::parse(&alias)
        .map_err(|_| ApiError::invalid_param(format!("`{alias}` is not a room alias")))?;
    let room_id = rooms::alias_room(&node.pool, &alias)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("room alias {alias} not found")))?;
    Ok(
        HttpResponse::Ok()
            .json(json!({ "room_id": room_id, "servers": [node.config.server_name] })),
    )
}

#[derive(Deserialize)]
pub struct PutAliasBody {
    room_id: String,
}

/// PUT /_matrix/client/v3/directory/room/{roomAlias}
pub async fn put_alias(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<PutAliasBody>,
) -> ApiResult<HttpResponse> {
    let alias = path.into_inner();
    check_alias(&alias, &node)?;
    check_room_id(&body.room_id)?;
    if rooms::room_info(&node.pool, &body.room_id).await?.is_none() {
        return Err(ApiError::not_found("unknown room"));
    }
    require_joined(&node, &body.room_id, &requester.user_id).await?;
    if !rooms::create_alias(&node.pool, &alias, &body.room_id, &requester.user_id).await? {
        return Err(ApiError::new(
            ErrCode::AliasInUse,
            format!("room alias {alias} already exists"),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// DELETE /_matrix/client/v3/directory/room/{roomAlias}
pub async fn delete_alias(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let alias = path.into_inner();
    check_alias(&alias, &node)?;
    let record = rooms::alias_record(&node.pool, &alias)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("room alias {alias} not found")))?;
    if record.creator != requester.user_id && !requester.is_admin {
        return Err(ApiError::forbidden(
            "only the alias's creator or an admin may delete it",
        ));
    }
    rooms::delete_alias(&node.pool, &alias).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// GET /_matrix/client/v3/rooms/{roomId}/aliases
pub async fn room_aliases(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    check_room_id(&room_id)?;
    require_joined(&node, &room_id, &requester.user_id).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "aliases": rooms::room_aliases(&node.pool, &room_id).await? })))
}

/// GET /_matrix/client/v3/directory/list/room/{roomId}
pub async fn get_visibility(
    node: web::Data<Node>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    check_room_id(&room_id)?;
    let info = rooms::room_info(&node.pool, &room_id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown room"))?;
    Ok(HttpResponse::Ok()
        .json(json!({ "visibility": if info.is_public { "public" } else { "private" } })))
}

#[derive(Deserialize)]
pub struct VisibilityBody {
    visibility: Option<String>,
}

/// PUT /_matrix/client/v3/directory/list/room/{roomId}
pub async fn set_visibility(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<VisibilityBody>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    check_room_id(&room_id)?;
    let is_public = match body.visibility.as_deref() {
        Some("public") => true,
        Some("private") | None => false,
        Some(other) => {
            return Err(ApiError::invalid_param(format!(
                "unknown visibility `{other}`"
            )))
        }
    };
    if rooms::room_info(&node.pool, &room_id).await?.is_none() {
        return Err(ApiError::not_found("unknown room"));
    }
    require_joined(&node, &room_id, &requester.user_id).await?;
    if !may_edit_room_list(&node, &room_id, &requester.user_id).await? {
        return Err(ApiError::forbidden(
            "publishing a room in the directory needs the power to set its canonical alias",
        ));
    }
    rooms::set_room_public(&node.pool, &room_id, is_public).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Whether `user_id` may send the room's `m.room.canonical_alias`: the
/// power Synapse asks of whoever publishes a room in the directory or takes
/// it out.
async fn may_edit_room_list(node: &Node, room_id: &str, user_id: &str) -> ApiResult<bool> {
    let info = rooms::room_info(&node.pool, room_id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown room"))?;
    let version = parse_supported(&info.room_version)
        .ok_or_else(|| ApiError::internal("unsupported stored room version"))?;
    let parse = |event: rooms::StoredEvent| {
        parse_stored_pdu(&version, std::sync::Arc::unwrap_or_clone(event.pdu))
            .map_err(ApiError::internal)
    };
    let create = rooms::current_state_event(&node.pool, room_id, "m.room.create", "")
        .await?
        .map(parse)
        .transpose()?
        .ok_or_else(|| ApiError::internal("room without create event"))?;
    let power_levels = rooms::current_state_event(&node.pool, room_id, "m.room.power_levels", "")
        .await?
        .map(parse)
        .transpose()?;
    let user = ruma::UserId::parse(user_id).map_err(ApiError::internal)?;
    let levels = pdu::room_power_levels(&version, &create, power_levels.as_ref())
        .map_err(ApiError::internal)?;
    Ok(levels.user_can_send_state(&user, StateEventType::RoomCanonicalAlias))
}

#[derive(Deserialize)]
pub struct PublicRoomsQuery {
    limit: Option<String>,
    since: Option<String>,
    server: Option<String>,
}

/// GET /_matrix/client/v3/publicRooms
pub async fn public_rooms(
    node: web::Data<Node>,
    query: web::Query<PublicRoomsQuery>,
) -> ApiResult<HttpResponse> {
    let limit = query
        .limit
        .as_deref()
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| ApiError::invalid_param("limit must be a number"))
        })
        .transpose()?;
    check_server(&node, query.server.as_deref())?;
    list(&node, limit, query.since.as_deref(), None).await
}

#[derive(Deserialize)]
pub struct PublicRoomsSearch {
    limit: Option<usize>,
    since: Option<String>,
    filter: Option<PublicRoomsFilter>,
}

#[derive(Deserialize)]
pub struct PublicRoomsFilter {
    generic_search_term: Option<String>,
}

#[derive(Deserialize)]
pub struct ServerQuery {
    server: Option<String>,
}

/// POST /_matrix/client/v3/publicRooms
pub async fn search_public_rooms(
    node: web::Data<Node>,
    _requester: Requester,
    query: web::Query<ServerQuery>,
    JsonBody(body): JsonBody<PublicRoomsSearch>,
) -> ApiResult<HttpResponse> {
    check_server(&node, query.server.as_deref())?;
    let term = body
        .filter
        .and_then(|f| f.generic_search_term)
        .filter(|t| !t.is_empty());
    if let Some(term) = &term {
        check_bytes("generic_search_term", term, MAX_SEARCH_TERM_BYTES)?;
    }
    list(&node, body.limit, body.since.as_deref(), term.as_deref()).await
}

fn check_server(node: &Node, server: Option<&str>) -> ApiResult<()> {
    match server {
        Some(server) if server != node.config.server_name => {
            Err(ApiError::forbidden("listing the rooms of other servers needs federation, which this server does not do yet"))
        }
        _ => Ok(()),
    }
}

async fn list(
    node: &Node,
    limit: Option<usize>,
    since: Option<&str>,
    term: Option<&str>,
) -> ApiResult<HttpResponse> {
    let offset = match since {
        Some(token) => token
            .strip_prefix("o")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid_param("malformed pagination token"))?,
        None => 0,
    };
    let term = term.map(str::to_lowercase);
    let all: Vec<Value> = rooms::public_rooms(&node.pool)
        .await?
        .into_iter()
        .map(|room| room_summary(&room.room_id, room.num_joined_members, &room.state))
        .filter(|entry| match &term {
            None => true,
            Some(term) => ["name", "topic", "canonical_alias"].iter().any(|k| {
                entry
                    .get(*k)
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.to_lowercase().contains(term.as_str()))
            }),
        })
        .collect();
    let total = all.len();
    let limit = limit.unwrap_or(usize::MAX).min(MAX_PUBLIC_ROOMS_PAGE);
    let chunk: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": total });
    // `since` is the client's: a huge offset must not overflow.
    if offset.saturating_add(limit) < total {
        body["next_batch"] = json!(format!("o{}", offset + limit));
    }
    if offset > 0 {
        body["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
    }
    Ok(HttpResponse::Ok().json(body))
}

/// A room as the directory and the space hierarchy show it (the spec's
/// `PublishedRoomsChunk`), from its member count and the content of its
/// state events of empty state key, by type.
pub fn room_summary(
    room_id: &str,
    num_joined_members: i64,
    state: &std::collections::HashMap<String, Value>,
) -> Value {
    let field = |kind: &str, key: &str| state.get(kind).and_then(|c| c.get(key)).cloned();
    let mut entry = json!({
        "room_id": room_id,
        "num_joined_members": num_joined_members,
        "world_readable": field("m.room.history_visibility", "history_visibility") == Some(json!("world_readable")),
        "guest_can_join": field("m.room.guest_access", "guest_access") == Some(json!("can_join")),
        "join_rule": field("m.room.join_rules", "join_rule").unwrap_or(json!("invite")),
    });
    for (kind, key, name) in [
        ("m.room.name", "name", "name"),
        ("m.room.topic", "topic", "topic"),
        ("m.room.canonical_alias", "alias", "canonical_alias"),
        ("m.room.avatar", "url", "avatar_url"),
    ] {
        if let Some(value) = field(kind, key).filter(Value::is_string) {
            entry[name] = value;
        }
    }
    if let Some(room_type) = field("m.room.create", "type").filter(Value::is_string) {
        entry["room_type"] = room_type;
    }
    entry
}
