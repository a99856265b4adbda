//! Room timeline: send (idempotent per device and transaction id), redact,
//! paginate (`/messages`), `/context` and single events.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::client::events::client_events;
use crate::api::client::membership::check_room_id;
use crate::api::limits::{check_reason, check_txn_id};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::roles::events::{SendEvent, Transaction, TxnEndpoint};
use crate::rooms::access::{
    history_access, require_history_access, require_joined, visible_events, HistoryAccess,
};
use crate::rooms::filter::{Filter, RoomEventFilter};
use crate::rooms::relations::bundle_aggregations;
use crate::storage::rooms::{self, StoredEvent};
use crate::streams::token::{parse_pagination, RoomStreamToken};

/// PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}
pub async fn send_message_event(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (room_id, kind, txn_id) = path.into_inner();
    let room_id = check_room_id(&room_id)?;
    check_txn_id(&txn_id)?;
    let persisted = node
        .send_event(SendEvent {
            room_id,
            sender: requester.user()?,
            kind,
            state_key: None,
            content: Value::Object(body),
            redacts: None,
            txn: Some(Transaction::client(
                requester.device_id.clone(),
                txn_id,
                TxnEndpoint::Send,
            )),
            push: None,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "event_id": persisted.event_id })))
}

#[derive(Deserialize, Default)]
pub struct RedactBody {
    reason: Option<String>,
}

/// PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}
pub async fn redact_event(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<RedactBody>,
) -> ApiResult<HttpResponse> {
    let (room_id, event_id, txn_id) = path.into_inner();
    let room_id = check_room_id(&room_id)?;
    check_txn_id(&txn_id)?;
    check_reason(body.reason.as_deref())?;
    let event_id = ruma::EventId::parse(&event_id)
        .map_err(|_| ApiError::invalid_param("malformed event id"))?;
    require_joined(&node, room_id.as_str(), &requester.user_id).await?;
    // Who may redact what is decided where the redaction is built (the
    // event persister), as for a redaction sent through `/send`.
    rooms::event_origin(&node.pool, event_id.as_str())
        .await?
        .filter(|e| e.room_id == room_id.as_str())
        .ok_or_else(|| ApiError::not_found("event not found"))?;
    let mut content = json!({});
    if let Some(reason) = body.reason {
        content["reason"] = json!(reason);
    }
    let persisted = node
        .send_event(SendEvent {
            room_id,
            sender: requester.user()?,
            kind: "m.room.redaction".into(),
            state_key: None,
            content,
            redacts: Some(event_id),
            txn: Some(Transaction::client(
                requester.device_id.clone(),
                txn_id,
                TxnEndpoint::Redact,
            )),
            push: None,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "event_id": persisted.event_id })))
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
    filter: Option<String>,
}

/// The most events one page returns.
const MAX_PAGE: i64 = 1000;

pub fn parse_limit(limit: Option<&str>, default: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(default),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|l| *l >= 0)
            .map(|l| l.min(MAX_PAGE))
            .ok_or_else(|| ApiError::invalid_param("limit must be a non-negative integer")),
    }
}

fn parse_filter(filter: Option<&str>) -> ApiResult<RoomEventFilter> {
    match filter {
        None => Ok(RoomEventFilter::default()),
        Some(text) => {
            let value: Value = serde_json::from_str(text)
                .map_err(|_| ApiError::invalid_param("filter is not JSON"))?;
            let wrapped = json!({ "room": { "timeline": value } });
            Ok(Filter::parse(wrapped)?.room.timeline)
        }
    }
}

pub fn token_position(token: &str) -> ApiResult<i64> {
    parse_pagination(token)
        .map(|t| t.max_stream_pos())
        .map_err(|e| ApiError::invalid_param(e.to_string()))
}

