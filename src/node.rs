//! One running instance: its configuration, database pool, notifier, actors
//! and HTTP listener. A `Node` owns everything the instance has (no globals),
//! so a test can run several in one process; handlers get a clone of it.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};
use deadpool_postgres::Pool;
use lattice_actors::{Mailbox, Supervisor, SupervisorError};
use ruma::OwnedServerName;
use serde_json::Value;

use crate::api::{RateLimiter, TokenCache};
use crate::config::Config;
use crate::error::ApiResult;
use crate::keys::SigningKey;
use crate::passwords::PasswordHasher;
use crate::roles::events::{CreateRoom, EventPersister, Persisted, SendEvent};
use crate::storage;
use crate::streams::notifier::Notifier;

/// How long a request waits for a writer before it gives up with an error.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// What the handlers of an instance share. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub config: Arc<Config>,
    pub instance_name: String,
    pub pool: Pool,
    pub notifier: Notifier,
    pub rate_limiter: Arc<RateLimiter>,
    pub passwords: PasswordHasher,
    pub tokens: Arc<TokenCache>,
    pub send_events: Mailbox<SendEvent>,
    pub create_rooms: Mailbox<CreateRoom>,
    pub supervisor: Arc<Supervisor>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("actors: {0}")]
    Supervisor(#[from] SupervisorError),
    #[error("http listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A started instance: its address, and the handle to stop it.
pub struct RunningNode {
    pub node: Node,
    pub addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    /// Connects to the database, applies migrations, starts the actors and
    /// serves HTTP on `listener` (bound by the caller, so tests can bind
    /// `127.0.0.1:0`).
    pub async fn start(
        config: Config,
        instance_name: &str,
        listener: TcpListener,
        http_workers: usize,
    ) -> Result<RunningNode, NodeError> {
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
        let notifier = Notifier::new(1);
        let supervisor = Arc::new(Supervisor::new());
        let persister = {
            let pool = pool.clone();
            let instance = instance_name.to_owned();
            let notifier = notifier.clone();
            supervisor.start("event_persister", move || {
                EventPersister::new(
                    pool.clone(),
                    instance.clone(),
                    server_name.clone(),
                    signing_key.key_pair(),
                    notifier.clone(),
                )
            })?
        };
        let node = Node {
            rate_limiter: Arc::new(RateLimiter::new(&config.rate_limits)),
            passwords: PasswordHasher::default(),
            tokens: Arc::new(TokenCache::default()),
            config: Arc::new(config),
            instance_name: instance_name.to_owned(),
            pool,
            notifier,
            send_events: persister.mailbox(),
            create_rooms: persister.mailbox(),
            supervisor,
        };
        let addr = listener.local_addr()?;
        let app_node = node.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(app_node.clone()))
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
                .configure(crate::api::configure)
        })
        .listen(listener)?
        .workers(http_workers.max(1))
        .disable_signals()
        .shutdown_timeout(2)
        .run();
        let handle = server.handle();
        let server_task = tokio::spawn(server);
        tracing::info!(instance = instance_name, %addr, "listening");
        Ok(RunningNode {
            node,
            addr,
            server: handle,
            server_task,
        })
    }

    /// Persists an event through the events writer.
    pub async fn send_event(&self, request: SendEvent) -> ApiResult<Persisted> {
        let persisted = self.send_events.call(request, WRITE_DEADLINE).await??;
        Ok(persisted)
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
            txn: None,
        })
        .await
    }

    pub async fn create_room(&self, request: CreateRoom) -> ApiResult<Persisted> {
        let persisted = self.create_rooms.call(request, WRITE_DEADLINE).await??;
        Ok(persisted)
    }

    /// Snapshots of every local actor, for tests and the admin API.
    pub async fn observe(&self) -> Value {
        serde_json::to_value(self.supervisor.observe_all().await).unwrap_or(Value::Null)
    }
}

impl RunningNode {
    /// Stops accepting requests, lets in-flight ones finish (briefly), then
    /// stops the actors.
    pub async fn stop(self) {
        self.server.stop(true).await;
        let _ = self.server_task.await;
        self.node.supervisor.shutdown().await;
    }
}
