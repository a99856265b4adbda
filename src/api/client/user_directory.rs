//! `POST /user_directory/search`: the users the requester may see (who
//! share a joined room with them, or are joined to a public or
//! world-readable room) whose display name or user id has words starting
//! with each word of the search term, compared without case or accents.
//! Served from PostgreSQL by any instance with the client API
//! (`storage/user_directory`): there is no state of its own to go stale.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::limits::{check_bytes, MAX_SEARCH_TERM_BYTES};
use crate::api::{parse_json, JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::storage::user_directory::{self, words};

/// Results when the request gives no `limit` (the spec's default).
const DEFAULT_LIMIT: i64 = 10;

/// The most results one search answers, whatever `limit` asks.
const MAX_LIMIT: i64 = 1000;

/// The most words of a search term that are matched (the rest are ignored).
const MAX_WORDS: usize = 10;

#[derive(Debug, Deserialize)]
struct SearchRequest {
    search_term: String,
    limit: Option<i64>,
}

/// POST /_matrix/client/v3/user_directory/search
pub async fn search_user_directory(
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let request: SearchRequest = parse_json(Value::Object(body))?;
    check_bytes("search_term", &request.search_term, MAX_SEARCH_TERM_BYTES)?;
    let limit = match request.limit {
        None => DEFAULT_LIMIT,
        Some(limit) if limit >= 0 => limit.min(MAX_LIMIT),
        Some(_) => return Err(ApiError::invalid_param("limit must not be negative")),
    };
    let mut prefixes = words(&request.search_term);
    prefixes.truncate(MAX_WORDS);
    // One more than asked says whether there were more.
    let mut found =
        user_directory::search(&node.pool, &requester.user_id, &prefixes, limit + 1).await?;
    let limited = found.len() as i64 > limit;
    found.truncate(limit as usize);
    let results: Vec<Value> = found
        .into_iter()
        .map(|user| {
            let mut result = json!({ "user_id": user.user_id });
            if let Some(name) = user.display_name {
                result["display_name"] = json!(name);
            }
            if let Some(url) = user.avatar_url.filter(|url| !url.is_empty()) {
                result["avatar_url"] = json!(url);
            }
            result
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "results": results, "limited": limited })))
}
