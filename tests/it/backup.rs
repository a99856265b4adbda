//! Server-side key backup: versions (create, read, update, delete, the
//! current one), keys at each level (all rooms, one room, one session),
//! the spec's rule on which of two keys for a session is kept, etags and
//! counts, and the errors of each.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

const VERSION: &str = "/_matrix/client/v3/room_keys/version";
const KEYS: &str = "/_matrix/client/v3/room_keys/keys";
const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM: &str = "!room:lattice.test";
const OTHER_ROOM: &str = "!other:lattice.test";
/// Megolm session ids are base64: `/` and `+` travel percent-encoded.
const SESSION: &str = "sess/ion+1";

fn auth_data(public_key: &str) -> Value {
    json!({
        "public_key": public_key,
        "signatures": { "@alice:lattice.test": { "ed25519:DEVICE": "signature" } },
    })
}

fn key(is_verified: bool, first_message_index: u64, forwarded_count: u64, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": { "ephemeral": "e", "ciphertext": tag, "mac": "m" },
    })
}

fn session_path(room_id: &str, session_id: &str, version: &str) -> String {
    format!(
        "{KEYS}/{}/{}?version={version}",
        enc(room_id),
        enc(session_id)
    )
}

fn room_path(room_id: &str, version: &str) -> String {
    format!("{KEYS}/{}?version={version}", enc(room_id))
}

