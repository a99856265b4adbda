//! Presence: `GET`/`PUT /presence/{userId}/status`, `set_presence` on
//! `/sync`, and the `m.presence` events of users who share a room in
//! `/sync`. On the split the presence writers are `sync2` and `events1`
//! (sharded by user), requests arrive at `main` and `/sync` at `sync2`, so
//! a change crosses a mailbox and most wake-ups cross replication. The
//! timers (idle, sync stopped) are unit tests on paused time
//! (`roles/presence`).

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

/// `GET /sync` with `query` as a client sends it (`User::sync` adds
/// `set_presence=offline`): without `set_presence`, which means online.
async fn sync_as_clients_do(user: &User, query: &str) -> Value {
    let (status, response) = user.get(&format!("/_matrix/client/v3/sync?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

fn status_path(user_id: &str) -> String {
    format!("/_matrix/client/v3/presence/{}/status", enc(user_id))
}

async fn set_presence(user: &User, body: Value) {
    let (status, response) = user.put(&status_path(&user.user_id), body).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response, json!({}));
}

async fn get_presence(user: &User, of: &str) -> (StatusCode, Value) {
    user.get(&status_path(of)).await
}

/// The `m.presence` contents of `sender` in `sync`, in order.
fn presence_of(sync: &Value, sender: &str) -> Vec<Value> {
    sync["presence"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("presence.events in {sync}"))
        .iter()
        .filter(|event| event["sender"] == sender)
        .map(|event| {
            assert_eq!(event["type"], "m.presence", "{event}");
            event["content"].clone()
        })
        .collect()
}

/// Long-polls as `user` (not changing their own presence) from `since`
/// until an `m.presence` of `sender` whose `presence` is `state` arrives
/// (failing after 20 s): its content and the token after it.
async fn next_presence(user: &User, sender: &str, state: &str, since: &str) -> (Value, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since = since.to_owned();
    loop {
        let sync = user
            .sync(&format!(
                "since={}&timeout=5000&set_presence=offline",
                enc(&since)
            ))
            .await;
        let token = next_batch(&sync);
        if let Some(content) = presence_of(&sync, sender)
            .into_iter()
            .find(|content| content["presence"] == state)
        {
            return (content, token);
        }
        assert!(
            Instant::now() < deadline,
            "no m.presence {state} of {sender} for 20 s"
        );
        since = token;
    }
}

/// alice and bob share a room; carol shares none with them.
async fn alice_bob_and_carol(cluster: &TestCluster) -> (User, User, User, String) {
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    (alice, bob, carol, room_id)
}

fn sync_instance(cluster: &TestCluster) -> &'static str {
    if cluster.is_split() {
        "sync2"
    } else {
        "main"
    }
}

#[actix_web::test]
async fn presence_set_is_what_members_get_and_strangers_may_not() {
    let cluster = TestCluster::start().await;
    let (alice, bob, carol, _) = alice_bob_and_carol(&cluster).await;

    // Never set: offline.
    let (status, body) = get_presence(&bob, &alice.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "presence": "offline" }));

    set_presence(
        &alice,
        json!({ "presence": "online", "status_msg": "here" }),
    )
    .await;
    for reader in [&alice, &bob] {
        let (status, body) = get_presence(reader, &alice.user_id).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["presence"], "online", "{body}");
        assert_eq!(body["status_msg"], "here", "{body}");
        assert_eq!(body["currently_active"], true, "{body}");
        let ago = body["last_active_ago"].as_i64().expect("last_active_ago");
        assert!((0..60_000).contains(&ago), "{body}");
    }

    set_presence(&alice, json!({ "presence": "unavailable" })).await;
    let (_, body) = get_presence(&bob, &alice.user_id).await;
    assert_eq!(body["presence"], "unavailable", "{body}");
    assert!(body.get("status_msg").is_none(), "cleared: {body}");
    assert!(body.get("currently_active").is_none(), "{body}");

    // Someone who shares no room with alice.
    let (status, body) = get_presence(&carol, &alice.user_id).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[actix_web::test]
