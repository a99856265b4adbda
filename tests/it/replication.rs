//! Split deployments under failure: these tests always run on the 3-node
//! split (client+sync `main`, events writer `events1`, sync `sync2`),
//! whatever `LATTICE_TEST_TOPOLOGY` says.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, Options, TestCluster};

fn split(write_timeout_ms: Option<u64>) -> Options {
    Options {
        topology: Some("split".into()),
        write_timeout_ms,
        ..Options::default()
    }
}

fn bodies(sync: &Value, room_id: &str) -> Vec<String> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn a_killed_writer_restarted_loses_no_acknowledged_event_and_wakes_long_polls() {
    let mut cluster = TestCluster::start_with(split(None)).await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let before = alice.send_text(&room, "before the crash").await;
    let since = bob.sync("timeout=0").await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    cluster.kill("events1");
    // A long-poll on sync2 and a send on main, both while the writer is down.
    let poller = bob.clone();
    let poll_since = since.clone();
    let long_poll = tokio::task::spawn_local(async move {
        poller
            .sync(&format!("since={}&timeout=20000", enc(&poll_since)))
            .await
    });
    let sender = alice.clone();
    let room_for_send = room.clone();
    let send = tokio::task::spawn_local(async move {
        sender
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/during",
                    enc(&room_for_send)
                ),
                json!({ "msgtype": "m.text", "body": "during the crash" }),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart("events1").await;

    // The send waiting in the writer's mailbox is handled by the restarted writer.
    let (status, body) = send.await.expect("send task");
    assert_eq!(status, StatusCode::OK, "{body}");
    let woken = long_poll.await.expect("long-poll task");
    let mut seen = bodies(&woken, &room);
    if !seen.contains(&"during the crash".to_owned()) {
        // The long-poll may have woken for the catch-up first: one more sync.
        let next = woken["next_batch"].as_str().unwrap_or_default().to_owned();
        seen.extend(bodies(
            &bob.sync(&format!("since={}&timeout=10000", enc(&next)))
                .await,
            &room,
        ));
    }
    assert!(seen.contains(&"during the crash".to_owned()), "{seen:?}");

    // Nothing acknowledged before the crash is lost, and nothing is doubled.
    let page = alice.messages(&room, "dir=b&limit=50").await;
    let texts: Vec<&str> = page["chunk"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["body"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(texts, vec!["during the crash", "before the crash"]);
    assert!(page["chunk"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["event_id"] == before.as_str())));
}

#[actix_web::test]
async fn a_request_whose_writer_is_unreachable_fails_within_its_deadline() {
    let mut cluster = TestCluster::start_with(split(Some(1500))).await;
    let alice = cluster.client().register("alice").await;
    let room = alice.create_room(json!({})).await;
    cluster.kill("events1");
    let started = Instant::now();
    let (status, body) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room)
            ),
            json!({ "msgtype": "m.text", "body": "lost?" }),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["errcode"], "M_UNAVAILABLE");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[actix_web::test]
async fn a_replication_message_with_a_wrong_hmac_is_rejected_and_counted() {
    let cluster = TestCluster::start_with(split(None)).await;
    let client = cluster.client();
    let admin = client.register("root").await;
    cluster.make_admin(&admin.user_id).await;
    let alice = client.register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "real").await;
    let before = alice.sync("timeout=0").await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // A forged POSITION claiming the writer reached a far future position,
    // signed with the wrong secret, and one not signed at all.
    let redis_url =
        std::env::var("LATTICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let redis = redis::Client::open(redis_url).expect("redis url");
    let mut connection = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let forged = lattice::streams::replication::Command::Position {
        stream: "events".into(),
        instance: "events1".into(),
        prev: 1,
        new: 1_000_000,
    };
    let wrong_key = lattice_actors::HmacKey::new("not the secret").expect("key");
    for line in [forged.to_line(Some(&wrong_key)), forged.to_line(None)] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(cluster.redis_prefix())
            .arg(line)
            .query_async(&mut connection)
            .await
            .expect("publish");
    }

    // Every node counts them, and none applied them.
    let mut rejected_everywhere = false;
    for _ in 0..50 {
        let mut counts = Vec::new();
        for node in cluster.node_clients() {
            let (status, body) = node
                .get("/_lattice/admin/v1/actors", Some(&admin.access_token))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            counts.push(body["replication"]["rejected"].as_u64().unwrap_or(0));
        }
        if counts.iter().all(|c| *c >= 2) {
            rejected_everywhere = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rejected_everywhere,
        "not every node counted the forged messages"
    );
    let after = alice
        .sync(&format!("since={}&timeout=0", enc(&before)))
        .await;
    let position = |token: &str| {
        token
            .split('_')
            .next()
            .and_then(|s| s.strip_prefix('s'))
            .and_then(|p| p.parse::<i64>().ok())
    };
    let next = after["next_batch"].as_str().unwrap_or_default();
    assert!(
        position(next) < Some(1_000_000),
        "the forged position was applied: {next}"
    );
}
