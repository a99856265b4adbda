//! Discovery: `/versions`, `.well-known/matrix/client` and `/support`,
//! `/capabilities`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::version::SUPPORTED_ROOM_VERSIONS;

/// GET /_matrix/client/versions
pub async fn versions() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "versions": [
            "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
            "v1.9", "v1.10", "v1.11", "v1.12"
        ],
        "unstable_features": {}
    }))
}

/// GET /.well-known/matrix/client
pub async fn well_known(node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "m.homeserver": { "base_url": node.config.public_baseurl() }
    }))
}

/// GET /.well-known/matrix/support
///
/// The `support` setting as it is (checked when the config was read);
/// without one, the spec's 404.
pub async fn well_known_support(node: web::Data<Node>) -> ApiResult<HttpResponse> {
    match &node.config.support {
        Some(support) => Ok(HttpResponse::Ok().json(support)),
        None => Err(ApiError::not_found(
            "this server publishes no support information",
        )),
    }
}

/// GET /_matrix/client/v3/capabilities
pub async fn capabilities(node: web::Data<Node>, _requester: Requester) -> ApiResult<HttpResponse> {
    let available: serde_json::Map<String, serde_json::Value> = SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| (v.to_string(), json!("stable")))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "capabilities": {
            "m.room_versions": {
                "default": node.config.default_room_version,
                "available": available,
            },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            // No third-party id can be added: there is no email or SMS here.
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": node.config.login_via_existing_session.enabled },
            // Every key may be set (the spec's grammar and size limits).
            "m.profile_fields": { "enabled": true },
        }
    })))
}
