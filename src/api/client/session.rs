//! Sessions beyond login: refreshing an expiring access token with its
//! refresh token (`POST /refresh`), and a signed-in user asking for a
//! short-lived login token to sign in another device
//! (`POST /login/get_token`, behind `login_via_existing_session`).
//!
//! Refresh tokens follow the spec's rule: a refresh token stays good until
//! the pair it was swapped for is used; after that, using it again means it
//! was copied, and the session (the device and all its tokens) ends. How
//! the tokens are kept is in `storage::accounts::refresh_session`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::api::client::account::{expiry_from_now, new_access_token, new_refresh_token};
use crate::api::client::device::remove_devices;
use crate::api::client::uiaa::{self, AuthData};
use crate::api::limits::check_bytes;
use crate::api::{rate_limit_ip, JsonBody, OptionalJsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::storage::accounts::{self, NewRefreshToken, Refreshed};
use crate::util::random_string;

#[derive(Deserialize)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// The longest refresh token accepted (ours are far shorter).
const MAX_REFRESH_TOKEN_BYTES: usize = 255;

/// POST /_matrix/client/v3/refresh
pub async fn refresh(
    request: HttpRequest,
    node: web::Data<Node>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<HttpResponse> {
    rate_limit_ip(&request)?;
    check_bytes(
        "the refresh token",
        &body.refresh_token,
        MAX_REFRESH_TOKEN_BYTES,
    )?;
    let access_token = new_access_token();
    let refresh_token = new_refresh_token();
    let lifetime_ms = node.config.refreshable_access_token_lifetime.as_millis();
    let outcome = accounts::refresh_session(
        &node.pool,
        &body.refresh_token,
        &access_token,
        NewRefreshToken {
            refresh_token: &refresh_token,
            access_expires_ts: expiry_from_now(lifetime_ms),
        },
    )
    .await?;
    match outcome {
        Refreshed::Swapped { user_id, device_id } => {
            // The old access token is gone: out of every cache too.
            node.forget_tokens(&user_id, Some(&device_id)).await?;
            Ok(HttpResponse::Ok().json(json!({
                "access_token": access_token,
                "refresh_token": refresh_token,
                "expires_in_ms": lifetime_ms,
            })))
        }
        Refreshed::Unknown => Err(unknown_refresh_token()),
        Refreshed::Reused { user_id, device_id } => {
            tracing::warn!(
                user_id,
                device_id,
                "spent refresh token used again: ending the session"
            );
            let user = ruma::OwnedUserId::try_from(user_id.as_str())
                .map_err(|e| ApiError::internal(format!("refresh token owner `{user_id}`: {e}")))?;
            remove_devices(&node, &user, &[device_id.into()]).await?;
            Err(unknown_refresh_token())
        }
    }
}

fn unknown_refresh_token() -> ApiError {
    ApiError::new(
        ErrCode::UnknownToken,
        "unknown refresh token, or one already used",
    )
}

#[derive(Deserialize, Default)]
pub struct GetLoginTokenRequest {
    auth: Option<AuthData>,
}

/// POST /_matrix/client/v1/login/get_token
///
/// Answered only when `login_via_existing_session.enabled` (otherwise it
/// is no endpoint, as in Synapse); the password again first, unless
/// `require_ui_auth` is off.
pub async fn get_login_token(
    request: HttpRequest,
    node: web::Data<Node>,
    requester: Requester,
    OptionalJsonBody(body): OptionalJsonBody<GetLoginTokenRequest>,
) -> ApiResult<HttpResponse> {
    let settings = &node.config.login_via_existing_session;
    if !settings.enabled {
        return Err(ApiError::unrecognized(
            "signing in with a login token is disabled on this server",
        ));
    }
    if settings.require_ui_auth {
        uiaa::authenticate_with_password(&node, &request, &requester, body.auth.as_ref()).await?;
    }
    let token = format!("latl_{}", random_string(40));
    let lifetime_ms = settings.token_timeout.as_millis();
    accounts::create_login_token(
        &node.pool,
        &token,
        &requester.user_id,
        expiry_from_now(lifetime_ms),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "login_token": token,
        "expires_in_ms": lifetime_ms,
    })))
}
