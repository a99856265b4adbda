//! Shard ownership (DESIGN §5, issue 17): which instance owns each shard of
//! a sharded actor kind, decided while serving, not fixed by configuration.
//!
//! A kind (the events persisters: `events`) has [`SHARD_COUNT`] shards; a key
//! (a room id) belongs to shard [`shard_of`], Synapse's hash rule over the
//! shard count instead of over the instances. Each shard has one owner and
//! an epoch in PostgreSQL (`storage::shards`); every write transaction of an
//! owner locks its shards' rows at the epochs it holds
//! ([`storage::shards::fence`](crate::storage::shards::fence)), so an owner
//! that was deposed, because it stalled or was cut off, can never commit.
//!
//! The instances that may own shards of a kind are its *members*. Each
//! renews its membership on every heartbeat ([`ShardLeases`]); a member not
//! renewed within the lease timeout is dead, and its shards are taken over.
//! Which member should own a shard is rendezvous hashing over the live
//! members ([`desired_owner`]): every instance computes the same answer from
//! the same table, a new member takes only its share (about one shard in n)
//! and a member that leaves gives only its own. The owner of a shard that
//! should be another's hands it over (its transactions in flight finish
//! first: the handover waits for their locks); a shard whose owner is dead is
//! claimed by the member it should go to. Every instance, member or not,
//! reads the table on its heartbeat into a [`ShardMap`], which routes: the
//! mailbox of a key's writer is that of its shard's owner. A writer asked
//! for a shard it does not own answers `WriteError::NotOwner`, and the caller
//! reads the table again and asks the owner.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::storage::shards::{self as stored, Lease, Member};
use crate::storage::StorageResult;
use crate::util::now_ms;

/// The kind of the duties that must run on one instance of the deployment
/// (clean-up jobs): members are the instances with the `background` role.
pub const BACKGROUND_KIND: &str = "background";

/// The kinds whose members write a stream of the same name, sharded by
/// room (events, typing, receipts) or by user (the others): the writers of
/// every stream there is but `caches`, which every instance writes.
pub const STREAM_KINDS: [&str; 8] = [
    crate::streams::events::EVENTS_STREAM,
    crate::streams::typing::TYPING_STREAM,
    crate::streams::receipts::RECEIPTS_STREAM,
    crate::streams::account_data::ACCOUNT_DATA_STREAM,
    crate::streams::presence::PRESENCE_STREAM,
    crate::streams::push_rules::PUSH_RULES_STREAM,
    crate::streams::to_device::TO_DEVICE_STREAM,
    crate::streams::device_lists::DEVICE_LISTS_STREAM,
];

/// Every sharded kind there is.
pub const KINDS: [&str; 9] = [
    STREAM_KINDS[0],
    STREAM_KINDS[1],
    STREAM_KINDS[2],
    STREAM_KINDS[3],
    STREAM_KINDS[4],
    STREAM_KINDS[5],
    STREAM_KINDS[6],
    STREAM_KINDS[7],
    BACKGROUND_KIND,
];

/// Shards per actor kind, fixed at creation: many more than there will ever
/// be instances, so that adding one moves only its share.
pub const SHARD_COUNT: i32 = 256;

/// The shard of `key`: SHA-256 of its UTF-8 bytes read as a little-endian
/// integer, modulo [`SHARD_COUNT`] (Synapse's sharding rule).
pub fn shard_of(key: &str) -> i32 {
    lattice_actors::shard_index(key, SHARD_COUNT as usize)
        .and_then(|index| i32::try_from(index).ok())
        .unwrap_or(0)
}

/// The live member that should own `shard` of `kind`: the one with the
/// highest hash of (kind, shard, member) — rendezvous hashing, so that a
/// member joining or leaving moves only the shards it wins or held.
pub fn desired_owner<'a>(kind: &str, shard: i32, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|member| {
            let digest = Sha256::new()
                .chain_update(kind.as_bytes())
                .chain_update([0])
                .chain_update(shard.to_le_bytes())
                .chain_update([0])
                .chain_update(member.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            (u64::from_le_bytes(first), member.as_str())
        })
        .map(String::as_str)
}

