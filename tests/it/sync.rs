//! `/sync`: initial and incremental, long-polling, filters, `limited`
//! timelines, `full_state`, and the invite and leave sections.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("next_batch in {sync}"))
        .to_owned()
}

fn timeline_bodies(sync: &Value, room_id: &str) -> Vec<String> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn state_types(section: &Value) -> Vec<String> {
    section["state"]["events"]
        .as_array()
        .expect("state events")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn leave(user: &User, room_id: &str) {
    let (status, body) = user
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn initial_sync_has_joined_rooms_with_state_and_timeline() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "name": "Sync" }))
        .await;
    bob.join(&room_id).await;
    alice.send_text(&room_id, "first").await;

    let sync = alice.sync("").await;
    let room = &sync["rooms"]["join"][&room_id];
    assert!(room.is_object(), "{sync}");
    assert_eq!(timeline_bodies(&sync, &room_id), vec!["first"]);
    let events = room["timeline"]["events"].as_array().expect("events");
    assert_eq!(
        events.last().expect("an event")["content"]["body"],
        "first",
        "oldest first"
    );
    let summary = &room["summary"];
    assert_eq!(summary["m.joined_member_count"], 2, "{summary}");
    assert_eq!(summary["m.invited_member_count"], 0, "{summary}");
    assert!(room["ephemeral"]["events"].is_array());
    assert!(room["account_data"]["events"].is_array());

    // The timeline and the state together describe the whole room.
    let mut types = state_types(room);
    types.extend(
        events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned()),
    );
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.name",
        "m.room.member",
    ] {
        assert!(types.iter().any(|t| t == kind), "{kind} in {room}");
    }
    assert!(sync["rooms"]["invite"]
        .as_object()
        .is_some_and(|m| m.is_empty()));
    assert!(sync["rooms"]["leave"]
        .as_object()
        .is_some_and(|m| m.is_empty()));
}

#[actix_web::test]
async fn incremental_sync_has_only_what_is_new() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let quiet_room = alice.create_room(json!({})).await;
    bob.join(&room_id).await;
    alice.send_text(&room_id, "old").await;
    let since = next_batch(&alice.sync("").await);

    bob.send_text(&room_id, "new").await;
    let sync = alice.sync(&format!("since={}", enc(&since))).await;
    assert_eq!(timeline_bodies(&sync, &room_id), vec!["new"]);
    let room = &sync["rooms"]["join"][&room_id];
    assert_eq!(room["timeline"]["limited"], false);
    assert!(
        state_types(room).is_empty(),
        "no state without a gap: {room}"
    );
    assert!(
        sync["rooms"]["join"].get(&quiet_room).is_none(),
        "rooms without news are left out: {sync}"
    );

    // Nothing new: an empty answer with a usable token.
    let since = next_batch(&sync);
    let sync = alice.sync(&format!("since={}", enc(&since))).await;
    assert!(
        sync["rooms"]["join"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{sync}"
    );
    assert!(!next_batch(&sync).is_empty());
}

#[actix_web::test]
async fn long_poll_wakes_on_a_message() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let since = next_batch(&alice.sync("").await);

    let started = Instant::now();
    let query = format!("since={}&timeout=10000", enc(&since));
    let waiting = alice.sync(&query);
    let sending = async {
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        bob.send_text(&room_id, "wake up").await
    };
    let (sync, event_id) = futures::join!(waiting, sending);
    let elapsed = started.elapsed();
    assert_eq!(timeline_bodies(&sync, &room_id), vec!["wake up"], "{sync}");
    let events = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    assert_eq!(events[0]["event_id"], event_id.as_str());
    assert!(
        elapsed < Duration::from_secs(2),
        "a 10 s long-poll answered {elapsed:?} after the request, not soon after the message"
    );
}

