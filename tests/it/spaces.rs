//! Spaces: `GET /rooms/{roomId}/hierarchy` walks `m.space.child` state
//! depth first, in the spec's order, showing only the rooms the requester
//! could join or peek into; `suggested_only`, `max_depth`, `limit` and
//! `from` shape the walk.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

async fn hierarchy(user: &User, space: &str, query: &str) -> (StatusCode, Value) {
    user.get(&format!(
        "/_matrix/client/v1/rooms/{}/hierarchy?{query}",
        enc(space)
    ))
    .await
}

fn room_ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|room| room["room_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn add_child(user: &User, space: &str, child: &str, content: Value) {
    let (status, body) = user
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(space),
                enc(child)
            ),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn space(user: &User, preset: &str, name: &str) -> String {
    user.create_room(json!({
        "preset": preset,
        "name": name,
        "creation_content": { "type": "m.space" },
    }))
    .await
}

#[actix_web::test]
async fn the_hierarchy_shows_what_the_requester_may_join_or_peek() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let top = space(&alice, "public_chat", "Top").await;
    let sub = space(&alice, "public_chat", "Sub").await;
    let open = alice
        .create_room(json!({ "preset": "public_chat", "name": "Open" }))
        .await;
    let deep = alice
        .create_room(json!({ "preset": "public_chat", "name": "Deep" }))
        .await;
    let private = alice
        .create_room(json!({ "preset": "private_chat", "name": "Private" }))
        .await;
    let members_only = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": top }],
                },
            }],
        }))
        .await;
    let via = json!(["lattice.test"]);
    add_child(
        &alice,
        &top,
        &open,
        json!({ "via": via, "order": "a", "suggested": true }),
    )
    .await;
    add_child(&alice, &top, &sub, json!({ "via": via, "order": "b" })).await;
    add_child(
        &alice,
        &top,
        &members_only,
        json!({ "via": via, "order": "c" }),
    )
    .await;
    add_child(&alice, &top, &private, json!({ "via": via })).await;
    // Not children: no `via`, or removed (empty content).
    add_child(&alice, &top, "!gone:lattice.test", json!({})).await;
    add_child(&alice, &top, "!novia:lattice.test", json!({ "via": [] })).await;
    add_child(&alice, &sub, &deep, json!({ "via": via })).await;

    // Bob is in no room: he sees the public ones, depth first, in order.
    let (status, body) = hierarchy(&bob, &top, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        room_ids(&body),
        vec![top.clone(), open.clone(), sub.clone(), deep.clone()]
    );
    assert!(body.get("next_batch").is_none(), "{body}");
    let first = &body["rooms"][0];
    assert_eq!(first["name"], "Top");
    assert_eq!(first["room_type"], "m.space");
    assert_eq!(first["join_rule"], "public");
    assert_eq!(first["num_joined_members"], 1);
    let children: Vec<&str> = first["children_state"]
        .as_array()
        .expect("children_state")
        .iter()
        .map(|c| c["state_key"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        children,
        vec![
            open.as_str(),
            sub.as_str(),
            members_only.as_str(),
            private.as_str()
        ]
    );
    let child = &first["children_state"][0];
    assert_eq!(child["type"], "m.space.child");
    assert_eq!(child["sender"], alice.user_id.as_str());
    assert!(child["origin_server_ts"].is_i64(), "{child}");
    assert_eq!(body["rooms"][1]["children_state"], json!([]));

    // Once in the space, the restricted room it allows is his to join.
    bob.join(&top).await;
    let (_, body) = hierarchy(&bob, &top, "").await;
    assert_eq!(
        room_ids(&body),
        vec![
            top.clone(),
            open.clone(),
            sub.clone(),
            deep.clone(),
            members_only.clone()
        ]
    );
    let allowed = &body["rooms"][4];
    assert_eq!(allowed["allowed_room_ids"], json!([top]));
    // Alice sees every room.
    let (_, body) = hierarchy(&alice, &top, "").await;
    assert_eq!(room_ids(&body).last(), Some(&private));

    let (_, body) = hierarchy(&bob, &top, "suggested_only=true").await;
    assert_eq!(room_ids(&body), vec![top.clone(), open.clone()]);
    let (_, body) = hierarchy(&bob, &top, "max_depth=1").await;
    assert_eq!(
        room_ids(&body),
        vec![top.clone(), open.clone(), sub.clone(), members_only.clone()]
    );
    let (_, body) = hierarchy(&bob, &top, "max_depth=0").await;
    assert_eq!(room_ids(&body), vec![top.clone()]);

    // Pages of two, the last without next_batch.
    let (status, page) = hierarchy(&bob, &top, "limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(room_ids(&page), vec![top.clone(), open.clone()]);
    let token = page["next_batch"].as_str().expect("next_batch").to_owned();
    let (_, page) = hierarchy(&bob, &top, &format!("limit=2&from={}", enc(&token))).await;
    assert_eq!(room_ids(&page), vec![sub.clone(), deep.clone()]);
    let token = page["next_batch"].as_str().expect("next_batch").to_owned();
    let (_, page) = hierarchy(&bob, &top, &format!("limit=2&from={}", enc(&token))).await;
    assert_eq!(room_ids(&page), vec![members_only.clone()]);
    assert!(page.get("next_batch").is_none(), "{page}");

    // A token belongs to its request; junk is no token.
    let (status, body) = hierarchy(
        &bob,
        &top,
        &format!("limit=2&suggested_only=true&from={}", enc(&token)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, body) = hierarchy(&bob, &top, "from=junk").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, body) = hierarchy(&bob, &top, "limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    // A space Carol can neither join nor peek into.
    let hidden = space(&alice, "private_chat", "Hidden").await;
    let (status, body) = hierarchy(&carol, &hidden, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = hierarchy(&carol, "!nowhere:lattice.test", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}
