//! What a typing writer knows, as plain data: who types in each of its rooms
//! and until when, and the latest row it wrote for each room (what a reader
//! that missed rows asks for). No clock, no I/O: the writer passes the time
//! in, so every rule here is tested without waiting or a database.
//!
//! The rules are Synapse's (`TypingWriterHandler`): starting to type when
//! already typing only moves the expiry and writes no row; stopping when not
//! typing changes nothing. Rows carry each user's expiry, so a row is also
//! owed when a user typed past the expiry the last row announced: readers
//! would otherwise drop them then (see `streams::typing`).

use std::collections::{BTreeMap, HashMap};

use crate::streams::typing::TypingRow;

/// One typing user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Typer {
    /// When their typing ends unless renewed (ms since the epoch).
    until: i64,
    /// The expiry the room's last row announced for them.
    announced: i64,
}

/// The typing users of every room of one writer, and its latest rows.
#[derive(Debug, Default)]
pub struct TypingRooms {
    typing: HashMap<String, BTreeMap<String, Typer>>,
    /// The latest row written for each room, with its position.
    latest: HashMap<String, (i64, TypingRow)>,
}

impl TypingRooms {
    /// `user_id` types in `room_id` until `until` (at `now`). True when the
    /// room's row must be written: they were not typing before.
    pub fn start(&mut self, room_id: &str, user_id: &str, until: i64, now: i64) -> bool {
        if until <= now {
            return self.stop(room_id, user_id);
        }
        let users = self.typing.entry(room_id.to_owned()).or_default();
        match users.get_mut(user_id) {
            Some(typer) => {
                typer.until = until;
                false
            }
            None => {
                users.insert(
                    user_id.to_owned(),
                    Typer {
                        until,
                        announced: until,
                    },
                );
                true
            }
        }
    }

    /// `user_id` stopped typing in `room_id`. True when the room's row must
    /// be written: they were typing.
    pub fn stop(&mut self, room_id: &str, user_id: &str) -> bool {
        let Some(users) = self.typing.get_mut(room_id) else {
            return false;
        };
        let removed = users.remove(user_id).is_some();
        if users.is_empty() {
            self.typing.remove(room_id);
        }
        removed
    }

    /// Ends the typing of every user whose expiry is at or before `now`. The
    /// rooms whose row must be written, sorted: those where someone stopped,
    /// and those where someone types past the expiry announced.
    pub fn expire(&mut self, now: i64) -> Vec<String> {
        let mut rooms = Vec::new();
        self.typing.retain(|room_id, users| {
            let before = users.len();
            users.retain(|_, typer| typer.until > now);
            let renewed = users.values().any(|typer| typer.announced <= now);
            if users.len() != before || renewed {
                rooms.push(room_id.clone());
            }
            !users.is_empty()
        });
        rooms.sort_unstable();
        rooms
    }