#[actix_web::test]
async fn long_poll_wakes_on_an_invite() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({})).await;
    let since = next_batch(&bob.sync("").await);

    let started = Instant::now();
    let query = format!("since={}&timeout=10000", enc(&since));
    let waiting = bob.sync(&query);
    let inviting = async {
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                json!({ "user_id": bob.user_id }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    let (sync, ()) = futures::join!(waiting, inviting);
    assert!(
        sync["rooms"]["invite"][&room_id].is_object(),
        "the invite arrives: {sync}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn long_poll_times_out_empty() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let since = next_batch(&alice.sync("").await);
    let started = Instant::now();
    let sync = alice
        .sync(&format!("since={}&timeout=500", enc(&since)))
        .await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "waited {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "waited {elapsed:?}");
    assert!(
        sync["rooms"]["join"].get(&room_id).is_none(),
        "nothing happened: {sync}"
    );
    // The token still works.
    alice.send_text(&room_id, "later").await;
    let sync = alice
        .sync(&format!("since={}", enc(&next_batch(&sync))))
        .await;
    assert_eq!(timeline_bodies(&sync, &room_id), vec!["later"]);
}

#[actix_web::test]
async fn filters_by_id_and_inline() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({ "name": "Filtered" })).await;
    let other_room = alice.create_room(json!({})).await;
    alice.send_text(&room_id, "m1").await;
    let (status, _) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/org.example.ping/p1",
                enc(&room_id)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let filter =
        json!({ "room": { "timeline": { "types": ["m.room.message"] }, "rooms": [room_id] } });
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
            filter.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let filter_id = body["filter_id"].as_str().expect("filter_id").to_owned();

    for query in [
        format!("filter={filter_id}"),
        format!("filter={}", enc(&filter.to_string())),
    ] {
        let sync = alice.sync(&query).await;
        let joined = sync["rooms"]["join"].as_object().expect("join");
        assert!(joined.contains_key(&room_id), "{query}: {sync}");
        assert!(!joined.contains_key(&other_room), "{query}: rooms filter");
        let events = joined[&room_id]["timeline"]["events"]
            .as_array()
            .expect("events");
        assert!(!events.is_empty(), "{query}");
        assert!(
            events.iter().all(|e| e["type"] == "m.room.message"),
            "{query}: {sync}"
        );
    }

    let state_filter = enc(
        &json!({ "room": { "state": { "types": ["m.room.name"] }, "timeline": { "limit": 1 } } })
            .to_string(),
    );
    let sync = alice.sync(&format!("filter={state_filter}")).await;
    let room = &sync["rooms"]["join"][&room_id];
    assert_eq!(state_types(room), vec!["m.room.name"], "{room}");

    for (query, errcode) in [
        ("filter=999999".to_owned(), "M_NOT_FOUND"),
        (format!("filter={}", enc("{not json")), "M_INVALID_PARAM"),
        ("filter=abc".to_owned(), "M_INVALID_PARAM"),
        (
            format!("filter={}", enc(r#"{"room":{"timeline":{"limit":"x"}}}"#)),
            "M_BAD_JSON",
        ),
    ] {
        let (status, body) = alice.get(&format!("/_matrix/client/v3/sync?{query}")).await;
        assert_eq!(body["errcode"], errcode, "{query}: {body}");
        assert!(status.is_client_error(), "{query}: {status}");
    }
}

#[actix_web::test]
async fn a_long_gap_is_limited_with_a_prev_batch() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let since = next_batch(&alice.sync("").await);
    for n in 0..5 {
        alice.send_text(&room_id, &format!("m{n}")).await;
    }
    let (status, _) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic",
                enc(&room_id)
            ),
            json!({ "topic": "changed during the gap" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    alice.send_text(&room_id, "m5").await;
    alice.send_text(&room_id, "m6").await;

    let filter = enc(r#"{"room":{"timeline":{"limit":2}}}"#);
    let sync = alice
        .sync(&format!("since={}&filter={filter}", enc(&since)))
        .await;
    let room = &sync["rooms"]["join"][&room_id];
    assert_eq!(timeline_bodies(&sync, &room_id), vec!["m5", "m6"], "{room}");
    assert_eq!(room["timeline"]["limited"], true, "{room}");
    assert!(
        state_types(room).contains(&"m.room.topic".to_owned()),
        "state changed in the gap is in `state`: {room}"
    );

    let prev_batch = room["timeline"]["prev_batch"].as_str().expect("prev_batch");
    let page = alice
        .messages(&room_id, &format!("dir=b&limit=3&from={}", enc(prev_batch)))
        .await;
    let earlier: Vec<&str> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| {
            e["content"]["body"]
                .as_str()
                .or(e["content"]["topic"].as_str())
        })
        .collect();
    assert_eq!(
        earlier,
        vec!["changed during the gap", "m4", "m3"],
        "{page}"
    );

    // Without a gap, not limited.
    let sync = alice
        .sync(&format!(
            "since={}&filter={filter}",
            enc(&next_batch(&sync))
        ))
        .await;
    assert!(sync["rooms"]["join"].get(&room_id).is_none());
}

#[actix_web::test]
async fn full_state_resends_the_state() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({ "name": "Full" })).await;
    alice.send_text(&room_id, "hello").await;
    let since = next_batch(&alice.sync("").await);

    let sync = alice
        .sync(&format!("since={}&full_state=true", enc(&since)))
        .await;
    let room = &sync["rooms"]["join"][&room_id];
    assert!(
        room.is_object(),
        "every room is in a full_state sync: {sync}"
    );
    let types = state_types(room);
    for kind in [
        "m.room.create",
        "m.room.name",
        "m.room.power_levels",
        "m.room.member",
    ] {
        assert!(types.iter().any(|t| t == kind), "{kind} in {room}");
    }
    // With nothing new the timeline is empty, and paginating back from its
    // start begins with the newest event.
    assert_eq!(room["timeline"]["events"], json!([]), "{room}");
    let prev_batch = room["timeline"]["prev_batch"].as_str().expect("prev_batch");
    let page = alice
        .messages(&room_id, &format!("dir=b&limit=1&from={}", enc(prev_batch)))
        .await;
    assert_eq!(page["chunk"][0]["content"]["body"], "hello", "{page}");

    let (status, body) = alice.get("/_matrix/client/v3/sync?full_state=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
}

#[actix_web::test]
async fn invites_show_their_invite_state() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let since = next_batch(&bob.sync("").await);
    let room_id = alice
        .create_room(json!({ "name": "Secret", "invite": [bob.user_id] }))
        .await;

    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    let events = sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("an invite with invite_state: {sync}"))
        .clone();
    let find = |kind: &str| events.iter().find(|e| e["type"] == kind);
    assert_eq!(
        find("m.room.name").expect("the name")["content"]["name"],
        "Secret"
    );
    assert!(find("m.room.create").is_some(), "{events:?}");
    assert!(find("m.room.join_rules").is_some(), "{events:?}");
    let invite = events
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .expect("bob's invite event");
    assert_eq!(invite["content"]["membership"], "invite");
    assert_eq!(invite["sender"], alice.user_id);
    assert!(sync["rooms"]["join"].get(&room_id).is_none());

    // Once seen, the invite is not repeated; joining moves the room to `join`.
    let since = next_batch(&sync);
    bob.join(&room_id).await;
    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    assert!(sync["rooms"]["invite"].get(&room_id).is_none(), "{sync}");
    assert!(sync["rooms"]["join"][&room_id].is_object(), "{sync}");
}

