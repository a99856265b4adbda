//! Filters: upload, read back, and the owner check.

use awc::http::StatusCode;
use serde_json::json;

use crate::cluster::{enc, TestCluster};

fn filters(user_id: &str) -> String {
    format!("/_matrix/client/v3/user/{}/filter", enc(user_id))
}

#[actix_web::test]
async fn upload_and_read_a_filter() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let filter = json!({
        "room": {
            "timeline": { "limit": 5, "types": ["m.room.message"] },
            "state": { "lazy_load_members": true },
        },
        "presence": { "not_types": ["*"] },
    });
    let (status, body) = alice.post(&filters(&alice.user_id), filter.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let filter_id = body["filter_id"].as_str().expect("filter_id is a string");

    let (status, body) = alice
        .get(&format!("{}/{filter_id}", filters(&alice.user_id)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, filter);

    // Ids are per upload.
    let (_, second) = alice.post(&filters(&alice.user_id), json!({})).await;
    assert_ne!(second["filter_id"], filter_id);
}

#[actix_web::test]
async fn filters_belong_to_their_user() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let (_, body) = alice.post(&filters(&alice.user_id), json!({})).await;
    let filter_id = body["filter_id"].as_str().expect("filter id").to_owned();

    let (status, body) = bob
        .get(&format!("{}/{filter_id}", filters(&alice.user_id)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = bob.post(&filters(&alice.user_id), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Bob's own namespace does not have Alice's filter either.
    let (status, body) = bob
        .get(&format!("{}/{filter_id}", filters(&bob.user_id)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

#[actix_web::test]
async fn unknown_and_invalid_filters() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    for id in ["999999", "not-a-number"] {
        let (status, body) = alice
            .get(&format!("{}/{id}", filters(&alice.user_id)))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
    }
    for filter in [
        json!({ "room": { "timeline": { "limit": "ten" } } }),
        json!({ "room": "everything" }),
        json!([1, 2, 3]),
    ] {
        let (status, body) = alice.post(&filters(&alice.user_id), filter.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{filter}");
    }
}