/// How long a writer asked for a shard it does not hold waits for the table
/// to be read again before it refuses.
pub const OWNERSHIP_REFRESH_WAIT: Duration = Duration::from_millis(500);

/// The least time between two beats, however often a refresh is asked for.
const MIN_BEAT_GAP: Duration = Duration::from_millis(100);

/// How leases are kept (`shards` in the configuration).
#[derive(Debug, Clone)]
pub struct LeaseTiming {
    /// How often members renew and everyone reads the table.
    pub heartbeat: Duration,
    /// A member not renewed for this long is dead; its shards are taken.
    pub timeout: Duration,
    /// For a kind whose members write a stream: the members every
    /// instance knows of from its configuration (`stream_writers`), who
    /// may own shards as soon as they are live; any other must first be
    /// seen by everyone ([`SETTLING_BEATS`]). `None`: every live member may.
    pub listed: Option<Vec<String>>,
}

/// Heartbeats a member that is not listed in the configuration waits after
/// joining before it may own a shard: every instance reads the table once a
/// heartbeat, and must hold the new writer's position in its streams
/// before the writer writes, or its floor could pass the writer's first
/// rows.
pub const SETTLING_BEATS: u32 = 3;

impl LeaseTiming {
    /// The live members that may own shards now.
    fn eligible(&self, members: &[Member], now: i64) -> Vec<String> {
        let settled_before = now.saturating_sub(millis(self.heartbeat * SETTLING_BEATS));
        members
            .iter()
            .filter(|member| member.expires_ts > now)
            .filter(|member| match &self.listed {
                None => true,
                Some(listed) => {
                    member.joined_ts <= settled_before || listed.contains(&member.instance)
                }
            })
            .map(|member| member.instance.clone())
            .collect()
    }
}

/// The owner of a shard as this instance last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub instance: Arc<str>,
    pub epoch: i64,
    /// Put there by an administrator (`lattice admin shards move`).
    pub pinned: bool,
}

/// This instance's view of who owns each shard of one kind. Cheap to read;
/// replaced whole on every heartbeat.
pub struct ShardMap {
    kind: &'static str,
    local_instance: String,
    state: RwLock<MapState>,
    /// Wakes the lease task before its next heartbeat (a writer answered
    /// that it no longer owns a shard).
    refresh: Notify,
    /// Signalled after every read of the table.
    refreshed: Notify,
}

#[derive(Default)]
struct MapState {
    owners: Vec<Option<Owner>>,
    live_members: Vec<String>,
    /// Bumped on every read of the table.
    generation: u64,
}

impl ShardMap {
    pub fn new(kind: &'static str, local_instance: &str) -> ShardMap {
        ShardMap {
            kind,
            local_instance: local_instance.to_owned(),
            state: RwLock::new(MapState {
                owners: vec![None; SHARD_COUNT as usize],
                ..MapState::default()
            }),
            refresh: Notify::new(),
            refreshed: Notify::new(),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn local_instance(&self) -> &str {
        &self.local_instance
    }

    /// The owner of `shard`, if it has one.
    pub fn owner(&self, shard: i32) -> Option<Owner> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        usize::try_from(shard)
            .ok()
            .and_then(|index| state.owners.get(index).cloned().flatten())
    }

    /// The owner of the shard of `key`.
    pub fn owner_of(&self, key: &str) -> Option<Owner> {
        self.owner(shard_of(key))
    }

    /// The epoch at which this instance holds `shard`, if it does.
    pub fn held_here(&self, shard: i32) -> Option<i64> {
        self.owner(shard)
            .filter(|owner| *owner.instance == *self.local_instance)
            .map(|owner| owner.epoch)
    }

    /// The (shard, epoch) at which this instance holds the shard of each of
    /// `keys`, sorted and without repeats: what a write transaction of
    /// theirs passes as its fence
    /// ([`storage::shards::fence`](crate::storage::shards::fence)). Fails
    /// with the first shard not held here.
    pub fn held_for<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<(i32, i64)>, i32> {
        let mut held = Vec::new();
        for key in keys {
            let shard = shard_of(key);
            match self.held_here(shard) {
                Some(epoch) => held.push((shard, epoch)),
                None => return Err(shard),
            }
        }
        held.sort_unstable();
        held.dedup();
        Ok(held)
    }

    /// For a writer's batch, one key per request: the shard of each key not
    /// held here (None for those that are), after reading the table once
    /// more if any is not (a writer just given a shard may not know yet).
    pub async fn refusals(&self, keys: &[&str]) -> Vec<Option<i32>> {
        let refused = |map: &ShardMap| -> Vec<Option<i32>> {
            keys.iter()
                .map(|key| {
                    let shard = shard_of(key);
                    map.held_here(shard).is_none().then_some(shard)
                })
                .collect()
        };
        let first = refused(self);
        if first.iter().all(Option::is_none) {
            return first;
        }
        self.refresh(OWNERSHIP_REFRESH_WAIT).await;
        refused(self)
    }

    /// The fence of a write transaction of this instance for `keys`
    /// ([`storage::shards::fence`](crate::storage::shards::fence) at the
    /// epochs held here): fails with `StorageError::Fenced` when a key's
    /// shard is not held here, or no longer at that epoch.
    pub async fn fence<'a>(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> StorageResult<()> {
        let held = self
            .held_for(keys)
            .map_err(|shard| crate::storage::StorageError::Fenced {
                kind: self.kind.to_owned(),
                shard,
            })?;
        stored::fence(client, self.kind, &self.local_instance, &held).await
    }

