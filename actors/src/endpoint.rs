//! The serving side of a destination: [`Endpoint`] and [`serve`].
//!
//! An endpoint subscribes to one destination on a [`Transport`], decodes each
//! delivered envelope by wire name, runs the matching handler and replies
//! with the result; only then is the delivery acknowledged, so a process
//! that dies mid-message leaves it to be redelivered to the next owner.
//! Handlers are either async closures ([`Endpoint::route`]) or a local
//! actor's [`Mailbox`] ([`Endpoint::route_mailbox`]), which is how an actor
//! supervised in this process is exposed to the others.
//!
//! By default deliveries are handled one at a time, in queue order;
//! [`Endpoint::concurrency`] allows more in flight. A handler that panics is
//! answered with a `Remote` error and acknowledged (a poison message must not
//! be redelivered forever).

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::envelope::{Envelope, ReplyBody, ReplyErrorKind};
use crate::mailbox::{reply_for_error, Mailbox};
use crate::message::{BoxFuture, RemoteMessage};
use crate::transport::{Delivery, Subscription, Transport, TransportError};

/// What a route learns about the request besides its body.
#[derive(Debug, Clone)]
struct RequestInfo {
    /// Time left before the caller's deadline (`None` for posted messages).
    remaining: Option<Duration>,
}

trait Route: Send + Sync + 'static {
    fn call(&self, body: Value, info: RequestInfo) -> BoxFuture<'static, ReplyBody>;
}

fn decode<M: RemoteMessage>(body: Value) -> Result<M, ReplyBody> {
    serde_json::from_value(body).map_err(|e| ReplyBody::Error {
        kind: ReplyErrorKind::Decode,
        message: format!("cannot decode {}: {e}", M::WIRE_NAME),
    })
}

fn encode_reply<M: RemoteMessage>(reply: &M::Reply) -> ReplyBody {
    match serde_json::to_value(reply) {
        Ok(value) => ReplyBody::Ok { value },
        Err(e) => ReplyBody::Error {
            kind: ReplyErrorKind::Decode,
            message: format!("cannot encode reply to {}: {e}", M::WIRE_NAME),
        },
    }
}

struct FnRoute<M, H> {
    handler: H,
    _message: PhantomData<fn(M)>,
}

impl<M, H, Fut> Route for FnRoute<M, H>
where
    M: RemoteMessage,
    H: Fn(M) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<M::Reply, String>> + Send + 'static,
{
    fn call(&self, body: Value, _info: RequestInfo) -> BoxFuture<'static, ReplyBody> {
        let msg = match decode::<M>(body) {
            Ok(msg) => msg,
            Err(reply) => return Box::pin(std::future::ready(reply)),
        };
        let fut = (self.handler)(msg);
        Box::pin(async move {
            match fut.await {
                Ok(reply) => encode_reply::<M>(&reply),
                Err(e) => ReplyBody::handler_error(e),
            }
        })
    }
}

struct MailboxRoute<M: RemoteMessage> {
    mailbox: Mailbox<M>,
    no_deadline: Duration,
}

impl<M: RemoteMessage> Route for MailboxRoute<M> {
    fn call(&self, body: Value, info: RequestInfo) -> BoxFuture<'static, ReplyBody> {
        let msg = match decode::<M>(body) {
            Ok(msg) => msg,
            Err(reply) => return Box::pin(std::future::ready(reply)),
        };
        let mailbox = self.mailbox.clone();
        // Even posted messages are awaited, so the delivery is acknowledged
        // only once the actor has handled it.
        let deadline = info.remaining.unwrap_or(self.no_deadline);
        Box::pin(async move {
            match mailbox.call(msg, deadline).await {
                Ok(reply) => encode_reply::<M>(&reply),
                Err(e) => reply_for_error(e),
            }
        })
    }
}

/// Counters of one running endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Deliveries answered with a handler result.
    pub handled: u64,
    /// Deliveries answered with an error (handler error, decode error).
    pub failed: u64,
    /// Deliveries whose wire name has no route.
    pub unknown: u64,
    /// Handlers that panicked.
    pub panics: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    failed: AtomicU64,
    unknown: AtomicU64,
    panics: AtomicU64,
    redelivered: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> EndpointStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EndpointStats {
            handled: get(&self.handled),
            failed: get(&self.failed),
            unknown: get(&self.unknown),
            panics: get(&self.panics),
            redelivered: get(&self.redelivered),
        }
    }
}

