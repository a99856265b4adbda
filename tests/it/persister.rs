//! The event persister under load and over time: one request the database
//! refuses inside a group commit fails alone, the per-room memory stays
//! bounded, and a large room's state is written in linear space.

use awc::http::StatusCode;
use ruma::{OwnedUserId, RoomVersionId};
use serde_json::{json, Value};

use lattice::roles::events::{CreateRoom, InitialEvent};

use crate::cluster::{enc, Options, TestCluster, User};

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

/// The first value of `key` anywhere in `value` (actor snapshots are
/// nested per node and actor).
fn find_key<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// The event persister's snapshot (on `events1` in the split).
async fn persister_snapshot(cluster: &TestCluster) -> Value {
    let instance = if cluster.is_split() {
        "events1"
    } else {
        "main"
    };
    cluster
        .on_node(instance, |node| async move { node.observe().await })
        .await
}

async fn send(user: &User, room_id: &str, txn_id: &str, body: &str) -> (StatusCode, Value) {
    user.put(
        &room_path(room_id, &format!("send/m.room.message/{txn_id}")),
        json!({ "msgtype": "m.text", "body": body }),
    )
    .await
}

#[actix_web::test]
async fn a_request_the_database_refuses_fails_alone() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol", "dan"] {
        users.push(client.register(name).await);
    }
    let room_id = users[0]
        .create_room(json!({ "preset": "public_chat" }))
        .await;
    for user in &users[1..] {
        user.join(&room_id).await;
    }
    // A fault injected in the database: it refuses one message body, which
    // passes every check before it (as a value over an index's limit did).
    cluster
        .database()
        .await
        .batch_execute(
            "ALTER TABLE events ADD CONSTRAINT test_refuses_poison
             CHECK (pdu #>> '{content,body}' IS DISTINCT FROM 'poison')",
        )
        .await
        .expect("add the constraint");

    let mut sent = Vec::new();
    let mut split = false;
    for round in 0..30 {
        let mut requests = Vec::new();
        for i in 0..24 {
            let user = &users[i % users.len()];
            let body = if i == 12 {
                "poison".to_owned()
            } else {
                format!("round {round} message {i}")
            };
            let txn_id = format!("r{round}m{i}");
            let room_id = room_id.clone();
            requests.push(async move {
                let answer = send(user, &room_id, &txn_id, &body).await;
                (body, answer)
            });
        }
        for (body, (status, answer)) in futures::future::join_all(requests).await {
            if body == "poison" {
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
                assert_eq!(answer["errcode"], "M_UNKNOWN", "{answer}");
            } else {
                assert_eq!(status, StatusCode::OK, "{body}: {answer}");
                sent.push(body);
            }
        }
        let snapshot = persister_snapshot(&cluster).await;
        let groups_split = find_key(&snapshot, "groups_split").and_then(Value::as_u64);
        if groups_split.unwrap_or(0) > 0 {
            split = true;
            break;
        }
    }
    assert!(
        split,
        "the refused message never shared a group commit with others"
    );
    let page = users[0].messages(&room_id, "dir=b&limit=1000").await;
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert!(!bodies.contains(&"poison"), "{bodies:?}");
    for body in &sent {
        assert!(
            bodies.contains(&body.as_str()),
            "{body} was answered but is missing"
        );
    }
    assert_eq!(bodies.len(), sent.len(), "each message once: {bodies:?}");
}

