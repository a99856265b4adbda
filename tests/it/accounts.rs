//! Accounts: registration with the `m.login.dummy` flow, login, whoami,
//! logout, and what a request without a valid access token gets.

use awc::http::StatusCode;
use serde_json::json;

use crate::cluster::{Options, TestCluster, PASSWORD};

const REGISTER: &str = "/_matrix/client/v3/register";
const LOGIN: &str = "/_matrix/client/v3/login";
const WHOAMI: &str = "/_matrix/client/v3/account/whoami";

#[actix_web::test]
async fn register_runs_the_dummy_flow_then_logs_in() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let (status, challenge) = client
        .post(
            REGISTER,
            None,
            json!({ "username": "alice", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(
        challenge["flows"],
        json!([{ "stages": ["m.login.dummy"] }]),
        "{challenge}"
    );
    let session = challenge["session"].as_str().expect("a session");
    assert!(!session.is_empty());
    assert!(challenge["params"].is_object(), "{challenge}");

    let (status, body) = client
        .post(
            REGISTER,
            None,
            json!({
                "username": "alice",
                "password": PASSWORD,
                "device_id": "PHONE",
                "initial_device_display_name": "Alice's phone",
                "auth": { "type": "m.login.dummy", "session": session },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@alice:lattice.test");
    assert_eq!(body["device_id"], "PHONE");
    assert_eq!(body["home_server"], "lattice.test");
    let token = body["access_token"].as_str().expect("an access token");

    let (status, whoami) = client.get(WHOAMI, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{whoami}");
    assert_eq!(
        whoami,
        json!({ "user_id": "@alice:lattice.test", "device_id": "PHONE", "is_guest": false })
    );
}

#[actix_web::test]
async fn register_without_a_session_completes_the_dummy_stage_at_once() {
    let cluster = TestCluster::start().await;
    let (status, body) = cluster
        .client()
        .post(
            REGISTER,
            None,
            json!({ "username": "alice", "password": PASSWORD, "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@alice:lattice.test");
}

#[actix_web::test]
async fn register_with_an_unknown_session_is_refused() {
    let cluster = TestCluster::start().await;
    let (status, body) = cluster
        .client()
        .post(
            REGISTER,
            None,
            json!({
                "username": "alice",
                "password": PASSWORD,
                "auth": { "type": "m.login.dummy", "session": "no-such-session" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
}

#[actix_web::test]
async fn register_with_inhibit_login_creates_no_device() {
    let cluster = TestCluster::start().await;
    let (status, body) = cluster
        .client()
        .post(
            REGISTER,
            None,
            json!({
                "username": "alice",
                "password": PASSWORD,
                "inhibit_login": true,
                "auth": { "type": "m.login.dummy" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@alice:lattice.test");
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(body.get("device_id").is_none(), "{body}");
    // The account exists: the password logs in.
    cluster.client().login("alice").await;
}

#[actix_web::test]
async fn register_refuses_a_taken_username() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    for username in ["alice", "@alice:lattice.test"] {
        let (status, body) = client
            .post(
                REGISTER,
                None,
                json!({ "username": username, "password": PASSWORD, "auth": { "type": "m.login.dummy" } }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{username}: {body}");
        assert_eq!(body["errcode"], "M_USER_IN_USE", "{username}");
    }
}

#[actix_web::test]
async fn register_refuses_invalid_usernames() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let too_long = "a".repeat(300);
    for username in [
        "Alice",
        "bob smith",
        "émile",
        "12345",
        "",
        too_long.as_str(),
    ] {
        let (status, body) = client
            .post(
                REGISTER,
                None,
                json!({ "username": username, "password": PASSWORD, "auth": { "type": "m.login.dummy" } }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{username:?}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_USERNAME", "{username:?}");
    }
}

#[actix_web::test]
async fn register_without_a_username_picks_one() {
    let cluster = TestCluster::start().await;
    let (status, body) = cluster
        .client()
        .post(
            REGISTER,
            None,
            json!({ "password": PASSWORD, "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user_id = body["user_id"].as_str().expect("a user id");
    assert!(
        user_id.starts_with('@') && user_id.ends_with(":lattice.test"),
        "{user_id}"
    );
}

#[actix_web::test]
async fn register_available_answers_for_free_taken_and_invalid_names() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    let available = "/_matrix/client/v3/register/available?username=";
    let (status, body) = client.get(&format!("{available}bob"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "available": true }));

    let (status, body) = client.get(&format!("{available}alice"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_USER_IN_USE");

    let (status, body) = client.get(&format!("{available}Not%20Valid"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_USERNAME");

    let (status, body) = client
        .get("/_matrix/client/v3/register/available", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[actix_web::test]
async fn guest_registration_is_forbidden() {
    let cluster = TestCluster::start().await;
    let (status, body) = cluster
        .client()
        .post(&format!("{REGISTER}?kind=guest"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_GUEST_ACCESS_FORBIDDEN");
}

#[actix_web::test]
async fn registration_can_be_closed() {
    let cluster = TestCluster::start_with(Options {
        enable_registration: false,
        ..Options::default()
    })
    .await;
    let (status, body) = cluster
        .client()
        .post(
            REGISTER,
            None,
            json!({ "username": "alice", "password": PASSWORD, "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[actix_web::test]
async fn login_flows_offer_passwords() {
    let cluster = TestCluster::start().await;
    let (status, body) = cluster.client().get(LOGIN, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let flows = body["flows"].as_array().expect("flows");
    assert!(
        flows.iter().any(|f| f["type"] == "m.login.password"),
        "{body}"
    );
}

#[actix_web::test]
async fn login_with_an_identifier_or_the_legacy_user_field() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;

    let (status, body) = client
        .post(
            LOGIN,
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "@alice:lattice.test" },
                "password": PASSWORD,
                "device_id": "LAPTOP",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
    assert_eq!(body["device_id"], "LAPTOP");
    assert_eq!(body["home_server"], "lattice.test");
    assert_eq!(
        body["well_known"]["m.homeserver"]["base_url"],
        format!("{}/", client.base_url())
    );
    assert_ne!(body["access_token"], alice.access_token.as_str());
    let laptop_token = body["access_token"].as_str().expect("a token").to_owned();

    // Logging in again on the same device replaces its token.
    let (status, again) = client
        .post(
            LOGIN,
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD,
                "device_id": "LAPTOP",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["device_id"], "LAPTOP");
    let (status, body) = client.get(WHOAMI, Some(&laptop_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, _) = client.get(WHOAMI, again["access_token"].as_str()).await;
    assert_eq!(status, StatusCode::OK);

    for user in ["alice", "@alice:lattice.test"] {
        let (status, body) = client
            .post(
                LOGIN,
                None,
                json!({ "type": "m.login.password", "user": user, "password": PASSWORD }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{user}: {body}");
        assert_eq!(body["user_id"], alice.user_id);
        let token = body["access_token"].as_str().expect("a token");
        let (status, whoami) = client.get(WHOAMI, Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(whoami["device_id"], body["device_id"]);
    }
}

#[actix_web::test]
async fn login_refuses_wrong_passwords_and_unknown_users_alike() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    for (user, password) in [("alice", "wrong"), ("nobody", PASSWORD)] {
        let (status, body) = client
            .post(
                LOGIN,
                None,
                json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": user },
                    "password": password,
                }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{user}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
}

#[actix_web::test]
async fn login_refuses_unknown_types_and_bad_shapes() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    let (status, body) = client
        .post(
            LOGIN,
            None,
            json!({ "type": "m.login.magic", "user": "alice", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");

    let (status, body) = client
        .post(
            LOGIN,
            None,
            json!({ "user": "alice", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let (status, body) = client
        .post(
            LOGIN,
            None,
            json!({ "type": "m.login.password", "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
}

#[actix_web::test]
async fn whoami_needs_a_valid_token() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let (status, body) = alice.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], alice.user_id);
    assert_eq!(body["device_id"], alice.device_id);
    assert_eq!(body["is_guest"], false);

    let (status, body) = client.get(WHOAMI, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");

    let (status, body) = client.get(WHOAMI, Some("not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");

    // The deprecated query parameter still works.
    let (status, body) = client
        .get(
            &format!("{WHOAMI}?access_token={}", alice.access_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
}

#[actix_web::test]
async fn logout_ends_only_its_own_session() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let phone = client.register("alice").await;
    let laptop = client.login("alice").await;

    let (status, body) = phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));

    let (status, body) = phone.get(WHOAMI).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, _) = laptop.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn logout_all_ends_every_session() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let phone = client.register("alice").await;
    let laptop = client.login("alice").await;
    let bob = client.register("bob").await;

    let (status, body) = laptop
        .post("/_matrix/client/v3/logout/all", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for session in [&phone, &laptop] {
        let (status, body) = session.get(WHOAMI).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    }
    let (status, _) = bob.get(WHOAMI).await;
    assert_eq!(status, StatusCode::OK, "other users keep their sessions");
    // The password still works.
    client.login("alice").await;
}

#[actix_web::test]
async fn a_logged_out_token_is_refused_by_every_node() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    // Every node has seen (and may have cached) the token.
    for node in cluster.node_clients() {
        let (status, body) = node
            .get(
                "/_matrix/client/v3/sync?timeout=0",
                Some(&alice.access_token),
            )
            .await;
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "{status} {body}"
        );
    }
    let (status, _) = alice.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    for node in cluster.node_clients() {
        let mut refused = false;
        // Replication is asynchronous: give it a moment, never forever.
        for _ in 0..50 {
            let (status, body) = node
                .get(
                    "/_matrix/client/v3/account/whoami",
                    Some(&alice.access_token),
                )
                .await;
            let (sync_status, _) = node
                .get(
                    "/_matrix/client/v3/sync?timeout=0",
                    Some(&alice.access_token),
                )
                .await;
            if (status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND)
                && (sync_status == StatusCode::UNAUTHORIZED || sync_status == StatusCode::NOT_FOUND)
            {
                assert!(
                    status == StatusCode::NOT_FOUND || body["errcode"] == "M_UNKNOWN_TOKEN",
                    "{body}"
                );
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            refused,
            "node {} still accepts the logged-out token",
            node.base_url()
        );
    }
}

fn password_login(user: &str, password: &str) -> serde_json::Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    })
}

#[actix_web::test]
async fn failed_logins_close_the_account_for_a_while_even_to_the_right_password() {
    // Rate limits on, but too generous for the per-address limit to matter:
    // the per-account failed-login limit is Synapse's default (burst 3).
    let cluster = TestCluster::start_with(Options {
        rate_limit: Some((1000.0, 1000)),
        ..Options::default()
    })
    .await;
    let client = cluster.client();
    client.register("alice").await;
    client.register("bob").await;
    for attempt in 1..=3 {
        let (status, body) = client
            .post(LOGIN, None, password_login("alice", "wrong"))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "attempt {attempt}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    // The id is canonicalised: another spelling is the same account.
    let (status, body) = client
        .post(LOGIN, None, password_login("@Alice:lattice.test", PASSWORD))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    let retry_after_ms = body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(
        (1..=6000).contains(&retry_after_ms),
        "one failure refills in about 5.9 s: {body}"
    );
    // Other accounts are not affected.
    let (status, body) = client
        .post(LOGIN, None, password_login("bob", PASSWORD))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn unknown_users_and_wrong_passwords_get_the_same_answer() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    let wrong_password = client
        .post(LOGIN, None, password_login("alice", "wrong"))
        .await;
    let unknown_user = client
        .post(LOGIN, None, password_login("nobody", "wrong"))
        .await;
    assert_eq!(
        wrong_password.0,
        StatusCode::FORBIDDEN,
        "{}",
        wrong_password.1
    );
    assert_eq!(wrong_password, unknown_user);
}
