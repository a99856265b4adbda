//! An in-process [`Transport`] with the semantics of the Redis Streams one
//! ([`RedisTransport`](super::redis::RedisTransport)).
//!
//! An [`InMemoryBus`] plays the part of the shared broker (Redis); each
//! simulated process gets its own [`InMemoryTransport`] from it, with its
//! instance name and, optionally, the shared secret. Several "nodes" can thus
//! talk to each other inside one test, each with its own counters.
//!
//! Per destination the bus keeps a FIFO queue and a table of pending
//! (delivered, unacknowledged) messages with the consumer that holds each:
//! the equivalent of a stream plus its consumer group's pending entries list.
//! When a subscription is dropped its pending messages go back to the front
//! of the queue and are delivered again (what `XAUTOCLAIM` by the next owner
//! achieves with Redis: there the entries are re-appended to the
//! stream). Expired and unauthentic envelopes are dropped at
//! delivery time and counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, Notify};

pub use super::TransportStats;
use super::{
    bump, Acknowledge, Delivery, Subscription, Transport, TransportCounters, TransportError,
};
use crate::auth::HmacKey;
use crate::envelope::{now_unix_ms, Envelope};
use crate::latency::CallLatency;
use crate::lock;
use crate::message::BoxFuture;

type ReplyKey = (String, String);

/// The shared medium: a stand-in for the Redis server.
#[derive(Clone, Default)]
pub struct InMemoryBus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for InMemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InMemoryBus")
    }
}

#[derive(Default)]
struct BusInner {
    state: Mutex<BusState>,
    notify: Notify,
}

#[derive(Default)]
struct BusState {
    closed: bool,
    next_msg_id: u64,
    next_consumer_id: u64,
    destinations: HashMap<String, DestQueue>,
    replies: HashMap<ReplyKey, mpsc::UnboundedSender<Envelope>>,
}

#[derive(Default)]
struct DestQueue {
    queue: VecDeque<Queued>,
    pending: BTreeMap<u64, Pending>,
}

#[derive(Clone)]
struct Queued {
    id: u64,
    envelope: Envelope,
    wants_reply: bool,
    attempts: u32,
}

struct Pending {
    consumer: u64,
    msg: Queued,
}

impl BusState {
    fn push(&mut self, destination: &str, envelope: Envelope, wants_reply: bool) {
        self.next_msg_id += 1;
        let msg = Queued {
            id: self.next_msg_id,
            envelope,
            wants_reply,
            attempts: 0,
        };
        self.destinations
            .entry(destination.to_owned())
            .or_default()
            .queue
            .push_back(msg);
    }
}

impl InMemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport for the process named `instance`, without authentication.
    pub fn transport(&self, instance: impl Into<String>) -> InMemoryTransport {
        self.make_transport(instance.into(), None)
    }

    /// A transport for `instance` that signs with and requires `key`.
    pub fn transport_with_key(
        &self,
        instance: impl Into<String>,
        key: HmacKey,
    ) -> InMemoryTransport {
        self.make_transport(instance.into(), Some(key))
    }

    fn make_transport(&self, instance: String, key: Option<HmacKey>) -> InMemoryTransport {
        InMemoryTransport {
            bus: Arc::clone(&self.inner),
            node: Arc::new(Node {
                instance,
                key,
                stats: TransportCounters::default(),
                calls: CallLatency::default(),
            }),
        }
    }

    /// Simulate the broker going away: pending callers and subscriptions end
    /// (`Unreachable` / `None`), further sends fail.
    pub fn close(&self) {
        {
            let mut st = lock(&self.inner.state);
            st.closed = true;
            st.replies.clear();
        }
        self.inner.notify.notify_waiters();
    }

    /// Messages waiting for an owner of `destination`.
    pub fn queued(&self, destination: &str) -> usize {
        lock(&self.inner.state)
            .destinations
            .get(destination)
            .map_or(0, |d| d.queue.len())
    }

    /// Messages of `destination` delivered but not yet acknowledged.
    pub fn pending(&self, destination: &str) -> usize {
        lock(&self.inner.state)
            .destinations
            .get(destination)
            .map_or(0, |d| d.pending.len())
    }
}

struct Node {
    instance: String,
    key: Option<HmacKey>,
    stats: TransportCounters,
    calls: CallLatency,
}

impl Node {
    fn sign(&self, envelope: &mut Envelope) {
        envelope.sender_instance.clone_from(&self.instance);
        if let Some(key) = &self.key {
            key.sign(envelope);
        }
    }

