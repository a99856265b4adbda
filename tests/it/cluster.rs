//! The in-process test cluster: a fresh PostgreSQL database and the `Node`s
//! of one topology, each on its own OS thread with its own tokio runtime and a
//! listener pre-bound on `127.0.0.1:0`, plus a small HTTP client that speaks
//! to them. Tests only see `TestCluster::start()` and `cluster.client()`, so
//! the same test can later run on the monolith and on a split topology.
//!
//! Every response the client receives is checked against the Matrix spec
//! (see [`crate::spec`]), so a test that only looks at one field still proves
//! the whole body has the documented shape.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use awc::http::header::HeaderMap;
use awc::http::{Method, StatusCode};
use figment::providers::{Format, Serialized, Yaml};
use figment::Figment;
use lattice::config::Config;
use lattice::node::Node;
use lattice::roles::Role;
use lattice::signing_key::SigningKey;
use rand::Rng;
use serde_json::{json, Value};

/// The server name of every test cluster.
pub const SERVER_NAME: &str = "lattice.test";
/// The password of every user a test registers.
pub const PASSWORD: &str = "correct horse battery staple";

const DEFAULT_ADMIN_URL: &str = "postgresql://lattice@127.0.0.1:5433/postgres";
/// Test databases are named `lattice_test_<unix seconds>_<random>`; ones older
/// than this were left by runs that were killed and are dropped at start-up.
const STALE_DATABASE_AGE: Duration = Duration::from_secs(3600);

/// What a test may change about its cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// `Some((per_second, burst))` turns rate limiting on.
    pub rate_limit: Option<(f64, u32)>,
    pub enable_registration: bool,
    /// `Some("split")` or `Some("monolith")` whatever `LATTICE_TEST_TOPOLOGY` says.
    pub topology: Option<String>,
    /// `write_timeout_ms`, for tests of unreachable writers.
    pub write_timeout_ms: Option<u64>,
    /// A Redis of the test's own (for tests that restart it).
    pub redis_url: Option<String>,
    /// `redis.tls_ca_file`, for a `rediss://` `redis_url`.
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
    /// `event_writer_cached_rooms`, for tests of the writer's bounded memory.
    pub event_writer_cached_rooms: Option<usize>,
    /// `typing.max_timeout_ms`, for tests of typing that expires.
    pub typing_max_timeout_ms: Option<u64>,
    /// `presence.enabled`, for tests of presence turned off.
    pub presence_enabled: Option<bool>,
    /// Any other keys (`"media.max_upload_size"`), merged over the rest.
    pub settings: Vec<(&'static str, Value)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate_limit: None,
            enable_registration: true,
            topology: None,
            write_timeout_ms: None,
            redis_url: None,
            redis_tls_ca_file: None,
            event_writer_cached_rooms: None,
            typing_max_timeout_ms: None,
            presence_enabled: None,
            settings: Vec::new(),
        }
    }
}

/// A running cluster. Dropping it stops every node and drops its database.
pub struct TestCluster {
    nodes: Vec<TestNode>,
    database: TestDatabase,
    /// The node `/sync` requests go to.
    sync_node: usize,
    /// The media store every node of the cluster shares.
    media_store: std::path::PathBuf,
}

