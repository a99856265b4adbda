//! The room directory: aliases, room visibility and the public room list.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster};

fn alias_path(alias: &str) -> String {
    format!("/_matrix/client/v3/directory/room/{}", enc(alias))
}

fn visibility_path(room_id: &str) -> String {
    format!("/_matrix/client/v3/directory/list/room/{}", enc(room_id))
}

fn room_ids(body: &Value) -> Vec<String> {
    body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|r| r["room_id"].as_str().expect("room_id").to_owned())
        .collect()
}

#[actix_web::test]
async fn put_get_and_delete_an_alias() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let alias = "#rabbit-hole:lattice.test";

    let (status, body) = alice
        .put(&alias_path(alias), json!({ "room_id": room_id }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));

    let (status, body) = client.get(&alias_path(alias), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({ "room_id": room_id, "servers": ["lattice.test"] })
    );

    let (status, body) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/aliases",
            enc(&room_id)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["aliases"], json!([alias]));

    let (status, body) = alice
        .put(&alias_path(alias), json!({ "room_id": room_id }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, body) = alice.delete(&alias_path(alias)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let (status, body) = client.get(&alias_path(alias), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = alice.delete(&alias_path(alias)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

#[actix_web::test]
async fn alias_permissions_and_errors() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let alias = "#mine:lattice.test";
    let (status, _) = alice
        .put(&alias_path(alias), json!({ "room_id": room_id }))
        .await;
    assert_eq!(status, StatusCode::OK);

    bob.join(&room_id).await;
    let (status, body) = bob.delete(&alias_path(alias)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, _) = client.get(&alias_path(alias), None).await;
    assert_eq!(status, StatusCode::OK, "still there");

    let private = alice.create_room(json!({})).await;
    let (status, body) = bob
        .put(
            &alias_path("#sneaky:lattice.test"),
            json!({ "room_id": private }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not a member: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = alice
        .put(
            &alias_path("#ghost:lattice.test"),
            json!({ "room_id": "!nowhere:lattice.test" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    for bad in ["#elsewhere:example.org", "no-hash:lattice.test", "#nocolon"] {
        let (status, body) = alice
            .put(&alias_path(bad), json!({ "room_id": room_id }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{bad}");
    }
    let (status, body) = alice.put(&alias_path("#x:lattice.test"), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let (status, body) = client.get(&alias_path("not-an-alias"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    let carol = client.register("carol").await;
    let (status, body) = carol
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/aliases",
            enc(&room_id)
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[actix_web::test]
async fn room_visibility_in_the_directory() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;

    let (status, body) = client.get(&visibility_path(&room_id), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "visibility": "private" }));

    let (status, body) = alice
        .put(
            &visibility_path(&room_id),
            json!({ "visibility": "public" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let (_, body) = client.get(&visibility_path(&room_id), None).await;
    assert_eq!(body, json!({ "visibility": "public" }));
    let (_, list) = client.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(room_ids(&list), vec![room_id.clone()]);

    let (status, body) = bob
        .put(
            &visibility_path(&room_id),
            json!({ "visibility": "private" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not a member: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = alice
        .put(
            &visibility_path(&room_id),
            json!({ "visibility": "secret" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    let (status, _) = alice
        .put(
            &visibility_path(&room_id),
            json!({ "visibility": "private" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = client.get("/_matrix/client/v3/publicRooms", None).await;
    assert!(room_ids(&list).is_empty(), "{list}");

    let (status, body) = client
        .get(&visibility_path("!nowhere:lattice.test"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = alice
        .put(
            &visibility_path("!nowhere:lattice.test"),
            json!({ "visibility": "public" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[actix_web::test]
async fn public_rooms_paginate_with_limit_and_since() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(
            alice
                .create_room(json!({ "visibility": "public", "name": format!("Room {n}") }))
                .await,
        );
    }
    alice.create_room(json!({ "name": "Unlisted" })).await;

    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    for page_number in 0.. {
        assert!(page_number < 10, "pagination does not end");
        let mut path = "/_matrix/client/v3/publicRooms?limit=2".to_owned();
        if let Some(since) = &since {
            path.push_str(&format!("&since={}", enc(since)));
        }
        let (status, body) = client.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total_room_count_estimate"], 5, "{body}");
        let ids = room_ids(&body);
        assert!(ids.len() <= 2, "{body}");
        if page_number > 0 {
            assert!(body["prev_batch"].is_string(), "{body}");
        }
        seen.extend(ids);
        match body.get("next_batch").and_then(Value::as_str) {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected = created.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected, "every public room once");

    for query in ["limit=many", "since=bogus"] {
        let (status, body) = client
            .get(&format!("/_matrix/client/v3/publicRooms?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{query}");
    }
}

#[actix_web::test]
async fn public_rooms_search() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let cats = alice
        .create_room(
            json!({ "visibility": "public", "name": "Cheshire Cats", "room_alias_name": "cats" }),
        )
        .await;
    let hatters = alice
        .create_room(json!({ "visibility": "public", "name": "Hatters", "topic": "tea and cats" }))
        .await;
    let queens = alice
        .create_room(json!({ "visibility": "public", "name": "Queens" }))
        .await;

    let search = |term: &str| json!({ "filter": { "generic_search_term": term } });
    let (status, body) = alice
        .post("/_matrix/client/v3/publicRooms", search("CATS"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut found = room_ids(&body);
    found.sort();
    let mut expected = vec![cats.clone(), hatters.clone()];
    expected.sort();
    assert_eq!(found, expected, "name and topic match, case-insensitively");
    let entry = body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .find(|r| r["room_id"] == cats.as_str())
        .expect("cats")
        .clone();
    assert_eq!(entry["canonical_alias"], "#cats:lattice.test");

    let (_, body) = alice
        .post("/_matrix/client/v3/publicRooms", search("queen"))
        .await;
    assert_eq!(room_ids(&body), vec![queens.clone()]);
    let (_, body) = alice
        .post("/_matrix/client/v3/publicRooms", search("#cats:"))
        .await;
    assert_eq!(room_ids(&body), vec![cats.clone()], "aliases match too");
    let (_, body) = alice
        .post("/_matrix/client/v3/publicRooms", search("dodo"))
        .await;
    assert!(room_ids(&body).is_empty());

    let (status, body) = alice
        .post("/_matrix/client/v3/publicRooms", json!({ "limit": 1 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(room_ids(&body).len(), 1);
    assert!(body["next_batch"].is_string(), "{body}");

    let (status, body) = client
        .post("/_matrix/client/v3/publicRooms", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");

    let (status, body) = alice
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({ "filter": { "generic_search_term": 5 } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");
}
