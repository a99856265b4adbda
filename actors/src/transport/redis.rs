//! [`RedisTransport`]: the [`Transport`] for processes that share a Redis
//! server, with the semantics the in-memory transport's tests check.
//!
//! # Why Streams and consumer groups
//!
//! Each destination (`"events@main"`) is one Redis Stream,
//! `{prefix}:mailbox:{destination}`, read by its owners through one consumer
//! group (`owners`). A stream entry survives until it is acknowledged, and
//! the group remembers which consumer holds which delivered entry (the
//! pending entries list, PEL). That is exactly the at-least-once mailbox the
//! runtime needs: a sender appends (`XADD`) whether or not an owner is
//! running; an owner reads with `XREADGROUP … BLOCK` (no polling), and
//! acknowledges (`XACK`, then `XDEL` to keep the stream short) only after
//! its handler finished
//! ([`Delivery::complete`](super::Delivery::complete)); what a crashed
//! owner held is still in the PEL. A plain list (`BRPOP`) would lose a message taken
//! by an owner that dies, and Pub/Sub loses anything sent while nobody
//! listens.
//!
//! # Redelivery
//!
//! Pending entries go back to the owners in three ways, all through one Lua
//! script that atomically re-appends the entry (with an `attempts` field
//! carrying its delivery count, so
//! [`Delivery::attempt`](super::Delivery::attempt) keeps counting) and
//! acknowledges and deletes the old one, which wakes blocked readers at once:
//!
//! * **Released.** When a subscription goes away (the endpoint is shut down
//!   or aborted, the transport is shut down) its reader task requeues every
//!   entry it still holds and deletes its consumer. This is the in-memory
//!   transport's "give back on drop".
//! * **Same instance restarted.** Consumers are named
//!   `{instance}:{random}`. A new subscription requeues the entries of
//!   consumers named after its own instance that this process does not run:
//!   they belonged to a previous life of this process. Instance names must
//!   therefore be unique among live processes sharing a prefix (they are
//!   anyway: replies and placement rely on it).
//! * **Dead owner.** Every subscription requeues entries that have been
//!   idle for longer than [`RedisTransportConfig::claim_idle`] (`XPENDING …
//!   IDLE`); live owners keep the entries they are working on fresh by
//!   re-claiming them to themselves (`XCLAIM … JUSTID`) every third of that
//!   time, so only a vanished owner's entries ever get that old.
//!
//! Requeued entries go to the back of the stream, so order is kept only
//! between messages that are delivered once. `attempt` counts deliveries to
//! owners: a released entry that was read ahead but never handed to a
//! handler does not count, but after a crash every entry the dead owner had
//! read counts, started or not.
//!
//! # What at-least-once means for handlers
//!
//! A handler may see the same request more than once: after its owner
//! crashed mid-message, after an owner stalled for longer than
//! `claim_idle`, after a reply could not be written, or when an `XADD`
//! whose answer was lost is retried. Handlers must be idempotent (request
//! id, Matrix `txn_id`) and may use
//! [`Delivery::attempt`](super::Delivery::attempt) to notice redeliveries.
//! A request is never handled after its deadline: expired entries are
//! acknowledged and dropped (counted as `expired`). A redelivered request's
//! reply is only used if its caller still waits.
//!
//! # Replies
//!
//! Each transport value owns one reply *list*,
//! `{prefix}:reply:{instance}:{uuid}`, named in the request entry's `reply`
//! field. The serving side pushes the signed reply (`RPUSH` + `PEXPIRE`,
//! pipelined before the `XACK`); one task per transport pops it (`BLPOP`,
//! then `LPOP` to drain) and hands it by request id to the waiting caller's
//! oneshot. A list rather than a stream because replies need no
//! acknowledgement or redelivery: only a live caller can use one, so a
//! destructive pop is right, an empty list costs nothing, and the list of a
//! process that died expires. Every call has a deadline
//! ([`Mailbox::call`](crate::Mailbox::call)): the caller stops waiting when
//! it passes, whether or not Redis is reachable.
//!
//! # Authentication
//!
//! With a [`RedisTransportConfig::hmac_key`] every request and reply is
//! signed for the stream or reply list it is written to
//! ([`HmacKey::sign_for`]; a signed entry copied to another destination, or
//! under another deployment's prefix, does not verify), and entries or
//! replies that fail the check are
//! dropped (an entry is acknowledged so it does not come back) and counted
//! (`hmac_rejected`, `reply_hmac_rejected`). A request's reply list must be
//! one of its (authenticated) sender's.
//!
//! A valid signature does not make an entry new: a copy of a signed entry
//! `XADD`ed again verifies too. So with a key the transport also refuses
//! replays ([`replay`]): a process remembers the request ids it accepted
//! until their deadlines and drops (acknowledges) and counts (`replayed`)
//! any copy, and every request must have a deadline no further than
//! [`RedisTransportConfig::replay_window`] (posted messages get one). A
//! redelivery is not a copy: an owner forgets the ids of the entries it gives
//! back before requeueing them. A caller takes a reply only for a request it
//! is waiting for, with the reply wire name of that request, once.
//!
//! Redis itself: `redis://user:password@host:port/db` authenticates with an
//! ACL user (or `redis://:password@…` with `requirepass`);
//! `rediss://` connects with TLS (rustls), verifying the server against the
//! webpki roots or against [`RedisTransportConfig::tls_root_certificates`]
//! for a private CA; [`RedisTransportConfig::tls_client_identity`] adds a
//! client certificate. The least the ACL user needs is
//! `~{prefix}:* +@stream +@list +@scripting +@connection +pexpire` (the
//! tests run with exactly that); Redis ≥ 6.2 (`XPENDING … IDLE`, `LPOP`
//! with a count).
//!
//! # Connections and outages
//!
//! One multiplexed [`ConnectionManager`] carries the non-blocking commands;
//! the reply reader and each subscription have their own, since a blocking
//! command holds its connection. The managers reconnect with exponential backoff, and every
//! loop here backs off ([`RedisTransportConfig::max_backoff`]) on errors and
//! recreates its consumer group after a Redis restart that lost it.
//! Requests and posted messages go through one writer task, in order, so
//! `post` never blocks and a call never overtakes an earlier post; a posted
//! message that cannot be written is retried until it is, a call fails
//! (`Unreachable`) or times out.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lattice_actors::{
//!     serve, HmacKey, Mailbox, RedisTransport, RedisTransportConfig, RemoteMessage, Transport,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add(u64, u64);
//! impl RemoteMessage for Add {
//!     type Reply = u64;
//!     const WIRE_NAME: &'static str = "example.add.v1";
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = |instance: &str| {
//!     let url = "rediss://lattice:secret@redis.internal:6380";
//!     RedisTransportConfig::new(url, "example.org", instance)
//!         .hmac_key(HmacKey::new("replication secret").expect("non-empty"))
//! };
//! // Process "worker1" owns the destination "adder@worker1"...
//! let worker: Arc<dyn Transport> = Arc::new(RedisTransport::connect(config("worker1")).await?);
//! let _serving = serve(worker, "adder@worker1", |Add(a, b)| async move { Ok(a + b) }).await?;
//! // ...and process "main" calls it.
//! let main: Arc<dyn Transport> = Arc::new(RedisTransport::connect(config("main")).await?);
//! let adder = Mailbox::<Add>::remote(main, "adder@worker1");
//! assert_eq!(adder.call(Add(2, 3), Duration::from_secs(1)).await?, 5);
//! # Ok(())
//! # }
//! ```

mod replay;
mod subscription;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::RedisError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::{bump, Subscription, Transport, TransportCounters, TransportError, TransportStats};
use crate::auth::HmacKey;
use crate::envelope::{Envelope, REPLY_SUFFIX};
use crate::latency::CallLatency;
use crate::lock;
use crate::message::BoxFuture;
use crate::supervisor::{Backoff, BackoffConfig};

/// The consumer group of every mailbox stream.
const GROUP: &str = "owners";
/// Stream entry field: the envelope as JSON text.
const FIELD_ENVELOPE: &str = "env";
/// Stream entry field: the reply list of a request that wants a reply.
const FIELD_REPLY: &str = "reply";
/// Stream entry field: deliveries before this entry was requeued.
const FIELD_ATTEMPTS: &str = "attempts";
/// Most entries written per pipeline.
const WRITE_BATCH: usize = 64;
/// Most replies drained per `LPOP`.
const REPLY_BATCH: usize = 100;
/// See [`RedisTransportConfig::replay_window`].
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// See [`RedisTransportConfig::replay_capacity`].
pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

/// How to reach Redis and how the transport behaves. Built with
/// [`RedisTransportConfig::new`] and the builder methods.
#[derive(Clone)]
pub struct RedisTransportConfig {
    url: String,
    prefix: String,
    instance: String,
    key: Option<HmacKey>,
    tls_root_certificates: Option<Vec<u8>>,
    tls_client_identity: Option<(Vec<u8>, Vec<u8>)>,
    block: Duration,
    claim_idle: Duration,
    prefetch: usize,
    reply_ttl: Duration,
    command_timeout: Duration,
    connect_timeout: Duration,
    max_backoff: Duration,
    replay_window: Duration,
    replay_capacity: usize,
}

impl std::fmt::Debug for RedisTransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransportConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .field("hmac", &self.key.is_some())
            .field(
                "tls_root_certificates",
                &self.tls_root_certificates.is_some(),
            )
            .field("tls_client_identity", &self.tls_client_identity.is_some())
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .field("prefetch", &self.prefetch)
            .field("reply_ttl", &self.reply_ttl)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("replay_window", &self.replay_window)
            .field("replay_capacity", &self.replay_capacity)
            .finish()
    }
}

