//! Local actors: the [`Actor`] and [`Handler`] traits, the per-message
//! [`Context`], and the typed local address [`Addr`].
//!
//! An actor is a plain struct owned by one tokio task (its current
//! *incarnation*). It receives work through an unbounded inbox of type-erased
//! jobs: each job carries one message, the deadline of whoever sent it and a
//! oneshot for the reply, and knows how to run `Handler<M>::handle` on the
//! actor. Type erasure is what lets one inbox carry several message types
//! (an actor implements `Handler<M>` once per message it accepts) while a
//! [`Mailbox<M>`](crate::Mailbox) stays generic only over the message.
//!
//! Inbox *receivers* are owned by the [`Supervisor`](crate::Supervisor) and
//! lent to each incarnation, so an [`Addr`] (and every mailbox made from it)
//! keeps working across restarts.

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::mailbox::{LocalTarget, Mailbox, MailboxError};
use crate::message::{BoxFuture, RemoteMessage};

/// State and lifecycle of a local actor.
///
/// Every method has a default: an empty `impl Actor for X {}` is a valid
/// actor that reports `null` when observed.
///
/// Futures returned by the lifecycle hooks must be `Send` because incarnations
/// run on the multi-threaded tokio runtime; writing them as `async fn` in the
/// impl is fine as long as nothing non-`Send` is held across an `.await`.
pub trait Actor: Send + 'static {
    /// Runs once per incarnation before any message is handled: load state,
    /// open connections. An `Err` fails the incarnation and the supervisor
    /// restarts it after a backoff; queued messages wait in the inbox.
    fn started(
        &mut self,
        ctx: &mut Context,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs when the incarnation ends in an orderly way (shutdown, or a
    /// restart requested through [`Context::restart`]); not after a panic.
    fn stopped(&mut self, ctx: &mut Context) -> impl std::future::Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }

    /// A serialisable snapshot for tests and the admin API: counters,
    /// stream positions, cache sizes. Called between messages, never while a
    /// handler runs.
    fn observe(&self) -> Value {
        Value::Null
    }
}

/// An actor that accepts message `M`.
pub trait Handler<M: RemoteMessage>: Actor {
    /// Handle one message. `Err(text)` reaches the caller as
    /// [`MailboxError::Remote`], exactly as it would from another process.
    /// A panic fails the incarnation (the caller gets `Remote` too) and the
    /// supervisor restarts the actor.
    fn handle(
        &mut self,
        msg: M,
        ctx: &mut Context,
    ) -> impl std::future::Future<Output = Result<M::Reply, String>> + Send;

    /// How many queued messages of this type [`Handler::handle_batch`] takes
    /// at once. 1 (the default) means every message goes to `handle` alone.
    const BATCH_LIMIT: usize = 1;

    /// Handle several messages of this type that were waiting in the inbox
    /// together, replying to each in order (one reply per message). This is
    /// how a writer commits concurrent requests in one transaction (group
    /// commit): the runtime hands over whatever has queued up while the
    /// previous batch ran, up to [`Handler::BATCH_LIMIT`], so batches grow
    /// with load and a lone message is never delayed.
    fn handle_batch(
        &mut self,
        msgs: Vec<M>,
        ctx: &mut Context,
    ) -> impl std::future::Future<Output = Vec<Result<M::Reply, String>>> + Send {
        async move {
            let mut replies = Vec::with_capacity(msgs.len());
            for msg in msgs {
                replies.push(self.handle(msg, ctx).await);
            }
            replies
        }
    }
}

/// Per-incarnation context handed to handlers and lifecycle hooks.
#[derive(Debug)]
pub struct Context {
    name: Arc<str>,
    incarnation: u64,
    restart_requested: Option<String>,
}

impl Context {
    pub(crate) fn new(name: Arc<str>, incarnation: u64) -> Self {
        Self {
            name,
            incarnation,
            restart_requested: None,
        }
    }

    /// The actor's name in its supervisor.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 1 for the first incarnation, incremented on each restart.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Ask the supervisor to end this incarnation after the current message
    /// and start a fresh one (with backoff), e.g. when a connection the actor
    /// holds is broken. Counted as a restart, like a panic.
    pub fn restart(&mut self, reason: impl Into<String>) {
        self.restart_requested = Some(reason.into());
    }

    pub(crate) fn take_restart(&mut self) -> Option<String> {
        self.restart_requested.take()
    }
}

