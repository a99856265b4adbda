//! Account management: changing the password and deactivating the account
//! (both behind the password, through user-interactive auth), the
//! third-party id endpoints of a server without email or identity server,
//! login tokens from an existing session, and application service login.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, Options, TestCluster, User, PASSWORD};

const PASSWORD_PATH: &str = "/_matrix/client/v3/account/password";
const DEACTIVATE: &str = "/_matrix/client/v3/account/deactivate";
const LOGIN: &str = "/_matrix/client/v3/login";
const WHOAMI: &str = "/_matrix/client/v3/account/whoami";
const GET_TOKEN: &str = "/_matrix/client/v1/login/get_token";
const NEW_PASSWORD: &str = "a much better passphrase";

fn password_auth(session: &str, user: &str, password: &str) -> Value {
    json!({
        "type": "m.login.password",
        "session": session,
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    })
}

/// Asserts the `401` of the password flow; its session.
fn assert_password_challenge(body: &Value) -> String {
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.password"] }]),
        "{body}"
    );
    body["session"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("no session in {body}"))
        .to_owned()
}

async fn password_login(cluster: &TestCluster, user: &str, password: &str) -> (StatusCode, Value) {
    cluster
        .client()
        .post(
            LOGIN,
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": password,
            }),
        )
        .await
}

/// Runs `path` with `body` through the password flow as `user`: the first
/// request's session, then `password` in it. The final answer.
async fn with_password(
    user: &User,
    path: &str,
    body: Value,
    password: &str,
) -> (StatusCode, Value) {
    let (status, challenge) = user.post(path, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["errcode"], "M_UNAUTHORIZED", "{challenge}");
    let session = assert_password_challenge(&challenge);
    let mut body = body;
    body["auth"] = password_auth(&session, &user.user_id, password);
    user.post(path, body).await
}