impl RedisTransportConfig {
    /// Connect to `url` (`redis://[user:password@]host:port[/db]` or
    /// `rediss://…`), namespace every key under `prefix` (the server name
    /// in production, a unique string per test) and act as process
    /// `instance` (no `:` in it).
    pub fn new(
        url: impl Into<String>,
        prefix: impl Into<String>,
        instance: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            instance: instance.into(),
            key: None,
            tls_root_certificates: None,
            tls_client_identity: None,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            prefetch: 8,
            reply_ttl: Duration::from_secs(60),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
            replay_window: DEFAULT_REPLAY_WINDOW,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
        }
    }

    /// Sign everything sent and drop everything received that is not signed
    /// with this shared secret.
    pub fn hmac_key(mut self, key: HmacKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Like [`RedisTransportConfig::hmac_key`], optional.
    pub fn maybe_hmac_key(mut self, key: Option<HmacKey>) -> Self {
        self.key = key;
        self
    }

    /// For `rediss://`: trust these PEM certificates instead of the webpki
    /// roots (a private CA).
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificates = Some(pem.into());
        self
    }

    /// For `rediss://`: present this client certificate chain and key (PEM)
    /// to a server that requires client authentication.
    pub fn tls_client_identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_client_identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// Longest single blocking read (default 1 s). Shorter means quicker
    /// release when a subscription ends, more idle traffic. Capped at a
    /// quarter of [`RedisTransportConfig::claim_idle`].
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// How long a delivered entry may go without its owner's keep-alive
    /// before it is presumed orphaned and requeued (default 30 s).
    pub fn claim_idle(mut self, claim_idle: Duration) -> Self {
        self.claim_idle = claim_idle;
        self
    }

    /// Deliveries a subscription reads ahead of its consumer (default 8; at
    /// least 1).
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// How long an unread reply list lives (default 60 s).
    pub fn reply_ttl(mut self, ttl: Duration) -> Self {
        self.reply_ttl = ttl;
        self
    }

    /// Response timeout of non-blocking commands (default 2 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Timeout of one connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Longest pause between retries after Redis errors (default 2 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// With a key: the furthest ahead a request's deadline may be (default
    /// 5 minutes), and the deadline given to posted messages, which have
    /// none. Request ids are remembered until their deadline to refuse
    /// copies, so a request without a deadline, or with one further than
    /// this, is refused (counted as `replayed`); calls must use shorter
    /// timeouts, and a posted message that waits longer for an owner is
    /// dropped as expired. Every process of a deployment should use the
    /// same window (clock differences between machines eat into it).
    pub fn replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// Most request ids remembered at once (default 1,000,000; an id costs
    /// about 150 bytes, and a process remembers those of the requests it
    /// accepted within the last deadline's time: at 10,000 requests a second
    /// with 30 s deadlines, 300,000); beyond it the ids whose deadline is
    /// soonest are forgotten early (counted as `replay_evicted`).
    pub fn replay_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity;
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn validate(&self) -> Result<(), RedisTransportError> {
        if self.prefix.is_empty() {
            return Err(RedisTransportError::Config("empty key prefix".into()));
        }
        if self.instance.is_empty() || self.instance.contains(':') {
            return Err(RedisTransportError::Config(format!(
                "instance name {:?} must be non-empty and without ':'",
                self.instance
            )));
        }
        if self.claim_idle < Duration::from_millis(40) {
            return Err(RedisTransportError::Config(
                "claim_idle must be at least 40 ms".into(),
            ));
        }
        Ok(())
    }

    /// The Redis client this configuration connects with (URL, credentials,
    /// TLS), for other connections to the same Redis, such as pub/sub.
    pub fn client(&self) -> Result<::redis::Client, RedisTransportError> {
        let tls = self.url.starts_with("rediss://") || self.url.starts_with("valkeys://");
        let config_error =
            |e: RedisError| RedisTransportError::Config(format!("{}: {e}", redact_url(&self.url)));
        if !tls {
            if self.tls_root_certificates.is_some() || self.tls_client_identity.is_some() {
                return Err(RedisTransportError::Config(
                    "TLS certificates given for a URL that is not rediss://".into(),
                ));
            }
            return ::redis::Client::open(self.url.as_str()).map_err(config_error);
        }
        // redis builds rustls without a crypto provider; use ring unless the
        // process installed one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if self.tls_root_certificates.is_none() && self.tls_client_identity.is_none() {
            return ::redis::Client::open(self.url.as_str()).map_err(config_error);
        }
        let certificates = ::redis::TlsCertificates {
            client_tls: self.tls_client_identity.as_ref().map(|(cert, key)| {
                ::redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }
            }),
            root_cert: self.tls_root_certificates.clone(),
        };
        ::redis::Client::build_with_tls(self.url.as_str(), certificates).map_err(config_error)
    }

    /// The timings actually used.
    fn timing(&self) -> Timing {
        let claim_idle = self.claim_idle;
        let min = Duration::from_millis(10);
        Timing {
            block: self.block.min(claim_idle / 4).max(min),
            claim_idle,
            requeue_every: (claim_idle / 4).max(min),
            keep_alive_every: (claim_idle / 3).max(min),
            prefetch: self.prefetch.max(1),
            reply_ttl: self.reply_ttl.max(Duration::from_secs(1)),
            command_timeout: self.command_timeout,
            connect_timeout: self.connect_timeout,
            max_backoff: self.max_backoff.max(min),
            replay_window: self.replay_window.max(Duration::from_secs(1)),
        }
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    format!("{}{user}:***{}", &url[..scheme_end + 3], &rest[at..])
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    block: Duration,
    claim_idle: Duration,
    requeue_every: Duration,
    keep_alive_every: Duration,
    prefetch: usize,
    reply_ttl: Duration,
    command_timeout: Duration,
    connect_timeout: Duration,
    max_backoff: Duration,
    replay_window: Duration,
}