struct TestNode {
    instance: String,
    roles: Vec<Role>,
    config: Figment,
    addr: SocketAddr,
    /// The running node, for tests that call its mailboxes directly.
    node: Node,
    /// `true` stops gracefully, `false` kills (as a crash would).
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl TestCluster {
    /// The monolith with registration open and rate limiting off.
    pub async fn start() -> TestCluster {
        Self::start_with(Options::default()).await
    }

    /// The topology comes from `LATTICE_TEST_TOPOLOGY`: `monolith` (the
    /// default) or `split`: three nodes, `main` (client + sync), `events1`
    /// (the events writer) and `sync2` (sync), sharing the database and a
    /// Redis (`LATTICE_TEST_REDIS_URL`) under a key prefix of their own. On
    /// the split, `/sync` goes to `sync2` and everything else to `main`, so
    /// every write crosses a mailbox and every wake-up crosses replication.
    pub async fn start_with(options: Options) -> TestCluster {
        init_logging();
        let database = TestDatabase::create().await;
        let media_store = std::env::temp_dir().join(format!("{}_media", database.name));
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            database,
            sync_node: 0,
            media_store,
        };
        let config = base_config(&cluster.database.url, &options).merge(Serialized::default(
            "media.media_store_path",
            cluster.media_store.clone(),
        ));
        let topology = match options.topology {
            Some(topology) => Ok(topology),
            None => std::env::var("LATTICE_TEST_TOPOLOGY"),
        };
        match topology.as_deref() {
            Ok("split") => {
                let redis_url = options.redis_url.clone().unwrap_or_else(|| {
                    std::env::var("LATTICE_TEST_REDIS_URL")
                        .unwrap_or_else(|_| "redis://127.0.0.1:6390".to_owned())
                });
                let config = match &options.redis_tls_ca_file {
                    Some(file) => config.merge(Serialized::default("redis.tls_ca_file", file)),
                    None => config,
                };
                let config = config
                    .merge(Serialized::default("redis.url", redis_url))
                    .merge(Serialized::default(
                        "redis.prefix",
                        cluster.database.name.clone(),
                    ))
                    .merge(Serialized::default(
                        "replication_secret",
                        lattice::config::generate_replication_secret(),
                    ))
                    .merge(Serialized::default(
                        "stream_writers.events",
                        vec!["events1"],
                    ))
                    // Shards move to the second writer of each stream as
                    // it starts: within a beat or two.
                    .merge(Serialized::default("shards.heartbeat_ms", 200))
                    .merge(Serialized::default(
                        "instance_map.events1",
                        json!({ "host": "127.0.0.1", "port": 1 }),
                    ))
                    // Typing, receipts and read markers have two writers each,
                    // neither where requests arrive.
                    .merge(Serialized::default(
                        "stream_writers.typing",
                        vec!["events1", "sync2"],
                    ))
                    .merge(Serialized::default(
                        "stream_writers.receipts",
                        vec!["sync2", "events1"],
                    ))
                    .merge(Serialized::default(
                        "stream_writers.account_data",
                        vec!["events1", "sync2"],
                    ))
                    .merge(Serialized::default(
                        "stream_writers.push_rules",
                        vec!["events1", "sync2"],
                    ))
                    .merge(Serialized::default(
                        "stream_writers.presence",
                        vec!["sync2", "events1"],
                    ))
                    .merge(Serialized::default(
                        "stream_writers.device_lists",
                        vec!["events1", "sync2"],
                    ))
                    .merge(Serialized::default(
                        "stream_writers.to_device",
                        vec!["events1", "sync2"],
                    ))
                    .merge(Serialized::default(
                        "instance_map.sync2",
                        json!({ "host": "127.0.0.1", "port": 1 }),
                    ));
                let writers = [
                    Role::Typing,
                    Role::Receipts,
                    Role::AccountData,
                    Role::PushRules,
                    Role::Presence,
                    Role::DeviceLists,
                    Role::ToDevice,
                ];
                // Two media instances, neither where other requests arrive.
                cluster.nodes.push(
                    TestNode::start(
                        config.clone(),
                        "events1",
                        &[&[Role::Events, Role::Media][..], &writers].concat(),
                    )
                    .await,
                );
                cluster.nodes.push(
                    TestNode::start(config.clone(), "main", &[Role::Client, Role::Sync]).await,
                );
                cluster.nodes.push(
                    TestNode::start(
                        config,
                        "sync2",
                        &[&[Role::Sync, Role::Media][..], &writers].concat(),
                    )
                    .await,
                );
                cluster.sync_node = 2;
                // The `main` node is the one clients talk to by default.
                cluster.nodes.swap(0, 1);
                cluster.wait_for_writers_shares().await;
            }
            Ok("monolith") | Err(_) => {
                cluster
                    .nodes
                    .push(TestNode::start(config, "main", &Role::ALL).await);
            }
            Ok(other) => panic!("LATTICE_TEST_TOPOLOGY must be monolith or split, not {other}"),
        }
        cluster
    }

