//! Push rules (`/pushrules/...`): every user's ruleset is the spec's server
//! defaults (ruma's `Ruleset::server_default`) with their own changes
//! (`push::rules`). Reads come from the ruleset cache of this instance;
//! changes go to the `push_rules` writer of the user, and the answer waits
//! until this instance has seen them (read-your-writes).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::push::rules::{parse_kind, rule_json, ruleset_json, RuleChange, RuleError};
use crate::roles::push_rules::{ChangePushRules, PUSH_RULES_STREAM};

/// The user's whole ruleset.
async fn ruleset(
    node: &Node,
    requester: &Requester,
) -> ApiResult<std::sync::Arc<ruma::push::Ruleset>> {
    let user_id = requester.user()?;
    Ok(node
        .push
        .rules
        .ruleset(&node.pool, &node.notifier, &user_id)
        .await?)
}

/// GET /_matrix/client/v3/pushrules/
pub async fn get_push_rules(
    node: web::Data<Node>,
    requester: Requester,
) -> ApiResult<HttpResponse> {
    let ruleset = ruleset(&node, &requester).await?;
    Ok(HttpResponse::Ok().json(json!({ "global": ruleset_json(&ruleset) })))
}

/// GET /_matrix/client/v3/pushrules/global/
pub async fn get_global_push_rules(
    node: web::Data<Node>,
    requester: Requester,
) -> ApiResult<HttpResponse> {
    let ruleset = ruleset(&node, &requester).await?;
    Ok(HttpResponse::Ok().json(ruleset_json(&ruleset)))
}

/// The rule at `path` as the spec shows it, or 404.
async fn rule(node: &Node, requester: &Requester, path: (String, String)) -> ApiResult<Value> {
    let (kind, rule_id) = path;
    let parsed = parse_kind(&kind)?;
    let ruleset = ruleset(node, requester).await?;
    let rule = ruleset
        .get(parsed, &rule_id)
        .ok_or_else(|| ApiError::from(RuleError::NotFound(format!("{kind}/{rule_id}"))))?;
    Ok(rule_json(rule))
}

/// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
pub async fn get_push_rule(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(rule(&node, &requester, path.into_inner()).await?))
}

/// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
pub async fn get_push_rule_enabled(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let rule = rule(&node, &requester, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(json!({ "enabled": rule["enabled"] })))
}

/// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
pub async fn get_push_rule_actions(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let rule = rule(&node, &requester, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(json!({ "actions": rule["actions"] })))
}

#[derive(Deserialize)]
pub struct PlacementQuery {
    before: Option<String>,
    after: Option<String>,
}

/// Sends `change` to the user's push rules writer and waits until this
/// instance has seen it.
async fn change(node: &Node, requester: &Requester, change: RuleChange) -> ApiResult<HttpResponse> {
    let request = ChangePushRules {
        user_id: requester.user()?,
        change,
    };
    let written = node
        .call_owner(PUSH_RULES_STREAM, &requester.user_id, request)
        .await??;
    node.wait_for_write(PUSH_RULES_STREAM, &written.instance, written.position)
        .await;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
pub async fn put_push_rule(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    query: web::Query<PlacementQuery>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<HttpResponse> {
    let (kind, rule_id) = path.into_inner();
    let query = query.into_inner();
    // What can be refused without the user's rules is refused here.
    parse_kind(&kind)?;
    crate::push::rules::check_rule_id(&rule_id)?;
    if !body.is_object() {
        return Err(ApiError::bad_json("the body must be a JSON object"));
    }
    let put = RuleChange::Put {
        kind,
        rule_id,
        body,
        before: query.before.filter(|b| !b.is_empty()),
        after: query.after.filter(|a| !a.is_empty()),
    };
    change(&node, &requester, put).await
}

/// DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
pub async fn delete_push_rule(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (kind, rule_id) = path.into_inner();
    parse_kind(&kind)?;
    change(&node, &requester, RuleChange::Delete { kind, rule_id }).await
}

/// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
pub async fn put_push_rule_enabled(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<HttpResponse> {
    let (kind, rule_id) = path.into_inner();
    parse_kind(&kind)?;
    let enabled = body
        .get("enabled")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::bad_json("`enabled` must be true or false"))?;
    let set = RuleChange::SetEnabled {
        kind,
        rule_id,
        enabled,
    };
    change(&node, &requester, set).await
}

/// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
pub async fn put_push_rule_actions(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<HttpResponse> {
    let (kind, rule_id) = path.into_inner();
    parse_kind(&kind)?;
    let actions = body
        .get("actions")
        .cloned()
        .ok_or_else(|| ApiError::bad_json("no `actions`"))?;
    crate::push::rules::parse_actions(&actions)?;
    let set = RuleChange::SetActions {
        kind,
        rule_id,
        actions,
    };
    change(&node, &requester, set).await
}
