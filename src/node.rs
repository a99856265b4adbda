//! One running instance: its configuration, database pool, notifier, actors
//! and HTTP listener. A `Node` owns everything the instance has (no globals),
//! so a test can run several in one process; handlers get a clone of it.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};
use deadpool_postgres::Pool;
use lattice_actors::{
    shard_index, Endpoint, HmacKey, Mailbox, Placement, RedisTransport, RedisTransportConfig,
    ServeHandle, Supervisor, SupervisorError, Transport,
};
use ruma::OwnedServerName;
use serde_json::Value;

use crate::api::{RateLimiter, TokenCache, TOKEN_CACHE};
use crate::caches::{FilterCache, MembershipCache, RecentEventsCache, MEMBERSHIP_CACHE};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::passwords::PasswordHasher;
use crate::roles::events::{
    CreateRoom, EventPersister, Persisted, SendEvent, Transaction, EVENTS_STREAM,
};
use crate::roles::Role;
use crate::signing_key::SigningKey;
use crate::storage;
use crate::streams::caches::{CachesWriter, Invalidation};
use crate::streams::notifier::Notifier;
use crate::streams::replication::{Replication, ReplicationConfig};
use crate::streams::shared::SharedStream;

/// How long a request waits to see its own write replicated back.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);

/// How long a sync request waits for replication to catch up with what is committed.
const CATCH_UP_WAIT: Duration = Duration::from_millis(500);

/// Deliveries of the event persister's mailbox endpoint handled at once: enough to
/// fill its batches (100 sends a transaction).
const REMOTE_PERSISTER_CONCURRENCY: usize = 256;

/// How far ahead a mailbox request's deadline may be (the Redis transport
/// remembers request ids until then, to refuse replays): the default, or
/// more if `write_timeout_ms` asks for longer calls.
fn replay_window(write_timeout_ms: u64) -> Duration {
    lattice_actors::DEFAULT_REPLAY_WINDOW
        .max(Duration::from_millis(write_timeout_ms.saturating_mul(2)))
}

/// What the handlers of an instance share. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub config: Arc<Config>,
    pub instance_name: String,
    pub pool: Pool,
    pub notifier: Notifier,
    /// This instance's view of the events stream.
    pub stream: SharedStream,
    pub roles: Arc<Vec<Role>>,
    pub rate_limiter: Arc<RateLimiter>,
    /// Failed logins per account (`rate_limits.login_failed_attempts`).
    pub login_failures: Arc<RateLimiter>,
    pub passwords: PasswordHasher,
    pub tokens: Arc<TokenCache>,
    /// Each user's memberships, for `/sync`.
    pub memberships: Arc<MembershipCache>,
    /// The latest events of busy rooms, for `/sync`.
    pub recent_events: Arc<RecentEventsCache>,
    /// Stored filters, which never change.
    pub filters: Arc<FilterCache>,
    /// The writers of the events stream, in config order (the sharding rule indexes it).
    event_writers: Arc<Vec<EventWriter>>,
    pub supervisor: Arc<Supervisor>,
    /// Request counters and the /metrics exposition of this instance.
    pub metrics: Arc<crate::api::metrics::Metrics>,
    replication: Option<Arc<Replication>>,
    /// Where this instance writes cache invalidations for the others (none
    /// in the monolith, which has no others).
    caches_writer: Option<Arc<CachesWriter>>,
    /// The multi-threaded runtime the instance was started on, where
    /// long-polls run rather than on the HTTP threads (see `sync`).
    pub runtime: tokio::runtime::Handle,
    /// The mailbox endpoints serving this instance's actors to the others.
    endpoints: Arc<tokio::sync::Mutex<Vec<ServeHandle>>>,
}

