//! Room creation: presets, visibility, name and topic, invites, initial state,
//! aliases, direct chats, power-level overrides and room versions.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

const CREATE_ROOM: &str = "/_matrix/client/v3/createRoom";

fn find<'a>(state: &'a [Value], kind: &str, state_key: &str) -> Option<&'a Value> {
    state
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == state_key)
}

async fn public_room_ids(user: &User) -> Vec<String> {
    let (status, body) = user.get("/_matrix/client/v3/publicRooms").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|r| r["room_id"].as_str().expect("room_id").to_owned())
        .collect()
}

#[actix_web::test]
async fn a_private_chat_by_default() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    assert!(room_id.starts_with('!'), "{room_id}");

    let state = alice.room_state(&room_id).await;
    let create = find(&state, "m.room.create", "").expect("a create event");
    assert_eq!(create["sender"], alice.user_id);
    assert_eq!(
        create["content"]["room_version"], "12",
        "the default version"
    );
    assert_eq!(
        find(&state, "m.room.member", &alice.user_id).expect("creator's membership")["content"]
            ["membership"],
        "join"
    );
    assert_eq!(
        alice.state_content(&room_id, "m.room.join_rules", "").await,
        json!({ "join_rule": "invite" })
    );
    assert_eq!(
        alice
            .state_content(&room_id, "m.room.history_visibility", "")
            .await,
        json!({ "history_visibility": "shared" })
    );
    assert_eq!(
        alice
            .state_content(&room_id, "m.room.guest_access", "")
            .await,
        json!({ "guest_access": "can_join" })
    );
    let power = alice
        .state_content(&room_id, "m.room.power_levels", "")
        .await;
    assert_eq!(power["users_default"], 0, "{power}");
    assert_eq!(power["state_default"], 50, "{power}");
    // In v12 the creator's power comes from the create event, not the users map.
    assert!(power["users"].get(&alice.user_id).is_none(), "{power}");
    assert!(
        !public_room_ids(&alice).await.contains(&room_id),
        "private by default"
    );
}

#[actix_web::test]
async fn presets_choose_join_rules_and_guest_access() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;

    let public = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(
        alice.state_content(&public, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    assert_eq!(
        alice
            .state_content(&public, "m.room.guest_access", "")
            .await["guest_access"],
        "forbidden"
    );
    // A public preset alone does not publish the room in the directory.
    assert!(!public_room_ids(&alice).await.contains(&public));

    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    assert_eq!(
        alice.state_content(&private, "m.room.join_rules", "").await["join_rule"],
        "invite"
    );

    // trusted_private_chat in v11: invitees get the creator's power level.
    let trusted = alice
        .create_room(json!({
            "preset": "trusted_private_chat",
            "room_version": "11",
            "invite": [bob.user_id],
        }))
        .await;
    let power = alice
        .state_content(&trusted, "m.room.power_levels", "")
        .await;
    assert_eq!(power["users"][&alice.user_id], 100, "{power}");
    assert_eq!(power["users"][&bob.user_id], 100, "{power}");

    // ... and in v12 they become additional creators.
    let trusted = alice
        .create_room(json!({
            "preset": "trusted_private_chat",
            "room_version": "12",
            "invite": [bob.user_id],
        }))
        .await;
    let create = alice.state_content(&trusted, "m.room.create", "").await;
    assert_eq!(
        create["additional_creators"],
        json!([bob.user_id]),
        "{create}"
    );
}

#[actix_web::test]
async fn public_visibility_lists_the_room_in_the_directory() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice
        .create_room(json!({ "visibility": "public", "name": "Lobby", "topic": "Say hi" }))
        .await;
    assert_eq!(
        alice.state_content(&room_id, "m.room.join_rules", "").await["join_rule"],
        "public",
        "visibility public implies the public_chat preset"
    );
    let (status, body) = alice.get("/_matrix/client/v3/publicRooms").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entry = body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .find(|r| r["room_id"] == room_id.as_str())
        .unwrap_or_else(|| panic!("{room_id} listed in {body}"))
        .clone();
    assert_eq!(entry["name"], "Lobby");
    assert_eq!(entry["topic"], "Say hi");
    assert_eq!(entry["num_joined_members"], 1);
    assert_eq!(entry["join_rule"], "public");
    assert_eq!(entry["world_readable"], false);
    assert_eq!(entry["guest_can_join"], false);
}

#[actix_web::test]
async fn name_topic_and_initial_state() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice
        .create_room(json!({
            "name": "Tea party",
            "topic": "Why is a raven like a writing-desk?",
            "initial_state": [
                { "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } },
                { "type": "org.example.custom", "state_key": "key", "content": { "answer": 42 } },
            ],
        }))
        .await;
    assert_eq!(
        alice.state_content(&room_id, "m.room.name", "").await,
        json!({ "name": "Tea party" })
    );
    let topic = alice.state_content(&room_id, "m.room.topic", "").await;
    assert_eq!(topic["topic"], "Why is a raven like a writing-desk?");
    assert_eq!(
        alice
            .state_content(&room_id, "m.room.history_visibility", "")
            .await,
        json!({ "history_visibility": "joined" }),
        "initial_state replaces the preset's event"
    );
    assert_eq!(
        alice
            .state_content(&room_id, "org.example.custom", "key")
            .await,
        json!({ "answer": 42 })
    );
    let state = alice.room_state(&room_id).await;
    let history: Vec<_> = state
        .iter()
        .filter(|e| e["type"] == "m.room.history_visibility")
        .collect();
    assert_eq!(history.len(), 1);
}