/// Why [`RedisTransport::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisTransportError {
    /// The configuration is unusable (bad URL, bad certificate, bad name).
    #[error("invalid Redis transport configuration: {0}")]
    Config(String),
    /// Redis did not answer or refused us (down, wrong password, TLS
    /// failure).
    #[error("cannot connect to Redis: {0}")]
    Connect(String),
}

impl From<RedisTransportError> for TransportError {
    fn from(e: RedisTransportError) -> Self {
        TransportError::Unreachable(e.to_string())
    }
}

/// Counters of one [`RedisTransport`]: the ones every transport keeps plus
/// Redis-specific ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisTransportStats {
    /// Counters shared with the in-memory transport.
    #[serde(flatten)]
    pub common: TransportStats,
    /// Entries or replies that did not decode (dropped, entries acked).
    pub malformed: u64,
    /// Pending entries this node put back on their stream (released by an
    /// ending subscription, or left by a dead or earlier owner).
    pub requeued: u64,
    /// Authentic replies that arrived when nobody waited any more.
    pub late_replies: u64,
    /// Posted messages given up at shutdown because Redis was unreachable.
    pub posts_lost: u64,
    /// Redis commands that failed (each then retried or reported).
    pub redis_errors: u64,
    /// Authentic requests dropped as replays (with a key): a copy of a
    /// request this process already accepted, or a request without a
    /// deadline or with one beyond the replay window.
    pub replayed: u64,
    /// Request ids forgotten before their deadline because the replay
    /// memory was full.
    pub replay_evicted: u64,
    /// Request ids remembered now (accepted, deadline not passed).
    pub replay_remembered: u64,
}