/// Creates a version, asserting success; its number.
async fn create_version(user: &User, public_key: &str) -> String {
    let (status, body) = user
        .post(
            VERSION,
            json!({ "algorithm": ALGORITHM, "auth_data": auth_data(public_key) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["version"].as_str().expect("a version").to_owned()
}

/// PUTs `body` to `path`, asserting success; the etag and count.
async fn put_ok(user: &User, path: &str, body: Value) -> (String, u64) {
    let (status, answer) = user.put(path, body).await;
    assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    (
        answer["etag"].as_str().expect("an etag").to_owned(),
        answer["count"].as_u64().expect("a count"),
    )
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, errcode: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["errcode"], errcode, "{body}");
}

#[actix_web::test]
async fn versions_are_created_read_updated_and_deleted() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;

    let (status, body) = alice.get(VERSION).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    assert_eq!(create_version(&alice, "first").await, "1");
    let (status, current) = alice.get(VERSION).await;
    assert_eq!(status, StatusCode::OK, "{current}");
    assert_eq!(current["version"], "1");
    assert_eq!(current["algorithm"], ALGORITHM);
    assert_eq!(current["auth_data"], auth_data("first"));
    assert_eq!(current["count"], 0);
    assert!(current["etag"].is_string(), "{current}");
    let (status, first) = alice.get(&format!("{VERSION}/1")).await;
    assert_eq!((status, &first), (StatusCode::OK, &current));

    // A new version is the current one.
    assert_eq!(create_version(&alice, "second").await, "2");
    let (_, current) = alice.get(VERSION).await;
    assert_eq!(current["version"], "2", "{current}");

    // Updating changes auth_data only, with the same algorithm.
    for body in [
        json!({ "algorithm": ALGORITHM, "auth_data": auth_data("updated") }),
        json!({ "algorithm": ALGORITHM, "auth_data": auth_data("updated"), "version": "2" }),
    ] {
        let (status, answer) = alice.put(&format!("{VERSION}/2"), body).await;
        assert_eq!((status, answer), (StatusCode::OK, json!({})));
    }
    let (_, updated) = alice.get(&format!("{VERSION}/2")).await;
    assert_eq!(updated["auth_data"], auth_data("updated"), "{updated}");
    let (_, untouched) = alice.get(&format!("{VERSION}/1")).await;
    assert_eq!(untouched["auth_data"], auth_data("first"), "{untouched}");

    let (status, body) = alice
        .put(
            &format!("{VERSION}/2"),
            json!({ "algorithm": "m.other", "auth_data": auth_data("x") }),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (status, body) = alice
        .put(
            &format!("{VERSION}/2"),
            json!({ "algorithm": ALGORITHM, "auth_data": auth_data("x"), "version": "1" }),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (status, body) = alice
        .put(
            &format!("{VERSION}/9"),
            json!({ "algorithm": ALGORITHM, "auth_data": auth_data("x") }),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (_, still) = alice.get(&format!("{VERSION}/2")).await;
    assert_eq!(still["auth_data"], auth_data("updated"), "{still}");

    // Deleting the current version makes the one before current; its
    // number is never given again.
    let (status, body) = alice.delete(&format!("{VERSION}/2")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (_, current) = alice.get(VERSION).await;
    assert_eq!(current["version"], "1", "{current}");
    for path in [format!("{VERSION}/2"), format!("{VERSION}/abc")] {
        let (status, body) = alice.get(&path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
        let (status, body) = alice.delete(&path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    assert_eq!(create_version(&alice, "third").await, "3");
}

#[actix_web::test]
async fn bad_version_bodies_are_refused() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    for body in [
        json!({ "algorithm": ALGORITHM }),
        json!({ "auth_data": {} }),
        json!({ "algorithm": ALGORITHM, "auth_data": "not an object" }),
        json!({ "algorithm": 1, "auth_data": {} }),
    ] {
        let (status, answer) = alice.post(VERSION, body.clone()).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
    let (status, answer) = alice
        .post(VERSION, json!({ "algorithm": "", "auth_data": {} }))
        .await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (status, body) = alice.get(VERSION).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

#[actix_web::test]
async fn keys_are_stored_read_and_deleted_at_each_level() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let version = create_version(&alice, "k").await;
    let (_, before) = alice.get(VERSION).await;
    let mut etags = vec![before["etag"].as_str().expect("etag").to_owned()];

    // One session.
    let (etag, count) = put_ok(
        &alice,
        &session_path(ROOM, SESSION, &version),
        key(false, 0, 0, "one"),
    )
    .await;
    assert_eq!(count, 1);
    etags.push(etag);
    let (status, stored) = alice.get(&session_path(ROOM, SESSION, &version)).await;
    assert_eq!((status, stored), (StatusCode::OK, key(false, 0, 0, "one")));

    // One room.
    let (etag, count) = put_ok(
        &alice,
        &room_path(ROOM, &version),
        json!({ "sessions": { "two": key(true, 3, 1, "two") } }),
    )
    .await;
    assert_eq!(count, 2);
    etags.push(etag);

    // Every room.
    let (etag, count) = put_ok(
        &alice,
        &format!("{KEYS}?version={version}"),
        json!({ "rooms": { OTHER_ROOM: { "sessions": { "three": key(false, 0, 0, "three") } } } }),
    )
    .await;
    assert_eq!(count, 3);
    etags.push(etag);

    let everything = json!({ "rooms": {
        ROOM: { "sessions": { SESSION: key(false, 0, 0, "one"), "two": key(true, 3, 1, "two") } },
        OTHER_ROOM: { "sessions": { "three": key(false, 0, 0, "three") } },
    } });
    let (status, all) = alice.get(&format!("{KEYS}?version={version}")).await;
    assert_eq!((status, &all), (StatusCode::OK, &everything));
    let (status, room) = alice.get(&room_path(ROOM, &version)).await;
    assert_eq!(
        (status, &room),
        (StatusCode::OK, &everything["rooms"][ROOM])
    );
    let (_, current) = alice.get(VERSION).await;
    assert_eq!(current["count"], 3, "{current}");
    assert_eq!(current["etag"], etags[3].as_str(), "{current}");

    // Deleting, one session, one room, then everything.
    let (status, answer) = alice.delete(&session_path(ROOM, SESSION, &version)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["count"], 2, "{answer}");
    etags.push(answer["etag"].as_str().expect("etag").to_owned());
    let (status, body) = alice.get(&session_path(ROOM, SESSION, &version)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let (status, answer) = alice.delete(&room_path(ROOM, &version)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["count"], 1, "{answer}");
    etags.push(answer["etag"].as_str().expect("etag").to_owned());
    let (status, room) = alice.get(&room_path(ROOM, &version)).await;
    assert_eq!((status, room), (StatusCode::OK, json!({ "sessions": {} })));

    let (status, answer) = alice.delete(&format!("{KEYS}?version={version}")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["count"], 0, "{answer}");
    etags.push(answer["etag"].as_str().expect("etag").to_owned());
    let (status, all) = alice.get(&format!("{KEYS}?version={version}")).await;
    assert_eq!((status, all), (StatusCode::OK, json!({ "rooms": {} })));

    // Every change moved the etag.
    let mut distinct = etags.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), etags.len(), "{etags:?}");
}

#[actix_web::test]
async fn a_sessions_better_key_is_kept() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let version = create_version(&alice, "k").await;
    let path = session_path(ROOM, SESSION, &version);
    let (mut etag, _) = put_ok(&alice, &path, key(false, 5, 2, "stored")).await;

    // (new key, whether it replaces the stored one)
    let uploads = [
        (key(false, 6, 0, "later first message"), false),
        (key(false, 5, 3, "more forwards"), false),
        (key(false, 5, 2, "equal"), false),
        (key(false, 5, 1, "fewer forwards"), true),
        (key(false, 4, 9, "earlier first message"), true),
        (key(true, 9, 9, "verified"), true),
        (key(false, 0, 0, "unverified"), false),
        (key(true, 8, 9, "verified, earlier"), true),
    ];
    let mut kept = key(false, 5, 2, "stored");
    for (upload, replaces) in uploads {
        let (new_etag, count) = put_ok(&alice, &path, upload.clone()).await;
        assert_eq!(count, 1);
        if replaces {
            kept = upload.clone();
            assert_ne!(new_etag, etag, "{upload}");
        } else {
            assert_eq!(new_etag, etag, "{upload} changed nothing");
        }
        etag = new_etag;
        let (_, stored) = alice.get(&path).await;
        assert_eq!(stored, kept, "after {upload}");
    }

    // The same rule when a batch holds several sessions.
    let (_, count) = put_ok(
        &alice,
        &room_path(ROOM, &version),
        json!({ "sessions": {
            SESSION: key(false, 0, 0, "worse"),
            "new": key(false, 1, 0, "new"),
        } }),
    )
    .await;
    assert_eq!(count, 2);
    let (_, stored) = alice.get(&path).await;
    assert_eq!(stored, kept);
}

#[actix_web::test]
async fn only_the_current_version_takes_keys() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let path = |version: &str| session_path(ROOM, SESSION, version);

    // No version at all.
    let (status, body) = alice.put(&path("1"), key(false, 0, 0, "k")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let old = create_version(&alice, "old").await;
    put_ok(&alice, &path(&old), key(false, 0, 0, "old")).await;
    let current = create_version(&alice, "current").await;

    let (status, body) = alice.put(&path(&old), key(false, 0, 0, "k")).await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "M_WRONG_ROOM_KEYS_VERSION",
    );
    assert_eq!(body["current_version"], current.as_str(), "{body}");
    let (status, body) = alice
        .put(
            &format!("{KEYS}?version={old}"),
            json!({ "rooms": { ROOM: { "sessions": { "x": key(false, 0, 0, "k") } } } }),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "M_WRONG_ROOM_KEYS_VERSION",
    );
    assert_eq!(body["current_version"], current.as_str(), "{body}");

    // The old version can still be read and emptied.
    let (status, stored) = alice.get(&path(&old)).await;
    assert_eq!((status, stored), (StatusCode::OK, key(false, 0, 0, "old")));

    for version in ["7", "x"] {
        let (status, body) = alice.put(&path(version), key(false, 0, 0, "k")).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
        let (status, body) = alice.get(&format!("{KEYS}?version={version}")).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
        let (status, body) = alice.delete(&room_path(ROOM, version)).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    // The version parameter is required.
    let (status, body) = alice
        .put(
            &format!("{KEYS}/{}/{}", enc(ROOM), enc(SESSION)),
            key(false, 0, 0, "k"),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");
    let (status, body) = alice.get(KEYS).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");

    let (status, answer) = alice.delete(&format!("{KEYS}?version={old}")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["count"], 0, "{answer}");
}

#[actix_web::test]
async fn deleting_a_version_deletes_its_keys() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let first = create_version(&alice, "first").await;
    put_ok(
        &alice,
        &session_path(ROOM, SESSION, &first),
        key(false, 0, 0, "k"),
    )
    .await;
    let (status, body) = alice.delete(&format!("{VERSION}/{first}")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = alice.get(&session_path(ROOM, SESSION, &first)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, body) = alice.get(VERSION).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let second = create_version(&alice, "second").await;
    let (_, current) = alice.get(VERSION).await;
    assert_eq!(current["version"], second.as_str());
    assert_eq!(current["count"], 0, "{current}");
}

#[actix_web::test]
async fn keys_of_the_wrong_shape_are_refused() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let version = create_version(&alice, "k").await;
    let mut missing = key(false, 0, 0, "k");
    missing
        .as_object_mut()
        .expect("an object")
        .remove("session_data");
    let bad_keys = [
        missing,
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {} }),
        json!({ "first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0.5, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": "data" }),
    ];
    for bad in &bad_keys {
        let (status, body) = alice
            .put(&session_path(ROOM, SESSION, &version), bad.clone())
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "M_BAD_JSON");
        let (status, body) = alice
            .put(
                &room_path(ROOM, &version),
                json!({ "sessions": { SESSION: bad } }),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
    for bad in [
        json!({ "rooms": [] }),
        json!({ "rooms": { ROOM: { "sessions": [] } } }),
        json!({ "rooms": { ROOM: {} } }),
        json!({}),
    ] {
        let (status, body) = alice
            .put(&format!("{KEYS}?version={version}"), bad.clone())
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
    // Ids that cannot be a room's or a session's.
    let (status, body) = alice
        .put(
            &session_path("not a room", SESSION, &version),
            key(false, 0, 0, "k"),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (status, body) = alice
        .put(
            &format!("{KEYS}?version={version}"),
            json!({ "rooms": { ROOM: { "sessions": { "s".repeat(300): key(false, 0, 0, "k") } } } }),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    let (_, current) = alice.get(VERSION).await;
    assert_eq!(current["count"], 0, "{current}");
}

#[actix_web::test]
async fn each_user_has_their_own_backup() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let bob = cluster.client().register("bob").await;
    let version = create_version(&alice, "alice").await;
    put_ok(
        &alice,
        &session_path(ROOM, SESSION, &version),
        key(false, 0, 0, "alice's"),
    )
    .await;

    let (status, body) = bob.get(VERSION).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, body) = bob.get(&session_path(ROOM, SESSION, &version)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, body) = bob.delete(&format!("{VERSION}/{version}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Bob's own first version has the same number, and other keys.
    assert_eq!(create_version(&bob, "bob").await, version);
    let (_, count) = put_ok(
        &bob,
        &session_path(ROOM, SESSION, &version),
        key(true, 0, 0, "bob's"),
    )
    .await;
    assert_eq!(count, 1);
    let (status, body) = bob.delete(&format!("{VERSION}/{version}")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));

    let (_, stored) = alice.get(&session_path(ROOM, SESSION, &version)).await;
    assert_eq!(stored, key(false, 0, 0, "alice's"));
    let (_, current) = alice.get(VERSION).await;
    assert_eq!(current["auth_data"], auth_data("alice"), "{current}");
}

#[actix_web::test]
async fn concurrent_uploads_lose_nothing() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let version = create_version(&alice, "k").await;
    let uploads = (0..12).map(|i| {
        let alice = alice.clone();
        let path = room_path(ROOM, &version);
        async move {
            alice
                .put(
                    &path,
                    json!({ "sessions": {
                        format!("session{i}"): key(false, 0, 0, "k"),
                        "shared": key(false, 12 - i, 0, "shared"),
                    } }),
                )
                .await
        }
    });
    let answers = futures::future::join_all(uploads).await;
    let mut etags = Vec::new();
    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK, "{body}");
        etags.push(body["etag"].as_str().expect("etag").to_owned());
    }
    // Each upload added a session, so each saw a different state.
    etags.sort();
    etags.dedup();
    assert_eq!(etags.len(), 12, "{etags:?}");
    let (_, room) = alice.get(&room_path(ROOM, &version)).await;
    let sessions = room["sessions"].as_object().expect("sessions");
    assert_eq!(sessions.len(), 13, "{room}");
    // Whatever the order, the best shared key is the one kept.
    assert_eq!(sessions["shared"]["first_message_index"], 1, "{room}");
    let (_, current) = alice.get(VERSION).await;
    assert_eq!(current["count"], 13, "{current}");
}
