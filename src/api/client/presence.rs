//! Presence: `GET`/`PUT /presence/{userId}/status`. A user sets only their
//! own presence; the request goes to their presence writer
//! (`roles/presence`) through its mailbox, and is answered once this
//! instance has seen the row (read-your-writes). Anyone may read the
//! presence of a user they share a room with (and their own), read from
//! the stream's table; `last_active_ago` is computed now. With
//! `presence.enabled` false both answer, as Synapse: `PUT` is accepted and
//! ignored, `GET` says `offline`.

use actix_web::{web, HttpResponse};
use ruma::presence::PresenceState;
use serde_json::{json, Value};

use crate::api::client::membership::check_user_id;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::roles::presence::{SetPresence, PRESENCE_STREAM};
use crate::storage::presence;
use crate::streams::presence::PresenceStatus;

/// What a `PUT` asks for.
#[derive(Debug, PartialEq, Eq)]
struct PresenceRequest {
    presence: PresenceState,
    status_msg: Option<String>,
}

/// Reads the body: `presence` is a string (`M_BAD_JSON` otherwise) and one
/// of `online`, `offline`, `unavailable` (`M_INVALID_PARAM`: `"away"` is
/// not one); `status_msg` a string if present (`M_BAD_JSON`).
fn parse_body(body: &Value) -> ApiResult<PresenceRequest> {
    let body = body
        .as_object()
        .ok_or_else(|| ApiError::bad_json("the body must be a JSON object"))?;
    let presence = match body.get("presence") {
        Some(Value::String(presence)) => match presence.as_str() {
            "online" => PresenceState::Online,
            "offline" => PresenceState::Offline,
            "unavailable" => PresenceState::Unavailable,
            other => {
                return Err(ApiError::invalid_param(format!(
                    "`presence` must be online, offline or unavailable, not `{other}`"
                )))
            }
        },
        Some(_) => return Err(ApiError::bad_json("`presence` must be a string")),
        None => return Err(ApiError::bad_json("`presence` is required")),
    };
    let status_msg = match body.get("status_msg") {
        None | Some(Value::Null) => None,
        Some(Value::String(message)) => Some(message.clone()),
        Some(_) => return Err(ApiError::bad_json("`status_msg` must be a string")),
    };
    Ok(PresenceRequest {
        presence,
        status_msg,
    })
}

/// PUT /_matrix/client/v3/presence/{userId}/status
pub async fn set_presence(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<HttpResponse> {
    let user_id = check_user_id(&path.into_inner())?;
    if user_id != requester.user()? {
        return Err(ApiError::forbidden(
            "you can only set your own presence state",
        ));
    }
    let request = parse_body(&body)?;
    if !node.config.presence.enabled {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    let shard_key = user_id.to_string();
    let set = SetPresence {
        user_id,
        presence: request.presence,
        status_msg: request.status_msg,
    };
    let written = node.call_owner(PRESENCE_STREAM, &shard_key, set).await??;
    if let Some(position) = written.position {
        node.wait_for_write(PRESENCE_STREAM, &written.instance, position)
            .await;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// GET /_matrix/client/v3/presence/{userId}/status
pub async fn get_presence(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let user_id = check_user_id(&path.into_inner())?;
    if !node.config.presence.enabled {
        return Ok(HttpResponse::Ok().json(json!({ "presence": "offline" })));
    }
    if user_id.as_str() != requester.user_id
        && !presence::share_a_room(&node.pool, &requester.user_id, user_id.as_str()).await?
    {
        return Err(ApiError::forbidden(
            "you are not allowed to see their presence",
        ));
    }
    let status = presence::of_user(&node.pool, user_id.as_str())
        .await?
        .map(|stored| stored.status)
        .unwrap_or_else(PresenceStatus::default);
    Ok(HttpResponse::Ok().json(status.content(crate::util::now_ms())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrCode;

    fn errcode(body: Value) -> ErrCode {
        parse_body(&body).expect_err("refused").errcode
    }

    #[test]
    fn presence_is_one_of_three_and_status_msg_a_string() {
        assert_eq!(
            parse_body(&json!({ "presence": "unavailable", "status_msg": "brb" })).ok(),
            Some(PresenceRequest {
                presence: PresenceState::Unavailable,
                status_msg: Some("brb".into())
            })
        );
        assert_eq!(
            parse_body(&json!({ "presence": "online" }))
                .map(|r| r.status_msg)
                .ok(),
            Some(None)
        );
        assert_eq!(
            errcode(json!({ "presence": "away" })),
            ErrCode::InvalidParam
        );
        for wrong in [
            json!({ "presence": 1 }),
            json!({ "status_msg": "no presence" }),
            json!({ "presence": "online", "status_msg": 5 }),
            json!(["online"]),
        ] {
            assert_eq!(errcode(wrong), ErrCode::BadJson);
        }
    }
}
