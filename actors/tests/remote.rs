//! Remote delivery over the in-memory transport: several "nodes" share one
//! `InMemoryBus` (the stand-in for Redis), each with its own transport.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_actors::{
    serve, Actor, Context, Endpoint, Handler, HmacKey, InMemoryBus, InMemoryTransport, Location,
    Mailbox, MailboxError, Placement, RemoteMessage, Supervisor, Transport,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

const SECOND: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
struct Ping(u32);
impl RemoteMessage for Ping {
    type Reply = u32;
    const WIRE_NAME: &'static str = "test.ping.v1";
}

#[derive(Debug, Serialize, Deserialize)]
struct Refuse;
impl RemoteMessage for Refuse {
    type Reply = ();
    const WIRE_NAME: &'static str = "test.refuse.v1";
}

#[derive(Debug, Serialize, Deserialize)]
struct Unrouted;
impl RemoteMessage for Unrouted {
    type Reply = ();
    const WIRE_NAME: &'static str = "test.unrouted.v1";
}

#[derive(Default)]
struct Echo {
    seen: Vec<u32>,
}

impl Actor for Echo {
    fn observe(&self) -> serde_json::Value {
        json!({ "seen": self.seen })
    }
}

impl Handler<Ping> for Echo {
    async fn handle(&mut self, Ping(n): Ping, _ctx: &mut Context) -> Result<u32, String> {
        self.seen.push(n);
        Ok(n + 1)
    }
}

impl Handler<Refuse> for Echo {
    async fn handle(&mut self, _msg: Refuse, _ctx: &mut Context) -> Result<(), String> {
        Err("refused".into())
    }
}

fn arc(t: InMemoryTransport) -> Arc<dyn Transport> {
    Arc::new(t)
}

/// A handler that counts calls and answers n + 1.
fn counting(
    counter: &Arc<AtomicU64>,
) -> impl Fn(Ping) -> futures::future::Ready<Result<u32, String>> + Send + Sync + 'static {
    let counter = Arc::clone(counter);
    move |Ping(n)| {
        counter.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(Ok(n + 1))
    }
}

#[tokio::test]
async fn remote_call_round_trip_to_a_supervised_actor() {
    let bus = InMemoryBus::new();
    let node_a = bus.transport("a");
    let node_b = bus.transport("b");

    // Node b runs the actor and exposes it.
    let supervisor_b = Supervisor::new();
    let echo = supervisor_b.start("echo", Echo::default).expect("starts");
    let endpoint = Endpoint::new(arc(node_b.clone()), "echo@b")
        .route_mailbox(echo.mailbox::<Ping>())
        .route_mailbox(echo.mailbox::<Refuse>())
        .start()
        .await
        .expect("subscribes");

    // Node a only has a mailbox.
    let ping: Mailbox<Ping> = Mailbox::remote(arc(node_a.clone()), "echo@b");
    assert!(!ping.is_local());
    assert_eq!(ping.call(Ping(41), SECOND).await, Ok(42));
    assert_eq!(
        Mailbox::<Refuse>::remote(arc(node_a.clone()), "echo@b")
            .call(Refuse, SECOND)
            .await,
        Err(MailboxError::Remote("refused".into()))
    );
    match Mailbox::<Unrouted>::remote(arc(node_a.clone()), "echo@b")
        .call(Unrouted, SECOND)
        .await
    {
        Err(MailboxError::Decode(text)) => assert!(text.contains("test.unrouted.v1"), "{text}"),
        other => panic!("unexpected {other:?}"),
    }

    // Tells keep their order and are handled before a later call.
    for i in 0..5 {
        ping.tell(Ping(i)).expect("posted");
    }
    assert_eq!(ping.call(Ping(100), SECOND).await, Ok(101));
    let snapshot = supervisor_b.observe("echo").await.expect("exists");
    assert_eq!(
        snapshot.state,
        Some(json!({ "seen": [41, 0, 1, 2, 3, 4, 100] }))
    );

    let stats = endpoint.shutdown().await;
    assert_eq!((stats.handled, stats.failed, stats.unknown), (7, 1, 1));
    let a = node_a.stats();
    assert_eq!((a.sent, a.posted, a.replies_received), (4, 5, 4));
    let b = node_b.stats();
    assert_eq!((b.delivered, b.completed, b.redelivered), (9, 9, 0));
    assert_eq!(bus.pending("echo@b") + bus.queued("echo@b"), 0);
    supervisor_b.shutdown().await;
}

