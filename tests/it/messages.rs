//! The timeline: sending (idempotent per device and transaction id),
//! redaction, `/messages` in both directions, `/context` and single events.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("an array of events")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn send(user: &User, room_id: &str, txn_id: &str, body: &str) -> (StatusCode, Value) {
    user.put(
        &room_path(room_id, &format!("send/m.room.message/{txn_id}")),
        json!({ "msgtype": "m.text", "body": body }),
    )
    .await
}

#[actix_web::test]
async fn send_is_idempotent_per_transaction() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({})).await;

    let (status, first) = send(&alice, &room_id, "txn1", "hello").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let event_id = first["event_id"].as_str().expect("event_id");
    assert!(event_id.starts_with('$'), "{event_id}");
    let (status, again) = send(&alice, &room_id, "txn1", "hello").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["event_id"], event_id,
        "the same transaction, the same event"
    );

    let page = alice.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), vec!["hello"], "sent once: {page}");

    // The same transaction id from another device is another transaction.
    let laptop = client.login("alice").await;
    let (status, other) = send(&laptop, &room_id, "txn1", "hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(other["event_id"], event_id);
    let page = alice.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), vec!["hello", "hello"]);
}

#[actix_web::test]
async fn transaction_id_is_shown_to_the_sending_device_only() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let laptop = client.login("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let (_, sent) = send(&alice, &room_id, "my-txn", "hi").await;
    let event_id = sent["event_id"].as_str().expect("event_id").to_owned();

    let event_path = room_path(&room_id, &format!("event/{}", enc(&event_id)));
    let (status, event) = alice.get(&event_path).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["unsigned"]["transaction_id"], "my-txn");
    for viewer in [&laptop, &bob] {
        let (status, event) = viewer.get(&event_path).await;
        assert_eq!(status, StatusCode::OK, "{event}");
        assert!(
            event["unsigned"].get("transaction_id").is_none(),
            "{:?} must not see the transaction id: {event}",
            viewer.device_id
        );
    }

    let sync = alice.sync("").await;
    let timeline = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    let mine = timeline
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event_id"] == event_id.as_str())
        .expect("the message is in alice's sync");
    assert_eq!(mine["unsigned"]["transaction_id"], "my-txn");
    let sync = bob.sync("").await;
    let theirs = sync["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event_id"] == event_id.as_str())
        .expect("the message is in bob's sync")
        .clone();
    assert!(
        theirs["unsigned"].get("transaction_id").is_none(),
        "{theirs}"
    );
}

