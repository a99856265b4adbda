//! Idempotency per endpoint: a transaction id is scoped per device and
//! endpoint (and room, for sends), and requests without one that cross a
//! mailbox (state events, membership, createRoom) carry a request id made
//! where they entered the server, so a message delivered twice writes once.

use awc::http::StatusCode;
use lattice::roles::events::{CreateRoom, InitialEvent, SendEvent, Transaction};
use ruma::{OwnedUserId, RoomVersionId};
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

async fn send(user: &User, room_id: &str, txn_id: &str, body: &str) -> String {
    let (status, response) = user
        .put(
            &room_path(room_id, &format!("send/m.room.message/{txn_id}")),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response["event_id"].as_str().expect("event_id").to_owned()
}

/// The events of `kind` in the room's timeline, oldest first.
async fn timeline_of(user: &User, room_id: &str, kind: &str) -> Vec<Value> {
    let page = user.messages(room_id, "dir=f&limit=100").await;
    page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

#[actix_web::test]
async fn a_transaction_id_is_scoped_to_its_room() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_a = alice.create_room(json!({})).await;
    let room_b = alice.create_room(json!({})).await;

    let in_a = send(&alice, &room_a, "same", "to A").await;
    let in_b = send(&alice, &room_b, "same", "to B").await;
    assert_ne!(in_a, in_b, "a new event in room B");
    let b_messages = timeline_of(&alice, &room_b, "m.room.message").await;
    assert_eq!(b_messages.len(), 1, "{b_messages:?}");
    assert_eq!(b_messages[0]["content"]["body"], "to B");
    // Still idempotent within a room.
    assert_eq!(send(&alice, &room_a, "same", "to A again").await, in_a);
}

#[actix_web::test]
async fn a_transaction_id_is_scoped_to_its_endpoint() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let regrettable = send(&alice, &room_id, "t1", "regrettable").await;

    let sent = send(&alice, &room_id, "t2", "fine").await;
    let (status, body) = alice
        .put(
            &room_path(&room_id, &format!("redact/{}/t2", enc(&regrettable))),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let redaction = body["event_id"].as_str().expect("event_id");
    assert_ne!(redaction, sent, "the redaction is a new event");
    let (_, event) = alice
        .get(&room_path(
            &room_id,
            &format!("event/{}", enc(&regrettable)),
        ))
        .await;
    assert_eq!(event["content"], json!({}), "redacted: {event}");
    // The same redaction again is answered as the first.
    let (_, again) = alice
        .put(
            &room_path(&room_id, &format!("redact/{}/t2", enc(&regrettable))),
            json!({}),
        )
        .await;
    assert_eq!(again["event_id"], redaction);
    // The sending device still sees its transaction id.
    let sync = alice.sync("").await;
    let timeline = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    let find = |id: &str| {
        timeline
            .as_array()
            .and_then(|events| events.iter().find(|e| e["event_id"] == id).cloned())
            .unwrap_or_else(|| panic!("{id} in {timeline}"))
    };
    assert_eq!(find(&sent)["unsigned"]["transaction_id"], "t2");
    assert_eq!(find(redaction)["unsigned"]["transaction_id"], "t2");
}

#[actix_web::test]
async fn a_state_event_delivered_twice_writes_once() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let message = SendEvent {
        room_id: room_id.parse().expect("a room id"),
        sender: alice.user_id.parse().expect("a user id"),
        kind: "m.room.topic".into(),
        state_key: Some(String::new()),
        content: json!({ "topic": "once" }),
        redacts: None,
        txn: Some(Transaction::request()),
        push: None,
    };

    let mut answers = Vec::new();
    for _ in 0..2 {
        let message = message.clone();
        let persisted = cluster
            .on_node("main", |node| async move { node.send_event(message).await })
            .await
            .expect("persisted");
        answers.push(persisted.event_id);
    }
    assert_eq!(answers[0], answers[1], "the same event both times");
    let topics = timeline_of(&alice, &room_id, "m.room.topic").await;
    assert_eq!(topics.len(), 1, "written once: {topics:?}");
    assert_eq!(topics[0]["event_id"], answers[0].as_str());
    // A request id is not a client's transaction id: `/sync` shows none.
    assert!(topics[0]["unsigned"].get("transaction_id").is_none());
}

