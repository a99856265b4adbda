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
    Endpoint, HmacKey, MailboxError, Placement, RedisTransport, RedisTransportConfig, ServeHandle,
    Supervisor, SupervisorError, Transport,
};
use ruma::{OwnedServerName, RoomId, UserId};
use serde_json::Value;

use crate::api::client::device::last_seen::{self, LastSeenTracker};
use crate::api::{RateLimiter, TokenCache, TOKEN_CACHE};
use crate::caches::{FilterCache, MembershipCache, RecentEventsCache, MEMBERSHIP_CACHE};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::passwords::PasswordHasher;
use crate::roles::events::{CreateRoom, Persisted, SendEvent, Transaction, EVENTS_STREAM};
use crate::roles::{ActorStart, Mailboxes, Role, WriteError, WriterRefusal, ACTORS};
use crate::shards::{LeaseTiming, ShardLeases, ShardMap, BACKGROUND_KIND};
use crate::signing_key::SigningKey;
use crate::storage;
use crate::streams::caches::{CachesStream, CachesWriter, Invalidation};
use crate::streams::gone;
use crate::streams::notifier::Notifier;
use crate::streams::registry::{self, RegisteredStream, Streams};
use crate::streams::replication::{
    PositionedStream, Publisher, ReplicatedStream, Replication, ReplicationConfig, ReplicationStats,
};
use crate::streams::stall::StallWatchdog;
use crate::streams::writer::StreamWriter;

/// How long a request waits to see its own write replicated back.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);

/// How long a sync request waits for replication to catch up with what is committed.
const CATCH_UP_WAIT: Duration = Duration::from_millis(500);

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
    /// This instance's view of every stream.
    pub streams: Streams,
    /// The actors of every role, local or remote.
    pub mailboxes: Arc<Mailboxes>,
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
    /// What the latest events of each room did for each member, for `/sync`.
    pub recent_push: Arc<crate::push::recent::RecentPushActions>,
    /// The unread counts each user was last given, for `/sync`.
    pub unread: Arc<crate::sync::notifications::UnreadCache>,
    /// Each device's one-time and fallback key counts, for `/sync`.
    pub key_counts: Arc<crate::sync::one_time_keys::KeyCountCache>,
    /// Up to where each device's to-device messages were deleted here.
    pub to_device_deleted: Arc<crate::sync::to_device::DeletedUpTo>,
    /// When and from where this instance saw each device, until written.
    pub last_seen: Arc<LastSeenTracker>,
    /// Push rule evaluation of new events, and the rulesets it caches.
    pub push: Arc<crate::push::evaluator::PushEvaluator>,
    /// The media repository (used by instances with the `media` role).
    pub media: Arc<crate::media::MediaRepository>,
    pub supervisor: Arc<Supervisor>,
    /// Request counters and the /metrics exposition of this instance.
    pub metrics: Arc<crate::api::metrics::Metrics>,
    /// Replication and the `caches` stream it reads (none in the monolith).
    replication: Option<(Arc<Replication>, Arc<CachesStream>)>,
    /// Where this instance writes cache invalidations for the others (none
    /// in the monolith, which has no others).
    caches_writer: Option<Arc<CachesWriter>>,
    /// The multi-threaded runtime the instance was started on, where
    /// long-polls run rather than on the HTTP threads (see `sync`).
    pub runtime: tokio::runtime::Handle,
    /// The mailbox endpoints serving this instance's actors to the others.
    endpoints: Arc<tokio::sync::Mutex<Vec<ServeHandle>>>,
    /// Who owns each shard of the event persisters.
    pub event_shards: Arc<ShardMap>,
    /// Who holds the duties that must run once in the whole deployment
    /// (clean-up jobs): the owner of shard 0 of `background`, among the
    /// instances with the `background` role.
    pub background_shards: Arc<ShardMap>,
    /// Every sharded kind (`crate::shards::KINDS`): who owns its shards,
    /// and whether this instance may (then it hands its shards over when
    /// it stops).
    leased: Arc<Vec<LeasedKind>>,
}

