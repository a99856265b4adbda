//! Local actors under a supervisor: calls, deadlines, restarts, observe,
//! shutdown. Time is paused where timing matters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_actors::{
    Actor, ActorStatus, Addr, BackoffConfig, Context, Handler, MailboxError, RemoteMessage,
    Supervisor, SupervisorConfig, SupervisorError,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct Ping(u32);
impl RemoteMessage for Ping {
    type Reply = u32;
    const WIRE_NAME: &'static str = "test.ping.v1";
}

#[derive(Serialize, Deserialize)]
struct Sleep(u64);
impl RemoteMessage for Sleep {
    type Reply = ();
    const WIRE_NAME: &'static str = "test.sleep.v1";
}

#[derive(Serialize, Deserialize)]
struct Boom;
impl RemoteMessage for Boom {
    type Reply = ();
    const WIRE_NAME: &'static str = "test.boom.v1";
}

#[derive(Serialize, Deserialize)]
struct Refuse;
impl RemoteMessage for Refuse {
    type Reply = ();
    const WIRE_NAME: &'static str = "test.refuse.v1";
}

#[derive(Serialize, Deserialize)]
struct Reconnect;
impl RemoteMessage for Reconnect {
    type Reply = ();
    const WIRE_NAME: &'static str = "test.reconnect.v1";
}

#[derive(Default)]
struct Probe {
    stopped: AtomicU64,
}

struct TestActor {
    pings: u64,
    incarnation: u64,
    probe: Arc<Probe>,
}

impl TestActor {
    fn factory(probe: Arc<Probe>) -> impl Fn() -> TestActor + Send + Sync + 'static {
        move || TestActor {
            pings: 0,
            incarnation: 0,
            probe: Arc::clone(&probe),
        }
    }
}

impl Actor for TestActor {
    async fn started(&mut self, ctx: &mut Context) -> Result<(), String> {
        self.incarnation = ctx.incarnation();
        Ok(())
    }

    async fn stopped(&mut self, _ctx: &mut Context) {
        self.probe.stopped.fetch_add(1, Ordering::SeqCst);
    }

    fn observe(&self) -> Value {
        json!({ "pings": self.pings, "incarnation": self.incarnation })
    }
}

impl Handler<Ping> for TestActor {
    async fn handle(&mut self, Ping(n): Ping, _ctx: &mut Context) -> Result<u32, String> {
        self.pings += 1;
        Ok(n + 1)
    }
}

