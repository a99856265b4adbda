//! Membership: join (by id or alias), knock, invite, leave, kick, ban, unban, forget,
//! the member lists, and the rooms two users share. The auth rules
//! themselves are checked by the event persister; this module shapes the
//! member events and the answers.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::client::events::client_events;
use crate::api::limits::check_reason;
use crate::api::{JsonBody, OptionalJsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::rooms::access::{require_history_access, require_joined, NOT_A_MEMBER};
use crate::rooms::restricted::join_authoriser;
use crate::storage::{accounts, rooms};
use crate::streams::token::parse_pagination;

#[derive(Deserialize, Default)]
pub struct ReasonBody {
    reason: Option<String>,
}

#[derive(Deserialize)]
pub struct TargetBody {
    user_id: String,
    reason: Option<String>,
}

/// GET /_matrix/client/v3/joined_rooms
pub async fn joined_rooms(node: web::Data<Node>, requester: Requester) -> ApiResult<HttpResponse> {
    let joined = rooms::joined_rooms(&node.pool, &requester.user_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "joined_rooms": joined })))
}

/// Rooms in one page of `GET /mutual_rooms` (Synapse's batch).
const MUTUAL_ROOMS_PER_PAGE: usize = 100;

/// GET /_matrix/client/v1/mutual_rooms
///
/// The rooms the requester and `user_id` are both joined to, by room id
/// (bytewise); a page is the rooms after the `from` token's, which is the
/// last room id of the page before, unpadded URL-safe base64 (Synapse's
/// token, which needs no state on the server). Asking about oneself, a
/// missing, repeated or non-compliant `user_id`, a repeated or malformed
/// `from`: 400 `M_INVALID_PARAM` (`M_MISSING_PARAM` for a missing one).
pub async fn mutual_rooms(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<Vec<(String, String)>>,
) -> ApiResult<HttpResponse> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    let only = |name: &str| -> ApiResult<Option<&str>> {
        let mut values = query.iter().filter(|(key, _)| key == name);
        let first = values.next().map(|(_, value)| value.as_str());
        if values.next().is_some() {
            return Err(ApiError::invalid_param(format!("`{name}` is given twice")));
        }
        Ok(first)
    };
    let user_id =
        only("user_id")?.ok_or_else(|| ApiError::missing_param("`user_id` is required"))?;
    let other = check_user_id(user_id)?;
    if other.validate_strict().is_err() {
        return Err(ApiError::invalid_param(format!(
            "`{user_id}` is not a compliant user id"
        )));
    }
    if other.as_str() == requester.user_id {
        return Err(ApiError::invalid_param(
            "you cannot ask which rooms you share with yourself",
        ));
    }
    let after = match only("from")?.filter(|from| !from.is_empty()) {
        None => None,
        Some(from) => Some(
            URL_SAFE_NO_PAD
                .decode(from)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| ApiError::invalid_param("malformed `from` token"))?,
        ),
    };

    let mut shared =
        rooms::mutual_joined_rooms(&node.pool, &requester.user_id, other.as_str()).await?;
    shared.sort_unstable();
    let (page, last) = mutual_rooms_page(&shared, after.as_deref(), MUTUAL_ROOMS_PER_PAGE);
    let mut answer = json!({ "joined": page, "count": shared.len() });
    if let Some(last) = last {
        answer["next_batch"] = json!(URL_SAFE_NO_PAD.encode(last));
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// The page of `sorted` rooms after the room `after` (which need not be
/// one of them), and the last room of the page when more follow it.
fn mutual_rooms_page<'a>(
    sorted: &'a [String],
    after: Option<&str>,
    per_page: usize,
) -> (&'a [String], Option<&'a str>) {
    let start = after.map_or(0, |after| {
        sorted.partition_point(|room| room.as_str() <= after)
    });
    let rest = &sorted[start..];
    if rest.len() <= per_page {
        return (rest, None);
    }
    let page = &rest[..per_page];
    (page, page.last().map(String::as_str))
}

