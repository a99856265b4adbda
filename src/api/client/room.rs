//! Room creation (`/createRoom`): presets, initial state, invites, aliases,
//! power-level overrides and room versions; room upgrades ([`upgrade`]),
//! which create their replacement room the same way; and a room's summary
//! for those who may see it ([`summary`]).

pub mod summary;
pub mod upgrade;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::client::membership::own_member_content;
use crate::api::limits::{
    check_bytes, check_count, MAX_ALIAS_BYTES, MAX_CREATE_ROOM_INVITES, MAX_INITIAL_STATE_EVENTS,
};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::roles::events::{CreateRoom, InitialEvent};
use crate::rooms::version::parse_supported;
use crate::storage::{accounts, rooms};

#[derive(Deserialize)]
pub struct CreateRoomRequest {
    visibility: Option<Visibility>,
    room_alias_name: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    invite: Vec<String>,
    room_version: Option<String>,
    creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    initial_state: Vec<StateEventSpec>,
    preset: Option<Preset>,
    #[serde(default)]
    is_direct: bool,
    power_level_content_override: Option<Map<String, Value>>,
}

#[derive(Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    Private,
}

#[derive(Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    PrivateChat,
    PublicChat,
    TrustedPrivateChat,
}

#[derive(Deserialize)]
pub struct StateEventSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: String,
    content: Map<String, Value>,
}

