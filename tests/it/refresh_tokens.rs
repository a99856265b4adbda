//! Refresh tokens: clients that ask for one get an access token that
//! expires and a refresh token that swaps for a new pair once; a refresh
//! token used again after its successor was used ends the session. Clients
//! that do not ask keep tokens that never expire.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{Options, TestCluster, PASSWORD};

const LOGIN: &str = "/_matrix/client/v3/login";
const REFRESH: &str = "/_matrix/client/v3/refresh";
const WHOAMI: &str = "/_matrix/client/v3/account/whoami";

fn login_body(refresh_token: bool) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "alice" },
        "password": PASSWORD,
        "refresh_token": refresh_token,
    })
}

fn field(body: &Value, name: &str) -> String {
    body[name]
        .as_str()
        .unwrap_or_else(|| panic!("`{name}` missing from {body}"))
        .to_owned()
}

#[actix_web::test]
async fn only_clients_that_ask_get_a_refresh_token() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    let (status, body) = client.post(LOGIN, None, login_body(false)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body.get("expires_in_ms").is_none(), "{body}");

    let (status, body) = client.post(LOGIN, None, login_body(true)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["expires_in_ms"], 300_000,
        "the default 5 minutes: {body}"
    );
    field(&body, "refresh_token");
    let (status, whoami) = client
        .get(WHOAMI, Some(&field(&body, "access_token")))
        .await;
    assert_eq!(status, StatusCode::OK, "{whoami}");

    // Registration too.
    let (status, challenge) = client
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "bob", "password": PASSWORD, "refresh_token": true }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let (status, body) = client
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({
                "username": "bob", "password": PASSWORD, "refresh_token": true,
                "auth": { "type": "m.login.dummy", "session": field(&challenge, "session") },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in_ms"], 300_000, "{body}");
    field(&body, "refresh_token");
}

#[actix_web::test]
async fn a_refresh_swaps_the_pair_and_a_reused_token_ends_the_session() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    let (_, login) = client.post(LOGIN, None, login_body(true)).await;
    let first_access = field(&login, "access_token");
    let first_refresh = field(&login, "refresh_token");
    let device_id = field(&login, "device_id");

    let (status, refreshed) = client
        .post(REFRESH, None, json!({ "refresh_token": first_refresh }))
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(refreshed["expires_in_ms"], 300_000, "{refreshed}");
    let second_access = field(&refreshed, "access_token");
    let second_refresh = field(&refreshed, "refresh_token");
    assert_ne!(second_access, first_access);
    assert_ne!(second_refresh, first_refresh);

    // The old access token ends at once; the new one is the same device.
    let (status, body) = client.get(WHOAMI, Some(&first_access)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, whoami) = client.get(WHOAMI, Some(&second_access)).await;
    assert_eq!(status, StatusCode::OK, "{whoami}");
    assert_eq!(whoami["device_id"], device_id.as_str());

    // The new pair was used: the first refresh token is spent, and using it
    // again ends the session (its device and every token of it).
    let (status, body) = client
        .post(REFRESH, None, json!({ "refresh_token": first_refresh }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{body}");
    let (status, body) = client.get(WHOAMI, Some(&second_access)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked: {body}");
    let (status, body) = client
        .post(REFRESH, None, json!({ "refresh_token": second_refresh }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked: {body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let alice = client.login("alice").await;
    let (_, devices) = alice.get("/_matrix/client/v3/devices").await;
    assert!(
        !devices.to_string().contains(&device_id),
        "the session's device is gone: {devices}"
    );
}

#[actix_web::test]
async fn a_refresh_token_stays_good_until_its_successor_is_used() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    let (_, login) = client.post(LOGIN, None, login_body(true)).await;
    let first_refresh = field(&login, "refresh_token");

    // A client that lost the answer asks again: the unused pair is replaced.
    let (status, lost) = client
        .post(REFRESH, None, json!({ "refresh_token": first_refresh }))
        .await;
    assert_eq!(status, StatusCode::OK, "{lost}");
    let (status, again) = client
        .post(REFRESH, None, json!({ "refresh_token": first_refresh }))
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let (status, body) = client
        .get(WHOAMI, Some(&field(&lost, "access_token")))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the replaced pair: {body}"
    );
    let (status, body) = client
        .post(
            REFRESH,
            None,
            json!({ "refresh_token": field(&lost, "refresh_token") }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // Chained: the newest refresh token swaps again.
    let (status, body) = client
        .get(WHOAMI, Some(&field(&again, "access_token")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, third) = client
        .post(
            REFRESH,
            None,
            json!({ "refresh_token": field(&again, "refresh_token") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let (status, body) = client
        .get(WHOAMI, Some(&field(&third, "access_token")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for bad in [json!({ "refresh_token": "made-up" }), json!({})] {
        let (status, body) = client.post(REFRESH, None, bad.clone()).await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
            "{bad}: {status} {body}"
        );
        assert!(
            body["errcode"] == "M_UNKNOWN_TOKEN" || body["errcode"] == "M_BAD_JSON",
            "{bad}: {body}"
        );
    }
}

#[actix_web::test]
async fn an_expired_access_token_is_a_soft_logout() {
    // Tokens that expire as soon as they are made: no waiting needed.
    let cluster = TestCluster::start_with(Options {
        settings: vec![("refreshable_access_token_lifetime", json!(0))],
        ..Options::default()
    })
    .await;
    let client = cluster.client();
    client.register("alice").await;
    let (status, login) = client.post(LOGIN, None, login_body(true)).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert_eq!(login["expires_in_ms"], 0, "{login}");
    let (status, body) = client
        .get(WHOAMI, Some(&field(&login, "access_token")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{body}");
    assert_eq!(body["soft_logout"], true, "{body}");

    // The refresh token still swaps (for a pair as short-lived).
    let (status, refreshed) = client
        .post(
            REFRESH,
            None,
            json!({ "refresh_token": field(&login, "refresh_token") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");

    // A client without refresh tokens is not affected.
    let alice = client.login("alice").await;
    let (status, body) = alice.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