#[actix_web::test]
async fn a_wrong_password_changes_nothing() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let (status, body) = with_password(
        &alice,
        PASSWORD_PATH,
        json!({ "new_password": NEW_PASSWORD }),
        "not the password",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert_password_challenge(&body);
    let (status, body) = password_login(&cluster, "alice", NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = password_login(&cluster, "alice", PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the old password still works: {body}"
    );
    let (status, body) = alice.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn a_new_password_signs_out_the_other_devices() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let laptop = client.login("alice").await;

    // An unusable new password is refused before the password stage.
    let (status, body) = alice
        .post(PASSWORD_PATH, json!({ "new_password": "" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");

    let (status, body) = with_password(
        &alice,
        PASSWORD_PATH,
        json!({ "new_password": NEW_PASSWORD }),
        PASSWORD,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));

    // This device stays; the laptop is signed out and gone.
    let (status, body) = alice.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = laptop.get(WHOAMI).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{body}");
    let (_, devices) = alice.get("/_matrix/client/v3/devices").await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    assert_eq!(ids, vec![alice.device_id.as_str()], "{devices}");

    let (status, body) = password_login(&cluster, "alice", PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the old password: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = password_login(&cluster, "alice", NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "the new password: {body}");
}

#[actix_web::test]
async fn logout_devices_false_keeps_the_other_devices() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let laptop = client.login("alice").await;
    let (status, body) = with_password(
        &alice,
        PASSWORD_PATH,
        json!({ "new_password": NEW_PASSWORD, "logout_devices": false }),
        PASSWORD,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = laptop.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = password_login(&cluster, "alice", NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn deactivation_leaves_the_rooms_erases_the_profile_and_locks_the_account() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let joined = bob.create_room(json!({ "preset": "public_chat" })).await;
    alice.join(&joined).await;
    let invited = bob.create_room(json!({ "invite": [alice.user_id] })).await;
    let profile = format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id));
    let (status, body) = alice
        .put(
            &format!("{profile}/displayname"),
            json!({ "displayname": "Alice A." }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice
        .put(
            &format!("{profile}/m.tz"),
            json!({ "m.tz": "Europe/Paris" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A wrong password: nothing happens.
    let (status, body) = with_password(&alice, DEACTIVATE, json!({ "erase": true }), "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert_eq!(
        bob.state_content(&joined, "m.room.member", &alice.user_id)
            .await["membership"],
        "join"
    );
    let (status, _) = alice.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) =
        with_password(&alice, DEACTIVATE, json!({ "erase": true }), PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "id_server_unbind_result": "no-support" }));

    // Real leave events, seen by the others in the room.
    for room in [&joined, &invited] {
        let member = bob
            .state_content(room, "m.room.member", &alice.user_id)
            .await;
        assert_eq!(member["membership"], "leave", "{room}: {member}");
        assert!(member.get("displayname").is_none(), "{member}");
    }
    let (_, members) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&joined)
        ))
        .await;
    assert!(members["joined"].get(&alice.user_id).is_none(), "{members}");

    // The profile is gone, the tokens are revoked, and no login works.
    let (status, body) = client.get(&profile, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}), "an erased profile");
    let (status, body) = alice.get(WHOAMI).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, body) = password_login(&cluster, "alice", PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_USER_DEACTIVATED", "{body}");
    let erased: bool = cluster
        .database()
        .await
        .query_one(
            "SELECT erased FROM users WHERE user_id = $1",
            &[&alice.user_id],
        )
        .await
        .expect("the user row")
        .get(0);
    assert!(erased, "erase: true marks the account erased");
    // The user name stays taken.
    let (status, body) = client
        .get("/_matrix/client/v3/register/available?username=alice", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_USER_IN_USE");
}

#[actix_web::test]
async fn third_party_ids_are_answered_as_by_a_server_without_email() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v3/account/3pid").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "threepids": [] }));

    let email = json!({ "client_secret": "secret", "email": "a@example.org", "send_attempt": 1 });
    let msisdn = json!({
        "client_secret": "secret", "country": "GB", "phone_number": "07700900001", "send_attempt": 1,
    });
    let threepid = json!({ "medium": "email", "address": "a@example.org" });
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/_matrix/client/v3/account/3pid/email/requestToken",
            email.clone(),
            StatusCode::BAD_REQUEST,
            "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        ),
        (
            "/_matrix/client/v3/account/3pid/msisdn/requestToken",
            msisdn.clone(),
            StatusCode::BAD_REQUEST,
            "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        ),
        (
            "/_matrix/client/v3/account/3pid/msisdn/requestToken",
            json!({ "client_secret": "secret" }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "/_matrix/client/v3/account/password/email/requestToken",
            email.clone(),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            "/_matrix/client/v3/account/password/msisdn/requestToken",
            msisdn.clone(),
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
        ),
        (
            "/_matrix/client/v3/register/email/requestToken",
            email,
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            "/_matrix/client/v3/register/msisdn/requestToken",
            msisdn,
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            "/_matrix/client/v3/account/3pid",
            json!({ "three_pid_creds": { "client_secret": "secret", "sid": "1" } }),
            StatusCode::BAD_REQUEST,
            "M_THREEPID_AUTH_FAILED",
        ),
        (
            "/_matrix/client/v3/account/3pid",
            json!({}),
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
        ),
        (
            "/_matrix/client/v3/account/3pid/bind",
            json!({
                "client_secret": "secret", "sid": "1",
                "id_server": "id.example.org", "id_access_token": "t",
            }),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            "/_matrix/client/v3/account/3pid/delete",
            json!({ "medium": "carrier-pigeon", "address": "a" }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
    ];
    for (path, body, expected_status, errcode) in cases {
        let (status, answer) = alice.post(path, body).await;
        assert_eq!(status, expected_status, "{path}: {answer}");
        assert_eq!(answer["errcode"], errcode, "{path}: {answer}");
    }
    for path in [
        "/_matrix/client/v3/account/3pid/unbind",
        "/_matrix/client/v3/account/3pid/delete",
    ] {
        let (status, answer) = alice.post(path, threepid.clone()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        assert_eq!(answer, json!({ "id_server_unbind_result": "no-support" }));
    }

    // Adding needs the password first, then finds no validated session.
    let (status, body) = with_password(
        &alice,
        "/_matrix/client/v3/account/3pid/add",
        json!({ "client_secret": "secret", "sid": "1" }),
        PASSWORD,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_THREEPID_AUTH_FAILED", "{body}");
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/account/3pid/add",
            json!({ "client_secret": "not secret!", "sid": "1" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
}

fn login_token_options() -> Options {
    Options {
        settings: vec![("login_via_existing_session.enabled", json!(true))],
        ..Options::default()
    }
}

async fn token_login(cluster: &TestCluster, token: &str) -> (StatusCode, Value) {
    cluster
        .client()
        .post(
            LOGIN,
            None,
            json!({ "type": "m.login.token", "token": token }),
        )
        .await
}

#[actix_web::test]
async fn a_login_token_from_a_session_signs_in_once() {
    let cluster = TestCluster::start_with(login_token_options()).await;
    let client = cluster.client();
    let (status, flows) = client.get(LOGIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        flows["flows"],
        json!([
            { "type": "m.login.password" },
            { "type": "m.login.token", "get_login_token": true },
        ])
    );
    let alice = client.register("alice").await;
    let (_, capabilities) = alice.get("/_matrix/client/v3/capabilities").await;
    assert_eq!(
        capabilities["capabilities"]["m.get_login_token"]["enabled"], true,
        "{capabilities}"
    );

    // The password first (require_ui_auth is on by default).
    let (status, body) = with_password(&alice, GET_TOKEN, json!({}), PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in_ms"], 300_000, "{body}");
    let token = body["login_token"].as_str().expect("a login token");

    let (status, body) = token_login(&cluster, token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
    assert_ne!(body["device_id"], alice.device_id.as_str(), "a new device");
    let new_token = body["access_token"].as_str().expect("an access token");
    let (status, whoami) = client.get(WHOAMI, Some(new_token)).await;
    assert_eq!(status, StatusCode::OK, "{whoami}");
    assert_eq!(whoami["user_id"], alice.user_id);

    let (status, body) = token_login(&cluster, token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a second use: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = token_login(&cluster, "made-up").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = client
        .post(LOGIN, None, json!({ "type": "m.login.token" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
}

#[actix_web::test]
async fn login_tokens_are_off_by_default() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let (_, flows) = client.get(LOGIN, None).await;
    assert_eq!(flows["flows"], json!([{ "type": "m.login.password" }]));
    let alice = client.register("alice").await;
    let (status, body) = alice.post(GET_TOKEN, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    let (status, body) = token_login(&cluster, "anything").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    let (_, capabilities) = alice.get("/_matrix/client/v3/capabilities").await;
    assert_eq!(
        capabilities["capabilities"]["m.get_login_token"]["enabled"], false,
        "{capabilities}"
    );
}

#[actix_web::test]
async fn application_service_login_needs_an_application_service() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let body = json!({
        "type": "m.login.application_service",
        "identifier": { "type": "m.id.user", "user": "alice" },
    });
    let (status, answer) = client.post(LOGIN, None, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["errcode"], "M_MISSING_TOKEN");
    // A user's token is no application service's.
    let (status, answer) = alice.post(LOGIN, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["errcode"], "M_UNKNOWN_TOKEN");
}
