//! `/timestamp_to_event`: the event of a room nearest a point in time, in
//! one direction, among the events the user may see (a client jumping to a
//! date). Events are looked up by `origin_server_ts` in pages and checked
//! against the user's history access, so an event the user may not see is
//! skipped, never answered.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::api::client::membership::check_room_id;
use crate::api::Requester;
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::rooms::access::{require_history_access, visible_scattered_events};
use crate::storage::rooms;

/// Events read per look-up.
const PAGE: i64 = 100;
/// Pages looked through before answering that there is none: a room whose
/// nearest thousand events the user may not see is answered 404.
const MAX_PAGES: usize = 10;

/// GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event
pub async fn timestamp_to_event(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(&path.into_inner())?;
    let ts: i64 = query
        .get("ts")
        .ok_or_else(|| ApiError::new(ErrCode::MissingParam, "missing `ts`"))?
        .parse()
        .map_err(|_| ApiError::invalid_param("`ts` must be an integer"))?;
    let forward = match query.get("dir").map(String::as_str) {
        Some("f") => true,
        Some("b") => false,
        Some(_) => return Err(ApiError::invalid_param("`dir` must be `f` or `b`")),
        None => return Err(ApiError::new(ErrCode::MissingParam, "missing `dir`")),
    };
    let access = require_history_access(&node, room_id.as_str(), &requester.user_id).await?;
    // Both directions include the events at `ts` itself.
    let mut after = if forward {
        (ts.saturating_sub(1), i64::MAX)
    } else {
        (ts, i64::MAX)
    };
    for _ in 0..MAX_PAGES {
        let page =
            rooms::events_by_timestamp(&node.pool, room_id.as_str(), after, forward, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = (last.origin_server_ts, last.stream_ordering);
        let readable: Vec<_> = page
            .into_iter()
            .filter(|e| e.stream_ordering <= access.upto)
            .collect();
        let visible = visible_scattered_events(
            &node,
            room_id.as_str(),
            &requester.user_id,
            access.is_peeking,
            readable,
        )
        .await?;
        if let Some(event) = visible.first() {
            return Ok(HttpResponse::Ok().json(json!({
                "event_id": event.event_id,
                "origin_server_ts": event.origin_server_ts,
            })));
        }
    }
    Err(ApiError::not_found(format!(
        "no event {} {ts} that you may see",
        if forward {
            "at or after"
        } else {
            "at or before"
        }
    )))
}
