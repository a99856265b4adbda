//! `GET /rooms/{roomId}/timestamp_to_event`: the nearest event in a
//! direction, among those the user may see.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

async fn lookup(user: &User, room: &str, query: &str) -> (StatusCode, Value) {
    user.get(&format!(
        "/_matrix/client/v1/rooms/{}/timestamp_to_event?{query}",
        enc(room)
    ))
    .await
}

async fn event(user: &User, room: &str, event_id: &str) -> Value {
    let (status, body) = user
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room),
            enc(event_id)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[actix_web::test]
async fn the_nearest_visible_event_in_either_direction() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "content": { "history_visibility": "joined" },
            }],
        }))
        .await;
    let before_bob = alice.send_text(&room, "before bob").await;
    let before_ts = event(&alice, &room, &before_bob).await["origin_server_ts"]
        .as_i64()
        .expect("a timestamp");
    bob.join(&room).await;
    let after_bob = alice.send_text(&room, "after bob").await;
    let after_ts = event(&alice, &room, &after_bob).await["origin_server_ts"]
        .as_i64()
        .expect("a timestamp");

    // Alice sees everything: the message at its own time, in both directions.
    for dir in ["f", "b"] {
        let (status, body) = lookup(&alice, &room, &format!("ts={before_ts}&dir={dir}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["origin_server_ts"], before_ts, "{dir}: {body}");
    }
    let (status, body) = lookup(&alice, &room, &format!("ts={}&dir=f", after_ts + 60_000)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = lookup(&alice, &room, "ts=0&dir=b").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = lookup(&alice, &room, "ts=0&dir=f").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = event(&alice, &room, body["event_id"].as_str().unwrap_or_default()).await;
    assert_eq!(first["type"], "m.room.create");

    // Bob may not see the message sent before his join (only the state
    // events sent before history became `joined`, which were `shared`).
    let (status, body) = lookup(&bob, &room, &format!("ts={before_ts}&dir=b")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["event_id"], before_bob.as_str());
    let seen = event(&bob, &room, body["event_id"].as_str().unwrap_or_default()).await;
    assert_ne!(seen["type"], "m.room.message", "{seen}");
    let (status, body) = lookup(&bob, &room, &format!("ts={before_ts}&dir=f")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["event_id"], before_bob.as_str());
    let (status, body) = lookup(&bob, &room, &format!("ts={}&dir=b", after_ts + 60_000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_id"], after_bob.as_str());

    // Carol is not in the room; bad parameters are named.
    let (status, body) = lookup(&carol, &room, "ts=0&dir=f").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = lookup(&alice, &room, "ts=0&dir=up").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, body) = lookup(&alice, &room, "dir=f").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
    let (status, body) = lookup(&alice, &room, "ts=soon&dir=f").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
}