/// Builder for the server side of one destination.
pub struct Endpoint {
    transport: Arc<dyn Transport>,
    destination: String,
    routes: HashMap<&'static str, Arc<dyn Route>>,
    concurrency: usize,
    no_deadline: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("destination", &self.destination)
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl Endpoint {
    /// An endpoint for `destination` with no routes yet.
    pub fn new(transport: Arc<dyn Transport>, destination: impl Into<String>) -> Self {
        Self {
            transport,
            destination: destination.into(),
            routes: HashMap::new(),
            concurrency: 1,
            no_deadline: Duration::from_secs(60),
        }
    }

    /// Handle `M` with an async function. A later route for the same wire
    /// name replaces an earlier one.
    pub fn route<M, H, Fut>(mut self, handler: H) -> Self
    where
        M: RemoteMessage,
        H: Fn(M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Reply, String>> + Send + 'static,
    {
        let route: Arc<dyn Route> = Arc::new(FnRoute {
            handler,
            _message: PhantomData::<fn(M)>,
        });
        self.routes.insert(M::WIRE_NAME, route);
        self
    }

    /// Forward `M` to a (typically local) actor, within the caller's
    /// remaining deadline.
    pub fn route_mailbox<M: RemoteMessage>(mut self, mailbox: Mailbox<M>) -> Self {
        let route: Arc<dyn Route> = Arc::new(MailboxRoute {
            mailbox,
            no_deadline: self.no_deadline,
        });
        self.routes.insert(M::WIRE_NAME, route);
        self
    }

    /// How many deliveries may be handled at once (default 1: strictly in
    /// order). Values below 1 count as 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Deadline used by [`Endpoint::route_mailbox`] routes added after this
    /// call, for posted messages, which carry none (default 60 s).
    pub fn posted_deadline(mut self, deadline: Duration) -> Self {
        self.no_deadline = deadline;
        self
    }

    /// Subscribe and start serving in a background task.
    pub async fn start(self) -> Result<ServeHandle, TransportError> {
        let subscription = self.transport.subscribe(&self.destination).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            routes: Arc::new(self.routes),
            instance: Arc::from(self.transport.instance()),
            destination: Arc::from(self.destination.as_str()),
            counters: Arc::clone(&counters),
        };
        let join = tokio::spawn(worker.run(subscription, stop_rx, self.concurrency));
        tracing::debug!(destination = %self.destination, "endpoint started");
        Ok(ServeHandle {
            destination: self.destination,
            stop: stop_tx,
            join,
            counters,
        })
    }
}

/// Serve `M` at `destination` with `handler` (an [`Endpoint`] with one route).
pub async fn serve<M, H, Fut>(
    transport: Arc<dyn Transport>,
    destination: impl Into<String>,
    handler: H,
) -> Result<ServeHandle, TransportError>
where
    M: RemoteMessage,
    H: Fn(M) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<M::Reply, String>> + Send + 'static,
{
    Endpoint::new(transport, destination)
        .route(handler)
        .start()
        .await
}

/// A running endpoint. Dropping it stops serving (like [`ServeHandle::shutdown`]
/// without waiting).
#[must_use = "dropping a ServeHandle stops the endpoint"]
pub struct ServeHandle {
    destination: String,
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ServeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeHandle")
            .field("destination", &self.destination)
            .finish()
    }
}

impl ServeHandle {
    /// The destination served.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Counters so far.
    pub fn stats(&self) -> EndpointStats {
        self.counters.snapshot()
    }

    /// Stop taking deliveries, finish (and acknowledge) those in flight,
    /// release the subscription.
    pub async fn shutdown(self) -> EndpointStats {
        let ServeHandle {
            destination,
            stop,
            join,
            counters,
        } = self;
        let _ = stop.send(true);
        if let Err(e) = join.await {
            tracing::warn!(%destination, error = %e, "endpoint task ended abnormally");
        }
        counters.snapshot()
    }

    /// Simulate a crash: abandon in-flight handlers without acknowledging,
    /// so their messages are redelivered to the next owner. Returns once the
    /// subscription is released.
    pub async fn abort(self) {
        self.join.abort();
        let _ = self.join.await;
    }
}

struct Worker {
    routes: Arc<HashMap<&'static str, Arc<dyn Route>>>,
    instance: Arc<str>,
    destination: Arc<str>,
    counters: Arc<Counters>,
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // An error means the handle was dropped: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Worker {
    async fn run(
        self,
        mut subscription: Box<dyn Subscription>,
        mut stop: watch::Receiver<bool>,
        concurrency: usize,
    ) {
        let this = Arc::new(self);
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.len() >= concurrency {
                in_flight.join_next().await;
            }
            tokio::select! {
                biased;
                () = stop_requested(&mut stop) => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                delivery = subscription.next() => match delivery {
                    Some(delivery) => {
                        in_flight.spawn(Arc::clone(&this).handle(delivery));
                    }
                    None => break,
                },
            }
        }
        while in_flight.join_next().await.is_some() {}
        drop(subscription);
        tracing::debug!(destination = %this.destination, "endpoint stopped");
    }

    async fn handle(self: Arc<Self>, delivery: Delivery) {
        if delivery.attempt() > 1 {
            self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let envelope = delivery.envelope();
        let body = match self.routes.get(envelope.wire_name.as_str()) {
            None => {
                self.counters.unknown.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(destination = %self.destination, wire_name = %envelope.wire_name, "no route for message");
                ReplyBody::Error {
                    kind: ReplyErrorKind::UnknownMessage,
                    message: format!(
                        "{} does not handle {}",
                        self.destination, envelope.wire_name
                    ),
                }
            }
            Some(route) => {
                let route = Arc::clone(route);
                let body = envelope.body.clone();
                let info = RequestInfo {
                    remaining: envelope.remaining(),
                };
                match AssertUnwindSafe(async move { route.call(body, info).await })
                    .catch_unwind()
                    .await
                {
                    Ok(reply) => {
                        let counter = match reply {
                            ReplyBody::Ok { .. } => &self.counters.handled,
                            ReplyBody::Error { .. } => &self.counters.failed,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        reply
                    }
                    Err(panic) => {
                        self.counters.panics.fetch_add(1, Ordering::Relaxed);
                        let message = crate::panic_message(panic.as_ref());
                        tracing::error!(
                            destination = %self.destination,
                            wire_name = %delivery.envelope().wire_name,
                            panic = %message,
                            "handler panicked"
                        );
                        ReplyBody::handler_error(format!("handler panicked: {message}"))
                    }
                }
            }
        };
        let reply = delivery
            .wants_reply()
            .then(|| Envelope::reply_to(delivery.envelope(), self.instance.as_ref(), body));
        if let Err(e) = delivery.complete(reply).await {
            tracing::warn!(destination = %self.destination, error = %e, "could not acknowledge delivery");
        }
    }
}
