//! `POST /rooms/{roomId}/read_markers`: the read marker (`m.fully_read`,
//! stored as room account data) and, to save a call, the read receipts
//! (`m.read`, `m.read.private`, unthreaded). Other keys are ignored, as in
//! Synapse (receipt types are extensible). Every event named is checked
//! before anything is written, so that a request refused changes nothing.

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use super::receipts::{parse_event_id, put_receipt, set_read_marker, Marker};
use crate::api::client::membership::check_room_id;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::roles::account_data::FULLY_READ;
use crate::rooms::access::require_joined;
use crate::storage::receipts::event_position_in_room;

/// The keys of the body this endpoint sets, in the order it sets them.
const MARKERS: [&str; 3] = [FULLY_READ, "m.read", "m.read.private"];

/// POST /_matrix/client/v3/rooms/{roomId}/read_markers
pub async fn set_read_markers(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(&path.into_inner())?;
    let mut markers = Vec::new();
    for key in MARKERS {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(event_id)) => {
                markers.push((Marker::parse(key)?, parse_event_id(event_id)?))
            }
            Some(_) => {
                return Err(ApiError::invalid_param(format!(
                    "{key} must be an event id"
                )))
            }
        }
    }
    require_joined(&node, room_id.as_str(), &requester.user_id).await?;
    crate::sync::presence::user_active(&node, &requester.user_id);
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    for (_, event_id) in &markers {
        if event_position_in_room(&client, room_id.as_str(), event_id.as_str())
            .await?
            .is_none()
        {
            return Err(ApiError::not_found(format!(
                "event {event_id} not found in this room"
            )));
        }
    }
    drop(client);
    for (marker, event_id) in markers {
        match marker {
            Marker::FullyRead => {
                set_read_marker(&node, &requester, room_id.clone(), event_id).await?
            }
            Marker::Receipt(receipt_type) => {
                put_receipt(
                    &node,
                    &requester,
                    room_id.clone(),
                    receipt_type,
                    event_id,
                    None,
                )
                .await?
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({})))
}
