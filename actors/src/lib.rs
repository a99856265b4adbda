//! `lattice-actors` is Lattice's actor runtime: it knows nothing about Matrix.
//! Work is done by *actors* (state plus a serial message loop) that code
//! reaches only through a [`Mailbox<M>`], a cloneable handle that hides
//! whether the actor runs in this process or in another one that shares the
//! same broker. A [`Supervisor`] runs the local actors and restarts them when
//! they fail; a [`Transport`] carries [`Envelope`]s between processes and an
//! [`Endpoint`] exposes local actors (or plain async handlers) at a
//! destination address; a [`Placement`] decides, once, from configuration,
//! which instance runs which actor for which shard key. Nothing is global:
//! every supervisor, transport and bus is a value, so a test can run several
//! "nodes" side by side in one process.
//!
//! # Pieces
//!
//! * [`RemoteMessage`]: a serialisable message with a reply type and a
//!   versioned wire name (`"events.persist.v1"`).
//! * [`Actor`] / [`Handler<M>`]: an actor struct implements `Handler<M>` for
//!   each message it accepts (`async fn handle(&mut self, msg, ctx)`), and
//!   [`Actor::observe`] for a JSON snapshot of its counters and positions.
//! * [`Supervisor`]: `start(name, factory)` returns an [`Addr<A>`]; from it,
//!   [`Addr::mailbox`] gives a [`Mailbox<M>`]. Panics (or a failed
//!   [`Actor::started`], or [`Context::restart`]) restart the actor with an
//!   exponential [`Backoff`]; restarts are counted and logged;
//!   [`Supervisor::observe_all`] returns every actor's snapshot and restart
//!   count; [`Supervisor::shutdown`] stops everything and waits.
//! * [`Mailbox<M>`]: `call(msg, deadline)` and `tell(msg)`, local or remote,
//!   one error type, [`MailboxError`]. Remote calls are timed into their
//!   transport's [`CallLatency`], per wire name and destination.
//! * [`Transport`]: object-safe, in terms of destinations and envelopes
//!   (`send` for request/reply, `post` for fire-and-forget, `subscribe` to
//!   own a destination). [`RedisTransport`] is the real one (a Redis Stream
//!   per destination read through a consumer group, a reply list per
//!   process; see [`transport::redis`]); [`InMemoryTransport`] (over an
//!   [`InMemoryBus`]) implements the same at-least-once, deadline and HMAC
//!   semantics inside one process, for tests.
//! * [`Endpoint`] / [`serve`]: the receiving side; decode by wire name, run
//!   the handler, reply, and only then acknowledge.
//! * [`Placement`]: kind + shard key → [`Location::Local`] or
//!   [`Location::Remote`], with Synapse's SHA-256 sharding rule
//!   ([`shard_index`]).
//!
//! # Why tokio tasks and not actix actors
//!
//! An actor here is a tokio task reading an unbounded mpsc inbox of
//! type-erased jobs (the workspace does not depend on the `actix` actor
//! crate; actix-web serves HTTP only). That choice makes the three hard
//! requirements simple:
//!
//! * **Handles survive restarts.** The supervisor's per-actor task owns the
//!   inbox *receiver* for the actor's whole life and lends it (`&mut`) to
//!   each incarnation; an incarnation runs under `catch_unwind`, so a panic
//!   drops the actor value but never the receiver. Every sender handed out
//!   before the crash stays connected. With actix, a restarted actor gets a
//!   new context and address unless one builds on its `Supervised` machinery,
//!   which is tied to the actix system/arbiter model rather than to plain
//!   tokio.
//! * **Async handlers with `&mut self`.** `Handler::handle` is an ordinary
//!   `async fn` that may hold `&mut self` across `.await` (a database round
//!   trip in the middle of a state update); actix needs `ResponseActFuture`
//!   and `wrap_future` for that.
//! * **Observe.** A separate control channel, polled with priority between
//!   messages, lets the supervisor ask any actor for its snapshot without
//!   knowing its type, even when its inbox is long.
//!
//! Messages are processed one at a time per actor, in arrival order. The
//! inbox is unbounded so that [`Mailbox::tell`] never blocks or drops;
//! backpressure comes from callers awaiting [`Mailbox::call`] replies, and
//! queue lengths are visible in snapshots.
//!
//! # Deadlines and failures
//!
//! Every call carries a deadline. Locally it is a tokio [`Instant`]
//! (so tests can use `tokio::time::pause()`); remotely it travels as absolute
//! wall-clock milliseconds. Either way the caller waits at most that long
//! ([`MailboxError::Timeout`]), and a message whose deadline passed before
//! its actor got to it is dropped unhandled. A handler's `Err(text)` arrives
//! as [`MailboxError::Remote`] in both cases; a handler that panics fails
//! its call with `Remote` too and its incarnation is restarted.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use lattice_actors::{Actor, Context, Handler, RemoteMessage, Supervisor};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add(u64);
//! impl RemoteMessage for Add {
//!     type Reply = u64;
//!     const WIRE_NAME: &'static str = "example.add.v1";
//! }
//!
//! #[derive(Default)]
//! struct Counter { total: u64 }
//! impl Actor for Counter {
//!     fn observe(&self) -> serde_json::Value { serde_json::json!({ "total": self.total }) }
//! }
//! impl Handler<Add> for Counter {
//!     async fn handle(&mut self, Add(n): Add, _ctx: &mut Context) -> Result<u64, String> {
//!         self.total += n;
//!         Ok(self.total)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let supervisor = Supervisor::new();
//! let addr = supervisor.start("counter", Counter::default)?;
//! let mailbox = addr.mailbox::<Add>();
//! assert_eq!(mailbox.call(Add(2), Duration::from_secs(1)).await?, 2);
//! assert_eq!(mailbox.call(Add(3), Duration::from_secs(1)).await?, 5);
//! let snapshot = supervisor.observe("counter").await.ok_or("no such actor")?;
//! assert_eq!(snapshot.state, Some(serde_json::json!({ "total": 5 })));
//! assert_eq!(snapshot.restarts, 0);
//! supervisor.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! [`Instant`]: tokio::time::Instant

pub mod actor;
pub mod auth;
pub mod endpoint;
pub mod envelope;
pub mod latency;
pub mod mailbox;
pub mod message;
pub mod placement;
pub mod supervisor;
pub mod transport;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use actor::{Actor, ActorStatus, Addr, Context, Handler};
pub use auth::{AuthError, HmacKey};
pub use endpoint::{serve, Endpoint, EndpointStats, ServeHandle};
pub use envelope::{Envelope, ReplyBody, ReplyErrorKind};
pub use latency::{CallKey, CallLatency, CallStats, Histogram, CALL_LATENCY_BUCKETS};
pub use mailbox::{Mailbox, MailboxError};
pub use message::{BoxFuture, RemoteMessage};
pub use placement::{shard_index, Location, Placement, PlacementError};
pub use supervisor::{
    ActorSnapshot, Backoff, BackoffConfig, Supervisor, SupervisorConfig, SupervisorError,
    SupervisorSnapshot,
};
pub use transport::memory::{InMemoryBus, InMemoryTransport};
pub use transport::redis::{
    Backlog, RedisTransport, RedisTransportConfig, RedisTransportError, RedisTransportStats,
    DEFAULT_REPLAY_CAPACITY, DEFAULT_REPLAY_WINDOW,
};
pub use transport::{
    Acknowledge, Delivery, Subscription, Transport, TransportError, TransportStats,
};

/// Lock a mutex, recovering the data if a panicking thread poisoned it (the
/// state guarded here stays consistent under panics: counters and queues).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