#[derive(Default)]
struct Stats {
    common: TransportCounters,
    malformed: AtomicU64,
    requeued: AtomicU64,
    late_replies: AtomicU64,
    posts_lost: AtomicU64,
    redis_errors: AtomicU64,
    replayed: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Messages of one destination, as Redis sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// Entries not delivered to any owner yet.
    pub queued: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
}

/// A caller waiting for the reply to one request.
struct Waiter {
    reply_wire_name: String,
    reply: oneshot::Sender<Envelope>,
}

/// State shared by the transport handle and its background tasks.
struct Core {
    instance: String,
    prefix: String,
    reply_key: String,
    key: Option<HmacKey>,
    /// With a key: the request ids this process accepted (see [`replay`]).
    seen: Mutex<replay::SeenRequests>,
    client: ::redis::Client,
    cmd: ConnectionManager,
    blocking_config: ConnectionManagerConfig,
    timing: Timing,
    stats: Stats,
    /// How long this process's remote calls took, by wire name and destination.
    calls: CallLatency,
    /// The callers waiting for a reply, by request id, with the wire name
    /// their reply must have.
    waiters: Mutex<HashMap<String, Waiter>>,
    /// Consumer names of this transport's running subscription readers, by
    /// stream key.
    live_consumers: Mutex<HashMap<String, HashSet<String>>>,
    readers: Mutex<JoinSet<()>>,
    shutdown: watch::Receiver<bool>,
}

impl Core {
    fn stream_key(&self, destination: &str) -> String {
        format!("{}:mailbox:{destination}", self.prefix)
    }

    /// The prefix every reply list of `instance` starts with.
    fn reply_prefix(&self, instance: &str) -> String {
        format!("{}:reply:{instance}:", self.prefix)
    }

    /// Sign `envelope` for delivery at `place` (a stream or reply list key).
    fn sign(&self, place: &str, envelope: &mut Envelope) {
        envelope.sender_instance.clone_from(&self.instance);
        if let Some(key) = &self.key {
            key.sign_for(place, envelope);
        }
    }

