//! Unread notification counts in `/sync`: each new event is evaluated
//! against every member's push rules where it was sent, the actions stored
//! with it, and each joined room's `unread_notifications` counts them after
//! the member's read receipt (`unread_thread_notifications` per thread when
//! the filter asks). `GET /notifications` lists the same actions, newest
//! first. On the split, sends arrive at `main`, events are
//! persisted by `events1`, receipts and push rules are written by
//! `events1`/`sync2`, and `/sync` is served by `sync2`.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

const RULES: &str = "/_matrix/client/v3/pushrules/global";

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("next_batch in {sync}"))
        .to_owned()
}

/// `(notification_count, highlight_count)` of a room in a sync.
fn counts(sync: &Value, room_id: &str) -> (i64, i64) {
    let unread = &sync["rooms"]["join"][room_id]["unread_notifications"];
    (
        unread["notification_count"]
            .as_i64()
            .unwrap_or_else(|| panic!("notification_count of {room_id} in {sync}")),
        unread["highlight_count"]
            .as_i64()
            .unwrap_or_else(|| panic!("highlight_count of {room_id} in {sync}")),
    )
}

/// The counts of `user` in `room_id` as an initial sync shows them.
async fn unread(user: &User, room_id: &str) -> (i64, i64) {
    counts(&user.sync("timeout=0").await, room_id)
}

async fn send(user: &User, room_id: &str, content: Value) -> String {
    let txn_id = format!("t{}", rand::random::<u64>());
    let (status, answer) = user
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn_id}",
                enc(room_id)
            ),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["event_id"].as_str().expect("an event id").to_owned()
}

async fn read(user: &User, room_id: &str, event_id: &str, body: Value) {
    let (status, answer) = user
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room_id),
                enc(event_id)
            ),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

async fn put_ok(user: &User, path: &str, body: Value) {
    let (status, answer) = user.put(&format!("{RULES}/{path}"), body).await;
    assert_eq!(status, StatusCode::OK, "PUT {path}: {answer}");
}

/// alice's public room with bob and carol in it (three members: the
/// one-to-one rules do not apply).
async fn room(cluster: &TestCluster) -> (User, User, String) {
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;
    (alice, bob, room_id)
}

#[actix_web::test]
async fn counts_rise_on_messages_and_a_receipt_clears_them() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room(&cluster).await;
    assert_eq!(unread(&bob, &room_id).await, (0, 0));
    let since = next_batch(&bob.sync("timeout=0").await);

    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "one" }),
    )
    .await;
    let last = send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "two" }),
    )
    .await;
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(counts(&sync, &room_id), (2, 0));
    assert_eq!(unread(&bob, &room_id).await, (2, 0));
    // The sender's own messages do not count for them.
    assert_eq!(unread(&alice, &room_id).await, (0, 0));

    // A receipt clears them, in the next incremental sync.
    let since = next_batch(&sync);
    read(&bob, &room_id, &last, json!({})).await;
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(counts(&sync, &room_id), (0, 0));
    // Only what came after it counts.
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "three" }),
    )
    .await;
    assert_eq!(unread(&bob, &room_id).await, (1, 0));

    // An invite notifies its invitee; once joined, only what came after counts.
    let dave = cluster.client().register("dave").await;
    let (status, answer) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
            json!({ "user_id": dave.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    dave.join(&room_id).await;
    assert_eq!(unread(&dave, &room_id).await, (0, 0));
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "four" }),
    )
    .await;
    assert_eq!(unread(&dave, &room_id).await, (1, 0));
}

#[actix_web::test]
async fn a_mention_highlights() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room(&cluster).await;

    // By user id in `m.mentions` (`.m.rule.is_user_mention`).
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "hey", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    assert_eq!(unread(&bob, &room_id).await, (1, 1));

    // By display name, with a rule of bob's that uses it.
    let (status, answer) = bob
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room_id),
                enc(&bob.user_id)
            ),
            json!({ "membership": "join", "displayname": "Bobby" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    put_ok(
        &bob,
        "override/name",
        json!({
            "conditions": [{ "kind": "contains_display_name" }],
            "actions": ["notify", { "set_tweak": "highlight" }],
        }),
    )
    .await;
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "where is Bobby?" }),
    )
    .await;
    assert_eq!(unread(&bob, &room_id).await, (2, 2));
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "nobody here" }),
    )
    .await;
    assert_eq!(unread(&bob, &room_id).await, (3, 2));
}

