//! [`Supervisor`]: starts named local actors, restarts them when they fail,
//! reports on them, and stops them.
//!
//! Each actor gets one long-lived tokio task (see `runner`) that owns its
//! inbox receiver and runs successive incarnations built by the factory
//! closure. A panic, a failed [`Actor::started`] or a
//! [`Context::restart`](crate::Context::restart) ends the incarnation; the
//! task then waits an exponential [`Backoff`] and builds a new one, while
//! messages keep queuing in the same inbox, so every [`Addr`] and
//! [`Mailbox`](crate::Mailbox) handed out earlier keeps working. Restarts are
//! counted and logged (`tracing::warn!`).
//!
//! A supervisor is a value: several can coexist in one process (one per
//! simulated node in a test). Dropping the last clone of a supervisor stops
//! its actors; [`Supervisor::shutdown`] stops them and waits.

mod backoff;
mod runner;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use self::backoff::{Backoff, BackoffConfig};
use self::runner::{Control, Runner};
use crate::actor::{Actor, ActorShared, ActorStatus, Addr};
use crate::lock;

/// Supervisor settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Restart backoff.
    pub backoff: BackoffConfig,
    /// How long [`Supervisor::observe_all`] waits for a busy actor's
    /// snapshot before reporting its state as unknown.
    pub observe_timeout: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            backoff: BackoffConfig::default(),
            observe_timeout: Duration::from_secs(1),
        }
    }
}

/// Errors starting an actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    /// `start` was called outside a tokio runtime.
    #[error("no tokio runtime to run the actor on")]
    NoRuntime,
    /// Names are unique within a supervisor.
    #[error("an actor named {0:?} already exists")]
    DuplicateName(String),
    /// The supervisor is shutting down.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
}

/// What the supervisor knows about one actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorSnapshot {
    /// Name given at start.
    pub name: String,
    /// Lifecycle state.
    pub status: ActorStatus,
    /// Current incarnation number (1 = never restarted).
    pub incarnation: u64,
    /// Restarts so far.
    pub restarts: u64,
    /// Messages handled (all incarnations).
    pub handled: u64,
    /// Messages dropped because their deadline passed in the inbox.
    pub expired: u64,
    /// Messages waiting in the inbox.
    pub queued: u64,
    /// Why the last incarnation failed.
    pub last_failure: Option<String>,
    /// [`Actor::observe`]; `None` while no incarnation runs or if the actor
    /// did not answer within the observe timeout.
    pub state: Option<Value>,
}

/// Snapshots of every actor of a supervisor, in name order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SupervisorSnapshot {
    /// One per actor.
    pub actors: Vec<ActorSnapshot>,
}

impl SupervisorSnapshot {
    /// The snapshot of the actor called `name`.
    pub fn get(&self, name: &str) -> Option<&ActorSnapshot> {
        self.actors.iter().find(|a| a.name == name)
    }
}

struct Entry {
    shared: Arc<ActorShared>,
    control: mpsc::UnboundedSender<Control>,
    join: Option<JoinHandle<()>>,
    addr: Box<dyn Any + Send + Sync>,
}

struct Inner {
    config: SupervisorConfig,
    actors: Mutex<BTreeMap<String, Entry>>,
    shutdown: watch::Sender<bool>,
}

