//! `GET /v1/room_summary/{roomIdOrAlias}`: what a client shows of a room
//! before joining, to whoever could join or peek into it (the space
//! hierarchy's rule and chunk), with the requester's membership; `404` for
//! everyone else, and for rooms that do not exist.

use awc::http::StatusCode;
use serde_json::json;

use crate::cluster::{enc, TestCluster};

fn summary_path(room: &str) -> String {
    format!("/_matrix/client/v1/room_summary/{}", enc(room))
}

#[actix_web::test]
async fn a_public_room_is_summarised_for_anyone() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat",
            "name": "Cheese",
            "topic": "Tasty tasty cheese",
            "room_alias_name": "cheese",
            "initial_state": [{
                "type": "m.room.encryption",
                "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" },
            }],
        }))
        .await;

    let (status, summary) = alice.get(&summary_path(&room_id)).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["room_id"], room_id);
    assert_eq!(summary["name"], "Cheese");
    assert_eq!(summary["topic"], "Tasty tasty cheese");
    assert_eq!(summary["canonical_alias"], "#cheese:lattice.test");
    assert_eq!(summary["num_joined_members"], 1);
    assert_eq!(summary["join_rule"], "public");
    assert_eq!(summary["world_readable"], false);
    assert_eq!(summary["guest_can_join"], false);
    assert_eq!(summary["room_version"], "12");
    assert_eq!(summary["encryption"], "m.megolm.v1.aes-sha2");
    assert_eq!(summary["membership"], "join");
    assert!(summary.get("children_state").is_none(), "{summary}");

    // By its alias, for someone who is not in it.
    let (status, by_alias) = bob.get(&summary_path("#cheese:lattice.test")).await;
    assert_eq!(status, StatusCode::OK, "{by_alias}");
    assert_eq!(by_alias["room_id"], room_id);
    assert_eq!(by_alias["membership"], "leave");

    // Without signing in: the same, without a membership.
    let (status, anonymous) = client.get(&summary_path(&room_id), None).await;
    assert_eq!(status, StatusCode::OK, "{anonymous}");
    assert_eq!(anonymous["name"], "Cheese");
    assert!(anonymous.get("membership").is_none(), "{anonymous}");
    // A token that is given must be good.
    let (status, body) = client
        .get(&summary_path(&room_id), Some("not a token"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
}

#[actix_web::test]
async fn a_private_room_is_summarised_only_for_those_let_in() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice
        .create_room(json!({ "preset": "private_chat", "name": "Secret" }))
        .await;

    for (who, status) in [
        (Some(&bob.access_token), StatusCode::NOT_FOUND),
        (None, StatusCode::NOT_FOUND),
    ] {
        let (got, body) = client
            .get(&summary_path(&room_id), who.map(String::as_str))
            .await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
    }

    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, summary) = bob.get(&summary_path(&room_id)).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["name"], "Secret");
    assert_eq!(summary["join_rule"], "invite");
    assert_eq!(summary["membership"], "invite");
}

#[actix_web::test]
async fn a_knock_lets_its_knocker_see_the_room() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules",
                "state_key": "",
                "content": { "join_rule": "knock" },
            }],
        }))
        .await;
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/knock/{}", enc(&room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The room closes to knocks; the knocker still sees what they knocked on.
    let (status, body) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.join_rules/",
                enc(&room_id)
            ),
            json!({ "join_rule": "invite" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, summary) = bob.get(&summary_path(&room_id)).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["membership"], "knock");
    assert_eq!(summary["join_rule"], "invite");
    let (status, _) = client.get(&summary_path(&room_id), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn unknown_rooms_are_not_found_and_malformed_ones_refused() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    for room in ["!nowhere:lattice.test", "#nowhere:lattice.test"] {
        let (status, body) = alice.get(&summary_path(room)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{room}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{room}");
    }
    let (status, body) = alice.get(&summary_path("nowhere")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
}
