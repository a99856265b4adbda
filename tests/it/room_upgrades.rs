//! Room upgrades: the replacement room with the old room's state and bans,
//! the tombstone, aliases moved, the old room closed to ordinary members.

use awc::http::StatusCode;
use serde_json::json;

use crate::cluster::{enc, TestCluster};

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

#[actix_web::test]
async fn upgrading_a_room_replaces_it_with_its_state() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let old_room = alice
        .create_room(json!({
            "room_version": "11",
            "preset": "public_chat",
            "visibility": "public",
            "name": "The square",
            "topic": "Talk",
            "room_alias_name": "square",
        }))
        .await;
    bob.join(&old_room).await;
    let (status, body) = alice
        .post(
            &room_path(&old_room, "ban"),
            json!({ "user_id": carol.user_id, "reason": "spam" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Bad input first: nothing changes.
    let (status, body) = alice
        .post(
            &room_path(&old_room, "upgrade"),
            json!({ "new_version": "1" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION");
    let (status, body) = bob
        .post(
            &room_path(&old_room, "upgrade"),
            json!({ "new_version": "12" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = alice
        .post(&room_path(&old_room, "upgrade"), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let (status, body) = alice
        .post(
            &room_path(&old_room, "upgrade"),
            json!({ "new_version": "12" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_room = body["replacement_room"]
        .as_str()
        .expect("a replacement_room")
        .to_owned();
    assert_ne!(new_room, old_room);

    let tombstone = bob.state_content(&old_room, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new_room.as_str());
    let old_levels = bob
        .state_content(&old_room, "m.room.power_levels", "")
        .await;
    assert_eq!(old_levels["events_default"], 50);
    assert_eq!(old_levels["invite"], 50);
    let (status, body) = bob
        .put(
            &room_path(&old_room, "send/m.room.message/t1"),
            json!({ "msgtype": "m.text", "body": "still here?" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Bob follows the tombstone: the new room is public, as the old one.
    bob.join(&new_room).await;
    let create = bob.state_content(&new_room, "m.room.create", "").await;
    assert_eq!(create["predecessor"]["room_id"], old_room.as_str());
    assert_eq!(create["room_version"], "12");
    assert_eq!(
        bob.state_content(&new_room, "m.room.name", "").await["name"],
        "The square"
    );
    assert_eq!(
        bob.state_content(&new_room, "m.room.topic", "").await["topic"],
        "Talk"
    );
    assert_eq!(
        bob.state_content(&new_room, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    let ban = bob
        .state_content(&new_room, "m.room.member", &carol.user_id)
        .await;
    assert_eq!(ban["membership"], "ban");
    assert_eq!(ban["reason"], "spam");
    let (status, body) = carol.post(&room_path(&new_room, "join"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The creator of a version 12 room is above every level: not in `users`,
    // and the temporary raise is gone.
    let levels = bob
        .state_content(&new_room, "m.room.power_levels", "")
        .await;
    assert!(levels["users"].get(&alice.user_id).is_none(), "{levels}");
    assert_eq!(levels["events_default"], 0);

    // The alias moved with the room.
    let (status, body) = bob
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc("#square:lattice.test")
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], new_room.as_str());
    assert_eq!(
        bob.state_content(&new_room, "m.room.canonical_alias", "")
            .await["alias"],
        "#square:lattice.test"
    );
    let old_alias = bob
        .state_content(&old_room, "m.room.canonical_alias", "")
        .await;
    assert!(old_alias.get("alias").is_none(), "{old_alias}");

    // The directory lists the new room instead of the old one.
    for (room, visibility) in [(&old_room, "private"), (&new_room, "public")] {
        let (status, body) = bob
            .get(&format!(
                "/_matrix/client/v3/directory/list/room/{}",
                enc(room)
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["visibility"], visibility, "{room}");
    }
}

#[actix_web::test]
async fn only_members_upgrade_and_unknown_rooms_are_not_found() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let (status, body) = bob
        .post(&room_path(&room, "upgrade"), json!({ "new_version": "11" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = alice
        .post(
            &room_path("!nowhere:lattice.test", "upgrade"),
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}