/// The mailboxes of one events writer.
struct EventWriter {
    send: Mailbox<SendEvent>,
    create: Mailbox<CreateRoom>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("actors: {0}")]
    Supervisor(#[from] SupervisorError),
    #[error("topology: {0}")]
    Topology(String),
    #[error("http listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A started instance: its address, and the handle to stop it.
pub struct RunningNode {
    pub node: Node,
    pub addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The heartbeat, and the periodic jobs of the `background` role.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often an instance records that it is alive (and how far it has seen).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Records this instance in the `instances` table now and every few seconds.
async fn heartbeat(node: Node, addr: SocketAddr) {
    let roles: Vec<String> = node.roles.iter().map(|r| r.name().to_owned()).collect();
    let started_ts = crate::util::now_ms();
    let host = addr.to_string();
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        ticker.tick().await;
        let beat = storage::instances::Heartbeat {
            instance: &node.instance_name,
            roles: &roles,
            host: &host,
            pid: std::process::id() as i32,
            started_ts,
            events_position: node.notifier.events_position(),
            caches_positions: node
                .replication
                .as_ref()
                .map(|replication| replication.stats.caches_positions())
                .unwrap_or_else(|| serde_json::json!({})),
        };
        if let Err(error) = storage::instances::beat(&node.pool, &beat).await {
            tracing::warn!(error = %error, "heartbeat failed");
        }
    }
}

/// How often the background instance deletes what is past its retention.
const CLEAN_UP_INTERVAL: Duration = Duration::from_secs(3600);

/// How long a request id is kept with the event it wrote: far beyond any
/// mailbox deadline (minutes), so a redelivered message still finds it.
const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Deletes, hourly, what is past its retention: `caches` stream rows
/// (readers catch up only over what they missed while disconnected, never
/// over a week) and the request ids that made mailbox messages idempotent.
async fn clean_up(pool: Pool) {
    let mut ticker = tokio::time::interval(CLEAN_UP_INTERVAL);
    loop {
        ticker.tick().await;
        let now = crate::util::now_ms();
        let before = now - crate::streams::caches::RETENTION.as_millis() as i64;
        match storage::caches::delete_older_than(&pool, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted old cache invalidations"),
            Err(error) => tracing::warn!(error = %error, "deleting old cache invalidations failed"),
        }
        let before = now - REQUEST_ID_RETENTION.as_millis() as i64;
        match storage::rooms::delete_request_ids_older_than(&pool, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted old request ids"),
            Err(error) => tracing::warn!(error = %error, "deleting old request ids failed"),
        }
    }
}

impl Node {
    /// Starts an instance running every role: the monolith.
    pub async fn start(
        config: Config,
        instance_name: &str,
        listener: TcpListener,
        http_workers: usize,
    ) -> Result<RunningNode, NodeError> {
        Self::start_with_roles(config, instance_name, &Role::ALL, listener, http_workers).await
    }

    /// Connects to the database, applies migrations, starts the actors of
    /// `roles` (reaching every other actor through Redis mailboxes) and
    /// serves the HTTP endpoints of `roles` on `listener` (bound by the
    /// caller, so tests can bind `127.0.0.1:0`).
    pub async fn start_with_roles(
        config: Config,
        instance_name: &str,
        roles: &[Role],
        listener: TcpListener,
        http_workers: usize,
    ) -> Result<RunningNode, NodeError> {
        // Everything in one process needs no Redis and does not contact it.
        let single_process = !config.is_split(instance_name, roles);
        if !single_process {
            config.check_split()?;
        }
        let pool = storage::connect(&config.database.url, config.database.pool_size)?;
        storage::migrate(&pool).await?;
        let server_name = OwnedServerName::try_from(config.server_name.as_str()).map_err(|e| {
            crate::config::ConfigError::Invalid {
                key: "server_name",
                message: e.to_string(),
            }
        })?;
        let signing_key = SigningKey::parse(&config.signing_key).map_err(|message| {
            crate::config::ConfigError::Invalid {
                key: "signing_key",
                message,
            }
        })?;
        let hmac_key = match &config.replication_secret {
            Some(secret) => {
                Some(
                    HmacKey::new(secret).map_err(|e| crate::config::ConfigError::Invalid {
                        key: "replication_secret",
                        message: e.to_string(),
                    })?,
                )
            }
            None => None,
        };

        let event_writers = config.stream_writers(EVENTS_STREAM);
        let writes_events =
            roles.contains(&Role::Events) && event_writers.iter().any(|w| w == instance_name);
        let notifier = Notifier::new(1);
        let positions = storage::streams::load_positions(
            &pool,
            &storage::streams::EVENTS,
            instance_name,
            &event_writers,
        )
        .await?;
        let stream = SharedStream::new(positions, notifier.clone());

        let tokens = Arc::new(TokenCache::default());
        let memberships = Arc::new(MembershipCache::default());
        let recent_events = Arc::new(RecentEventsCache::default());
        let (redis_transport, replication, caches_writer) = if single_process {
            (None, None, None)
        } else {
            let url = config.redis.url.clone().ok_or(NodeError::Topology(
                "redis.url is required when roles or stream writers are spread over several instances".into(),
            ))?;
            let mut redis_config =
                RedisTransportConfig::new(url, config.redis_prefix(), instance_name)
                    .maybe_hmac_key(hmac_key.clone())
                    .replay_window(replay_window(config.write_timeout_ms));
            if let Some(path) = &config.redis.tls_ca_file {
                redis_config = redis_config
                    .tls_root_certificates(crate::config::read_file("redis.tls_ca_file", path)?);
            }
            if let (Some(certificate), Some(key)) = (
                &config.redis.tls_client_certificate_file,
                &config.redis.tls_client_key_file,
            ) {
                redis_config = redis_config.tls_client_identity(
                    crate::config::read_file("redis.tls_client_certificate_file", certificate)?,
                    crate::config::read_file("redis.tls_client_key_file", key)?,
                );
            }
            let redis = redis_config
                .client()
                .map_err(|e| NodeError::Topology(format!("redis: {e}")))?;
            let transport = RedisTransport::connect(redis_config)
                .await
                .map_err(|e| NodeError::Topology(format!("redis: {e}")))?;
            // Read before anything is cached: rows up to here concern
            // changes this instance can only have read after they were made.
            let caches_floor = storage::caches::last_allocated(&pool).await?;
            let caches_position = Arc::new(AtomicI64::new(
                storage::caches::last_written_by(&pool, instance_name).await?,
            ));
            let replication = Replication::start(
                ReplicationConfig {
                    redis,
                    channel: config.redis_prefix(),
                    instance: instance_name.to_owned(),
                    key: hmac_key,
                    events_writer: writes_events,
                    invalidate: {
                        let tokens = tokens.clone();
                        let memberships = memberships.clone();
                        Arc::new(move |invalidation| {
                            tokens.invalidate(invalidation);
                            memberships.invalidate(invalidation);
                        })
                    },
                    caches_position: Arc::clone(&caches_position),
                    caches_floor,
                    new_events: {
                        let recent_events = recent_events.clone();
                        let notifier = notifier.clone();
                        Arc::new(move |events, position| {
                            recent_events.extend(&notifier, events, position)
                        })
                    },
                },
                stream.clone(),
                pool.clone(),
            );
            let caches_writer = CachesWriter::new(
                instance_name,
                pool.clone(),
                replication.publisher.clone(),
                caches_position,
            );
            (Some(transport), Some(replication), Some(caches_writer))
        };
        let transport = redis_transport
            .clone()
            .map(|transport| Arc::new(transport) as Arc<dyn Transport>);

        let supervisor = Arc::new(Supervisor::new());
        let mut endpoints = Vec::new();
        let local_persister = if writes_events {
            let pool = pool.clone();
            let instance = instance_name.to_owned();
            let stream = stream.clone();
            let writers = event_writers.clone();
            let publisher = replication.as_ref().map(|r| r.publisher.clone());
            let recent_events = recent_events.clone();
            let cached_rooms = config.event_writer_cached_rooms;
            let addr = supervisor.start("event_persister", move || {
                EventPersister::new(
                    pool.clone(),
                    instance.clone(),
                    server_name.clone(),
                    signing_key.key_pair(),
                    stream.clone(),
                    writers.clone(),
                    publisher.clone(),
                    recent_events.clone(),
                    cached_rooms,
                )
            })?;
            if let Some(transport) = &transport {
                let endpoint = Endpoint::new(
                    transport.clone(),
                    Placement::destination(EVENTS_STREAM, instance_name),
                )
                .route_mailbox(addr.mailbox::<SendEvent>())
                .route_mailbox(addr.mailbox::<CreateRoom>())
                // Many deliveries in flight, so that the persister's inbox fills and
                // it commits them in batches as it does for local callers; one at a
                // time, every remote send paid a transaction of its own.
                .concurrency(REMOTE_PERSISTER_CONCURRENCY)
                .start()
                .await
                .map_err(|e| NodeError::Topology(format!("serving the event persister: {e}")))?;
                endpoints.push(endpoint);
            }
            Some(addr)
        } else {
            None
        };
        let mut event_writer_mailboxes = Vec::new();
        for writer in &event_writers {
            let mailboxes = match (&local_persister, &transport) {
                (Some(addr), _) if writer == instance_name => (addr.mailbox(), addr.mailbox()),
                (_, Some(transport)) => {
                    let destination = Placement::destination(EVENTS_STREAM, writer);
                    (
                        Mailbox::remote(transport.clone(), destination.clone()),
                        Mailbox::remote(transport.clone(), destination),
                    )
                }
                _ => {
                    return Err(NodeError::Topology(format!(
                        "no way to reach events writer `{writer}`"
                    )))
                }
            };
            event_writer_mailboxes.push(EventWriter {
                send: mailboxes.0,
                create: mailboxes.1,
            });
        }

        let mut metrics = crate::api::metrics::Metrics::new(instance_name, Arc::clone(&supervisor));
        if let Some(transport) = redis_transport {
            let served = endpoints
                .iter()
                .map(|endpoint| endpoint.destination().to_owned())
                .collect();
            metrics = metrics.with_mailboxes(transport, served);
        }
        if let Some(replication) = &replication {
            metrics = metrics.with_replication(Arc::clone(&replication.stats), stream.clone());
        }

        let node = Node {
            rate_limiter: Arc::new(RateLimiter::new(&config.rate_limits)),
            login_failures: Arc::new(RateLimiter::login_failures(&config.rate_limits)),
            passwords: PasswordHasher::default(),
            tokens,
            memberships,
            recent_events,
            filters: Arc::new(FilterCache::default()),
            config: Arc::new(config),
            instance_name: instance_name.to_owned(),
            roles: Arc::new(roles.to_vec()),
            pool,
            notifier,
            stream,
            event_writers: Arc::new(event_writer_mailboxes),
            supervisor,
            metrics: Arc::new(metrics),
            replication: replication.map(Arc::new),
            caches_writer: caches_writer.map(Arc::new),
            runtime: tokio::runtime::Handle::current(),
            endpoints: Arc::new(tokio::sync::Mutex::new(endpoints)),
        };
        let addr = listener.local_addr()?;
        let mut tasks = vec![tokio::spawn(heartbeat(node.clone(), addr))];
        if node.has_role(Role::Background) {
            tasks.push(tokio::spawn(clean_up(node.pool.clone())));
        }
        let app_node = node.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(app_node.clone()))
                .app_data(web::Data::from(Arc::clone(&app_node.metrics)))
                .wrap(
                    middleware::DefaultHeaders::new()
                        .add(("Access-Control-Allow-Origin", "*"))
                        .add((
                            "Access-Control-Allow-Methods",
                            "GET, POST, PUT, DELETE, OPTIONS",
                        ))
                        .add((
                            "Access-Control-Allow-Headers",
                            "X-Requested-With, Content-Type, Authorization, Date",
                        )),
                )
                .wrap(middleware::from_fn(crate::api::serve_only_own_roles))
                // Outermost, so that refused requests are counted too.
                .wrap(app_node.metrics.middleware())
                .configure(crate::api::metrics::configure)
                .configure(crate::api::configure)
        })
        .listen(listener)?
        .workers(http_workers.max(1))
        .disable_signals()
        .shutdown_timeout(2)
        .run();
        let handle = server.handle();
        let server_task = tokio::spawn(server);
        tracing::info!(instance = instance_name, %addr, roles = ?roles.iter().map(|r| r.name()).collect::<Vec<_>>(), "listening");
        Ok(RunningNode {
            node,
            addr,
            server: handle,
            server_task,
            tasks,
        })
    }

    /// Waits (briefly) until this instance has seen every writer reach the
    /// position it has committed, as `stream_positions` says. An instance that
    /// is not the writer answers a client who just wrote elsewhere with that
    /// write included, not a moment later.
    pub async fn catch_up_with_writers(&self) -> ApiResult<()> {
        if self.replication.is_none() {
            return Ok(());
        }
        let client = self.pool.get().await.map_err(ApiError::internal)?;
        let rows = client
            .query(
                "SELECT instance_name, stream_id FROM stream_positions WHERE stream_name = $1",
                &[&EVENTS_STREAM],
            )
            .await
            .map_err(ApiError::internal)?;
        drop(client);
        for row in rows {
            let writer: String = row.get(0);
            let position: i64 = row.get(1);
            self.stream
                .wait_for_writer(&writer, position, CATCH_UP_WAIT)
                .await;
        }
        Ok(())
    }

    /// Tells the other instances that the tokens of a device (or of every
    /// device of the user) are gone, and forgets them here. Call it after
    /// the change is committed.
    pub async fn forget_tokens(&self, user_id: &str, device_id: Option<&str>) -> ApiResult<()> {
        self.tokens.forget(user_id, device_id);
        self.invalidate_elsewhere(Invalidation::new(TOKEN_CACHE, &[Some(user_id), device_id]))
            .await
    }

    /// Forgets the cached memberships of `user_id` here and on every other
    /// instance: for changes that are not events (forgetting a room).
    pub async fn forget_memberships(&self, user_id: &str) -> ApiResult<()> {
        self.memberships.forget(user_id);
        self.invalidate_elsewhere(Invalidation::new(MEMBERSHIP_CACHE, &[Some(user_id)]))
            .await
    }

    /// Writes a `caches` stream row for the other instances (none in the monolith).
    async fn invalidate_elsewhere(&self, invalidation: Invalidation) -> ApiResult<()> {
        if let Some(writer) = &self.caches_writer {
            writer.write(invalidation).await?;
        }
        Ok(())
    }

    /// How long a request waits for a writer (`write_timeout_ms`).
    fn write_deadline(&self) -> Duration {
        Duration::from_millis(self.config.write_timeout_ms)
    }

    /// Whether this instance runs every role (then it serves every endpoint).
    pub fn has_every_role(&self) -> bool {
        Role::ALL.iter().all(|role| self.roles.contains(role))
    }

    /// Whether this instance runs `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The writer of a room's events: Synapse's sharding rule over the
    /// configured writers.
    fn event_writer(&self, room_id: Option<&str>) -> ApiResult<&EventWriter> {
        let index = match room_id {
            Some(room_id) => shard_index(room_id, self.event_writers.len()).unwrap_or(0),
            None => 0,
        };
        self.event_writers
            .get(index)
            .ok_or_else(|| ApiError::unavailable("no events writer is configured"))
    }

    /// Read-your-writes: waits (bounded) until this instance has seen the
    /// writer's position reach what it persisted, so what the client does
    /// next here sees its own write.
    async fn seen(&self, persisted: Persisted) -> Persisted {
        if !self
            .stream
            .wait_for_writer(
                &persisted.instance,
                persisted.stream_ordering,
                READ_YOUR_WRITES_WAIT,
            )
            .await
        {
            tracing::warn!(writer = %persisted.instance, position = persisted.stream_ordering, "replication lags: answering before seeing our own write");
        }
        persisted
    }

    /// Persists an event through the events writer.
    pub async fn send_event(&self, request: SendEvent) -> ApiResult<Persisted> {
        let writer = self.event_writer(Some(&request.room_id))?;
        let persisted = writer.send.call(request, self.write_deadline()).await??;
        Ok(self.seen(persisted).await)
    }

    pub async fn send_state_event(
        &self,
        room_id: &str,
        sender: &str,
        kind: &str,
        state_key: &str,
        content: Value,
    ) -> ApiResult<Persisted> {
        self.send_event(SendEvent {
            room_id: room_id.to_owned(),
            sender: sender.to_owned(),
            kind: kind.to_owned(),
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
            // Made here, where the request enters the server: a mailbox
            // message delivered twice then writes once.
            txn: Some(Transaction::request()),
        })
        .await
    }

    pub async fn create_room(&self, request: CreateRoom) -> ApiResult<Persisted> {
        // A room's id is not known before its create event exists (room
        // version 12), so new rooms go to the first writer.
        let writer = self.event_writer(None)?;
        let persisted = writer.create.call(request, self.write_deadline()).await??;
        Ok(self.seen(persisted).await)
    }

    /// Snapshots of every local actor, for tests and the admin API.
    pub async fn observe(&self) -> Value {
        let mut snapshot =
            serde_json::to_value(self.supervisor.observe_all().await).unwrap_or(Value::Null);
        if let (Some(replication), Some(object)) = (&self.replication, snapshot.as_object_mut()) {
            object.insert("replication".into(), replication.stats.snapshot());
        }
        snapshot
    }
}

impl RunningNode {
    /// Stops at once, as a crash would: connections are dropped and actors
    /// end where they are, leaving unacknowledged mailbox messages to be
    /// delivered again. For tests of recovery.
    pub async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.server.stop(false).await;
        self.server_task.abort();
        for endpoint in self.node.endpoints.lock().await.drain(..) {
            endpoint.abort().await;
        }
    }

    /// Stops accepting requests, lets in-flight ones finish (briefly), then
    /// stops the actors.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.server.stop(true).await;
        let _ = self.server_task.await;
        for endpoint in self.node.endpoints.lock().await.drain(..) {
            endpoint.shutdown().await;
        }
        self.node.supervisor.shutdown().await;
    }
}