#[actix_web::test]
async fn send_errors() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({})).await;

    let (status, body) = send(&bob, &room_id, "t", "let me in").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = send(&alice, "!nowhere:lattice.test", "t", "hello?").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    let (status, body) = send(&alice, "nowhere", "t", "hello?").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    let (status, body) = alice
        .put(
            &room_path(&room_id, "send/m.room.message/t2"),
            json!("text"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");
}

#[actix_web::test]
async fn an_event_over_64_kib_is_too_large() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let huge = "x".repeat(70 * 1024);
    let (status, body) = send(&alice, &room_id, "t1", &huge).await;
    assert_eq!(
        (status, &body["errcode"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("M_TOO_LARGE")),
        "the spec's answer to an event over 65536 bytes is 413 M_TOO_LARGE: {body}"
    );
}

#[actix_web::test]
async fn redaction_strips_content() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let event_id = bob.send_text(&room_id, "regrettable").await;

    let (status, body) = bob
        .put(
            &room_path(&room_id, &format!("redact/{}/r1", enc(&event_id))),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let redaction_id = body["event_id"].as_str().expect("event_id").to_owned();
    // Idempotent like sends.
    let (_, again) = bob
        .put(
            &room_path(&room_id, &format!("redact/{}/r1", enc(&event_id))),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(again["event_id"], redaction_id.as_str());

    let (status, event) = alice
        .get(&room_path(&room_id, &format!("event/{}", enc(&event_id))))
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"], json!({}), "content stripped: {event}");
    assert_eq!(event["type"], "m.room.message");
    let because = &event["unsigned"]["redacted_because"];
    assert_eq!(because["event_id"], redaction_id.as_str(), "{event}");
    assert_eq!(because["type"], "m.room.redaction");
    assert_eq!(because["content"]["reason"], "oops");

    let page = alice.messages(&room_id, "dir=b&limit=5").await;
    let chunk = page["chunk"].as_array().expect("chunk");
    let redaction = chunk
        .iter()
        .find(|e| e["event_id"] == redaction_id.as_str())
        .expect("the redaction is in the timeline");
    assert_eq!(redaction["redacts"], event_id.as_str(), "{redaction}");
    let redacted = chunk
        .iter()
        .find(|e| e["event_id"] == event_id.as_str())
        .expect("the redacted event stays in the timeline");
    assert_eq!(redacted["content"], json!({}));

    // The room creator has the power to redact others' events.
    let second = bob.send_text(&room_id, "also bad").await;
    let (status, body) = alice
        .put(
            &room_path(&room_id, &format!("redact/{}/r2", enc(&second))),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn redacting_needs_power_over_others_events() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let event_id = alice.send_text(&room_id, "mine").await;

    let (status, body) = bob
        .put(
            &room_path(&room_id, &format!("redact/{}/r1", enc(&event_id))),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (_, event) = alice
        .get(&room_path(&room_id, &format!("event/{}", enc(&event_id))))
        .await;
    assert_eq!(event["content"]["body"], "mine", "not redacted");

    let (status, body) = carol
        .put(
            &room_path(&room_id, &format!("redact/{}/r1", enc(&event_id))),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not a member: {body}");

    let (status, body) = alice
        .put(
            &room_path(&room_id, &format!("redact/{}/r3", enc("$unknown"))),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    let (status, body) = alice
        .put(&room_path(&room_id, "redact/not-an-event/r4"), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
}

#[actix_web::test]
async fn messages_in_both_directions_with_limits_and_filters() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    for n in 1..=3 {
        alice.send_text(&room_id, &format!("a{n}")).await;
        bob.send_text(&room_id, &format!("b{n}")).await;
    }

    let page = alice.messages(&room_id, "dir=b&limit=4").await;
    assert_eq!(bodies(&page["chunk"]), vec!["b3", "a3", "b2", "a2"]);
    assert!(
        page["start"].is_string() && page["end"].is_string(),
        "{page}"
    );
    let page = alice
        .messages(
            &room_id,
            &format!(
                "dir=b&limit=4&from={}",
                enc(page["end"].as_str().unwrap_or_default())
            ),
        )
        .await;
    assert_eq!(bodies(&page["chunk"])[..2], ["b1", "a1"], "{page}");

    let page = alice.messages(&room_id, "dir=f&limit=100").await;
    let chunk = page["chunk"].as_array().expect("chunk");
    assert_eq!(
        chunk[0]["type"], "m.room.create",
        "forwards starts at the start"
    );
    assert_eq!(
        bodies(&page["chunk"]),
        vec!["a1", "b1", "a2", "b2", "a3", "b3"]
    );

    let filter = enc(&json!({ "senders": [bob.user_id] }).to_string());
    let page = alice
        .messages(&room_id, &format!("dir=b&limit=50&filter={filter}"))
        .await;
    let chunk = page["chunk"].as_array().expect("chunk");
    assert!(
        chunk.iter().all(|e| e["sender"] == bob.user_id.as_str()),
        "{page}"
    );
    assert_eq!(bodies(&page["chunk"]), vec!["b3", "b2", "b1"]);

    let filter =
        enc(&json!({ "types": ["m.room.message"], "not_senders": [bob.user_id] }).to_string());
    let page = alice
        .messages(&room_id, &format!("dir=f&limit=50&filter={filter}"))
        .await;
    let chunk = page["chunk"].as_array().expect("chunk");
    assert_eq!(chunk.len(), 3, "{page}");
    assert_eq!(bodies(&page["chunk"]), vec!["a1", "a2", "a3"]);

    let filter = enc(&json!({ "lazy_load_members": true }).to_string());
    let page = alice
        .messages(&room_id, &format!("dir=b&limit=2&filter={filter}"))
        .await;
    let members: Vec<&str> = page["state"]
        .as_array()
        .expect("lazy-loading members adds state")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(members.contains(&alice.user_id.as_str()), "{page}");
    assert!(members.contains(&bob.user_id.as_str()), "{page}");
}

#[actix_web::test]
async fn pagination_tokens_chain_to_the_end() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    for n in 0..7 {
        alice.send_text(&room_id, &format!("m{n}")).await;
    }
    let everything = alice.messages(&room_id, "dir=f&limit=1000").await;
    let all_ids: Vec<Value> = everything["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    assert!(
        everything.get("end").is_none(),
        "one page holds it all: {everything}"
    );

    for dir in ["b", "f"] {
        let mut seen = Vec::new();
        let mut from: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut query = format!("dir={dir}&limit=3");
            if let Some(from) = &from {
                query.push_str(&format!("&from={}", enc(from)));
            }
            let page = alice.messages(&room_id, &query).await;
            pages += 1;
            assert!(pages < 20, "pagination does not end");
            for event in page["chunk"].as_array().expect("chunk") {
                seen.push(event["event_id"].clone());
            }
            match page.get("end").and_then(Value::as_str) {
                Some(end) => from = Some(end.to_owned()),
                None => break,
            }
        }
        if dir == "b" {
            seen.reverse();
        }
        assert_eq!(seen, all_ids, "dir={dir}: every event once, in order");
    }

    for query in [
        "dir=x",
        "limit=-1",
        "limit=ten",
        "from=garbage",
        "filter=%7Bnope",
    ] {
        let (status, body) = alice
            .get(&room_path(&room_id, &format!("messages?{query}")))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{query}");
    }
}

#[actix_web::test]
async fn messages_of_rooms_one_is_not_in() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.send_text(&room_id, "before bob").await;

    let (status, body) = bob.get(&room_path(&room_id, "messages?dir=b")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    bob.join(&room_id).await;
    alice.send_text(&room_id, "while bob is here").await;
    let (status, _) = bob.post(&room_path(&room_id, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    alice.send_text(&room_id, "after bob left").await;

    let page = bob.messages(&room_id, "dir=b&limit=50").await;
    let seen = bodies(&page["chunk"]);
    assert!(seen.contains(&"while bob is here".to_owned()), "{page}");
    assert!(
        !seen.contains(&"after bob left".to_owned()),
        "nothing after leaving: {page}"
    );
}

#[actix_web::test]
async fn context_around_an_event() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({ "name": "Ctx" })).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(alice.send_text(&room_id, &format!("m{n}")).await);
    }
    let (status, body) = alice
        .get(&room_path(
            &room_id,
            &format!("context/{}?limit=4", enc(&ids[2])),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event"]["event_id"], ids[2].as_str());
    assert_eq!(bodies(&body["events_before"]), vec!["m1", "m0"], "{body}");
    assert_eq!(bodies(&body["events_after"]), vec!["m3", "m4"], "{body}");
    assert!(body["start"].is_string() && body["end"].is_string());
    let state = body["state"].as_array().expect("state");
    assert!(state.iter().any(|e| e["type"] == "m.room.name"), "{body}");

    // The tokens continue where the context stops.
    let end = body["end"].as_str().expect("end");
    let page = alice
        .messages(&room_id, &format!("dir=f&from={}", enc(end)))
        .await;
    assert!(bodies(&page["chunk"]).is_empty(), "m4 was the last: {page}");
    let start = body["start"].as_str().expect("start");
    let page = alice
        .messages(&room_id, &format!("dir=b&limit=1&from={}", enc(start)))
        .await;
    let chunk = page["chunk"].as_array().expect("chunk");
    assert_eq!(chunk.len(), 1);
    assert_ne!(
        chunk[0]["event_id"],
        ids[0].as_str(),
        "m0 was already shown"
    );
}

#[actix_web::test]
async fn single_events_and_unknown_ones() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({})).await;
    let other_room = bob.create_room(json!({})).await;
    let event_id = alice.send_text(&room_id, "here").await;
    let bobs_event = bob.send_text(&other_room, "elsewhere").await;

    let (status, event) = alice
        .get(&room_path(&room_id, &format!("event/{}", enc(&event_id))))
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["event_id"], event_id.as_str());
    assert_eq!(event["room_id"], room_id.as_str());
    assert_eq!(event["sender"], alice.user_id);
    assert_eq!(event["type"], "m.room.message");
    assert_eq!(
        event["content"],
        json!({ "msgtype": "m.text", "body": "here" })
    );
    assert!(event["origin_server_ts"].is_u64());
    assert!(event["unsigned"]["age"].is_u64());

    for path in [
        room_path(&room_id, &format!("event/{}", enc("$doesnotexist"))),
        // An event of another room, even through a room one is in.
        room_path(&room_id, &format!("event/{}", enc(&bobs_event))),
        room_path(&other_room, &format!("event/{}", enc(&bobs_event))),
        room_path(&room_id, &format!("context/{}", enc(&bobs_event))),
    ] {
        let (status, body) = alice.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{path}");
    }
}

#[actix_web::test]
async fn messages_stop_at_the_to_token() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    alice.send_text(&room_id, "old").await;
    let sync = alice.sync("").await;
    let mark = sync["next_batch"].as_str().expect("next_batch").to_owned();
    for n in 0..3 {
        alice.send_text(&room_id, &format!("new{n}")).await;
    }
    let page = alice
        .messages(&room_id, &format!("dir=b&limit=50&to={}", enc(&mark)))
        .await;
    assert_eq!(
        bodies(&page["chunk"]),
        vec!["new2", "new1", "new0"],
        "{page}"
    );
    let page = alice
        .messages(&room_id, &format!("dir=f&limit=50&from={}", enc(&mark)))
        .await;
    assert_eq!(
        bodies(&page["chunk"]),
        vec!["new0", "new1", "new2"],
        "{page}"
    );
}

#[actix_web::test]
async fn a_redacted_state_event_keeps_only_what_redaction_keeps() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({ "topic": "secret plans" })).await;
    let state = alice.room_state(&room_id).await;
    let topic_id = state
        .iter()
        .find(|e| e["type"] == "m.room.topic")
        .and_then(|e| e["event_id"].as_str())
        .expect("a topic event")
        .to_owned();
    let join_rules_id = state
        .iter()
        .find(|e| e["type"] == "m.room.join_rules")
        .and_then(|e| e["event_id"].as_str())
        .expect("a join rules event")
        .to_owned();
    for (n, event_id) in [&topic_id, &join_rules_id].into_iter().enumerate() {
        let (status, body) = alice
            .put(
                &room_path(&room_id, &format!("redact/{}/r{n}", enc(event_id))),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        alice.state_content(&room_id, "m.room.topic", "").await,
        json!({}),
        "a topic keeps nothing"
    );
    assert_eq!(
        alice.state_content(&room_id, "m.room.join_rules", "").await,
        json!({ "join_rule": "invite" }),
        "join rules keep their rule"
    );
}