#[actix_web::test]
async fn a_disabled_rule_or_a_dont_notify_rule_stops_counting() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room(&cluster).await;
    let (status, _) = bob
        .put(
            &format!("{RULES}/underride/.m.rule.message/enabled"),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "quiet" }),
    )
    .await;
    assert_eq!(unread(&bob, &room_id).await, (0, 0));
    let (status, _) = bob
        .put(
            &format!("{RULES}/underride/.m.rule.message/enabled"),
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "loud" }),
    )
    .await;
    assert_eq!(unread(&bob, &room_id).await, (1, 0));

    // An override that matches the room with no actions (`dont_notify`).
    put_ok(
        &bob,
        &format!("override/{}", enc("mute")),
        json!({
            "conditions": [{ "kind": "event_match", "key": "room_id", "pattern": room_id }],
            "actions": ["dont_notify"],
        }),
    )
    .await;
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "muted", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    assert_eq!(unread(&bob, &room_id).await, (1, 0));
}

#[actix_web::test]
async fn threads_are_counted_apart_when_the_filter_asks() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room(&cluster).await;
    let root = send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "root" }),
    )
    .await;
    let in_thread = |body: &str| {
        json!({
            "msgtype": "m.text",
            "body": body,
            "m.relates_to": { "rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": { "event_id": root } },
        })
    };
    send(&alice, &room_id, in_thread("first")).await;
    let reply = send(&alice, &room_id, in_thread("second")).await;
    let main = send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "main" }),
    )
    .await;

    let filter = enc(
        &json!({ "room": { "timeline": { "unread_thread_notifications": true } } }).to_string(),
    );
    let threaded =
        |sync: &Value| sync["rooms"]["join"][&room_id]["unread_thread_notifications"].clone();
    let sync = bob.sync(&format!("filter={filter}&timeout=0")).await;
    assert_eq!(counts(&sync, &room_id), (2, 0), "the main timeline only");
    assert_eq!(
        threaded(&sync),
        json!({ root.clone(): { "notification_count": 2, "highlight_count": 0 } })
    );
    // Without the filter: everything in unread_notifications.
    assert_eq!(unread(&bob, &room_id).await, (4, 0));

    // A threaded receipt clears its thread only.
    let since = next_batch(&sync);
    read(&bob, &room_id, &reply, json!({ "thread_id": root })).await;
    let sync = bob
        .sync(&format!("filter={filter}&since={}&timeout=0", enc(&since)))
        .await;
    assert_eq!(counts(&sync, &room_id), (2, 0));
    assert_eq!(threaded(&sync), json!({}));
    // A receipt on the main timeline clears that.
    read(&bob, &room_id, &main, json!({ "thread_id": "main" })).await;
    let sync = bob.sync(&format!("filter={filter}&timeout=0")).await;
    assert_eq!(counts(&sync, &room_id), (0, 0));
    assert_eq!(threaded(&sync), json!({}));
}

#[actix_web::test]
async fn counts_cover_every_room_of_an_answer() {
    let cluster = TestCluster::start().await;
    let (alice, bob, first) = room(&cluster).await;
    let second = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&second).await;
    send(&alice, &first, json!({ "msgtype": "m.text", "body": "a" })).await;
    for _ in 0..3 {
        send(&alice, &second, json!({ "msgtype": "m.text", "body": "b" })).await;
    }
    let sync = bob.sync("timeout=0").await;
    assert_eq!(counts(&sync, &first), (1, 0));
    // Two members: `.m.rule.room_one_to_one` notifies.
    assert_eq!(counts(&sync, &second), (3, 0));
}

/// One evaluation per event over all the room's members (not one per
/// member), on the instance the send arrived at; what it cost is in the
/// evaluator's counters (printed: a rough per-send figure, not a bench).
#[actix_web::test]
async fn each_send_is_evaluated_once_for_all_members() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut members = Vec::new();
    for i in 0..9 {
        let member = client.register(&format!("member{i}")).await;
        member.join(&room_id).await;
        members.push(member);
    }
    let observe = || cluster.on_node("main", |node| async move { node.push.observe() });
    let before = observe().await;
    const SENDS: u64 = 20;
    for i in 0..SENDS {
        send(
            &alice,
            &room_id,
            json!({ "msgtype": "m.text", "body": format!("m{i}") }),
        )
        .await;
    }
    let after = observe().await;
    let delta = |key: &str| after[key].as_u64().unwrap_or(0) - before[key].as_u64().unwrap_or(0);
    assert_eq!(delta("events_evaluated"), SENDS, "{after}");
    assert_eq!(delta("members_evaluated"), SENDS * 9, "{after}");
    eprintln!(
        "push evaluation: {} µs per send over 9 recipients, of which {} µs reading the room (debug build)",
        delta("evaluation_micros") / SENDS,
        delta("room_read_micros") / SENDS
    );
    for member in &members {
        assert_eq!(unread(member, &room_id).await, (SENDS as i64, 0));
    }
}