/// GET /_matrix/client/v3/rooms/{roomId}/messages
pub async fn messages(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    query: web::Query<MessagesQuery>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    check_room_id(&room_id)?;
    let forward = match query.dir.as_deref() {
        Some("f") => true,
        Some("b") | None => false,
        Some(_) => return Err(ApiError::invalid_param("dir must be `b` or `f`")),
    };
    let limit = parse_limit(query.limit.as_deref(), 10)?;
    let filter = parse_filter(query.filter.as_deref())?;
    let access = require_history_access(&node, &room_id, &requester.user_id).await?;
    let visible_upto = access.upto;
    let current = node.notifier.events_position();
    let from = match &query.from {
        Some(token) => token_position(token)?.min(current),
        None if forward => 0,
        None => current,
    };
    let to = query.to.as_deref().map(token_position).transpose()?;
    // Backwards, `s{N}` includes N; forwards, pages start after N.
    let (from, to) = if forward {
        (from, Some(to.unwrap_or(i64::MAX).min(visible_upto)))
    } else {
        (from.min(visible_upto), to)
    };
    let page = rooms::paginate(&node.pool, &room_id, from, to, forward, limit, &filter).await?;
    let end = match page.last() {
        Some(last) if page.len() as i64 == limit => Some(if forward {
            last.stream_ordering
        } else {
            last.stream_ordering - 1
        }),
        _ => None,
    };
    let page = visible_events(&node, &room_id, &requester.user_id, access.is_peeking, page).await?;
    let mut chunk = client_events(&node, &page, Some(&requester)).await?;
    bundle_aggregations(&node, &requester, chunk.iter_mut().collect()).await?;
    // Clients stitch pages together by `start`: it is the token they sent.
    let start = match &query.from {
        Some(token) => token.clone(),
        None => RoomStreamToken::live(from).to_string(),
    };
    let mut body = json!({
        "start": start,
        "chunk": chunk,
    });
    if let Some(end) = end {
        body["end"] = json!(RoomStreamToken::live(end).to_string());
    }
    if filter.lazy_load_members {
        body["state"] = json!(member_events_of_senders(&node, &room_id, &page, &requester).await?);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// The current member events of the senders of `events` (lazy-loading members).
async fn member_events_of_senders(
    node: &Node,
    room_id: &str,
    events: &[StoredEvent],
    requester: &Requester,
) -> ApiResult<Vec<Value>> {
    let mut senders: Vec<&str> = events.iter().map(|e| e.sender.as_str()).collect();
    senders.sort_unstable();
    senders.dedup();
    let mut members = Vec::new();
    for sender in senders {
        if let Some(event) =
            rooms::current_state_event(&node.pool, room_id, "m.room.member", sender).await?
        {
            members.push(event);
        }
    }
    client_events(node, &members, Some(requester)).await
}

#[derive(Deserialize)]
pub struct ContextQuery {
    limit: Option<String>,
    filter: Option<String>,
}

/// GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}
pub async fn context(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    query: web::Query<ContextQuery>,
) -> ApiResult<HttpResponse> {
    let (room_id, event_id) = path.into_inner();
    check_room_id(&room_id)?;
    let limit = parse_limit(query.limit.as_deref(), 10)?;
    let filter = parse_filter(query.filter.as_deref())?;
    let (event, access) = visible_event(&node, &requester, &room_id, &event_id).await?;
    let visible_upto = access.upto;
    let before_count = limit / 2;
    let after_count = limit - before_count;
    let before = rooms::paginate(
        &node.pool,
        &room_id,
        event.stream_ordering - 1,
        None,
        false,
        before_count,
        &filter,
    )
    .await?;
    let after = rooms::paginate(
        &node.pool,
        &room_id,
        event.stream_ordering,
        Some(visible_upto),
        true,
        after_count,
        &filter,
    )
    .await?;
    let start = before
        .last()
        .map(|e| e.stream_ordering - 1)
        .unwrap_or(event.stream_ordering - 1);
    let end = after
        .last()
        .map(|e| e.stream_ordering)
        .unwrap_or(event.stream_ordering);
    let last_event_id = after
        .last()
        .map(|e| e.event_id.clone())
        .unwrap_or_else(|| event.event_id.clone());
    let (user_id, peeking) = (&requester.user_id, access.is_peeking);
    let before = visible_events(&node, &room_id, user_id, peeking, before).await?;
    let after = visible_events(&node, &room_id, user_id, peeking, after).await?;
    let state = match rooms::state_group_of_event(&node.pool, &last_event_id).await? {
        Some(group) => rooms::state_group_events(&node.pool, group).await?,
        None => Vec::new(),
    };
    let mut formatted =
        client_events(&node, std::slice::from_ref(&event), Some(&requester)).await?;
    let mut events_before = client_events(&node, &before, Some(&requester)).await?;
    let mut events_after = client_events(&node, &after, Some(&requester)).await?;
    let all = formatted
        .iter_mut()
        .chain(&mut events_before)
        .chain(&mut events_after);
    bundle_aggregations(&node, &requester, all.collect()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "event": formatted.pop().unwrap_or(Value::Null),
        "events_before": events_before,
        "events_after": events_after,
        "start": RoomStreamToken::live(start).to_string(),
        "end": RoomStreamToken::live(end).to_string(),
        "state": client_events(&node, &state, Some(&requester)).await?,
    })))
}

/// GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}
pub async fn get_event(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (room_id, event_id) = path.into_inner();
    check_room_id(&room_id)?;
    let (event, _) = visible_event(&node, &requester, &room_id, &event_id).await?;
    let mut formatted =
        client_events(&node, std::slice::from_ref(&event), Some(&requester)).await?;
    bundle_aggregations(&node, &requester, formatted.iter_mut().collect()).await?;
    Ok(HttpResponse::Ok().json(formatted.pop().unwrap_or(Value::Null)))
}

/// The event, if it is in the room and the user may see it (with how far
/// they may read); 404 otherwise, so that events of rooms one may not read
/// are not revealed.
pub async fn visible_event(
    node: &Node,
    requester: &Requester,
    room_id: &str,
    event_id: &str,
) -> ApiResult<(StoredEvent, HistoryAccess)> {
    ruma::EventId::parse(event_id).map_err(|_| ApiError::invalid_param("malformed event id"))?;
    let not_found = || ApiError::not_found("event not found");
    let access = history_access(node, room_id, &requester.user_id)
        .await?
        .ok_or_else(not_found)?;
    let event = rooms::event(&node.pool, event_id)
        .await?
        .filter(|e| e.room_id == room_id && e.stream_ordering <= access.upto)
        .ok_or_else(not_found)?;
    let visible = visible_events(
        node,
        room_id,
        &requester.user_id,
        access.is_peeking,
        vec![event],
    )
    .await?;
    let event = visible.into_iter().next().ok_or_else(not_found)?;
    Ok((event, access))
}