    /// Whether this instance owns any shard.
    pub fn holds_any_here(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .owners
            .iter()
            .flatten()
            .any(|owner| *owner.instance == *self.local_instance)
    }

    /// The live members, in name order.
    pub fn live_members(&self) -> Vec<String> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live_members
            .clone()
    }

    /// How many times the table was read into this map: a reader that
    /// sees it move knows the map was read again since.
    pub fn generation(&self) -> u64 {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// How many shards each owner holds.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let mut counts: Vec<(String, usize)> = Vec::new();
        for owner in state.owners.iter().flatten() {
            match counts
                .iter_mut()
                .find(|(name, _)| **name == *owner.instance)
            {
                Some((_, count)) => *count += 1,
                None => counts.push((owner.instance.to_string(), 1)),
            }
        }
        counts.sort();
        counts
    }

    /// Asks for the table to be read again now, and waits (bounded) until
    /// it was: after a writer said it no longer owns a shard.
    pub async fn refresh(&self, within: Duration) {
        let refreshed = self.refreshed.notified();
        self.refresh.notify_one();
        let _ = tokio::time::timeout(within, refreshed).await;
    }

    /// Waits (at most `within`) until the table was read again.
    pub async fn refreshed(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.refreshed.notified()).await;
    }

    /// Asks for the table to be read again soon, without waiting.
    pub fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// Replaces the map with what was read from the table at `now`.
    pub(crate) fn replace(&self, members: &[Member], leases: &[Lease], now: i64) {
        let mut owners = vec![None; SHARD_COUNT as usize];
        for lease in leases {
            if let Some(slot) = usize::try_from(lease.shard)
                .ok()
                .and_then(|index| owners.get_mut(index))
            {
                *slot = Some(Owner {
                    instance: Arc::from(lease.owner.as_str()),
                    epoch: lease.epoch,
                    pinned: lease.pinned,
                });
            }
        }
        let live_members = live(members, now);
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.owners = owners;
        state.live_members = live_members;
        state.generation += 1;
        drop(state);
        self.refreshed.notify_waiters();
    }

    /// What the admin API shows: each shard's owner and epoch, and each
    /// live member's share.
    pub fn observe(&self) -> Value {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let shards: Vec<Value> = state
            .owners
            .iter()
            .enumerate()
            .map(|(shard, owner)| match owner {
                Some(owner) => json!({
                    "shard": shard,
                    "owner": &*owner.instance,
                    "epoch": owner.epoch,
                    "pinned": owner.pinned,
                }),
                None => json!({ "shard": shard, "owner": null, "epoch": 0, "pinned": false }),
            })
            .collect();
        drop(state);
        let counts: serde_json::Map<String, Value> = self
            .counts()
            .into_iter()
            .map(|(owner, count)| (owner, json!(count)))
            .collect();
        json!({
            "kind": self.kind,
            "shard_count": SHARD_COUNT,
            "live_members": self.live_members(),
            "shards_per_owner": counts,
            "shards": shards,
        })
    }
}