    fn authentic(&self, envelope: &Envelope) -> bool {
        self.key.as_ref().is_none_or(|key| key.verify(envelope))
    }
}

/// One process's connection to an [`InMemoryBus`].
#[derive(Clone)]
pub struct InMemoryTransport {
    bus: Arc<BusInner>,
    node: Arc<Node>,
}

impl std::fmt::Debug for InMemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryTransport")
            .field("instance", &self.node.instance)
            .finish()
    }
}

impl InMemoryTransport {
    /// This node's counters.
    pub fn stats(&self) -> TransportStats {
        self.node.stats.snapshot()
    }

    fn unreachable() -> TransportError {
        TransportError::Unreachable("in-memory bus closed".into())
    }
}

/// Removes the reply route when the caller stops waiting.
struct ReplyGuard<'a> {
    bus: &'a BusInner,
    key: ReplyKey,
}

impl Drop for ReplyGuard<'_> {
    fn drop(&mut self) {
        lock(&self.bus.state).replies.remove(&self.key);
    }
}

impl Transport for InMemoryTransport {
    fn instance(&self) -> &str {
        &self.node.instance
    }

    fn send<'a>(
        &'a self,
        destination: &'a str,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<Envelope, TransportError>> {
        Box::pin(async move {
            let mut envelope = envelope;
            self.node.sign(&mut envelope);
            let key = (self.node.instance.clone(), envelope.request_id.clone());
            let (tx, mut rx) = mpsc::unbounded_channel();
            {
                let mut st = lock(&self.bus.state);
                if st.closed {
                    return Err(Self::unreachable());
                }
                st.replies.insert(key.clone(), tx);
                st.push(destination, envelope, true);
            }
            let _guard = ReplyGuard {
                bus: &self.bus,
                key,
            };
            bump(&self.node.stats.sent);
            self.bus.notify.notify_waiters();
            while let Some(reply) = rx.recv().await {
                if self.node.authentic(&reply) {
                    bump(&self.node.stats.replies_received);
                    return Ok(reply);
                }
                bump(&self.node.stats.reply_hmac_rejected);
                tracing::warn!(
                    instance = %self.node.instance,
                    from = %reply.sender_instance,
                    wire_name = %reply.wire_name,
                    "dropped reply with invalid HMAC"
                );
            }
            Err(Self::unreachable())
        })
    }

    fn post(&self, destination: &str, envelope: Envelope) -> Result<(), TransportError> {
        let mut envelope = envelope;
        self.node.sign(&mut envelope);
        {
            let mut st = lock(&self.bus.state);
            if st.closed {
                return Err(Self::unreachable());
            }
            st.push(destination, envelope, false);
        }
        bump(&self.node.stats.posted);
        self.bus.notify.notify_waiters();
        Ok(())
    }

    fn subscribe<'a>(
        &'a self,
        destination: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, TransportError>> {
        Box::pin(async move {
            let consumer = {
                let mut st = lock(&self.bus.state);
                if st.closed {
                    return Err(Self::unreachable());
                }
                st.next_consumer_id += 1;
                st.destinations.entry(destination.to_owned()).or_default();
                st.next_consumer_id
            };
            tracing::debug!(instance = %self.node.instance, destination, consumer, "subscribed");
            let sub: Box<dyn Subscription> = Box::new(InMemorySubscription {
                bus: Arc::clone(&self.bus),
                node: Arc::clone(&self.node),
                destination: destination.to_owned(),
                consumer,
            });
            Ok(sub)
        })
    }

    fn observe(&self) -> Value {
        serde_json::to_value(self.stats()).unwrap_or(Value::Null)
    }

    fn call_latency(&self) -> Option<&CallLatency> {
        Some(&self.node.calls)
    }
}

struct InMemorySubscription {
    bus: Arc<BusInner>,
    node: Arc<Node>,
    destination: String,
    consumer: u64,
}

enum Dropped {
    Expired(Envelope),
    Unauthentic(Envelope),
}