/// POST /_matrix/client/v3/join/{roomIdOrAlias}
pub async fn join_by_id_or_alias(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ReasonBody>,
) -> ApiResult<HttpResponse> {
    let room_id = resolve_room(&node, &path.into_inner()).await?;
    join(&node, &requester, &room_id, body.reason).await
}

/// The room a `{roomIdOrAlias}` path segment names.
pub async fn resolve_room(node: &Node, target: &str) -> ApiResult<String> {
    if target.starts_with('#') {
        ruma::RoomAliasId::parse(target)
            .map_err(|_| ApiError::invalid_param("malformed room alias"))?;
        rooms::alias_room(&node.pool, target)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("room alias {target} not found")))
    } else if target.starts_with('!') {
        Ok(target.to_owned())
    } else {
        Err(ApiError::invalid_param(format!(
            "`{target}` is neither a room id nor a room alias"
        )))
    }
}

/// POST /_matrix/client/v3/knock/{roomIdOrAlias}
///
/// Asks to be let into a room whose join rule is `knock` or
/// `knock_restricted`; the room version's auth rules refuse any other (403).
/// `via`/`server_name` name servers to knock through, which only matters
/// over federation: this server knocks on its own rooms.
pub async fn knock(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ReasonBody>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(&resolve_room(&node, &path.into_inner()).await?)?;
    check_reason(body.reason.as_deref())?;
    if rooms::room_info(&node.pool, room_id.as_str())
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "room {room_id} is not known to this server, and knocking over federation is not supported"
        )));
    }
    let mut content = own_member_content(&node, &requester.user_id, "knock").await?;
    if let Some(reason) = body.reason {
        content["reason"] = json!(reason);
    }
    node.send_state_event(
        &room_id,
        &requester.user()?,
        "m.room.member",
        &requester.user_id,
        content,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "room_id": room_id })))
}

/// POST /_matrix/client/v3/rooms/{roomId}/join
pub async fn join_room(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ReasonBody>,
) -> ApiResult<HttpResponse> {
    join(&node, &requester, &path.into_inner(), body.reason).await
}

async fn join(
    node: &Node,
    requester: &Requester,
    room_id: &str,
    reason: Option<String>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(room_id)?;
    check_reason(reason.as_deref())?;
    let user = requester.user()?;
    let mut content = own_member_content(node, &requester.user_id, "join").await?;
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    if let Some(authoriser) = join_authoriser(node, room_id.as_str(), &user).await? {
        content["join_authorised_via_users_server"] = json!(authoriser);
    }
    node.send_state_event(
        &room_id,
        &requester.user()?,
        "m.room.member",
        &requester.user_id,
        content,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "room_id": room_id })))
}