    /// Waits until, as `main` reads the shard table, every stream with two
    /// writers has both owning shards, so that tests do not start while
    /// shards are being handed to the writer that started last.
    async fn wait_for_writers_shares(&self) {
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let settled = self
                .on_node("main", |node| async move {
                    lattice::shards::STREAM_KINDS.iter().all(|kind| {
                        let writers = node.config.stream_writers(kind);
                        node.shard_map(kind).is_some_and(|map| {
                            let counts = map.counts();
                            counts.iter().map(|(_, n)| n).sum::<usize>()
                                == lattice::shards::SHARD_COUNT as usize
                                && writers
                                    .iter()
                                    .all(|writer| counts.iter().any(|(owner, _)| owner == writer))
                        })
                    })
                })
                .await;
            if settled {
                return;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "the stream writers never shared their shards"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client talking to each node in turn (on the monolith, just one).
    pub fn node_clients(&self) -> Vec<Client> {
        self.nodes
            .iter()
            .map(|node| {
                let base = format!("http://{}", node.addr);
                Client::new(base.clone(), base)
            })
            .collect()
    }

    /// A client talking to the node `instance` only (`main` on the monolith;
    /// `main`, `events1` or `sync2` on the split).
    pub fn node_client(&self, instance: &str) -> Client {
        let node = self
            .nodes
            .iter()
            .find(|n| n.instance == instance)
            .unwrap_or_else(|| panic!("no node {instance} in this cluster"));
        let base = format!("http://{}", node.addr);
        Client::new(base.clone(), base)
    }

    /// Runs `call` with the node `instance` on that node's runtime, as its
    /// own request handlers would (for tests that call a mailbox directly,
    /// e.g. to deliver one message twice).
    pub async fn on_node<F, T>(&self, instance: &str, call: impl FnOnce(Node) -> F) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let node = &self
            .nodes
            .iter()
            .find(|n| n.instance == instance)
            .unwrap_or_else(|| panic!("no node {instance} in this cluster"))
            .node;
        node.runtime
            .spawn(call(node.clone()))
            .await
            .expect("the call ran to completion")
    }

    /// Waits (at most 10 s) until a long-poll waits on the notifier of
    /// `instance`: what a test makes happen next must wake it.
    pub async fn wait_for_long_poll(&self, instance: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self
            .on_node(
                instance,
                |node| async move { node.notifier.listener_count() },
            )
            .await
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no long-poll ever waited on {instance}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client for each node with the `media` role, in node order (the
    /// monolith's one node; `events1` and `sync2` on the split), so that a
    /// test can upload through one and download through another.
    pub fn media_clients(&self) -> Vec<Client> {
        self.nodes
            .iter()
            .filter(|node| node.roles.contains(&Role::Media))
            .map(|node| {
                let base = format!("http://{}", node.addr);
                Client::new(base.clone(), base)
            })
            .collect()
    }

    /// The media store directory the nodes share.
    pub fn media_store(&self) -> &std::path::Path {
        &self.media_store
    }

    /// Whether the nodes are separate instances talking through Redis.
    pub fn is_split(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Makes `user_id` a server admin, as `lattice register-user --admin` would.
    pub async fn make_admin(&self, user_id: &str) {
        let database = connect(&self.database.url).await;
        let updated = database
            .execute(
                "UPDATE users SET is_admin = TRUE WHERE user_id = $1",
                &[&user_id],
            )
            .await
            .expect("update users");
        assert_eq!(updated, 1, "no user {user_id}");
    }

    /// A connection to the cluster's database, for tests that play a
    /// process which wrote and died.
    pub async fn database(&self) -> tokio_postgres::Client {
        connect(&self.database.url).await
    }

    /// A cluster of `main` (every role but `events`) and `persisters` event
    /// persisters `events1`, `events2`, ... sharing a Redis, with
    /// `listed` instances named in `stream_writers.events` (so that more
    /// can join later with [`add_node`](Self::add_node)). Shard leases beat
    /// every 200 ms and expire after 2 s, unless `options.settings` says.
    pub async fn start_sharded(options: Options, persisters: usize, listed: usize) -> TestCluster {
        init_logging();
        let database = TestDatabase::create().await;
        let media_store = std::env::temp_dir().join(format!("{}_media", database.name));
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            database,
            sync_node: 0,
            media_store,
        };
        let redis_url = std::env::var("LATTICE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6390".to_owned());
        let writers: Vec<String> = (1..=listed).map(|i| format!("events{i}")).collect();
        let mut config = base_config(&cluster.database.url, &options)
            .merge(Serialized::default("shards.heartbeat_ms", 200))
            .merge(Serialized::default("shards.lease_timeout_ms", 2000));
        for (key, value) in &options.settings {
            config = config.merge(Serialized::default(key, value));
        }
        let mut config = config
            .merge(Serialized::default(
                "media.media_store_path",
                cluster.media_store.clone(),
            ))
            .merge(Serialized::default("redis.url", redis_url))
            .merge(Serialized::default(
                "redis.prefix",
                cluster.database.name.clone(),
            ))
            .merge(Serialized::default(
                "replication_secret",
                lattice::config::generate_replication_secret(),
            ))
            .merge(Serialized::default(
                "stream_writers.events",
                writers.clone(),
            ));
        for writer in &writers {
            config = config.merge(Serialized::default(
                &format!("instance_map.{writer}"),
                json!({ "host": "127.0.0.1", "port": 1 }),
            ));
        }
        let main_roles: Vec<Role> = Role::ALL
            .iter()
            .copied()
            .filter(|role| *role != Role::Events)
            .collect();
        for writer in writers.iter().take(persisters) {
            cluster
                .nodes
                .push(TestNode::start(config.clone(), writer, &[Role::Events]).await);
        }
        cluster
            .nodes
            .insert(0, TestNode::start(config, "main", &main_roles).await);
        cluster
    }

    /// Starts another node, `instance` with `roles`, with the configuration
    /// of the first node (a live addition to the cluster).
    pub async fn add_node(&mut self, instance: &str, roles: &[Role]) {
        let config = self.nodes[0].config.clone();
        let node = TestNode::start(config, instance, roles).await;
        self.nodes.push(node);
    }

    /// Stops the node `instance` gracefully, as SIGTERM does.
    pub fn stop_node(&mut self, instance: &str) {
        self.node_mut(instance).halt(true);
    }

    /// Kills the node `instance` (no graceful shutdown: its mailbox messages
    /// stay unacknowledged in Redis).
    pub fn kill(&mut self, instance: &str) {
        let node = self.node_mut(instance);
        node.halt(false);
        // Joining the thread happens in `halt`; the runtime dropped every task.
    }

    /// Starts the node `instance` again, on the same address, after `kill`.
    pub async fn restart(&mut self, instance: &str) {
        let node = self.node_mut(instance);
        let (config, roles, addr) = (node.config.clone(), node.roles.clone(), node.addr);
        let listener = bind_again(addr).await;
        let restarted = TestNode::start_on(config, instance, &roles, listener).await;
        *self.node_mut(instance) = restarted;
    }

    fn node_mut(&mut self, instance: &str) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.instance == instance)
            .unwrap_or_else(|| panic!("no node {instance} in this cluster"))
    }

    /// The Redis key prefix and replication channel of a split cluster.
    pub fn redis_prefix(&self) -> &str {
        &self.database.name
    }

    /// A client for the Client-Server API of this cluster.
    pub fn client(&self) -> Client {
        Client::new(
            format!("http://{}", self.nodes[0].addr),
            format!("http://{}", self.nodes[self.sync_node].addr),
        )
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.media_store);
        self.database.drop_blocking();
    }
}

