//! The [`Transport`] abstraction: how envelopes move between processes.
//!
//! A transport offers three operations, all in terms of opaque destination
//! strings and [`Envelope`]s:
//!
//! * [`Transport::send`]: queue a request for a destination and wait for
//!   the reply envelope (the caller bounds the wait with its deadline and
//!   drops the future on timeout; the transport must then forget the pending
//!   reply);
//! * [`Transport::post`]: queue a request nobody waits a reply for, in
//!   order, without blocking;
//! * [`Transport::subscribe`]: become an owner of a destination and receive
//!   its [`Delivery`]s.
//!
//! Contract every implementation keeps ([`memory::InMemoryTransport`] and
//! [`redis::RedisTransport`]; `tests/suite` runs the same behavioural tests
//! against both):
//!
//! * **Per-destination queue, at-least-once.** A delivery stays pending until
//!   [`Delivery::complete`] acknowledges it. If its subscription goes away
//!   first (process crash, endpoint shut down mid-message), the message is
//!   delivered again to the next owner of the destination, with
//!   [`Delivery::attempt`] incremented. Handlers must be idempotent.
//! * **Deadlines.** An envelope whose `deadline_unix_ms` has passed when it
//!   would be delivered is dropped (acknowledged, counted), never handed to a
//!   handler; its caller has already given up with `Timeout`.
//! * **Authentication.** With a shared secret configured, the transport signs
//!   what it sends ([`HmacKey::sign`](crate::auth::HmacKey::sign)) and drops
//!   and counts any received envelope, request or reply, whose HMAC does not
//!   verify. Subscriptions therefore only ever yield authentic, live envelopes.
//!   Where others can write to the medium (Redis), the transport also drops
//!   and counts copies of requests it already accepted (replays), telling
//!   them from redeliveries (see [`redis`]).
//! * **Replies** are routed back to the request's `sender_instance` and
//!   matched by `request_id`; the transport signs them like any envelope.
//!
//! Redis-specific details (stream keys, consumer groups, requeueing of a
//! dead consumer's pending entries, the per-process reply list) belong in
//! [`redis`]; nothing in this trait names them.

pub mod memory;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::Envelope;
use crate::latency::CallLatency;
use crate::message::BoxFuture;

/// The counters every transport keeps (one transport value = one
/// simulated or real process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportStats {
    /// Requests sent expecting a reply.
    pub sent: u64,
    /// Requests posted without reply.
    pub posted: u64,
    /// Authentic replies received.
    pub replies_received: u64,
    /// Deliveries handed to this node's subscriptions.
    pub delivered: u64,
    /// Of those, deliveries after a previous owner vanished.
    pub redelivered: u64,
    /// Deliveries acknowledged by this node.
    pub completed: u64,
    /// Requests dropped by this node because their deadline had passed.
    pub expired: u64,
    /// Requests dropped by this node because their HMAC did not verify.
    pub hmac_rejected: u64,
    /// Replies dropped by this node because their HMAC did not verify.
    pub reply_hmac_rejected: u64,
}

/// The live counters behind [`TransportStats`], shared by both transports.
#[derive(Debug, Default)]
pub(crate) struct TransportCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) posted: AtomicU64,
    pub(crate) replies_received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) hmac_rejected: AtomicU64,
    pub(crate) reply_hmac_rejected: AtomicU64,
}

impl TransportCounters {
    pub(crate) fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            sent: get(&self.sent),
            posted: get(&self.posted),
            replies_received: get(&self.replies_received),
            delivered: get(&self.delivered),
            redelivered: get(&self.redelivered),
            completed: get(&self.completed),
            expired: get(&self.expired),
            hmac_rejected: get(&self.hmac_rejected),
            reply_hmac_rejected: get(&self.reply_hmac_rejected),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Transport-level failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The medium could not be reached (broker down, connection refused).
    #[error("transport unreachable: {0}")]
    Unreachable(String),
    /// This transport has been shut down.
    #[error("transport closed")]
    Closed,
}

/// Moves envelopes between processes. Object safe: held as
/// `Arc<dyn Transport>`.
pub trait Transport: Send + Sync + 'static {
    /// The name of this process's instance; used as `sender_instance` and as
    /// the address replies come back to.
    fn instance(&self) -> &str;

    /// Queue `envelope` for `destination` and resolve with the reply. The
    /// future may be dropped at any time (deadline); the transport must clean
    /// up. It does not resolve while no authentic reply has arrived.
    fn send<'a>(
        &'a self,
        destination: &'a str,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<Envelope, TransportError>>;

    /// Queue `envelope` for `destination` with no reply expected. Never
    /// blocks; envelopes posted from one transport to one destination keep
    /// their order.
    fn post(&self, destination: &str, envelope: Envelope) -> Result<(), TransportError>;

    /// Register as an owner of `destination`. Unacknowledged deliveries of a
    /// previous owner that is gone are delivered to this subscription.
    fn subscribe<'a>(
        &'a self,
        destination: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, TransportError>>;

    /// Counters for tests and the admin API.
    fn observe(&self) -> Value;

    /// Where remote mailboxes calling through this transport record how
    /// long their calls took; `None` if this transport does not keep them.
    fn call_latency(&self) -> Option<&CallLatency> {
        None
    }
}

/// The receiving side of a destination. Dropping it gives back every
/// delivery it handed out that was not completed.
pub trait Subscription: Send {
    /// The next delivery; `None` once the transport is closed. Cancel safe:
    /// dropping the future before it resolves loses nothing.
    fn next(&mut self) -> BoxFuture<'_, Option<Delivery>>;
}

/// How a transport acknowledges one delivery (and routes its reply).
pub trait Acknowledge: Send {
    /// Whether someone waits for a reply (false for posted messages).
    fn wants_reply(&self) -> bool;

    /// Send `reply` (if wanted and given) to the caller, then acknowledge.
    fn complete(
        self: Box<Self>,
        reply: Option<Envelope>,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
}

/// One message handed to an owner of a destination.
pub struct Delivery {
    envelope: Envelope,
    attempt: u32,
    ack: Box<dyn Acknowledge>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("wire_name", &self.envelope.wire_name)
            .field("request_id", &self.envelope.request_id)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Delivery {
    /// Built by transports.
    pub fn new(envelope: Envelope, attempt: u32, ack: Box<dyn Acknowledge>) -> Self {
        Self {
            envelope,
            attempt,
            ack,
        }
    }

    /// The request.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// 1 on first delivery, more when redelivered after an owner vanished.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether a caller waits for a reply.
    pub fn wants_reply(&self) -> bool {
        self.ack.wants_reply()
    }

    /// Reply (if a reply is wanted) and acknowledge. Call only once the
    /// handler has finished: until then the message may be redelivered.
    pub async fn complete(self, reply: Option<Envelope>) -> Result<(), TransportError> {
        self.ack.complete(reply).await
    }
}
