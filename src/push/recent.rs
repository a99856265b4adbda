//! What the latest events of each room did for each member: the notify and
//! highlight of their push actions, kept per instance from the events
//! flowing past (the local persister's, and other instances' through the
//! events stream rows, which carry them), so that `/sync` adds the actions
//! of new events to a user's unread counts without reading them back
//! ([`crate::sync::notifications`]).
//!
//! Every event this instance learns of after it started passes here in
//! stream order, before the notifier announces it. A room's record is
//! complete after a position when every event of the room since then is in
//! it; a catch-up row (read from the database, without the actions), an
//! event with too many notified members to carry, trimming and starting
//! over all move that position forward, and a question about anything
//! earlier is answered "unknown" (the caller reads the database).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::evaluator::PushActions;
use crate::storage::push_actions::Counts;

/// Events kept per room.
const EVENTS_PER_ROOM: usize = 64;

/// Member entries kept in all, before the record starts over.
const MAX_ENTRIES: usize = 1_000_000;

/// An event's notified members travel in its row only up to this many; a
/// bigger room's counts are read from the database.
pub const MAX_USERS_IN_ROW: usize = 200;

/// What one event did: its thread, and each member it notified or
/// highlighted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventActions {
    pub thread_id: String,
    /// (user id, notify, highlight).
    pub users: Vec<(String, bool, bool)>,
}

/// What an events row says of its event's push actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowActions {
    /// It notifies nobody.
    None,
    Some(Arc<EventActions>),
    /// The row does not say (read back from the database, or too big).
    Unknown,
}

impl RowActions {
    /// From the persister's evaluation.
    pub fn of(push: Option<&PushActions>) -> RowActions {
        match push {
            None => RowActions::None,
            Some(push) if push.users.is_empty() => RowActions::None,
            Some(push) if push.users.len() > MAX_USERS_IN_ROW => RowActions::Unknown,
            Some(push) => RowActions::Some(Arc::new(EventActions {
                thread_id: push.thread_id.clone(),
                users: push
                    .users
                    .iter()
                    .map(|u| (u.user_id.clone(), u.notify, u.highlight))
                    .collect(),
            })),
        }
    }

    /// As an events row carries it: null, `[thread, [[user, notify,
    /// highlight], ...]]`, or false.
    pub fn to_json(&self) -> Value {
        match self {
            RowActions::None => Value::Null,
            RowActions::Some(actions) => json!([
                actions.thread_id,
                actions
                    .users
                    .iter()
                    .map(|(user, notify, highlight)| json!([user, notify, highlight]))
                    .collect::<Vec<_>>(),
            ]),
            RowActions::Unknown => Value::Bool(false),
        }
    }

    /// From a row's value (None: absent, as in a catch-up row).
    pub fn from_json(value: Option<&Value>) -> RowActions {
        match value {
            Some(Value::Null) => RowActions::None,
            Some(Value::Array(parts)) => {
                let parsed = (|| {
                    let thread_id = parts.first()?.as_str()?.to_owned();
                    let users = parts
                        .get(1)?
                        .as_array()?
                        .iter()
                        .map(|user| {
                            Some((
                                user.get(0)?.as_str()?.to_owned(),
                                user.get(1)?.as_bool()?,
                                user.get(2)?.as_bool()?,
                            ))
                        })
                        .collect::<Option<Vec<_>>>()?;
                    Some(EventActions { thread_id, users })
                })();
                parsed.map_or(RowActions::Unknown, |a| RowActions::Some(Arc::new(a)))
            }
            _ => RowActions::Unknown,
        }
    }
}

/// The floors under which nothing counts for a user in a room: the room's
/// (last non-join membership, unthreaded receipt) and each thread's
/// threaded receipt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floors {
    pub room: i64,
    pub threads: HashMap<String, i64>,
}

#[derive(Default)]
struct Record {
    /// Nothing at or before this position is known, for any room.
    complete_after: i64,
    /// The latest position recorded.
    latest: i64,
    rooms: foldhash::HashMap<String, RoomRecord>,
    entries: usize,
}

#[derive(Default)]
struct RoomRecord {
    complete_after: i64,
    /// Oldest first.
    events: VecDeque<(i64, Arc<EventActions>)>,
}

/// See the module documentation.
#[derive(Default)]
pub struct RecentPushActions {
    record: Mutex<Record>,
}

impl RecentPushActions {
    /// Records the actions of the event at `position` in `room_id`.
    pub fn record(&self, room_id: &str, position: i64, actions: RowActions) {
        let Ok(mut guard) = self.record.lock() else {
            return;
        };
        let record = &mut *guard;
        record.latest = record.latest.max(position);
        let actions = match actions {
            RowActions::None => return,
            RowActions::Some(actions) => actions,
            RowActions::Unknown => {
                let floor = record.complete_after;
                let room = record.rooms.entry(room_id.to_owned()).or_default();
                room.complete_after = room.complete_after.max(position).max(floor);
                return;
            }
        };
        if record.entries + actions.users.len() > MAX_ENTRIES {
            // Start over: what was recorded before this event is forgotten.
            let latest = record.latest;
            *record = Record {
                complete_after: latest.max(position) - 1,
                latest,
                ..Record::default()
            };
        }
        let floor = record.complete_after;
        let room = record
            .rooms
            .entry(room_id.to_owned())
            .or_insert_with(|| RoomRecord {
                complete_after: floor,
                events: VecDeque::new(),
            });
        record.entries += actions.users.len();
        room.events.push_back((position, actions));
        while room.events.len() > EVENTS_PER_ROOM {
            if let Some((trimmed, actions)) = room.events.pop_front() {
                room.complete_after = room.complete_after.max(trimmed);
                record.entries = record.entries.saturating_sub(actions.users.len());
            }
        }
    }