fn base_config(database_url: &str, options: &Options) -> Figment {
    let sample = lattice::config::sample(SERVER_NAME, &SigningKey::generate().to_config_string());
    let (rate_limited, per_second, burst) = match options.rate_limit {
        Some((per_second, burst)) => (true, per_second, burst),
        None => (false, 20.0, 100),
    };
    let mut figment = Figment::from(Yaml::string(&sample));
    if let Some(rooms) = options.event_writer_cached_rooms {
        figment = figment.merge(Serialized::default("event_writer_cached_rooms", rooms));
    }
    if let Some(ms) = options.typing_max_timeout_ms {
        figment = figment.merge(Serialized::default("typing.max_timeout_ms", ms));
    }
    if let Some(enabled) = options.presence_enabled {
        figment = figment.merge(Serialized::default("presence.enabled", enabled));
    }
    for (key, value) in &options.settings {
        figment = figment.merge(Serialized::default(key, value));
    }
    figment
        .merge(Serialized::default("database.url", database_url))
        .merge(Serialized::default("database.pool_size", 8))
        .merge(Serialized::default(
            "enable_registration",
            options.enable_registration,
        ))
        .merge(Serialized::default("rate_limits.enabled", rate_limited))
        .merge(Serialized::default("rate_limits.per_second", per_second))
        .merge(Serialized::default("rate_limits.burst", burst))
        .merge(Serialized::default(
            "write_timeout_ms",
            options.write_timeout_ms.unwrap_or(30_000),
        ))
        .merge(Serialized::default(
            "log",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ))
}