#[actix_web::test]
async fn one_bad_send_does_not_fail_the_sends_batched_with_it() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let mut failed = Vec::new();
    let mut sent = 0;
    for round in 0..5 {
        // Concurrent sends reach the writer together; the one Bob sends
        // cannot be stored (PostgreSQL refuses NUL in jsonb).
        let sends = (0..10).map(|i| {
            let (user, body) = if i == 5 {
                (&bob, "nul \u{0} inside")
            } else {
                (&alice, "fine")
            };
            let path = room_path(&room_id, &format!("send/m.room.message/r{round}t{i}"));
            async move {
                let (status, response) = user
                    .put(&path, json!({ "msgtype": "m.text", "body": body }))
                    .await;
                (i, status, response)
            }
        });
        for (i, status, response) in futures::future::join_all(sends).await {
            if i == 5 {
                continue;
            }
            sent += 1;
            if status != StatusCode::OK {
                failed.push(format!("round {round} send {i}: {status} {response}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of alice's {sent} sends failed because bob's was batched with them:\n{}",
        failed.len(),
        failed.join("\n")
    );
    let page = alice.messages(&room_id, "dir=b&limit=100").await;
    assert_eq!(bodies(&page["chunk"]).len(), sent, "{page}");
}

#[actix_web::test]
async fn a_refused_send_does_not_fail_the_sends_batched_with_it() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let mallory = client.register("mallory").await;
    let room_id = alice.create_room(json!({})).await;
    for round in 0..3 {
        let sends = (0..10).map(|i| {
            let user = if i % 3 == 0 { &mallory } else { &alice };
            let path = room_path(&room_id, &format!("send/m.room.message/r{round}t{i}"));
            async move {
                let (status, response) = user
                    .put(&path, json!({ "msgtype": "m.text", "body": "hi" }))
                    .await;
                (i, status, response)
            }
        });
        for (i, status, response) in futures::future::join_all(sends).await {
            let expected = if i % 3 == 0 {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "round {round} send {i}: {response}");
        }
    }
    let page = alice.messages(&room_id, "dir=b&limit=100").await;
    assert_eq!(bodies(&page["chunk"]).len(), 3 * 6, "{page}");
}

#[actix_web::test]
async fn concurrent_retries_of_one_transaction_make_one_event() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let retries = (0..8).map(|_| send(&alice, &room_id, "same-txn", "once"));
    let answers = futures::future::join_all(retries).await;
    let first = &answers[0].1["event_id"];
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(&body["event_id"], first, "every retry names the same event");
    }
    let page = alice.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), vec!["once"], "{page}");
}

