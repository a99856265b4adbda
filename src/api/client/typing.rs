//! Typing notifications: a member says they are typing, for a while, or
//! that they stopped. The request is checked here and goes to the typing
//! writer of its room (`roles/typing`) through its mailbox; the other
//! members see it in `/sync` as an `m.typing` ephemeral event.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::api::client::membership::{check_room_id, check_user_id};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::roles::typing::{SetTyping, TYPING_STREAM};
use crate::rooms::access::require_joined;

/// A typing request without `timeout` lasts this long (Synapse's default).
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// The largest `timeout` accepted (an hour); within it, the timeout is cut
/// to `typing.max_timeout_ms`.
const LARGEST_TIMEOUT_MS: u64 = 3_600_000;

/// What a typing request asks for.
#[derive(Debug, PartialEq, Eq)]
struct TypingRequest {
    typing: bool,
    /// As sent (or the default), before the server's cap.
    timeout_ms: u64,
}

/// Reads the body: `typing` is a boolean (`M_BAD_JSON` otherwise), `timeout`
/// an integer if present (`M_BAD_JSON`) within `0..=`[`LARGEST_TIMEOUT_MS`]
/// (`M_INVALID_PARAM`).
fn parse_body(body: &Value) -> ApiResult<TypingRequest> {
    let body = body
        .as_object()
        .ok_or_else(|| ApiError::bad_json("the body must be a JSON object"))?;
    let typing = match body.get("typing") {
        Some(Value::Bool(typing)) => *typing,
        Some(_) => return Err(ApiError::bad_json("`typing` must be true or false")),
        None => return Err(ApiError::bad_json("`typing` is required")),
    };
    let timeout_ms = match body.get("timeout") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_MS,
        Some(Value::Number(number)) => {
            if !(number.is_i64() || number.is_u64()) {
                return Err(ApiError::bad_json("`timeout` must be an integer"));
            }
            number
                .as_u64()
                .filter(|ms| *ms <= LARGEST_TIMEOUT_MS)
                .ok_or_else(|| {
                    ApiError::invalid_param(format!(
                        "`timeout` must be between 0 and {LARGEST_TIMEOUT_MS} milliseconds"
                    ))
                })?
        }
        Some(_) => return Err(ApiError::bad_json("`timeout` must be an integer")),
    };
    Ok(TypingRequest { typing, timeout_ms })
}

/// PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}
pub async fn set_typing(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<HttpResponse> {
    let (room_id, user_id) = path.into_inner();
    let room_id = check_room_id(&room_id)?;
    let user_id = check_user_id(&user_id)?;
    if user_id != requester.user()? {
        return Err(ApiError::forbidden(
            "cannot set another user's typing state",
        ));
    }
    let request = parse_body(&body)?;
    require_joined(&node, room_id.as_str(), &requester.user_id).await?;
    let shard_key = room_id.to_string();
    let set = SetTyping {
        room_id,
        user_id,
        typing: request.typing,
        timeout_ms: request.timeout_ms.min(node.config.typing.max_timeout_ms),
    };
    let written = node.call_owner(TYPING_STREAM, &shard_key, set).await??;
    if let Some(position) = written.position {
        node.wait_for_write(TYPING_STREAM, &written.instance, position)
            .await;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrCode;

    fn errcode(body: Value) -> ErrCode {
        parse_body(&body).expect_err("refused").errcode
    }

    #[test]
    fn typing_is_a_boolean_and_timeout_an_integer_within_an_hour() {
        assert_eq!(
            parse_body(&json!({ "typing": true, "timeout": 5000 })).ok(),
            Some(TypingRequest {
                typing: true,
                timeout_ms: 5000
            })
        );
        assert_eq!(
            parse_body(&json!({ "typing": true })).ok(),
            Some(TypingRequest {
                typing: true,
                timeout_ms: DEFAULT_TIMEOUT_MS
            })
        );
        assert_eq!(
            parse_body(&json!({ "typing": false }))
                .map(|r| r.typing)
                .ok(),
            Some(false)
        );
        assert!(parse_body(&json!({ "typing": true, "timeout": 0 })).is_ok());
        assert!(parse_body(&json!({ "typing": true, "timeout": LARGEST_TIMEOUT_MS })).is_ok());
        for out_of_range in [
            json!(-1),
            json!(LARGEST_TIMEOUT_MS + 1),
            json!(1_000_000_000_000u64),
        ] {
            assert_eq!(
                errcode(json!({ "typing": true, "timeout": out_of_range })),
                ErrCode::InvalidParam
            );
        }
        for wrong in [
            json!({ "typing": true, "timeout": "30000" }),
            json!({ "typing": true, "timeout": 1.5 }),
            json!({ "typing": "yes" }),
            json!({ "timeout": 30000 }),
            json!([true]),
        ] {
            assert_eq!(errcode(wrong), ErrCode::BadJson);
        }
    }
}