    /// Whether `envelope`, delivered at `place`, was signed for it.
    fn authentic(&self, place: &str, envelope: &Envelope) -> bool {
        self.key
            .as_ref()
            .is_none_or(|key| key.verify_for(place, envelope))
    }

    /// With a key, give a posted message the deadline it needs to be
    /// accepted (see [`RedisTransportConfig::replay_window`]).
    fn bound_deadline(&self, envelope: &mut Envelope) {
        if self.key.is_some() && envelope.deadline_unix_ms.is_none() {
            envelope.deadline_unix_ms =
                Some(crate::envelope::deadline_after(self.timing.replay_window));
        }
    }

    /// Whether an authentic request may be handled: with a key, only if no
    /// copy of it was accepted before (and it is remembered from now on).
    fn accept(&self, envelope: &Envelope) -> replay::Verdict {
        if self.key.is_none() {
            return replay::Verdict::Fresh;
        }
        lock(&self.seen).accept(
            &envelope.request_id,
            envelope.deadline_unix_ms,
            crate::envelope::now_unix_ms(),
        )
    }

    /// Forget accepted requests whose entries are given back unacknowledged:
    /// their next delivery is a redelivery.
    fn forget<'a>(&self, request_ids: impl IntoIterator<Item = &'a str>) {
        if self.key.is_some() {
            let mut seen = lock(&self.seen);
            for id in request_ids {
                seen.forget(id);
            }
        }
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }

    fn cmd(&self) -> ConnectionManager {
        self.cmd.clone()
    }

    /// A new connection for blocking commands; it connects on first use.
    fn blocking_connection(&self) -> Result<ConnectionManager, RedisError> {
        ConnectionManager::new_lazy_with_config(self.client.clone(), self.blocking_config.clone())
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(BackoffConfig {
            initial: Duration::from_millis(50).min(self.timing.max_backoff),
            max: self.timing.max_backoff,
            multiplier: 2,
            reset_after: Duration::MAX,
        })
    }

    /// Count and log a failed Redis command.
    fn redis_error(&self, what: &str, error: &RedisError) {
        bump(&self.stats.redis_errors);
        tracing::warn!(instance = %self.instance, prefix = %self.prefix, %error, "Redis {what} failed");
    }

    fn stats(&self) -> RedisTransportStats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let seen = lock(&self.seen);
        RedisTransportStats {
            common: s.common.snapshot(),
            malformed: get(&s.malformed),
            requeued: get(&s.requeued),
            late_replies: get(&s.late_replies),
            posts_lost: get(&s.posts_lost),
            redis_errors: get(&s.redis_errors),
            replayed: get(&s.replayed),
            replay_evicted: seen.evicted(),
            replay_remembered: u64::try_from(seen.len()).unwrap_or(u64::MAX),
        }
    }

    /// Route one reply popped from the reply list.
    fn dispatch_reply(&self, text: &str) {
        let reply: Envelope = match serde_json::from_str(text) {
            Ok(reply) => reply,
            Err(error) => {
                bump(&self.stats.malformed);
                tracing::warn!(instance = %self.instance, %error, "dropped malformed reply");
                return;
            }
        };
        if !self.authentic(&self.reply_key, &reply) {
            bump(&self.stats.common.reply_hmac_rejected);
            tracing::warn!(
                instance = %self.instance,
                from = %reply.sender_instance,
                wire_name = %reply.wire_name,
                "dropped reply with invalid HMAC"
            );
            return;
        }
        let waiter = {
            let mut waiters = lock(&self.waiters);
            // Only the reply to the request waited for: a signed request
            // pushed onto a reply list is not its own reply.
            let expected = waiters
                .get(&reply.request_id)
                .is_some_and(|waiter| waiter.reply_wire_name == reply.wire_name);
            if expected {
                waiters.remove(&reply.request_id)
            } else {
                None
            }
        };
        // `send` fails when the caller stopped waiting in the meantime.
        match waiter.map(|waiter| waiter.reply.send(reply).is_ok()) {
            Some(true) => bump(&self.stats.common.replies_received),
            _ => {
                bump(&self.stats.late_replies);
                tracing::debug!(instance = %self.instance, "reply for a call nobody waits for");
            }
        }
    }
}

/// Wait until shutdown is requested or the transport handle is gone.
async fn shut_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|down| *down).await;
}

/// Sleep `delay` unless shutdown comes first; false if it did.
async fn pause(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = shut_down(shutdown) => false,
        () = tokio::time::sleep(delay) => true,
    }
}

fn unreachable(error: &RedisError) -> TransportError {
    TransportError::Unreachable(format!("redis: {error}"))
}

