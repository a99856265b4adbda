//! Authorization decided where events are built: whichever endpoint an
//! event comes through, the same checks apply. A redaction of someone
//! else's event needs the room's `redact` power level in every supported
//! room version; publishing a room in the directory needs the power to set
//! its canonical alias.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

/// A redaction sent as clients of room versions 11 and later do, through
/// `/send` with `redacts` in the content.
async fn redact_through_send(
    user: &User,
    room_id: &str,
    event_id: &str,
    txn_id: &str,
) -> (StatusCode, Value) {
    user.put(
        &room_path(room_id, &format!("send/m.room.redaction/{txn_id}")),
        json!({ "redacts": event_id, "reason": "spam" }),
    )
    .await
}

async fn event_content(user: &User, room_id: &str, event_id: &str) -> Value {
    let (status, event) = user
        .get(&room_path(room_id, &format!("event/{}", enc(event_id))))
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    event["content"].clone()
}

/// Alice creates a public room of `version`; Bob and Carol join; Carol is
/// made a moderator (power 50, the default `redact` level).
async fn room_with_a_moderator(version: &str) -> (TestCluster, User, User, User, String) {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "room_version": version }))
        .await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;
    let mut power_levels = alice
        .state_content(&room_id, "m.room.power_levels", "")
        .await;
    power_levels["users"][&carol.user_id] = json!(50);
    let (status, body) = alice
        .put(
            &room_path(&room_id, "state/m.room.power_levels/"),
            power_levels,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (cluster, alice, bob, carol, room_id)
}

async fn redacting_through_send_needs_power(version: &str) {
    let (_cluster, alice, bob, carol, room_id) = room_with_a_moderator(version).await;
    let alices = alice.send_text(&room_id, "alice's words").await;

    // A member without power cannot redact someone else's event.
    let (status, body) = redact_through_send(&bob, &room_id, &alices, "r1").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "v{version}: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert_eq!(
        event_content(&alice, &room_id, &alices).await["body"],
        "alice's words",
        "v{version}: not redacted"
    );
    // Nor the room's state (here its power levels).
    let power_levels_id = {
        let state = alice.room_state(&room_id).await;
        state
            .iter()
            .find(|e| e["type"] == "m.room.power_levels")
            .and_then(|e| e["event_id"].as_str())
            .expect("power levels")
            .to_owned()
    };
    let (status, body) = redact_through_send(&bob, &room_id, &power_levels_id, "r2").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "v{version}: {body}");
    let power_levels = alice
        .state_content(&room_id, "m.room.power_levels", "")
        .await;
    assert_eq!(power_levels["users"][&carol.user_id], 50, "{power_levels}");

    // Their own event: allowed.
    let bobs = bob.send_text(&room_id, "bob's regret").await;
    let (status, body) = redact_through_send(&bob, &room_id, &bobs, "r3").await;
    assert_eq!(status, StatusCode::OK, "v{version}: {body}");
    assert_eq!(event_content(&alice, &room_id, &bobs).await, json!({}));

    // A moderator may redact anyone's.
    let (status, body) = redact_through_send(&carol, &room_id, &alices, "r4").await;
    assert_eq!(status, StatusCode::OK, "v{version}: {body}");
    assert_eq!(event_content(&bob, &room_id, &alices).await, json!({}));

    // `/redact` passes the same check.
    let another = alice.send_text(&room_id, "more of alice's words").await;
    let (status, body) = bob
        .put(
            &room_path(&room_id, &format!("redact/{}/r5", enc(&another))),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "v{version}: {body}");
    let (status, body) = carol
        .put(
            &room_path(&room_id, &format!("redact/{}/r5", enc(&another))),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "v{version}: {body}");
    assert_eq!(event_content(&bob, &room_id, &another).await, json!({}));
}

#[actix_web::test]
async fn redacting_others_events_through_send_needs_power_in_v12() {
    redacting_through_send_needs_power("12").await;
}

#[actix_web::test]
async fn redacting_others_events_through_send_needs_power_in_v11() {
    redacting_through_send_needs_power("11").await;
}

#[actix_web::test]
async fn redacting_others_events_through_send_needs_power_in_v10() {
    redacting_through_send_needs_power("10").await;
}

#[actix_web::test]
async fn a_redaction_must_name_an_event_of_its_room() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let other_room = alice.create_room(json!({})).await;
    let elsewhere = alice.send_text(&other_room, "elsewhere").await;

    let (status, body) = redact_through_send(&alice, &room_id, &elsewhere, "r1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        event_content(&alice, &other_room, &elsewhere).await["body"],
        "elsewhere"
    );
    let (status, body) = alice
        .put(
            &room_path(&room_id, "send/m.room.redaction/r2"),
            json!({ "reason": "no target" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
}

#[actix_web::test]
async fn publishing_a_room_needs_the_power_to_set_its_canonical_alias() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let path = format!("/_matrix/client/v3/directory/list/room/{}", enc(&room_id));

    let (status, body) = bob.put(&path, json!({ "visibility": "public" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    let (_, visibility) = client.get(&path, None).await;
    assert_eq!(visibility["visibility"], "private", "{visibility}");

    let (status, body) = alice.put(&path, json!({ "visibility": "public" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, visibility) = client.get(&path, None).await;
    assert_eq!(visibility["visibility"], "public", "{visibility}");
}
