//! Receipts and read markers: `POST /rooms/{roomId}/receipt/...` and
//! `/read_markers`, seen through `/sync` (`m.receipt` in a room's
//! `ephemeral`, `m.fully_read` in its `account_data`). On the split, the
//! receipts and account data streams each have two writers on instances
//! other than the one requests arrive at, and `/sync` is served by a third.

use std::time::Duration;

use awc::http::StatusCode;
use lattice::roles::receipts::{PutReceipt, ReceiptType, RECEIPTS_STREAM};
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("next_batch in {sync}"))
        .to_owned()
}

/// The content of the room's `m.receipt` ephemeral event in `sync`
/// (`Value::Null` when there is none).
fn receipts(sync: &Value, room_id: &str) -> Value {
    let events = sync["rooms"]["join"][room_id]["ephemeral"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let receipts: Vec<&Value> = events.iter().filter(|e| e["type"] == "m.receipt").collect();
    assert!(receipts.len() <= 1, "one m.receipt per room: {sync}");
    receipts
        .first()
        .map(|event| event["content"].clone())
        .unwrap_or(Value::Null)
}

/// The content of the room's account data `kind` in `sync`.
fn room_account_data(sync: &Value, room_id: &str, kind: &str) -> Value {
    sync["rooms"]["join"][room_id]["account_data"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == kind))
        .map(|event| event["content"].clone())
        .unwrap_or(Value::Null)
}

async fn post_receipt(
    user: &User,
    room_id: &str,
    receipt_type: &str,
    event_id: &str,
    body: Value,
) -> (StatusCode, Value) {
    user.post(
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/{}/{}",
            enc(room_id),
            enc(receipt_type),
            enc(event_id)
        ),
        body,
    )
    .await
}

async fn read(user: &User, room_id: &str, receipt_type: &str, event_id: &str) {
    let (status, body) = post_receipt(user, room_id, receipt_type, event_id, json!({})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{receipt_type} on {event_id}: {body}"
    );
    assert_eq!(body, json!({}));
}

/// A room of alice's that bob joined, with a message of alice's in it.
async fn room_with_bob(cluster: &TestCluster) -> (User, User, String, String) {
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let event_id = alice.send_text(&room_id, "hello").await;
    (alice, bob, room_id, event_id)
}

/// The instance `/sync` requests go to.
fn sync_instance(cluster: &TestCluster) -> &'static str {
    if cluster.is_split() {
        "sync2"
    } else {
        "main"
    }
}

#[actix_web::test]
async fn a_receipt_appears_in_the_other_members_sync() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, event_id) = room_with_bob(&cluster).await;
    let since = next_batch(&bob.sync("timeout=0").await);

    read(&alice, &room_id, "m.read", &event_id).await;
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    let content = receipts(&sync, &room_id);
    let receipt = &content[&event_id]["m.read"][&alice.user_id];
    assert!(receipt["ts"].as_i64().is_some_and(|ts| ts > 0), "{sync}");
    assert!(receipt.get("thread_id").is_none(), "unthreaded: {sync}");

    // Once only: the next sync from there has no receipt.
    let again = bob
        .sync(&format!("since={}&timeout=0", enc(&next_batch(&sync))))
        .await;
    assert_eq!(receipts(&again, &room_id), Value::Null, "{again}");
    // An initial sync shows the room's current receipts, to everyone.
    for user in [&alice, &bob] {
        let initial = user.sync("timeout=0").await;
        assert_eq!(
            receipts(&initial, &room_id)[&event_id]["m.read"][&alice.user_id],
            *receipt,
            "{initial}"
        );
    }
}

#[actix_web::test]
async fn a_private_receipt_is_seen_only_by_its_owner() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, event_id) = room_with_bob(&cluster).await;
    let bob_since = next_batch(&bob.sync("timeout=0").await);
    let alice_since = next_batch(&alice.sync("timeout=0").await);

    read(&alice, &room_id, "m.read.private", &event_id).await;
    let own = alice
        .sync(&format!("since={}&timeout=0", enc(&alice_since)))
        .await;
    assert!(
        receipts(&own, &room_id)[&event_id]["m.read.private"][&alice.user_id]["ts"].is_i64(),
        "{own}"
    );
    let other = bob
        .sync(&format!("since={}&timeout=0", enc(&bob_since)))
        .await;
    assert_eq!(receipts(&other, &room_id), Value::Null, "{other}");
    let initial = bob.sync("timeout=0").await;
    assert_eq!(receipts(&initial, &room_id), Value::Null, "{initial}");
}

#[actix_web::test]
async fn a_receipt_for_an_earlier_event_does_not_move_back() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, first) = room_with_bob(&cluster).await;
    let second = alice.send_text(&room_id, "again").await;
    read(&bob, &room_id, "m.read", &second).await;
    let since = next_batch(&alice.sync("timeout=0").await);

    // Accepted, and nothing changes.
    read(&bob, &room_id, "m.read", &first).await;
    read(&bob, &room_id, "m.read", &second).await;
    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    assert_eq!(receipts(&sync, &room_id), Value::Null, "{sync}");
    let content = receipts(&alice.sync("timeout=0").await, &room_id);
    assert!(
        content[&second]["m.read"][&bob.user_id].is_object(),
        "{content}"
    );
    assert!(content.get(&first).is_none(), "{content}");
}