/// One `XADD` queued for the writer task.
struct WriteJob {
    stream: String,
    envelope: String,
    reply: Option<String>,
    /// For requests: the caller learns whether the entry was written. `None`
    /// for posted messages, which are retried until written.
    done: Option<oneshot::Sender<Result<(), TransportError>>>,
}

impl WriteJob {
    fn abandoned(&self) -> bool {
        self.done.as_ref().is_some_and(oneshot::Sender::is_closed)
    }

    fn command(&self) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("XADD");
        cmd.arg(&self.stream)
            .arg("*")
            .arg(FIELD_ENVELOPE)
            .arg(&self.envelope);
        if let Some(reply) = &self.reply {
            cmd.arg(FIELD_REPLY).arg(reply);
        }
        cmd
    }
}

/// Appends requests and posted messages, in the order they were queued.
async fn run_writer(
    core: Arc<Core>,
    mut jobs: mpsc::UnboundedReceiver<WriteJob>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = core.cmd();
    let mut backoff = core.backoff();
    let mut retry: VecDeque<WriteJob> = VecDeque::new();
    loop {
        let mut batch: Vec<WriteJob> = retry.drain(..).collect();
        if batch.is_empty() {
            tokio::select! {
                biased;
                () = shut_down(&mut shutdown) => break,
                job = jobs.recv() => match job {
                    Some(job) => batch.push(job),
                    None => break,
                },
            }
        }
        while batch.len() < WRITE_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch.retain(|job| !job.abandoned());
        if batch.is_empty() {
            continue;
        }
        let mut pipe = ::redis::pipe();
        for job in &batch {
            pipe.add_command(job.command()).ignore();
        }
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => {
                backoff.reset();
                for job in batch {
                    if let Some(done) = job.done {
                        let _ = done.send(Ok(()));
                    }
                }
            }
            Err(error) => {
                core.redis_error("XADD", &error);
                for job in batch {
                    match job.done {
                        Some(done) => {
                            let _ = done.send(Err(unreachable(&error)));
                        }
                        None => retry.push_back(job),
                    }
                }
                if !retry.is_empty()
                    && !pause(backoff.next_delay(Duration::ZERO), &mut shutdown).await
                {
                    break;
                }
            }
        }
    }
    // Shutting down: one last attempt at the posted messages still queued.
    jobs.close();
    while let Ok(job) = jobs.try_recv() {
        retry.push_back(job);
    }
    retry.retain(|job| job.done.is_none());
    if retry.is_empty() {
        return;
    }
    let mut pipe = ::redis::pipe();
    for job in &retry {
        pipe.add_command(job.command()).ignore();
    }
    let flushed = tokio::time::timeout(
        core.timing.command_timeout,
        pipe.query_async::<()>(&mut conn),
    )
    .await;
    if !matches!(flushed, Ok(Ok(()))) {
        let lost = u64::try_from(retry.len()).unwrap_or(u64::MAX);
        add(&core.stats.posts_lost, lost);
        tracing::warn!(instance = %core.instance, lost, "posted messages lost at shutdown: Redis unreachable");
    }
}

/// Pops this transport's replies and hands them to the waiting callers.
async fn run_reply_reader(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) {
    let mut conn = match core.blocking_connection() {
        Ok(conn) => conn,
        Err(error) => {
            core.redis_error("reply connection", &error);
            return;
        }
    };
    let mut backoff = core.backoff();
    let block_seconds = core.timing.block.as_secs_f64();
    loop {
        let mut blpop = ::redis::cmd("BLPOP");
        blpop.arg(&core.reply_key).arg(block_seconds);
        let popped = tokio::select! {
            biased;
            () = shut_down(&mut shutdown) => break,
            popped = blpop.query_async::<Option<(String, String)>>(&mut conn) => popped,
        };
        match popped {
            Ok(None) => backoff.reset(),
            Ok(Some((_, reply))) => {
                backoff.reset();
                core.dispatch_reply(&reply);
                let mut lpop = ::redis::cmd("LPOP");
                lpop.arg(&core.reply_key).arg(REPLY_BATCH);
                match lpop.query_async::<Option<Vec<String>>>(&mut conn).await {
                    Ok(more) => more.iter().flatten().for_each(|r| core.dispatch_reply(r)),
                    Err(error) => core.redis_error("LPOP", &error),
                }
            }
            Err(error) => {
                core.redis_error("BLPOP", &error);
                if !pause(backoff.next_delay(Duration::ZERO), &mut shutdown).await {
                    break;
                }
            }
        }
    }
    // Nobody will route replies any more: waiting callers get `Closed`.
    lock(&core.waiters).clear();
}

/// The handle: dropping the last clone (subscriptions hold one too) stops
/// the background tasks.
struct Handle {
    core: Arc<Core>,
    writer: mpsc::UnboundedSender<WriteJob>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A [`Transport`] over Redis Streams; see the [module documentation](self).
/// Cheap to clone; all clones share the connections and counters.
#[derive(Clone)]
pub struct RedisTransport {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("instance", &self.handle.core.instance)
            .field("prefix", &self.handle.core.prefix)
            .finish()
    }
}

