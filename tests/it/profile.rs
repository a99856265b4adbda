//! Profiles: display name and avatar, and their propagation to the member
//! events of the rooms the user is in; the extended fields (`m.tz`, custom
//! keys) of v1.16.

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

#[actix_web::test]
async fn extended_fields_are_set_read_and_deleted() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let base = profile(&alice.user_id);

    let (status, body) = alice
        .put(&format!("{base}/m.tz"), json!({ "m.tz": "Europe/London" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pronouns = json!({ "en": ["they", "them"], "public": true });
    let (status, body) = alice
        .put(
            &format!("{base}/org.example.pronouns"),
            json!({ "org.example.pronouns": pronouns }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = client.get(&format!("{base}/m.tz"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "m.tz": "Europe/London" }));
    let (_, body) = client.get(&base, None).await;
    assert_eq!(
        body,
        json!({
            "displayname": "alice",
            "m.tz": "Europe/London",
            "org.example.pronouns": pronouns,
        })
    );

    let (status, body) = alice.delete(&format!("{base}/m.tz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = client.get(&format!("{base}/m.tz"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    // Deleting what is not there is no error.
    let (status, body) = alice.delete(&format!("{base}/m.tz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Deleting the display name clears it.
    let (status, body) = alice.delete(&format!("{base}/displayname")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = client.get(&base, None).await;
    assert_eq!(body, json!({ "org.example.pronouns": pronouns }));
}

#[actix_web::test]
async fn extended_field_errors() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let base = profile(&alice.user_id);

    let key = |k: &str| format!("{base}/{}", enc(k));
    let cases = [
        (
            key("nonamespace"),
            json!({ "nonamespace": 1 }),
            "M_INVALID_PARAM",
        ),
        (
            key("Org.Example"),
            json!({ "Org.Example": 1 }),
            "M_INVALID_PARAM",
        ),
        (
            key(&format!("org.{}", "a".repeat(300))),
            json!({}),
            "M_KEY_TOO_LARGE",
        ),
        (
            key("org.example.x"),
            json!({ "other": 1 }),
            "M_MISSING_PARAM",
        ),
        (key("m.tz"), json!({ "m.tz": 5 }), "M_BAD_JSON"),
        (
            key("org.example.big"),
            json!({ "org.example.big": "x".repeat(70 * 1024) }),
            "M_PROFILE_TOO_LARGE",
        ),
    ];
    for (path, body, errcode) in cases {
        let (status, answer) = alice.put(&path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_eq!(answer["errcode"], errcode, "{path}: {answer}");
    }
    // Many fields that fit one by one, but not all together.
    let chunk = "y".repeat(30 * 1024);
    for (index, expected) in [
        (1, StatusCode::OK),
        (2, StatusCode::OK),
        (3, StatusCode::BAD_REQUEST),
    ] {
        let name = format!("org.example.part{index}");
        let (status, answer) = alice.put(&key(&name), json!({ name.clone(): chunk })).await;
        assert_eq!(status, expected, "{name}: {answer}");
    }
    let (status, answer) = bob
        .put(&key("m.tz"), json!({ "m.tz": "Europe/Paris" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, answer) = bob.delete(&key("org.example.part1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, answer) = client.get(&key("org.example.part1"), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "unchanged by the refusals: {answer}"
    );
}