/// POST /_matrix/client/v3/rooms/{roomId}/invite
pub async fn invite(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(&path.into_inner())?;
    let target = check_user_id(&body.user_id)?;
    check_reason(body.reason.as_deref())?;
    if target.server_name() != node.config.server_name.as_str() {
        return Err(ApiError::forbidden(
            "inviting users of other servers needs federation, which this server does not do yet",
        ));
    }
    require_joined(&node, room_id.as_str(), &requester.user_id).await?;
    if !accounts::user_exists(&node.pool, &body.user_id).await? {
        return Err(ApiError::not_found(format!(
            "user {} does not exist",
            body.user_id
        )));
    }
    let mut content = json!({ "membership": "invite" });
    if let Some(profile) = accounts::profile(&node.pool, &body.user_id).await? {
        if let Some(name) = profile.displayname {
            content["displayname"] = json!(name);
        }
    }
    if let Some(reason) = body.reason {
        content["reason"] = json!(reason);
    }
    node.send_state_event(
        &room_id,
        &requester.user()?,
        "m.room.member",
        target.as_str(),
        content,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// POST /_matrix/client/v3/rooms/{roomId}/leave
pub async fn leave(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ReasonBody>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(&path.into_inner())?;
    check_reason(body.reason.as_deref())?;
    match rooms::membership(&node.pool, room_id.as_str(), &requester.user_id).await? {
        // Leaving a room one knocked on rescinds the knock.
        Some(m) if ["join", "invite", "knock"].contains(&m.membership.as_str()) => {}
        // Leaving a room one is not in is a no-op, as in Synapse.
        Some(m) if m.membership == "leave" => return Ok(HttpResponse::Ok().json(json!({}))),
        _ => return Err(ApiError::forbidden(NOT_A_MEMBER)),
    }
    let mut content = json!({ "membership": "leave" });
    if let Some(reason) = body.reason {
        content["reason"] = json!(reason);
    }
    node.send_state_event(
        &room_id,
        &requester.user()?,
        "m.room.member",
        &requester.user_id,
        content,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Kick, ban or unban. `target_must_be` names the target's memberships the
/// change applies to, and what to answer otherwise; it is looked at only once
/// the requester is known to be in the room, so that a non-member learns
/// nothing of anyone's membership.
async fn set_membership_of_other(
    node: &Node,
    requester: &Requester,
    room_id: &str,
    body: TargetBody,
    membership: &str,
    target_must_be: Option<(&[&str], &str)>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(room_id)?;
    let target = check_user_id(&body.user_id)?;
    check_reason(body.reason.as_deref())?;
    require_joined(node, room_id.as_str(), &requester.user_id).await?;
    if let Some((memberships, otherwise)) = target_must_be {
        let current = rooms::membership(&node.pool, room_id.as_str(), target.as_str()).await?;
        if !current.is_some_and(|m| memberships.contains(&m.membership.as_str())) {
            return Err(ApiError::forbidden(format!("{} {otherwise}", body.user_id)));
        }
    }
    let mut content = json!({ "membership": membership });
    if let Some(reason) = body.reason {
        content["reason"] = json!(reason);
    }
    node.send_state_event(
        &room_id,
        &requester.user()?,
        "m.room.member",
        target.as_str(),
        content,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// POST /_matrix/client/v3/rooms/{roomId}/kick
pub async fn kick(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    let kickable = Some((&["join", "invite", "knock"][..], "is not in the room"));
    set_membership_of_other(&node, &requester, &room_id, body, "leave", kickable).await
}

/// POST /_matrix/client/v3/rooms/{roomId}/ban
pub async fn ban(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<HttpResponse> {
    set_membership_of_other(&node, &requester, &path.into_inner(), body, "ban", None).await
}

/// POST /_matrix/client/v3/rooms/{roomId}/unban
pub async fn unban(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    let banned = Some((&["ban"][..], "is not banned"));
    set_membership_of_other(&node, &requester, &room_id, body, "leave", banned).await
}

/// POST /_matrix/client/v3/rooms/{roomId}/forget
pub async fn forget(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    match rooms::membership(&node.pool, &room_id, &requester.user_id).await? {
        Some(m) if ["join", "invite", "knock"].contains(&m.membership.as_str()) => {
            Err(ApiError::new(
                ErrCode::Unknown,
                "you must leave the room before forgetting it",
            ))
        }
        Some(_) => {
            rooms::forget_room(&node.pool, &requester.user_id, &room_id).await?;
            node.forget_memberships(&requester.user_id).await?;
            Ok(HttpResponse::Ok().json(json!({})))
        }
        None => Err(ApiError::not_found("you have never been in this room")),
    }
}

/// GET /_matrix/client/v3/rooms/{roomId}/joined_members
pub async fn joined_members(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    require_joined(&node, &room_id, &requester.user_id).await?;
    let mut joined = serde_json::Map::new();
    for event in rooms::joined_members(&node.pool, &room_id).await? {
        let content = event.content();
        let mut member = serde_json::Map::new();
        if let Some(name) = content.get("displayname").filter(|v| v.is_string()) {
            member.insert("display_name".into(), name.clone());
        }
        if let Some(url) = content.get("avatar_url").filter(|v| v.is_string()) {
            member.insert("avatar_url".into(), url.clone());
        }
        if let Some(user_id) = event.state_key {
            joined.insert(user_id, Value::Object(member));
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "joined": joined })))
}

#[derive(Deserialize)]
pub struct MembersQuery {
    at: Option<String>,
    membership: Option<String>,
    not_membership: Option<String>,
}

/// GET /_matrix/client/v3/rooms/{roomId}/members
pub async fn members(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    query: web::Query<MembersQuery>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    let visible_upto = require_history_access(&node, &room_id, &requester.user_id)
        .await?
        .upto;
    let at = match &query.at {
        Some(token) => {
            let token =
                parse_pagination(token).map_err(|e| ApiError::invalid_param(e.to_string()))?;
            token.max_stream_pos().min(visible_upto)
        }
        None => visible_upto,
    };
    let members = if at == i64::MAX {
        rooms::current_state(&node.pool, &room_id).await?
    } else {
        match rooms::state_group_at(&node.pool, &room_id, at).await? {
            Some(group) => rooms::state_group_events(&node.pool, group).await?,
            None => Vec::new(),
        }
    };
    let members: Vec<_> = members
        .into_iter()
        .filter(|e| e.kind == "m.room.member")
        .filter(|e| {
            let membership = e
                .content()
                .get("membership")
                .and_then(Value::as_str)
                .unwrap_or_default();
            query.membership.as_deref().is_none_or(|m| m == membership)
                && query
                    .not_membership
                    .as_deref()
                    .is_none_or(|m| m != membership)
        })
        .collect();
    let chunk = client_events(&node, &members, Some(&requester)).await?;
    Ok(HttpResponse::Ok().json(json!({ "chunk": chunk })))
}

/// The content of a member event a user sends about themselves: the
/// membership, with their display name and avatar from their profile.
pub async fn own_member_content(node: &Node, user_id: &str, membership: &str) -> ApiResult<Value> {
    let mut content = json!({ "membership": membership });
    if let Some(profile) = accounts::profile(&node.pool, user_id).await? {
        if let Some(name) = profile.displayname {
            content["displayname"] = json!(name);
        }
        if let Some(url) = profile.avatar_url {
            content["avatar_url"] = json!(url);
        }
    }
    Ok(content)
}

pub fn check_room_id(room_id: &str) -> ApiResult<ruma::OwnedRoomId> {
    ruma::RoomId::parse(room_id)
        .map_err(|_| ApiError::invalid_param(format!("`{room_id}` is not a valid room id")))
}

pub fn check_user_id(user_id: &str) -> ApiResult<ruma::OwnedUserId> {
    ruma::UserId::parse(user_id)
        .map_err(|_| ApiError::invalid_param(format!("`{user_id}` is not a valid user id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutual_rooms_come_in_pages_after_the_last_room_answered() {
        let rooms: Vec<String> = ["!a:x", "!b:x", "!c:x", "!d:x", "!e:x"]
            .iter()
            .map(|r| r.to_string())
            .collect();
        let (page, last) = mutual_rooms_page(&rooms, None, 2);
        assert_eq!(page, &rooms[..2]);
        assert_eq!(last, Some("!b:x"));
        let (page, last) = mutual_rooms_page(&rooms, last, 2);
        assert_eq!(page, &rooms[2..4]);
        let (page, last) = mutual_rooms_page(&rooms, last, 2);
        assert_eq!(page, &rooms[4..]);
        assert_eq!(last, None);
        // A token naming a room the users no longer share still pages on.
        let (page, _) = mutual_rooms_page(&rooms, Some("!bb:x"), 10);
        assert_eq!(page, &rooms[2..]);
        let (page, last) = mutual_rooms_page(&rooms, None, 5);
        assert_eq!((page.len(), last), (5, None));
    }
}