#[actix_web::test]
async fn the_writer_remembers_a_bounded_number_of_rooms() {
    let cluster = TestCluster::start_with(Options {
        event_writer_cached_rooms: Some(2),
        ..Options::default()
    })
    .await;
    let alice = cluster.client().register("alice").await;
    let mut rooms = Vec::new();
    for n in 0..5 {
        let room_id = alice
            .create_room(json!({ "name": format!("room {n}") }))
            .await;
        alice
            .send_text(&room_id, &format!("first in room {n}"))
            .await;
        rooms.push(room_id);
    }
    let snapshot = persister_snapshot(&cluster).await;
    let cached = find_key(&snapshot, "rooms_cached").and_then(Value::as_u64);
    assert_eq!(cached, Some(2), "{snapshot}");

    // The first rooms were forgotten; writing them again reads them back.
    for (n, room_id) in rooms.iter().enumerate() {
        alice
            .send_text(room_id, &format!("second in room {n}"))
            .await;
        let (status, body) = alice
            .put(
                &room_path(room_id, "state/m.room.topic/"),
                json!({ "topic": format!("topic {n}") }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        alice
            .send_text(room_id, &format!("third in room {n}"))
            .await;
    }
    for (n, room_id) in rooms.iter().enumerate() {
        let page = alice.messages(room_id, "dir=f&limit=100").await;
        let bodies: Vec<&str> = page["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        let expected = [
            format!("first in room {n}"),
            format!("second in room {n}"),
            format!("third in room {n}"),
        ];
        assert_eq!(bodies, expected, "room {n} in order");
        let topic = alice.state_content(room_id, "m.room.topic", "").await;
        assert_eq!(topic["topic"], format!("topic {n}"));
        let name = alice.state_content(room_id, "m.room.name", "").await;
        assert_eq!(name["name"], format!("room {n}"), "earlier state kept");
    }
    let snapshot = persister_snapshot(&cluster).await;
    let cached = find_key(&snapshot, "rooms_cached").and_then(Value::as_u64);
    assert_eq!(cached, Some(2), "{snapshot}");
}

#[actix_web::test]
async fn a_large_initial_state_is_written_in_linear_space() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    // More than createRoom takes from a client (`initial_state` is bounded at
    // the edge), straight to the events writer through its mailbox.
    let items = 1000;
    let alice_id: OwnedUserId = alice.user_id.parse().expect("a user id");
    let mut initial_events = vec![InitialEvent {
        sender: alice_id.clone(),
        kind: "m.room.member".into(),
        state_key: Some(alice.user_id.clone()),
        content: json!({ "membership": "join" }),
    }];
    initial_events.extend((0..items).map(|i| InitialEvent {
        sender: alice_id.clone(),
        kind: "org.example.item".into(),
        state_key: Some(format!("{i}")),
        content: json!({ "n": i }),
    }));
    let message = CreateRoom {
        room_version: RoomVersionId::V12,
        creator: alice_id,
        create_content: serde_json::Map::new(),
        initial_events,
        is_public: false,
        request_id: "a-large-room".into(),
    };
    let room_id = cluster
        .on_node(
            "main",
            |node| async move { node.create_room(message).await },
        )
        .await
        .expect("created")
        .room_id
        .to_string();

    let state = alice.room_state(&room_id).await;
    let stored_items = state
        .iter()
        .filter(|e| e["type"] == "org.example.item")
        .count();
    assert_eq!(stored_items, items, "every item is in the state");
    // State groups hold deltas and, now and then, a full snapshot: a
    // snapshot every 64 state events wrote ~N²/128 entries (~8,000 here).
    let entries: i64 = cluster
        .database()
        .await
        .query_one(
            "SELECT COALESCE(sum(jsonb_array_length(delta)), 0)::BIGINT FROM state_groups WHERE room_id = $1",
            &[&room_id],
        )
        .await
        .expect("count state group entries")
        .get(0);
    let events = (items + 10) as i64;
    assert!(
        entries <= 2 * events,
        "{entries} state group entries for about {events} state events"
    );
    // The state at an event is still read back right, after more events.
    let (status, body) = alice
        .put(
            &room_path(&room_id, "state/org.example.item/7"),
            json!({ "n": "changed" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let changed = alice.state_content(&room_id, "org.example.item", "7").await;
    assert_eq!(changed["n"], "changed");
    let unchanged = alice.state_content(&room_id, "org.example.item", "8").await;
    assert_eq!(unchanged["n"], 8);
}