/// One sharded kind as an instance sees it.
struct LeasedKind {
    map: Arc<ShardMap>,
    /// Whether this instance has the kind's role, so may own its shards.
    member: bool,
    timing: LeaseTiming,
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

/// How long a send whose room's shard is moving waits for the owners to be
/// read again before it asks again.
const ROUTE_RETRY_PAUSE: Duration = Duration::from_millis(250);

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
            stream_positions: serde_json::json!(node.notifier.positions_by_stream()),
            caches_positions: node
                .replication
                .as_ref()
                .map(|(_, caches)| caches.positions_json())
                .unwrap_or_else(|| serde_json::json!({})),
            stalled_writers: node
                .replication
                .as_ref()
                .map(|(replication, _)| replication.stats.stalled_json())
                .unwrap_or_else(|| serde_json::json!([])),
        };
        if let Err(error) = storage::instances::beat(&node.pool, &beat).await {
            tracing::warn!(error = %error, "heartbeat failed");
        }
    }
}

/// How often the background instance deletes what is past its retention.
const CLEAN_UP_INTERVAL: Duration = Duration::from_secs(3600);

/// The `background` shard whose holder runs [`clean_up`].
const CLEAN_UP_SHARD: i32 = 0;

/// How long a request id is kept with the event it wrote: far beyond any
/// mailbox deadline (minutes), so a redelivered message still finds it.
const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Deletes, hourly, what is past its retention: `caches` stream rows
/// (readers catch up only over what they missed while disconnected, never
/// over a week), user-interactive auth sessions (giving back the
/// registration token uses they held), the addresses devices used four
/// weeks ago, and the request ids that made mailbox messages idempotent.
/// Runs only on the instance holding shard 0 of `background`: with two
/// background instances, one does it, and the other takes over if it dies.
async fn clean_up(pool: Pool, duties: Arc<ShardMap>) {
    let mut ticker = tokio::time::interval(CLEAN_UP_INTERVAL);
    loop {
        ticker.tick().await;
        if duties.held_here(CLEAN_UP_SHARD).is_none() {
            continue;
        }
        let now = crate::util::now_ms();
        let before = now - crate::streams::caches::RETENTION.as_millis() as i64;
        match storage::caches::delete_older_than(&pool, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted old cache invalidations"),
            Err(error) => tracing::warn!(error = %error, "deleting old cache invalidations failed"),
        }
        let before = now - crate::api::client::uiaa::SESSION_LIFETIME.as_millis() as i64;
        match storage::accounts::delete_uia_sessions_older_than(&pool, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted old user-interactive auth sessions"),
            Err(error) => tracing::warn!(error = %error, "deleting old auth sessions failed"),
        }
        let before = now - last_seen::CONNECTION_RETENTION.as_millis() as i64;
        match storage::devices::delete_connections_older_than(&pool, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted devices' old addresses"),
            Err(error) => tracing::warn!(error = %error, "deleting devices' old addresses failed"),
        }
        let before = now - REQUEST_ID_RETENTION.as_millis() as i64;
        match storage::rooms::delete_request_ids_older_than(&pool, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted old request ids"),
            Err(error) => tracing::warn!(error = %error, "deleting old request ids failed"),
        }
    }
}

