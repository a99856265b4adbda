//! Bounds on what clients supply (`src/api/limits.rs`): input past a bound is
//! refused with a Matrix error before it reaches a writer or the database,
//! and never fails anyone else's request.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use lattice::api::limits::{MAX_CREATE_ROOM_INVITES, MAX_INITIAL_STATE_EVENTS};

use crate::cluster::{enc, TestCluster, User, PASSWORD};

const REGISTER: &str = "/_matrix/client/v3/register";
const LOGIN: &str = "/_matrix/client/v3/login";

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room_id))
}

/// `len` random letters and digits: a repeated character would compress
/// below PostgreSQL's index row limit and hide what a real client can send.
fn random_text(len: usize) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

fn assert_invalid_param(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{what}: {body}");
}

#[actix_web::test]
async fn a_huge_transaction_id_fails_alone_among_concurrent_sends() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut others: Vec<User> = Vec::new();
    for i in 0..10 {
        let user = client.register(&format!("user{i}")).await;
        user.join(&room_id).await;
        others.push(user);
    }
    let long_txn_id = random_text(5000);
    for round in 0..5 {
        // 60 sends by other users, with the long one among them: they reach
        // the writer together.
        let sends = (0..=60).map(|i| {
            let (user, txn_id) = if i == 30 {
                (&alice, long_txn_id.clone())
            } else {
                (&others[i % others.len()], format!("r{round}s{i}"))
            };
            let path = room_path(&room_id, &format!("send/m.room.message/{txn_id}"));
            async move {
                let (status, body) = user
                    .put(&path, json!({ "msgtype": "m.text", "body": "hello" }))
                    .await;
                (i, status, body)
            }
        });
        let mut answers = futures::future::join_all(sends).await;
        let (_, long_status, long_body) = answers.remove(30);
        let failed: Vec<String> = answers
            .into_iter()
            .filter(|(_, status, _)| *status != StatusCode::OK)
            .map(|(i, status, body)| format!("send {i}: {status} {body}"))
            .collect();
        assert!(
            failed.is_empty(),
            "round {round}: every other send must succeed:\n{}",
            failed.join("\n")
        );
        assert_invalid_param(long_status, &long_body, "a 5,000-character txnId");
    }
    // A redaction's transaction id is bounded too.
    let event_id = alice.send_text(&room_id, "to redact").await;
    let (status, body) = alice
        .put(
            &room_path(
                &room_id,
                &format!("redact/{}/{long_txn_id}", enc(&event_id)),
            ),
            json!({}),
        )
        .await;
    assert_invalid_param(status, &body, "a redaction's txnId");
}