/// Removes a caller's reply route when it stops waiting.
struct WaiterGuard<'a> {
    core: &'a Core,
    request_id: String,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        lock(&self.core.waiters).remove(&self.request_id);
    }
}

impl RedisTransport {
    /// Connect (checking that Redis answers and accepts the credentials)
    /// and start the writer and reply reader tasks.
    pub async fn connect(config: RedisTransportConfig) -> Result<Self, RedisTransportError> {
        config.validate()?;
        let client = config.client()?;
        let timing = config.timing();
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timing.connect_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timing.max_backoff)
            .set_exponent_base(2.0);
        let cmd_config = base
            .clone()
            .set_response_timeout(Some(timing.command_timeout));
        let blocking_config = base.set_response_timeout(Some(
            timing.block + timing.command_timeout + timing.connect_timeout,
        ));
        let connect_error = |e: RedisError| {
            RedisTransportError::Connect(format!("{}: {e}", redact_url(&config.url)))
        };
        let budget = timing.connect_timeout * 4 + timing.max_backoff;
        let mut cmd = tokio::time::timeout(
            budget,
            ConnectionManager::new_with_config(client.clone(), cmd_config),
        )
        .await
        .map_err(|_| {
            RedisTransportError::Connect(format!("{}: timed out", redact_url(&config.url)))
        })?
        .map_err(connect_error)?;
        ::redis::cmd("PING")
            .query_async::<String>(&mut cmd)
            .await
            .map_err(connect_error)?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let reply_key = format!(
            "{}:reply:{}:{}",
            config.prefix,
            config.instance,
            uuid::Uuid::new_v4().simple()
        );
        let core = Arc::new(Core {
            instance: config.instance.clone(),
            prefix: config.prefix.clone(),
            reply_key,
            key: config.key.clone(),
            seen: Mutex::new(replay::SeenRequests::new(
                timing.replay_window,
                config.replay_capacity,
            )),
            client,
            cmd,
            blocking_config,
            timing,
            stats: Stats::default(),
            calls: CallLatency::default(),
            waiters: Mutex::default(),
            live_consumers: Mutex::default(),
            readers: Mutex::new(JoinSet::new()),
            shutdown: shutdown_rx.clone(),
        });
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(run_writer(
            Arc::clone(&core),
            writer_rx,
            shutdown_rx.clone(),
        ));
        let replies = tokio::spawn(run_reply_reader(Arc::clone(&core), shutdown_rx));
        tracing::debug!(instance = %core.instance, prefix = %core.prefix, "Redis transport connected");
        Ok(Self {
            handle: Arc::new(Handle {
                core,
                writer: writer_tx,
                shutdown: shutdown_tx,
                tasks: Mutex::new(vec![writer, replies]),
            }),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.handle.core.prefix
    }

    /// The stream key of `destination`.
    pub fn stream_key(&self, destination: &str) -> String {
        self.handle.core.stream_key(destination)
    }

    /// This transport's reply list key.
    pub fn reply_key(&self) -> &str {
        &self.handle.core.reply_key
    }

    /// The counters every transport keeps (same type as the in-memory one).
    pub fn stats(&self) -> TransportStats {
        self.handle.core.stats().common
    }

    /// All counters.
    pub fn redis_stats(&self) -> RedisTransportStats {
        self.handle.core.stats()
    }

    /// How many messages of `destination` wait for an owner and how many
    /// are delivered but unacknowledged.
    pub async fn backlog(&self, destination: &str) -> Result<Backlog, TransportError> {
        let core = &self.handle.core;
        let stream = core.stream_key(destination);
        let mut conn = core.cmd();
        let length: u64 = ::redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .map_err(|e| unreachable(&e))?;
        let pending = match ::redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .query_async::<::redis::Value>(&mut conn)
            .await
        {
            Ok(::redis::Value::Array(summary)) => summary
                .first()
                .and_then(|count| ::redis::from_redis_value_ref::<u64>(count).ok())
                .unwrap_or(0),
            Ok(_) => 0,
            Err(e) if e.code() == Some("NOGROUP") => 0,
            Err(e) => return Err(unreachable(&e)),
        };
        Ok(Backlog {
            queued: length.saturating_sub(pending),
            pending,
        })
    }

    /// Stop: no new calls or posts, waiting callers get `Closed`,
    /// subscriptions end (`next` gives `None`) after requeueing what they
    /// hold, posted messages still queued get one last attempt. Waits for
    /// the background tasks (bounded by the configured timeouts).
    pub async fn shutdown(&self) {
        let handle = &self.handle;
        let _ = handle.shutdown.send(true);
        let tasks = std::mem::take(&mut *lock(&handle.tasks));
        let mut readers = std::mem::take(&mut *lock(&handle.core.readers));
        let timing = handle.core.timing;
        let limit = timing.block + timing.command_timeout * 2 + timing.connect_timeout;
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
            while readers.join_next().await.is_some() {}
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(instance = %handle.core.instance, "Redis transport shutdown timed out");
        }
    }

