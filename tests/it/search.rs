//! `POST /search`: full-text search of the rooms a user is joined to, by
//! rank and by recency, a page at a time, with context, state and groups,
//! and only what the room's history rules let the user see.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

const SEARCH: &str = "/_matrix/client/v3/search";

async fn search(user: &User, criteria: Value) -> Value {
    search_page(user, criteria, None).await
}

async fn search_page(user: &User, criteria: Value, batch: Option<&str>) -> Value {
    let path = match batch {
        Some(batch) => format!("{SEARCH}?next_batch={}", enc(batch)),
        None => SEARCH.to_owned(),
    };
    let (status, body) = user
        .post(
            &path,
            json!({ "search_categories": { "room_events": criteria } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "search: {body}");
    body["search_categories"]["room_events"].clone()
}

/// The event ids of the results, in order.
fn result_ids(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            r["result"]["event_id"]
                .as_str()
                .expect("event_id")
                .to_owned()
        })
        .collect()
}

#[actix_web::test]
async fn messages_are_found_by_rank_and_by_recency_a_page_at_a_time() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let bob = cluster.client().register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let once = alice.send_text(&room, "a brown fox in the garden").await;
    let _other = alice.send_text(&room, "nothing to see here").await;
    let thrice = alice
        .send_text(&room, "fox, fox and another fox: foxes everywhere")
        .await;
    let redacted = alice.send_text(&room, "a fox to be redacted").await;
    let (status, body) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&redacted)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Not in the room: nothing.
    let answer = search(&bob, json!({ "search_term": "fox" })).await;
    assert_eq!(result_ids(&answer), Vec::<String>::new());
    assert_eq!(answer["count"], 0);

    bob.join(&room).await;
    // By rank (the default): the message saying fox three times first; the
    // redacted one is gone.
    let answer = search(&bob, json!({ "search_term": "fox" })).await;
    assert_eq!(result_ids(&answer), vec![thrice.clone(), once.clone()]);
    assert_eq!(answer["count"], 2);
    assert_eq!(answer["highlights"], json!(["fox"]));
    let ranks: Vec<f64> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["rank"].as_f64().expect("rank"))
        .collect();
    assert!(ranks[0] > ranks[1], "{ranks:?}");
    assert_eq!(
        answer["results"][0]["result"]["content"]["body"],
        "fox, fox and another fox: foxes everywhere"
    );

    // By recency, one a page: the newest first, then the next, then the end.
    let criteria = json!({ "search_term": "fox", "order_by": "recent", "filter": { "limit": 1 } });
    let first = search(&bob, criteria.clone()).await;
    assert_eq!(result_ids(&first), vec![thrice.clone()]);
    let batch = first["next_batch"].as_str().expect("next_batch").to_owned();
    let second = search_page(&bob, criteria.clone(), Some(&batch)).await;
    assert_eq!(result_ids(&second), vec![once.clone()]);
    if let Some(batch) = second["next_batch"].as_str() {
        let third = search_page(&bob, criteria.clone(), Some(batch)).await;
        assert_eq!(result_ids(&third), Vec::<String>::new());
        assert!(third.get("next_batch").is_none(), "{third}");
    }
    // Rank pages the same way.
    let criteria = json!({ "search_term": "fox", "filter": { "limit": 1 } });
    let first = search(&bob, criteria.clone()).await;
    assert_eq!(result_ids(&first), vec![thrice.clone()]);
    let batch = first["next_batch"].as_str().expect("next_batch").to_owned();
    let second = search_page(&bob, criteria, Some(&batch)).await;
    assert_eq!(result_ids(&second), vec![once.clone()]);

    // Context, profiles, state and groups.
    let answer = search(
        &bob,
        json!({
            "search_term": "garden",
            "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
            "include_state": true,
            "groupings": { "group_by": [{ "key": "room_id" }] },
        }),
    )
    .await;
    assert_eq!(result_ids(&answer), vec![once.clone()]);
    let context = &answer["results"][0]["context"];
    assert_eq!(context["events_before"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        context["events_after"][0]["content"]["body"],
        "nothing to see here"
    );
    assert!(context["start"].is_string() && context["end"].is_string());
    assert_eq!(
        context["profile_info"][&alice.user_id]["displayname"], "alice",
        "{context}"
    );
    let state = answer["state"][&room]
        .as_array()
        .expect("state of the room");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
    assert_eq!(answer["groups"]["room_id"][&room]["results"], json!([once]));
    assert_eq!(answer["groups"]["room_id"][&room]["order"], 0);

    // Room names and topics are searched too, and keys choose.
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
            json!({ "name": "The Badger Sett" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let name_event = body["event_id"].as_str().expect("event_id").to_owned();
    let answer = search(&bob, json!({ "search_term": "badger" })).await;
    assert_eq!(result_ids(&answer), vec![name_event]);
    let answer = search(
        &bob,
        json!({ "search_term": "badger", "keys": ["content.body"] }),
    )
    .await;
    assert_eq!(result_ids(&answer), Vec::<String>::new());
}

#[actix_web::test]
async fn search_shows_only_history_the_user_may_see_and_in_the_rooms_asked() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let bob = cluster.client().register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": { "history_visibility": "joined" },
            }],
        }))
        .await;
    let _before = alice.send_text(&room, "the walrus said before").await;
    bob.join(&room).await;
    let after = alice.send_text(&room, "the walrus said after").await;
    let answer = search(&bob, json!({ "search_term": "walrus" })).await;
    assert_eq!(result_ids(&answer), vec![after.clone()]);
    // Alice, joined all along, sees both.
    let answer = search(
        &alice,
        json!({ "search_term": "walrus", "order_by": "recent" }),
    )
    .await;
    assert_eq!(result_ids(&answer).len(), 2);

    // The filter's rooms.
    let other = alice.create_room(json!({})).await;
    let elsewhere = alice.send_text(&other, "a walrus elsewhere").await;
    let answer = search(
        &alice,
        json!({ "search_term": "walrus", "filter": { "rooms": [other] } }),
    )
    .await;
    assert_eq!(result_ids(&answer), vec![elsewhere]);
    let answer = search(
        &alice,
        json!({ "search_term": "walrus", "filter": { "not_rooms": [other] } }),
    )
    .await;
    assert_eq!(result_ids(&answer).len(), 2);
}

#[actix_web::test]
async fn bad_searches_get_matrix_errors() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let bad = [
        json!({ "search_categories": { "room_events": { "search_term": "x", "order_by": "loudest" } } }),
        json!({ "search_categories": { "room_events": { "search_term": "x", "keys": ["content.secret"] } } }),
        json!({ "search_categories": { "room_events": { "search_term": "x", "groupings": { "group_by": [{ "key": "type" }] } } } }),
    ];
    for body in bad {
        let (status, answer) = alice.post(SEARCH, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["errcode"], "M_INVALID_PARAM", "{body}: {answer}");
    }
    let (status, answer) = alice
        .post(
            &format!("{SEARCH}?next_batch=nonsense"),
            json!({ "search_categories": { "room_events": { "search_term": "x" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = alice
        .post(
            SEARCH,
            json!({ "search_categories": { "room_events": {} } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["errcode"], "M_BAD_JSON");
}
