//! Device management: listing, reading and renaming devices, deleting them
//! with the password (user-interactive auth), logging out, and when and
//! from where each device was last used.

use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cluster::{enc, Options, TestCluster, User, PASSWORD};

const DEVICES: &str = "/_matrix/client/v3/devices";
const DELETE_DEVICES: &str = "/_matrix/client/v3/delete_devices";
const WHOAMI: &str = "/_matrix/client/v3/account/whoami";

fn device_path(device_id: &str) -> String {
    format!("{DEVICES}/{}", enc(device_id))
}

/// Logs `localpart` in on a device of its own (with a display name).
async fn login_on(cluster: &TestCluster, localpart: &str, device_id: &str, name: &str) -> User {
    let client = cluster.client();
    let (status, body) = client
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": localpart },
                "password": PASSWORD,
                "device_id": device_id,
                "initial_device_display_name": name,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "login: {body}");
    User {
        user_id: body["user_id"].as_str().expect("user_id").to_owned(),
        access_token: body["access_token"].as_str().expect("token").to_owned(),
        device_id: body["device_id"].as_str().expect("device_id").to_owned(),
        client,
    }
}

/// The ids of the user's devices, as `GET /devices` lists them.
async fn device_ids(user: &User) -> Vec<String> {
    let (status, body) = user.get(DEVICES).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut ids: Vec<String> = body["devices"]
        .as_array()
        .expect("a list of devices")
        .iter()
        .map(|d| d["device_id"].as_str().expect("a device id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// Whether the user's access token still works.
async fn signed_in(user: &User) -> bool {
    let (status, body) = user.get(WHOAMI).await;
    match status {
        StatusCode::OK => true,
        StatusCode::UNAUTHORIZED => {
            assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{body}");
            false
        }
        _ => panic!("whoami answered {status}: {body}"),
    }
}

/// `DELETE /devices/{deviceId}` with `body`.
async fn delete_device(user: &User, device_id: &str, body: Option<Value>) -> (StatusCode, Value) {
    user.client
        .request(
            Method::DELETE,
            &device_path(device_id),
            Some(&user.access_token),
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
}

/// The password stage for `user` (a localpart or id) in `session`.
fn password_auth(session: &str, user: &str, password: &str) -> Value {
    json!({
        "type": "m.login.password",
        "session": session,
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    })
}

/// Asserts the spec's `401` of the password flow; its session.
fn assert_password_challenge(body: &Value) -> String {
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.password"] }]),
        "{body}"
    );
    assert_eq!(body["params"], json!({}), "{body}");
    body["session"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("no session in {body}"))
        .to_owned()
}

#[actix_web::test]
async fn devices_are_listed_read_and_renamed() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let phone = login_on(&cluster, "alice", "PHONE", "Alice's phone").await;
    let started = lattice::util::now_ms();

    let (status, body) = phone.get(DEVICES).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let devices = body["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2, "{body}");
    let listed = devices
        .iter()
        .find(|d| d["device_id"] == "PHONE")
        .expect("PHONE is listed");
    assert_eq!(listed["display_name"], "Alice's phone", "{body}");
    assert_eq!(listed["last_seen_ip"], "127.0.0.1", "{body}");
    let seen = listed["last_seen_ts"].as_i64().expect("last_seen_ts");
    assert!(
        (started - 60_000..=lattice::util::now_ms()).contains(&seen),
        "{body}"
    );
    assert!(
        devices
            .iter()
            .any(|d| d["device_id"] == alice.device_id.as_str()),
        "{body}"
    );

    let (status, device) = alice.get(&device_path("PHONE")).await;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(&device, listed);

    let (status, body) = alice
        .put(
            &device_path("PHONE"),
            json!({ "display_name": "Work phone" }),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (_, device) = alice.get(&device_path("PHONE")).await;
    assert_eq!(device["display_name"], "Work phone", "{device}");

    // Without a name (or with null), the name stays.
    for body in [json!({}), json!({ "display_name": null })] {
        let (status, answer) = alice.put(&device_path("PHONE"), body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (_, device) = alice.get(&device_path("PHONE")).await;
    assert_eq!(device["display_name"], "Work phone", "{device}");
}

#[actix_web::test]
async fn unknown_devices_and_other_users_devices_are_not_found() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    cluster.client().register("bob").await;
    let bob = login_on(&cluster, "bob", "BOBS", "Bob's").await;

    for device_id in ["NOPE", "BOBS"] {
        let (status, body) = alice.get(&device_path(device_id)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
        let (status, body) = alice
            .put(&device_path(device_id), json!({ "display_name": "mine" }))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
    }
    let (_, device) = bob.get(&device_path("BOBS")).await;
    assert_eq!(device["display_name"], "Bob's", "{device}");
    assert!(!device_ids(&alice).await.contains(&"BOBS".to_owned()));
}

#[actix_web::test]
async fn a_bad_display_name_is_refused() {
    let cluster = TestCluster::start().await;
    let alice = login_after_register(&cluster, "alice", "PHONE").await;
    let path = device_path("PHONE");

    let (status, body) = alice
        .put(&path, json!({ "display_name": "x".repeat(101) }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE", "{body}");
    for bad in [
        json!({ "display_name": 7 }),
        json!({ "display_name": ["a"] }),
        json!({ "display_name": { "text": "a" } }),
    ] {
        let (status, body) = alice.put(&path, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{bad}: {body}");
    }
    let (status, body) = alice
        .put(&path, json!({ "display_name": "nul\u{0}" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    let (_, device) = alice.get(&path).await;
    assert_eq!(device["display_name"], "Device", "{device}");

    // 100 characters (not bytes) are allowed.
    let name = "é".repeat(100);
    let (status, body) = alice.put(&path, json!({ "display_name": name })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, device) = alice.get(&path).await;
    assert_eq!(device["display_name"], name.as_str(), "{device}");
}

/// Registers `localpart` and logs the registration's device out, then logs
/// in on `device_id` (named "Device"): the user's one device.
async fn login_after_register(cluster: &TestCluster, localpart: &str, device_id: &str) -> User {
    let registered = cluster.client().register(localpart).await;
    let (status, body) = registered
        .post("/_matrix/client/v3/logout", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    login_on(cluster, localpart, device_id, "Device").await
}

#[actix_web::test]
async fn deleting_a_device_needs_the_password() {
    let cluster = TestCluster::start().await;
    let laptop = login_after_register(&cluster, "alice", "LAPTOP").await;
    let phone = login_on(&cluster, "alice", "PHONE", "Phone").await;

    // Without auth: the flows and a session.
    for body in [None, Some(json!({}))] {
        let (status, challenge) = delete_device(&laptop, "PHONE", body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
        assert_password_challenge(&challenge);
        assert!(challenge.get("errcode").is_none() || challenge["errcode"] == "M_UNAUTHORIZED");
    }
    let (_, challenge) = delete_device(&laptop, "PHONE", None).await;
    let session = assert_password_challenge(&challenge);

    // A wrong password: 401 again, with M_FORBIDDEN, and nothing deleted.
    let (status, body) = delete_device(
        &laptop,
        "PHONE",
        Some(json!({ "auth": password_auth(&session, "alice", "wrong password") })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(assert_password_challenge(&body), session);
    assert!(signed_in(&phone).await);
    assert_eq!(device_ids(&laptop).await, ["LAPTOP", "PHONE"]);

    // The right password, in the same session: the device and its token go.
    let (status, body) = delete_device(
        &laptop,
        "PHONE",
        Some(json!({ "auth": password_auth(&session, "@alice:lattice.test", PASSWORD) })),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert!(!signed_in(&phone).await);
    assert_eq!(device_ids(&laptop).await, ["LAPTOP"]);
    let (status, body) = laptop.get(&device_path("PHONE")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // The session authorised that one request.
    let (status, body) = delete_device(
        &laptop,
        "LAPTOP",
        Some(json!({ "auth": password_auth(&session, "alice", PASSWORD) })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN", "{body}");
    assert!(signed_in(&laptop).await);

    // Auth without a session starts one and completes it at once; a device
    // may delete itself.
    let (status, body) = delete_device(
        &laptop,
        "LAPTOP",
        Some(json!({ "auth": {
            "type": "m.login.password",
            "user": "alice",
            "password": PASSWORD,
        } })),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert!(!signed_in(&laptop).await);
}

#[actix_web::test]
async fn a_session_is_bound_to_its_user_and_its_request() {
    let cluster = TestCluster::start().await;
    let alice = login_after_register(&cluster, "alice", "LAPTOP").await;
    let bob = login_after_register(&cluster, "bob", "BOBS").await;
    let (_, challenge) = delete_device(&alice, "LAPTOP", None).await;
    let session = assert_password_challenge(&challenge);

    // Bob cannot use Alice's session, even with his own password.
    let (status, body) = delete_device(
        &bob,
        "BOBS",
        Some(json!({ "auth": password_auth(&session, "bob", PASSWORD) })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert!(signed_in(&bob).await);

    // Nor can Alice use it for another request.
    for (method, path, body) in [
        (
            Method::DELETE,
            device_path("OTHER"),
            json!({ "auth": password_auth(&session, "alice", PASSWORD) }),
        ),
        (
            Method::POST,
            DELETE_DEVICES.to_owned(),
            json!({ "devices": ["LAPTOP"], "auth": password_auth(&session, "alice", PASSWORD) }),
        ),
    ] {
        let (status, answer) = alice
            .client
            .request(
                method,
                &path,
                Some(&alice.access_token),
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
        assert_eq!(answer["errcode"], "M_FORBIDDEN", "{answer}");
    }
    assert!(signed_in(&alice).await);

    // Nor registration (its sessions are of another kind).
    let (status, body) = cluster
        .client()
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({
                "username": "carol",
                "password": PASSWORD,
                "auth": { "type": "m.login.dummy", "session": session },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN", "{body}");

    // The session still works for what it was started for.
    let (status, body) = delete_device(
        &alice,
        "LAPTOP",
        Some(json!({ "auth": password_auth(&session, "alice", PASSWORD) })),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert!(!signed_in(&alice).await);
}

#[actix_web::test]
async fn an_identifier_naming_someone_else_is_refused() {
    let cluster = TestCluster::start().await;
    let alice = login_after_register(&cluster, "alice", "LAPTOP").await;
    let phone = login_on(&cluster, "alice", "PHONE", "Phone").await;
    cluster.client().register("bob").await;
    let (_, challenge) = delete_device(&alice, "PHONE", None).await;
    let session = assert_password_challenge(&challenge);

    // Bob's own (right) password does not authorise Alice's request.
    for user in ["bob", "@bob:lattice.test", "@alice:elsewhere.test"] {
        let (status, body) = delete_device(
            &alice,
            "PHONE",
            Some(json!({ "auth": password_auth(&session, user, PASSWORD) })),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{user}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{user}: {body}");
        assert_password_challenge(&body);
    }
    assert!(signed_in(&phone).await);
    assert_eq!(device_ids(&alice).await, ["LAPTOP", "PHONE"]);
}

#[actix_web::test]
async fn bad_auth_gets_the_spec_errors_and_deletes_nothing() {
    let cluster = TestCluster::start().await;
    let alice = login_after_register(&cluster, "alice", "LAPTOP").await;
    let phone = login_on(&cluster, "alice", "PHONE", "Phone").await;
    let (_, challenge) = delete_device(&alice, "PHONE", None).await;
    let session = assert_password_challenge(&challenge);
    let cases = [
        (
            json!({ "type": "m.login.password", "session": "nosuchsession",
                    "identifier": { "type": "m.id.user", "user": "alice" }, "password": PASSWORD }),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            json!({ "type": "m.login.token", "session": session, "token": "x" }),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            json!({ "type": "m.login.password", "session": session,
                    "identifier": { "type": "m.id.user", "user": "alice" } }),
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
        ),
        (
            json!({ "type": "m.login.password", "session": session, "password": PASSWORD }),
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
        ),
        (
            json!({ "type": "m.login.password", "session": session, "password": PASSWORD,
                    "identifier": { "type": "m.id.thirdparty", "medium": "email", "address": "a@b.c" } }),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            json!({ "type": "m.login.password", "session": session, "password": 12 }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            json!("not an object"),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
    ];
    for (auth, status, errcode) in cases {
        let (answered, body) = delete_device(&alice, "PHONE", Some(json!({ "auth": auth }))).await;
        assert_eq!(answered, status, "{auth}: {body}");
        assert_eq!(body["errcode"], errcode, "{auth}: {body}");
    }
    // Auth with a session but no stage: the flows again.
    let (status, body) = delete_device(
        &alice,
        "PHONE",
        Some(json!({ "auth": { "session": session } })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(assert_password_challenge(&body), session);
    assert!(signed_in(&phone).await);

    // Without an access token, the request is refused before any auth
    // (the spec's schema for this 401 is the UIA one: not checked here).
    let (status, _, bytes) = alice
        .client
        .request_bytes(
            Method::DELETE,
            &device_path("PHONE"),
            None,
            Some(
                json!({ "auth": password_auth(&session, "alice", PASSWORD) })
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN", "{body}");
    assert!(signed_in(&phone).await);
}

#[actix_web::test]
async fn delete_devices_removes_the_listed_devices_with_the_password() {
    let cluster = TestCluster::start().await;
    let laptop = login_after_register(&cluster, "alice", "LAPTOP").await;
    let phone = login_on(&cluster, "alice", "PHONE", "Phone").await;
    let tablet = login_on(&cluster, "alice", "TABLET", "Tablet").await;
    let bob = login_after_register(&cluster, "bob", "BOBS").await;
    let body = json!({ "devices": ["PHONE", "TABLET", "NOPE", "BOBS"] });

    let (status, challenge) = laptop.post(DELETE_DEVICES, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let session = assert_password_challenge(&challenge);
    assert_eq!(device_ids(&laptop).await, ["LAPTOP", "PHONE", "TABLET"]);

    let mut authed = body.clone();
    authed["auth"] = password_auth(&session, "alice", PASSWORD);
    let (status, answer) = laptop.post(DELETE_DEVICES, authed).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    assert_eq!(device_ids(&laptop).await, ["LAPTOP"]);
    assert!(signed_in(&laptop).await);
    assert!(!signed_in(&phone).await);
    assert!(!signed_in(&tablet).await);
    // Bob's device is his: listing it changed nothing.
    assert!(signed_in(&bob).await);
    assert_eq!(device_ids(&bob).await, ["BOBS"]);

    for bad in [
        json!({}),
        json!({ "devices": "PHONE" }),
        json!({ "devices": [1] }),
    ] {
        let (status, answer) = laptop.post(DELETE_DEVICES, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        assert_eq!(answer["errcode"], "M_BAD_JSON", "{bad}: {answer}");
    }
}

#[actix_web::test]
async fn deleting_another_users_device_changes_nothing() {
    let cluster = TestCluster::start().await;
    let alice = login_after_register(&cluster, "alice", "LAPTOP").await;
    let bob = login_after_register(&cluster, "bob", "BOBS").await;
    let (_, challenge) = delete_device(&alice, "BOBS", None).await;
    let session = assert_password_challenge(&challenge);
    // As Synapse answers (and the spec, which has no 404 here): the device
    // is not Alice's, so she has none by that id left to delete.
    let (status, body) = delete_device(
        &alice,
        "BOBS",
        Some(json!({ "auth": password_auth(&session, "alice", PASSWORD) })),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert!(signed_in(&bob).await);
    assert_eq!(device_ids(&bob).await, ["BOBS"]);
    assert_eq!(device_ids(&alice).await, ["LAPTOP"]);
}

#[actix_web::test]
async fn a_wrong_password_counts_as_a_failed_login() {
    let cluster = TestCluster::start_with(Options {
        rate_limit: Some((1000.0, 1000)),
        ..Options::default()
    })
    .await;
    let alice = login_after_register(&cluster, "alice", "LAPTOP").await;
    let (_, challenge) = delete_device(&alice, "LAPTOP", None).await;
    let session = assert_password_challenge(&challenge);
    // `rate_limits.login_failed_attempts` defaults to a burst of 3.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, body) = delete_device(
            &alice,
            "LAPTOP",
            Some(json!({ "auth": password_auth(&session, "alice", "wrong") })),
        )
        .await;
        statuses.push((status, body["errcode"].clone()));
    }
    assert_eq!(
        statuses,
        [
            (StatusCode::UNAUTHORIZED, json!("M_FORBIDDEN")),
            (StatusCode::UNAUTHORIZED, json!("M_FORBIDDEN")),
            (StatusCode::UNAUTHORIZED, json!("M_FORBIDDEN")),
            (StatusCode::TOO_MANY_REQUESTS, json!("M_LIMIT_EXCEEDED")),
        ]
    );
    assert!(signed_in(&alice).await);
}

#[actix_web::test]
async fn logging_out_removes_the_device() {
    let cluster = TestCluster::start().await;
    let laptop = login_after_register(&cluster, "alice", "LAPTOP").await;
    let phone = login_on(&cluster, "alice", "PHONE", "Phone").await;
    let (status, body) = phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!signed_in(&phone).await);
    assert_eq!(device_ids(&laptop).await, ["LAPTOP"]);

    let tablet = login_on(&cluster, "alice", "TABLET", "Tablet").await;
    let (status, body) = tablet
        .post("/_matrix/client/v3/logout/all", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!signed_in(&tablet).await);
    assert!(!signed_in(&laptop).await);
    let again = login_on(&cluster, "alice", "AGAIN", "Again").await;
    assert_eq!(device_ids(&again).await, ["AGAIN"]);
}

#[actix_web::test]
async fn logging_in_with_an_existing_device_id_reuses_the_device() {
    let cluster = TestCluster::start().await;
    let first = login_after_register(&cluster, "alice", "PHONE").await;
    let (status, body) = first
        .put(&device_path("PHONE"), json!({ "display_name": "Renamed" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Logging in again on PHONE, without a name: the device and its name
    // stay, its old token is replaced.
    let (status, body) = cluster
        .client()
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD,
                "device_id": "PHONE",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], "PHONE");
    let second = User {
        user_id: first.user_id.clone(),
        access_token: body["access_token"].as_str().expect("token").to_owned(),
        device_id: "PHONE".to_owned(),
        client: first.client.clone(),
    };
    assert!(!signed_in(&first).await);
    assert!(signed_in(&second).await);
    let (status, devices) = second.get(DEVICES).await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    let phones: Vec<&Value> = devices["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| d["device_id"] == "PHONE")
        .collect();
    assert_eq!(phones.len(), 1, "{devices}");
    assert_eq!(phones[0]["display_name"], "Renamed", "{devices}");
}

#[actix_web::test]
async fn last_use_reaches_the_database_in_batches() {
    let cluster = TestCluster::start().await;
    let alice = login_after_register(&cluster, "alice", "PHONE").await;
    let (status, body) = alice.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Written by the instance within a few seconds, not on the request.
    let database = cluster.database().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = database
            .query_one(
                "SELECT last_seen_ip, last_seen_ts FROM devices WHERE device_id = 'PHONE'",
                &[],
            )
            .await
            .expect("the device's row");
        let ip: Option<String> = row.get(0);
        let ts: Option<i64> = row.get(1);
        if ip.as_deref() == Some("127.0.0.1") {
            assert!(ts.is_some());
            break;
        }
        assert!(Instant::now() < deadline, "last_seen_ip never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the database holds is what GET /devices shows.
    let (_, device) = alice.get(&device_path("PHONE")).await;
    assert_eq!(device["last_seen_ip"], "127.0.0.1", "{device}");
}

#[actix_web::test]
async fn old_sessions_are_deleted() {
    let cluster = TestCluster::start().await;
    let alice = login_after_register(&cluster, "alice", "LAPTOP").await;
    let (_, challenge) = delete_device(&alice, "LAPTOP", None).await;
    let old = assert_password_challenge(&challenge);
    let (_, challenge) = delete_device(&alice, "LAPTOP", None).await;
    let fresh = assert_password_challenge(&challenge);
    let database = cluster.database().await;
    database
        .execute(
            "UPDATE uia_sessions SET created_ts = 0 WHERE session_id = $1",
            &[&old],
        )
        .await
        .expect("age the session");
    // What the background instance's hourly clean-up runs.
    let before =
        lattice::util::now_ms() - lattice::api::client::uiaa::SESSION_LIFETIME.as_millis() as i64;
    let deleted = cluster
        .on_node("main", |node| async move {
            lattice::storage::accounts::delete_uia_sessions_older_than(&node.pool, before).await
        })
        .await
        .expect("deleted");
    assert_eq!(deleted, 1);
    let (status, body) = delete_device(
        &alice,
        "LAPTOP",
        Some(json!({ "auth": password_auth(&old, "alice", PASSWORD) })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN", "{body}");
    assert!(signed_in(&alice).await);
    let (status, body) = delete_device(
        &alice,
        "LAPTOP",
        Some(json!({ "auth": password_auth(&fresh, "alice", PASSWORD) })),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
}

#[actix_web::test]
async fn a_deleted_device_leaves_the_device_lists_of_those_who_share_a_room() {
    let cluster = TestCluster::start().await;
    let laptop = login_after_register(&cluster, "alice", "LAPTOP").await;
    let phone = login_on(&cluster, "alice", "PHONE", "Phone").await;
    crate::keys::upload_device_keys(&phone).await;
    let bob = cluster.client().register("bob").await;
    let room_id = laptop.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let devices_of_alice = |query: &Value| -> Vec<String> {
        let mut ids: Vec<String> = query["device_keys"][&laptop.user_id]
            .as_object()
            .map(|devices| devices.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    assert_eq!(
        devices_of_alice(&crate::keys::query(&bob, &[&laptop]).await),
        ["PHONE"]
    );
    let since = bob.sync("timeout=0").await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    let (_, challenge) = delete_device(&laptop, "PHONE", None).await;
    let session = assert_password_challenge(&challenge);
    let (status, body) = delete_device(
        &laptop,
        "PHONE",
        Some(json!({ "auth": password_auth(&session, "alice", PASSWORD) })),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));

    // Bob is told alice's devices changed, and her deleted device's keys
    // are gone from what he can query.
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(
        sync["device_lists"]["changed"],
        json!([laptop.user_id]),
        "{sync}"
    );
    assert!(
        devices_of_alice(&crate::keys::query(&bob, &[&laptop]).await).is_empty(),
        "the deleted device's keys are still served"
    );
}