/// Lifecycle state reported in snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    /// Constructing the actor or running [`Actor::started`].
    Starting,
    /// Handling messages.
    Running,
    /// Failed; waiting for the backoff before the next incarnation.
    BackingOff,
    /// Stopped for good.
    Stopped,
}

/// Counters shared between the supervisor, the running incarnation and every
/// [`Addr`].
#[derive(Debug)]
pub(crate) struct ActorShared {
    pub(crate) name: Arc<str>,
    pub(crate) restarts: AtomicU64,
    pub(crate) incarnation: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) enqueued: AtomicU64,
    pub(crate) dequeued: AtomicU64,
    pub(crate) status: Mutex<ActorStatus>,
    pub(crate) last_failure: Mutex<Option<String>>,
}

impl ActorShared {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            restarts: AtomicU64::new(0),
            incarnation: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            enqueued: AtomicU64::new(0),
            dequeued: AtomicU64::new(0),
            status: Mutex::new(ActorStatus::Starting),
            last_failure: Mutex::new(None),
        }
    }

    pub(crate) fn set_status(&self, status: ActorStatus) {
        *crate::lock(&self.status) = status;
    }

    pub(crate) fn status(&self) -> ActorStatus {
        *crate::lock(&self.status)
    }

    pub(crate) fn queued(&self) -> u64 {
        self.enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(self.dequeued.load(Ordering::Relaxed))
    }
}

/// One unit of work in an actor's inbox.
pub(crate) struct Job<A> {
    pub(crate) deadline: Option<Instant>,
    pub(crate) work: Box<dyn Runnable<A>>,
}

/// A type-erased message plus its reply channel.
pub(crate) trait Runnable<A>: Send {
    /// Handle the message on `actor` and send the reply.
    fn run<'a>(self: Box<Self>, actor: &'a mut A, ctx: &'a mut Context) -> BoxFuture<'a, ()>;
    /// The deadline passed before the actor got to it: answer `Timeout`.
    fn expire(self: Box<Self>);
    /// Handle this job together with the jobs of the same message type that
    /// wait in `inbox` (up to the handler's batch limit). Returns the first
    /// job of another type met on the way, which must run next, and how
    /// many jobs were handled.
    fn run_batch<'a>(
        self: Box<Self>,
        actor: &'a mut A,
        ctx: &'a mut Context,
        inbox: &'a mut mpsc::UnboundedReceiver<Job<A>>,
        shared: &'a ActorShared,
    ) -> BoxFuture<'a, (Option<Job<A>>, u64)>;
    /// The message's type, so a batch can tell which jobs belong to it.
    fn message_type(&self) -> TypeId;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// The reply half of a call. If dropped without an answer it still tells the
/// caller something: `Closed` if the job was never started (actor stopped),
/// `Remote` if the handler was running (the incarnation panicked).
pub(crate) struct ReplyTo<R> {
    tx: Option<oneshot::Sender<Result<R, MailboxError>>>,
    in_handler: bool,
}

impl<R> ReplyTo<R> {
    pub(crate) fn new(tx: oneshot::Sender<Result<R, MailboxError>>) -> Self {
        Self {
            tx: Some(tx),
            in_handler: false,
        }
    }

    fn send(mut self, result: Result<R, MailboxError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }
}

impl<R> Drop for ReplyTo<R> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let err = if self.in_handler {
                MailboxError::Remote("the actor failed while handling the message".into())
            } else {
                MailboxError::Closed
            };
            let _ = tx.send(Err(err));
        }
    }
}

struct HandlerJob<M: RemoteMessage> {
    msg: M,
    reply: Option<ReplyTo<M::Reply>>,
}

