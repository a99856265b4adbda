//! In-memory caches of hot database reads, and how each stays true.
//!
//! A cache here is kept right in one of two ways. Reads that follow a stream
//! are checked against the notifier's change cache: an entry remembers the
//! stream position it was read at and is used only while its key has not
//! changed since. Reads that change outside a stream (forgetting a room) are
//! invalidated explicitly, here and, through the `caches` replication stream,
//! on every other instance; a generation counter keeps a read that raced an
//! invalidation from being stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;

use crate::error::ApiError;
use crate::rooms::filter::{Filter, RoomEventFilter};
use crate::storage::accounts;
use crate::storage::rooms::{self, Membership, StoredEvent};
use crate::storage::StorageResult;
use crate::streams::caches::Invalidation;
use crate::streams::events::EVENTS_STREAM;
use crate::streams::notifier::Notifier;

/// The name of the membership cache in `caches` stream rows: `["memberships", user_id]`.
pub const MEMBERSHIP_CACHE: &str = "memberships";

/// Users whose memberships are kept before the cache starts over.
const MAX_CACHED_USERS: usize = 100_000;

/// Every room a user is in, was invited to or left: what each `/sync` of
/// that user starts from.
#[derive(Default)]
pub struct MembershipCache {
    entries: Mutex<foldhash::HashMap<String, CachedMemberships>>,
    generation: AtomicU64,
}

struct CachedMemberships {
    /// The events stream position the read started at.
    read_at: i64,
    memberships: Arc<Vec<Membership>>,
}

impl MembershipCache {
    /// The memberships of `user_id`, from the cache while they have not
    /// changed, else from the database.
    pub async fn memberships_of_user(
        &self,
        pool: &Pool,
        notifier: &Notifier,
        user_id: &str,
    ) -> StorageResult<Arc<Vec<Membership>>> {
        if let Some(cached) = self.lookup(notifier, user_id) {
            return Ok(cached);
        }
        let generation = self.generation.load(Ordering::Acquire);
        // Read the position first: a change after it marks the entry stale
        // whether or not the query below saw it.
        let read_at = notifier.events_position();
        let memberships = Arc::new(rooms::memberships_of_user(pool, user_id).await?);
        if let Ok(mut entries) = self.entries.lock() {
            if self.generation.load(Ordering::Acquire) == generation {
                if entries.len() >= MAX_CACHED_USERS {
                    entries.clear();
                }
                entries.insert(
                    user_id.to_owned(),
                    CachedMemberships {
                        read_at,
                        memberships: Arc::clone(&memberships),
                    },
                );
            }
        }
        Ok(memberships)
    }

    fn lookup(&self, notifier: &Notifier, user_id: &str) -> Option<Arc<Vec<Membership>>> {
        let entries = self.entries.lock().ok()?;
        let cached = entries.get(user_id)?;
        if notifier.has_changed_since(EVENTS_STREAM, user_id, cached.read_at) {
            return None;
        }
        Some(Arc::clone(&cached.memberships))
    }

    /// Drops what is known of `user_id` (a room forgotten or remembered).
    pub fn forget(&self, user_id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(user_id);
        }
    }

    /// Applies a `caches` stream row (key: the user id).
    pub fn invalidate(&self, invalidation: &Invalidation) {
        if invalidation.cache == MEMBERSHIP_CACHE {
            if let Some(user_id) = invalidation.key(0) {
                self.forget(user_id);
            }
        }
    }
}

/// Filters kept before the cache starts over.
const MAX_CACHED_FILTERS: usize = 100_000;

/// Stored filters by (user, id). A filter never changes once created, so an
/// entry is never stale; it only has to be bounded.
#[derive(Default)]
pub struct FilterCache {
    filters: Mutex<foldhash::HashMap<(String, i64), Arc<Filter>>>,
}

impl FilterCache {
    /// The filter `filter_id` of `user_id`, parsed; None when there is none.
    pub async fn filter(
        &self,
        pool: &Pool,
        user_id: &str,
        filter_id: i64,
    ) -> Result<Option<Arc<Filter>>, ApiError> {
        let key = (user_id.to_owned(), filter_id);
        if let Some(filter) = self.filters.lock().ok().and_then(|f| f.get(&key).cloned()) {
            return Ok(Some(filter));
        }
        let Some(value) = accounts::filter(pool, user_id, filter_id).await? else {
            return Ok(None);
        };
        let filter = Arc::new(Filter::parse(value)?);
        if let Ok(mut filters) = self.filters.lock() {
            if filters.len() >= MAX_CACHED_FILTERS {
                filters.clear();
            }
            filters.insert(key, Arc::clone(&filter));
        }
        Ok(Some(filter))
    }
}

