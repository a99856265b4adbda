//! Relations and threads (`/_matrix/client/v1`): the children of an event,
//! paginated like `/messages` and with its tokens, optionally of one
//! relation type and event type and through several levels (`recurse`);
//! and a room's threads, by latest reply. Every event comes with its
//! bundled aggregations ([`crate::rooms::relations`]).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::client::events::client_events;
use crate::api::client::membership::check_room_id;
use crate::api::client::message::{parse_limit, token_position, visible_event};
use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::access::{require_history_access, visible_scattered_events};
use crate::rooms::relations::bundle_aggregations;
use crate::storage::relations::{self as stored, RelationsQuery, RECURSION_DEPTH};
use crate::storage::rooms;
use crate::streams::token::RoomStreamToken;

/// Children per page when the client does not say (Synapse's 5).
const DEFAULT_RELATIONS_LIMIT: i64 = 5;
/// Threads per page when the client does not say (Synapse's 5).
const DEFAULT_THREADS_LIMIT: i64 = 5;
/// The most threads one page returns.
const MAX_THREADS_LIMIT: i64 = 100;

#[derive(Deserialize)]
pub struct RelationsParams {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
    recurse: Option<String>,
}

/// GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}
pub async fn get_relating_events(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    query: web::Query<RelationsParams>,
) -> ApiResult<HttpResponse> {
    let (room_id, event_id) = path.into_inner();
    relations(&node, &requester, &room_id, &event_id, None, None, &query).await
}

/// GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}
pub async fn get_relating_events_with_rel_type(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
    query: web::Query<RelationsParams>,
) -> ApiResult<HttpResponse> {
    let (room_id, event_id, rel_type) = path.into_inner();
    relations(
        &node,
        &requester,
        &room_id,
        &event_id,
        Some(&rel_type),
        None,
        &query,
    )
    .await
}

/// GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}
pub async fn get_relating_events_with_rel_type_and_event_type(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String, String)>,
    query: web::Query<RelationsParams>,
) -> ApiResult<HttpResponse> {
    let (room_id, event_id, rel_type, event_type) = path.into_inner();
    relations(
        &node,
        &requester,
        &room_id,
        &event_id,
        Some(&rel_type),
        Some(&event_type),
        &query,
    )
    .await
}

fn parse_boolean(name: &str, value: Option<&str>) -> ApiResult<bool> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid_param(format!(
            "{name} must be `true` or `false`"
        ))),
    }
}

async fn relations(
    node: &Node,
    requester: &Requester,
    room_id: &str,
    event_id: &str,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    params: &RelationsParams,
) -> ApiResult<HttpResponse> {
    check_room_id(room_id)?;
    let forward = match params.dir.as_deref() {
        Some("f") => true,
        Some("b") | None => false,
        Some(_) => return Err(ApiError::invalid_param("dir must be `b` or `f`")),
    };
    let limit = parse_limit(params.limit.as_deref(), DEFAULT_RELATIONS_LIMIT)?;
    let recurse = parse_boolean("recurse", params.recurse.as_deref())?;
    let from = params.from.as_deref().map(token_position).transpose()?;
    let to = params.to.as_deref().map(token_position).transpose()?;
    // The parent must be an event of the room the requester may see: as
    // `/event` answers, 404 otherwise.
    let (parent, access) = visible_event(node, requester, room_id, event_id).await?;
    let current = node.notifier.events_position();
    let from = match from {
        Some(from) => from.min(current),
        None if forward => 0,
        None => current,
    };
    // Backwards, `s{N}` includes N; forwards, pages start after N.
    let (from, to) = if forward {
        (from, Some(to.unwrap_or(i64::MAX).min(access.upto)))
    } else {
        (from.min(access.upto), to)
    };
    let query = RelationsQuery {
        parent: &parent.event_id,
        room_id,
        rel_type,
        event_type,
        recurse,
    };
    let page = stored::relations_page(&node.pool, &query, from, to, forward, limit).await?;
    let next = match page.last() {
        Some(last) if page.len() as i64 == limit => Some(if forward {
            last.stream_ordering
        } else {
            last.stream_ordering - 1
        }),
        _ => None,
    };
    let page = visible_scattered_events(node, room_id, &requester.user_id, access.is_peeking, page)
        .await?;
    let mut chunk = client_events(node, &page, Some(requester)).await?;
    bundle_aggregations(node, requester, chunk.iter_mut().collect()).await?;
    let mut body = json!({ "chunk": chunk });
    if let Some(next) = next {
        body["next_batch"] = json!(RoomStreamToken::live(next).to_string());
    }
    if let Some(from) = &params.from {
        body["prev_batch"] = json!(from);
    }
    if recurse {
        body["recursion_depth"] = json!(RECURSION_DEPTH);
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
pub struct ThreadsParams {
    include: Option<String>,
    from: Option<String>,
    limit: Option<String>,
}

/// GET /_matrix/client/v1/rooms/{roomId}/threads
pub async fn get_thread_roots(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    params: web::Query<ThreadsParams>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    check_room_id(&room_id)?;
    let participated = match params.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "include must be `all` or `participated`",
            ))
        }
    };
    let limit = match params.limit.as_deref() {
        None => DEFAULT_THREADS_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|limit| *limit > 0)
            .ok_or_else(|| ApiError::invalid_param("limit must be a positive integer"))?
            .min(MAX_THREADS_LIMIT),
    };
    let from = params.from.as_deref().map(token_position).transpose()?;
    let access = require_history_access(&node, &room_id, &requester.user_id).await?;
    let upto = from.unwrap_or(i64::MAX).min(access.upto);
    let participant = participated.then_some(requester.user_id.as_str());
    let threads = stored::threads(&node.pool, &room_id, upto, participant, limit).await?;
    let next = match threads.last() {
        Some(last) if threads.len() as i64 == limit => Some(last.latest - 1),
        _ => None,
    };
    let ids: Vec<String> = threads.iter().map(|t| t.root_id.clone()).collect();
    let mut roots = rooms::events_by_ids(&node.pool, &ids).await?;
    // By latest reply, as the threads came.
    roots.sort_by_key(|root| ids.iter().position(|id| *id == root.event_id));
    let roots = visible_scattered_events(
        &node,
        &room_id,
        &requester.user_id,
        access.is_peeking,
        roots,
    )
    .await?;
    let mut chunk: Vec<Value> = client_events(&node, &roots, Some(&requester)).await?;
    bundle_aggregations(&node, &requester, chunk.iter_mut().collect()).await?;
    let mut body = json!({ "chunk": chunk });
    if let Some(next) = next {
        body["next_batch"] = json!(RoomStreamToken::live(next).to_string());
    }
    Ok(HttpResponse::Ok().json(body))
}
