//! Account data and room tags: `GET`/`PUT /user/{userId}/[rooms/{roomId}/]account_data/{type}`
//! and `/user/{userId}/rooms/{roomId}/tags[/{tag}]`, seen through their
//! own endpoints and `/sync` (top-level `account_data`, each room's
//! `account_data`, tags as `m.tag`). On the split, the account data stream
//! has two writers on instances other than the one requests arrive at, and
//! `/sync` is served by a third.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use lattice::roles::account_data::{AccountDataChange, ChangeAccountData, ACCOUNT_DATA_STREAM};
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("next_batch in {sync}"))
        .to_owned()
}

fn global_path(user: &User, kind: &str) -> String {
    format!(
        "/_matrix/client/v3/user/{}/account_data/{}",
        enc(&user.user_id),
        enc(kind)
    )
}

fn room_path(user: &User, room_id: &str, kind: &str) -> String {
    format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/{}",
        enc(&user.user_id),
        enc(room_id),
        enc(kind)
    )
}

fn tags_path(user: &User, room_id: &str) -> String {
    format!(
        "/_matrix/client/v3/user/{}/rooms/{}/tags",
        enc(&user.user_id),
        enc(room_id)
    )
}

fn tag_path(user: &User, room_id: &str, tag: &str) -> String {
    format!("{}/{}", tags_path(user, room_id), enc(tag))
}

async fn put_ok(user: &User, path: &str, body: Value) {
    let (status, response) = user.put(path, body).await;
    assert_eq!(status, StatusCode::OK, "PUT {path}: {response}");
    assert_eq!(response, json!({}));
}

/// The `account_data` events of a `/sync` section (top-level, or a room's).
fn events(section: &Value) -> Vec<Value> {
    section["account_data"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The content of account data `kind` in a section's events.
fn content_of(section: &Value, kind: &str) -> Value {
    events(section)
        .into_iter()
        .find(|event| event["type"] == kind)
        .map(|event| event["content"].clone())
        .unwrap_or(Value::Null)
}

fn joined_room<'a>(sync: &'a Value, room_id: &str) -> &'a Value {
    &sync["rooms"]["join"][room_id]
}

#[actix_web::test]
async fn global_account_data_round_trips_and_reaches_sync() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let path = global_path(&alice, "org.example.settings");

    let (status, body) = alice.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let since = next_batch(&alice.sync("timeout=0").await);

    put_ok(&alice, &path, json!({ "theme": "dark", "size": 3 })).await;
    let (status, body) = alice.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "theme": "dark", "size": 3 }));
    // The legacy prefix reads the same.
    let (status, body) = alice.get(&path.replacen("/v3/", "/r0/", 1)).await;
    assert_eq!(
        (status, body["theme"].clone()),
        (StatusCode::OK, json!("dark"))
    );

    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    assert_eq!(
        events(&sync),
        vec![json!({ "type": "org.example.settings", "content": { "theme": "dark", "size": 3 } })],
        "{sync}"
    );
    // Only what changed since: nothing more from there.
    let after = next_batch(&sync);
    let again = alice
        .sync(&format!("since={}&timeout=0", enc(&after)))
        .await;
    assert!(events(&again).is_empty(), "{again}");

    // A second type, then a change to the first: an incremental sync shows
    // the changed one only, an initial sync both as they are now.
    put_ok(
        &alice,
        &global_path(&alice, "org.example.other"),
        json!({ "a": 1 }),
    )
    .await;
    let since_other = next_batch(
        &alice
            .sync(&format!("since={}&timeout=0", enc(&after)))
            .await,
    );
    put_ok(&alice, &path, json!({ "theme": "light" })).await;
    let changed = alice
        .sync(&format!("since={}&timeout=0", enc(&since_other)))
        .await;
    assert_eq!(
        events(&changed),
        vec![json!({ "type": "org.example.settings", "content": { "theme": "light" } })],
        "{changed}"
    );
    let initial = alice.sync("timeout=0").await;
    assert_eq!(
        content_of(&initial, "org.example.settings"),
        json!({ "theme": "light" })
    );
    assert_eq!(content_of(&initial, "org.example.other"), json!({ "a": 1 }));
    let mut kinds: Vec<String> = events(&initial)
        .iter()
        .filter_map(|event| event["type"].as_str().map(str::to_owned))
        .collect();
    kinds.sort();
    // With the server's own m.push_rules.
    assert_eq!(
        kinds,
        ["m.push_rules", "org.example.other", "org.example.settings"],
        "{initial}"
    );
}

