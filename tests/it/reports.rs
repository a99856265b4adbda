//! Reporting an event, a room or a user, and the admins' list of reports.

use awc::http::StatusCode;
use serde_json::json;

use crate::cluster::{enc, TestCluster, SERVER_NAME};

#[actix_web::test]
async fn reports_are_stored_and_listed_for_admins() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let bob = cluster.client().register("bob").await;
    let carol = cluster.client().register("carol").await;
    let admin = cluster.client().register("admin").await;
    cluster.make_admin(&admin.user_id).await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let event = alice.send_text(&room, "something rude").await;
    bob.join(&room).await;
    let report_event = format!(
        "/_matrix/client/v3/rooms/{}/report/{}",
        enc(&room),
        enc(&event)
    );

    // An event: by a member who sees it.
    let (status, body) = bob
        .post(&report_event, json!({ "reason": "rude", "score": -80 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    // Not joined, an unknown event, or a bad score.
    let (status, body) = carol.post(&report_event, json!({ "reason": "x" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = bob
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/report/{}",
                enc(&room),
                enc("$nothere")
            ),
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = bob.post(&report_event, json!({ "score": 12 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    // A room: anyone may report one that exists.
    let (status, body) = carol
        .post(
            &format!("/_matrix/client/v3/rooms/{}/report", enc(&room)),
            json!({ "reason": "spam room" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = carol
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/report",
                enc(&format!("!nothere:{SERVER_NAME}"))
            ),
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = carol
        .post(
            &format!("/_matrix/client/v3/rooms/{}/report", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    // A user; one that does not exist is answered the same and not stored.
    let (status, body) = carol
        .post(
            &format!("/_matrix/client/v3/users/{}/report", enc(&alice.user_id)),
            json!({ "reason": "harassment" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = carol
        .post(
            &format!(
                "/_matrix/client/v3/users/{}/report",
                enc(&format!("@ghost:{SERVER_NAME}"))
            ),
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = carol
        .post(
            "/_matrix/client/v3/users/not-a-user-id/report",
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Admins only.
    let (status, body) = bob.get("/_lattice/admin/v1/reports").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = admin.get("/_lattice/admin/v1/reports").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 3);
    let reports = body["reports"].as_array().expect("reports");
    let kinds: Vec<&str> = reports
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, vec!["user", "room", "event"]);
    assert_eq!(reports[0]["target_user_id"], alice.user_id.as_str());
    assert_eq!(reports[0]["user_id"], carol.user_id.as_str());
    assert_eq!(reports[1]["room_id"], room.as_str());
    assert_eq!(reports[2]["event_id"], event.as_str());
    assert_eq!(reports[2]["reason"], "rude");
    assert_eq!(reports[2]["score"], -80);
    assert!(body.get("next_token").is_none(), "{body}");
    // In pages.
    let (_, first) = admin.get("/_lattice/admin/v1/reports?limit=2").await;
    assert_eq!(first["reports"].as_array().map(Vec::len), Some(2));
    let next = first["next_token"].as_str().expect("next_token");
    let (_, rest) = admin
        .get(&format!("/_lattice/admin/v1/reports?limit=2&from={next}"))
        .await;
    assert_eq!(rest["reports"][0]["kind"], "event");
}
