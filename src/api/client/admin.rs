//! The Client-Server API's one administration endpoint (ruma's `admin`
//! module): `GET /admin/whois/{userId}`, where and with what each of a
//! user's devices connected. Lattice's own admin API is
//! [`crate::api::admin`].
//!
//! Users may ask about themselves, server admins about anyone (Synapse's
//! rule; anyone else is `403`, whether the user exists or not). Each device
//! is one session (a device has one access token at a time here), whose
//! connections are the addresses it used in the last four weeks, latest
//! first, each with the user agent last seen from it: what
//! [`last_seen`](super::device::last_seen) writes in batches, with what
//! this instance noted and has not written yet. Synapse puts every
//! connection under one device `""`; the spec's shape is by device, and so
//! is this.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use crate::api::client::membership::check_user_id;
use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::storage::{accounts, devices};

/// GET /_matrix/client/v3/admin/whois/{userId}
pub async fn whois(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let user_id = check_user_id(&path.into_inner())?;
    if user_id.as_str() != requester.user_id && !requester.is_admin {
        return Err(ApiError::forbidden(
            "only server admins may look up other users",
        ));
    }
    if user_id.server_name() != node.config.server_name.as_str() {
        return Err(ApiError::invalid_param("only local users can be looked up"));
    }
    if !accounts::user_exists(&node.pool, user_id.as_str()).await? {
        return Err(ApiError::not_found("no such user"));
    }
    let device_ids = devices::device_ids(&node.pool, user_id.as_str()).await?;
    let mut connections = devices::connections(&node.pool, user_id.as_str()).await?;
    node.last_seen
        .merge_connections(user_id.as_str(), &mut connections);

    let mut by_device: BTreeMap<String, Vec<devices::Connection>> = device_ids
        .into_iter()
        .map(|device_id| (device_id, Vec::new()))
        .collect();
    for connection in connections {
        // A device removed since its connections were read has none.
        if let Some(listed) = by_device.get_mut(&connection.device_id) {
            listed.push(connection);
        }
    }
    let devices: Map<String, Value> = by_device
        .into_iter()
        .map(|(device_id, mut connections)| {
            connections.sort_by_key(|c| std::cmp::Reverse(c.last_seen_ts));
            let connections: Vec<Value> = connections.iter().map(connection_json).collect();
            (
                device_id,
                json!({ "sessions": [{ "connections": connections }] }),
            )
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "user_id": user_id,
        "devices": devices,
    })))
}

fn connection_json(connection: &devices::Connection) -> Value {
    let mut fields = json!({
        "ip": connection.ip,
        "last_seen": connection.last_seen_ts,
    });
    if let Some(user_agent) = &connection.user_agent {
        fields["user_agent"] = json!(user_agent);
    }
    fields
}
