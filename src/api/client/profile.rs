//! Profiles: display name and avatar, propagated to the user's member
//! events, and the extended fields of v1.16 (`m.tz` and custom keys in the
//! spec's namespaced grammar, any JSON value, the whole profile at most
//! 64 KiB), which stay in the profile.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::api::limits::{check_avatar_url, check_chars, MAX_DISPLAYNAME_CHARS};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
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
    for (field, value) in accounts::profile_fields(&node.pool, &user_id).await? {
        body.insert(field, value);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// GET /_matrix/client/v3/profile/{userId}/{keyName}
pub async fn get_profile_field(
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (user_id, field) = path.into_inner();
    check_key(&field)?;
    let profile = accounts::profile(&node.pool, &user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("profile not found"))?;
    let value = match field.as_str() {
        "displayname" => profile.displayname.map(Value::String),
        "avatar_url" => profile.avatar_url.map(Value::String),
        _ => accounts::profile_fields(&node.pool, &user_id)
            .await?
            .into_iter()
            .find_map(|(key, value)| (key == field).then_some(value)),
    };
    match value {
        Some(value) => Ok(HttpResponse::Ok().json(json!({ field: value }))),
        None => Err(ApiError::not_found(format!("{field} is not set"))),
    }
}

/// The whole profile may not be larger (the spec's 64 KiB).
pub const MAX_PROFILE_BYTES: usize = 64 * 1024;

/// The longest key (the spec's `M_KEY_TOO_LARGE`).
const MAX_KEY_BYTES: usize = 255;

/// A key of the spec's grammar: `displayname`, `avatar_url`, `m.tz`, or a
/// namespaced custom key (`[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+`).
fn check_key(key: &str) -> ApiResult<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            ErrCode::KeyTooLarge,
            format!("profile keys are at most {MAX_KEY_BYTES} bytes"),
        ));
    }
    let part_ok = |part: &str| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let namespaced = key.contains('.') && key.split('.').all(part_ok);
    if matches!(key, "displayname" | "avatar_url") || namespaced {
        Ok(())
    } else {
        Err(ApiError::invalid_param(format!(
            "`{key}` is not a profile key (displayname, avatar_url, m.tz or a namespaced key such as com.example.field)"
        )))
    }
}

/// PUT /_matrix/client/v3/profile/{userId}/{keyName}
pub async fn set_profile_field(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let (user_id, field) = path.into_inner();
    check_key(&field)?;
    require_own_profile(&requester, &user_id)?;
    if field == "displayname" || field == "avatar_url" {
        let value = match body.get(&field) {
            None | Some(Value::Null) => None,
            Some(Value::String(value)) => Some(value.clone()),
            Some(_) => return Err(ApiError::bad_json(format!("`{field}` must be a string"))),
        };
        return set_name_or_avatar(&node, &requester, &user_id, &field, value).await;
    }
    let value = body
        .get(&field)
        .ok_or_else(|| ApiError::missing_param(format!("the body must hold `{field}`")))?;
    if field == "m.tz" && !value.is_string() {
        return Err(ApiError::bad_json("`m.tz` must be a string"));
    }
    if !accounts::set_profile_field(&node.pool, &user_id, &field, value, MAX_PROFILE_BYTES).await? {
        return Err(ApiError::new(
            ErrCode::ProfileTooLarge,
            format!("the profile would be larger than {MAX_PROFILE_BYTES} bytes"),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// DELETE /_matrix/client/v3/profile/{userId}/{keyName}
///
/// Deleting the display name or avatar clears it (in the rooms too).
pub async fn delete_profile_field(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (user_id, field) = path.into_inner();
    check_key(&field)?;
    require_own_profile(&requester, &user_id)?;
    if field == "displayname" || field == "avatar_url" {
        return set_name_or_avatar(&node, &requester, &user_id, &field, None).await;
    }
    accounts::delete_profile_field(&node.pool, &user_id, &field).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

fn require_own_profile(requester: &Requester, user_id: &str) -> ApiResult<()> {
    if user_id != requester.user_id {
        return Err(ApiError::forbidden(
            "you cannot change another user's profile",
        ));
    }
    Ok(())
}

/// Sets or clears the display name or avatar, and propagates it to the
/// member event of every joined room, as Synapse does.
async fn set_name_or_avatar(
    node: &Node,
    requester: &Requester,
    user_id: &str,
    field: &str,
    value: Option<String>,
) -> ApiResult<HttpResponse> {
    match (&value, field) {
        (Some(name), "displayname") => check_chars("displayname", name, MAX_DISPLAYNAME_CHARS)?,
        // An empty string clears the avatar, as several clients send.
        (Some(url), _) if !url.is_empty() => check_avatar_url(url)?,
        _ => {}
    }
    if field == "displayname" {
        accounts::set_displayname(&node.pool, user_id, value.as_deref()).await?;
    } else {
        accounts::set_avatar_url(&node.pool, user_id, value.as_deref()).await?;
    }
    // Propagate to the member event of every joined room, as Synapse does.
    let sender = requester.user()?;
    for room_id in rooms::joined_rooms(&node.pool, user_id).await? {
        let Some(mut content) =
            rooms::current_member_content(&node.pool, &room_id, user_id).await?
        else {
            continue;
        };
        match &value {
            Some(v) => content.insert(field.to_owned(), json!(v)),
            None => content.remove(field),
        };
        // Stored room ids were parsed when the rooms were created.
        let result = match ruma::RoomId::parse(&room_id).map_err(ApiError::internal) {
            Ok(parsed_room_id) => {
                node.send_state_event(
                    &parsed_room_id,
                    &sender,
                    "m.room.member",
                    user_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_spec_grammar() {
        for key in [
            "displayname",
            "avatar_url",
            "m.tz",
            "org.example.pronouns",
            "a.b_1",
        ] {
            assert!(check_key(key).is_ok(), "{key}");
        }
        for key in [
            "",
            "tz",
            "m.",
            ".m",
            "Org.example",
            "org..example",
            "org.1x",
            "org.ex-ample",
        ] {
            assert_eq!(
                check_key(key).map_err(|e| e.errcode),
                Err(ErrCode::InvalidParam),
                "{key}"
            );
        }
        let long = format!("org.{}", "a".repeat(251));
        assert!(check_key(&long).is_ok());
        assert_eq!(
            check_key(&format!("{long}a")).map_err(|e| e.errcode),
            Err(ErrCode::KeyTooLarge)
        );
    }
}
