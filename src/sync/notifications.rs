//! Unread counts of `/sync`: each joined room's `unread_notifications`
//! (`notification_count`, `highlight_count`) and, when the filter sets
//! `room.timeline.unread_thread_notifications`, `unread_thread_notifications`
//! by thread root (then `unread_notifications` counts the main timeline
//! only). Counted from the push actions stored with each event after the
//! user's read receipts, in one query for all the rooms of an answer.
//!
//! Each instance keeps the counts it last gave ([`UnreadCache`]): while the
//! notifier says neither a receipt in the room nor a membership of the user
//! changed since, a room with no new event keeps its counts, and a room
//! with new events adds their actions, from memory
//! ([`crate::push::recent`]) when it holds them, else from one read of the
//! actions after the counts. A receipt or a membership change counts the
//! room again from its floors.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use super::SyncContext;
use crate::error::ApiResult;
use crate::push::evaluator::MAIN_TIMELINE;
use crate::storage::push_actions::{self, Counts, RoomUnread};
use crate::streams::events::EVENTS_STREAM;
use crate::streams::receipts::RECEIPTS_STREAM;

/// (user, room) entries kept before the cache starts over.
const MAX_CACHED_COUNTS: usize = 200_000;

/// The unread counts this instance last gave each user in each room.
#[derive(Default)]
pub struct UnreadCache {
    entries: Mutex<foldhash::HashMap<(String, String), Entry>>,
}

/// A room's counts by thread for a user, counted up to `events` with the
/// receipts up to `receipts`, above `unread.floors`.
#[derive(Clone)]
struct Entry {
    events: i64,
    receipts: i64,
    unread: RoomUnread,
}

/// What to do for one room of an answer.
enum Plan {
    /// The counts are known.
    Known(RoomUnread),
    /// The entry's plus the actions after its position, read.
    Added(RoomUnread, i64),
    /// Counted from the floors.
    Counted,
}

impl UnreadCache {
    fn plan(&self, ctx: &SyncContext<'_>, room_id: &str) -> Plan {
        let notifier = &ctx.node.notifier;
        let key = (ctx.user_id().to_owned(), room_id.to_owned());
        let Some(entry) = self
            .entries
            .lock()
            .ok()
            .and_then(|entries| entries.get(&key).cloned())
        else {
            return Plan::Counted;
        };
        if entry.events > ctx.upto_events()
            || notifier.has_changed_since(RECEIPTS_STREAM, room_id, entry.receipts)
            || notifier.has_changed_since(EVENTS_STREAM, ctx.user_id(), entry.events)
        {
            return Plan::Counted;
        }
        if !notifier.has_changed_since(EVENTS_STREAM, room_id, entry.events) {
            return Plan::Known(entry.unread);
        }
        let mut unread = entry.unread;
        match ctx.node.recent_push.counts(
            room_id,
            ctx.user_id(),
            entry.events,
            ctx.upto_events(),
            &unread.floors,
        ) {
            Some(more) => {
                add(&mut unread.counts, more);
                self.store(ctx, room_id, &unread);
                Plan::Known(unread)
            }
            None => Plan::Added(unread, entry.events),
        }
    }

    fn store(&self, ctx: &SyncContext<'_>, room_id: &str, unread: &RoomUnread) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_CACHED_COUNTS {
            entries.clear();
        }
        let entry = Entry {
            events: ctx.upto_events(),
            receipts: ctx.upto.receipts.stream(),
            unread: unread.clone(),
        };
        let key = (ctx.user_id().to_owned(), room_id.to_owned());
        match entries.get(&key) {
            // Another answer counted further.
            Some(other) if other.events > entry.events => {}
            _ => {
                entries.insert(key, entry);
            }
        }
    }
}

/// The counts of each of `room_ids`: what each room's section adds.
pub async fn unread(
    ctx: &SyncContext<'_>,
    room_ids: &[&str],
) -> ApiResult<HashMap<String, Map<String, Value>>> {
    let cache = &ctx.node.unread;
    let mut counts: HashMap<String, HashMap<String, Counts>> = HashMap::new();
    let mut added: HashMap<&str, RoomUnread> = HashMap::new();
    let mut to_read: Vec<(&str, i64)> = Vec::new();
    for room_id in room_ids {
        match cache.plan(ctx, room_id) {
            Plan::Known(unread) => {
                counts.insert((*room_id).to_owned(), unread.counts);
            }
            Plan::Added(unread, after) => {
                added.insert(room_id, unread);
                to_read.push((room_id, after));
            }
            Plan::Counted => to_read.push((room_id, 0)),
        }
    }
    if !to_read.is_empty() {
        let mut read =
            push_actions::unread_counts(&ctx.node.pool, ctx.user_id(), &to_read, ctx.upto_events())
                .await?;
        for (room_id, _) in &to_read {
            let more = read.remove(*room_id).unwrap_or_default();
            let unread = match added.remove(room_id) {
                Some(mut unread) => {
                    add(&mut unread.counts, more.counts);
                    unread.floors = more.floors;
                    unread
                }
                None => more,
            };
            cache.store(ctx, room_id, &unread);
            counts.insert((*room_id).to_owned(), unread.counts);
        }
    }
    let by_thread = ctx.filter.room.timeline.unread_thread_notifications;
    let mut sections = HashMap::with_capacity(room_ids.len());
    for room_id in room_ids {
        let threads = counts.get(*room_id);
        let mut section = Map::new();
        let main = if by_thread {
            let mut per_thread = Map::new();
            for (thread_id, counts) in threads.into_iter().flatten() {
                if thread_id != MAIN_TIMELINE {
                    per_thread.insert(thread_id.clone(), counts_json(*counts));
                }
            }
            section.insert(
                "unread_thread_notifications".into(),
                Value::Object(per_thread),
            );
            threads
                .and_then(|t| t.get(MAIN_TIMELINE))
                .copied()
                .unwrap_or_default()
        } else {
            threads
                .into_iter()
                .flat_map(|t| t.values())
                .fold(Counts::default(), |sum, c| Counts {
                    notifications: sum.notifications + c.notifications,
                    highlights: sum.highlights + c.highlights,
                })
        };
        section.insert("unread_notifications".into(), counts_json(main));
        sections.insert((*room_id).to_owned(), section);
    }
    Ok(sections)
}

/// Adds `more` to `counts`, thread by thread.
fn add(counts: &mut HashMap<String, Counts>, more: HashMap<String, Counts>) {
    for (thread_id, more) in more {
        let sum = counts.entry(thread_id).or_default();
        sum.notifications += more.notifications;
        sum.highlights += more.highlights;
    }
}

fn counts_json(counts: Counts) -> Value {
    json!({
        "notification_count": counts.notifications,
        "highlight_count": counts.highlights,
    })
}