#[tokio::test]
async fn serve_with_a_closure() {
    let bus = InMemoryBus::new();
    let counter = Arc::new(AtomicU64::new(0));
    let handle = serve(arc(bus.transport("b")), "calc@b", counting(&counter))
        .await
        .expect("serves");
    let mailbox = Mailbox::<Ping>::remote(arc(bus.transport("a")), "calc@b");
    assert_eq!(mailbox.call(Ping(1), SECOND).await, Ok(2));
    assert_eq!(mailbox.call(Ping(2), SECOND).await, Ok(3));
    assert_eq!(counter.load(Ordering::SeqCst), 2);
    assert_eq!(handle.stats().handled, 2);
    let _ = handle.shutdown().await;
}

#[tokio::test]
async fn unacknowledged_message_is_redelivered_to_the_next_owner() {
    let bus = InMemoryBus::new();
    let caller = bus.transport("caller");

    // Owner 1 takes the message and hangs in its handler...
    let started = Arc::new(Notify::new());
    let signal = Arc::clone(&started);
    let owner1 = serve(arc(bus.transport("owner1")), "work", move |_: Ping| {
        signal.notify_one();
        futures::future::pending::<Result<u32, String>>()
    })
    .await
    .expect("serves");

    let mailbox = Mailbox::<Ping>::remote(arc(caller.clone()), "work");
    let call = tokio::spawn(async move { mailbox.call(Ping(1), Duration::from_secs(5)).await });
    started.notified().await;
    assert_eq!(bus.pending("work"), 1, "delivered, not acknowledged");

    // ...and dies before finishing.
    owner1.abort().await;
    assert_eq!(bus.pending("work"), 0);
    assert_eq!(bus.queued("work"), 1, "given back to the queue");

    // The next owner gets it and the original caller gets its answer.
    let node2 = bus.transport("owner2");
    let counter = Arc::new(AtomicU64::new(0));
    let owner2 = serve(arc(node2.clone()), "work", counting(&counter))
        .await
        .expect("serves");
    assert_eq!(call.await.expect("caller task"), Ok(2));
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    assert_eq!(node2.stats().redelivered, 1);
    let stats = owner2.shutdown().await;
    assert_eq!(stats.redelivered, 1);
    assert_eq!(bus.pending("work") + bus.queued("work"), 0);
}

#[tokio::test]
async fn raw_subscription_redelivery_counts_attempts() {
    let bus = InMemoryBus::new();
    let a = bus.transport("a");
    a.post(
        "jobs",
        lattice_actors::Envelope::request("test.ping.v1", "a", None, json!(1)),
    )
    .expect("posted");

    let owner1 = bus.transport("owner1");
    let mut sub = owner1.subscribe("jobs").await.expect("subscribes");
    let first = sub.next().await.expect("delivered");
    assert_eq!(first.attempt(), 1);
    assert!(!first.wants_reply());
    drop(first); // not completed...
    drop(sub); // ...and the owner goes away.

    let owner2 = bus.transport("owner2");
    let mut sub = owner2.subscribe("jobs").await.expect("subscribes");
    let second = sub.next().await.expect("redelivered");
    assert_eq!(second.attempt(), 2);
    assert_eq!(second.envelope().body, json!(1));
    second.complete(None).await.expect("acked");
    drop(sub);
    assert_eq!(
        bus.pending("jobs") + bus.queued("jobs"),
        0,
        "acknowledged: not redelivered again"
    );
}

#[tokio::test]
async fn expired_message_is_not_handled() {
    let bus = InMemoryBus::new();
    let server = bus.transport("b");
    let mailbox = Mailbox::<Ping>::remote(arc(bus.transport("a")), "late@b");

    // Nobody owns the destination yet: the caller times out.
    assert_eq!(
        mailbox.call(Ping(1), Duration::from_millis(30)).await,
        Err(MailboxError::Timeout)
    );
    assert_eq!(bus.queued("late@b"), 1);

    // When an owner shows up, the expired request is dropped, not handled.
    let counter = Arc::new(AtomicU64::new(0));
    let handle = serve(arc(server.clone()), "late@b", counting(&counter))
        .await
        .expect("serves");
    assert_eq!(mailbox.call(Ping(2), SECOND).await, Ok(3));
    assert_eq!(
        counter.load(Ordering::SeqCst),
        1,
        "only the live request ran"
    );
    assert_eq!(server.stats().expired, 1);
    let _ = handle.shutdown().await;
}

