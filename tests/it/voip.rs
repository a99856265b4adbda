//! VoIP: `GET /voip/turnServer` from the TURN settings.

use awc::http::StatusCode;
use base64::Engine;
use serde_json::json;

use crate::cluster::{Options, TestCluster};

const TURN_SERVER: &str = "/_matrix/client/v3/voip/turnServer";

#[actix_web::test]
async fn without_turn_the_answer_is_empty() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    // Not the spec's schema (which requires the four fields) but Synapse's
    // answer: `spec::is_known_deviation` says why.
    let (status, body) = alice.get(TURN_SERVER).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({}));
    let (status, body) = cluster.client().get(TURN_SERVER, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[actix_web::test]
async fn a_shared_secret_gives_time_limited_credentials() {
    let uris = json!(["turn:turn.example.org:3478?transport=udp"]);
    let cluster = TestCluster::start_with(Options {
        settings: vec![
            ("turn_uris", uris.clone()),
            ("turn_shared_secret", json!("s3cret")),
            ("turn_user_lifetime", json!("10m")),
        ],
        ..Options::default()
    })
    .await;
    let alice = cluster.client().register("alice").await;
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (status, body) = alice.get(TURN_SERVER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["uris"], uris);
    assert_eq!(body["ttl"], 600);
    let username = body["username"].as_str().expect("a username");
    let (expiry, user_id) = username.split_once(':').expect("expiry:user");
    assert_eq!(user_id, alice.user_id);
    let expiry: u64 = expiry.parse().expect("unix seconds");
    assert!(
        (now_secs + 590..=now_secs + 610).contains(&expiry),
        "{expiry} is about ten minutes after {now_secs}"
    );
    // What a TURN server with the same secret checks.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"s3cret");
    let expected = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, username.as_bytes()).as_ref());
    assert_eq!(body["password"], expected);
}

#[actix_web::test]
async fn fixed_credentials_are_given_as_they_are() {
    let cluster = TestCluster::start_with(Options {
        settings: vec![
            ("turn_uris", json!(["turns:turn.example.org"])),
            ("turn_username", json!("calls")),
            ("turn_password", json!("hunter2")),
        ],
        ..Options::default()
    })
    .await;
    let alice = cluster.client().register("alice").await;
    let (status, body) = alice.get(TURN_SERVER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "username": "calls",
            "password": "hunter2",
            "ttl": 3600,
            "uris": ["turns:turn.example.org"],
        })
    );
}
