//! Push rules: every user has the spec's server-default rule set (ruma's
//! `Ruleset::server_default`). Changing rules needs the `push_rules` stream
//! writer, which does not exist yet; reading them is what clients need to
//! start (matrix-js-sdk will not sync without them).

use actix_web::{web, HttpResponse};
use ruma::push::Ruleset;
use serde_json::{json, Value};

use crate::api::Requester;
use crate::error::{ApiError, ApiResult};

/// The kinds of rule a ruleset has, in the order they are evaluated.
const RULE_KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// The user's ruleset with every kind present: ruma leaves out the kinds that
/// have no rules, but the spec's `Ruleset` lists all five, as Synapse sends
/// them (clients index into them without checking).
fn ruleset(requester: &Requester) -> ApiResult<Value> {
    let user_id = ruma::UserId::parse(&requester.user_id).map_err(ApiError::internal)?;
    let mut ruleset =
        serde_json::to_value(Ruleset::server_default(&user_id)).map_err(ApiError::internal)?;
    if let Some(kinds) = ruleset.as_object_mut() {
        for kind in RULE_KINDS {
            kinds.entry(kind).or_insert_with(|| json!([]));
        }
    }
    Ok(ruleset)
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
    if !RULE_KINDS.contains(&kind.as_str()) {
        return Err(ApiError::invalid_param(format!(
            "unknown push rule kind `{kind}`"
        )));
    }
    let ruleset = ruleset(&requester)?;
    let rules = ruleset
        .get(&kind)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rule = rules
        .iter()
        .find(|rule| rule.get("rule_id").and_then(Value::as_str) == Some(rule_id.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("no push rule {kind}/{rule_id}")))?;
    Ok(HttpResponse::Ok().json(rule))
}
