//! How the rest of the node reaches the actors of the roles, wherever they
//! run. [`Mailboxes`] holds the placement of every sharded actor kind (from
//! `stream_writers`), the local mailboxes of the actors this instance runs
//! (by message type) and the transport to the others: asked for a message
//! type and a shard key, it answers a local or a remote mailbox, and the
//! caller never knows which. [`ActorStart`] is what a row of the role table
//! gets to start its actor with.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use deadpool_postgres::Pool;
use lattice_actors::{
    Endpoint, Location, Mailbox, Placement, RemoteMessage, Supervisor, Transport,
};
use ruma::OwnedServerName;

use crate::caches::RecentEventsCache;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::shards::ShardMap;
use crate::signing_key::SigningKey;
use crate::streams::registry::Streams;

/// Every actor kind's mailboxes, local or remote. Shared by the node.
pub struct Mailboxes {
    placement: Placement,
    /// Kinds whose shards are owned by lease (`crate::shards`): routed by
    /// their map, not by the static rule.
    shard_maps: HashMap<&'static str, Arc<ShardMap>>,
    /// None in a single process: every actor is local.
    transport: Option<Arc<dyn Transport>>,
    /// `Mailbox<M>` of a local actor, by `TypeId` of `M`.
    local: RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
}

impl Mailboxes {
    pub fn new(
        placement: Placement,
        transport: Option<Arc<dyn Transport>>,
        shard_maps: Vec<Arc<ShardMap>>,
    ) -> Mailboxes {
        Mailboxes {
            placement,
            shard_maps: shard_maps
                .into_iter()
                .map(|map| (map.kind(), map))
                .collect(),
            transport,
            local: RwLock::new(HashMap::new()),
        }
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The shard map of `kind`, if its shards are owned by lease.
    pub fn shard_map(&self, kind: &str) -> Option<&Arc<ShardMap>> {
        self.shard_maps.get(kind)
    }

    pub fn transport(&self) -> Option<&Arc<dyn Transport>> {
        self.transport.as_ref()
    }

    /// Makes a local actor's mailbox for `M` reachable.
    pub fn register<M: RemoteMessage>(&self, mailbox: Mailbox<M>) {
        self.local
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(TypeId::of::<M>(), Box::new(mailbox));
    }

    fn local<M: RemoteMessage>(&self, kind: &str) -> ApiResult<Mailbox<M>> {
        self.local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&TypeId::of::<M>())
            .and_then(|mailbox| mailbox.downcast_ref::<Mailbox<M>>())
            .cloned()
            .ok_or_else(|| ApiError::unavailable(format!("no {kind} writer runs here")))
    }

    /// The mailbox of the `kind` actor on `instance`.
    pub fn on_instance<M: RemoteMessage>(
        &self,
        kind: &str,
        instance: &str,
    ) -> ApiResult<Mailbox<M>> {
        if instance == self.placement.local_instance() {
            return self.local(kind);
        }
        match &self.transport {
            Some(transport) => Ok(Mailbox::remote(
                Arc::clone(transport),
                Placement::destination(kind, instance),
            )),
            None => Err(ApiError::unavailable(format!(
                "no way to reach the {kind} writer `{instance}`"
            ))),
        }
    }

    /// The mailbox of the `kind` actor that owns `shard_key`: the owner of
    /// its shard for kinds owned by lease, otherwise Synapse's sharding rule
    /// over the instances `stream_writers` lists.
    pub fn for_shard<M: RemoteMessage>(
        &self,
        kind: &str,
        shard_key: &str,
    ) -> ApiResult<Mailbox<M>> {
        if let Some(map) = self.shard_maps.get(kind) {
            let owner = map.owner_of(shard_key).ok_or_else(|| {
                ApiError::unavailable(format!("no {kind} writer owns this shard yet"))
            })?;
            return self.on_instance(kind, &owner.instance);
        }
        match self.placement.locate(kind, shard_key) {
            Location::Local => self.local(kind),
            Location::Remote(instance) => self.on_instance(kind, &instance),
        }
    }

    /// The instance whose `kind` actor owns `shard_key` (None while a
    /// leased shard has no owner).
    pub fn owner_instance(&self, kind: &str, shard_key: &str) -> Option<String> {
        if let Some(map) = self.shard_maps.get(kind) {
            return map
                .owner_of(shard_key)
                .map(|owner| owner.instance.to_string());
        }
        Some(match self.placement.locate(kind, shard_key) {
            Location::Local => self.placement.local_instance().to_owned(),
            Location::Remote(instance) => instance,
        })
    }

    /// The instances that write `kind` now: the live members of its shards
    /// for kinds owned by lease, otherwise what `stream_writers` lists.
    pub fn writers(&self, kind: &str) -> Vec<String> {
        match self.shard_maps.get(kind) {
            Some(map) => map.live_members(),
            None => self.instances(kind),
        }
    }

    /// The mailbox of the first `kind` actor in config order (for work
    /// whose shard key is not known yet, as a room being created).
    pub fn first<M: RemoteMessage>(&self, kind: &str) -> ApiResult<Mailbox<M>> {
        if let Some(map) = self.shard_maps.get(kind) {
            // Any live writer: this one if it is one, else the owner of a
            // random shard, so that new work spreads as the shards do.
            if map.holds_any_here() {
                return self.local(kind);
            }
            return self.for_shard(kind, &crate::util::random_string(12));
        }
        let first = self
            .placement
            .instances(kind)
            .and_then(|instances| instances.first())
            .cloned()
            .unwrap_or_else(|| self.placement.local_instance().to_owned());
        self.on_instance(kind, &first)
    }

    /// The instances that run `kind`, in config order.
    pub fn instances(&self, kind: &str) -> Vec<String> {
        self.placement
            .instances(kind)
            .map(<[String]>::to_vec)
            .unwrap_or_else(|| vec![self.placement.local_instance().to_owned()])
    }
}

/// What a row of the role table starts its actor with.
pub struct ActorStart {
    pub instance: String,
    pub config: Arc<Config>,
    pub pool: Pool,
    pub server_name: OwnedServerName,
    pub signing_key: SigningKey,
    pub streams: Streams,
    pub recent_events: Arc<RecentEventsCache>,
    pub recent_push: Arc<crate::push::recent::RecentPushActions>,
    pub supervisor: Arc<Supervisor>,
    pub mailboxes: Arc<Mailboxes>,
}

/// A started actor: how other instances reach it, if they can.
pub struct StartedActor {
    /// Adds the actor's routes (and concurrency) to the endpoint serving
    /// its kind on this instance.
    pub serve: Box<dyn FnOnce(Endpoint) -> Endpoint + Send>,
}