impl TestNode {
    /// Starts `Node` on a thread of its own, so a node's runtime is not the
    /// test's and several nodes behave as separate processes would.
    async fn start(config: Figment, instance: &str, roles: &[Role]) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::start_on(config, instance, roles, listener).await
    }

    async fn start_on(
        figment: Figment,
        instance: &str,
        roles: &[Role],
        listener: TcpListener,
    ) -> TestNode {
        let addr = listener.local_addr().expect("local addr");
        let config =
            Config::from_figment(figment.clone().merge(Serialized::default("listen", addr)))
                .expect("test config is valid");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let node_instance = instance.to_owned();
        let node_roles = roles.to_vec();
        let instance = instance.to_owned();
        let roles = roles.to_vec();
        let thread = std::thread::Builder::new()
            .name(format!("node-{instance}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(format!("node-{instance}-rt"))
                    .enable_all()
                    .build()
                    .expect("node runtime");
                runtime.block_on(async move {
                    match Node::start_with_roles(config, &instance, &roles, listener, 1).await {
                        Ok(running) => {
                            let _ = started_tx.send(Ok((running.addr, running.node.clone())));
                            match stop_rx.await {
                                Ok(false) => running.kill().await,
                                _ => running.stop().await,
                            }
                        }
                        Err(error) => {
                            let _ = started_tx.send(Err(error.to_string()));
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("spawn node thread");
        let (addr, node) = match started_rx.await {
            Ok(Ok(started)) => started,
            Ok(Err(error)) => panic!("node failed to start: {error}"),
            Err(_) => panic!("node thread died while starting"),
        };
        TestNode {
            instance: node_instance,
            roles: node_roles,
            config: figment,
            addr,
            node,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.halt(true);
    }

    fn halt(&mut self, graceful: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(graceful);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn init_logging() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A database of its own for one cluster, created on an admin connection.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create() -> TestDatabase {
        let admin_url = std::env::var("LATTICE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let admin = connect(&admin_url).await;
        drop_stale_databases(&admin).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let suffix: u64 = rand::thread_rng().gen_range(0..1u64 << 40);
        let name = format!("lattice_test_{now}_{suffix:x}");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let mut url = url::Url::parse(&admin_url).expect("LATTICE_TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        TestDatabase {
            admin_url,
            name,
            url: url.to_string(),
        }
    }

    /// Drops the database from a thread of its own: `Drop` cannot await, and
    /// the test's runtime cannot be blocked on from inside itself.
    fn drop_blocking(&self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                if let Err(error) = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                {
                    eprintln!("could not drop test database {name}: {error}");
                }
            });
        });
        let _ = dropper.join();
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to {url} (set LATTICE_TEST_DATABASE_URL; \
                 `LATTICE_PG_FAST=1 .ci/postgres.sh start` starts one): {e}"
            )
        });
    tokio::spawn(connection);
    client
}

/// Drops test databases left behind by killed runs, once per process. Only
/// old ones: another run may be using the recent ones.
async fn drop_stale_databases(admin: &tokio_postgres::Client) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let Ok(rows) = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'lattice\\_test\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .strip_prefix("lattice_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|c| c + STALE_DATABASE_AGE.as_secs() < now) {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                .await;
        }
    }
}