/// The Redis client replication uses and the mailbox transport, both with
/// the configured URL, credentials and TLS.
async fn connect_redis(
    config: &Config,
    instance_name: &str,
    hmac_key: Option<HmacKey>,
) -> Result<(redis::Client, RedisTransport), NodeError> {
    let url = config.redis.url.clone().ok_or(NodeError::Topology(
        "redis.url is required when roles or stream writers are spread over several instances"
            .into(),
    ))?;
    let mut redis_config = RedisTransportConfig::new(url, config.redis_prefix(), instance_name)
        .maybe_hmac_key(hmac_key)
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
    Ok((redis, transport))
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

        let config = Arc::new(config);
        let tokens = Arc::new(TokenCache::default());
        let memberships = Arc::new(MembershipCache::default());
        let key_counts = Arc::new(crate::sync::one_time_keys::KeyCountCache::default());
        let recent_events = Arc::new(RecentEventsCache::default());
        let recent_push = Arc::new(crate::push::recent::RecentPushActions::default());
        let notifier = Notifier::new();
        let (redis, transport) = if single_process {
            (None, None)
        } else {
            let (redis, transport) =
                connect_redis(&config, instance_name, hmac_key.clone()).await?;
            (Some(redis), Some(transport))
        };
        let (publisher, publish_queue) = match &redis {
            Some(_) => {
                let (publisher, queue) = Publisher::new();
                (Some(publisher), Some(queue))
            }
            None => (None, None),
        };

        // Every sharded actor kind is placed by the `stream_writers` of its stream.
        let placement = Placement::new(
            instance_name,
            registry::configured_streams()
                .map(|spec| (spec.name, config.stream_writers(spec.name))),
        )
        .map_err(|e| NodeError::Topology(e.to_string()))?;
        // The writers of every stream and the background duties own their
        // shards by lease (`crate::shards`): read who owns what, and take
        // this instance's share, before anything is written. Every instance
        // with a stream's role writes it, listed in its `stream_writers` or
        // not: one that is not joins while the others run (see `ShardLeases`).
        let beat_every = Duration::from_millis(config.shards.heartbeat_ms.max(1));
        let timeout = Duration::from_millis(config.shards.lease_timeout_ms.max(1));
        let mut leased = Vec::new();
        let mut lease_tasks = Vec::new();
        for kind in crate::shards::KINDS {
            let (member, listed) = if kind == BACKGROUND_KIND {
                // Duties write no stream: a new member needs no settling.
                (roles.contains(&Role::Background), None)
            } else {
                (
                    Role::writing(kind).is_some_and(|role| roles.contains(&role)),
                    Some(config.stream_writers(kind)),
                )
            };
            let timing = LeaseTiming {
                heartbeat: beat_every,
                timeout,
                listed,
            };
            let map = Arc::new(ShardMap::new(kind, instance_name));
            let mut leases = ShardLeases::new(map.clone(), pool.clone(), member, timing.clone());
            leases.beat().await?;
            lease_tasks.push(leases);
            leased.push(LeasedKind {
                map,
                member,
                timing,
            });
        }
        let leased = Arc::new(leased);
        let shard_map = |kind: &str| {
            leased
                .iter()
                .find(|leased| leased.map.kind() == kind)
                .map(|leased| leased.map.clone())
                .expect("every sharded kind has a map")
        };
        let event_shards = shard_map(EVENTS_STREAM);
        let background_shards = shard_map(BACKGROUND_KIND);
        let mailboxes = Arc::new(Mailboxes::new(
            placement,
            transport
                .clone()
                .map(|transport| Arc::new(transport) as Arc<dyn Transport>),
            leased
                .iter()
                .filter(|leased| leased.map.kind() != BACKGROUND_KIND)
                .map(|leased| leased.map.clone())
                .collect(),
        ));

        let parts = registry::NodeParts {
            pool: pool.clone(),
            notifier: notifier.clone(),
            recent_events: recent_events.clone(),
            recent_push: recent_push.clone(),
            mailboxes: mailboxes.clone(),
        };
        let mut registered = Vec::new();
        for rows in registry::stream_rows(&parts) {
            let spec = rows.spec();
            let mut writers = config.stream_writers(spec.name);
            let mut writes = writers.iter().any(|w| w == instance_name)
                && Role::writing(spec.name).is_some_and(|role| roles.contains(&role));
            if let Some(kind) = leased.iter().find(|leased| leased.map.kind() == spec.name) {
                // The writers are the members of the stream's shards, the
                // listed ones and those that joined since.
                for member in kind.map.live_members() {
                    if !writers.contains(&member) {
                        writers.push(member);
                    }
                }
                if kind.member && !writers.iter().any(|w| w == instance_name) {
                    writers.push(instance_name.to_owned());
                }
                writes = kind.member;
            }
            let positions =
                storage::streams::load_positions(&pool, spec, instance_name, &writers).await?;
            let positions = registry::shared(spec, positions, &notifier);
            let writer = writes.then(|| {
                StreamWriter::new(
                    rows.clone(),
                    instance_name,
                    positions.clone(),
                    publisher.clone(),
                )
            });
            registered.push(RegisteredStream {
                rows,
                positions,
                writer,
            });
        }
        let streams = Streams::new(notifier.clone(), registered);

        let (replication, caches_writer) = match (redis, publisher, publish_queue) {
            (Some(redis), Some(publisher), Some(queue)) => {
                let stats = Arc::new(ReplicationStats::default());
                // Read before anything is cached: rows up to here concern
                // changes this instance can only have read after they were made.
                let caches_floor = storage::caches::last_allocated(&pool).await?;
                let caches_position = Arc::new(AtomicI64::new(
                    storage::caches::last_written_by(&pool, instance_name).await?,
                ));
                let caches = Arc::new(CachesStream::new(
                    instance_name,
                    pool.clone(),
                    caches_floor,
                    {
                        let tokens = tokens.clone();
                        let memberships = memberships.clone();
                        let key_counts = key_counts.clone();
                        Arc::new(move |invalidation| {
                            tokens.invalidate(invalidation);
                            memberships.invalidate(invalidation);
                            key_counts.invalidate(invalidation);
                        })
                    },
                    Arc::clone(&caches_position),
                    stats.clone(),
                ));
                let mut replicated: Vec<Arc<dyn ReplicatedStream>> = streams
                    .iter()
                    .map(|stream| {
                        Arc::new(PositionedStream::new(
                            stream.clone(),
                            instance_name,
                            stats.clone(),
                        )) as Arc<dyn ReplicatedStream>
                    })
                    .collect();
                replicated.push(caches.clone());
                let replication = Replication::start(
                    ReplicationConfig {
                        redis,
                        channel: config.redis_prefix(),
                        instance: instance_name.to_owned(),
                        key: hmac_key,
                    },
                    publisher.clone(),
                    queue,
                    replicated,
                    stats,
                );
                let caches_writer =
                    CachesWriter::new(instance_name, pool.clone(), publisher, caches_position);
                (
                    Some((Arc::new(replication), caches)),
                    Some(Arc::new(caches_writer)),
                )
            }
            _ => (None, None),
        };

        // The actors of this instance's roles, from the role table.
        let supervisor = Arc::new(Supervisor::new());
        let start = ActorStart {
            instance: instance_name.to_owned(),
            config: config.clone(),
            pool: pool.clone(),
            server_name,
            signing_key,
            streams: streams.clone(),
            recent_events: recent_events.clone(),
            recent_push: recent_push.clone(),
            supervisor: supervisor.clone(),
            mailboxes: mailboxes.clone(),
        };
        let mut endpoints = Vec::new();
        for row in ACTORS {
            let placed_here = match leased.iter().find(|leased| leased.map.kind() == row.kind) {
                Some(kind) => kind.member,
                None => mailboxes
                    .instances(row.kind)
                    .iter()
                    .any(|instance| instance == instance_name),
            };
            if !roles.contains(&row.role) || !placed_here {
                continue;
            }
            let started = (row.start)(&start).map_err(|e| {
                NodeError::Topology(format!("starting the {} actor: {e}", row.kind))
            })?;
            if let Some(transport) = mailboxes.transport() {
                let endpoint = (started.serve)(Endpoint::new(
                    transport.clone(),
                    Placement::destination(row.kind, instance_name),
                ))
                .start()
                .await
                .map_err(|e| NodeError::Topology(format!("serving the {} actor: {e}", row.kind)))?;
                endpoints.push(endpoint);
            }
        }

        let mut metrics = crate::api::metrics::Metrics::new(instance_name, Arc::clone(&supervisor))
            .with_streams(notifier.clone());
        if let Some(transport) = transport {
            let served = endpoints
                .iter()
                .map(|endpoint| endpoint.destination().to_owned())
                .collect();
            metrics = metrics.with_mailboxes(transport, served);
        }
        if let Some((replication, _)) = &replication {
            metrics = metrics.with_replication(Arc::clone(replication));
        }

        let node = Node {
            rate_limiter: Arc::new(RateLimiter::new(&config.rate_limits)),
            login_failures: Arc::new(RateLimiter::login_failures(&config.rate_limits)),
            passwords: PasswordHasher::default(),
            tokens,
            memberships,
            recent_events,
            recent_push,
            filters: Arc::new(FilterCache::default()),
            unread: Arc::default(),
            key_counts,
            to_device_deleted: Arc::default(),
            last_seen: Arc::new(LastSeenTracker::default()),
            media: Arc::new(crate::media::MediaRepository::new(
                config.media.clone(),
                &config.server_name,
                pool.clone(),
            )),
            push: Arc::new(crate::push::evaluator::PushEvaluator::new(
                &config.server_name,
                &notifier,
            )),
            config,
            instance_name: instance_name.to_owned(),
            roles: Arc::new(roles.to_vec()),
            pool,
            notifier,
            streams,
            mailboxes,
            supervisor,
            metrics: Arc::new(metrics),
            replication,
            caches_writer,
            runtime: tokio::runtime::Handle::current(),
            endpoints: Arc::new(tokio::sync::Mutex::new(endpoints)),
            event_shards,
            background_shards,
            leased,
        };
        let addr = listener.local_addr()?;
        let mut tasks: Vec<_> = lease_tasks
            .into_iter()
            .map(|leases| tokio::spawn(leases.run()))
            .collect();
        tasks.extend([
            tokio::spawn(heartbeat(node.clone(), addr)),
            tokio::spawn(last_seen::flush_periodically(
                node.last_seen.clone(),
                node.pool.clone(),
            )),
        ]);
        if let Some((replication, _)) = &node.replication {
            for kind in node.leased.iter() {
                if kind.map.kind() == BACKGROUND_KIND {
                    continue;
                }
                let Some(stream) = node.streams.get(kind.map.kind()).cloned() else {
                    continue;
                };
                tasks.push(tokio::spawn(gone::settle_gone_writers(
                    node.instance_name.clone(),
                    node.pool.clone(),
                    stream,
                    kind.map.clone(),
                    replication.clone(),
                    beat_every,
                )));
            }
        }
        if node.has_role(Role::Background) {
            tasks.push(tokio::spawn(clean_up(
                node.pool.clone(),
                node.background_shards.clone(),
            )));
        }
        if let Some((replication, _)) = &node.replication {
            let watchdog = StallWatchdog::new(
                replication,
                instance_name,
                node.pool.clone(),
                Duration::from_millis(node.config.replication.stall_check_ms.max(1)),
            );
            tasks.push(tokio::spawn(watchdog.run()));
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
    ///
    /// What replication has not brought by then is read back from
    /// PostgreSQL at once (as the stall watchdog would a moment later), and
    /// without the wait for a writer already known to be stalled.
    pub async fn catch_up_with_writers(&self) -> ApiResult<()> {
        let Some((replication, caches)) = &self.replication else {
            return Ok(());
        };
        caches
            .catch_up_with_writers(CATCH_UP_WAIT)
            .await
            .map_err(ApiError::internal)?;
        let recorded = storage::streams::recorded_positions(&self.pool).await?;
        for (stream_name, writer, position) in recorded {
            let Some(stream) = self.streams.get(&stream_name) else {
                continue;
            };
            let reached = !replication.stats.is_stalled(&stream_name, &writer)
                && stream
                    .wait_for_writer(&writer, position, CATCH_UP_WAIT)
                    .await;
            if !reached {
                replication
                    .catch_up(&stream_name, &writer, position)
                    .await
                    .map_err(ApiError::internal)?;
            }
        }
        Ok(())
    }

    /// Test hook: cuts this instance off from replication (every message
    /// that arrives over Redis is dropped, as if Redis were partitioned
    /// away) or, with `false`, reconnects it. Nothing in a monolith.
    pub fn cut_off_replication(&self, cut: bool) {
        if let Some((replication, _)) = &self.replication {
            replication.cut_off(cut);
        }
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

    /// Forgets the cached key counts of these devices (`(user id, device
    /// id)`) here and on every other instance: after their one-time or
    /// fallback keys changed, or they were removed.
    pub async fn forget_key_counts(&self, devices: &[(&str, &str)]) -> ApiResult<()> {
        if devices.is_empty() {
            return Ok(());
        }
        self.key_counts.forget(devices.iter().copied());
        self.invalidate_elsewhere(crate::sync::one_time_keys::invalidation(devices))
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
    pub fn write_deadline(&self) -> Duration {
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

    /// Read-your-writes: waits (bounded) until this instance has seen the
    /// writer's position reach what it persisted, so what the client does
    /// next here sees its own write.
    async fn seen(&self, persisted: Persisted) -> Persisted {
        self.wait_for_write(
            EVENTS_STREAM,
            &persisted.instance,
            persisted.stream_ordering,
        )
        .await;
        persisted
    }

    /// Read-your-writes for any stream: waits (bounded) until this
    /// instance has seen `writer` reach `position` on `stream`.
    pub async fn wait_for_write(&self, stream: &str, writer: &str, position: i64) {
        let Some(shared) = self.streams.get(stream) else {
            return;
        };
        if !shared
            .wait_for_writer(writer, position, READ_YOUR_WRITES_WAIT)
            .await
        {
            tracing::warn!(
                stream,
                writer,
                position,
                "replication lags: answering before seeing our own write"
            );
        }
    }

    /// Gives this instance's shards (of every kind it is a member of) to
    /// the members that stay.
    async fn leave_shards(&self) {
        for kind in self.leased.iter().filter(|kind| kind.member) {
            let mut leases = ShardLeases::new(
                kind.map.clone(),
                self.pool.clone(),
                true,
                kind.timing.clone(),
            );
            if let Err(error) = leases.leave().await {
                tracing::warn!(kind = kind.map.kind(), error = %error, "could not hand the shards over: they are taken when the lease expires");
            }
        }
    }

    /// Asks every shard map to read the table again soon (after an
    /// administrator moved a shard).
    pub fn refresh_shards_soon(&self) {
        for kind in self.leased.iter() {
            kind.map.refresh_soon();
        }
    }

    /// The shard map of `kind` (a stream's name, or `background`).
    pub fn shard_map(&self, kind: &str) -> Option<&Arc<ShardMap>> {
        self.leased
            .iter()
            .find(|leased| leased.map.kind() == kind)
            .map(|leased| &leased.map)
    }

    /// Persists an event through the events writer of its room.
    /// Every send passes here: its push actions are evaluated here, before
    /// it goes to the persister, which stores them with the event.
    pub async fn send_event(&self, mut request: SendEvent) -> ApiResult<Persisted> {
        crate::sync::presence::user_active(self, request.sender.as_str());
        request.push = match self
            .push
            .evaluate(&self.pool, &self.notifier, &request)
            .await
        {
            Ok(push) => push,
            Err(error) => {
                tracing::error!(error = %error, "push rule evaluation failed: sending without");
                None
            }
        };
        let persisted = self.send_to_room_writer(request).await?;
        Ok(self.seen(persisted).await)
    }

    /// Sends `request` to the owner of its room's shard (`call_owner`).
    async fn send_to_room_writer(&self, request: SendEvent) -> ApiResult<Persisted> {
        let room_id = request.room_id.clone();
        Ok(self
            .call_owner(EVENTS_STREAM, room_id.as_str(), request)
            .await??)
    }

    /// Asks the `kind` writer that owns the shard of `key` (a room or user
    /// id); when the shard is moving (no owner known, the writer answers
    /// that it does not own it, or its owner does not answer within a
    /// lease's lifetime) reads the owners again and asks the new one, until
    /// the write deadline. The writer's own answer is the caller's to read.
    /// Every request that may come here twice must write at most once
    /// (a transaction id, or a change that is the same when made again).
    pub async fn call_owner<M, T, E>(
        &self,
        kind: &str,
        key: &str,
        request: M,
    ) -> ApiResult<Result<T, E>>
    where
        M: lattice_actors::RemoteMessage<Reply = Result<T, E>> + Clone,
        E: WriterRefusal,
    {
        let deadline = tokio::time::Instant::now() + self.write_deadline();
        // An owner that died is replaced within a lease timeout and a beat.
        let attempt_limit = Duration::from_millis(
            self.config
                .shards
                .lease_timeout_ms
                .saturating_add(self.config.shards.heartbeat_ms.saturating_mul(2)),
        );
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let moving = match self.mailboxes.for_shard::<M>(kind, key) {
                Ok(writer) => match writer
                    .call(request.clone(), remaining.min(attempt_limit))
                    .await
                {
                    Ok(Err(refusal)) if refusal.not_owner() => {
                        ApiError::from(WriteError::NotOwner(crate::shards::shard_of(key)))
                    }
                    Err(MailboxError::Timeout) if remaining > attempt_limit => {
                        ApiError::from(MailboxError::Timeout)
                    }
                    answer => return Ok(answer?),
                },
                Err(no_owner) => no_owner,
            };
            if tokio::time::Instant::now() + ROUTE_RETRY_PAUSE >= deadline {
                return Err(moving);
            }
            match self.shard_map(kind) {
                Some(map) => map.refresh(ROUTE_RETRY_PAUSE).await,
                None => tokio::time::sleep(ROUTE_RETRY_PAUSE).await,
            }
        }
    }

    pub async fn send_state_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
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
            push: None,
        })
        .await
    }

    pub async fn create_room(&self, request: CreateRoom) -> ApiResult<Persisted> {
        // A room's id is not known before its create event exists (room
        // version 12), so new rooms go to the first writer.
        let writer = self.mailboxes.first::<CreateRoom>(EVENTS_STREAM)?;
        let persisted = writer.call(request, self.write_deadline()).await??;
        Ok(self.seen(persisted).await)
    }

    /// Snapshots of every local actor, for tests and the admin API.
    pub async fn observe(&self) -> Value {
        let mut snapshot =
            serde_json::to_value(self.supervisor.observe_all().await).unwrap_or(Value::Null);
        if let (Some((replication, _)), Some(object)) =
            (&self.replication, snapshot.as_object_mut())
        {
            object.insert("replication".into(), replication.stats.snapshot());
        }
        if let Some(object) = snapshot.as_object_mut() {
            object.insert("push_evaluator".into(), self.push.observe());
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
        // What the requests showed of devices' last use, not yet written.
        self.node.last_seen.flush(&self.node.pool).await;
        // Our shards go to the writers that stay before our mailboxes close:
        // what waits in them is answered `NotOwner` and sent on by its caller.
        self.node.leave_shards().await;
        for endpoint in self.node.endpoints.lock().await.drain(..) {
            endpoint.shutdown().await;
        }
        self.node.supervisor.shutdown().await;
    }
}