    /// When [`expire`](Self::expire) next has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        self.typing
            .values()
            .flat_map(BTreeMap::values)
            .map(|typer| typer.until.min(typer.announced))
            .min()
    }

    /// The row of `room_id` as it stands, written at `position`: its
    /// expiries now count as announced, and it is kept for readers that
    /// catch up.
    pub fn write(&mut self, room_id: &str, position: i64) -> TypingRow {
        let typing = match self.typing.get_mut(room_id) {
            Some(users) => users
                .iter_mut()
                .map(|(user_id, typer)| {
                    typer.announced = typer.until;
                    (user_id.clone(), typer.until)
                })
                .collect(),
            None => Vec::new(),
        };
        let row = TypingRow {
            room_id: room_id.to_owned(),
            typing,
        };
        self.latest
            .insert(room_id.to_owned(), (position, row.clone()));
        row
    }

    /// The latest row of each room written in `after < position <= upto`,
    /// in order of position.
    pub fn rows_between(&self, after: i64, upto: i64) -> Vec<(i64, TypingRow)> {
        let mut rows: Vec<(i64, TypingRow)> = self
            .latest
            .values()
            .filter(|(position, _)| after < *position && *position <= upto)
            .cloned()
            .collect();
        rows.sort_unstable_by_key(|(position, _)| *position);
        rows
    }

    /// Rooms with someone typing, and how many type, for `Observe`.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.typing.len(),
            self.typing.values().map(BTreeMap::len).sum(),
        )
    }

    /// Rooms with a row kept for readers.
    pub fn rows_kept(&self) -> usize {
        self.latest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(row: &TypingRow) -> Vec<(&str, i64)> {
        row.typing.iter().map(|(u, t)| (u.as_str(), *t)).collect()
    }

    #[test]
    fn starting_writes_a_row_renewing_does_not_and_stopping_does() {
        let mut rooms = TypingRooms::default();
        assert!(rooms.start("!r:x", "@a:x", 30_000, 0));
        assert_eq!(users(&rooms.write("!r:x", 2)), vec![("@a:x", 30_000)]);
        // Typing again moves the expiry only.
        assert!(!rooms.start("!r:x", "@a:x", 40_000, 10_000));
        assert!(rooms.start("!r:x", "@b:x", 50_000, 10_000));
        assert_eq!(
            users(&rooms.write("!r:x", 3)),
            vec![("@a:x", 40_000), ("@b:x", 50_000)]
        );
        assert!(rooms.stop("!r:x", "@a:x"));
        // Stopping twice, or someone who never typed, changes nothing.
        assert!(!rooms.stop("!r:x", "@a:x"));
        assert!(!rooms.stop("!other:x", "@a:x"));
        assert_eq!(users(&rooms.write("!r:x", 4)), vec![("@b:x", 50_000)]);
        assert_eq!(rooms.counts(), (1, 1));
    }

    #[test]
    fn a_typing_that_ends_at_once_is_a_stop() {
        let mut rooms = TypingRooms::default();
        assert!(!rooms.start("!r:x", "@a:x", 1_000, 1_000));
        assert_eq!(rooms.counts(), (0, 0));
        assert!(rooms.start("!r:x", "@a:x", 2_000, 1_000));
        assert!(rooms.start("!r:x", "@a:x", 1_500, 1_500));
        assert_eq!(rooms.counts(), (0, 0));
    }

    #[test]
    fn typing_expires_at_its_deadline_and_renewals_are_announced_when_due() {
        let mut rooms = TypingRooms::default();
        assert_eq!(rooms.next_deadline(), None);
        rooms.start("!r:x", "@a:x", 30_000, 0);
        rooms.start("!s:x", "@b:x", 20_000, 0);
        rooms.write("!r:x", 2);
        rooms.write("!s:x", 3);
        assert_eq!(rooms.next_deadline(), Some(20_000));
        assert!(rooms.expire(19_999).is_empty());
        assert_eq!(rooms.expire(20_000), vec!["!s:x"]);
        assert!(users(&rooms.write("!s:x", 4)).is_empty());
        // @a renews before their expiry: no row until the announced one is due.
        assert!(!rooms.start("!r:x", "@a:x", 55_000, 25_000));
        assert_eq!(rooms.next_deadline(), Some(30_000));
        assert_eq!(rooms.expire(30_000), vec!["!r:x"]);
        assert_eq!(users(&rooms.write("!r:x", 5)), vec![("@a:x", 55_000)]);
        assert_eq!(rooms.next_deadline(), Some(55_000));
        // Renewing for less than announced: the row is due at the new expiry.
        rooms.start("!r:x", "@a:x", 40_000, 35_000);
        assert_eq!(rooms.next_deadline(), Some(40_000));
        assert_eq!(rooms.expire(40_000), vec!["!r:x"]);
        assert!(users(&rooms.write("!r:x", 6)).is_empty());
        assert_eq!(rooms.next_deadline(), None);
        assert_eq!(rooms.counts(), (0, 0));
    }

    #[test]
    fn readers_catching_up_get_the_latest_row_of_each_room_in_their_range() {
        let mut rooms = TypingRooms::default();
        rooms.start("!r:x", "@a:x", 30_000, 0);
        rooms.write("!r:x", 2);
        rooms.start("!s:x", "@a:x", 30_000, 0);
        rooms.write("!s:x", 4);
        rooms.stop("!r:x", "@a:x");
        rooms.write("!r:x", 6);
        let positions = |rows: Vec<(i64, TypingRow)>| {
            rows.into_iter()
                .map(|(p, row)| (p, row.room_id))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            positions(rooms.rows_between(1, 6)),
            vec![(4, "!s:x".to_owned()), (6, "!r:x".to_owned())]
        );
        assert_eq!(
            positions(rooms.rows_between(1, 5)),
            vec![(4, "!s:x".to_owned())]
        );
        assert!(rooms.rows_between(6, 9).is_empty());
        assert_eq!(rooms.rows_kept(), 2);
    }
}