/// A user registered by a test, with the client to act as them.
#[derive(Clone)]
pub struct User {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
    pub client: Client,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish()
    }
}

impl User {
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.client.get(path, Some(&self.access_token)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.client.post(path, Some(&self.access_token), body).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.client.put(path, Some(&self.access_token), body).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.client.delete(path, Some(&self.access_token)).await
    }

    /// `POST /createRoom` with `body`, asserting success; the room id.
    pub async fn create_room(&self, body: Value) -> String {
        let (status, response) = self.post("/_matrix/client/v3/createRoom", body).await;
        assert_eq!(status, StatusCode::OK, "createRoom: {response}");
        response["room_id"]
            .as_str()
            .expect("createRoom answers a room_id")
            .to_owned()
    }

    /// Joins `room` (an id or an alias), asserting success.
    pub async fn join(&self, room: &str) {
        let (status, response) = self
            .post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "join {room}: {response}");
    }

    /// Sends an `m.room.message` text, asserting success; the event id.
    pub async fn send_text(&self, room_id: &str, text: &str) -> String {
        let txn_id = format!("t{}", rand::thread_rng().gen::<u64>());
        let (status, response) = self
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn_id}",
                    enc(room_id)
                ),
                json!({ "msgtype": "m.text", "body": text }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "send: {response}");
        response["event_id"]
            .as_str()
            .expect("send answers an event_id")
            .to_owned()
    }

    /// The content of one state event, asserting it exists.
    pub async fn state_content(&self, room_id: &str, kind: &str, state_key: &str) -> Value {
        let (status, response) = self
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/{}/{}",
                enc(room_id),
                enc(kind),
                enc(state_key)
            ))
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "state {kind}/{state_key}: {response}"
        );
        response
    }

    /// The whole current state of a room, asserting success.
    pub async fn room_state(&self, room_id: &str) -> Vec<Value> {
        let (status, response) = self
            .get(&format!("/_matrix/client/v3/rooms/{}/state", enc(room_id)))
            .await;
        assert_eq!(status, StatusCode::OK, "state: {response}");
        response.as_array().cloned().expect("state is an array")
    }

    /// `GET /sync` with `query` (without the `?`), asserting success. It
    /// leaves the user's presence alone (`set_presence=offline`) unless
    /// `query` says otherwise: a sync that makes its user online writes a
    /// presence row a moment later, which would wake the tests' long-polls
    /// before what they wait for (`presence.rs` asks for it explicitly).
    pub async fn sync(&self, query: &str) -> Value {
        let query = if query.contains("set_presence=") {
            query.to_owned()
        } else if query.is_empty() {
            "set_presence=offline".to_owned()
        } else {
            format!("{query}&set_presence=offline")
        };
        let (status, response) = self.get(&format!("/_matrix/client/v3/sync?{query}")).await;
        assert_eq!(status, StatusCode::OK, "sync?{query}: {response}");
        response
    }

    /// `GET /messages` with `query`, asserting success.
    pub async fn messages(&self, room_id: &str, query: &str) -> Value {
        let (status, response) = self
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?{query}",
                enc(room_id)
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "messages?{query}: {response}");
        response
    }
}

/// An HTTP client for one node. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: awc::Client,
    base: String,
    /// Where `/sync` requests go (another node on a split topology).
    sync_base: String,
    /// The `User-Agent` sent, when a test chose one (awc's own otherwise).
    user_agent: Option<String>,
}