    /// What the events of `room_id` in `(after, upto]` add to `user_id`'s
    /// counts by thread, above `floors`; None when the record cannot tell.
    pub fn counts(
        &self,
        room_id: &str,
        user_id: &str,
        after: i64,
        upto: i64,
        floors: &Floors,
    ) -> Option<HashMap<String, Counts>> {
        let record = self.record.lock().ok()?;
        let mut counts: HashMap<String, Counts> = HashMap::new();
        let Some(room) = record.rooms.get(room_id) else {
            // Nothing of the room since the record began.
            return (after >= record.complete_after).then_some(counts);
        };
        if after < room.complete_after {
            return None;
        }
        let floor = after.max(floors.room);
        for (position, actions) in &room.events {
            if *position <= floor || *position > upto {
                continue;
            }
            if floors
                .threads
                .get(&actions.thread_id)
                .is_some_and(|thread_floor| *position <= *thread_floor)
            {
                continue;
            }
            for (user, notify, highlight) in &actions.users {
                if user == user_id {
                    let sum = counts.entry(actions.thread_id.clone()).or_default();
                    sum.notifications += i64::from(*notify);
                    sum.highlights += i64::from(*highlight);
                }
            }
        }
        Some(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(thread: &str, users: &[(&str, bool, bool)]) -> RowActions {
        RowActions::Some(Arc::new(EventActions {
            thread_id: thread.into(),
            users: users
                .iter()
                .map(|(u, n, h)| ((*u).to_owned(), *n, *h))
                .collect(),
        }))
    }

    fn main(counts: &HashMap<String, Counts>) -> (i64, i64) {
        counts
            .get("main")
            .map_or((0, 0), |c| (c.notifications, c.highlights))
    }

    #[test]
    fn counts_add_the_users_actions_between_the_positions_above_the_floors() {
        let recent = RecentPushActions::default();
        recent.record("!r", 11, actions("main", &[("@b", true, false)]));
        recent.record(
            "!r",
            12,
            actions("main", &[("@b", true, true), ("@c", true, false)]),
        );
        recent.record("!r", 13, RowActions::None);
        recent.record("!r", 14, actions("$root", &[("@b", true, false)]));
        let none = Floors::default();
        let counts = recent.counts("!r", "@b", 10, 14, &none).expect("known");
        assert_eq!(main(&counts), (2, 1));
        assert_eq!(counts["$root"].notifications, 1);
        // Only up to `upto`, only after `after`, only above the floors.
        assert_eq!(
            main(&recent.counts("!r", "@b", 10, 11, &none).expect("known")),
            (1, 0)
        );
        assert_eq!(
            main(&recent.counts("!r", "@b", 11, 14, &none).expect("known")),
            (1, 1)
        );
        let floors = Floors {
            room: 11,
            threads: HashMap::from([("$root".to_owned(), 14)]),
        };
        let counts = recent.counts("!r", "@b", 0, 14, &floors).expect("known");
        assert_eq!(main(&counts), (1, 1));
        assert!(!counts.contains_key("$root"));
        // A room with nothing recorded added nothing.
        assert_eq!(
            recent.counts("!quiet", "@b", 0, 14, &none),
            Some(HashMap::new())
        );
    }

    #[test]
    fn what_the_record_does_not_hold_is_unknown() {
        let recent = RecentPushActions::default();
        recent.record("!r", 5, actions("main", &[("@b", true, false)]));
        // A catch-up row carries no actions.
        recent.record("!r", 7, RowActions::Unknown);
        recent.record("!r", 8, actions("main", &[("@b", true, false)]));
        let none = Floors::default();
        assert_eq!(recent.counts("!r", "@b", 6, 8, &none), None);
        assert_eq!(
            main(&recent.counts("!r", "@b", 7, 8, &none).expect("known")),
            (1, 0)
        );
        // Trimming forgets the oldest (those at 5 and 8).
        for position in 100..100 + EVENTS_PER_ROOM as i64 {
            recent.record("!r", position, actions("main", &[("@b", true, false)]));
        }
        assert_eq!(recent.counts("!r", "@b", 7, 200, &none), None);
        let counts = recent.counts("!r", "@b", 8, 200, &none).expect("known");
        assert_eq!(main(&counts), (EVENTS_PER_ROOM as i64, 0));
    }

    #[test]
    fn a_row_carries_the_actions_or_says_it_does_not() {
        for row in [
            RowActions::None,
            actions("main", &[("@b", true, false), ("@c", false, true)]),
            RowActions::Unknown,
        ] {
            assert_eq!(RowActions::from_json(Some(&row.to_json())), row);
        }
        assert_eq!(RowActions::from_json(None), RowActions::Unknown);
        assert_eq!(
            RowActions::from_json(Some(&json!(["main", [["@b", "yes", false]]]))),
            RowActions::Unknown
        );
    }
}
