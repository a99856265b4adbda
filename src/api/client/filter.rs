//! Filters: uploaded once, referred to by id in `/sync`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::filter::Filter;
use crate::storage::accounts;

/// POST /_matrix/client/v3/user/{userId}/filter
pub async fn create_filter(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<HttpResponse> {
    if path.into_inner() != requester.user_id {
        return Err(ApiError::forbidden(
            "you cannot create filters for other users",
        ));
    }
    // Validate the shape now, so a bad filter is refused here and not at /sync.
    Filter::parse(body.clone())?;
    let filter_id = accounts::create_filter(&node.pool, &requester.user_id, &body).await?;
    Ok(HttpResponse::Ok().json(json!({ "filter_id": filter_id.to_string() })))
}

/// GET /_matrix/client/v3/user/{userId}/filter/{filterId}
pub async fn get_filter(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (user_id, filter_id) = path.into_inner();
    if user_id != requester.user_id {
        return Err(ApiError::forbidden(
            "you cannot read filters of other users",
        ));
    }
    let filter_id: i64 = filter_id
        .parse()
        .map_err(|_| ApiError::not_found("no such filter"))?;
    let filter = accounts::filter(&node.pool, &user_id, filter_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such filter"))?;
    Ok(HttpResponse::Ok().json(filter))
}
