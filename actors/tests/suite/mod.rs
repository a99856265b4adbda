//! Behavioural tests every [`Transport`] must pass, written once against a
//! [`Harness`] and instantiated per transport with [`transport_suite!`]
//! (`tests/remote.rs`: in-memory; `tests/redis.rs`: Redis).
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_actors::{
    serve, Actor, Context, Endpoint, Envelope, Handler, HmacKey, Location, Mailbox, MailboxError,
    Placement, RemoteMessage, Supervisor, Transport, TransportStats,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

pub const SECOND: Duration = Duration::from_secs(1);

/// One simulated or real process: its transport and its counters.
#[derive(Clone)]
pub struct Node {
    pub transport: Arc<dyn Transport>,
    stats: Arc<dyn Fn() -> TransportStats + Send + Sync>,
}

impl Node {
    pub fn new(
        transport: Arc<dyn Transport>,
        stats: impl Fn() -> TransportStats + Send + Sync + 'static,
    ) -> Self {
        Self {
            transport,
            stats: Arc::new(stats),
        }
    }

    pub fn arc(&self) -> Arc<dyn Transport> {
        Arc::clone(&self.transport)
    }

    pub fn stats(&self) -> TransportStats {
        (self.stats)()
    }
}

/// What the suite needs from a transport implementation.
pub trait Harness: Sync {
    /// A transport for process `instance`, with the shared secret if given.
    fn node(&self, instance: &str, key: Option<HmacKey>) -> impl Future<Output = Node> + Send;

    /// `(pending, queued)` messages of `destination` on the shared medium.
    fn backlog(&self, destination: &str) -> impl Future<Output = (u64, u64)> + Send;

    /// Clean up after a passing test.
    fn finish(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// Instantiate every suite test for the harness built by `$harness`.
macro_rules! transport_suite {
    ($harness:expr) => {
        transport_suite!(@tests $harness;
            remote_call_round_trip_to_a_supervised_actor,
            serve_with_a_closure,
            unacknowledged_message_is_redelivered_to_the_next_owner,
            raw_subscription_redelivery_counts_attempts,
            expired_message_is_not_handled,
            hmac_mismatch_is_dropped_and_counted,
            placement_routes_between_nodes,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let harness = $harness;
                crate::suite::$name(&harness).await;
                crate::suite::Harness::finish(harness).await;
            }
        )*
    };
}

/// Poll `backlog(destination)` until it equals `(pending, queued)`.
pub async fn wait_for_backlog<H: Harness>(h: &H, destination: &str, expected: (u64, u64)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let got = h.backlog(destination).await;
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog of {destination}: got (pending, queued) = {got:?}, want {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Ping(pub u32);
impl RemoteMessage for Ping {
    type Reply = u32;
    const WIRE_NAME: &'static str = "test.ping.v1";
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Refuse;
impl RemoteMessage for Refuse {
    type Reply = ();
    const WIRE_NAME: &'static str = "test.refuse.v1";
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Unrouted;
impl RemoteMessage for Unrouted {
    type Reply = ();
    const WIRE_NAME: &'static str = "test.unrouted.v1";
}

#[derive(Default)]
pub struct Echo {
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

/// A handler that counts calls and answers n + 1.
pub fn counting(
    counter: &Arc<AtomicU64>,
) -> impl Fn(Ping) -> futures::future::Ready<Result<u32, String>> + Send + Sync + 'static {
    let counter = Arc::clone(counter);
    move |Ping(n)| {
        counter.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(Ok(n + 1))
    }
}

fn key(secret: &str) -> Option<HmacKey> {
    Some(HmacKey::new(secret).expect("key"))
}

pub async fn remote_call_round_trip_to_a_supervised_actor<H: Harness>(h: &H) {
    let node_a = h.node("a", None).await;
    let node_b = h.node("b", None).await;

    // Node b runs the actor and exposes it.
    let supervisor_b = Supervisor::new();
    let echo = supervisor_b.start("echo", Echo::default).expect("starts");
    let endpoint = Endpoint::new(node_b.arc(), "echo@b")
        .route_mailbox(echo.mailbox::<Ping>())
        .route_mailbox(echo.mailbox::<Refuse>())
        .start()
        .await
        .expect("subscribes");

    // Node a only has a mailbox.
    let ping: Mailbox<Ping> = Mailbox::remote(node_a.arc(), "echo@b");
    assert!(!ping.is_local());
    assert_eq!(ping.call(Ping(41), SECOND).await, Ok(42));
    assert_eq!(
        Mailbox::<Refuse>::remote(node_a.arc(), "echo@b")
            .call(Refuse, SECOND)
            .await,
        Err(MailboxError::Remote("refused".into()))
    );
    match Mailbox::<Unrouted>::remote(node_a.arc(), "echo@b")
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
    assert_eq!(h.backlog("echo@b").await, (0, 0));

    // The caller timed its calls (not its tells), by wire name; the callee
    // made none.
    let calls = node_a.transport.call_latency().expect("kept").snapshot();
    let seen: Vec<String> = calls
        .iter()
        .map(|(key, stats)| {
            format!(
                "{} to {}: {} calls, failures {:?}",
                key.wire_name, key.destination, stats.latency.count, stats.failures
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            "test.ping.v1 to echo@b: 2 calls, failures {}",
            "test.refuse.v1 to echo@b: 1 calls, failures {\"remote\": 1}",
            "test.unrouted.v1 to echo@b: 1 calls, failures {\"decode\": 1}",
        ]
    );
    let ping_latency = &calls[0].1.latency;
    assert!(ping_latency.sum_seconds > 0.0 && ping_latency.sum_seconds < 2.0);
    assert!(node_b
        .transport
        .call_latency()
        .is_some_and(|calls| calls.snapshot().is_empty()));
    supervisor_b.shutdown().await;
}

pub async fn serve_with_a_closure<H: Harness>(h: &H) {
    let counter = Arc::new(AtomicU64::new(0));
    let handle = serve(h.node("b", None).await.arc(), "calc@b", counting(&counter))
        .await
        .expect("serves");
    let mailbox = Mailbox::<Ping>::remote(h.node("a", None).await.arc(), "calc@b");
    assert_eq!(mailbox.call(Ping(1), SECOND).await, Ok(2));
    assert_eq!(mailbox.call(Ping(2), SECOND).await, Ok(3));
    assert_eq!(counter.load(Ordering::SeqCst), 2);
    assert_eq!(handle.stats().handled, 2);
    let _ = handle.shutdown().await;
}

pub async fn unacknowledged_message_is_redelivered_to_the_next_owner<H: Harness>(h: &H) {
    let caller = h.node("caller", None).await;

    // Owner 1 takes the message and hangs in its handler...
    let started = Arc::new(Notify::new());
    let signal = Arc::clone(&started);
    let owner1 = serve(
        h.node("owner1", None).await.arc(),
        "work",
        move |_: Ping| {
            signal.notify_one();
            futures::future::pending::<Result<u32, String>>()
        },
    )
    .await
    .expect("serves");

    let mailbox = Mailbox::<Ping>::remote(caller.arc(), "work");
    let call = tokio::spawn(async move { mailbox.call(Ping(1), Duration::from_secs(5)).await });
    tokio::time::timeout(Duration::from_secs(3), started.notified())
        .await
        .expect("owner 1 got the message");
    assert_eq!(
        h.backlog("work").await,
        (1, 0),
        "delivered, not acknowledged"
    );

    // ...and dies before finishing: the message is given back.
    owner1.abort().await;
    wait_for_backlog(h, "work", (0, 1)).await;

    // The next owner gets it and the original caller gets its answer.
    let node2 = h.node("owner2", None).await;
    let counter = Arc::new(AtomicU64::new(0));
    let owner2 = serve(node2.arc(), "work", counting(&counter))
        .await
        .expect("serves");
    assert_eq!(call.await.expect("caller task"), Ok(2));
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    assert_eq!(node2.stats().redelivered, 1);
    let stats = owner2.shutdown().await;
    assert_eq!(stats.redelivered, 1);
    assert_eq!(h.backlog("work").await, (0, 0));
}

pub async fn raw_subscription_redelivery_counts_attempts<H: Harness>(h: &H) {
    let a = h.node("a", None).await;
    a.transport
        .post(
            "jobs",
            Envelope::request("test.ping.v1", "a", None, json!(1)),
        )
        .expect("posted");

    let owner1 = h.node("owner1", None).await;
    let mut sub = owner1
        .transport
        .subscribe("jobs")
        .await
        .expect("subscribes");
    let first = sub.next().await.expect("delivered");
    assert_eq!(first.attempt(), 1);
    assert!(!first.wants_reply());
    drop(first); // not completed...
    drop(sub); // ...and the owner goes away.

    let owner2 = h.node("owner2", None).await;
    let mut sub = owner2
        .transport
        .subscribe("jobs")
        .await
        .expect("subscribes");
    let second = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("in time")
        .expect("redelivered");
    assert_eq!(second.attempt(), 2);
    assert_eq!(second.envelope().body, json!(1));
    second.complete(None).await.expect("acked");
    drop(sub);
    wait_for_backlog(h, "jobs", (0, 0)).await;
    assert_eq!(owner2.stats().redelivered, 1);
}

pub async fn expired_message_is_not_handled<H: Harness>(h: &H) {
    let server = h.node("b", None).await;
    let mailbox = Mailbox::<Ping>::remote(h.node("a", None).await.arc(), "late@b");

    // Nobody owns the destination yet: the caller times out.
    let started = tokio::time::Instant::now();
    assert_eq!(
        mailbox.call(Ping(1), Duration::from_millis(30)).await,
        Err(MailboxError::Timeout)
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(h.backlog("late@b").await, (0, 1));

    // When an owner shows up, the expired request is dropped, not handled.
    let counter = Arc::new(AtomicU64::new(0));
    let handle = serve(server.arc(), "late@b", counting(&counter))
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
    assert_eq!(h.backlog("late@b").await, (0, 0));
}

pub async fn hmac_mismatch_is_dropped_and_counted<H: Harness>(h: &H) {
    let server = h.node("b", key("right")).await;
    let counter = Arc::new(AtomicU64::new(0));
    let handle = serve(server.arc(), "secure@b", counting(&counter))
        .await
        .expect("serves");

    // Wrong secret, and no secret at all: dropped, counted, caller times out.
    let wrong = Mailbox::<Ping>::remote(h.node("x", key("wrong")).await.arc(), "secure@b");
    assert_eq!(
        wrong.call(Ping(1), Duration::from_millis(100)).await,
        Err(MailboxError::Timeout)
    );
    let unsigned = Mailbox::<Ping>::remote(h.node("y", None).await.arc(), "secure@b");
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
    assert_eq!(
        h.backlog("secure@b").await,
        (0, 0),
        "dropped and acknowledged"
    );

    // The right secret works (request and signed reply both verify).
    let good_node = h.node("a", key("right")).await;
    let good = Mailbox::<Ping>::remote(good_node.arc(), "secure@b");
    assert_eq!(good.call(Ping(1), SECOND).await, Ok(2));
    assert_eq!(good_node.stats().reply_hmac_rejected, 0);
    let _ = handle.shutdown().await;

    // Replies are checked too: a keyless responder's replies are rejected by
    // a caller that requires the secret.
    let open = serve(h.node("open", None).await.arc(), "open", counting(&counter))
        .await
        .expect("serves");
    let to_open = Mailbox::<Ping>::remote(good_node.arc(), "open");
    assert_eq!(
        to_open.call(Ping(1), Duration::from_millis(100)).await,
        Err(MailboxError::Timeout)
    );
    assert_eq!(good_node.stats().reply_hmac_rejected, 1);
    let _ = open.shutdown().await;
}

pub async fn placement_routes_between_nodes<H: Harness>(h: &H) {
    // events sharded over [a, b]: "!a:b" → a (index 0), "!room:example.org" → b.
    let config = [("events", vec!["a", "b"])];
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();

    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let transport = h.node(name, None).await.arc();
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
