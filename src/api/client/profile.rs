//! Profiles: display name and avatar, propagated to the user's member events.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::api::limits::{check_avatar_url, check_chars, MAX_DISPLAYNAME_CHARS};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::storage::{accounts, rooms};

/// GET /_matrix/client/v3/profile/{userId}
pub async fn get_profile(
    node: web::Data<Node>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let user_id = path.into_inner();
    let profile = accounts::profile(&node.pool, &user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("profile not found"))?;
    let mut body = serde_json::Map::new();
    if let Some(name) = profile.displayname {
        body.insert("displayname".into(), json!(name));
    }
    if let Some(url) = profile.avatar_url {
        body.insert("avatar_url".into(), json!(url));
    }
    Ok(HttpResponse::Ok().json(body))
}

/// GET /_matrix/client/v3/profile/{userId}/{displayname|avatar_url}
pub async fn get_profile_field(
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (user_id, field) = path.into_inner();
    let profile = accounts::profile(&node.pool, &user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("profile not found"))?;
    let value = match field.as_str() {
        "displayname" => profile.displayname,
        "avatar_url" => profile.avatar_url,
        _ => return Err(ApiError::unrecognized("unknown profile field")),
    };
    match value {
        Some(value) => Ok(HttpResponse::Ok().json(json!({ field: value }))),
        None => Err(ApiError::not_found(format!("{field} is not set"))),
    }
}

/// PUT /_matrix/client/v3/profile/{userId}/{displayname|avatar_url}
pub async fn set_profile_field(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (user_id, field) = path.into_inner();
    if field != "displayname" && field != "avatar_url" {
        return Err(ApiError::unrecognized("unknown profile field"));
    }
    if user_id != requester.user_id {
        return Err(ApiError::forbidden(
            "you cannot change another user's profile",
        ));
    }
    let value = match body.get(&field) {
        None | Some(Value::Null) => None,
        Some(Value::String(value)) => Some(value.clone()),
        Some(_) => return Err(ApiError::bad_json(format!("`{field}` must be a string"))),
    };
    match (&value, field.as_str()) {
        (Some(name), "displayname") => check_chars("displayname", name, MAX_DISPLAYNAME_CHARS)?,
        // An empty string clears the avatar, as several clients send.
        (Some(url), _) if !url.is_empty() => check_avatar_url(url)?,
        _ => {}
    }
    if field == "displayname" {
        accounts::set_displayname(&node.pool, &user_id, value.as_deref()).await?;
    } else {
        accounts::set_avatar_url(&node.pool, &user_id, value.as_deref()).await?;
    }
    // Propagate to the member event of every joined room, as Synapse does.
    let sender = requester.user()?;
    for room_id in rooms::joined_rooms(&node.pool, &user_id).await? {
        let Some(mut content) =
            rooms::current_member_content(&node.pool, &room_id, &user_id).await?
        else {
            continue;
        };
        match &value {
            Some(v) => content.insert(field.clone(), json!(v)),
            None => content.remove(&field),
        };
        // Stored room ids were parsed when the rooms were created.
        let result = match ruma::RoomId::parse(&room_id).map_err(ApiError::internal) {
            Ok(parsed_room_id) => {
                node.send_state_event(
                    &parsed_room_id,
                    &sender,
                    "m.room.member",
                    &user_id,
                    Value::Object(content),
                )
                .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::warn!(room_id = %room_id, error = %error, "could not update member event with new profile");
        }
    }
    Ok(HttpResponse::Ok().json(json!({})))
}
