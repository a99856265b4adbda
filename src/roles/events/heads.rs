//! The persister's memory of the rooms it writes: each room's head (latest
//! event, depth, state group and current state), enough to build the next
//! event without reading the database. Bounded: the least recently written
//! rooms are forgotten and loaded again when next written. Also when the
//! state after a state event is stored in full rather than as a delta.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::{events::StateEventType, OwnedEventId, RoomVersionId, UserId};

use crate::roles::WriteError;
use crate::rooms::pdu::{self, Pdu};

/// A state group is a delta over the previous group of its room until the
/// chain of deltas since the last full snapshot is at least this long and
/// at least as long as the room's state (see [`snapshot_due`]).
pub const SHORT_STATE_CHAIN: usize = 64;

/// Whether the state group of a new state event should be a full snapshot,
/// given the length of the delta chain it would otherwise extend and the
/// size of the room's state. A snapshot costs a row per state entry, a
/// delta one row: snapshotting once the chain is as long as the state
/// writes at most two rows per state event (amortised), where a snapshot
/// every 64 events made a room of N state events write N²/64 rows. A read
/// of the state at an event follows at most `max(64, state size)` deltas:
/// bounded by the size of the state it reads.
pub fn snapshot_due(chain_length: i32, state_size: usize) -> bool {
    let chain = usize::try_from(chain_length).unwrap_or(0) + 1;
    chain >= SHORT_STATE_CHAIN.max(state_size)
}

pub type StateKey = (String, String);

/// What the persister knows of a room it writes: enough to build the next event.
pub struct RoomHead {
    pub version: RoomVersionId,
    pub latest_event_id: OwnedEventId,
    pub depth: u64,
    pub state_group: i64,
    /// Deltas since the last full snapshot, up to `state_group`.
    pub chain_length: i32,
    pub state: HashMap<StateKey, Arc<Pdu>>,
    /// The epoch at which this writer held the room's shard when it read
    /// the head (`crate::shards`); a head read under another epoch may have
    /// been overtaken by another writer's events and is read again.
    pub lease_epoch: Option<i64>,
    /// When the room was last written (a tick of [`RoomHeads`]).
    last_used: u64,
}

impl RoomHead {
    pub fn new(
        version: RoomVersionId,
        latest_event_id: OwnedEventId,
        depth: u64,
        state_group: i64,
        chain_length: i32,
        state: HashMap<StateKey, Arc<Pdu>>,
    ) -> RoomHead {
        RoomHead {
            version,
            latest_event_id,
            depth,
            state_group,
            chain_length,
            state,
            lease_epoch: None,
            last_used: 0,
        }
    }

    pub fn state_event(&self, kind: &StateEventType, state_key: &str) -> Option<&Pdu> {
        self.state
            .get(&(kind.to_string(), state_key.to_owned()))
            .map(|pdu| &**pdu)
    }

    /// Whether `user`'s power level reaches the room's `redact` level.
    pub fn may_redact_others(&self, user: &UserId) -> Result<bool, WriteError> {
        let state = |kind: &str| self.state.get(&(kind.to_owned(), String::new()));
        let create = state("m.room.create")
            .ok_or_else(|| WriteError::Internal("room without create event".into()))?;
        let levels = pdu::room_power_levels(
            &self.version,
            create,
            state("m.room.power_levels").map(|p| &**p),
        )
        .map_err(|e| WriteError::Internal(e.to_string()))?;
        Ok(levels.user_can_redact_event_of_other(user))
    }
}

/// The heads of the rooms a persister writes, at most `capacity` of them
/// between batches (least recently used evicted). During a batch there may
/// be more: a head with events built but not yet committed must not be
/// forgotten, or the next event of its room would be built on a stale head.
pub struct RoomHeads {
    heads: HashMap<String, RoomHead>,
    capacity: usize,
    /// Advances on every use, ordering heads from least to most recent.
    tick: u64,
}

impl RoomHeads {
    pub fn new(capacity: usize) -> RoomHeads {
        RoomHeads {
            heads: HashMap::new(),
            capacity: capacity.max(1),
            tick: 0,
        }
    }

    /// The shard epoch the head of `room_id` was read under, if it is held.
    pub fn lease_epoch(&self, room_id: &str) -> Option<Option<i64>> {
        self.heads.get(room_id).map(|head| head.lease_epoch)
    }

    /// The head of a room, marked as just used.
    pub fn get_mut(&mut self, room_id: &str) -> Option<&mut RoomHead> {
        self.tick += 1;
        let head = self.heads.get_mut(room_id)?;
        head.last_used = self.tick;
        Some(head)
    }

    pub fn insert(&mut self, room_id: String, mut head: RoomHead) {
        self.tick += 1;
        head.last_used = self.tick;
        self.heads.insert(room_id, head);
    }

    pub fn remove(&mut self, room_id: &str) {
        self.heads.remove(room_id);
    }

    pub fn clear(&mut self) {
        self.heads.clear();
    }

    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// Forgets the least recently used heads beyond the capacity. Only
    /// between batches (see [`RoomHeads`]).
    pub fn evict_beyond_capacity(&mut self) {
        let excess = self.heads.len().saturating_sub(self.capacity);
        if excess == 0 {
            return;
        }
        let mut by_use: Vec<(u64, &String)> = self
            .heads
            .iter()
            .map(|(room_id, head)| (head.last_used, room_id))
            .collect();
        by_use.select_nth_unstable(excess - 1);
        let evicted: Vec<String> = by_use[..excess]
            .iter()
            .map(|(_, room_id)| (*room_id).clone())
            .collect();
        for room_id in evicted {
            self.heads.remove(&room_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> RoomHead {
        RoomHead::new(
            RoomVersionId::V12,
            OwnedEventId::try_from("$e").expect("event id"),
            1,
            1,
            0,
            HashMap::new(),
        )
    }

    #[test]
    fn the_least_recently_used_rooms_are_evicted() {
        let mut heads = RoomHeads::new(3);
        for room in ["a", "b", "c", "d", "e"] {
            heads.insert(room.into(), head());
        }
        // Within a batch the heads stay, beyond the capacity.
        assert_eq!(heads.len(), 5);
        heads.get_mut("a").expect("a");
        heads.evict_beyond_capacity();
        assert_eq!(heads.len(), 3);
        for room in ["a", "d", "e"] {
            assert!(heads.lease_epoch(room).is_some(), "{room} was used last");
        }
        heads.evict_beyond_capacity();
        assert_eq!(heads.len(), 3);
    }

    #[test]
    fn snapshots_are_due_once_the_chain_is_as_long_as_the_state() {
        assert!(!snapshot_due(10, 5));
        assert!(snapshot_due(63, 5), "small rooms: every 64 state events");
        assert!(!snapshot_due(63, 1000));
        assert!(snapshot_due(999, 1000));
    }

    /// Rows written for `events` state events that each set a new key (as
    /// `createRoom`'s `initial_state` does): linear, not quadratic.
    #[test]
    fn a_growing_state_is_written_in_linear_space() {
        let mut rows = 0usize;
        let (mut chain, mut state) = (0i32, 0usize);
        let events = 10_000;
        for _ in 0..events {
            state += 1;
            if snapshot_due(chain, state) {
                chain = 0;
                rows += state;
            } else {
                chain += 1;
                rows += 1;
            }
        }
        assert!(rows <= 2 * events, "{rows} rows for {events} state events");
    }
}