#[actix_web::test]
async fn leaving_and_being_kicked_show_in_the_leave_section() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let left = alice.create_room(json!({ "preset": "public_chat" })).await;
    let kicked_from = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&left).await;
    bob.join(&kicked_from).await;
    let since = next_batch(&bob.sync("").await);

    alice.send_text(&left, "before bob leaves").await;
    leave(&bob, &left).await;
    alice.send_text(&left, "after bob left").await;
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&kicked_from)),
            json!({ "user_id": bob.user_id, "reason": "out" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    let leave_section = sync["rooms"]["leave"].as_object().expect("leave");
    for room_id in [&left, &kicked_from] {
        assert!(leave_section.contains_key(room_id.as_str()), "{sync}");
        assert!(sync["rooms"]["join"].get(room_id).is_none(), "{sync}");
    }
    let events = leave_section[&left]["timeline"]["events"]
        .as_array()
        .expect("events");
    let last = events.last().expect("the leave event");
    assert_eq!(last["type"], "m.room.member");
    assert_eq!(last["content"]["membership"], "leave");
    let bodies: Vec<&str> = events
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["before bob leaves"], "nothing after leaving");

    let kick = leave_section[&kicked_from]["timeline"]["events"]
        .as_array()
        .expect("events")
        .last()
        .expect("the kick")
        .clone();
    assert_eq!(kick["sender"], alice.user_id);
    assert_eq!(kick["content"]["reason"], "out");

    // An initial sync leaves out left rooms unless asked.
    let sync = bob.sync("").await;
    assert!(
        sync["rooms"]["leave"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{sync}"
    );
}

#[actix_web::test]
async fn malformed_sync_parameters() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    for query in [
        "since=garbage",
        "since=s",
        "since=s-1",
        "since=s1_",
        "timeout=soon",
        "timeout=-5",
        "set_presence=busy",
    ] {
        let (status, body) = alice.get(&format!("/_matrix/client/v3/sync?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{query}");
    }
}

#[actix_web::test]
async fn a_token_from_the_future_is_clamped() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let future = "s999999999_0_0_0_0_0_0_0";
    let (status, body) = alice
        .get(&format!("/_matrix/client/v3/sync?since={future}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    alice.send_text(&room_id, "now").await;
    let sync = alice
        .sync(&format!("since={}", enc(&next_batch(&body))))
        .await;
    assert_eq!(timeline_bodies(&sync, &room_id), vec!["now"]);
}

#[actix_web::test]
async fn a_rejected_invite_moves_to_the_leave_section() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "invite": [bob.user_id] })).await;
    let sync = bob.sync("").await;
    assert!(sync["rooms"]["invite"][&room_id].is_object(), "{sync}");
    let since = next_batch(&sync);
    alice.send_text(&room_id, "members only").await;

    leave(&bob, &room_id).await;
    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    assert!(sync["rooms"]["invite"].get(&room_id).is_none(), "{sync}");
    let events = sync["rooms"]["leave"][&room_id]["timeline"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("the rejection in `leave`: {sync}"))
        .clone();
    let last = events.last().expect("the leave event");
    assert_eq!(last["sender"], bob.user_id);
    assert_eq!(last["content"]["membership"], "leave");
    // Bob never joined a room with `shared` history: he sees none of it.
    assert!(
        events.iter().all(|e| e["type"] == "m.room.member"),
        "{events:?}"
    );
}