#[actix_web::test]
async fn a_long_poll_wakes_for_account_data() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let since = next_batch(&alice.sync("timeout=0").await);
    let poller = alice.clone();
    let poll = actix_web::rt::spawn(async move {
        poller
            .sync(&format!("since={}&timeout=30000", enc(&since)))
            .await
    });
    cluster
        .wait_for_long_poll(if cluster.is_split() { "sync2" } else { "main" })
        .await;
    put_ok(
        &alice,
        &global_path(&alice, "org.example.wake"),
        json!({ "x": true }),
    )
    .await;
    let sync = poll.await.expect("the long-poll answered");
    assert_eq!(
        content_of(&sync, "org.example.wake"),
        json!({ "x": true }),
        "{sync}"
    );
}

#[actix_web::test]
async fn room_account_data_round_trips_and_reaches_the_rooms_sync() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let other_room = alice.create_room(json!({})).await;
    let path = room_path(&alice, &room_id, "org.example.room");
    let (status, body) = alice.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let since = next_batch(&alice.sync("timeout=0").await);

    put_ok(&alice, &path, json!({ "pinned": ["a"] })).await;
    let (status, body) = alice.get(&path).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "pinned": ["a"] })));
    // Per room, and not global.
    let (status, _) = alice
        .get(&room_path(&alice, &other_room, "org.example.room"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = alice.get(&global_path(&alice, "org.example.room")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    assert_eq!(
        events(joined_room(&sync, &room_id)),
        vec![json!({ "type": "org.example.room", "content": { "pinned": ["a"] } })],
        "{sync}"
    );
    // The other room has nothing new: it is not listed; the top level has none.
    assert!(joined_room(&sync, &other_room).is_null(), "{sync}");
    assert!(events(&sync).is_empty(), "{sync}");
    let again = alice
        .sync(&format!("since={}&timeout=0", enc(&next_batch(&sync))))
        .await;
    assert!(joined_room(&again, &room_id).is_null(), "{again}");

    let initial = alice.sync("timeout=0").await;
    assert_eq!(
        content_of(joined_room(&initial, &room_id), "org.example.room"),
        json!({ "pinned": ["a"] }),
        "{initial}"
    );
    assert!(
        events(joined_room(&initial, &other_room)).is_empty(),
        "{initial}"
    );
}

#[actix_web::test]
async fn tags_are_set_listed_removed_and_synced_as_m_tag() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let (status, body) = alice.get(&tags_path(&alice, &room_id)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "tags": {} })));
    let since = next_batch(&alice.sync("timeout=0").await);

    put_ok(
        &alice,
        &tag_path(&alice, &room_id, "m.favourite"),
        json!({ "order": 0.25 }),
    )
    .await;
    put_ok(&alice, &tag_path(&alice, &room_id, "u.work"), json!({})).await;
    let (status, body) = alice.get(&tags_path(&alice, &room_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({ "tags": { "m.favourite": { "order": 0.25 }, "u.work": {} } })
    );

    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    let tags: Vec<Value> = events(joined_room(&sync, &room_id))
        .into_iter()
        .filter(|event| event["type"] == "m.tag")
        .collect();
    assert_eq!(
        tags,
        vec![
            json!({ "type": "m.tag", "content": { "tags": { "m.favourite": { "order": 0.25 }, "u.work": {} } } })
        ],
        "one m.tag, as it is now: {sync}"
    );

    // Changing one tag's order keeps the other; removing one shows the rest.
    put_ok(
        &alice,
        &tag_path(&alice, &room_id, "m.favourite"),
        json!({ "order": 1 }),
    )
    .await;
    let (status, body) = alice.delete(&tag_path(&alice, &room_id, "u.work")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let next = alice
        .sync(&format!("since={}&timeout=0", enc(&next_batch(&sync))))
        .await;
    assert_eq!(
        content_of(joined_room(&next, &room_id), "m.tag"),
        json!({ "tags": { "m.favourite": { "order": 1 } } }),
        "{next}"
    );
    // Removing a tag the room does not have is fine and changes nothing.
    let (status, _) = alice.delete(&tag_path(&alice, &room_id, "u.never")).await;
    assert_eq!(status, StatusCode::OK);
    let quiet = alice
        .sync(&format!("since={}&timeout=0", enc(&next_batch(&next))))
        .await;
    assert!(joined_room(&quiet, &room_id).is_null(), "{quiet}");
    let (_, body) = alice.get(&tags_path(&alice, &room_id)).await;
    assert_eq!(body, json!({ "tags": { "m.favourite": { "order": 1 } } }));
    // The tags are the room's m.tag account data.
    let (status, body) = alice.get(&room_path(&alice, &room_id, "m.tag")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "tags": { "m.favourite": { "order": 1 } } }));
}

