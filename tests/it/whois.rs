//! `GET /admin/whois/{userId}`: each of a user's devices with the addresses
//! it used and the user agent last seen from each; for the user themself
//! and for server admins. What it shows is noted on every authenticated
//! request and written in batches (`device_connections`, migration 0029).

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User, PASSWORD};

fn whois_path(user_id: &str) -> String {
    format!("/_matrix/client/v3/admin/whois/{}", enc(user_id))
}

/// `user` signed in again on a device of its own, whose requests carry
/// `user_agent`.
async fn sign_in_with(user: &User, device_id: &str, user_agent: &str) -> User {
    let client = user.client.with_user_agent(user_agent);
    let (status, body) = client
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user.user_id },
                "password": PASSWORD,
                "device_id": device_id,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    User {
        user_id: user.user_id.clone(),
        access_token: body["access_token"].as_str().expect("a token").to_owned(),
        device_id: device_id.to_owned(),
        client,
    }
}

/// The connections whois shows for one device.
fn connections<'a>(whois: &'a Value, device_id: &str) -> &'a Vec<Value> {
    let sessions = whois["devices"][device_id]["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("sessions of {device_id} in {whois}"));
    assert_eq!(sessions.len(), 1, "{whois}");
    sessions[0]["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("connections of {device_id} in {whois}"))
}

#[actix_web::test]
async fn whois_shows_each_device_with_its_address_and_user_agent() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let phone = sign_in_with(&alice, "PHONE", "Element Android/1.6.10").await;
    let (status, body) = phone.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Alice may ask about herself, from any of her devices.
    let (status, whois) = alice.get(&whois_path(&alice.user_id)).await;
    assert_eq!(status, StatusCode::OK, "{whois}");
    assert_eq!(whois["user_id"], alice.user_id);
    let devices = whois["devices"].as_object().expect("devices");
    assert_eq!(devices.len(), 2, "{whois}");
    let seen = connections(&whois, "PHONE");
    assert_eq!(seen.len(), 1, "{whois}");
    assert_eq!(seen[0]["ip"], "127.0.0.1", "{whois}");
    assert_eq!(seen[0]["user_agent"], "Element Android/1.6.10", "{whois}");
    assert!(
        seen[0]["last_seen"].as_i64().is_some_and(|ts| ts > 0),
        "{whois}"
    );
    assert_eq!(connections(&whois, &alice.device_id).len(), 1, "{whois}");

    // A new user agent from the same address replaces the old one.
    let updated = User {
        client: phone.client.with_user_agent("Element Android/1.7.0"),
        ..phone.clone()
    };
    updated.get("/_matrix/client/v3/account/whoami").await;
    let (_, whois) = alice.get(&whois_path(&alice.user_id)).await;
    let seen = connections(&whois, "PHONE");
    assert_eq!(seen.len(), 1, "{whois}");
    assert_eq!(seen[0]["user_agent"], "Element Android/1.7.0", "{whois}");
}

#[actix_web::test]
async fn only_admins_may_ask_about_someone_else() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let root = client.register("root").await;
    cluster.make_admin(&root.user_id).await;
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;

    let (status, body) = bob.get(&whois_path(&alice.user_id)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // Whether the user exists or not.
    let (status, body) = bob.get(&whois_path("@nobody:lattice.test")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, whois) = root.get(&whois_path(&alice.user_id)).await;
    assert_eq!(status, StatusCode::OK, "{whois}");
    assert_eq!(whois["user_id"], alice.user_id);
    assert!(whois["devices"][&alice.device_id].is_object(), "{whois}");

    let (status, body) = root.get(&whois_path("@nobody:lattice.test")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = root.get(&whois_path("@alice:elsewhere.test")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, body) = root.get(&whois_path("alice")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
}

#[actix_web::test]
async fn connections_are_written_in_batches_and_go_with_their_device() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let phone = sign_in_with(&alice, "PHONE", "nheko/0.12").await;
    let (status, body) = phone.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Written by the instance within a few seconds, not on the request.
    let database = cluster.database().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = database
            .query(
                "SELECT ip, user_agent FROM device_connections WHERE device_id = 'PHONE'",
                &[],
            )
            .await
            .expect("device_connections");
        if let Some(row) = rows.first() {
            assert_eq!(row.get::<_, String>(0), "127.0.0.1");
            assert_eq!(
                row.get::<_, Option<String>>(1).as_deref(),
                Some("nheko/0.12")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connection was never written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let left: i64 = database
        .query_one(
            "SELECT COUNT(*) FROM device_connections WHERE device_id = 'PHONE'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
    let (_, whois) = alice.get(&whois_path(&alice.user_id)).await;
    assert!(whois["devices"].get("PHONE").is_none(), "{whois}");
}
