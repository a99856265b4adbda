//! Stream followers: a follower of the events stream on `main` (the events
//! writer itself on the monolith, a reader of `events1` on the split) hands
//! over each event once, in stream order, and resumes from its stored
//! checkpoint when started again, as a restarted pusher or federation sender
//! will.

use std::time::Duration;

use futures::future::BoxFuture;
use lattice::streams::events::EVENTS_STREAM;
use lattice::streams::follower::{FollowRows, FollowedRow, StartFrom, StreamFollower};
use serde_json::json;
use tokio::sync::mpsc;

use crate::cluster::TestCluster;

/// Hands the event ids of the rows it is given to a channel.
struct EventIds(mpsc::UnboundedSender<String>);

impl FollowRows for EventIds {
    fn handle<'a>(&'a mut self, rows: &'a [FollowedRow]) -> BoxFuture<'a, Result<(), String>> {
        for row in rows {
            if let Some(event_id) = row.row.get(0).and_then(|id| id.as_str()) {
                let _ = self.0.send(event_id.to_owned());
            }
        }
        Box::pin(async { Ok(()) })
    }
}

/// Receives `count` event ids, failing after a generous deadline.
async fn receive(ids: &mut mpsc::UnboundedReceiver<String>, count: usize) -> Vec<String> {
    let mut received = Vec::new();
    while received.len() < count {
        match tokio::time::timeout(Duration::from_secs(20), ids.recv()).await {
            Ok(Some(id)) => received.push(id),
            _ => panic!("the follower handed over {received:?}, not {count} events"),
        }
    }
    received
}

/// Starts the follower `name` of the events stream on `main`: the event ids
/// it hands over, and its task.
async fn follow(
    cluster: &TestCluster,
    name: &'static str,
) -> (mpsc::UnboundedReceiver<String>, tokio::task::AbortHandle) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let task = cluster
        .on_node("main", move |node| async move {
            let stream = node
                .streams
                .registered(EVENTS_STREAM)
                .cloned()
                .expect("every instance follows the events stream");
            let follower = StreamFollower::new(name, stream, node.pool.clone());
            // Stored at once, so what follows is handed over even if the
            // task has not looked at the stream yet.
            follower
                .checkpoint(StartFrom::Now)
                .await
                .expect("checkpoint");
            node.runtime
                .spawn(follower.run(StartFrom::Now, EventIds(sender)))
                .abort_handle()
        })
        .await;
    (receiver, task)
}

#[actix_web::test]
async fn a_follower_hands_over_each_event_in_order_and_resumes_from_its_checkpoint() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room = alice.create_room(json!({})).await;

    let (mut ids, task) = follow(&cluster, "test-follower").await;
    let mut sent = Vec::new();
    for text in ["one", "two", "three"] {
        sent.push(alice.send_text(&room, text).await);
    }
    assert_eq!(receive(&mut ids, 3).await, sent);

    // Stopped, as a process that dies, once its checkpoint is stored (a
    // follower stopped before that hands the same rows over again).
    let upto = cluster
        .on_node(
            "main",
            |node| async move { node.notifier.events_position() },
        )
        .await;
    let database = cluster.database().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = database
            .query_opt(
                "SELECT position FROM stream_followers WHERE follower = 'test-follower'",
                &[],
            )
            .await
            .expect("checkpoint query");
        if row.is_some_and(|row| row.get::<_, i64>(0) >= upto) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoint never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let mut later = Vec::new();
    for text in ["four", "five"] {
        later.push(alice.send_text(&room, text).await);
    }
    let (mut ids, _task) = follow(&cluster, "test-follower").await;
    assert_eq!(
        receive(&mut ids, 2).await,
        later,
        "resumed after what it had handled, not from the start nor from now"
    );
    let last = alice.send_text(&room, "six").await;
    assert_eq!(receive(&mut ids, 1).await, vec![last]);
}