async fn bad_presence_requests_change_nothing() {
    let cluster = TestCluster::start().await;
    let (alice, bob, _, _) = alice_bob_and_carol(&cluster).await;
    set_presence(&alice, json!({ "presence": "online", "status_msg": "hi" })).await;

    let path = status_path(&alice.user_id);
    for (body, errcode) in [
        (json!({ "presence": "away" }), "M_INVALID_PARAM"),
        (json!({ "presence": 3 }), "M_BAD_JSON"),
        (json!({ "status_msg": "no presence" }), "M_BAD_JSON"),
        (
            json!({ "presence": "offline", "status_msg": false }),
            "M_BAD_JSON",
        ),
    ] {
        let (status, response) = alice.put(&path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_eq!(response["errcode"], errcode, "{body}: {response}");
    }
    // Another user's presence.
    let (status, response) = bob.put(&path, json!({ "presence": "offline" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{response}");
    assert_eq!(response["errcode"], "M_FORBIDDEN");
    // Not a user id.
    let (status, response) = alice
        .put(&status_path("alice"), json!({ "presence": "online" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    assert_eq!(response["errcode"], "M_INVALID_PARAM");

    let (_, body) = get_presence(&bob, &alice.user_id).await;
    assert_eq!(body["presence"], "online", "{body}");
    assert_eq!(body["status_msg"], "hi", "{body}");
}

#[actix_web::test]
async fn a_member_sees_presence_in_sync_and_a_stranger_does_not() {
    let cluster = TestCluster::start().await;
    let (alice, bob, carol, room_id) = alice_bob_and_carol(&cluster).await;
    let bob_since = next_batch(&bob.sync("set_presence=offline").await);
    let carol_since = next_batch(&carol.sync("set_presence=offline").await);

    // bob's long-poll is waiting when alice's presence changes: it wakes.
    let poll = {
        let (bob, since) = (bob.clone(), bob_since.clone());
        actix_web::rt::spawn(async move {
            bob.sync(&format!(
                "since={}&timeout=20000&set_presence=offline",
                enc(&since)
            ))
            .await
        })
    };
    cluster.wait_for_long_poll(sync_instance(&cluster)).await;
    set_presence(
        &alice,
        json!({ "presence": "online", "status_msg": "hello" }),
    )
    .await;
    let woken = poll.await.expect("the long-poll answers");
    let mut contents = presence_of(&woken, &alice.user_id);
    let (content, since) = match contents.pop() {
        Some(content) => (content, next_batch(&woken)),
        // Woken by something else first: the next long-poll has it.
        None => next_presence(&bob, &alice.user_id, "online", &next_batch(&woken)).await,
    };
    assert_eq!(content["presence"], "online", "{content}");
    assert_eq!(content["status_msg"], "hello", "{content}");
    assert_eq!(content["currently_active"], true, "{content}");
    assert!(content["last_active_ago"].is_i64(), "{content}");
    // Once, not in every later sync.
    let again = bob
        .sync(&format!(
            "since={}&timeout=0&set_presence=offline",
            enc(&since)
        ))
        .await;
    assert!(presence_of(&again, &alice.user_id).is_empty(), "{again}");
    // An initial sync has alice's current presence.
    let initial = bob.sync("set_presence=offline").await;
    assert_eq!(
        presence_of(&initial, &alice.user_id)
            .first()
            .map(|c| c["presence"].clone()),
        Some(json!("online")),
        "{initial}"
    );
    // carol shares no room with alice: nothing of hers.
    let stranger = carol
        .sync(&format!(
            "since={}&timeout=0&set_presence=offline",
            enc(&carol_since)
        ))
        .await;
    assert!(
        presence_of(&stranger, &alice.user_id).is_empty(),
        "{stranger}"
    );
    let initial = carol.sync("set_presence=offline").await;
    assert!(
        presence_of(&initial, &alice.user_id).is_empty(),
        "{initial}"
    );
    // carol joins a room of alice's: her next sync has alice's presence,
    // which has not changed since carol's token.
    let since = next_batch(&initial);
    carol.join(&room_id).await;
    let joined = carol
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    assert!(joined["rooms"]["join"].get(&room_id).is_some(), "{joined}");
    let contents = presence_of(&joined, &alice.user_id);
    assert_eq!(contents.len(), 1, "{joined}");
    assert_eq!(contents[0]["presence"], "online", "{joined}");
    // alice sees her own presence.
    let own = alice.sync("set_presence=offline").await;
    assert_eq!(presence_of(&own, &alice.user_id).len(), 1, "{own}");
}

#[actix_web::test]
async fn syncing_makes_a_user_online_and_set_presence_chooses_how() {
    let cluster = TestCluster::start().await;
    let (alice, bob, _, room_id) = alice_bob_and_carol(&cluster).await;
    let dave = cluster.client().register("dave").await;
    dave.join(&room_id).await;
    let since = next_batch(&alice.sync("set_presence=offline").await);

    // bob syncs without saying: online.
    sync_as_clients_do(&bob, "timeout=0").await;
    let (content, since) = next_presence(&alice, &bob.user_id, "online", &since).await;
    assert_eq!(content["currently_active"], true, "{content}");
    let (status, body) = get_presence(&alice, &bob.user_id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["presence"], "online", "{body}");

    // dave syncs as unavailable: unavailable, never online.
    dave.sync("timeout=0&set_presence=unavailable").await;
    let (content, since) = next_presence(&alice, &dave.user_id, "unavailable", &since).await;
    assert!(content.get("currently_active").is_none(), "{content}");
    // bob syncs again as unavailable: his presence follows.
    bob.sync("timeout=0&set_presence=unavailable").await;
    next_presence(&alice, &bob.user_id, "unavailable", &since).await;
}

/// A user of `room_id` whose presence has the same writer as `user`'s (on
/// the split's two writers), so what `/sync` tells that writer of both
/// arrives in order.
async fn same_writer_as(cluster: &TestCluster, user: &User, room_id: &str) -> User {
    let writer = |user_id: &str| lattice_actors::shard_index(user_id, 2);
    for n in 0.. {
        let candidate = cluster.client().register(&format!("dave{n}")).await;
        if writer(&candidate.user_id) == writer(&user.user_id) {
            candidate.join(room_id).await;
            return candidate;
        }
    }
    unreachable!("one user in two shares the writer")
}

#[actix_web::test]
async fn set_presence_offline_leaves_presence_alone() {
    let cluster = TestCluster::start().await;
    let (alice, bob, _, room_id) = alice_bob_and_carol(&cluster).await;
    let dave = same_writer_as(&cluster, &bob, &room_id).await;
    let since = next_batch(&alice.sync("set_presence=offline").await);
    // bob syncs, long and short, saying offline; then dave syncs online.
    bob.sync("timeout=0&set_presence=offline").await;
    bob.sync("timeout=10&set_presence=offline").await;
    sync_as_clients_do(&dave, "timeout=0").await;
    // Once alice hears dave is online, their writer has heard of bob's
    // syncs too, if it was told of them: it was not.
    let (_, since) = next_presence(&alice, &dave.user_id, "online", &since).await;
    let (_, body) = get_presence(&alice, &bob.user_id).await;
    assert_eq!(body, json!({ "presence": "offline" }));
    let sync = alice
        .sync(&format!(
            "since={}&timeout=0&set_presence=offline",
            enc(&since)
        ))
        .await;
    assert!(presence_of(&sync, &bob.user_id).is_empty(), "{sync}");
}

#[actix_web::test]
async fn presence_turned_off_answers_and_sends_nothing() {
    let cluster = TestCluster::start_with(Options {
        presence_enabled: Some(false),
        ..Options::default()
    })
    .await;
    let (alice, bob, _, _) = alice_bob_and_carol(&cluster).await;
    let since = next_batch(&sync_as_clients_do(&bob, "").await);
    set_presence(&alice, json!({ "presence": "online", "status_msg": "hi" })).await;
    // Bad input is still refused.
    let (status, response) = alice
        .put(&status_path(&alice.user_id), json!({ "presence": "away" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    let (status, body) = get_presence(&bob, &alice.user_id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "presence": "offline" }));
    sync_as_clients_do(&alice, "timeout=0").await;
    // bob's sync has alice's new room, and no presence.
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let sync = sync_as_clients_do(&bob, &format!("since={}&timeout=0", enc(&since))).await;
    assert!(sync["rooms"]["join"].get(&room_id).is_some(), "{sync}");
    assert_eq!(sync["presence"], json!({ "events": [] }), "{sync}");
    assert_eq!(
        sync_as_clients_do(&bob, "").await["presence"],
        json!({ "events": [] })
    );
    let rows: i64 = cluster
        .database()
        .await
        .query_one("SELECT count(*) FROM presence_stream", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "nothing written");
}