impl InMemorySubscription {
    /// Pop the next deliverable message, dropping dead ones. `Err(())` when
    /// the bus is closed.
    fn try_take(&self, dropped: &mut Vec<Dropped>) -> Result<Option<Delivery>, ()> {
        let mut st = lock(&self.bus.state);
        if st.closed {
            return Err(());
        }
        let now = now_unix_ms();
        let dq = st.destinations.entry(self.destination.clone()).or_default();
        while let Some(mut msg) = dq.queue.pop_front() {
            if msg.envelope.is_expired_at(now) {
                dropped.push(Dropped::Expired(msg.envelope));
                continue;
            }
            if !self.node.authentic(&msg.envelope) {
                dropped.push(Dropped::Unauthentic(msg.envelope));
                continue;
            }
            msg.attempts += 1;
            let reply_to = msg.wants_reply.then(|| {
                (
                    msg.envelope.sender_instance.clone(),
                    msg.envelope.request_id.clone(),
                )
            });
            let ack = InMemoryAck {
                bus: Arc::clone(&self.bus),
                node: Arc::clone(&self.node),
                destination: self.destination.clone(),
                msg_id: msg.id,
                reply_to,
            };
            let delivery = Delivery::new(msg.envelope.clone(), msg.attempts, Box::new(ack));
            dq.pending.insert(
                msg.id,
                Pending {
                    consumer: self.consumer,
                    msg,
                },
            );
            return Ok(Some(delivery));
        }
        Ok(None)
    }

    fn account(&self, dropped: Vec<Dropped>) {
        for d in dropped {
            match d {
                Dropped::Expired(e) => {
                    bump(&self.node.stats.expired);
                    tracing::debug!(
                        destination = %self.destination,
                        wire_name = %e.wire_name,
                        request_id = %e.request_id,
                        "dropped expired message"
                    );
                }
                Dropped::Unauthentic(e) => {
                    bump(&self.node.stats.hmac_rejected);
                    tracing::warn!(
                        destination = %self.destination,
                        from = %e.sender_instance,
                        wire_name = %e.wire_name,
                        "dropped message with invalid HMAC"
                    );
                }
            }
        }
    }
}

impl Subscription for InMemorySubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Delivery>> {
        Box::pin(async move {
            loop {
                let notified = self.bus.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let mut dropped = Vec::new();
                let taken = self.try_take(&mut dropped);
                self.account(dropped);
                match taken {
                    Err(()) => return None,
                    Ok(Some(delivery)) => {
                        bump(&self.node.stats.delivered);
                        if delivery.attempt() > 1 {
                            bump(&self.node.stats.redelivered);
                        }
                        return Some(delivery);
                    }
                    Ok(None) => notified.await,
                }
            }
        })
    }
}

impl Drop for InMemorySubscription {
    fn drop(&mut self) {
        let returned = {
            let mut st = lock(&self.bus.state);
            let Some(dq) = st.destinations.get_mut(&self.destination) else {
                return;
            };
            let mine: Vec<u64> = dq
                .pending
                .iter()
                .filter(|(_, p)| p.consumer == self.consumer)
                .map(|(id, _)| *id)
                .collect();
            // Ascending ids; pushing to the front in reverse keeps order.
            for id in mine.iter().rev() {
                if let Some(p) = dq.pending.remove(id) {
                    dq.queue.push_front(p.msg);
                }
            }
            mine.len()
        };
        if returned > 0 {
            tracing::info!(
                destination = %self.destination,
                instance = %self.node.instance,
                returned,
                "owner gone; unacknowledged messages will be redelivered"
            );
            self.bus.notify.notify_waiters();
        }
    }
}

struct InMemoryAck {
    bus: Arc<BusInner>,
    node: Arc<Node>,
    destination: String,
    msg_id: u64,
    reply_to: Option<ReplyKey>,
}

impl Acknowledge for InMemoryAck {
    fn wants_reply(&self) -> bool {
        self.reply_to.is_some()
    }

    fn complete(
        self: Box<Self>,
        reply: Option<Envelope>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            let mut st = lock(&self.bus.state);
            if st.closed {
                return Err(InMemoryTransport::unreachable());
            }
            if let (Some(mut reply), Some(key)) = (reply, self.reply_to.as_ref()) {
                self.node.sign(&mut reply);
                if let Some(tx) = st.replies.get(key) {
                    let _ = tx.send(reply);
                }
            }
            // Acknowledge by id, whoever holds it now (like XACK).
            if let Some(dq) = st.destinations.get_mut(&self.destination) {
                if dq.pending.remove(&self.msg_id).is_none() {
                    dq.queue.retain(|m| m.id != self.msg_id);
                }
            }
            drop(st);
            bump(&self.node.stats.completed);
            Ok(())
        })
    }
}