    fn closed(&self) -> Result<(), TransportError> {
        if self.handle.core.is_shut_down() {
            Err(TransportError::Closed)
        } else {
            Ok(())
        }
    }

    fn encode(envelope: &Envelope) -> Result<String, TransportError> {
        serde_json::to_string(envelope)
            .map_err(|e| TransportError::Unreachable(format!("cannot encode envelope: {e}")))
    }
}

impl Transport for RedisTransport {
    fn instance(&self) -> &str {
        &self.handle.core.instance
    }

    fn send<'a>(
        &'a self,
        destination: &'a str,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<Envelope, TransportError>> {
        Box::pin(async move {
            self.closed()?;
            let core = &self.handle.core;
            let mut envelope = envelope;
            core.bound_deadline(&mut envelope);
            let stream = core.stream_key(destination);
            core.sign(&stream, &mut envelope);
            let text = Self::encode(&envelope)?;
            let (reply_tx, reply_rx) = oneshot::channel();
            lock(&core.waiters).insert(
                envelope.request_id.clone(),
                Waiter {
                    reply_wire_name: format!("{}{REPLY_SUFFIX}", envelope.wire_name),
                    reply: reply_tx,
                },
            );
            let _guard = WaiterGuard {
                core,
                request_id: envelope.request_id,
            };
            let (done_tx, done_rx) = oneshot::channel();
            self.handle
                .writer
                .send(WriteJob {
                    stream,
                    envelope: text,
                    reply: Some(core.reply_key.clone()),
                    done: Some(done_tx),
                })
                .map_err(|_| TransportError::Closed)?;
            done_rx.await.map_err(|_| TransportError::Closed)??;
            bump(&core.stats.common.sent);
            reply_rx.await.map_err(|_| TransportError::Closed)
        })
    }

    fn post(&self, destination: &str, envelope: Envelope) -> Result<(), TransportError> {
        self.closed()?;
        let core = &self.handle.core;
        let mut envelope = envelope;
        core.bound_deadline(&mut envelope);
        let stream = core.stream_key(destination);
        core.sign(&stream, &mut envelope);
        let text = Self::encode(&envelope)?;
        self.handle
            .writer
            .send(WriteJob {
                stream,
                envelope: text,
                reply: None,
                done: None,
            })
            .map_err(|_| TransportError::Closed)?;
        bump(&core.stats.common.posted);
        Ok(())
    }

    fn subscribe<'a>(
        &'a self,
        destination: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, TransportError>> {
        Box::pin(async move {
            self.closed()?;
            let sub = subscription::start(&self.handle.core, Arc::clone(&self.handle), destination)
                .await?;
            Ok(Box::new(sub) as Box<dyn Subscription>)
        })
    }

    fn observe(&self) -> Value {
        serde_json::to_value(self.redis_stats()).unwrap_or(Value::Null)
    }

    fn call_latency(&self) -> Option<&CallLatency> {
        Some(&self.handle.core.calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://alice:s3cret@host:6379/0"),
            "redis://alice:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://:s3cret@host"), "rediss://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }

    #[test]
    fn validates_names() {
        let ok = RedisTransportConfig::new("redis://h", "p", "main");
        assert!(ok.validate().is_ok());
        for bad in [
            RedisTransportConfig::new("redis://h", "", "main"),
            RedisTransportConfig::new("redis://h", "p", ""),
            RedisTransportConfig::new("redis://h", "p", "a:b"),
            RedisTransportConfig::new("redis://h", "p", "a").claim_idle(Duration::ZERO),
        ] {
            assert!(matches!(
                bad.validate(),
                Err(RedisTransportError::Config(_))
            ));
        }
    }

    #[test]
    fn timing_is_consistent() {
        let t = RedisTransportConfig::new("redis://h", "p", "a")
            .block(Duration::from_secs(60))
            .claim_idle(Duration::from_secs(4))
            .prefetch(0)
            .timing();
        assert_eq!(t.block, Duration::from_secs(1));
        assert!(t.keep_alive_every < t.claim_idle);
        assert_eq!(t.prefetch, 1);
    }

    #[test]
    fn certificates_need_rediss() {
        let config = RedisTransportConfig::new("redis://127.0.0.1", "p", "a")
            .tls_root_certificates(b"-----BEGIN CERTIFICATE-----".to_vec());
        assert!(matches!(
            config.client(),
            Err(RedisTransportError::Config(_))
        ));
    }
}
