//! Restricted joins: a member of an allowed room joins a `restricted` or
//! `knock_restricted` room without an invite, vouched for by a local member
//! with the power to invite (`join_authorised_via_users_server`); anyone
//! else needs an invite.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

async fn invite_and_join(inviter: &User, invitee: &User, room: &str) {
    let (status, body) = inviter
        .post(
            &room_path(room, "invite"),
            json!({ "user_id": invitee.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    invitee.join(room).await;
}

async fn restricted_room(creator: &User, join_rule: &str, allowed: &str) -> String {
    creator
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": join_rule,
                    "allow": [{ "type": "m.room_membership", "room_id": allowed }],
                },
            }],
        }))
        .await
}

async fn member(viewer: &User, room: &str, user: &User) -> Value {
    viewer
        .state_content(room, "m.room.member", &user.user_id)
        .await
}

#[actix_web::test]
async fn members_of_an_allowed_room_join_vouched_for_by_a_local_inviter() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let dave = client.register("dave").await;
    let space = alice.create_room(json!({ "preset": "private_chat" })).await;
    invite_and_join(&alice, &bob, &space).await;

    for join_rule in ["restricted", "knock_restricted"] {
        let room = restricted_room(&alice, join_rule, &space).await;
        bob.join(&room).await;
        let joined = member(&alice, &room, &bob).await;
        assert_eq!(joined["membership"], "join", "{join_rule}");
        assert_eq!(
            joined["join_authorised_via_users_server"],
            alice.user_id.as_str(),
            "{join_rule}"
        );

        // Carol is in no allowed room.
        let (status, body) = carol.post(&room_path(&room, "join"), json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{join_rule}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");

        // An invite is enough, and needs no one to vouch.
        invite_and_join(&alice, &dave, &room).await;
        let joined = member(&alice, &room, &dave).await;
        assert!(
            joined.get("join_authorised_via_users_server").is_none(),
            "{joined}"
        );
        let (status, body) = dave.post(&room_path(&room, "leave"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[actix_web::test]
async fn a_restricted_join_needs_a_local_member_who_may_invite() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let space = alice.create_room(json!({ "preset": "private_chat" })).await;
    invite_and_join(&alice, &bob, &space).await;
    invite_and_join(&alice, &carol, &space).await;
    let room = alice
        .create_room(json!({
            "room_version": "11",
            "preset": "private_chat",
            "power_level_content_override": { "invite": 100 },
            "initial_state": [{
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": space }],
                },
            }],
        }))
        .await;
    bob.join(&room).await;
    let (status, body) = alice.post(&room_path(&room, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Bob is in the room but may not invite: nobody can vouch for carol.
    let (status, body) = carol.post(&room_path(&room, "join"), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNABLE_TO_GRANT_JOIN");
}