/// `kind`'s shards as the table says now (what [`ShardMap::observe`] shows),
/// for the admin API and `lattice admin shards`.
pub async fn describe(pool: &Pool, kind: &'static str) -> StorageResult<Value> {
    let (members, leases) = stored::load(pool, kind).await?;
    let map = ShardMap::new(kind, "");
    map.replace(&members, &leases, now_ms());
    Ok(map.observe())
}

/// What `lattice admin shards` prints of a [`describe`]d kind: its live
/// members, then each owner's shards as ranges, pinned ones marked.
pub fn summary(described: &Value) -> String {
    let kind = described["kind"].as_str().unwrap_or_default();
    let members: Vec<&str> = described["live_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut out = format!(
        "{kind}: {} live member(s){}{}\n",
        members.len(),
        if members.is_empty() { "" } else { ": " },
        members.join(", ")
    );
    // owner -> (shards, pinned shards), owners in name order.
    let mut owners: std::collections::BTreeMap<String, (Vec<i64>, Vec<i64>)> =
        std::collections::BTreeMap::new();
    for shard in described["shards"].as_array().into_iter().flatten() {
        let owner = shard["owner"].as_str().unwrap_or("(none)").to_owned();
        let number = shard["shard"].as_i64().unwrap_or_default();
        let entry = owners.entry(owner).or_default();
        entry.0.push(number);
        if shard["pinned"] == true {
            entry.1.push(number);
        }
    }
    for (owner, (shards, pinned)) in owners {
        let alive = if members.contains(&owner.as_str()) {
            ""
        } else {
            " (not live)"
        };
        out.push_str(&format!(
            "  {owner}{alive}: {} shard(s): {}",
            shards.len(),
            ranges(&shards)
        ));
        if !pinned.is_empty() {
            out.push_str(&format!("; pinned by hand: {}", ranges(&pinned)));
        }
        out.push('\n');
    }
    out
}

