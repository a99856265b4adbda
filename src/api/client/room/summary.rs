//! `GET /room_summary/{roomIdOrAlias}` (spec v1.15, MSC3266): what a client
//! shows of a room before joining it, to anyone who could join or peek into
//! it, with the same chunk and the same rule as the space hierarchy
//! ([`space::summary_of`], [`space::is_accessible`]).
//!
//! Authentication is optional, as the spec allows and Synapse does: someone
//! not signed in sees the rooms anyone may see (a public or knockable join
//! rule, world readable history), without `membership`; a token that is
//! given must be valid. A room the requester may not see answers as a room
//! that does not exist, `404 M_NOT_FOUND`, so the answer tells nothing of
//! it. There is no federation, so `via` is read by nobody: every room this
//! server can summarise is its own.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::api::client::membership::{check_room_id, resolve_room};
use crate::api::client::space::{is_accessible, summary_of};
use crate::api::{optional_requester, rate_limit_ip};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::storage::rooms;

/// GET /_matrix/client/v1/room_summary/{roomIdOrAlias}
pub async fn get_room_summary(
    request: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let requester = optional_requester(&request).await?;
    if requester.is_none() {
        rate_limit_ip(&request)?;
    }
    let not_found = || ApiError::not_found("room not found, or you may not see it");
    let room_id = match resolve_room(&node, &path.into_inner()).await {
        Err(error) if error.errcode == crate::error::ErrCode::NotFound => return Err(not_found()),
        resolved => check_room_id(&resolved?)?,
    };
    let user_id = requester.as_ref().map(|r| r.user_id.as_str());
    let membership = match user_id {
        Some(user_id) => rooms::membership(&node.pool, room_id.as_str(), user_id).await?,
        None => None,
    };
    // A knock is the requester's own request to come in: they may see what
    // they knocked on, whatever the join rule has become since.
    let knocked = membership.as_ref().is_some_and(|m| m.membership == "knock");
    if !knocked && !is_accessible(&node, room_id.as_str(), user_id).await? {
        return Err(not_found());
    }
    let state = rooms::current_state(&node.pool, room_id.as_str()).await?;
    let mut summary = summary_of(room_id.as_str(), &state).ok_or_else(not_found)?;
    if requester.is_some() {
        summary["membership"] = json!(membership
            .as_ref()
            .map_or("leave", |m| m.membership.as_str()));
    }
    Ok(HttpResponse::Ok().json(summary))
}
