//! Membership: join by id and alias, invite, leave, kick, ban, unban, forget,
//! the member lists (`joined_rooms`, `joined_members`, `members?at=`), and
//! the rooms two users share (`/v1/mutual_rooms`).

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

async fn joined_rooms(user: &User) -> Vec<String> {
    let (status, body) = user.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body["joined_rooms"].clone()).expect("a list of room ids")
}

async fn membership_of(viewer: &User, room_id: &str, user: &User) -> Value {
    viewer
        .state_content(room_id, "m.room.member", &user.user_id)
        .await["membership"]
        .clone()
}

#[actix_web::test]
async fn join_a_public_room_by_id_and_by_alias() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": "square" }))
        .await;

    let (status, body) = bob.post(&room_path(&room_id, "join"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "room_id": room_id }));

    let (status, body) = carol
        .post(
            &format!("/_matrix/client/v3/join/{}", enc("#square:lattice.test")),
            json!({ "reason": "heard of it" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());
    let member = alice
        .state_content(&room_id, "m.room.member", &carol.user_id)
        .await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["reason"], "heard of it");

    assert_eq!(joined_rooms(&bob).await, vec![room_id.clone()]);
    assert_eq!(joined_rooms(&carol).await, vec![room_id.clone()]);

    // Joining again is harmless.
    bob.join(&room_id).await;
}