fn with_history_visibility(visibility: &str) -> Value {
    json!({
        "preset": "public_chat",
        "initial_state": [{
            "type": "m.room.history_visibility",
            "state_key": "",
            "content": { "history_visibility": visibility },
        }],
    })
}

#[actix_web::test]
async fn with_joined_history_visibility_members_see_only_what_came_after_their_join() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(with_history_visibility("joined")).await;
    let before = alice.send_text(&room_id, "before bob").await;
    bob.join(&room_id).await;
    alice.send_text(&room_id, "after bob joined").await;

    let page = bob.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), ["after bob joined"], "{page}");
    for path in [
        room_path(&room_id, &format!("event/{}", enc(&before))),
        room_path(&room_id, &format!("context/{}", enc(&before))),
    ] {
        let (status, body) = bob.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
    }
    // alice was there all along.
    let page = alice.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(
        bodies(&page["chunk"]),
        ["after bob joined", "before bob"],
        "{page}"
    );
}

#[actix_web::test]
async fn with_invited_history_visibility_members_see_from_their_invite() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(with_history_visibility("invited")).await;
    alice.send_text(&room_id, "before the invite").await;
    let (status, body) = alice
        .post(
            &room_path(&room_id, "invite"),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    alice.send_text(&room_id, "while bob is invited").await;
    bob.join(&room_id).await;

    let page = bob.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), ["while bob is invited"], "{page}");
}

