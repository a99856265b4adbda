//! `/metrics` as an operator scrapes it from each instance: mailbox depths,
//! remote call latency, replication lag and actor restarts, next to the
//! request counters.

use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use lattice::roles::events::{CreateRoom, SendEvent};
use lattice_actors::RemoteMessage;
use serde_json::json;

use crate::cluster::{Client, TestCluster};

/// `GET /metrics` of one node, as text.
pub(crate) async fn scrape(node: &Client) -> String {
    let (status, headers, body) = node
        .request_bytes(Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    String::from_utf8(body).expect("the exposition is UTF-8")
}

/// The value of the sample `series` (name and labels exactly as exposed).
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// The events stream position of the newest event of `room`, from the
/// `s`-token `/messages` gives as `start` when paginating backwards.
async fn newest_position(user: &crate::cluster::User, room: &str) -> i64 {
    let body = user.messages(room, "dir=b&limit=1").await;
    body["start"]
        .as_str()
        .and_then(|t| t.strip_prefix('s'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("an s-token in {body}"))
}

#[actix_web::test]
async fn metrics_show_mailboxes_remote_calls_replication_lag_and_restarts() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "hello").await;
    let position = newest_position(&alice, &room).await;

    // Every stream of the registry, at what this instance has seen (main
    // answered the send once it had seen it, on either topology).
    let text = scrape(&cluster.node_client("main")).await;
    let seen = sample(&text, r#"lattice_stream_position{stream="events"}"#);
    assert!(
        seen.is_some_and(|seen| seen >= position as f64),
        "events at {position}, /metrics says {seen:?}:\n{text}"
    );

    if !cluster.is_split() {
        let text = scrape(&cluster.node_client("main")).await;
        for series in [
            r#"lattice_mailbox_depth{mailbox="event_persister",transport="local"}"#,
            r#"lattice_actor_restarts_total{actor="event_persister"}"#,
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
        // Every actor is local: no remote calls, no Redis mailboxes, and no
        // writer elsewhere to lag behind.
        assert!(
            text.contains("# TYPE lattice_mailbox_call_seconds histogram"),
            "{text}"
        );
        for absent in [
            "lattice_mailbox_call_seconds_count{",
            ",transport=\"redis\"}",
            "lattice_replication_lag{",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        return;
    }

    // `main` (client + sync) sent both writes to the persister on events1
    // through its mailbox proxy, and timed them.
    let main = scrape(&cluster.node_client("main")).await;
    for message in [
        <SendEvent as RemoteMessage>::WIRE_NAME,
        <CreateRoom as RemoteMessage>::WIRE_NAME,
    ] {
        let labels = format!(r#"message="{message}",destination="events@events1""#);
        let count = sample(
            &main,
            &format!("lattice_mailbox_call_seconds_count{{{labels}}}"),
        );
        assert!(count.is_some_and(|n| n >= 1.0), "{message} in\n{main}");
        assert_eq!(
            sample(
                &main,
                &format!("lattice_mailbox_call_seconds_bucket{{{labels},le=\"+Inf\"}}")
            ),
            count,
            "{main}"
        );
        let sum = sample(
            &main,
            &format!("lattice_mailbox_call_seconds_sum{{{labels}}}"),
        );
        assert!(sum.is_some_and(|s| s > 0.0 && s < 30.0), "{main}");
    }
    assert!(
        !main.contains("lattice_mailbox_call_failures_total{"),
        "{main}"
    );

    // events1 serves the events mailbox over Redis: everything sent was
    // taken and acknowledged. It calls nobody.
    let events1 = scrape(&cluster.node_client("events1")).await;
    for (series, value) in [
        (
            r#"lattice_mailbox_depth{mailbox="events@events1",transport="redis"}"#,
            0.0,
        ),
        (r#"lattice_mailbox_pending{mailbox="events@events1"}"#, 0.0),
        (
            r#"lattice_mailbox_depth{mailbox="event_persister",transport="local"}"#,
            0.0,
        ),
        (
            r#"lattice_actor_restarts_total{actor="event_persister"}"#,
            0.0,
        ),
        (
            r#"lattice_replication_lag{stream="events",writer="events1"}"#,
            0.0,
        ),
    ] {
        assert_eq!(
            sample(&events1, series),
            Some(value),
            "{series} in\n{events1}"
        );
    }
    assert!(
        !events1.contains("lattice_mailbox_call_seconds_count{"),
        "{events1}"
    );

    // The readers have processed the writer's position up to the event
    // (read-your-writes for main, replication for sync2) and, once the
    // writer's last announcement is applied, lag behind it by nothing.
    for instance in ["main", "sync2"] {
        let node = cluster.node_client(instance);
        let mut text = String::new();
        for _ in 0..100 {
            text = scrape(&node).await;
            if sample(
                &text,
                r#"lattice_replication_lag{stream="events",writer="events1"}"#,
            ) == Some(0.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            sample(
                &text,
                r#"lattice_replication_lag{stream="events",writer="events1"}"#
            ),
            Some(0.0),
            "{instance}:\n{text}"
        );
        let processed = sample(
            &text,
            r#"lattice_replication_position{stream="events",writer="events1"}"#,
        );
        assert!(
            processed.is_some_and(|p| p >= position as f64),
            "{instance} processed {processed:?}, the event is at {position}:\n{text}"
        );
        let announced = sample(
            &text,
            r#"lattice_replication_announced_position{stream="events",writer="events1"}"#,
        );
        assert!(
            announced.is_some_and(|p| p >= position as f64),
            "{instance} heard {announced:?}, the event is at {position}:\n{text}"
        );
        assert_eq!(
            sample(&text, "lattice_replication_rejected_total"),
            Some(0.0),
            "{instance}:\n{text}"
        );
    }

    // A logout on main writes a `caches` row; sync2 applies it and reports
    // main as a writer of that stream, caught up.
    let phone = cluster.client().login("alice").await;
    let (status, body) = phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync2 = cluster.node_client("sync2");
    let position = r#"lattice_replication_position{stream="caches",writer="main"}"#;
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&sync2).await;
        if sample(&text, position).is_some_and(|p| p >= 2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sample(&text, position).is_some_and(|p| p >= 2.0),
        "{position} in\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"lattice_replication_lag{stream="caches",writer="main"}"#
        ),
        Some(0.0),
        "{text}"
    );
    // events1 announced its position too, but never wrote a row.
    assert!(
        !text.contains(r#"{stream="caches",writer="events1"}"#),
        "{text}"
    );
}
