//! Device management: listing, reading, renaming and deleting the devices a
//! user is signed in on (deleting needs their password again, through
//! [`uiaa`](super::uiaa)), and [`remove_devices`], the one way any device
//! goes away (logging out too).
//!
//! When and from where a device was last used is noted by each instance on
//! every authenticated request and written in batches: [`last_seen`].

pub mod last_seen;

use actix_web::{web, HttpRequest, HttpResponse};
use ruma::{OwnedDeviceId, UserId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::uiaa::{self, AuthData};
use crate::api::limits::{check_no_nul, MAX_DELETED_DEVICES, MAX_DEVICE_DISPLAY_NAME_CHARS};
use crate::api::{OptionalJsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::storage::devices::{self, Device};

/// Removes `user_id`'s devices among `device_ids` (ids they do not have are
/// ignored): the devices and their access tokens, in one transaction, then
/// the tokens cached here and on every other instance and the devices'
/// last-seen notes. Logging out, logging out everywhere, `DELETE
/// /devices/{deviceId}` and `POST /delete_devices` all come here, and so
/// must anything else that removes a device. Answers the ids removed.
pub async fn remove_devices(
    node: &Node,
    user_id: &UserId,
    device_ids: &[OwnedDeviceId],
) -> ApiResult<Vec<OwnedDeviceId>> {
    let ids: Vec<&str> = device_ids.iter().map(|id| id.as_str()).collect();
    let removed = devices::delete(&node.pool, user_id.as_str(), &ids).await?;
    // One device's tokens, or every token of the user: the survivors' are
    // read again from the database at their next request.
    match ids.as_slice() {
        [] => {}
        [device_id] => {
            node.forget_tokens(user_id.as_str(), Some(device_id))
                .await?
        }
        _ => node.forget_tokens(user_id.as_str(), None).await?,
    }
    let removed_ids: Vec<&str> = removed.iter().map(String::as_str).collect();
    node.last_seen.forget(user_id.as_str(), &removed_ids);
    let removed_devices: Vec<(&str, &str)> = removed_ids
        .iter()
        .map(|device_id| (user_id.as_str(), *device_id))
        .collect();
    node.forget_key_counts(&removed_devices).await?;
    if !removed.is_empty() {
        tracing::info!(user_id = %user_id, devices = ?removed, "removed devices");
        // The devices are gone whatever happens next; a device lists writer
        // that cannot be reached only delays others seeing it (as at login).
        if let Err(error) =
            crate::api::client::keys::devices_changed(node, user_id.as_str(), removed.clone()).await
        {
            tracing::warn!(user_id = %user_id, error = %error, "could not record removed devices in the device lists stream");
        }
    }
    Ok(removed.into_iter().map(OwnedDeviceId::from).collect())
}

/// GET /_matrix/client/v3/devices
pub async fn get_devices(node: web::Data<Node>, requester: Requester) -> ApiResult<HttpResponse> {
    let mut devices = devices::devices(&node.pool, &requester.user_id).await?;
    node.last_seen.merge_into(&requester.user_id, &mut devices);
    let devices: Vec<Value> = devices.iter().map(device_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "devices": devices })))
}

/// GET /_matrix/client/v3/devices/{deviceId}
pub async fn get_device(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let device = devices::get(&node.pool, &requester.user_id, &device_id)
        .await?
        .ok_or_else(device_not_found)?;
    let mut devices = [device];
    node.last_seen.merge_into(&requester.user_id, &mut devices);
    Ok(HttpResponse::Ok().json(device_json(&devices[0])))
}

#[derive(Deserialize)]
pub struct UpdateDeviceRequest {
    /// `None` (absent or `null`) leaves the name as it is, as in Synapse.
    display_name: Option<String>,
}

/// PUT /_matrix/client/v3/devices/{deviceId}
pub async fn update_device(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    body: crate::api::JsonBody<UpdateDeviceRequest>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let display_name = body.0.display_name;
    if let Some(name) = &display_name {
        check_display_name(name)?;
    }
    if !devices::set_display_name(
        &node.pool,
        &requester.user_id,
        &device_id,
        display_name.as_deref(),
    )
    .await?
    {
        return Err(device_not_found());
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct DeleteDeviceRequest {
    auth: Option<AuthData>,
}

/// DELETE /_matrix/client/v3/devices/{deviceId}
///
/// After the password, a device the user does not have is no error (it is
/// gone, as asked): Synapse's answer, and the spec's, which lists no `404`.
pub async fn delete_device(
    request: HttpRequest,
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<DeleteDeviceRequest>,
) -> ApiResult<HttpResponse> {
    let device_id = OwnedDeviceId::from(path.into_inner());
    uiaa::authenticate_with_password(&node, &request, &requester, body.auth.as_ref()).await?;
    remove_devices(&node, &requester.user()?, &[device_id]).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct DeleteDevicesRequest {
    auth: Option<AuthData>,
    devices: Vec<String>,
}

/// POST /_matrix/client/v3/delete_devices
pub async fn delete_devices(
    request: HttpRequest,
    node: web::Data<Node>,
    requester: Requester,
    crate::api::JsonBody(body): crate::api::JsonBody<DeleteDevicesRequest>,
) -> ApiResult<HttpResponse> {
    if body.devices.len() > MAX_DELETED_DEVICES {
        return Err(ApiError::invalid_param(format!(
            "at most {MAX_DELETED_DEVICES} devices may be deleted at once"
        )));
    }
    uiaa::authenticate_with_password(&node, &request, &requester, body.auth.as_ref()).await?;
    let device_ids: Vec<OwnedDeviceId> = body.devices.into_iter().map(Into::into).collect();
    remove_devices(&node, &requester.user()?, &device_ids).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// A device as the spec shows it: fields without a value are left out.
fn device_json(device: &Device) -> Value {
    let mut fields = Map::new();
    fields.insert("device_id".into(), json!(device.device_id));
    if let Some(name) = &device.display_name {
        fields.insert("display_name".into(), json!(name));
    }
    if let Some(ip) = &device.last_seen_ip {
        fields.insert("last_seen_ip".into(), json!(ip));
    }
    if let Some(ts) = device.last_seen_ts {
        fields.insert("last_seen_ts".into(), json!(ts));
    }
    Value::Object(fields)
}

fn device_not_found() -> ApiError {
    ApiError::not_found("no device found")
}

/// A new display name: at most 100 characters (Synapse's
/// `MAX_DEVICE_DISPLAY_NAME_LEN`, answered as Synapse does: `400
/// M_TOO_LARGE`), without NUL.
fn check_display_name(name: &str) -> ApiResult<()> {
    if name.chars().count() > MAX_DEVICE_DISPLAY_NAME_CHARS {
        return Err(ApiError::new(
            ErrCode::FieldTooLarge,
            format!("device display name is too long (max {MAX_DEVICE_DISPLAY_NAME_CHARS})"),
        ));
    }
    check_no_nul("display_name", name)
}