impl<A, M> Runnable<A> for HandlerJob<M>
where
    A: Handler<M>,
    M: RemoteMessage,
{
    fn run<'a>(self: Box<Self>, actor: &'a mut A, ctx: &'a mut Context) -> BoxFuture<'a, ()> {
        let HandlerJob { msg, mut reply } = *self;
        if let Some(r) = reply.as_mut() {
            r.in_handler = true;
        }
        Box::pin(async move {
            let result = actor.handle(msg, ctx).await;
            match reply {
                Some(reply) => reply.send(result.map_err(MailboxError::Remote)),
                None => {
                    if let Err(e) = result {
                        tracing::warn!(actor = ctx.name(), wire_name = M::WIRE_NAME, error = %e, "told message failed");
                    }
                }
            }
        })
    }

    fn expire(self: Box<Self>) {
        if let Some(reply) = self.reply {
            reply.send(Err(MailboxError::Timeout));
        }
    }

    fn run_batch<'a>(
        self: Box<Self>,
        actor: &'a mut A,
        ctx: &'a mut Context,
        inbox: &'a mut mpsc::UnboundedReceiver<Job<A>>,
        shared: &'a ActorShared,
    ) -> BoxFuture<'a, (Option<Job<A>>, u64)> {
        if <A as Handler<M>>::BATCH_LIMIT <= 1 {
            return Box::pin(async move {
                self.run(actor, ctx).await;
                (None, 1)
            });
        }
        let mut batch = vec![*self];
        let mut next = None;
        while batch.len() < <A as Handler<M>>::BATCH_LIMIT {
            let Ok(job) = inbox.try_recv() else { break };
            shared.dequeued.fetch_add(1, Ordering::Relaxed);
            if job.deadline.is_some_and(|d| Instant::now() >= d) {
                shared.expired.fetch_add(1, Ordering::Relaxed);
                job.work.expire();
                continue;
            }
            if job.work.message_type() != TypeId::of::<M>() {
                next = Some(job);
                break;
            }
            match job.work.into_any().downcast::<HandlerJob<M>>() {
                Ok(typed) => batch.push(*typed),
                Err(_) => unreachable!("a job whose message type is M is a HandlerJob<M>"),
            }
        }
        Box::pin(async move {
            let count = batch.len() as u64;
            let mut msgs = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for HandlerJob { msg, mut reply } in batch {
                if let Some(r) = reply.as_mut() {
                    r.in_handler = true;
                }
                msgs.push(msg);
                replies.push(reply);
            }
            let results = actor.handle_batch(msgs, ctx).await;
            let mut results = results.into_iter();
            for reply in replies {
                let result = results
                    .next()
                    .unwrap_or_else(|| Err("the handler gave fewer replies than messages".into()));
                match reply {
                    Some(reply) => reply.send(result.map_err(MailboxError::Remote)),
                    None => {
                        if let Err(e) = result {
                            tracing::warn!(actor = ctx.name(), wire_name = M::WIRE_NAME, error = %e, "told message failed");
                        }
                    }
                }
            }
            (next, count)
        })
    }

    fn message_type(&self) -> TypeId {
        TypeId::of::<M>()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// Typed address of a local actor. Cheap to clone; valid across restarts.
pub struct Addr<A: Actor> {
    tx: mpsc::UnboundedSender<Job<A>>,
    shared: Arc<ActorShared>,
}

impl<A: Actor> Clone for Addr<A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<A: Actor> std::fmt::Debug for Addr<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addr")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<A: Actor> Addr<A> {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Job<A>>, shared: Arc<ActorShared>) -> Self {
        Self { tx, shared }
    }

    /// The actor's name in its supervisor.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A location-transparent mailbox for message `M`.
    pub fn mailbox<M>(&self) -> Mailbox<M>
    where
        A: Handler<M>,
        M: RemoteMessage,
    {
        Mailbox::local(self.clone())
    }

    /// Call directly (same semantics as [`Mailbox::call`]).
    pub async fn call<M>(
        &self,
        msg: M,
        deadline: std::time::Duration,
    ) -> Result<M::Reply, MailboxError>
    where
        A: Handler<M>,
        M: RemoteMessage,
    {
        crate::mailbox::call_local(self, msg, deadline).await
    }

    /// Fire-and-forget (same semantics as [`Mailbox::tell`]).
    pub fn tell<M>(&self, msg: M) -> Result<(), MailboxError>
    where
        A: Handler<M>,
        M: RemoteMessage,
    {
        LocalTarget::<M>::enqueue(self, msg, None, None)
    }

    /// Whether the actor has stopped for good (its inbox is closed).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl<A, M> LocalTarget<M> for Addr<A>
where
    A: Handler<M>,
    M: RemoteMessage,
{
    fn enqueue(
        &self,
        msg: M,
        reply: Option<oneshot::Sender<Result<M::Reply, MailboxError>>>,
        deadline: Option<Instant>,
    ) -> Result<(), MailboxError> {
        let job = Job {
            deadline,
            work: Box::new(HandlerJob {
                msg,
                reply: reply.map(ReplyTo::new),
            }),
        };
        match self.tx.send(job) {
            Ok(()) => {
                self.shared.enqueued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::SendError(job)) => {
                // Dropping the job answers the caller with Closed; make sure
                // the error is also returned synchronously.
                drop(job);
                Err(MailboxError::Closed)
            }
        }
    }

    fn describe(&self) -> String {
        format!("local:{}", self.shared.name)
    }
}
