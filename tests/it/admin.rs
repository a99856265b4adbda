//! The admin API: actor snapshots, for admins only.

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::TestCluster;

#[actix_web::test]
async fn the_event_persister_snapshot_shows_its_stream_position() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let admin = client.register("root").await;
    let alice = client.register("alice").await;
    cluster.make_admin(&admin.user_id).await;

    let (status, body) = alice.get("/_lattice/admin/v1/actors").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "hello").await;
    let (status, body) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let end_of_room: i64 = body["start"]
        .as_str()
        .and_then(|t| t.strip_prefix('s'))
        .and_then(|p| p.parse().ok())
        .expect("an s-token");

    // The persister runs on whichever node writes events: ask every node.
    let mut persister = Value::Null;
    for node in cluster.node_clients() {
        let (status, body) = node
            .get("/_lattice/admin/v1/actors", Some(&admin.access_token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["instance"].is_string(), "{body}");
        if let Some(found) = body["actors"]
            .as_array()
            .and_then(|actors| actors.iter().find(|a| a["name"] == "event_persister"))
        {
            persister = found.clone();
        }
    }
    assert_eq!(persister["status"], "running", "{body}");
    assert_eq!(persister["restarts"], 0);
    let state = &persister["state"];
    assert_eq!(state["stream"], "events");
    assert_eq!(state["stream_position"], json!(end_of_room), "{state}");
    assert!(
        state["events_persisted"].as_u64().is_some_and(|n| n >= 2),
        "{state}"
    );
}

#[actix_web::test]
async fn the_cluster_overview_lists_every_instance_and_the_writers_of_each_stream() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let admin = client.register("root").await;
    cluster.make_admin(&admin.user_id).await;
    let room = admin.create_room(json!({})).await;
    admin.send_text(&room, "hello").await;

    let (status, body) = client
        .register("alice")
        .await
        .get("/_lattice/admin/v1/cluster")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let expected = cluster.node_clients().len();
    let mut overview = Value::Null;
    // Heartbeats are written at start-up and then every few seconds.
    for _ in 0..100 {
        let (status, body) = admin.get("/_lattice/admin/v1/cluster").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["instances"]
            .as_array()
            .is_some_and(|i| i.len() == expected)
        {
            overview = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let instances = overview["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(instances.len(), expected, "{overview}");
    assert!(instances
        .iter()
        .all(|i| i["pid"].as_i64().is_some_and(|p| p > 0) && i["roles"].is_array()));
    let writers = overview["streams"]["events"]["writers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(writers.len(), 1, "{overview}");
    assert!(writers[0]["position"].as_i64().is_some_and(|p| p > 1));
    let readers = overview["streams"]["events"]["readers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(readers.len(), expected, "{overview}");

    // A logout writes a `caches` row where instances are split (the
    // monolith has nobody to tell); each instance reports how far it
    // applied each writer's rows.
    let phone = client.login("root").await;
    let (status, body) = phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, overview) = admin.get("/_lattice/admin/v1/cluster").await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    let caches = &overview["streams"]["caches"];
    let writers = caches["writers"].as_array().cloned().unwrap_or_default();
    if cluster.is_split() {
        assert_eq!(writers.len(), 1, "{caches}");
        assert_eq!(writers[0]["instance"], "main", "{caches}");
        assert!(
            writers[0]["position"].as_i64().is_some_and(|p| p > 1),
            "{caches}"
        );
    } else {
        assert!(writers.is_empty(), "{caches}");
    }
    let readers = caches["readers"].as_array().cloned().unwrap_or_default();
    assert_eq!(readers.len(), expected, "{caches}");
    assert!(
        readers
            .iter()
            .all(|r| r["positions"].is_object() && r["lag"].is_i64()),
        "{caches}"
    );
}