/// POST /_matrix/client/v3/createRoom
pub async fn create_room(
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<CreateRoomRequest>,
) -> ApiResult<HttpResponse> {
    check_count(
        "initial_state",
        body.initial_state.len(),
        MAX_INITIAL_STATE_EVENTS,
    )?;
    check_count("invite", body.invite.len(), MAX_CREATE_ROOM_INVITES)?;
    let version_text = body
        .room_version
        .clone()
        .unwrap_or_else(|| node.config.default_room_version.clone());
    let version = parse_supported(&version_text).ok_or_else(|| {
        ApiError::new(
            ErrCode::UnsupportedRoomVersion,
            format!("room version `{version_text}` is not supported"),
        )
    })?;
    let is_v12 = version == ruma::RoomVersionId::V12;
    let visibility = body.visibility.unwrap_or(Visibility::Private);
    let preset = body.preset.unwrap_or(match visibility {
        Visibility::Public => Preset::PublicChat,
        Visibility::Private => Preset::PrivateChat,
    });

    let alias = match &body.room_alias_name {
        Some(name) => {
            let alias = format!("#{}:{}", name, node.config.server_name);
            check_bytes("the room alias", &alias, MAX_ALIAS_BYTES)?;
            if name.is_empty()
                || name.contains(':')
                || name.contains(char::is_whitespace)
                || ruma::RoomAliasId::parse(&alias).is_err()
            {
                return Err(ApiError::new(
                    ErrCode::InvalidParam,
                    "invalid room_alias_name",
                ));
            }
            if rooms::alias_room(&node.pool, &alias).await?.is_some() {
                return Err(ApiError::new(
                    ErrCode::RoomInUse,
                    "room alias already taken",
                ));
            }
            Some(alias)
        }
        None => None,
    };

    for invitee in &body.invite {
        let user_id = ruma::UserId::parse(invitee)
            .map_err(|_| ApiError::invalid_param(format!("`{invitee}` is not a valid user id")))?;
        if user_id.server_name() != node.config.server_name.as_str() {
            return Err(ApiError::forbidden("inviting users of other servers needs federation, which this server does not do yet"));
        }
        if !accounts::user_exists(&node.pool, invitee).await? {
            return Err(ApiError::not_found(format!(
                "user {invitee} does not exist"
            )));
        }
    }

    let mut create_content = body.creation_content.clone().unwrap_or_default();
    create_content.remove("creator");
    create_content.remove("room_version");
    if is_v12 && preset == Preset::TrustedPrivateChat && !body.invite.is_empty() {
        let mut creators: Vec<Value> = create_content
            .get("additional_creators")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        creators.extend(body.invite.iter().map(|u| json!(u)));
        create_content.insert("additional_creators".into(), Value::Array(creators));
    }

    let creator = requester.user()?;
    let state_event = |kind: &str, state_key: &str, content: Value| InitialEvent {
        sender: creator.clone(),
        kind: kind.to_owned(),
        state_key: Some(state_key.to_owned()),
        content,
    };
    let mut events = Vec::new();

    let join = own_member_content(&node, creator.as_str(), "join").await?;
    events.push(state_event("m.room.member", creator.as_str(), join));

    // Power levels: the spec's defaults, creators and trusted invitees, then the override.
    let mut users = Map::new();
    if !is_v12 {
        users.insert(creator.to_string(), json!(100));
        if preset == Preset::TrustedPrivateChat {
            for invitee in &body.invite {
                users.insert(invitee.clone(), json!(100));
            }
        }
    }
    let mut power_levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "historical": 100,
    });
    if let (Some(overrides), Some(target)) = (
        &body.power_level_content_override,
        power_levels.as_object_mut(),
    ) {
        for (key, value) in overrides {
            target.insert(key.clone(), value.clone());
        }
    }
    let initial_keys: Vec<(String, String)> = body
        .initial_state
        .iter()
        .map(|e| (e.kind.clone(), e.state_key.clone()))
        .collect();
    let overridden = |kind: &str| initial_keys.iter().any(|(k, s)| k == kind && s.is_empty());
    if !overridden("m.room.power_levels") {
        events.push(state_event("m.room.power_levels", "", power_levels));
    }
    if let Some(alias) = &alias {
        events.push(state_event(
            "m.room.canonical_alias",
            "",
            json!({ "alias": alias }),
        ));
    }
    let join_rule = if preset == Preset::PublicChat {
        "public"
    } else {
        "invite"
    };
    if !overridden("m.room.join_rules") {
        events.push(state_event(
            "m.room.join_rules",
            "",
            json!({ "join_rule": join_rule }),
        ));
    }
    if !overridden("m.room.history_visibility") {
        events.push(state_event(
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "shared" }),
        ));
    }
    if !overridden("m.room.guest_access") {
        let guest_access = if preset == Preset::PublicChat {
            "forbidden"
        } else {
            "can_join"
        };
        events.push(state_event(
            "m.room.guest_access",
            "",
            json!({ "guest_access": guest_access }),
        ));
    }
    for spec in &body.initial_state {
        if spec.kind == "m.room.create" || spec.kind == "m.room.member" {
            return Err(ApiError::bad_json(format!(
                "initial_state cannot contain {} events",
                spec.kind
            )));
        }
        events.push(state_event(
            &spec.kind,
            &spec.state_key,
            Value::Object(spec.content.clone()),
        ));
    }
    if let Some(name) = &body.name {
        events.push(state_event("m.room.name", "", json!({ "name": name })));
    }
    if let Some(topic) = &body.topic {
        events.push(state_event(
            "m.room.topic",
            "",
            json!({ "topic": topic, "m.topic": [{ "body": topic, "mimetype": "text/plain" }] }),
        ));
    }
    for invitee in &body.invite {
        let mut content = json!({ "membership": "invite" });
        if body.is_direct {
            content["is_direct"] = json!(true);
        }
        if let Ok(Some(profile)) = accounts::profile(&node.pool, invitee).await {
            if let Some(name) = profile.displayname {
                content["displayname"] = json!(name);
            }
        }
        events.push(state_event("m.room.member", invitee, content));
    }

    let persisted = node
        .create_room(CreateRoom {
            room_version: version,
            creator: creator.clone(),
            create_content,
            initial_events: events,
            is_public: visibility == Visibility::Public,
            // Made here, where the request enters the server: a mailbox
            // message delivered twice then creates one room.
            request_id: crate::util::random_string(24),
        })
        .await?;
    if let Some(alias) = &alias {
        if !rooms::create_alias(
            &node.pool,
            alias,
            persisted.room_id.as_str(),
            creator.as_str(),
        )
        .await?
        {
            tracing::warn!(alias, "alias was taken while the room was being created");
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "room_id": persisted.room_id })))
}
