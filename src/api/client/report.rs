//! Reporting content to the server's admins (the spec's "Reporting
//! content"): an event, a room (v1.13) or a user (v1.13). Reports are
//! stored ([`crate::storage::reports`]) and listed for admins at
//! `GET /_lattice/admin/v1/reports`; nothing else is done with them.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::client::membership::{check_room_id, check_user_id};
use crate::api::client::message::visible_event;
use crate::api::limits::check_reason;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::access::require_joined;
use crate::storage::reports::{self, NewReport, ReportKind};
use crate::storage::rooms;

#[derive(Debug, Deserialize)]
pub struct ReportEventBody {
    reason: Option<String>,
    /// Removed from the spec in v1.13 and still sent by older clients:
    /// -100 (most offensive) to 0.
    score: Option<Value>,
}

/// POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}
///
/// 404 unless the reporter is joined to the room and may see the event (the
/// spec's answer, which tells a non-member nothing about the room).
pub async fn report_event(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<ReportEventBody>,
) -> ApiResult<HttpResponse> {
    let (room_id, event_id) = path.into_inner();
    check_room_id(&room_id)?;
    check_reason(body.reason.as_deref())?;
    let score = match body.score {
        None | Some(Value::Null) => None,
        Some(score) => Some(
            score
                .as_i64()
                .filter(|s| (-100..=0).contains(s))
                .ok_or_else(|| {
                    ApiError::invalid_param("score must be an integer between -100 and 0")
                })?,
        ),
    };
    let not_found = || ApiError::not_found("event not found or you are not joined to its room");
    require_joined(&node, &room_id, &requester.user_id)
        .await
        .map_err(|_| not_found())?;
    let (event, _) = visible_event(&node, &requester, &room_id, &event_id).await?;
    // The spec allows a 404 for a redacted event: there is nothing left to judge.
    if event.redacted_by.is_some() {
        return Err(not_found());
    }
    store(
        &node,
        NewReport {
            user_id: &requester.user_id,
            kind: ReportKind::Event,
            room_id: Some(&room_id),
            event_id: Some(&event.event_id),
            target_user_id: None,
            reason: body.reason.as_deref(),
            score,
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct ReportBody {
    reason: String,
}

/// POST /_matrix/client/v3/rooms/{roomId}/report
///
/// Any user may report a room this server knows, member or not (Synapse's
/// rule: rooms are reported from the directory or an invite); an unknown
/// room is 404.
pub async fn report_room(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<ReportBody>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    check_room_id(&room_id)?;
    check_reason(Some(&body.reason))?;
    if rooms::room_info(&node.pool, &room_id).await?.is_none() {
        return Err(ApiError::not_found("room not found"));
    }
    store(
        &node,
        NewReport {
            user_id: &requester.user_id,
            kind: ReportKind::Room,
            room_id: Some(&room_id),
            event_id: None,
            target_user_id: None,
            reason: Some(&body.reason),
            score: None,
        },
    )
    .await
}

/// POST /_matrix/client/v3/users/{userId}/report
///
/// A local user who does not exist is answered 200 and not stored, as
/// Synapse does and the spec allows, so that reports cannot be used to
/// find out which accounts exist. Users of other servers are stored as
/// given (this server cannot know them).
pub async fn report_user(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<ReportBody>,
) -> ApiResult<HttpResponse> {
    let user_id = check_user_id(&path.into_inner())?;
    check_reason(Some(&body.reason))?;
    let is_local = user_id.server_name().as_str() == node.config.server_name;
    if is_local && !crate::storage::accounts::user_exists(&node.pool, user_id.as_str()).await? {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    store(
        &node,
        NewReport {
            user_id: &requester.user_id,
            kind: ReportKind::User,
            room_id: None,
            event_id: None,
            target_user_id: Some(user_id.as_str()),
            reason: Some(&body.reason),
            score: None,
        },
    )
    .await
}

async fn store(node: &Node, report: NewReport<'_>) -> ApiResult<HttpResponse> {
    let id = reports::insert(&node.pool, &report, crate::util::now_ms()).await?;
    tracing::info!(
        report = id,
        kind = report.kind.as_str(),
        reporter = report.user_id,
        "content reported"
    );
    Ok(HttpResponse::Ok().json(json!({})))
}
