//! The user directory: `POST /user_directory/search` finds the users who
//! share a room with the searcher or are in a public or world-readable
//! room, by words of their display name or user id, without case or
//! accents; kept current as profiles and memberships change.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

const SEARCH: &str = "/_matrix/client/v3/user_directory/search";

async fn search(user: &User, body: Value) -> Value {
    let (status, response) = user.post(SEARCH, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "search {body}: {response}");
    response
}

/// The user ids of a search's results, in order.
async fn found(user: &User, term: &str) -> Vec<String> {
    ids(&search(user, json!({ "search_term": term })).await)
}

fn ids(response: &Value) -> Vec<String> {
    response["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results in {response}"))
        .iter()
        .map(|result| result["user_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn set_name(user: &User, name: &str) {
    let (status, body) = user
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&user.user_id)
            ),
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn put_state(user: &User, room_id: &str, kind: &str, content: Value) {
    let (status, body) = user
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room_id)),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kind}: {body}");
}

#[actix_web::test]
async fn a_search_finds_who_shares_a_room_or_is_in_a_public_one() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let dave = client.register("dave").await;
    let erin = client.register("erin").await;
    for (user, name) in [
        (&bob, "Zed Bob"),
        (&carol, "Zed Carol"),
        (&dave, "Zed Dave"),
        (&erin, "Zed Erin"),
    ] {
        set_name(user, name).await;
    }
    // bob shares a private room with alice.
    let shared = alice.create_room(json!({ "preset": "private_chat" })).await;
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&shared)),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    bob.join(&shared).await;
    // carol is in a public room alice is not in.
    carol.create_room(json!({ "preset": "public_chat" })).await;
    // dave is alone in a private room: nobody else sees him.
    dave.create_room(json!({ "preset": "private_chat" })).await;
    // erin's private room has world-readable history.
    let readable = erin.create_room(json!({ "preset": "private_chat" })).await;
    put_state(
        &erin,
        &readable,
        "m.room.history_visibility",
        json!({ "history_visibility": "world_readable" }),
    )
    .await;

    let response = search(&alice, json!({ "search_term": "zed" })).await;
    let mut seen = ids(&response);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            bob.user_id.clone(),
            carol.user_id.clone(),
            erin.user_id.clone()
        ],
        "{response}"
    );
    assert_eq!(response["limited"], false);
    let bob_result = response["results"]
        .as_array()
        .and_then(|results| {
            results
                .iter()
                .find(|r| r["user_id"] == bob.user_id.as_str())
        })
        .cloned();
    assert_eq!(
        bob_result,
        Some(json!({ "user_id": bob.user_id, "display_name": "Zed Bob" }))
    );
    // dave sees those in public rooms, and not bob.
    let mut dave_sees = found(&dave, "zed").await;
    dave_sees.sort();
    assert_eq!(
        dave_sees,
        vec![
            carol.user_id.clone(),
            dave.user_id.clone(),
            erin.user_id.clone()
        ]
    );

    // Memberships change: once bob leaves, alice no longer finds him.
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&shared)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!found(&alice, "zed bob").await.contains(&bob.user_id));
    // A room that turns public makes its members visible.
    put_state(
        &dave,
        &only_room(&dave).await,
        "m.room.join_rules",
        json!({ "join_rule": "public" }),
    )
    .await;
    assert_eq!(found(&alice, "zed dave").await, vec![dave.user_id.clone()]);
}

/// The one room `user` is joined to.
async fn only_room(user: &User) -> String {
    let (status, body) = user.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["joined_rooms"][0]
        .as_str()
        .unwrap_or_else(|| panic!("a joined room in {body}"))
        .to_owned()
}

#[actix_web::test]
async fn names_and_ids_match_by_word_prefix_without_case_or_accents() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let zoe = client.register("zoe_smith").await;
    set_name(&zoe, "Zoë Ångström").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    zoe.join(&room_id).await;

    for term in [
        "zoe",
        "ZOË",
        "ang",
        "Ångström",
        "zoe angs",
        "ANGSTROM z",
        "zoe_sm",
        "@zoe_smith",
    ] {
        assert_eq!(
            found(&alice, term).await,
            vec![zoe.user_id.clone()],
            "{term}"
        );
    }
    // Every word must match, each as the start of one of the user's words.
    for term in ["ngstrom", "zoe jones", "smithy"] {
        assert!(found(&alice, term).await.is_empty(), "{term}");
    }
    // The full user id finds the user too.
    assert_eq!(found(&alice, &zoe.user_id).await, vec![zoe.user_id.clone()]);
    // Nothing to search for: no results.
    let empty = search(&alice, json!({ "search_term": " -- " })).await;
    assert_eq!(empty, json!({ "results": [], "limited": false }));
}

#[actix_web::test]
async fn a_new_display_name_is_found_and_the_old_one_is_not() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    set_name(&bob, "Robert Tables").await;
    assert_eq!(found(&alice, "robert").await, vec![bob.user_id.clone()]);

    set_name(&bob, "Bobby Drop").await;
    let response = search(&alice, json!({ "search_term": "bobby" })).await;
    assert_eq!(
        response,
        json!({ "results": [{ "user_id": bob.user_id, "display_name": "Bobby Drop" }], "limited": false })
    );
    assert!(found(&alice, "robert").await.is_empty());
    assert!(found(&alice, "tables").await.is_empty());
}

#[actix_web::test]
async fn limit_cuts_the_results_and_limited_says_so() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    for name in ["team1", "team2", "team3"] {
        client.register(name).await.join(&room_id).await;
    }
    let two = search(&alice, json!({ "search_term": "team", "limit": 2 })).await;
    assert_eq!(
        (ids(&two).len(), &two["limited"]),
        (2, &json!(true)),
        "{two}"
    );
    let three = search(&alice, json!({ "search_term": "team", "limit": 3 })).await;
    assert_eq!(
        (ids(&three).len(), &three["limited"]),
        (3, &json!(false)),
        "{three}"
    );
    let default = search(&alice, json!({ "search_term": "team" })).await;
    assert_eq!(
        (ids(&default).len(), &default["limited"]),
        (3, &json!(false)),
        "{default}"
    );
    let none = search(&alice, json!({ "search_term": "team", "limit": 0 })).await;
    assert_eq!(none, json!({ "results": [], "limited": true }));
}

#[actix_web::test]
async fn a_bad_search_request_is_400() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let cases: [(&[u8], &str); 6] = [
        (b"{not json", "M_NOT_JSON"),
        (b"[]", "M_BAD_JSON"),
        (b"{}", "M_BAD_JSON"),
        (br#"{"search_term": 5}"#, "M_BAD_JSON"),
        (br#"{"search_term": "a", "limit": "ten"}"#, "M_BAD_JSON"),
        (br#"{"search_term": "a", "limit": -1}"#, "M_INVALID_PARAM"),
    ];
    for (body, errcode) in cases {
        let (status, response) = client
            .raw(
                Method::POST,
                SEARCH,
                Some(&alice.access_token),
                body.to_vec(),
            )
            .await;
        assert_eq!(
            (status, response["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some(errcode)),
            "{}: {response}",
            String::from_utf8_lossy(body)
        );
    }
    let (status, _) = client
        .post(SEARCH, None, json!({ "search_term": "a" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