/// Events kept per room: enough for the default timeline of a sync that is
/// a few messages behind.
const RECENT_EVENTS_PER_ROOM: usize = 32;
/// Events kept over all rooms before the cache starts over (a few tens of MB).
const MAX_RECENT_EVENTS: usize = 50_000;

/// Rooms one sync brings up to date one by one; beyond, it reads them all at once.
const MAX_REFRESHES_PER_SYNC: usize = 4;

/// How many locks the rooms' refreshes are spread over.
const REFRESH_LOCKS: usize = 64;

/// The latest events of each room that long-polls woke for: after the first
/// `/sync` of a room's members reads a new event, the others get it from
/// here. A room's entry holds every event after `complete_after` up to
/// `read_at`, and is extended from the database only when the notifier's
/// change cache says the room moved since `read_at`. The members of a room
/// wake together; one of them reads while the others wait for its answer.
pub struct RecentEventsCache {
    rooms: Mutex<RecentRooms>,
    /// Held while a room is read from the database, by room id hash.
    refreshing: Vec<tokio::sync::Mutex<()>>,
}

impl Default for RecentEventsCache {
    fn default() -> Self {
        RecentEventsCache {
            rooms: Mutex::default(),
            refreshing: (0..REFRESH_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }
}

#[derive(Default)]
struct RecentRooms {
    by_room: foldhash::HashMap<String, Arc<RoomTimeline>>,
    events: usize,
}

#[derive(Clone)]
struct RoomTimeline {
    /// Oldest first.
    events: std::collections::VecDeque<StoredEvent>,
    /// Every event of the room after this position (and up to `read_at`) is in `events`.
    complete_after: i64,
    read_at: i64,
}

impl RoomTimeline {
    /// The latest `limit` events in `(after, upto]` that pass `filter`,
    /// newest first, with one more than `limit` when there are more; None
    /// when the entry cannot tell.
    fn answer(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Option<Vec<StoredEvent>> {
        let wanted = limit.saturating_add(1);
        let events: Vec<StoredEvent> = self
            .events
            .iter()
            .rev()
            .filter(|e| e.stream_ordering > after && e.stream_ordering <= upto)
            .filter(|e| filter.matches(&e.room_id, &e.sender, &e.kind, e.content()))
            .take(wanted)
            .cloned()
            .collect();
        (self.complete_after <= after || events.len() == wanted).then_some(events)
    }

    fn trim(&mut self) {
        while self.events.len() > RECENT_EVENTS_PER_ROOM {
            if let Some(dropped) = self.events.pop_front() {
                self.complete_after = dropped.stream_ordering;
            }
        }
    }
}

impl RecentEventsCache {
    /// The latest `limit` events of each room in `(after, upto]` that pass
    /// `filter`, newest first, with one more than `limit` when there are
    /// more: the same as `rooms::recent_events_per_room`, from memory where
    /// it can be.
    #[allow(clippy::too_many_arguments)]
    pub async fn recent_events_per_room(
        &self,
        pool: &Pool,
        notifier: &Notifier,
        room_ids: &[String],
        after: i64,
        upto: i64,
        limit: i64,
        filter: &RoomEventFilter,
    ) -> StorageResult<HashMap<String, Vec<StoredEvent>>> {
        let limit = limit.max(0) as usize;
        let mut by_room = HashMap::new();
        let mut stale = Vec::new();
        let mut timelines = Vec::with_capacity(room_ids.len());
        for room_id in room_ids {
            match self.fresh_entry(notifier, room_id) {
                Some(timeline) => timelines.push((room_id, Some(timeline))),
                None => {
                    stale.push(room_id.clone());
                    timelines.push((room_id, None));
                }
            }
        }
        // A sync after a long absence finds many rooms moved: one query for
        // all of them beats a refresh per room (the cache fills again from
        // the long-polls that follow).
        if stale.len() > MAX_REFRESHES_PER_SYNC {
            by_room =
                rooms::recent_events_per_room(pool, &stale, after, upto, limit as i64, filter)
                    .await?;
            timelines.retain(|(_, timeline)| timeline.is_some());
        }
        for (room_id, timeline) in timelines {
            let timeline = match timeline {
                Some(timeline) => timeline,
                None => self.refresh(pool, notifier, room_id).await?,
            };
            let events = match timeline.answer(after, upto, limit, filter) {
                Some(events) => events,
                // Further back than the cache keeps.
                None => rooms::recent_events_per_room(
                    pool,
                    std::slice::from_ref(room_id),
                    after,
                    upto,
                    limit as i64,
                    filter,
                )
                .await?
                .remove(room_id)
                .unwrap_or_default(),
            };
            if !events.is_empty() {
                by_room.insert(room_id.clone(), events);
            }
        }
        Ok(by_room)
    }

    /// The room's entry when nothing happened in the room since it was read.
    /// The stream positions of those of `events` (room id, event id) an
    /// entry holds, None for the others.
    pub fn positions_of(&self, events: &[(&str, &str)]) -> Vec<Option<i64>> {
        let Ok(rooms) = self.rooms.lock() else {
            return vec![None; events.len()];
        };
        events
            .iter()
            .map(|(room_id, event_id)| {
                let timeline = rooms.by_room.get(*room_id)?;
                let event = timeline
                    .events
                    .iter()
                    .rev()
                    .find(|e| e.event_id == *event_id)?;
                Some(event.stream_ordering)
            })
            .collect()
    }

    fn fresh_entry(&self, notifier: &Notifier, room_id: &str) -> Option<Arc<RoomTimeline>> {
        let rooms = self.rooms.lock().ok()?;
        let timeline = rooms.by_room.get(room_id)?;
        if notifier.has_changed_since(EVENTS_STREAM, room_id, timeline.read_at) {
            return None;
        }
        Some(Arc::clone(timeline))
    }

    /// Brings the room's entry up to date: reads what it lacks (or the
    /// latest events, without an entry) unless a request that held the
    /// room's lock before this one already did.
    async fn refresh(
        &self,
        pool: &Pool,
        notifier: &Notifier,
        room_id: &str,
    ) -> StorageResult<Arc<RoomTimeline>> {
        let _reading = self.refresh_lock(room_id).lock().await;
        if let Some(timeline) = self.fresh_entry(notifier, room_id) {
            return Ok(timeline);
        }
        let base = self
            .rooms
            .lock()
            .ok()
            .and_then(|rooms| rooms.by_room.get(room_id).cloned());
        // Every event up to the notifier's position is committed.
        let read_at = notifier.events_position();
        let from = base.as_ref().map(|t| t.read_at).unwrap_or(0);
        let mut newest = read(pool, room_id, from, read_at).await?;
        // A redaction changes an older event: read the room afresh.
        let redacts = from > 0 && newest.events.iter().any(|e| e.kind == "m.room.redaction");
        if redacts {
            newest = read(pool, room_id, 0, read_at).await?;
        }
        let mut timeline = match base {
            // Everything since the entry was read came back (a cut read is
            // complete only after its oldest event, which is after `from`):
            // extend the entry.
            Some(base) if !redacts && newest.complete_after == from => {
                let mut timeline = (*base).clone();
                timeline.events.extend(newest.events);
                timeline.read_at = read_at;
                timeline
            }
            _ => newest,
        };
        timeline.trim();
        let timeline = Arc::new(timeline);
        self.store(room_id, &timeline);
        Ok(timeline)
    }

    /// Adds events just persisted, before the notifier announces them at
    /// `position`, to their rooms' entries: the long-polls they wake then
    /// answer from memory instead of each room's first one reading them back
    /// from the database while the others wait. Events come in stream order,
    /// and only an entry that already holds every earlier event of its room
    /// is extended; a room without an entry is left to `refresh`.
    pub fn extend(&self, notifier: &Notifier, events: &[StoredEvent], position: i64) {
        let Ok(mut rooms) = self.rooms.lock() else {
            return;
        };
        let mut extended: Vec<&str> = Vec::new();
        for event in events {
            let Some(current) = rooms.by_room.get(&event.room_id) else {
                continue;
            };
            let before = current.events.len();
            // A redaction changes an older event: the room is read afresh.
            if event.kind == "m.room.redaction" {
                rooms.by_room.remove(&event.room_id);
                rooms.events -= before;
                continue;
            }
            // Something of the room after the entry's read is missing from it.
            if event.stream_ordering <= current.read_at
                || notifier.has_changed_since(EVENTS_STREAM, &event.room_id, current.read_at)
            {
                continue;
            }
            let Some(entry) = rooms.by_room.get_mut(&event.room_id) else {
                continue;
            };
            let timeline = Arc::make_mut(entry);
            timeline.events.push_back(event.clone());
            timeline.read_at = event.stream_ordering;
            timeline.trim();
            let after = timeline.events.len();
            rooms.events = rooms.events + after - before;
            extended.push(&event.room_id);
        }
        // The room's events up to `position` are all among `events` (a room
        // has one writer, and these are the positions it announces now): the
        // change recorded at `position` must not make the entry look stale.
        for room_id in extended {
            if let Some(entry) = rooms.by_room.get_mut(room_id) {
                let timeline = Arc::make_mut(entry);
                timeline.read_at = timeline.read_at.max(position);
            }
        }
    }

    fn refresh_lock(&self, room_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(room_id);
        &self.refreshing[(hash % REFRESH_LOCKS as u64) as usize]
    }

    /// Stores `timeline` unless another request already stored one read as
    /// late or later.
    fn store(&self, room_id: &str, timeline: &Arc<RoomTimeline>) {
        let Ok(mut rooms) = self.rooms.lock() else {
            return;
        };
        if rooms
            .by_room
            .get(room_id)
            .is_some_and(|current| current.read_at >= timeline.read_at)
        {
            return;
        }
        if rooms.events + timeline.events.len() > MAX_RECENT_EVENTS {
            rooms.by_room.clear();
            rooms.events = 0;
        }
        let added = timeline.events.len();
        if let Some(previous) = rooms
            .by_room
            .insert(room_id.to_owned(), Arc::clone(timeline))
        {
            rooms.events -= previous.events.len();
        }
        rooms.events += added;
    }
}

/// The room's events in `(after, upto]`, as many as the cache keeps (the
/// latest), as a timeline read at `upto`: complete after `after`, or after
/// the oldest event kept when there were more.
async fn read(pool: &Pool, room_id: &str, after: i64, upto: i64) -> StorageResult<RoomTimeline> {
    let mut events = rooms::recent_events_per_room(
        pool,
        &[room_id.to_owned()],
        after,
        upto,
        RECENT_EVENTS_PER_ROOM as i64,
        &RoomEventFilter::default(),
    )
    .await?
    .remove(room_id)
    .unwrap_or_default();
    let truncated = events.len() > RECENT_EVENTS_PER_ROOM;
    events.truncate(RECENT_EVENTS_PER_ROOM);
    events.reverse();
    let complete_after = match events.first() {
        Some(oldest) if truncated => oldest.stream_ordering - 1,
        _ => after,
    };
    Ok(RoomTimeline {
        events: events.into(),
        complete_after,
        read_at: upto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64) -> StoredEvent {
        StoredEvent {
            stream_ordering: position,
            event_id: format!("$e{position}"),
            room_id: "!r:x".into(),
            depth: position,
            sender: "@a:x".into(),
            kind: "m.room.message".into(),
            state_key: None,
            origin_server_ts: 0,
            pdu: serde_json::json!({}).into(),
            redacted_by: None,
            txn_device_id: None,
            txn_id: None,
        }
    }

    fn timeline(positions: &[i64], complete_after: i64, read_at: i64) -> RoomTimeline {
        RoomTimeline {
            events: positions.iter().map(|&p| event(p)).collect(),
            complete_after,
            read_at,
        }
    }

    impl RoomTimeline {
        fn answer_all(&self, after: i64, upto: i64, limit: usize) -> Option<Vec<StoredEvent>> {
            self.answer(after, upto, limit, &RoomEventFilter::default())
        }
    }

    fn positions(events: Option<Vec<StoredEvent>>) -> Option<Vec<i64>> {
        events.map(|events| events.iter().map(|e| e.stream_ordering).collect())
    }

    #[test]
    fn answers_newest_first_within_the_range() {
        let t = timeline(&[3, 5, 8, 9], 2, 10);
        assert_eq!(positions(t.answer_all(4, 10, 10)), Some(vec![9, 8, 5]));
        assert_eq!(positions(t.answer_all(4, 8, 10)), Some(vec![8, 5]));
        assert_eq!(positions(t.answer_all(9, 10, 10)), Some(vec![]));
        // One more than the limit tells the caller there is a gap.
        assert_eq!(positions(t.answer_all(2, 10, 2)), Some(vec![9, 8, 5]));
    }

    #[test]
    fn cannot_answer_further_back_than_it_is_complete() {
        let t = timeline(&[5, 8, 9], 4, 10);
        assert_eq!(positions(t.answer_all(1, 10, 10)), None, "3 may exist");
        // Enough events to fill the limit plus one: the gap is all it needs.
        assert_eq!(positions(t.answer_all(1, 10, 1)), Some(vec![9, 8]));
    }

    #[test]
    fn a_filter_applies_before_the_limit() {
        let mut t = timeline(&[3, 5, 8, 9, 10], 2, 10);
        for event in t.events.iter_mut().filter(|e| e.stream_ordering % 2 == 0) {
            event.kind = "m.room.member".into();
        }
        let messages = RoomEventFilter {
            types: Some(vec!["m.room.message".into()]),
            ..RoomEventFilter::default()
        };
        // The two newest messages, and the one before that to tell a gap.
        assert_eq!(
            positions(t.answer(2, 10, 2, &messages)),
            Some(vec![9, 5, 3])
        );
        assert_eq!(
            positions(t.answer(2, 10, 3, &messages)),
            Some(vec![9, 5, 3])
        );
        // Not enough matching events, and the entry is not complete that far back.
        assert_eq!(positions(t.answer(1, 10, 3, &messages)), None);
    }

    fn cache_with(room: &RoomTimeline) -> RecentEventsCache {
        let cache = RecentEventsCache::default();
        cache.store("!r:x", &Arc::new(room.clone()));
        cache
    }

    /// A notifier whose events stream is at `position`, knowing no change before.
    fn notifier_at(position: i64) -> Notifier {
        let notifier = Notifier::new();
        notifier.forget_changes_until(EVENTS_STREAM, position);
        notifier.on_new_rows(EVENTS_STREAM, position, Vec::<String>::new());
        notifier
    }

    fn cached(cache: &RecentEventsCache, notifier: &Notifier) -> Option<Vec<i64>> {
        cache
            .fresh_entry(notifier, "!r:x")
            .map(|t| t.events.iter().map(|e| e.stream_ordering).collect())
    }

    #[test]
    fn new_events_extend_an_entry_that_holds_everything_before_them() {
        let notifier = notifier_at(10);
        let cache = cache_with(&timeline(&[3, 5], 0, 10));
        // A batch announced at 14 whose events of this room are 12 and 13.
        cache.extend(&notifier, &[event(12), event(13)], 14);
        notifier.record_changes(EVENTS_STREAM, &["!r:x".to_owned()], 14);
        assert_eq!(cached(&cache, &notifier), Some(vec![3, 5, 12, 13]));
        let timeline = cache.fresh_entry(&notifier, "!r:x").expect("entry");
        assert_eq!(
            positions(timeline.answer_all(5, 14, 10)),
            Some(vec![13, 12])
        );
    }

    #[test]
    fn an_entry_that_missed_a_change_is_not_extended() {
        let notifier = notifier_at(10);
        let cache = cache_with(&timeline(&[3, 5], 0, 10));
        // 11 was announced without the cache seeing it (a catch-up).
        notifier.record_changes(EVENTS_STREAM, &["!r:x".to_owned()], 11);
        cache.extend(&notifier, &[event(12)], 12);
        notifier.record_changes(EVENTS_STREAM, &["!r:x".to_owned()], 12);
        assert_eq!(cached(&cache, &notifier), None, "stale: read afresh");
    }

    #[test]
    fn a_redaction_drops_the_entry() {
        let notifier = notifier_at(10);
        let cache = cache_with(&timeline(&[3, 5], 0, 10));
        let mut redaction = event(12);
        redaction.kind = "m.room.redaction".into();
        cache.extend(&notifier, &[redaction], 12);
        assert_eq!(cached(&cache, &notifier), None);
    }

    #[test]
    fn trimming_moves_completeness_forward() {
        let mut t = timeline(&(1..=40).collect::<Vec<_>>(), 0, 40);
        t.trim();
        assert_eq!(t.events.len(), RECENT_EVENTS_PER_ROOM);
        assert_eq!(t.complete_after, 40 - RECENT_EVENTS_PER_ROOM as i64);
        assert_eq!(
            positions(t.answer_all(0, 40, 5)),
            Some(vec![40, 39, 38, 37, 36, 35])
        );
        assert_eq!(positions(t.answer_all(0, 40, 40)), None);
    }
}