#[tokio::test]
async fn hmac_mismatch_is_dropped_and_counted() {
    let bus = InMemoryBus::new();
    let key = |s: &str| HmacKey::new(s).expect("key");
    let server = bus.transport_with_key("b", key("right"));
    let counter = Arc::new(AtomicU64::new(0));
    let handle = serve(arc(server.clone()), "secure@b", counting(&counter))
        .await
        .expect("serves");

    // Wrong secret, and no secret at all: dropped, counted, caller times out.
    let wrong = Mailbox::<Ping>::remote(arc(bus.transport_with_key("x", key("wrong"))), "secure@b");
    assert_eq!(
        wrong.call(Ping(1), Duration::from_millis(100)).await,
        Err(MailboxError::Timeout)
    );
    let unsigned = Mailbox::<Ping>::remote(arc(bus.transport("y")), "secure@b");
    assert_eq!(
        unsigned.call(Ping(1), Duration::from_millis(100)).await,
        Err(MailboxError::Timeout)
    );
    assert_eq!(server.stats().hmac_rejected, 2);
    assert_eq!(
        counter.load(Ordering::SeqCst),
        0,
        "no forged message reached the handler"
    );

    // The right secret works (request and signed reply both verify).
    let good_node = bus.transport_with_key("a", key("right"));
    let good = Mailbox::<Ping>::remote(arc(good_node.clone()), "secure@b");
    assert_eq!(good.call(Ping(1), SECOND).await, Ok(2));
    assert_eq!(good_node.stats().reply_hmac_rejected, 0);
    let _ = handle.shutdown().await;

    // Replies are checked too: a keyless responder's replies are rejected by
    // a caller that requires the secret.
    let open = serve(arc(bus.transport("open")), "open", counting(&counter))
        .await
        .expect("serves");
    let to_open = Mailbox::<Ping>::remote(arc(good_node.clone()), "open");
    assert_eq!(
        to_open.call(Ping(1), Duration::from_millis(100)).await,
        Err(MailboxError::Timeout)
    );
    assert_eq!(good_node.stats().reply_hmac_rejected, 1);
    let _ = open.shutdown().await;
}

#[tokio::test]
async fn closed_bus_is_unreachable() {
    let bus = InMemoryBus::new();
    let mailbox = Mailbox::<Ping>::remote(arc(bus.transport("a")), "gone");
    let pending = {
        let mailbox = mailbox.clone();
        tokio::spawn(async move { mailbox.call(Ping(1), Duration::from_secs(5)).await })
    };
    tokio::task::yield_now().await;
    bus.close();
    assert_eq!(pending.await.expect("task"), Err(MailboxError::Unreachable));
    assert_eq!(
        mailbox.call(Ping(1), SECOND).await,
        Err(MailboxError::Unreachable)
    );
    assert_eq!(mailbox.tell(Ping(1)), Err(MailboxError::Unreachable));
}

#[tokio::test]
async fn placement_routes_between_nodes() {
    // events sharded over [a, b]: "!a:b" → a (index 0), "!room:example.org" → b.
    let config = [("events", vec!["a", "b"])];
    let bus = InMemoryBus::new();
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();

    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let transport = arc(bus.transport(name));
        let placement = Placement::new(name, config.clone()).expect("valid");
        let supervisor = Supervisor::new();
        let echo = supervisor.start("events", Echo::default).expect("starts");
        let endpoint = Endpoint::new(
            Arc::clone(&transport),
            Placement::destination("events", name),
        )
        .route_mailbox(echo.mailbox::<Ping>())
        .start()
        .await
        .expect("serves");
        nodes.push((placement, transport, supervisor, echo, endpoint));
    }

    let (placement_a, transport_a, _, echo_a, _) = &nodes[0];
    let local = echo_a.mailbox::<Ping>();
    assert_eq!(placement_a.locate("events", "!a:b"), Location::Local);
    let here = placement_a
        .mailbox("events", "!a:b", Some(&local), transport_a)
        .expect("mailbox");
    assert!(here.is_local());
    assert_eq!(here.call(Ping(1), SECOND).await, Ok(2));

    let there = placement_a
        .mailbox("events", "!room:example.org", Some(&local), transport_a)
        .expect("mailbox");
    assert_eq!(there.destination(), Some("events@b"));
    assert_eq!(there.call(Ping(10), SECOND).await, Ok(11));

    for (placement, _, supervisor, _, _) in &nodes {
        let snapshot = supervisor.observe("events").await.expect("exists");
        let state = snapshot.state.expect("running");
        seen.lock().expect("test mutex").push((
            placement.local_instance().to_owned(),
            state["seen"][0].as_u64().map_or(0, |v| v as u32),
        ));
    }
    assert_eq!(
        *seen.lock().expect("test mutex"),
        [("a".to_owned(), 1), ("b".to_owned(), 10)]
    );

    for (_, _, supervisor, _, endpoint) in nodes {
        let _ = endpoint.shutdown().await;
        supervisor.shutdown().await;
    }
}