/// Owns and restarts a set of named local actors. Cheap to clone (shared).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("actors", &self.names())
            .finish()
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// A supervisor with no actors and the default configuration.
    pub fn new() -> Self {
        Self::with_config(SupervisorConfig::default())
    }

    /// A supervisor with no actors.
    pub fn with_config(config: SupervisorConfig) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                config,
                actors: Mutex::new(BTreeMap::new()),
                shutdown,
            }),
        }
    }

    /// Start an actor called `name`; `factory` builds each incarnation.
    pub fn start<A, F>(
        &self,
        name: impl Into<String>,
        factory: F,
    ) -> Result<Addr<A>, SupervisorError>
    where
        A: Actor,
        F: Fn() -> A + Send + Sync + 'static,
    {
        let name = name.into();
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SupervisorError::NoRuntime)?;
        let mut actors = lock(&self.inner.actors);
        if *self.inner.shutdown.borrow() {
            return Err(SupervisorError::ShuttingDown);
        }
        if actors.contains_key(&name) {
            return Err(SupervisorError::DuplicateName(name));
        }
        let shared = Arc::new(ActorShared::new(Arc::from(name.as_str())));
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (control_tx, control) = mpsc::unbounded_channel();
        let addr = Addr::new(inbox_tx, Arc::clone(&shared));
        let runner = Runner {
            factory,
            shared: Arc::clone(&shared),
            inbox,
            control,
            shutdown: self.inner.shutdown.subscribe(),
            backoff: self.inner.config.backoff,
        };
        let join = runtime.spawn(runner.run());
        tracing::debug!(actor = %name, "actor started");
        actors.insert(
            name,
            Entry {
                shared,
                control: control_tx,
                join: Some(join),
                addr: Box::new(addr.clone()),
            },
        );
        Ok(addr)
    }

    /// The address of actor `name`, if it exists and is of type `A`.
    pub fn addr<A: Actor>(&self, name: &str) -> Option<Addr<A>> {
        lock(&self.inner.actors)
            .get(name)?
            .addr
            .downcast_ref::<Addr<A>>()
            .cloned()
    }

    /// Names of all actors, sorted.
    pub fn names(&self) -> Vec<String> {
        lock(&self.inner.actors).keys().cloned().collect()
    }

    /// Restarts of actor `name` so far.
    pub fn restarts(&self, name: &str) -> Option<u64> {
        lock(&self.inner.actors)
            .get(name)
            .map(|e| e.shared.restarts.load(Ordering::Relaxed))
    }

    /// Snapshot of actor `name`.
    pub async fn observe(&self, name: &str) -> Option<ActorSnapshot> {
        let (shared, control) = {
            let actors = lock(&self.inner.actors);
            let entry = actors.get(name)?;
            (Arc::clone(&entry.shared), entry.control.clone())
        };
        Some(snapshot(shared, control, self.inner.config.observe_timeout).await)
    }

    /// Snapshots of all actors (asked concurrently).
    pub async fn observe_all(&self) -> SupervisorSnapshot {
        let targets: Vec<_> = lock(&self.inner.actors)
            .values()
            .map(|e| (Arc::clone(&e.shared), e.control.clone()))
            .collect();
        let timeout = self.inner.config.observe_timeout;
        let actors =
            futures::future::join_all(targets.into_iter().map(|(s, c)| snapshot(s, c, timeout)))
                .await;
        SupervisorSnapshot { actors }
    }

    /// Stop every actor (each finishes the message it is handling and runs
    /// [`Actor::stopped`]; queued messages are answered `Closed`) and wait
    /// for them. Further `start`s fail. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let joins: Vec<(String, JoinHandle<()>)> = lock(&self.inner.actors)
            .iter_mut()
            .filter_map(|(name, e)| e.join.take().map(|j| (name.clone(), j)))
            .collect();
        for (name, join) in joins {
            if let Err(e) = join.await {
                tracing::warn!(actor = %name, error = %e, "actor task ended abnormally");
            }
        }
    }
}

async fn snapshot(
    shared: Arc<ActorShared>,
    control: mpsc::UnboundedSender<Control>,
    timeout: Duration,
) -> ActorSnapshot {
    let status = shared.status();
    let state = if matches!(status, ActorStatus::Running | ActorStatus::Starting) {
        let (tx, rx) = oneshot::channel();
        match control.send(Control::Observe(tx)) {
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(state)) => state,
                Ok(Err(_)) | Err(_) => None,
            },
            Err(_) => None,
        }
    } else {
        None
    };
    ActorSnapshot {
        name: shared.name.to_string(),
        status: shared.status(),
        incarnation: shared.incarnation.load(Ordering::Relaxed),
        restarts: shared.restarts.load(Ordering::Relaxed),
        handled: shared.handled.load(Ordering::Relaxed),
        expired: shared.expired.load(Ordering::Relaxed),
        queued: shared.queued(),
        last_failure: crate::lock(&shared.last_failure).clone(),
        state,
    }
}