#[actix_web::test]
async fn with_shared_history_visibility_members_see_what_came_before_them() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(with_history_visibility("shared")).await;
    alice.send_text(&room_id, "before bob").await;
    bob.join(&room_id).await;
    let page = bob.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), ["before bob"], "{page}");

    // Once he left, only what he was there for.
    alice.send_text(&room_id, "while bob is here").await;
    let (status, _) = bob.post(&room_path(&room_id, "leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let page = bob.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), ["while bob is here"], "{page}");
}

#[actix_web::test]
async fn a_world_readable_room_is_readable_without_joining() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let carol = client.register("carol").await;
    let room_id = alice
        .create_room(with_history_visibility("world_readable"))
        .await;
    let event_id = alice.send_text(&room_id, "for everyone").await;

    let page = carol.messages(&room_id, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), ["for everyone"], "{page}");
    let (status, body) = carol
        .get(&room_path(&room_id, &format!("event/{}", enc(&event_id))))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"]["body"], "for everyone");
    let (status, body) = carol.get(&room_path(&room_id, "state")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.as_array()
            .is_some_and(|state| state.iter().any(|e| e["type"] == "m.room.create")),
        "{body}"
    );
    // Reading is not being in the room: writing still needs a join.
    let (status, body) = send(&carol, &room_id, "t1", "hello?").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Once the room is closed again, only members read it.
    let (status, body) = alice
        .put(
            &room_path(&room_id, "state/m.room.history_visibility/"),
            json!({ "history_visibility": "shared" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = carol.get(&room_path(&room_id, "messages?dir=b")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

/// Sends `m.room.topic` with `topic`, asserting success.
async fn set_topic(user: &User, room_id: &str, topic: &str) {
    let (status, body) = user
        .put(
            &room_path(room_id, "state/m.room.topic"),
            json!({ "topic": topic }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn event_ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("an array of events")
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[actix_web::test]
async fn start_is_the_from_token_as_sent() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    for n in 0..4 {
        alice.send_text(&room_id, &format!("m{n}")).await;
    }
    let page = alice.messages(&room_id, "dir=b&limit=2").await;
    let end = page["end"].as_str().expect("a page with more has `end`");
    // A /sync `next_batch` (every stream's position) and an `end` token, each
    // in both directions: `start` is the very token the client sent.
    let next_batch = alice.sync("").await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    for from in [next_batch.as_str(), end] {
        for dir in ["b", "f"] {
            let page = alice
                .messages(&room_id, &format!("dir={dir}&limit=1&from={}", enc(from)))
                .await;
            assert_eq!(page["start"], from, "dir={dir}: {page}");
        }
    }
}

#[actix_web::test]
async fn a_types_filter_fills_the_page_before_the_limit() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    // m0 topic m1 topic m2 topic m3 topic: the newest two events are a
    // message and a state event.
    for n in 0..4 {
        alice.send_text(&room_id, &format!("m{n}")).await;
        set_topic(&alice, &room_id, &format!("t{n}")).await;
    }
    let filter = enc(&json!({ "types": ["m.room.message"] }).to_string());

    let page = alice
        .messages(&room_id, &format!("dir=b&limit=2&filter={filter}"))
        .await;
    assert_eq!(bodies(&page["chunk"]), vec!["m3", "m2"], "{page}");
    assert_eq!(page["chunk"].as_array().map(Vec::len), Some(2), "{page}");
    // From `end`, the rest: no gap and nothing twice.
    let end = page["end"].as_str().expect("more to come: `end`");
    let rest = alice
        .messages(
            &room_id,
            &format!("dir=b&limit=10&filter={filter}&from={}", enc(end)),
        )
        .await;
    assert_eq!(bodies(&rest["chunk"]), vec!["m1", "m0"], "{rest}");
    assert!(rest.get("end").is_none(), "nothing older matches: {rest}");

    // Forwards, and with the other kinds of condition.
    let page = alice
        .messages(&room_id, &format!("dir=f&limit=3&filter={filter}"))
        .await;
    assert_eq!(bodies(&page["chunk"]), vec!["m0", "m1", "m2"], "{page}");
    for condition in [
        json!({ "not_types": ["m.room.topic"] }),
        json!({ "types": ["m.room.mess*"] }),
        json!({ "types": ["m.room.message"], "senders": [alice.user_id], "rooms": [room_id] }),
        json!({ "types": ["m.*"], "not_types": ["m.room.t*"] }),
        json!({ "types": ["m.room.message"], "contains_url": false }),
    ] {
        let filter = enc(&condition.to_string());
        let page = alice
            .messages(&room_id, &format!("dir=b&limit=2&filter={filter}"))
            .await;
        assert_eq!(event_ids(&page["chunk"]).len(), 2, "{condition}: {page}");
        assert_eq!(
            bodies(&page["chunk"]),
            vec!["m3", "m2"],
            "{condition}: {page}"
        );
    }
    for nothing in [
        json!({ "types": ["m.room.message"], "not_senders": [alice.user_id] }),
        json!({ "types": ["m.room.message"], "contains_url": true }),
        json!({ "not_rooms": [room_id] }),
        json!({ "types": [] }),
    ] {
        let filter = enc(&nothing.to_string());
        let page = alice
            .messages(&room_id, &format!("dir=b&limit=2&filter={filter}"))
            .await;
        assert_eq!(page["chunk"], json!([]), "{nothing}: {page}");
        assert!(page.get("end").is_none(), "{nothing}: {page}");
    }
}

#[actix_web::test]
async fn context_applies_its_filter_before_the_limit() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let mut middle = String::new();
    for n in 0..5 {
        let event_id = alice.send_text(&room_id, &format!("m{n}")).await;
        if n == 2 {
            middle = event_id;
        }
        set_topic(&alice, &room_id, &format!("t{n}")).await;
    }
    let filter = enc(&json!({ "types": ["m.room.message"] }).to_string());
    let (status, body) = alice
        .get(&room_path(
            &room_id,
            &format!("context/{}?limit=4&filter={filter}", enc(&middle)),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(bodies(&body["events_before"]), vec!["m1", "m0"], "{body}");
    assert_eq!(bodies(&body["events_after"]), vec!["m3", "m4"], "{body}");
}