#[actix_web::test]
async fn refused_requests_get_the_specs_errors_and_change_nothing() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({})).await;
    let event_id = alice.send_text(&room_id, "hi").await;
    put_ok(
        &alice,
        &global_path(&alice, "org.example.kept"),
        json!({ "v": 1 }),
    )
    .await;
    put_ok(
        &alice,
        &room_path(&alice, &room_id, "org.example.kept"),
        json!({ "v": 1 }),
    )
    .await;
    put_ok(
        &alice,
        &tag_path(&alice, &room_id, "u.kept"),
        json!({ "order": 0.5 }),
    )
    .await;
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room_id)),
            json!({ "m.fully_read": event_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = next_batch(&alice.sync("timeout=0").await);

    let refused: Vec<(Method, String, Vec<u8>, StatusCode, &str)> = vec![
        // Another user's data, to read or to write.
        (
            Method::GET,
            global_path(&alice, "org.example.kept"),
            vec![],
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        ),
        (
            Method::PUT,
            global_path(&alice, "org.example.kept"),
            br#"{"v":2}"#.to_vec(),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        ),
        (
            Method::GET,
            room_path(&alice, &room_id, "org.example.kept"),
            vec![],
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        ),
        (
            Method::PUT,
            room_path(&alice, &room_id, "org.example.kept"),
            br#"{"v":2}"#.to_vec(),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        ),
        (
            Method::GET,
            tags_path(&alice, &room_id),
            vec![],
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        ),
        (
            Method::PUT,
            tag_path(&alice, &room_id, "u.kept"),
            br#"{"order":0.1}"#.to_vec(),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        ),
        (
            Method::DELETE,
            tag_path(&alice, &room_id, "u.kept"),
            vec![],
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        ),
    ];
    for (method, path, body, status, errcode) in refused {
        let body = (!body.is_empty()).then_some(body);
        let (got, response) = client
            .request(method.clone(), &path, Some(&bob.access_token), body)
            .await;
        assert_eq!(
            (got, response["errcode"].as_str()),
            (status, Some(errcode)),
            "bob {method} {path}: {response}"
        );
    }

    let own: Vec<(Method, String, Vec<u8>, StatusCode, &str)> = vec![
        // Not JSON, or JSON that is not an object.
        (
            Method::PUT,
            global_path(&alice, "org.example.kept"),
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
        ),
        (
            Method::PUT,
            global_path(&alice, "org.example.kept"),
            b"[1, 2]".to_vec(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            Method::PUT,
            global_path(&alice, "org.example.kept"),
            b"\"text\"".to_vec(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            Method::PUT,
            room_path(&alice, &room_id, "org.example.kept"),
            b"7".to_vec(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            Method::PUT,
            tag_path(&alice, &room_id, "u.kept"),
            b"[]".to_vec(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        // Types the server owns.
        (
            Method::PUT,
            global_path(&alice, "m.push_rules"),
            br#"{"global":{}}"#.to_vec(),
            StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
        ),
        (
            Method::PUT,
            room_path(&alice, &room_id, "m.fully_read"),
            br#"{"event_id":"$x"}"#.to_vec(),
            StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
        ),
        // Room ids that are not room ids.
        (
            Method::PUT,
            room_path(&alice, "not-a-room", "org.example.kept"),
            br#"{"v":2}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            room_path(&alice, "not-a-room", "org.example.kept"),
            vec![],
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            Method::PUT,
            tag_path(&alice, "#alias:x", "u.kept"),
            br#"{}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        // A tag order that is not a number from 0 to 1.
        (
            Method::PUT,
            tag_path(&alice, &room_id, "u.kept"),
            br#"{"order":"first"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            Method::PUT,
            tag_path(&alice, &room_id, "u.kept"),
            br#"{"order":2}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        // Text PostgreSQL cannot store.
        (
            Method::PUT,
            global_path(&alice, "org.example.kept"),
            br#"{"v":"a\u0000b"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
    ];
    for (method, path, body, status, errcode) in own {
        let (got, response) = client
            .request(method.clone(), &path, Some(&alice.access_token), Some(body))
            .await;
        assert_eq!(
            (got, response["errcode"].as_str()),
            (status, Some(errcode)),
            "{method} {path}: {response}"
        );
    }

    // Nothing changed: the same data, and an incremental sync has nothing.
    let (_, body) = alice.get(&global_path(&alice, "org.example.kept")).await;
    assert_eq!(body, json!({ "v": 1 }));
    let (_, body) = alice
        .get(&room_path(&alice, &room_id, "org.example.kept"))
        .await;
    assert_eq!(body, json!({ "v": 1 }));
    let (_, body) = alice.get(&tags_path(&alice, &room_id)).await;
    assert_eq!(body, json!({ "tags": { "u.kept": { "order": 0.5 } } }));
    let (_, body) = alice
        .get(&room_path(&alice, &room_id, "m.fully_read"))
        .await;
    assert_eq!(body, json!({ "event_id": event_id }));
    // The refused PUT stored nothing: the ruleset is still the server's.
    let (status, body) = alice.get(&global_path(&alice, "m.push_rules")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, rules) = alice.get("/_matrix/client/v3/pushrules/").await;
    assert_eq!(body, rules, "GET m.push_rules is the ruleset");
    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    assert!(events(&sync).is_empty(), "{sync}");
    assert!(joined_room(&sync, &room_id).is_null(), "{sync}");
}

#[actix_web::test]
async fn each_users_account_data_is_their_own() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let bob_since = next_batch(&bob.sync("timeout=0").await);

    put_ok(
        &alice,
        &global_path(&alice, "org.example.mine"),
        json!({ "who": "alice" }),
    )
    .await;
    put_ok(
        &alice,
        &room_path(&alice, &room_id, "org.example.mine"),
        json!({ "who": "alice" }),
    )
    .await;
    put_ok(&alice, &tag_path(&alice, &room_id, "u.alice"), json!({})).await;
    put_ok(
        &bob,
        &global_path(&bob, "org.example.mine"),
        json!({ "who": "bob" }),
    )
    .await;

    let (_, body) = bob.get(&global_path(&bob, "org.example.mine")).await;
    assert_eq!(body, json!({ "who": "bob" }));
    let (status, _) = bob
        .get(&room_path(&bob, &room_id, "org.example.mine"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = bob.get(&tags_path(&bob, &room_id)).await;
    assert_eq!(body, json!({ "tags": {} }));
    let sync = bob
        .sync(&format!("since={}&timeout=0", enc(&bob_since)))
        .await;
    assert_eq!(
        events(&sync),
        vec![json!({ "type": "org.example.mine", "content": { "who": "bob" } })],
        "{sync}"
    );
    assert!(events(joined_room(&sync, &room_id)).is_empty(), "{sync}");
}

#[actix_web::test]
async fn the_sync_filter_picks_account_data_types() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    put_ok(&alice, &global_path(&alice, "org.example.a"), json!({})).await;
    put_ok(&alice, &global_path(&alice, "im.other.b"), json!({})).await;
    put_ok(
        &alice,
        &room_path(&alice, &room_id, "org.example.a"),
        json!({}),
    )
    .await;
    put_ok(
        &alice,
        &room_path(&alice, &room_id, "im.other.b"),
        json!({}),
    )
    .await;
    let filter = json!({
        "account_data": { "types": ["org.example.*"] },
        "room": { "account_data": { "not_types": ["org.example.*"] } },
    });
    let sync = alice
        .sync(&format!("filter={}&timeout=0", enc(&filter.to_string())))
        .await;
    let types = |events: Vec<Value>| -> Vec<Value> {
        events
            .into_iter()
            .map(|event| event["type"].clone())
            .collect()
    };
    assert_eq!(types(events(&sync)), vec![json!("org.example.a")], "{sync}");
    assert_eq!(
        types(events(joined_room(&sync, &room_id))),
        vec![json!("im.other.b")],
        "{sync}"
    );
}

/// Sends `change` of `user`'s to their account data writer through its
/// mailbox (a remote one on the split), as a request handler does; the
/// position it wrote, if any.
async fn deliver(cluster: &TestCluster, user: &User, change: AccountDataChange) -> Option<i64> {
    let message = ChangeAccountData {
        user_id: user.user_id.parse().expect("a user id"),
        change,
    };
    cluster
        .on_node("main", |node| async move {
            let writer = node
                .mailboxes
                .for_shard::<ChangeAccountData>(ACCOUNT_DATA_STREAM, message.user_id.as_str())
                .expect("an account data writer");
            writer.call(message, Duration::from_secs(10)).await
        })
        .await
        .expect("delivered")
        .expect("written")
        .position
}

#[actix_web::test]
async fn tag_changes_delivered_twice_leave_the_same_tags() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let put = AccountDataChange::PutTag {
        room_id: room_id.parse().expect("a room id"),
        tag: "u.twice".into(),
        content: serde_json::Map::from_iter([("order".to_owned(), json!(0.5))]),
    };
    for _ in 0..2 {
        assert!(deliver(&cluster, &alice, put.clone()).await.is_some());
    }
    let (_, body) = alice.get(&tags_path(&alice, &room_id)).await;
    assert_eq!(body, json!({ "tags": { "u.twice": { "order": 0.5 } } }));

    let delete = AccountDataChange::DeleteTag {
        room_id: room_id.parse().expect("a room id"),
        tag: "u.twice".into(),
    };
    let first = deliver(&cluster, &alice, delete.clone()).await;
    let second = deliver(&cluster, &alice, delete).await;
    assert!(first.is_some(), "the first removal writes");
    assert_eq!(second, None, "the second changes nothing");
    let (_, body) = alice.get(&tags_path(&alice, &room_id)).await;
    assert_eq!(body, json!({ "tags": {} }));
}
