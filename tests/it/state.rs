//! Room state: all of it, one event, and setting state events.

use awc::http::StatusCode;
use serde_json::json;

use crate::cluster::{enc, TestCluster};

fn state_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/state{rest}", enc(room_id))
}

#[actix_web::test]
async fn read_all_state_and_single_events() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({ "name": "Garden" })).await;

    let state = alice.room_state(&room_id).await;
    for kind in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
    ] {
        let event = state
            .iter()
            .find(|e| e["type"] == kind)
            .unwrap_or_else(|| panic!("{kind} in the state"));
        assert_eq!(event["room_id"], room_id.as_str());
        assert!(event["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('$')));
        assert!(event["state_key"].is_string());
    }
    let (status, body) = alice.get(&state_path(&room_id, "/m.room.name")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an empty state key may be left out: {body}"
    );
    assert_eq!(body, json!({ "name": "Garden" }));
    let (status, body) = alice.get(&state_path(&room_id, "/m.room.name/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "name": "Garden" }));

    let (status, event) = alice
        .get(&state_path(&room_id, "/m.room.name/?format=event"))
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["type"], "m.room.name");
    assert_eq!(event["state_key"], "");
    assert_eq!(event["content"], json!({ "name": "Garden" }));
    assert_eq!(event["sender"], alice.user_id);
}

#[actix_web::test]
async fn missing_state_is_not_found() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    for rest in [
        "/m.room.topic",
        "/m.room.member/@nobody:lattice.test",
        "/org.example/key",
    ] {
        let (status, body) = alice.get(&state_path(&room_id, rest)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{rest}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{rest}");
    }
}

#[actix_web::test]
async fn put_state_events() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;

    let (status, body) = alice
        .put(
            &state_path(&room_id, "/m.room.topic"),
            json!({ "topic": "Croquet" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let topic_event = body["event_id"].as_str().expect("event_id").to_owned();
    assert_eq!(
        alice.state_content(&room_id, "m.room.topic", "").await,
        json!({ "topic": "Croquet" })
    );

    // State keys may hold slashes and other characters.
    let key = "a/b c";
    let (status, body) = alice
        .put(
            &state_path(&room_id, &format!("/org.example.thing/{}", enc(key))),
            json!({ "n": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        alice
            .state_content(&room_id, "org.example.thing", key)
            .await,
        json!({ "n": 1 })
    );

    // Replacing the topic changes the current state, not the old event.
    let (status, _) = alice
        .put(
            &state_path(&room_id, "/m.room.topic/"),
            json!({ "topic": "Tea" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        alice.state_content(&room_id, "m.room.topic", "").await["topic"],
        "Tea"
    );
    let (status, old) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room_id),
            enc(&topic_event)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{old}");
    assert_eq!(old["content"]["topic"], "Croquet");
}

#[actix_web::test]
async fn put_state_needs_power_and_membership() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;

    let (status, body) = bob
        .put(
            &state_path(&room_id, "/m.room.name"),
            json!({ "name": "Bob's" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = carol
        .put(
            &state_path(&room_id, "/m.room.topic"),
            json!({ "topic": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not a member: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = carol.get(&state_path(&room_id, "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = carol.get(&state_path(&room_id, "/m.room.create")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Someone else's member event cannot be written directly.
    let (status, body) = bob
        .put(
            &state_path(&room_id, &format!("/m.room.member/{}", enc(&alice.user_id))),
            json!({ "membership": "leave" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[actix_web::test]
async fn put_state_refuses_bad_content() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;

    let (status, body) = alice
        .put(
            &state_path(&room_id, "/m.room.canonical_alias"),
            json!({ "alias": "#elsewhere:lattice.test" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_ALIAS");

    let (status, body) = alice
        .put(
            &state_path(&room_id, "/m.room.canonical_alias"),
            json!({ "alias": "not an alias" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    let (status, body) = alice
        .put(
            &state_path(&room_id, &format!("/m.room.member/{}", enc(&alice.user_id))),
            json!({ "displayname": "no membership" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let (status, body) = alice
        .put(
            &state_path(&room_id, "/m.room.topic"),
            json!(["not", "an", "object"]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let (status, body) = alice
        .put(
            &state_path("!nowhere:lattice.test", "/m.room.topic"),
            json!({ "topic": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

#[actix_web::test]
async fn a_former_member_sees_the_state_as_they_left_it() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "name": "Before" }))
        .await;
    bob.join(&room_id).await;
    let (status, _) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = alice
        .put(
            &state_path(&room_id, "/m.room.name"),
            json!({ "name": "After" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(
        bob.state_content(&room_id, "m.room.name", "").await["name"],
        "Before"
    );
    assert_eq!(
        bob.state_content(&room_id, "m.room.member", &bob.user_id)
            .await["membership"],
        "leave"
    );
}