/// `[0, 1, 2, 5, 7, 8]` as `0-2,5,7-8`.
fn ranges(sorted: &[i64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut index = 0;
    while index < sorted.len() {
        let start = sorted[index];
        let mut end = start;
        while index + 1 < sorted.len() && sorted[index + 1] == end + 1 {
            index += 1;
            end = sorted[index];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        index += 1;
    }
    parts.join(",")
}

/// Why a shard could not be moved by hand.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("unknown shard kind `{0}` (known: events, typing, receipts, account_data, presence, push_rules, to_device, device_lists, background)")]
    UnknownKind(String),
    #[error("shard {0} does not exist (shards are 0 to {max})", max = SHARD_COUNT - 1)]
    NoSuchShard(i32),
    #[error("`{to}` is not a live member of `{kind}`")]
    NotAMember { kind: String, to: String },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

/// Moves `shard` of `kind` to the live member `to` and pins it there; the
/// old owner's transactions in flight finish first, and its later ones are
/// fenced. Answers the new epoch.
pub async fn move_shard(pool: &Pool, kind: &str, shard: i32, to: &str) -> Result<i64, MoveError> {
    if !KINDS.contains(&kind) {
        return Err(MoveError::UnknownKind(kind.to_owned()));
    }
    if !(0..SHARD_COUNT).contains(&shard) {
        return Err(MoveError::NoSuchShard(shard));
    }
    stored::assign(pool, kind, shard, to, now_ms())
        .await?
        .ok_or_else(|| MoveError::NotAMember {
            kind: kind.to_owned(),
            to: to.to_owned(),
        })
}

fn live(members: &[Member], now: i64) -> Vec<String> {
    members
        .iter()
        .filter(|member| member.expires_ts > now)
        .map(|member| member.instance.clone())
        .collect()
}

/// The heartbeat of one kind's shard ownership on one instance: renews this
/// instance's membership (if it is a member), takes the shards it should own
/// whose owner is dead or gone, hands over the shards that should now be
/// another live member's, and reads the table into the [`ShardMap`].
pub struct ShardLeases {
    map: Arc<ShardMap>,
    pool: Pool,
    member: bool,
    timing: LeaseTiming,
    /// The first beat of this process takes back, with a new epoch, the
    /// shards a previous life of this instance held.
    started: bool,
}

impl ShardLeases {
    pub fn new(map: Arc<ShardMap>, pool: Pool, member: bool, timing: LeaseTiming) -> ShardLeases {
        ShardLeases {
            map,
            pool,
            member,
            timing,
            started: false,
        }
    }

    /// One heartbeat.
    pub async fn beat(&mut self) -> StorageResult<()> {
        let kind = self.map.kind;
        let me = self.map.local_instance.clone();
        let now = now_ms();
        if self.member {
            let expires = now.saturating_add(millis(self.timing.timeout));
            stored::renew_membership(&self.pool, kind, &me, now, expires).await?;
        }
        let (members, leases) = stored::load(&self.pool, kind).await?;
        if !self.member {
            self.map.replace(&members, &leases, now);
            return Ok(());
        }
        let live_members = live(&members, now);
        let eligible = self.timing.eligible(&members, now);

        // Shards to take: those that should be ours and have no live owner,
        // and (on the first beat) those a previous life of ours held.
        let mut owner_of: Vec<Option<&Lease>> = vec![None; SHARD_COUNT as usize];
        for lease in &leases {
            if let Some(slot) = usize::try_from(lease.shard)
                .ok()
                .and_then(|index| owner_of.get_mut(index))
            {
                *slot = Some(lease);
            }
        }
        let mut to_claim = Vec::new();
        let mut to_hand_over = Vec::new();
        for shard in 0..SHARD_COUNT {
            let desired = desired_owner(kind, shard, &eligible);
            let lease = owner_of[shard as usize];
            let owner_live = lease.is_some_and(|l| live_members.contains(&l.owner));
            match lease {
                Some(lease) if lease.owner == me => {
                    if !self.started {
                        to_claim.push(shard);
                    } else if lease.pinned {
                        // Put here by hand: stays while we live.
                    } else if let Some(desired) = desired.filter(|d| *d != me) {
                        to_hand_over.push((shard, lease.epoch, desired.to_owned()));
                    }
                }
                _ if desired == Some(me.as_str()) && !owner_live => to_claim.push(shard),
                _ => {}
            }
        }
        if !to_claim.is_empty() {
            let claimed = stored::claim(&self.pool, kind, &me, &to_claim, now).await?;
            if !claimed.is_empty() {
                tracing::info!(kind, shards = claimed.len(), "took shards");
            }
        }
        self.started = true;
        if !to_hand_over.is_empty() {
            // Shown as ours no more before the first handover waits for
            // our transactions in flight: no new one starts meanwhile.
            let handed =
                stored::hand_over_many(&self.pool, kind, &me, &to_hand_over, now_ms()).await?;
            tracing::info!(kind, shards = handed, "handed shards over to new members");
        }
        if to_claim.is_empty() && to_hand_over.is_empty() {
            self.map.replace(&members, &leases, now);
        } else {
            let (members, leases) = stored::load(&self.pool, kind).await?;
            self.map.replace(&members, &leases, now);
        }
        Ok(())
    }

    /// Beats every `heartbeat` (or at once when asked to refresh) until the
    /// task is aborted.
    pub async fn run(mut self) {
        loop {
            if let Err(error) = self.beat().await {
                tracing::warn!(kind = self.map.kind, error = %error, "shard lease heartbeat failed");
            }
            // Asked to refresh or not, never more often than this: callers
            // waiting for a moving shard must not turn it into a busy loop.
            tokio::time::sleep(MIN_BEAT_GAP.min(self.timing.heartbeat)).await;
            let refresh = self.map.refresh.notified();
            let _ = tokio::time::timeout(self.timing.heartbeat, refresh).await;
        }
    }

    /// Leaves the kind: membership ended, and every shard held here handed
    /// to the live member that should have it (what is in flight here
    /// finishes first). With no other member left, the shards stay here
    /// until one joins and claims them.
    pub async fn leave(&mut self) -> StorageResult<()> {
        if !self.member {
            return Ok(());
        }
        let kind = self.map.kind;
        let me = self.map.local_instance.clone();
        stored::leave(&self.pool, kind, &me).await?;
        let now = now_ms();
        let (members, leases) = stored::load(&self.pool, kind).await?;
        let others = self.timing.eligible(&members, now);
        let moves: Vec<(i32, i64, String)> = leases
            .iter()
            .filter(|lease| lease.owner == me)
            .filter_map(|lease| {
                desired_owner(kind, lease.shard, &others)
                    .map(|to| (lease.shard, lease.epoch, to.to_owned()))
            })
            .collect();
        let handed = stored::hand_over_many(&self.pool, kind, &me, &moves, now).await?;
        tracing::info!(kind, shards = handed, "left: shards handed over");
        let (members, leases) = stored::load(&self.pool, kind).await?;
        self.map.replace(&members, &leases, now);
        Ok(())
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_each_owners_shards_as_ranges() {
        let described = json!({
            "kind": "events",
            "live_members": ["events1", "events2"],
            "shards": [
                { "shard": 0, "owner": "events1", "epoch": 1, "pinned": false },
                { "shard": 1, "owner": "events1", "epoch": 1, "pinned": false },
                { "shard": 2, "owner": "events2", "epoch": 3, "pinned": true },
                { "shard": 3, "owner": "events1", "epoch": 1, "pinned": false },
                { "shard": 4, "owner": "events3", "epoch": 1, "pinned": false },
                { "shard": 5, "owner": null, "epoch": 0, "pinned": false },
            ],
        });
        assert_eq!(
            summary(&described),
            "events: 2 live member(s): events1, events2\n\
             \x20 (none) (not live): 1 shard(s): 5\n\
             \x20 events1: 3 shard(s): 0-1,3\n\
             \x20 events2: 1 shard(s): 2; pinned by hand: 2\n\
             \x20 events3 (not live): 1 shard(s): 4\n"
        );
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("events{i}")).collect()
    }

    fn shares(members: &[String]) -> Vec<usize> {
        members
            .iter()
            .map(|member| {
                (0..SHARD_COUNT)
                    .filter(|&shard| desired_owner("events", shard, members) == Some(member))
                    .count()
            })
            .collect()
    }

    #[test]
    fn every_shard_has_one_desired_owner_and_shares_are_even() {
        for n in 1..=5 {
            let members = names(n);
            let shares = shares(&members);
            assert_eq!(shares.iter().sum::<usize>(), SHARD_COUNT as usize);
            let fair = SHARD_COUNT as usize / n;
            for share in shares {
                // Rendezvous hashing is even on average; 256 shards keep
                // every member within a third of its fair share.
                assert!(
                    share * 3 >= fair * 2 && share * 3 <= fair * 4,
                    "{n}: {share}"
                );
            }
        }
    }

    #[test]
    fn a_new_member_takes_only_its_share() {
        let four = names(4);
        let five = names(5);
        let moved: Vec<i32> = (0..SHARD_COUNT)
            .filter(|&shard| {
                desired_owner("events", shard, &four) != desired_owner("events", shard, &five)
            })
            .collect();
        // Every shard that moves goes to the newcomer.
        for shard in &moved {
            assert_eq!(desired_owner("events", *shard, &five), Some("events5"));
        }
        assert_eq!(moved.len(), shares(&five)[4]);
    }

    #[test]
    fn a_leaving_member_gives_only_its_own() {
        let five = names(5);
        let without_three: Vec<String> = five.iter().filter(|m| *m != "events3").cloned().collect();
        for shard in 0..SHARD_COUNT {
            let before = desired_owner("events", shard, &five);
            if before != Some("events3") {
                assert_eq!(before, desired_owner("events", shard, &without_three));
            }
        }
    }

    #[test]
    fn shard_of_is_synapses_rule_over_the_shard_count() {
        assert_eq!(
            shard_of("!a:b") as usize,
            lattice_actors::shard_index("!a:b", 256).expect("n > 0")
        );
        assert!((0..SHARD_COUNT).contains(&shard_of("!room:example.org")));
    }
}
