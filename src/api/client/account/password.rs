//! Changing the password of a signed-in user, who gives the old one again
//! through [`uiaa`](crate::api::client::uiaa). With `logout_devices` (the
//! default) every other device is signed out and removed, as Synapse does;
//! the device that asked stays signed in.

use actix_web::{web, HttpRequest, HttpResponse};
use ruma::OwnedDeviceId;
use serde::Deserialize;
use serde_json::json;

use crate::api::client::device::remove_devices;
use crate::api::client::uiaa::{self, AuthData};
use crate::api::limits::MAX_PASSWORD_BYTES;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::storage::{accounts, devices};

#[derive(Deserialize)]
pub struct ChangePasswordRequest {
    auth: Option<AuthData>,
    new_password: Option<String>,
    #[serde(default = "signs_out_by_default")]
    logout_devices: bool,
}

fn signs_out_by_default() -> bool {
    true
}

/// POST /_matrix/client/v3/account/password
pub async fn change_password(
    request: HttpRequest,
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<ChangePasswordRequest>,
) -> ApiResult<HttpResponse> {
    // Checked before the password stage, as Synapse does, so that a client
    // is not asked for its password to be told the new one is unusable.
    if let Some(new_password) = &body.new_password {
        check_new_password(new_password)?;
    }
    uiaa::authenticate_with_password(&node, &request, &requester, body.auth.as_ref()).await?;
    let new_password = body
        .new_password
        .ok_or_else(|| ApiError::missing_param("new_password is required"))?;
    let password_hash = node
        .passwords
        .hash(new_password)
        .await
        .map_err(ApiError::internal)?;
    accounts::set_password_hash(&node.pool, &requester.user_id, &password_hash).await?;
    tracing::info!(user_id = %requester.user_id, logout_devices = body.logout_devices, "password changed");
    if body.logout_devices {
        let others: Vec<OwnedDeviceId> = devices::device_ids(&node.pool, &requester.user_id)
            .await?
            .into_iter()
            .filter(|device_id| *device_id != requester.device_id)
            .map(OwnedDeviceId::from)
            .collect();
        remove_devices(&node, &requester.user()?, &others).await?;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// A new password: 1 to [`MAX_PASSWORD_BYTES`] bytes (Synapse's 512).
fn check_new_password(password: &str) -> ApiResult<()> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::new(
            ErrCode::InvalidParam,
            format!("the new password must be 1 to {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}