#[actix_web::test]
async fn a_huge_device_id_is_refused_at_registration_and_login_and_nothing_is_stored() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let long_device_id = random_text(5000);
    let (status, body) = client
        .post(
            REGISTER,
            None,
            json!({
                "username": "mallory",
                "password": PASSWORD,
                "device_id": long_device_id,
                "auth": { "type": "m.login.dummy" },
            }),
        )
        .await;
    assert_invalid_param(status, &body, "register with a 5,000-character device_id");
    // Nor one the database cannot store.
    let (status, body) = client
        .post(
            REGISTER,
            None,
            json!({
                "username": "mallory",
                "password": PASSWORD,
                "device_id": "PHONE\u{0}",
                "auth": { "type": "m.login.dummy" },
            }),
        )
        .await;
    assert_invalid_param(status, &body, "register with a NUL in device_id");
    let (status, body) = client
        .get(
            "/_matrix/client/v3/register/available?username=mallory",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "no account was made: {body}");

    client.register("alice").await;
    let (status, body) = client
        .post(
            LOGIN,
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD,
                "device_id": long_device_id,
            }),
        )
        .await;
    assert_invalid_param(status, &body, "login with a 5,000-character device_id");
    let database = cluster.database().await;
    let row = database
        .query_one(
            "SELECT count(*) FROM devices WHERE length(device_id) > 512",
            &[],
        )
        .await
        .expect("count devices");
    assert_eq!(row.get::<_, i64>(0), 0, "no device was stored");

    // At the bound, a device id works.
    let (status, body) = client
        .post(
            LOGIN,
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD,
                "device_id": "D".repeat(512),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn names_and_avatars_are_bounded() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let (status, body) = client
        .post(
            REGISTER,
            None,
            json!({
                "username": "bob",
                "password": PASSWORD,
                "initial_device_display_name": "n".repeat(101),
                "auth": { "type": "m.login.dummy" },
            }),
        )
        .await;
    assert_invalid_param(status, &body, "a 101-character device display name");
    let alice = client.register("alice").await;
    let (status, body) = client
        .post(
            LOGIN,
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD,
                "initial_device_display_name": "n".repeat(101),
            }),
        )
        .await;
    assert_invalid_param(status, &body, "a 101-character device display name");

    let profile = format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id));
    let (status, body) = alice
        .put(
            &format!("{profile}/displayname"),
            json!({ "displayname": "a".repeat(257) }),
        )
        .await;
    assert_invalid_param(status, &body, "a 257-character display name");
    // The bound counts characters, as Synapse does.
    let emoji_name = "😀".repeat(256);
    let (status, body) = alice
        .put(
            &format!("{profile}/displayname"),
            json!({ "displayname": emoji_name }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for url in [
        "https://example.org/cat.png".to_owned(),
        "mxc://lattice.test".to_owned(),
        format!("mxc://lattice.test/{}", "a".repeat(1000)),
    ] {
        let (status, body) = alice
            .put(
                &format!("{profile}/avatar_url"),
                json!({ "avatar_url": url }),
            )
            .await;
        assert_invalid_param(status, &body, &url);
    }
    let (status, body) = alice.get(&format!("{profile}/avatar_url")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored: {body}");
}

#[actix_web::test]
async fn create_room_bounds_its_lists_and_alias() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let initial_state: Vec<Value> = (0..10_000)
        .map(|i| json!({ "type": "org.example.bulk", "state_key": format!("k{i}"), "content": {} }))
        .collect();
    let started = Instant::now();
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "initial_state": initial_state }),
        )
        .await;
    assert_invalid_param(status, &body, "10,000 initial_state events");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, took {:?}",
        started.elapsed()
    );
    let invites: Vec<String> = (0..=MAX_CREATE_ROOM_INVITES)
        .map(|i| format!("@u{i}:lattice.test"))
        .collect();
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "invite": invites }),
        )
        .await;
    assert_invalid_param(status, &body, "one invite past the bound");
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "room_alias_name": "a".repeat(300) }),
        )
        .await;
    assert_invalid_param(status, &body, "a 300-character alias");

    // At the bound, the room is made with every event.
    let initial_state: Vec<Value> = (0..MAX_INITIAL_STATE_EVENTS)
        .map(|i| json!({ "type": "org.example.bulk", "state_key": format!("k{i}"), "content": {} }))
        .collect();
    let room_id = alice
        .create_room(json!({ "initial_state": initial_state }))
        .await;
    let bulk = alice
        .room_state(&room_id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "org.example.bulk")
        .count();
    assert_eq!(bulk, MAX_INITIAL_STATE_EVENTS);
}

#[actix_web::test]
async fn filter_ids_that_cannot_exist_are_not_found() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let base = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id));
    for filter_id in [
        "99999999999999999999999".to_owned(),
        "-1".to_owned(),
        "abc".to_owned(),
        "9".repeat(5000),
        enc("\u{0}"),
    ] {
        let (status, body) = alice.get(&format!("{base}/{filter_id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{filter_id}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
    }
}

#[actix_web::test]
async fn reasons_and_directory_searches_are_bounded() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let (status, body) = alice
        .post(
            &room_path(&room_id, "kick"),
            json!({ "user_id": bob.user_id, "reason": "r".repeat(4097) }),
        )
        .await;
    assert_invalid_param(status, &body, "a 4,097-byte reason");
    let (status, body) = bob
        .post(
            &room_path(&room_id, "leave"),
            json!({ "reason": "r".repeat(4097) }),
        )
        .await;
    assert_invalid_param(status, &body, "a 4,097-byte reason");

    let (status, body) = alice
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({ "filter": { "generic_search_term": "t".repeat(1001) } }),
        )
        .await;
    assert_invalid_param(status, &body, "a 1,001-byte search term");
    let (status, body) = alice
        .get("/_matrix/client/v3/publicRooms?since=o18446744073709551615&limit=500")
        .await;
    assert_eq!(status, StatusCode::OK, "a far page is empty: {body}");
    assert_eq!(body["chunk"], json!([]));
}