impl Handler<Sleep> for TestActor {
    async fn handle(&mut self, Sleep(ms): Sleep, _ctx: &mut Context) -> Result<(), String> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

impl Handler<Boom> for TestActor {
    async fn handle(&mut self, _msg: Boom, _ctx: &mut Context) -> Result<(), String> {
        panic!("boom requested");
    }
}

impl Handler<Refuse> for TestActor {
    async fn handle(&mut self, _msg: Refuse, _ctx: &mut Context) -> Result<(), String> {
        Err("refused".into())
    }
}

impl Handler<Reconnect> for TestActor {
    async fn handle(&mut self, _msg: Reconnect, ctx: &mut Context) -> Result<(), String> {
        ctx.restart("connection lost");
        Ok(())
    }
}

fn start(supervisor: &Supervisor, name: &str) -> (Addr<TestActor>, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let addr = supervisor
        .start(name, TestActor::factory(Arc::clone(&probe)))
        .expect("actor starts");
    (addr, probe)
}

#[tokio::test]
async fn local_call_and_reply() {
    let supervisor = Supervisor::new();
    let (addr, _) = start(&supervisor, "t");
    let ping = addr.mailbox::<Ping>();
    assert!(ping.is_local());

    assert_eq!(ping.call(Ping(41), SECOND).await, Ok(42));
    assert_eq!(addr.call(Ping(1), SECOND).await, Ok(2));

    // Handler errors arrive as Remote, like from another process.
    assert_eq!(
        addr.call(Refuse, SECOND).await,
        Err(MailboxError::Remote("refused".into()))
    );

    // Tells are handled in order before a later call.
    for i in 0..5 {
        ping.tell(Ping(i)).expect("queued");
    }
    let clone = ping.clone();
    assert_eq!(clone.call(Ping(0), SECOND).await, Ok(1));

    let snapshot = supervisor.observe("t").await.expect("exists");
    assert_eq!(
        snapshot.state,
        Some(json!({ "pings": 8, "incarnation": 1 }))
    );
    assert_eq!(snapshot.status, ActorStatus::Running);
    assert_eq!(snapshot.handled, 9);
    assert_eq!(snapshot.restarts, 0);
    assert_eq!(snapshot.queued, 0);
    supervisor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn deadline_timeout_and_expired_messages_are_skipped() {
    let supervisor = Supervisor::new();
    let (addr, _) = start(&supervisor, "t");

    let began = Instant::now();
    // The actor is busy for 10 s; the caller gives up after 100 ms.
    let slow = addr.call(Sleep(10_000), Duration::from_millis(100)).await;
    assert_eq!(slow, Err(MailboxError::Timeout));
    assert_eq!(began.elapsed(), Duration::from_millis(100));

    // Queued behind the sleeper with a short deadline: times out and is
    // never handled.
    assert_eq!(
        addr.call(Ping(1), Duration::from_millis(50)).await,
        Err(MailboxError::Timeout)
    );

    // A generous deadline waits for the sleeper to finish.
    assert_eq!(addr.call(Ping(2), Duration::from_secs(60)).await, Ok(3));
    let snapshot = supervisor.observe("t").await.expect("exists");
    assert_eq!(
        snapshot.expired, 1,
        "the expired ping was dropped unhandled"
    );
    assert_eq!(
        snapshot.state,
        Some(json!({ "pings": 1, "incarnation": 1 }))
    );

    // Zero deadline: immediate timeout.
    assert_eq!(
        addr.call(Ping(3), Duration::ZERO).await,
        Err(MailboxError::Timeout)
    );
    supervisor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn panicking_actor_is_restarted_and_old_handle_still_works() {
    let supervisor = Supervisor::new();
    let (addr, _) = start(&supervisor, "t");
    let ping = addr.mailbox::<Ping>();
    let boom = addr.mailbox::<Boom>();
    assert_eq!(ping.call(Ping(1), SECOND).await, Ok(2));

    // The call that panics fails with Remote.
    match boom.call(Boom, SECOND).await {
        Err(MailboxError::Remote(text)) => assert!(text.contains("failed"), "{text}"),
        other => panic!("unexpected {other:?}"),
    }
    // Queued during the backoff, handled by the next incarnation through the
    // very same handle.
    ping.tell(Ping(9)).expect("inbox kept across the crash");
    assert_eq!(ping.call(Ping(5), SECOND).await, Ok(6));

    assert_eq!(supervisor.restarts("t"), Some(1));
    let snapshot = supervisor.observe("t").await.expect("exists");
    assert_eq!(snapshot.restarts, 1);
    assert_eq!(snapshot.incarnation, 2);
    assert_eq!(snapshot.status, ActorStatus::Running);
    assert!(
        snapshot
            .last_failure
            .as_deref()
            .is_some_and(|f| f.contains("boom requested")),
        "{:?}",
        snapshot.last_failure
    );
    // Fresh state from the factory: the ping before the crash is gone.
    assert_eq!(
        snapshot.state,
        Some(json!({ "pings": 2, "incarnation": 2 }))
    );

    // And it keeps working after a second crash too.
    assert!(boom.call(Boom, SECOND).await.is_err());
    assert_eq!(ping.call(Ping(7), SECOND).await, Ok(8));
    assert_eq!(supervisor.restarts("t"), Some(2));
    supervisor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restart_requested_by_handler_is_counted() {
    let supervisor = Supervisor::new();
    let (addr, probe) = start(&supervisor, "t");
    assert_eq!(addr.call(Reconnect, SECOND).await, Ok(()));
    assert_eq!(addr.call(Ping(0), SECOND).await, Ok(1));
    assert_eq!(supervisor.restarts("t"), Some(1));
    // An orderly restart runs the `stopped` hook.
    assert_eq!(probe.stopped.load(Ordering::SeqCst), 1);
    let snapshot = supervisor.observe("t").await.expect("exists");
    assert_eq!(
        snapshot.last_failure.as_deref(),
        Some("restart requested: connection lost")
    );
    supervisor.shutdown().await;
}

/// Fails in `started` a given number of times, recording when each
/// incarnation was built.
struct Flaky;

impl Actor for Flaky {
    async fn started(&mut self, ctx: &mut Context) -> Result<(), String> {
        if ctx.incarnation() <= 6 {
            Err(format!("database down (attempt {})", ctx.incarnation()))
        } else {
            Ok(())
        }
    }
}

impl Handler<Ping> for Flaky {
    async fn handle(&mut self, Ping(n): Ping, _ctx: &mut Context) -> Result<u32, String> {
        Ok(n)
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_between_restarts() {
    let supervisor = Supervisor::with_config(SupervisorConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(200),
            multiplier: 2,
            reset_after: Duration::from_secs(30),
        },
        ..SupervisorConfig::default()
    });
    let built: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = Arc::clone(&built);
    let addr = supervisor
        .start("flaky", move || {
            log.lock().expect("test mutex").push(Instant::now());
            Flaky
        })
        .expect("starts");

    // The call waits in the inbox through six failed starts.
    let began = Instant::now();
    assert_eq!(addr.call(Ping(7), Duration::from_secs(10)).await, Ok(7));
    assert_eq!(supervisor.restarts("flaky"), Some(6));

    let times = built.lock().expect("test mutex").clone();
    assert_eq!(times.len(), 7);
    let gaps: Vec<u64> = times
        .windows(2)
        .map(|w| u64::try_from((w[1] - w[0]).as_millis()).unwrap_or(u64::MAX))
        .collect();
    assert_eq!(gaps, [10, 20, 40, 80, 160, 200], "doubling, capped at max");
    assert_eq!(began.elapsed(), Duration::from_millis(510));

    let snapshot = supervisor.observe("flaky").await.expect("exists");
    assert_eq!(
        snapshot.last_failure.as_deref(),
        Some("start failed: database down (attempt 6)")
    );
    supervisor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn observe_all_reports_every_actor_even_while_backing_off() {
    let supervisor = Supervisor::with_config(SupervisorConfig {
        backoff: BackoffConfig {
            initial: Duration::from_secs(5),
            ..BackoffConfig::default()
        },
        ..SupervisorConfig::default()
    });
    let (a, _) = start(&supervisor, "a");
    let (b, _) = start(&supervisor, "b");
    assert_eq!(a.call(Ping(0), SECOND).await, Ok(1));
    assert!(b.call(Boom, SECOND).await.is_err());

    let all = supervisor.observe_all().await;
    let names: Vec<&str> = all.actors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let a_snap = all.get("a").expect("a");
    assert_eq!(a_snap.state, Some(json!({ "pings": 1, "incarnation": 1 })));
    let b_snap = all.get("b").expect("b");
    assert_eq!(b_snap.status, ActorStatus::BackingOff);
    assert_eq!(b_snap.restarts, 1);
    assert_eq!(b_snap.state, None);
    // The whole snapshot serialises for the admin API.
    let json = serde_json::to_value(&all).expect("serialises");
    assert_eq!(json["actors"][1]["status"], "backing_off");

    assert_eq!(
        supervisor
            .addr::<TestActor>("a")
            .map(|x| x.name().to_owned()),
        Some("a".into())
    );
    assert!(supervisor.addr::<Flaky>("a").is_none(), "wrong type");
    supervisor.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_everything_and_waits() {
    let supervisor = Supervisor::new();
    let (a, probe_a) = start(&supervisor, "a");
    let (b, probe_b) = start(&supervisor, "b");
    assert_eq!(a.call(Ping(0), SECOND).await, Ok(1));
    assert_eq!(b.call(Ping(0), SECOND).await, Ok(1));
    assert_eq!(
        supervisor
            .start("a", TestActor::factory(Arc::default()))
            .err(),
        Some(SupervisorError::DuplicateName("a".into()))
    );

    supervisor.shutdown().await;
    assert_eq!(probe_a.stopped.load(Ordering::SeqCst), 1);
    assert_eq!(probe_b.stopped.load(Ordering::SeqCst), 1);
    assert!(a.is_closed());
    assert_eq!(a.call(Ping(0), SECOND).await, Err(MailboxError::Closed));
    assert_eq!(a.mailbox::<Ping>().tell(Ping(0)), Err(MailboxError::Closed));
    let all = supervisor.observe_all().await;
    assert!(all.actors.iter().all(|s| s.status == ActorStatus::Stopped));
    assert_eq!(
        supervisor
            .start("c", TestActor::factory(Arc::default()))
            .err(),
        Some(SupervisorError::ShuttingDown)
    );
    // Idempotent.
    supervisor.shutdown().await;
}

#[tokio::test]
async fn independent_supervisors_in_one_process() {
    let node1 = Supervisor::new();
    let node2 = Supervisor::new();
    let (a1, _) = start(&node1, "same-name");
    let (a2, _) = start(&node2, "same-name");
    assert_eq!(a1.call(Ping(1), SECOND).await, Ok(2));
    node1.shutdown().await;
    assert_eq!(a2.call(Ping(1), SECOND).await, Ok(2), "node2 unaffected");
    drop(node2);
    // Dropping the last handle of a supervisor stops its actors.
    tokio::time::timeout(SECOND, async {
        while !a2.is_closed() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("actor stops once its supervisor is dropped");
}

#[test]
fn start_outside_a_runtime_fails() {
    let supervisor = Supervisor::new();
    assert_eq!(
        supervisor
            .start("x", TestActor::factory(Arc::default()))
            .err(),
        Some(SupervisorError::NoRuntime)
    );
}

/// Records the size of every batch it is handed.
#[derive(Default)]
struct Batcher {
    batches: Arc<Mutex<Vec<Vec<u32>>>>,
}

impl Actor for Batcher {}

impl Handler<Ping> for Batcher {
    const BATCH_LIMIT: usize = 3;

    async fn handle(&mut self, Ping(n): Ping, _ctx: &mut Context) -> Result<u32, String> {
        Ok(n)
    }

    async fn handle_batch(
        &mut self,
        msgs: Vec<Ping>,
        _ctx: &mut Context,
    ) -> Vec<Result<u32, String>> {
        let numbers: Vec<u32> = msgs.iter().map(|Ping(n)| *n).collect();
        if let Ok(mut batches) = self.batches.lock() {
            batches.push(numbers.clone());
        }
        numbers.into_iter().map(|n| Ok(n * 10)).collect()
    }
}

impl Handler<Sleep> for Batcher {
    async fn handle(&mut self, Sleep(ms): Sleep, _ctx: &mut Context) -> Result<(), String> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn queued_messages_of_one_type_are_handled_in_batches_in_order() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let supervisor = Supervisor::new();
    let recorded = Arc::clone(&batches);
    let addr = supervisor
        .start("batcher", move || Batcher {
            batches: Arc::clone(&recorded),
        })
        .unwrap_or_else(|e| panic!("start: {e}"));
    // Keep the actor busy so the next messages queue up behind it.
    let busy = addr.mailbox::<Sleep>();
    let sleeping = tokio::spawn(async move { busy.call(Sleep(100), SECOND).await });
    tokio::task::yield_now().await;
    let mut calls = Vec::new();
    for n in 1..=5u32 {
        let mailbox = addr.mailbox::<Ping>();
        calls.push(tokio::spawn(
            async move { mailbox.call(Ping(n), SECOND).await },
        ));
        tokio::task::yield_now().await;
        if n == 4 {
            // A message of another type ends the batch it would interrupt.
            let _ = addr.tell(Sleep(1));
        }
    }
    let _ = sleeping.await;
    let mut replies = Vec::new();
    for call in calls {
        replies.push(call.await.ok().and_then(Result::ok));
    }
    assert_eq!(
        replies,
        vec![Some(10), Some(20), Some(30), Some(40), Some(50)]
    );
    let batches = batches.lock().map(|b| b.clone()).unwrap_or_default();
    assert_eq!(batches, vec![vec![1, 2, 3], vec![4], vec![5]]);
    supervisor.shutdown().await;
}