#[actix_web::test]
async fn a_create_room_delivered_twice_creates_one_room() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let alice_id: OwnedUserId = alice.user_id.parse().expect("a user id");
    let message = CreateRoom {
        room_version: RoomVersionId::V12,
        creator: alice_id.clone(),
        create_content: serde_json::Map::new(),
        initial_events: vec![InitialEvent {
            sender: alice_id,
            kind: "m.room.member".into(),
            state_key: Some(alice.user_id.clone()),
            content: json!({ "membership": "join" }),
        }],
        is_public: false,
        request_id: "the-same-request".into(),
    };

    let mut rooms = Vec::new();
    for _ in 0..2 {
        let message = message.clone();
        let persisted = cluster
            .on_node(
                "main",
                |node| async move { node.create_room(message).await },
            )
            .await
            .expect("created");
        rooms.push(persisted.room_id);
    }
    assert_eq!(rooms[0], rooms[1], "the same room both times");
    let (status, joined) = alice.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["joined_rooms"], json!([rooms[0]]), "one room");
}

#[actix_web::test]
async fn old_request_ids_are_deleted_and_client_transaction_ids_kept() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let sent = send(&alice, &room_id, "t1", "kept").await;
    let (status, body) = alice
        .put(
            &room_path(&room_id, "state/m.room.topic/"),
            json!({ "topic": "a state event, with a request id" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let database = cluster.database().await;
    let count = |endpoint: &'static str| {
        let (database, room_id) = (&database, &room_id);
        async move {
            let row = database
                .query_one(
                    "SELECT count(*) FROM event_txn_ids t JOIN events e ON e.event_id = t.event_id
                     WHERE e.room_id = $1 AND t.endpoint = $2",
                    &[room_id, &endpoint],
                )
                .await
                .expect("count");
            row.get::<_, i64>(0)
        }
    };
    assert!(count("request").await >= 2, "createRoom and the topic");
    assert_eq!(count("send").await, 1);

    // Nothing is deleted before its time...
    let deleted = cluster
        .on_node("main", |node| async move {
            lattice::storage::rooms::delete_request_ids_older_than(&node.pool, 1).await
        })
        .await
        .expect("deleted");
    assert_eq!(deleted, 0);
    // ...and once the events are old, only the request ids go.
    database
        .execute(
            "UPDATE events SET origin_server_ts = 0 WHERE room_id = $1",
            &[&room_id],
        )
        .await
        .expect("age the room's events");
    let deleted = cluster
        .on_node("main", |node| async move {
            lattice::storage::rooms::delete_request_ids_older_than(&node.pool, 1).await
        })
        .await
        .expect("deleted");
    assert!(deleted >= 2, "{deleted} request ids deleted");
    assert_eq!(count("request").await, 0);
    assert_eq!(count("send").await, 1);
    // The client's retry is still answered with the event it sent.
    assert_eq!(send(&alice, &room_id, "t1", "kept").await, sent);
}

#[actix_web::test]
async fn sends_that_come_again_among_new_ones_write_once_and_the_new_ones_are_written() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let mut first = Vec::new();
    for n in 0..10 {
        first.push(send(&alice, &room_id, &format!("t{n}"), &n.to_string()).await);
    }

    // The ten again, with other bodies, at once with ten new ones: the
    // persister takes them in batches that mix both.
    let sends = (0..20).map(|n| {
        let body = if n < 10 {
            "again".to_owned()
        } else {
            n.to_string()
        };
        let alice = &alice;
        let room_id = &room_id;
        async move { send(alice, room_id, &format!("t{n}"), &body).await }
    });
    let answers = futures::future::join_all(sends).await;
    assert_eq!(answers[..10], first[..], "the first events answered again");
    for new in &answers[10..] {
        assert!(!first.contains(new), "{new} is a new event");
    }
    let bodies: Vec<String> = timeline_of(&alice, &room_id, "m.room.message")
        .await
        .iter()
        .map(|event| {
            event["content"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let mut sorted = bodies.clone();
    sorted.sort_by_key(|body| body.parse::<u32>().unwrap_or(u32::MAX));
    let expected: Vec<String> = (0..20).map(|n| n.to_string()).collect();
    assert_eq!(sorted, expected, "each written once: {bodies:?}");
}
