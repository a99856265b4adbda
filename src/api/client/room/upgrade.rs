//! Room upgrades (`/rooms/{roomId}/upgrade`), as Synapse's `upgrade_room`
//! does them: a new room of the new version whose create event names its
//! `predecessor`, created with the old room's state (name, topic, avatar, join
//! rules, history visibility, guest access, encryption, server ACLs, power
//! levels, bans, and a space's children) in one write; then the tombstone in
//! the old room, the local aliases moved, and the old room's power levels
//! raised so that ordinary members can no longer speak or invite there.
//!
//! The upgrader's power in the new room is raised while the state is copied
//! (they must be able to send every copied event and the bans) and set back
//! to what it was by the power levels sent last.

use actix_web::{web, HttpResponse};
use ruma::events::StateEventType;
use ruma::{OwnedUserId, RoomVersionId, UserId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::client::membership::{check_room_id, check_user_id, own_member_content};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::roles::events::{CreateRoom, InitialEvent};
use crate::rooms::access::require_joined;
use crate::rooms::power::current_power_levels;
use crate::rooms::version::parse_supported;
use crate::storage::rooms;
use crate::storage::rooms::StoredEvent;

#[derive(Deserialize)]
pub struct UpgradeRoomRequest {
    new_version: String,
    /// Further creators of the new room (room version 12).
    #[serde(default)]
    additional_creators: Vec<String>,
}

/// The state events copied to the new room, as Synapse copies them.
const COPIED_STATE: [&str; 9] = [
    "m.room.join_rules",
    "m.room.name",
    "m.room.topic",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.power_levels",
];

/// POST /_matrix/client/v3/rooms/{roomId}/upgrade
pub async fn upgrade_room(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<UpgradeRoomRequest>,
) -> ApiResult<HttpResponse> {
    let old_room_id = check_room_id(&path.into_inner())?;
    let new_version = parse_supported(&body.new_version).ok_or_else(|| {
        ApiError::new(
            ErrCode::UnsupportedRoomVersion,
            format!("room version `{}` is not supported", body.new_version),
        )
    })?;
    let additional_creators = body
        .additional_creators
        .iter()
        .map(|user| check_user_id(user))
        .collect::<ApiResult<Vec<_>>>()?;
    let user = requester.user()?;
    let Some(old_room) = rooms::room_info(&node.pool, old_room_id.as_str()).await? else {
        return Err(ApiError::not_found(format!("unknown room {old_room_id}")));
    };
    require_joined(&node, old_room_id.as_str(), user.as_str()).await?;
    let (_, levels) = current_power_levels(&node.pool, old_room_id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown room {old_room_id}")))?;
    if !levels.user_can_send_state(&user, StateEventType::RoomTombstone) {
        return Err(ApiError::forbidden(
            "you do not have the power to upgrade this room",
        ));
    }

    let old_state = rooms::current_state(&node.pool, old_room_id.as_str()).await?;
    let state_content = |kind: &str| {
        old_state
            .iter()
            .find(|e| e.kind == kind && e.state_key.as_deref() == Some(""))
            .map(|e| e.content().clone())
    };
    let old_create = state_content("m.room.create").unwrap_or_default();
    let old_power_levels = state_content("m.room.power_levels");
    let creators: Vec<&UserId> = std::iter::once(&*user)
        .chain(additional_creators.iter().map(|u| &**u))
        .collect();

    let create_content = upgraded_create_content(
        old_room_id.as_str(),
        &old_create,
        &new_version,
        &additional_creators,
    );
    let mut events = vec![InitialEvent {
        sender: user.clone(),
        kind: "m.room.member".into(),
        state_key: Some(user.to_string()),
        content: own_member_content(&node, user.as_str(), "join").await?,
    }];
    let is_space = old_create.get("type").and_then(Value::as_str) == Some("m.space");
    for event in &old_state {
        let Some(state_key) = &event.state_key else {
            continue;
        };
        let copied = (COPIED_STATE.contains(&event.kind.as_str()) && state_key.is_empty())
            // A removed child of a space has empty content: not copied.
            || (is_space && event.kind == "m.space.child" && !is_empty_content(event));
        if !copied {
            continue;
        }
        let content = if event.kind == "m.room.power_levels" {
            let raised = raise_for_copying(event.content(), user.as_str());
            without_creators(&raised, &new_version, &creators)
        } else {
            event.content().clone()
        };
        let at = if event.kind == "m.room.power_levels" {
            // First after the join: the events after it need its powers.
            1
        } else {
            events.len()
        };
        events.insert(
            at,
            InitialEvent {
                sender: user.clone(),
                kind: event.kind.clone(),
                state_key: Some(state_key.clone()),
                content,
            },
        );
    }
    events.extend(banned(&old_state).map(|ban| InitialEvent {
        sender: user.clone(),
        kind: "m.room.member".into(),
        state_key: ban.state_key.clone(),
        content: ban.content().clone(),
    }));

    let persisted = node
        .create_room(CreateRoom {
            room_version: new_version.clone(),
            creator: user.clone(),
            create_content,
            initial_events: events,
            is_public: old_room.is_public,
            request_id: crate::util::random_string(24),
        })
        .await?;
    let new_room_id = persisted.room_id;

    node.send_state_event(
        &old_room_id,
        &user,
        "m.room.tombstone",
        "",
        json!({ "body": "This room has been replaced", "replacement_room": new_room_id }),
    )
    .await?;
    move_aliases(
        &node,
        &user,
        &old_room_id,
        &new_room_id,
        state_content("m.room.canonical_alias"),
    )
    .await?;
    if old_room.is_public {
        // The directory lists the new room instead (Synapse's
        // `transfer_room_state_on_room_upgrade`).
        rooms::set_room_public(&node.pool, old_room_id.as_str(), false).await?;
    }
    if let Some(old_power_levels) = old_power_levels {
        if let Some(restricted) = restricted_power_levels(&old_power_levels) {
            if let Err(error) = node
                .send_state_event(&old_room_id, &user, "m.room.power_levels", "", restricted)
                .await
            {
                tracing::warn!(room_id = %old_room_id, error = %error, "could not restrict the old room's power levels");
            }
        }
        node.send_state_event(
            &new_room_id,
            &user,
            "m.room.power_levels",
            "",
            without_creators(&old_power_levels, &new_version, &creators),
        )
        .await?;
    }
    Ok(HttpResponse::Ok().json(json!({ "replacement_room": new_room_id })))
}

/// The new room's create content: its `predecessor`, and what carries over
/// from the old create event (`m.federate: false`, the room `type`).
/// `predecessor.event_id` is left out: the tombstone is sent after the new
/// room exists, and the spec makes the field optional.
fn upgraded_create_content(
    old_room_id: &str,
    old_create: &Value,
    new_version: &RoomVersionId,
    additional_creators: &[OwnedUserId],
) -> Map<String, Value> {
    let mut content = Map::new();
    content.insert("predecessor".into(), json!({ "room_id": old_room_id }));
    if old_create.get("m.federate") == Some(&Value::Bool(false)) {
        content.insert("m.federate".into(), json!(false));
    }
    if let Some(kind) = old_create.get("type") {
        content.insert("type".into(), kind.clone());
    }
    if *new_version == RoomVersionId::V12 && !additional_creators.is_empty() {
        content.insert("additional_creators".into(), json!(additional_creators));
    }
    content
}

fn is_empty_content(event: &StoredEvent) -> bool {
    event.content().as_object().is_none_or(Map::is_empty)
}

/// The banned members of the old room.
fn banned(state: &[StoredEvent]) -> impl Iterator<Item = &StoredEvent> {
    state.iter().filter(|e| {
        e.kind == "m.room.member"
            && e.content().get("membership").and_then(Value::as_str) == Some("ban")
    })
}

/// A power level as stored: an integer, or (in old rooms) a string of one.
fn level(value: Option<&Value>, default: i64) -> i64 {
    match value {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(default),
        _ => default,
    }
}

/// The old power levels with `user` raised to what copying the state needs:
/// the highest of `state_default`, `ban` and every `events` level (Synapse's
/// `clone_existing_room`).
fn raise_for_copying(power_levels: &Value, user: &str) -> Value {
    let mut content = power_levels.clone();
    let Some(object) = content.as_object_mut() else {
        return content;
    };
    let events_max = object
        .get("events")
        .and_then(Value::as_object)
        .map(|events| {
            events
                .values()
                .map(|v| level(Some(v), 0))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let needed = level(object.get("state_default"), 50)
        .max(level(object.get("ban"), 50))
        .max(events_max);
    let users_default = level(object.get("users_default"), 0);
    if !object.get("users").is_some_and(Value::is_object) {
        object.insert("users".into(), json!({}));
    }
    if let Some(users) = object.get_mut("users").and_then(Value::as_object_mut) {
        if level(users.get(user), users_default) < needed {
            users.insert(user.to_owned(), json!(needed));
        }
    }
    content
}

/// `power_levels` without the new room's creators in `users`, where the new
/// room's version gives creators a power above every level (version 12).
fn without_creators(power_levels: &Value, version: &RoomVersionId, creators: &[&UserId]) -> Value {
    let mut content = power_levels.clone();
    if *version != RoomVersionId::V12 {
        return content;
    }
    if let Some(users) = content.get_mut("users").and_then(Value::as_object_mut) {
        for creator in creators {
            users.remove(creator.as_str());
        }
    }
    content
}

/// The old room's power levels with `invite` and `events_default` raised
/// to at least `max(users_default + 1, 50)`, so that ordinary members can
/// no longer speak or invite there; `None` when they already are.
fn restricted_power_levels(power_levels: &Value) -> Option<Value> {
    let mut content = power_levels.clone();
    let object = content.as_object_mut()?;
    let restricted = (level(object.get("users_default"), 0) + 1).max(50);
    let mut updated = false;
    for key in ["invite", "events_default"] {
        if level(object.get(key), 0) < restricted {
            object.insert(key.into(), json!(restricted));
            updated = true;
        }
    }
    updated.then_some(content)
}

/// Moves the old room's local aliases to the new room, and its canonical
/// alias with them (Synapse's `_move_aliases_to_new_room`): the local
/// aliases leave the old room's `m.room.canonical_alias` and make the new
/// room's. Failing to send either event does not fail the upgrade.
async fn move_aliases(
    node: &Node,
    user: &UserId,
    old_room_id: &ruma::RoomId,
    new_room_id: &ruma::RoomId,
    canonical_alias: Option<Value>,
) -> ApiResult<()> {
    rooms::move_aliases(&node.pool, old_room_id.as_str(), new_room_id.as_str()).await?;
    let Some(old_content) = canonical_alias else {
        return Ok(());
    };
    let server_name = node.config.server_name.as_str();
    let is_local = |alias: &str| {
        ruma::RoomAliasId::parse(alias).is_ok_and(|a| a.server_name().as_str() == server_name)
    };
    let mut old = old_content.as_object().cloned().unwrap_or_default();
    let mut new = Map::new();
    if let Some(alias) = old
        .get("alias")
        .and_then(Value::as_str)
        .filter(|a| is_local(a))
    {
        new.insert("alias".into(), json!(alias));
        old.remove("alias");
    }
    if let Some(alt_aliases) = old.get("alt_aliases").and_then(Value::as_array).cloned() {
        let (local, remote): (Vec<Value>, Vec<Value>) = alt_aliases
            .into_iter()
            .partition(|a| a.as_str().is_some_and(is_local));
        if !local.is_empty() {
            new.insert("alt_aliases".into(), Value::Array(local));
        }
        if remote.is_empty() {
            old.remove("alt_aliases");
        } else {
            old.insert("alt_aliases".into(), Value::Array(remote));
        }
    }
    for (room_id, content) in [(old_room_id, old), (new_room_id, new)] {
        if let Err(error) = node
            .send_state_event(
                room_id,
                user,
                "m.room.canonical_alias",
                "",
                Value::Object(content),
            )
            .await
        {
            tracing::warn!(room_id = %room_id, error = %error, "could not move the canonical alias");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrader_is_raised_to_what_copying_needs() {
        let levels = json!({
            "users": { "@a:x": 60 },
            "events": { "m.room.tombstone": 60, "m.room.server_acl": 100 },
            "state_default": 50,
            "ban": 50,
        });
        let raised = raise_for_copying(&levels, "@a:x");
        assert_eq!(raised["users"]["@a:x"], 100);
        let already = raise_for_copying(&json!({ "users": { "@a:x": 150 } }), "@a:x");
        assert_eq!(already["users"]["@a:x"], 150);
    }

    #[test]
    fn the_old_room_is_closed_to_ordinary_members() {
        let restricted =
            restricted_power_levels(&json!({ "users_default": 0, "invite": 0 })).expect("changed");
        assert_eq!(restricted["invite"], 50);
        assert_eq!(restricted["events_default"], 50);
        let high = restricted_power_levels(&json!({ "users_default": 60 })).expect("changed");
        assert_eq!(high["events_default"], 61);
        assert_eq!(
            restricted_power_levels(&json!({ "invite": 50, "events_default": 50 })),
            None
        );
    }

    #[test]
    fn version_12_creators_leave_the_users_map() {
        let alice = ruma::user_id!("@alice:x");
        let levels = json!({ "users": { "@alice:x": 100, "@bob:x": 50 } });
        let v12 = without_creators(&levels, &RoomVersionId::V12, &[alice]);
        assert_eq!(v12["users"], json!({ "@bob:x": 50 }));
        let v11 = without_creators(&levels, &RoomVersionId::V11, &[alice]);
        assert_eq!(v11, levels);
    }
}
