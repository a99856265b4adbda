//! Typing notifications: `PUT /rooms/{roomId}/typing/{userId}` and the
//! `m.typing` ephemeral event the other members see in `/sync`. On the split
//! the typing writers are `events1` and `sync2`, neither where requests
//! arrive (`main`), so every change crosses a mailbox and every `/sync` of
//! `sync2` may hear of it through replication.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, Options, TestCluster, User};

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("next_batch in {sync}"))
        .to_owned()
}

async fn set_typing(user: &User, room_id: &str, body: Value) -> (StatusCode, Value) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        enc(room_id),
        enc(&user.user_id)
    );
    user.put(&path, body).await
}

async fn start_typing(user: &User, room_id: &str) {
    let (status, body) =
        set_typing(user, room_id, json!({ "typing": true, "timeout": 30000 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
}

async fn stop_typing(user: &User, room_id: &str) {
    let (status, body) = set_typing(user, room_id, json!({ "typing": false })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The user ids of the room's `m.typing` event in `sync`, if there is one.
fn typing_users(sync: &Value, room_id: &str) -> Option<Vec<String>> {
    let events = sync["rooms"]["join"][room_id]["ephemeral"]["events"].as_array()?;
    let typing: Vec<&Value> = events.iter().filter(|e| e["type"] == "m.typing").collect();
    assert!(typing.len() <= 1, "one m.typing per room: {sync}");
    typing.first().map(|event| {
        event["content"]["user_ids"]
            .as_array()
            .unwrap_or_else(|| panic!("user_ids in {event}"))
            .iter()
            .map(|u| u.as_str().unwrap_or_default().to_owned())
            .collect()
    })
}

/// Long-polls as `user` from `since` until the room's `m.typing` arrives
/// (failing after 20 s): its user ids and the token after it.
async fn next_typing(user: &User, room_id: &str, since: &str) -> (Vec<String>, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since = since.to_owned();
    loop {
        let sync = user
            .sync(&format!("since={}&timeout=5000", enc(&since)))
            .await;
        let token = next_batch(&sync);
        if let Some(users) = typing_users(&sync, room_id) {
            return (users, token);
        }
        assert!(
            Instant::now() < deadline,
            "no m.typing in {room_id} for 20 s"
        );
        since = token;
    }
}

/// A room of alice's that bob joined.
async fn room_with_bob(cluster: &TestCluster) -> (User, User, String) {
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    (alice, bob, room_id)
}

/// The instance `/sync` goes to.
fn sync_instance(cluster: &TestCluster) -> &'static str {
    if cluster.is_split() {
        "sync2"
    } else {
        "main"
    }
}

#[actix_web::test]
async fn typing_shows_in_the_other_members_sync_until_it_stops() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let since = next_batch(&bob.sync("").await);

    start_typing(&alice, &room_id).await;
    let (users, since) = next_typing(&bob, &room_id, &since).await;
    assert_eq!(users, vec![alice.user_id.clone()]);
    // Shown once, not in every later sync.
    let again = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(typing_users(&again, &room_id), None, "{again}");
    // A new device sees who is typing in its initial sync.
    let initial = bob.sync("").await;
    assert_eq!(
        typing_users(&initial, &room_id),
        Some(vec![alice.user_id.clone()])
    );
    // Typing again changes nothing the others see.
    start_typing(&alice, &room_id).await;
    let again = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(typing_users(&again, &room_id), None, "{again}");

    stop_typing(&alice, &room_id).await;
    let (users, since) = next_typing(&bob, &room_id, &since).await;
    assert!(users.is_empty(), "{users:?}");
    let initial = bob.sync("").await;
    assert_eq!(typing_users(&initial, &room_id), None, "{initial}");
    // Stopping again changes nothing either.
    stop_typing(&alice, &room_id).await;
    let again = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(typing_users(&again, &room_id), None, "{again}");
}

#[actix_web::test]
async fn typing_ends_by_itself_at_the_servers_limit() {
    let cluster = TestCluster::start_with(Options {
        typing_max_timeout_ms: Some(1_000),
        ..Options::default()
    })
    .await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let since = next_batch(&bob.sync("").await);

    let started = Instant::now();
    // 30 s asked, cut to the server's 1 s.
    start_typing(&alice, &room_id).await;
    let (users, since) = next_typing(&bob, &room_id, &since).await;
    assert_eq!(users, vec![alice.user_id.clone()]);
    // No request: the writer's timer ends it.
    let (users, _) = next_typing(&bob, &room_id, &since).await;
    assert!(users.is_empty(), "{users:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_000) && elapsed < Duration::from_secs(15),
        "typing for 1 s ended after {elapsed:?}"
    );
}

#[actix_web::test]
async fn a_long_poll_wakes_when_someone_types() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let since = next_batch(&bob.sync("").await);
    let instance = sync_instance(&cluster);

    let started = Instant::now();
    let query = format!("since={}&timeout=20000", enc(&since));
    let waiting = bob.sync(&query);
    let typing = async {
        // Once bob's long-poll waits on the sync node.
        cluster.wait_for_long_poll(instance).await;
        start_typing(&alice, &room_id).await;
    };
    let (sync, ()) = futures::join!(waiting, typing);
    assert_eq!(
        typing_users(&sync, &room_id),
        Some(vec![alice.user_id.clone()]),
        "{sync}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 20 s long-poll answered after {:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn a_sync_token_resumes_on_another_sync_node_without_missing_or_repeating_typing() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    // On the split both `sync2` and `main` serve /sync.
    let instances = if cluster.is_split() {
        vec!["sync2", "main"]
    } else {
        vec!["main"]
    };
    let on = |instance: &str| User {
        client: cluster.node_client(instance),
        ..bob.clone()
    };
    let first = on(instances[0]);
    let second = on(instances[instances.len() - 1]);

    let since = next_batch(&first.sync("").await);
    start_typing(&alice, &room_id).await;
    let (users, since) = next_typing(&second, &room_id, &since).await;
    assert_eq!(users, vec![alice.user_id.clone()]);
    // Back on the first node: not shown again.
    let again = first
        .sync(&format!("since={}&timeout=1000", enc(&since)))
        .await;
    assert_eq!(typing_users(&again, &room_id), None, "{again}");
    let since = next_batch(&again);

    stop_typing(&alice, &room_id).await;
    let (users, since) = next_typing(&first, &room_id, &since).await;
    assert!(users.is_empty(), "{users:?}");
    let again = second
        .sync(&format!("since={}&timeout=1000", enc(&since)))
        .await;
    assert_eq!(typing_users(&again, &room_id), None, "{again}");
}

#[actix_web::test]
async fn bad_typing_requests_are_refused_and_change_nothing() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let carol = cluster.client().register("carol").await;
    let since = next_batch(&bob.sync("").await);

    // Another user's typing.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        enc(&room_id),
        enc(&bob.user_id)
    );
    let (status, body) = alice
        .put(&path, json!({ "typing": true, "timeout": 30000 }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // Someone who is not in the room.
    let (status, body) = set_typing(&carol, &room_id, json!({ "typing": true })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // Timeouts out of range, and values of the wrong type.
    for (body, errcode) in [
        (json!({ "typing": true, "timeout": -1 }), "M_INVALID_PARAM"),
        (
            json!({ "typing": true, "timeout": 1_000_000_000_000u64 }),
            "M_INVALID_PARAM",
        ),
        (json!({ "typing": true, "timeout": "30000" }), "M_BAD_JSON"),
        (json!({ "typing": true, "timeout": 2.5 }), "M_BAD_JSON"),
        (json!({ "typing": "yes" }), "M_BAD_JSON"),
        (json!({ "timeout": 30000 }), "M_BAD_JSON"),
        (json!(["typing"]), "M_BAD_JSON"),
    ] {
        let (status, answer) = set_typing(&alice, &room_id, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["errcode"], errcode, "{body}: {answer}");
    }
    // Bad ids in the path.
    let (status, body) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc("not-a-room"),
                enc(&alice.user_id)
            ),
            json!({ "typing": true }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    // None of it shows: bob's next change is the one real request.
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(typing_users(&sync, &room_id), None, "{sync}");
    start_typing(&alice, &room_id).await;
    let (users, _) = next_typing(&bob, &room_id, &since).await;
    assert_eq!(users, vec![alice.user_id.clone()]);
}

/// Rooms of alice's that bob joined, at least one sharded to each typing
/// writer (one room on the monolith), with the writer of each.
async fn rooms_on_every_writer(
    cluster: &TestCluster,
    alice: &User,
    bob: &User,
) -> Vec<(String, String)> {
    let writers = cluster
        .on_node(
            "main",
            |node| async move { node.mailboxes.instances("typing") },
        )
        .await;
    let mut rooms: Vec<(String, String)> = Vec::new();
    for _ in 0..40 {
        if writers
            .iter()
            .all(|w| rooms.iter().any(|(_, owner)| owner == w))
        {
            return rooms;
        }
        let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
        let key = room_id.clone();
        let owner = cluster
            .on_node("main", move |node| async move {
                node.mailboxes
                    .placement()
                    .instance_for("typing", &key)
                    .to_owned()
            })
            .await;
        if !rooms.iter().any(|(_, o)| *o == owner) {
            bob.join(&room_id).await;
            rooms.push((room_id, owner));
        }
    }
    panic!("40 rooms, and not every typing writer of {writers:?} has one: {rooms:?}");
}

/// Long-polls as `user` from `since` until every room of `rooms` has shown
/// `expected` as its typing users (failing after 20 s); the token after.
async fn until_typing_in(
    user: &User,
    rooms: &[(String, String)],
    since: &str,
    expected: &[String],
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since = since.to_owned();
    let mut pending: Vec<&str> = rooms.iter().map(|(room_id, _)| room_id.as_str()).collect();
    while !pending.is_empty() {
        let sync = user
            .sync(&format!("since={}&timeout=5000", enc(&since)))
            .await;
        pending.retain(|room_id| typing_users(&sync, room_id).as_deref() != Some(expected));
        assert!(
            Instant::now() < deadline,
            "typing never became {expected:?} in {pending:?}"
        );
        since = next_batch(&sync);
    }
    since
}

#[actix_web::test]
async fn typing_in_rooms_of_every_writer_reaches_the_same_sync() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let rooms = rooms_on_every_writer(&cluster, &alice, &bob).await;
    if cluster.is_split() {
        assert_eq!(rooms.len(), 2, "events1 and sync2 write typing: {rooms:?}");
    }
    let since = next_batch(&bob.sync("").await);

    for (room_id, _) in &rooms {
        start_typing(&alice, room_id).await;
    }
    let since = until_typing_in(&bob, &rooms, &since, std::slice::from_ref(&alice.user_id)).await;
    for (room_id, _) in &rooms {
        stop_typing(&alice, room_id).await;
    }
    until_typing_in(&bob, &rooms, &since, &[]).await;
}

#[actix_web::test]
async fn a_restarted_instance_catches_up_typing_by_asking_the_writers() {
    let mut cluster = TestCluster::start_with(Options {
        topology: Some("split".into()),
        ..Options::default()
    })
    .await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let rooms = rooms_on_every_writer(&cluster, &alice, &bob).await;
    let since = next_batch(&bob.sync("").await);
    for (room_id, _) in &rooms {
        start_typing(&alice, room_id).await;
    }
    until_typing_in(&bob, &rooms, &since, std::slice::from_ref(&alice.user_id)).await;

    // main (client and sync) restarts knowing nothing of typing: the rows
    // were written before, so only asking their writers brings them back.
    cluster.kill("main");
    cluster.restart("main").await;
    let on_main = User {
        client: cluster.node_client("main"),
        ..bob.clone()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let initial = on_main.sync("").await;
        let typing: Vec<Option<Vec<String>>> = rooms
            .iter()
            .map(|(room_id, _)| typing_users(&initial, room_id))
            .collect();
        if typing
            .iter()
            .all(|t| t.as_deref() == Some(&[alice.user_id.clone()][..]))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "main's initial sync shows typing {typing:?} in {rooms:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}