#[actix_web::test]
async fn threaded_receipts_are_kept_per_thread() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, root) = room_with_bob(&cluster).await;
    let (status, reply) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/reply1",
                enc(&room_id)
            ),
            json!({
                "msgtype": "m.text",
                "body": "in the thread",
                "m.relates_to": { "rel_type": "m.thread", "event_id": root },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let reply = reply["event_id"].as_str().expect("an event id").to_owned();
    let since = next_batch(&alice.sync("timeout=0").await);

    for (event_id, thread_id) in [(&reply, root.as_str()), (&root, "main")] {
        let (status, body) = post_receipt(
            &bob,
            &room_id,
            "m.read",
            event_id,
            json!({ "thread_id": thread_id }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The reply is in the root's thread, not on the main timeline.
    let (status, body) = post_receipt(
        &bob,
        &room_id,
        "m.read",
        &reply,
        json!({ "thread_id": "main" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    // An unthreaded receipt is a third one.
    read(&bob, &room_id, "m.read", &root).await;

    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    let content = receipts(&sync, &room_id);
    assert_eq!(
        content[&reply]["m.read"][&bob.user_id]["thread_id"], root,
        "{sync}"
    );
    let on_root = &content[&root]["m.read"][&bob.user_id];
    // Two receipts of bob's on the root: the spec's content has one entry
    // per (event, type, user); the later one (unthreaded) is shown.
    assert!(on_root.is_object(), "{sync}");
    let initial = receipts(&alice.sync("timeout=0").await, &room_id);
    assert_eq!(initial[&reply]["m.read"][&bob.user_id]["thread_id"], root);
}

#[actix_web::test]
async fn read_markers_set_fully_read_as_room_account_data() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, first) = room_with_bob(&cluster).await;
    let second = alice.send_text(&room_id, "second").await;
    let bob_since = next_batch(&bob.sync("timeout=0").await);
    let alice_since = next_batch(&alice.sync("timeout=0").await);

    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room_id)),
            json!({ "m.fully_read": first, "m.read": first, "m.unknown": "ignored" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = bob
        .sync(&format!("since={}&timeout=0", enc(&bob_since)))
        .await;
    assert_eq!(
        room_account_data(&sync, &room_id, "m.fully_read"),
        json!({ "event_id": first }),
        "{sync}"
    );
    assert!(receipts(&sync, &room_id)[&first]["m.read"][&bob.user_id].is_object());
    // The marker is bob's: alice sees his receipt, not his marker.
    let other = alice
        .sync(&format!("since={}&timeout=0", enc(&alice_since)))
        .await;
    assert!(receipts(&other, &room_id)[&first]["m.read"][&bob.user_id].is_object());
    assert_eq!(
        room_account_data(&other, &room_id, "m.fully_read"),
        Value::Null
    );

    // The receipt endpoint moves it too; never back.
    let since = next_batch(&sync);
    read(&bob, &room_id, "m.fully_read", &second).await;
    read(&bob, &room_id, "m.fully_read", &first).await;
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(
        room_account_data(&sync, &room_id, "m.fully_read"),
        json!({ "event_id": second }),
        "{sync}"
    );
    // m.fully_read is not a receipt.
    assert_eq!(receipts(&sync, &room_id), Value::Null, "{sync}");
    let initial = bob.sync("timeout=0").await;
    assert_eq!(
        room_account_data(&initial, &room_id, "m.fully_read"),
        json!({ "event_id": second })
    );
}

#[actix_web::test]
async fn a_long_poll_wakes_on_a_receipt() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, event_id) = room_with_bob(&cluster).await;
    let since = next_batch(&bob.sync("timeout=0").await);

    let query = format!("since={}&timeout=20000", enc(&since));
    let waiting = bob.sync(&query);
    let reading = async {
        // Once bob's long-poll waits on the sync instance, alice reads.
        cluster.wait_for_long_poll(sync_instance(&cluster)).await;
        read(&alice, &room_id, "m.read", &event_id).await;
        std::time::Instant::now()
    };
    let (sync, read_at) = futures::join!(waiting, reading);
    assert!(
        receipts(&sync, &room_id)[&event_id]["m.read"][&alice.user_id].is_object(),
        "{sync}"
    );
    assert!(
        read_at.elapsed() < Duration::from_secs(5),
        "the long-poll answered {:?} after the receipt",
        read_at.elapsed()
    );
}

#[actix_web::test]
async fn a_sync_token_resumes_on_another_sync_instance() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, first) = room_with_bob(&cluster).await;
    let second = alice.send_text(&room_id, "second").await;
    // Bob syncs through each instance that serves /sync in turn.
    let instances: Vec<&str> = if cluster.is_split() {
        vec!["sync2", "main", "sync2", "main"]
    } else {
        vec!["main"; 4]
    };
    let via = |instance: &str| User {
        client: cluster.node_client(instance),
        ..bob.clone()
    };
    let mut since = next_batch(&via(instances[0]).sync("timeout=0").await);
    let mut seen = Vec::new();
    // Round 1 reads the first message, round 2 the second (the receipt
    // moves), round 3 nothing: each sync resumes another instance's token.
    for (round, instance) in instances.iter().enumerate().skip(1) {
        match round {
            1 => read(&alice, &room_id, "m.read", &first).await,
            2 => read(&alice, &room_id, "m.read", &second).await,
            _ => {}
        }
        let sync = via(instance)
            .sync(&format!("since={}&timeout=0", enc(&since)))
            .await;
        if let Some(content) = receipts(&sync, &room_id).as_object() {
            seen.extend(content.keys().cloned());
        }
        since = next_batch(&sync);
    }
    // Each receipt exactly once, wherever the token was made.
    assert_eq!(seen, vec![first, second]);
}

#[actix_web::test]
async fn bad_receipts_get_the_specs_errors_and_change_nothing() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, event_id) = room_with_bob(&cluster).await;
    let carol = cluster.client().register("carol").await;
    let elsewhere = carol.create_room(json!({})).await;
    let foreign_event = carol.send_text(&elsewhere, "not in alice's room").await;
    let since = next_batch(&bob.sync("timeout=0").await);

    let cases: Vec<(&User, &str, &str, Value, StatusCode, &str)> = vec![
        (
            &alice,
            "m.unread",
            &event_id,
            json!({}),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            &alice,
            "m.read",
            &foreign_event,
            json!({}),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            &alice,
            "m.read",
            "$missing",
            json!({}),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            &alice,
            "m.read",
            "not-an-event",
            json!({}),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            &carol,
            "m.read",
            &event_id,
            json!({}),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        ),
        (
            &alice,
            "m.fully_read",
            &event_id,
            json!({ "thread_id": "main" }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            &alice,
            "m.read",
            &event_id,
            json!({ "thread_id": "" }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            &alice,
            "m.read",
            &event_id,
            json!({ "thread_id": 7 }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            &alice,
            "m.read",
            &event_id,
            json!({ "thread_id": "not-a-thread" }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
    ];
    for (user, receipt_type, event, body, status, errcode) in cases {
        let (got, answer) = post_receipt(user, &room_id, receipt_type, event, body.clone()).await;
        assert_eq!(
            (got, answer["errcode"].as_str()),
            (status, Some(errcode)),
            "{receipt_type} on {event} with {body}: {answer}"
        );
    }
    for (body, status, errcode) in [
        (
            json!({ "m.read": foreign_event }),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        // A bad marker refuses the good receipt beside it.
        (
            json!({ "m.read": event_id, "m.fully_read": foreign_event }),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            json!({ "m.read": 5 }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
    ] {
        let (got, answer) = alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room_id)),
                body.clone(),
            )
            .await;
        assert_eq!(
            (got, answer["errcode"].as_str()),
            (status, Some(errcode)),
            "{body}: {answer}"
        );
    }
    let (got, answer) = carol
        .post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room_id)),
            json!({ "m.read": event_id }),
        )
        .await;
    assert_eq!(
        (got, answer["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
    );

    // Nothing changed: no receipt, no marker.
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(receipts(&sync, &room_id), Value::Null, "{sync}");
    let initial = alice.sync("timeout=0").await;
    assert_eq!(receipts(&initial, &room_id), Value::Null, "{initial}");
    assert_eq!(
        room_account_data(&initial, &room_id, "m.fully_read"),
        Value::Null
    );
}

#[actix_web::test]
async fn a_receipt_delivered_twice_is_written_once() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id, event_id) = room_with_bob(&cluster).await;
    let since = next_batch(&bob.sync("timeout=0").await);
    let message = PutReceipt {
        room_id: room_id.parse().expect("a room id"),
        user_id: alice.user_id.parse().expect("a user id"),
        receipt_type: ReceiptType::Read,
        thread_id: None,
        event_id: event_id.parse().expect("an event id"),
        ts: 1_700_000_000_000,
    };
    let mut answers = Vec::new();
    for _ in 0..2 {
        let message = message.clone();
        let written = cluster
            .on_node("main", |node| async move {
                let writer = node
                    .mailboxes
                    .for_shard::<PutReceipt>(RECEIPTS_STREAM, message.room_id.as_str())
                    .expect("a receipts writer");
                writer.call(message, Duration::from_secs(10)).await
            })
            .await
            .expect("delivered")
            .expect("written");
        answers.push(written.position);
    }
    assert!(
        answers[0].is_some(),
        "the first delivery writes: {answers:?}"
    );
    assert_eq!(answers[1], None, "the second changes nothing");
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(
        receipts(&sync, &room_id)[&event_id]["m.read"][&alice.user_id],
        json!({ "ts": 1_700_000_000_000i64 }),
        "{sync}"
    );
}