#[actix_web::test]
async fn invites_and_direct_chats() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice
        .create_room(
            json!({ "invite": [bob.user_id], "is_direct": true, "preset": "trusted_private_chat" }),
        )
        .await;
    let member = alice
        .state_content(&room_id, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(member["membership"], "invite");
    assert_eq!(member["is_direct"], true);

    let sync = bob.sync("").await;
    let invite = &sync["rooms"]["invite"][&room_id];
    assert!(invite.is_object(), "bob sees the invite: {sync}");
    bob.join(&room_id).await;
    let (status, body) = bob.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["joined_rooms"], json!([room_id]));
}

#[actix_web::test]
async fn invites_of_unknown_or_malformed_users_are_refused() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let (status, body) = alice
        .post(CREATE_ROOM, json!({ "invite": ["@nobody:lattice.test"] }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = alice
        .post(CREATE_ROOM, json!({ "invite": ["not a user id"] }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, body) = alice.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["joined_rooms"], json!([]), "no room was created");
}

#[actix_web::test]
async fn room_alias_name_creates_the_alias() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice
        .create_room(json!({ "room_alias_name": "wonderland", "preset": "public_chat" }))
        .await;
    let alias = "#wonderland:lattice.test";
    let (status, body) = client
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());
    assert_eq!(body["servers"], json!(["lattice.test"]));
    assert_eq!(
        alice
            .state_content(&room_id, "m.room.canonical_alias", "")
            .await["alias"],
        alias
    );

    let (status, body) = alice
        .post(CREATE_ROOM, json!({ "room_alias_name": "wonderland" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_ROOM_IN_USE");

    for bad in ["", "has space", "colon:inside"] {
        let (status, body) = alice
            .post(CREATE_ROOM, json!({ "room_alias_name": bad }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{bad:?}");
    }
}

#[actix_web::test]
async fn power_level_content_override_applies() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat",
            "power_level_content_override": { "events_default": 50, "invite": 50 },
        }))
        .await;
    let power = alice
        .state_content(&room_id, "m.room.power_levels", "")
        .await;
    assert_eq!(power["events_default"], 50, "{power}");
    assert_eq!(power["invite"], 50, "{power}");
    assert_eq!(power["state_default"], 50, "defaults stay: {power}");

    bob.join(&room_id).await;
    let (status, body) = bob
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room_id)
            ),
            json!({ "msgtype": "m.text", "body": "hello?" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    alice.send_text(&room_id, "only I may speak").await;
}

#[actix_web::test]
async fn room_versions_10_11_and_12() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    for version in ["10", "11", "12"] {
        let room_id = alice.create_room(json!({ "room_version": version })).await;
        let create = alice.state_content(&room_id, "m.room.create", "").await;
        assert_eq!(create["room_version"], version, "{create}");
        if version == "10" {
            assert_eq!(create["creator"], alice.user_id, "v10 names the creator");
        } else {
            assert!(create.get("creator").is_none(), "v{version}: {create}");
        }
        let power = alice
            .state_content(&room_id, "m.room.power_levels", "")
            .await;
        if version == "12" {
            assert!(power["users"].get(&alice.user_id).is_none(), "{power}");
        } else {
            assert_eq!(power["users"][&alice.user_id], 100, "v{version}: {power}");
        }
        alice.send_text(&room_id, "hello").await;
    }
}

#[actix_web::test]
async fn a_v12_room_id_is_the_hash_of_its_create_event() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({ "room_version": "12" })).await;
    let state = alice.room_state(&room_id).await;
    let create = find(&state, "m.room.create", "").expect("create event");
    let event_id = create["event_id"].as_str().expect("event id");
    assert_eq!(
        room_id,
        format!("!{}", event_id.trim_start_matches('$')),
        "room id derives from {event_id}"
    );
    assert!(!room_id.contains(':'), "v12 room ids have no server name");

    let room_id = alice.create_room(json!({ "room_version": "11" })).await;
    assert!(
        room_id.ends_with(":lattice.test"),
        "v11 room ids keep the server name: {room_id}"
    );
}

#[actix_web::test]
async fn unsupported_versions_and_bad_requests_are_refused() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    for version in ["1", "9", "13", "banana"] {
        let (status, body) = alice
            .post(CREATE_ROOM, json!({ "room_version": version }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{version}: {body}");
        assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION", "{version}");
    }
    for body in [
        json!({ "invite": "x" }),
        json!({ "preset": "secret_chat" }),
        json!({ "visibility": "hidden" }),
        json!({ "initial_state": [{ "type": "m.room.name" }] }),
        json!({ "name": 7 }),
    ] {
        let (status, response) = alice.post(CREATE_ROOM, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_eq!(response["errcode"], "M_BAD_JSON", "{body}");
    }
    let (status, body) = alice
        .post(
            CREATE_ROOM,
            json!({ "initial_state": [{ "type": "m.room.member", "state_key": alice.user_id, "content": { "membership": "join" } }] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = alice.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["joined_rooms"], json!([]), "no room was created");
}
