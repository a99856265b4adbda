//! Profiles: display name and avatar, and their propagation to the member
//! events of the rooms the user is in.

use awc::http::StatusCode;
use serde_json::json;

use crate::cluster::{enc, TestCluster};

fn profile(user_id: &str) -> String {
    format!("/_matrix/client/v3/profile/{}", enc(user_id))
}

#[actix_web::test]
async fn set_and_read_profile_fields() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let base = profile(&alice.user_id);

    let (status, body) = client.get(&base, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({ "displayname": "alice" }),
        "a new user is named after their localpart"
    );
    let (status, body) = client.get(&format!("{base}/avatar_url"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    let (status, body) = alice
        .put(
            &format!("{base}/displayname"),
            json!({ "displayname": "Alice" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let (status, body) = alice
        .put(
            &format!("{base}/avatar_url"),
            json!({ "avatar_url": "mxc://lattice.test/abc" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = client.get(&base, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "displayname": "Alice", "avatar_url": "mxc://lattice.test/abc" })
    );
    let (status, body) = client.get(&format!("{base}/displayname"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "displayname": "Alice" }));
    let (status, body) = client.get(&format!("{base}/avatar_url"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "avatar_url": "mxc://lattice.test/abc" }));

    // null clears a field.
    let (status, _) = alice
        .put(
            &format!("{base}/displayname"),
            json!({ "displayname": null }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = client.get(&base, None).await;
    assert_eq!(body, json!({ "avatar_url": "mxc://lattice.test/abc" }));
}

#[actix_web::test]
async fn profile_errors() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;

    let (status, body) = client.get(&profile("@nobody:lattice.test"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    let (status, body) = bob
        .put(
            &format!("{}/displayname", profile(&alice.user_id)),
            json!({ "displayname": "Mallory" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = alice
        .put(
            &format!("{}/displayname", profile(&alice.user_id)),
            json!({ "displayname": 42 }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let (status, body) = alice
        .put(
            &format!("{}/displayname", profile(&alice.user_id)),
            json!({ "displayname": "x".repeat(300) }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, _) = alice
        .put(
            &format!("{}/displayname", profile(&alice.user_id)),
            json!({ "displayname": "Alice" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = client.get(&profile(&alice.user_id), None).await;
    assert_eq!(
        body["displayname"], "Alice",
        "a refused change changes nothing"
    );
}

#[actix_web::test]
async fn a_new_display_name_reaches_the_member_events() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;

    let (status, _) = alice
        .put(
            &format!("{}/displayname", profile(&alice.user_id)),
            json!({ "displayname": "Alice Liddell" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, member) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room_id),
            enc(&alice.user_id)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["membership"], "join");
    assert_eq!(member["displayname"], "Alice Liddell");

    let (status, body) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room_id)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["joined"][&alice.user_id]["display_name"],
        "Alice Liddell"
    );

    // Someone joining after the change carries the name from the start.
    let carol = client.register("carol").await;
    let (status, _) = carol
        .put(
            &format!("{}/displayname", profile(&carol.user_id)),
            json!({ "displayname": "Carol" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    carol.join(&room_id).await;
    let (_, body) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room_id)
        ))
        .await;
    assert_eq!(body["joined"][&carol.user_id]["display_name"], "Carol");
}