#[actix_web::test]
async fn an_incremental_sync_sees_a_redaction_of_what_it_already_read() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let since = next_batch(&bob.sync("").await);
    let event_id = alice.send_text(&room_id, "regrettable").await;
    // Read twice from the same token: the second answer may come from memory.
    for _ in 0..2 {
        let sync = bob.sync(&format!("since={}", enc(&since))).await;
        assert_eq!(timeline_bodies(&sync, &room_id), vec!["regrettable"]);
    }

    let (status, body) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room_id),
                enc(&event_id)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    let events = sync["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let message = events
        .iter()
        .find(|e| e["event_id"] == event_id.as_str())
        .unwrap_or_else(|| panic!("the message is still in the timeline: {sync}"));
    assert_eq!(message["content"], json!({}), "redacted: {message}");
    assert!(
        events.iter().any(|e| e["type"] == "m.room.redaction"),
        "{sync}"
    );
}

#[actix_web::test]
async fn every_member_woken_by_a_message_gets_it_once() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut members = Vec::new();
    for name in ["bob", "carol", "dave", "erin"] {
        let user = client.register(name).await;
        user.join(&room_id).await;
        let since = next_batch(&user.sync("").await);
        members.push((user, since));
    }
    for round in 0..3 {
        let text = format!("message {round}");
        alice.send_text(&room_id, &text).await;
        for (user, since) in &mut members {
            // A long-poll may first answer with the later members' joins
            // (on the split, before its sync instance has the message):
            // the message comes in a following one, once.
            let mut bodies = Vec::new();
            for _ in 0..5 {
                let sync = user
                    .sync(&format!("since={}&timeout=5000", enc(since)))
                    .await;
                bodies.extend(timeline_bodies(&sync, &room_id));
                *since = next_batch(&sync);
                if !bodies.is_empty() {
                    break;
                }
            }
            assert_eq!(
                bodies,
                vec![text.clone()],
                "{} after round {round}",
                user.user_id
            );
            // Nothing more: it came once.
            let sync = user.sync(&format!("since={}", enc(since))).await;
            assert_eq!(timeline_bodies(&sync, &room_id), Vec::<String>::new());
        }
    }
}

#[actix_web::test]
async fn an_incremental_sync_after_many_rooms_moved_has_each_new_message() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let mut rooms = Vec::new();
    for _ in 0..7 {
        let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
        bob.join(&room_id).await;
        rooms.push(room_id);
    }
    let since = next_batch(&bob.sync("").await);
    for (i, room_id) in rooms.iter().enumerate() {
        alice.send_text(room_id, &format!("news {i}")).await;
    }
    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    for (i, room_id) in rooms.iter().enumerate() {
        assert_eq!(
            timeline_bodies(&sync, room_id),
            vec![format!("news {i}")],
            "room {i}: {sync}"
        );
    }
    // And the next message in one of them comes alone.
    let since = next_batch(&sync);
    alice.send_text(&rooms[3], "later").await;
    let sync = bob
        .sync(&format!("since={}&timeout=5000", enc(&since)))
        .await;
    assert_eq!(timeline_bodies(&sync, &rooms[3]), vec!["later"]);
    assert_eq!(
        sync["rooms"]["join"].as_object().map(|m| m.len()),
        Some(1),
        "{sync}"
    );
}

