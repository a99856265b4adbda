//! Push rules: every user has the spec's server-default rule set (ruma's
//! `Ruleset::server_default`). Changing rules needs the `push_rules` stream
//! writer, which does not exist yet; reading them is what clients need to
//! start (matrix-js-sdk will not sync without them).

use actix_web::{web, HttpResponse};
use ruma::push::Ruleset;
use serde_json::{json, Value};

use crate::api::Requester;
use crate::error::{ApiError, ApiResult};

fn ruleset(requester: &Requester) -> ApiResult<Value> {
    let user_id = ruma::UserId::parse(&requester.user_id).map_err(ApiError::internal)?;
    serde_json::to_value(Ruleset::server_default(&user_id)).map_err(ApiError::internal)
}

/// GET /_matrix/client/v3/pushrules/
pub async fn get_push_rules(requester: Requester) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({ "global": ruleset(&requester)? })))
}

/// GET /_matrix/client/v3/pushrules/global/
pub async fn get_global_push_rules(requester: Requester) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(ruleset(&requester)?))
}

/// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
pub async fn get_push_rule(
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (kind, rule_id) = path.into_inner();
    let ruleset = ruleset(&requester)?;
    let rules = ruleset
        .get(&kind)
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid_param(format!("unknown push rule kind `{kind}`")))?;
    let rule = rules
        .iter()
        .find(|rule| rule.get("rule_id").and_then(Value::as_str) == Some(rule_id.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("no push rule {kind}/{rule_id}")))?;
    Ok(HttpResponse::Ok().json(rule))
}