impl Client {
    fn new(base: String, sync_base: String) -> Client {
        let http = awc::Client::builder()
            // Long-polling tests wait up to tens of seconds for an answer.
            .timeout(Duration::from_secs(120))
            .finish();
        Client {
            http,
            base,
            sync_base,
            user_agent: None,
        }
    }

    /// This client, sending `user_agent` as its `User-Agent`.
    pub fn with_user_agent(&self, user_agent: &str) -> Client {
        Client {
            user_agent: Some(user_agent.to_owned()),
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(
            Method::POST,
            path,
            token,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(
            Method::PUT,
            path,
            token,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(Method::DELETE, path, token, None).await
    }

    /// A request with `body` sent as it is (labelled `application/json`), for
    /// malformed-input tests.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> (StatusCode, Value) {
        self.request(method, path, token, Some(body.into())).await
    }

    /// Sends a request and reads the answer as JSON (`Value::Null` for an
    /// empty body), checking it against the spec.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let (status, _, bytes) = self.request_bytes(method.clone(), path, token, body).await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {path} answered {status} with a body that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        crate::spec::check_response(method.as_str(), path, status.as_u16(), &value);
        (status, value)
    }

    /// Sends a request; the status, headers and body's bytes, unchecked.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        self.try_request_bytes(method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Client::request_bytes`], with a failure to get an answer (a
    /// connection the server dropped) as an error rather than a panic.
    pub async fn try_request_bytes(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
        let is_sync = path.split('?').next().is_some_and(|p| p.ends_with("/sync"));
        let base = if is_sync { &self.sync_base } else { &self.base };
        let url = format!("{base}{path}");
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = token {
            request = request.insert_header(("Authorization", format!("Bearer {token}")));
        }
        if let Some(user_agent) = &self.user_agent {
            request = request.insert_header(("User-Agent", user_agent.as_str()));
        }
        let sent = match body {
            Some(body) => {
                request
                    .insert_header(("Content-Type", "application/json"))
                    .send_body(body)
                    .await
            }
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| format!("{method} {url}: {e}"))?;
        let bytes = response
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        Ok((
            response.status(),
            response.headers().clone(),
            bytes.to_vec(),
        ))
    }

    /// Registers `localpart` through the `m.login.dummy` flow: a first request
    /// answered 401 with the flows and a session, then the one completing it.
    pub async fn register(&self, localpart: &str) -> User {
        let path = "/_matrix/client/v3/register";
        let (status, challenge) = self
            .post(
                path,
                None,
                json!({ "username": localpart, "password": PASSWORD }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "register {localpart}: {challenge}"
        );
        let session = challenge["session"]
            .as_str()
            .expect("the 401 carries a session")
            .to_owned();
        let (status, registered) = self
            .post(
                path,
                None,
                json!({
                    "username": localpart,
                    "password": PASSWORD,
                    "auth": { "type": "m.login.dummy", "session": session },
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "register {localpart}: {registered}");
        self.user_from(&registered)
    }

    /// Logs in with the password every test user has.
    pub async fn login(&self, localpart: &str) -> User {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": localpart },
                    "password": PASSWORD,
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {localpart}: {body}");
        self.user_from(&body)
    }

    fn user_from(&self, body: &Value) -> User {
        let field = |name: &str| {
            body[name]
                .as_str()
                .unwrap_or_else(|| panic!("`{name}` missing from {body}"))
                .to_owned()
        };
        User {
            user_id: field("user_id"),
            access_token: field("access_token"),
            device_id: field("device_id"),
            client: self.clone(),
        }
    }
}

/// Percent-encodes one path segment (room ids, aliases, event ids, state keys).
pub fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'!'
            | b'$'
            | b'@'
            | b':'
            | b'='
            | b'+' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Binds `addr` again once the killed node's sockets are gone.
async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = TcpListener::bind(addr) {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} stayed in use after the node was killed")
}
