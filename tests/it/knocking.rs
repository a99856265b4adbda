//! Knocking: `POST /knock/{roomIdOrAlias}` on rooms whose join rule is
//! `knock` or `knock_restricted`, knocks in `/sync` (`rooms.knock` with
//! `knock_state` for the knocker, member events for the members), and what
//! may follow a knock: an invite and a join, or a leave that rescinds it.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

async fn knock(user: &User, room: &str, body: Value) -> (StatusCode, Value) {
    user.post(&format!("/_matrix/client/v3/knock/{}", enc(room)), body)
        .await
}

async fn room_with_join_rule(creator: &User, join_rule: Value, alias: Option<&str>) -> String {
    let mut body = json!({
        "preset": "private_chat",
        "name": "Behind the door",
        "initial_state": [{ "type": "m.room.join_rules", "content": join_rule }],
    });
    if let Some(alias) = alias {
        body["room_alias_name"] = json!(alias);
    }
    creator.create_room(body).await
}

#[actix_web::test]
async fn a_knock_is_seen_by_the_knocker_and_the_members_and_an_invite_lets_them_in() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room = room_with_join_rule(&alice, json!({ "join_rule": "knock" }), Some("door")).await;

    let (status, body) = knock(&bob, "#door:lattice.test", json!({ "reason": "let me in" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "room_id": room }));

    // The knocker sees the room under `knock`, with its stripped state and
    // their own knock.
    let sync = bob.sync("").await;
    let knocked = &sync["rooms"]["knock"][&room];
    let events = knocked["knock_state"]["events"]
        .as_array()
        .expect("knock_state events");
    let of_type = |kind: &str| events.iter().find(|e| e["type"] == kind).cloned();
    assert_eq!(
        of_type("m.room.name").expect("the name")["content"]["name"],
        "Behind the door"
    );
    assert_eq!(
        of_type("m.room.join_rules").expect("the join rules")["content"]["join_rule"],
        "knock"
    );
    let own = events
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .expect("the knock itself");
    assert_eq!(own["content"]["membership"], "knock");
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
    let next = bob
        .sync(&format!(
            "since={}&timeout=0",
            enc(sync["next_batch"].as_str().unwrap_or_default())
        ))
        .await;
    assert!(
        next["rooms"]["knock"].get(&room).is_none(),
        "listed once: {next}"
    );

    // The members see an ordinary member event.
    let sync = alice.sync("").await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let knock_event = timeline
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .expect("the knock in alice's timeline");
    assert_eq!(knock_event["content"]["membership"], "knock");
    assert_eq!(knock_event["content"]["reason"], "let me in");

    // A knocker may not let themselves in; an invite does.
    let (status, body) = bob.post(&room_path(&room, "join"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = alice
        .post(
            &room_path(&room, "invite"),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    bob.join(&room).await;
    assert_eq!(
        alice
            .state_content(&room, "m.room.member", &bob.user_id)
            .await["membership"],
        "join"
    );
}

#[actix_web::test]
async fn leaving_rescinds_a_knock_and_knock_restricted_rooms_take_knocks() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let carol = client.register("carol").await;
    let space = alice.create_room(json!({ "preset": "private_chat" })).await;
    let room = room_with_join_rule(
        &alice,
        json!({
            "join_rule": "knock_restricted",
            "allow": [{ "type": "m.room_membership", "room_id": space }],
        }),
        None,
    )
    .await;
    let (status, body) = knock(&carol, &room, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = carol.post(&room_path(&room, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        alice
            .state_content(&room, "m.room.member", &carol.user_id)
            .await["membership"],
        "leave"
    );
    let sync = carol.sync("").await;
    assert!(sync["rooms"]["knock"].get(&room).is_none(), "{sync}");
    // And they may knock again.
    let (status, body) = knock(&carol, &room, json!({ "reason": "again" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn a_knock_on_a_room_that_does_not_allow_it_is_forbidden() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    for join_rule in ["invite", "public"] {
        let room = room_with_join_rule(&alice, json!({ "join_rule": join_rule }), None).await;
        let (status, body) = knock(&bob, &room, json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{join_rule}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    // Already in the room: nothing to knock for.
    let room = room_with_join_rule(&alice, json!({ "join_rule": "knock" }), None).await;
    let (status, body) = knock(&alice, &room, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = knock(&bob, "!nowhere:lattice.test", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = knock(&bob, "nonsense", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
}