const NOTIFICATIONS: &str = "/_matrix/client/v3/notifications";

/// `GET /notifications` with `query`, asserting success.
async fn notifications(user: &User, query: &str) -> Value {
    let (status, answer) = user.get(&format!("{NOTIFICATIONS}?{query}")).await;
    assert_eq!(status, StatusCode::OK, "notifications?{query}: {answer}");
    answer
}

/// The event ids of a page of notifications, in its order.
fn listed(page: &Value) -> Vec<String> {
    page["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("notifications in {page}"))
        .iter()
        .map(|n| {
            n["event"]["event_id"]
                .as_str()
                .expect("an event id")
                .to_owned()
        })
        .collect()
}

#[actix_web::test]
async fn notifications_list_what_notified_the_user_newest_first() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room(&cluster).await;
    let first = send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "one" }),
    )
    .await;
    let mention = send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "hey", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    let last = send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "three" }),
    )
    .await;

    let page = notifications(&bob, "").await;
    assert_eq!(
        listed(&page),
        vec![last.clone(), mention.clone(), first.clone()]
    );
    assert!(page.get("next_token").is_none(), "{page}");
    let highlighted = &page["notifications"][1];
    assert_eq!(highlighted["room_id"], room_id);
    assert_eq!(highlighted["read"], false);
    assert_eq!(highlighted["event"]["content"]["body"], "hey");
    assert_eq!(highlighted["event"]["sender"], alice.user_id);
    assert!(
        highlighted["ts"].as_i64().is_some_and(|ts| ts > 0),
        "{page}"
    );
    let actions = highlighted["actions"].as_array().expect("actions");
    assert!(actions.contains(&json!("notify")), "{page}");
    assert!(
        actions.contains(&json!({ "set_tweak": "highlight" })),
        "{page}"
    );
    assert_eq!(page["notifications"][0]["actions"], json!(["notify"]));
    // The sender's own messages did not notify them.
    assert_eq!(
        listed(&notifications(&alice, "").await),
        Vec::<String>::new()
    );

    // Only the highlights.
    let page = notifications(&bob, "only=highlight").await;
    assert_eq!(listed(&page), vec![mention.clone()]);

    // In pages: `next_token` until the last.
    let page = notifications(&bob, "limit=2").await;
    assert_eq!(listed(&page), vec![last.clone(), mention.clone()]);
    let token = page["next_token"]
        .as_str()
        .expect("a next_token")
        .to_owned();
    let page = notifications(&bob, &format!("limit=2&from={token}")).await;
    assert_eq!(listed(&page), vec![first.clone()]);
    assert!(page.get("next_token").is_none(), "{page}");

    // A read receipt marks what it covers read.
    read(&bob, &room_id, &mention, json!({})).await;
    let page = notifications(&bob, "").await;
    let read_flags: Vec<&Value> = page["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| &n["read"])
        .collect();
    assert_eq!(read_flags, vec![&json!(false), &json!(true), &json!(true)]);
}

#[actix_web::test]
async fn notifications_refuse_bad_parameters() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    for query in ["from=abc", "from=-3", "limit=-1", "limit=lots"] {
        let (status, answer) = alice.get(&format!("{NOTIFICATIONS}?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {answer}");
        assert_eq!(answer["errcode"], "M_INVALID_PARAM", "{query}");
    }
    let (status, answer) = cluster.client().get(NOTIFICATIONS, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["errcode"], "M_MISSING_TOKEN");
}

#[actix_web::test]
async fn a_room_left_keeps_its_notifications_until_it_is_forgotten() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room(&cluster).await;
    let before = send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "still here?" }),
    )
    .await;
    let (status, answer) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    send(
        &alice,
        &room_id,
        json!({ "msgtype": "m.text", "body": "gone", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    assert_eq!(listed(&notifications(&bob, "").await), vec![before]);

    let (status, answer) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/forget", enc(&room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(listed(&notifications(&bob, "").await), Vec::<String>::new());
}