#[actix_web::test]
async fn a_room_with_joined_history_visibility_syncs_only_what_came_after_the_join() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": { "history_visibility": "joined" },
            }],
        }))
        .await;
    alice.send_text(&room_id, "before bob").await;
    let since = next_batch(&bob.sync("timeout=0").await);
    bob.join(&room_id).await;
    alice.send_text(&room_id, "after bob joined").await;

    for query in [
        "timeout=0".to_owned(),
        format!("since={}&timeout=0", enc(&since)),
    ] {
        let sync = bob.sync(&query).await;
        assert_eq!(
            timeline_bodies(&sync, &room_id),
            ["after bob joined"],
            "{query}: {sync}"
        );
        let timeline = sync["rooms"]["join"][&room_id]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            timeline
                .iter()
                .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()),
            "bob's own join is in the timeline: {sync}"
        );
    }
    // alice, there from the start, sees both.
    assert_eq!(
        timeline_bodies(&alice.sync("timeout=0").await, &room_id),
        ["before bob", "after bob joined"]
    );
}

#[actix_web::test]
async fn a_types_filter_applies_before_the_timeline_limit() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let set_topic = |topic: String| {
        let alice = alice.clone();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.topic",
            enc(&room_id)
        );
        async move {
            let (status, body) = alice.put(&path, json!({ "topic": topic })).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let filter_json = json!({ "types": ["m.room.message"] });
    let filter = enc(
        &json!({ "room": { "timeline": { "limit": 2, "types": ["m.room.message"] } } }).to_string(),
    );
    // Each message is followed by a state event, so the newest two events
    // hold one message only.
    for n in 0..3 {
        alice.send_text(&room_id, &format!("m{n}")).await;
        set_topic(format!("t{n}")).await;
    }

    // Initial sync (read from the database).
    let sync = alice.sync(&format!("filter={filter}")).await;
    let room = &sync["rooms"]["join"][&room_id];
    assert_eq!(timeline_bodies(&sync, &room_id), vec!["m1", "m2"], "{room}");
    assert_eq!(
        room["timeline"]["events"].as_array().map(Vec::len),
        Some(2),
        "{room}"
    );
    assert_eq!(room["timeline"]["limited"], true, "m0 matches too: {room}");
    // The client pages back from `prev_batch` with the same filter: the rest,
    // without a gap or a repeat.
    let prev_batch = room["timeline"]["prev_batch"].as_str().expect("prev_batch");
    let page = alice
        .messages(
            &room_id,
            &format!(
                "dir=b&limit=10&from={}&filter={}",
                enc(prev_batch),
                enc(&filter_json.to_string())
            ),
        )
        .await;
    let earlier: Vec<&str> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(earlier, vec!["m0"], "{page}");

    // Incremental syncs (the recent-events cache, then the same again).
    let mut since = next_batch(&sync);
    for round in 0..2 {
        for n in 0..3 {
            alice.send_text(&room_id, &format!("r{round}m{n}")).await;
            set_topic(format!("r{round}t{n}")).await;
        }
        let sync = alice
            .sync(&format!("since={}&filter={filter}", enc(&since)))
            .await;
        let room = &sync["rooms"]["join"][&room_id];
        assert_eq!(
            timeline_bodies(&sync, &room_id),
            vec![format!("r{round}m1"), format!("r{round}m2")],
            "{room}"
        );
        assert_eq!(
            room["timeline"]["events"].as_array().map(Vec::len),
            Some(2),
            "{room}"
        );
        assert_eq!(room["timeline"]["limited"], true, "{room}");
        since = next_batch(&sync);
    }

    // Exactly as many as the limit since the token: not limited.
    alice.send_text(&room_id, "last0").await;
    set_topic("last topic".into()).await;
    alice.send_text(&room_id, "last1").await;
    set_topic("last topic again".into()).await;
    let sync = alice
        .sync(&format!("since={}&filter={filter}", enc(&since)))
        .await;
    let room = &sync["rooms"]["join"][&room_id];
    assert_eq!(
        timeline_bodies(&sync, &room_id),
        vec!["last0", "last1"],
        "{room}"
    );
    assert_eq!(room["timeline"]["limited"], false, "{room}");
}