#[actix_web::test]
async fn joining_needs_an_invite_to_a_private_room() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat" })).await;

    let (status, body) = bob.post(&room_path(&room_id, "join"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = alice
        .post(
            &room_path(&room_id, "invite"),
            json!({ "user_id": bob.user_id, "reason": "tea?" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    assert_eq!(membership_of(&alice, &room_id, &bob).await, "invite");

    bob.join(&room_id).await;
    assert_eq!(membership_of(&alice, &room_id, &bob).await, "join");
}

#[actix_web::test]
async fn join_errors() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;

    let (status, body) = alice
        .post(&room_path("!unknown:lattice.test", "join"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/join/{}", enc("#nowhere:lattice.test")),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    for target in ["not-a-room", "#no-server", "@user:lattice.test"] {
        let (status, body) = alice
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(target)),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{target}");
    }
}

#[actix_web::test]
async fn invite_errors() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({})).await;

    let (status, body) = alice
        .post(
            &room_path(&room_id, "invite"),
            json!({ "user_id": "@nobody:lattice.test" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    let (status, body) = alice
        .post(&room_path(&room_id, "invite"), json!({ "user_id": "bob" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    let (status, body) = alice.post(&room_path(&room_id, "invite"), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    // Only members invite.
    let (status, body) = bob
        .post(
            &room_path(&room_id, "invite"),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[actix_web::test]
async fn leave_then_rejoin() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;

    let (status, body) = bob
        .post(&room_path(&room_id, "leave"), json!({ "reason": "bye" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    assert_eq!(membership_of(&alice, &room_id, &bob).await, "leave");
    assert!(joined_rooms(&bob).await.is_empty());

    // Leaving again is a no-op.
    let (status, _) = bob.post(&room_path(&room_id, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    bob.join(&room_id).await;
    assert_eq!(joined_rooms(&bob).await, vec![room_id.clone()]);

    let carol = client.register("carol").await;
    let (status, body) = carol.post(&room_path(&room_id, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "never in the room: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[actix_web::test]
async fn rejecting_an_invite_is_leaving() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "invite": [bob.user_id] })).await;
    let (status, _) = bob.post(&room_path(&room_id, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(membership_of(&alice, &room_id, &bob).await, "leave");
}

#[actix_web::test]
async fn kick_needs_power_and_a_member() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;

    let (status, body) = bob
        .post(
            &room_path(&room_id, "kick"),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob has no power: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(membership_of(&alice, &room_id, &carol).await, "join");

    let (status, body) = alice
        .post(
            &room_path(&room_id, "kick"),
            json!({ "user_id": carol.user_id, "reason": "rude" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let member = alice
        .state_content(&room_id, "m.room.member", &carol.user_id)
        .await;
    assert_eq!(member["membership"], "leave");
    assert_eq!(member["reason"], "rude");
    assert!(joined_rooms(&carol).await.is_empty());

    // A kicked user of a public room may come back.
    carol.join(&room_id).await;

    let dave = client.register("dave").await;
    let (status, body) = alice
        .post(
            &room_path(&room_id, "kick"),
            json!({ "user_id": dave.user_id }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "dave is not in the room: {body}"
    );
}

#[actix_web::test]
async fn ban_keeps_a_user_out_until_unbanned() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;

    let (status, body) = bob
        .post(
            &room_path(&room_id, "ban"),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob has no power: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = alice
        .post(
            &room_path(&room_id, "ban"),
            json!({ "user_id": bob.user_id, "reason": "spam" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    assert_eq!(membership_of(&alice, &room_id, &bob).await, "ban");

    let (status, body) = bob.post(&room_path(&room_id, "join"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "banned: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Banning someone who never joined works too.
    let dave = client.register("dave").await;
    let (status, _) = alice
        .post(
            &room_path(&room_id, "ban"),
            json!({ "user_id": dave.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = alice
        .post(
            &room_path(&room_id, "unban"),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "carol is not banned: {body}");

    let (status, body) = alice
        .post(
            &room_path(&room_id, "unban"),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(membership_of(&alice, &room_id, &bob).await, "leave");
    bob.join(&room_id).await;
}

#[actix_web::test]
async fn forget_after_leaving() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;

    let (status, body) = bob.post(&room_path(&room_id, "forget"), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "still joined: {body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");

    let (status, _) = bob.post(&room_path(&room_id, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let filter = enc(r#"{"room":{"include_leave":true}}"#);
    let sync = bob.sync(&format!("filter={filter}")).await;
    assert!(
        sync["rooms"]["leave"][&room_id].is_object(),
        "left rooms show with include_leave: {sync}"
    );

    let (status, body) = bob.post(&room_path(&room_id, "forget"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let sync = bob.sync(&format!("filter={filter}")).await;
    assert!(
        sync["rooms"]["leave"].get(&room_id).is_none(),
        "a forgotten room is gone: {sync}"
    );
    // "Once forgotten, the user will no longer be able to retrieve history
    // for this room."
    let (status, body) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b",
            enc(&room_id)
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = bob
        .get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room_id)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let carol = client.register("carol").await;
    let (status, body) = carol.post(&room_path(&room_id, "forget"), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

#[actix_web::test]
async fn rejoining_a_forgotten_room_brings_it_back() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let (status, _) = bob.post(&room_path(&room_id, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = bob.post(&room_path(&room_id, "forget"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Synced while forgotten: whatever the server remembered of that must not
    // hide the room once bob is back.
    let sync = bob.sync("").await;
    assert!(sync["rooms"]["join"].get(&room_id).is_none(), "{sync}");
    let since = sync["next_batch"].as_str().expect("next_batch").to_owned();

    bob.join(&room_id).await;
    alice.send_text(&room_id, "welcome back").await;
    let sync = bob.sync(&format!("since={since}")).await;
    let timeline = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    assert!(
        timeline.as_array().is_some_and(|events| events
            .iter()
            .any(|e| e["content"]["body"] == "welcome back")),
        "the rejoined room is in the join section with its new message: {sync}"
    );
    let sync = bob.sync("").await;
    assert!(sync["rooms"]["join"][&room_id].is_object(), "{sync}");
}

#[actix_web::test]
async fn joined_members_lists_joined_users_with_profiles() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let (status, _) = alice
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&alice.user_id)
            ),
            json!({ "displayname": "Alice" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "invite": [carol.user_id] }))
        .await;
    bob.join(&room_id).await;

    let (status, body) = bob.get(&room_path(&room_id, "joined_members")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let joined = body["joined"].as_object().expect("joined");
    assert_eq!(joined.len(), 2, "invited carol is not joined: {body}");
    assert_eq!(joined[&alice.user_id]["display_name"], "Alice");
    assert!(joined.contains_key(&bob.user_id));

    let (status, body) = carol.get(&room_path(&room_id, "joined_members")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[actix_web::test]
async fn members_with_filters_and_at_a_past_token() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "invite": [carol.user_id] }))
        .await;
    alice.send_text(&room_id, "before bob").await;
    let before_bob = alice.messages(&room_id, "dir=b&limit=1").await["start"]
        .as_str()
        .expect("a start token")
        .to_owned();
    let sync_before_bob = alice.sync("").await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    bob.join(&room_id).await;

    let members = |body: &Value| -> Vec<(String, String)> {
        let mut members: Vec<(String, String)> = body["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .map(|e| {
                assert_eq!(e["type"], "m.room.member");
                (
                    e["state_key"].as_str().expect("state_key").to_owned(),
                    e["content"]["membership"]
                        .as_str()
                        .expect("membership")
                        .to_owned(),
                )
            })
            .collect();
        members.sort();
        members
    };
    let pair = |user: &User, membership: &str| (user.user_id.clone(), membership.to_owned());

    let (status, body) = alice.get(&room_path(&room_id, "members")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        members(&body),
        vec![
            pair(&alice, "join"),
            pair(&bob, "join"),
            pair(&carol, "invite")
        ]
    );

    let (_, body) = alice
        .get(&room_path(&room_id, "members?membership=join"))
        .await;
    assert_eq!(
        members(&body),
        vec![pair(&alice, "join"), pair(&bob, "join")]
    );
    let (_, body) = alice
        .get(&room_path(&room_id, "members?not_membership=join"))
        .await;
    assert_eq!(members(&body), vec![pair(&carol, "invite")]);

    for token in [&before_bob, &sync_before_bob] {
        let (status, body) = alice
            .get(&room_path(&room_id, &format!("members?at={}", enc(token))))
            .await;
        assert_eq!(status, StatusCode::OK, "at={token}: {body}");
        assert_eq!(
            members(&body),
            vec![pair(&alice, "join"), pair(&carol, "invite")],
            "at={token}, before bob joined"
        );
    }

    let (status, body) = alice.get(&room_path(&room_id, "members?at=garbage")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    let dave = client.register("dave").await;
    let (status, body) = dave.get(&room_path(&room_id, "members")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[actix_web::test]
async fn a_former_member_sees_the_members_as_they_left_them() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let (status, _) = bob.post(&room_path(&room_id, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    carol.join(&room_id).await;

    let (status, body) = bob.get(&room_path(&room_id, "members")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let users: Vec<&str> = body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(users.contains(&alice.user_id.as_str()), "{body}");
    assert!(
        !users.contains(&carol.user_id.as_str()),
        "carol joined after bob left: {body}"
    );
}

/// What a non-member gets from each request about a room: the same for a
/// room that does not exist and for a private room with members in it.
#[actix_web::test]
async fn non_members_cannot_tell_unknown_rooms_from_private_ones_or_who_is_in_them() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let carol = client.register("carol").await;
    let eve = client.register("eve").await;
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice
        .post(
            &room_path(&private, "invite"),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    carol.join(&private).await;
    let banned = client.register("banned").await;
    alice
        .post(
            &room_path(&private, "ban"),
            json!({ "user_id": banned.user_id }),
        )
        .await;
    let unknown = "!nowhere:lattice.test".to_owned();

    let answers = |room_id: String, target: String| {
        let eve = &eve;
        async move {
            let mut answers = Vec::new();
            for rest in [
                "state",
                "state/m.room.create",
                "messages",
                "members",
                "joined_members",
            ] {
                answers.push((rest.to_owned(), eve.get(&room_path(&room_id, rest)).await));
            }
            for rest in ["kick", "unban", "invite"] {
                let answer = eve
                    .post(&room_path(&room_id, rest), json!({ "user_id": target }))
                    .await;
                answers.push((format!("{rest} {target}"), answer));
            }
            answers
        }
    };
    // Carol is joined, banned is banned, bob was never there.
    let of_unknown = answers(unknown.clone(), carol.user_id.clone()).await;
    for (room_id, target) in [
        (private.clone(), carol.user_id.clone()),
        (private.clone(), banned.user_id.clone()),
        (private.clone(), "@bob:lattice.test".to_owned()),
        (unknown.clone(), "@bob:lattice.test".to_owned()),
    ] {
        let of_room = answers(room_id.clone(), target.clone()).await;
        for ((what, unknown_answer), (_, answer)) in of_unknown.iter().zip(&of_room) {
            assert_eq!(
                answer.0,
                StatusCode::FORBIDDEN,
                "{what} in {room_id}: {}",
                answer.1
            );
            assert_eq!(
                (unknown_answer.0, &unknown_answer.1),
                (answer.0, &answer.1),
                "{what} in {room_id} (target {target})"
            );
        }
    }
}

const MUTUAL_ROOMS: &str = "/_matrix/client/v1/mutual_rooms";

#[actix_web::test]
async fn mutual_rooms_are_the_rooms_both_users_joined() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let mut shared = Vec::new();
    for _ in 0..3 {
        let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
        bob.join(&room_id).await;
        shared.push(room_id);
    }
    // Invited only, and left: not shared.
    let invited = alice.create_room(json!({ "invite": [bob.user_id] })).await;
    let left = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&left).await;
    let (status, body) = bob.post(&room_path(&left, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    shared.sort();

    let (status, body) = alice
        .get(&format!("{MUTUAL_ROOMS}?user_id={}", enc(&bob.user_id)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["joined"], json!(shared), "{body}");
    assert_eq!(body["count"], 3);
    assert!(body.get("next_batch").is_none(), "{body}");
    assert!(!body["joined"]
        .as_array()
        .expect("joined")
        .contains(&json!(invited)));

    // From a room: the rooms after it (the token is the last room of a
    // page, unpadded URL-safe base64).
    use base64::Engine as _;
    let from = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&shared[0]);
    let (status, body) = bob
        .get(&format!(
            "{MUTUAL_ROOMS}?user_id={}&from={from}",
            enc(&alice.user_id)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["joined"], json!(shared[1..]), "{body}");
    assert_eq!(body["count"], 3);

    // Someone unknown shares nothing.
    let (status, body) = alice
        .get(&format!(
            "{MUTUAL_ROOMS}?user_id={}",
            enc("@nobody:lattice.test")
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "joined": [], "count": 0 }));
}

#[actix_web::test]
async fn mutual_rooms_refuse_oneself_and_bad_parameters() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let cases = [
        (
            format!("user_id={}", enc(&alice.user_id)),
            "M_INVALID_PARAM",
        ),
        (String::new(), "M_MISSING_PARAM"),
        ("user_id=alice".to_owned(), "M_INVALID_PARAM"),
        (
            format!("user_id={}", enc("@Alice:lattice.test")),
            "M_INVALID_PARAM",
        ),
        (
            format!(
                "user_id={}&user_id={}",
                enc("@b:lattice.test"),
                enc("@c:lattice.test")
            ),
            "M_INVALID_PARAM",
        ),
        (
            format!("user_id={}&from=%21%21", enc("@b:lattice.test")),
            "M_INVALID_PARAM",
        ),
    ];
    for (query, errcode) in cases {
        let (status, body) = alice.get(&format!("{MUTUAL_ROOMS}?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], errcode, "{query}: {body}");
    }
    let (status, body) = cluster
        .client()
        .get(
            &format!("{MUTUAL_ROOMS}?user_id={}", enc("@b:lattice.test")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}
