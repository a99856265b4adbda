//! Delivery bookkeeping: which operation (a message sent, or a join) must reach
//! which recipient's `/sync`, what did, how long it took, and whether anything
//! arrived twice or out of order.
//!
//! Order is judged by causality, which is the only order a client can rely on
//! across senders: when one operation's request completed before another's
//! started, every recipient must see the first before the second. Operations
//! that overlapped in time may appear in either order. The check is kept per
//! recipient and room as the latest start time among the operations already
//! seen: an arriving operation that had completed before that start is out of
//! order. Times are taken so that the check can miss a violation by a few
//! microseconds but never reports one that did not happen: a start is read
//! before the request leaves, an end after its response was read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Index of a user in the run's plan.
pub type UserIndex = u32;
/// Index of a room in the run's plan.
pub type RoomIndex = u32;

/// What became of an operation's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    NotStarted,
    InFlight,
    Accepted,
    Failed,
}

#[derive(Debug)]
struct Operation {
    room: RoomIndex,
    outcome: Outcome,
    start: Option<Instant>,
    end: Option<Instant>,
    /// One flag per recipient of the room (by position in its recipient list).
    seen: Vec<bool>,
    seen_count: u64,
}

#[derive(Debug, Default)]
struct Recipients {
    users: Vec<UserIndex>,
    position: HashMap<UserIndex, usize>,
}

/// The counts a report prints; every problem count must be 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub operations_accepted: u64,
    pub operations_failed: u64,
    pub operations_in_flight: u64,
    /// Deliveries owed: each accepted operation times its room's recipients.
    pub expected: u64,
    /// Owed deliveries seen at least once.
    pub delivered: u64,
    pub undelivered: u64,
    /// A recipient saw the same operation again.
    pub duplicated: u64,
    /// A recipient saw an operation after one that started once it had completed.
    pub out_of_order: u64,
    /// Seen by someone who is not a recipient, in another room, or unknown to the run.
    pub unexpected: u64,
}

#[derive(Debug)]
pub struct Tracker {
    rooms: Vec<Recipients>,
    operations: Vec<Operation>,
    latest_start_seen: HashMap<(UserIndex, RoomIndex), Instant>,
    send_latencies: Vec<Duration>,
    delivery_latencies: Vec<Duration>,
    expected: u64,
    delivered: u64,
    accepted: u64,
    failed: u64,
    in_flight: u64,
    duplicated: u64,
    out_of_order: u64,
    unexpected: u64,
}

impl Tracker {
    /// `recipients[room]` lists who must see that room's operations;
    /// `operation_rooms[op]` is the room of each operation.
    pub fn new(recipients: Vec<Vec<UserIndex>>, operation_rooms: &[RoomIndex]) -> Tracker {
        let rooms = recipients
            .into_iter()
            .map(|users| Recipients {
                position: users.iter().enumerate().map(|(i, &u)| (u, i)).collect(),
                users,
            })
            .collect();
        Tracker {
            rooms,
            operations: operation_rooms
                .iter()
                .map(|&room| Operation {
                    room,
                    outcome: Outcome::NotStarted,
                    start: None,
                    end: None,
                    seen: Vec::new(),
                    seen_count: 0,
                })
                .collect(),
            latest_start_seen: HashMap::new(),
            send_latencies: Vec::new(),
            delivery_latencies: Vec::new(),
            expected: 0,
            delivered: 0,
            accepted: 0,
            failed: 0,
            in_flight: 0,
            duplicated: 0,
            out_of_order: 0,
            unexpected: 0,
        }
    }

    /// The operation's request is about to leave (or, paced, was due to):
    /// latencies count from here.
    pub fn begin(&mut self, op: usize, start: Instant) {
        let Some(operation) = self.operations.get_mut(op) else {
            return;
        };
        if operation.outcome == Outcome::NotStarted {
            operation.outcome = Outcome::InFlight;
            operation.start = Some(start);
            self.in_flight += 1;
        }
    }

    /// The server answered for good: accepted, or failed after retries.
    pub fn finish(&mut self, op: usize, accepted: bool, end: Instant) {
        let Some(operation) = self.operations.get_mut(op) else {
            return;
        };
        if operation.outcome != Outcome::InFlight {
            return;
        }
        self.in_flight -= 1;
        operation.end = Some(end);
        if accepted {
            operation.outcome = Outcome::Accepted;
            self.accepted += 1;
            self.expected += self.rooms[operation.room as usize].users.len() as u64;
            self.delivered += operation.seen_count;
            if let Some(start) = operation.start {
                self.send_latencies
                    .push(end.saturating_duration_since(start));
            }
        } else {
            operation.outcome = Outcome::Failed;
            self.failed += 1;
        }
    }

    /// `recipient`'s sync showed operation `op` in `room` at `at`.
    pub fn observe(&mut self, recipient: UserIndex, room: RoomIndex, op: usize, at: Instant) {
        let Some(operation) = self.operations.get_mut(op) else {
            self.unexpected += 1;
            return;
        };
        let (Some(start), true) = (operation.start, operation.room == room) else {
            self.unexpected += 1;
            return;
        };
        let recipients = &self.rooms[room as usize];
        let Some(&position) = recipients.position.get(&recipient) else {
            self.unexpected += 1;
            return;
        };
        if operation.seen.is_empty() {
            operation.seen = vec![false; recipients.users.len()];
        }
        if operation.seen[position] {
            self.duplicated += 1;
            return;
        }
        operation.seen[position] = true;
        operation.seen_count += 1;
        if operation.outcome == Outcome::Accepted {
            self.delivered += 1;
        }
        self.delivery_latencies
            .push(at.saturating_duration_since(start));

        let latest = self
            .latest_start_seen
            .entry((recipient, room))
            .or_insert(start);
        if operation.end.is_some_and(|end| end < *latest) {
            self.out_of_order += 1;
        }
        if start > *latest {
            *latest = start;
        }
    }

    /// Something tagged with this run's id that no operation accounts for.
    pub fn observe_unknown(&mut self) {
        self.unexpected += 1;
    }

    /// Up to `limit` accepted operations some recipient never saw, each with
    /// its room and how many of the room's recipients missed it: what to
    /// look up in the server's database when a run reports losses.
    pub fn undelivered_operations(&self, limit: usize) -> Vec<(usize, RoomIndex, usize)> {
        self.operations
            .iter()
            .enumerate()
            .filter(|(_, operation)| operation.outcome == Outcome::Accepted)
            .filter_map(|(op, operation)| {
                let recipients = self.rooms[operation.room as usize].users.len();
                let missed = recipients - operation.seen_count as usize;
                (missed > 0).then_some((op, operation.room, missed))
            })
            .take(limit)
            .collect()
    }

    /// Every accepted operation reached all its recipients and none is in flight.
    pub fn settled(&self) -> bool {
        self.in_flight == 0 && self.delivered == self.expected
    }

    pub fn counts(&self) -> DeliveryCounts {
        DeliveryCounts {
            operations_accepted: self.accepted,
            operations_failed: self.failed,
            operations_in_flight: self.in_flight,
            expected: self.expected,
            delivered: self.delivered,
            undelivered: self.expected - self.delivered,
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
            unexpected: self.unexpected,
        }
    }

    /// Send latencies of accepted operations and delivery latencies of every
    /// first sighting; the tracker keeps none afterwards.
    pub fn take_latencies(&mut self) -> (Vec<Duration>, Vec<Duration>) {
        (
            std::mem::take(&mut self.send_latencies),
            std::mem::take(&mut self.delivery_latencies),
        )
    }

    /// The time span from the first operation's start to the last one's end.
    pub fn operation_span(&self) -> Option<(Instant, Instant)> {
        let first = self.operations.iter().filter_map(|o| o.start).min()?;
        let last = self.operations.iter().filter_map(|o| o.end).max()?;
        Some((first, last))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// Room 0 is seen by users 0, 1 and 2; room 1 by users 2 and 3.
    fn two_rooms(operations: &[RoomIndex]) -> Tracker {
        Tracker::new(vec![vec![0, 1, 2], vec![2, 3]], operations)
    }

    #[test]
    fn every_recipient_seeing_an_operation_settles_it() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0]);
        tracker.begin(0, t0);
        tracker.observe(0, 0, 0, at(t0, 4));
        assert!(!tracker.settled(), "the send is still in flight");
        tracker.finish(0, true, at(t0, 5));
        tracker.observe(1, 0, 0, at(t0, 6));
        assert!(!tracker.settled());
        tracker.observe(2, 0, 0, at(t0, 9));
        assert!(tracker.settled());

        let counts = tracker.counts();
        assert_eq!(counts.expected, 3);
        assert_eq!(counts.delivered, 3);
        assert_eq!(counts.undelivered, 0);
        assert_eq!(counts.operations_accepted, 1);
        let (sends, deliveries) = tracker.take_latencies();
        assert_eq!(sends, vec![Duration::from_millis(5)]);
        assert_eq!(
            deliveries,
            [4, 6, 9].map(Duration::from_millis).to_vec(),
            "delivery latency counts from the send's start"
        );
    }

    #[test]
    fn a_recipient_that_never_sees_an_operation_is_undelivered() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[1, 1]);
        for op in 0..2 {
            tracker.begin(op, t0);
            tracker.finish(op, true, at(t0, 1));
        }
        tracker.observe(2, 1, 0, at(t0, 2));
        tracker.observe(3, 1, 0, at(t0, 2));
        tracker.observe(2, 1, 1, at(t0, 3));
        let counts = tracker.counts();
        assert_eq!(
            (counts.expected, counts.delivered, counts.undelivered),
            (4, 3, 1)
        );
        assert!(!tracker.settled());
        assert_eq!(tracker.undelivered_operations(10), vec![(1, 1, 1)]);
    }

    #[test]
    fn seeing_an_operation_twice_is_a_duplicate() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0]);
        tracker.begin(0, t0);
        tracker.finish(0, true, at(t0, 1));
        tracker.observe(1, 0, 0, at(t0, 2));
        tracker.observe(1, 0, 0, at(t0, 3));
        let counts = tracker.counts();
        assert_eq!(counts.duplicated, 1);
        assert_eq!(counts.delivered, 1, "a duplicate is not a second delivery");
        assert_eq!(tracker.take_latencies().1.len(), 1);
    }

    #[test]
    fn failed_operations_are_owed_to_nobody() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0, 0]);
        tracker.begin(0, t0);
        tracker.begin(1, t0);
        tracker.finish(0, false, at(t0, 30));
        tracker.finish(1, true, at(t0, 2));
        for user in 0..3 {
            tracker.observe(user, 0, 1, at(t0, 3));
        }
        assert!(tracker.settled());
        let counts = tracker.counts();
        assert_eq!(
            (
                counts.operations_failed,
                counts.expected,
                counts.undelivered
            ),
            (1, 3, 0)
        );
    }

    #[test]
    fn strangers_wrong_rooms_and_unknown_ids_are_unexpected() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0]);
        tracker.begin(0, t0);
        tracker.finish(0, true, at(t0, 1));
        tracker.observe(3, 0, 0, at(t0, 2)); // user 3 is not in room 0
        tracker.observe(2, 1, 0, at(t0, 2)); // operation 0 was in room 0
        tracker.observe(0, 0, 7, at(t0, 2)); // no operation 7
        tracker.observe_unknown();
        assert_eq!(tracker.counts().unexpected, 4);
        assert_eq!(tracker.counts().delivered, 0);
    }

    #[test]
    fn seeing_a_completed_operation_after_a_later_one_is_out_of_order() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0, 0]);
        // Operation 0 completes at 10 ms, operation 1 starts at 20 ms.
        tracker.begin(0, t0);
        tracker.finish(0, true, at(t0, 10));
        tracker.begin(1, at(t0, 20));
        tracker.finish(1, true, at(t0, 25));
        // User 0 sees them in causal order, user 1 the wrong way round.
        tracker.observe(0, 0, 0, at(t0, 11));
        tracker.observe(0, 0, 1, at(t0, 26));
        tracker.observe(1, 0, 1, at(t0, 26));
        tracker.observe(1, 0, 0, at(t0, 27));
        let counts = tracker.counts();
        assert_eq!(counts.out_of_order, 1);
        assert_eq!(counts.delivered, 4);
    }

    #[test]
    fn overlapping_operations_may_arrive_in_either_order() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0, 0]);
        tracker.begin(0, t0);
        tracker.begin(1, at(t0, 1));
        tracker.finish(1, true, at(t0, 5));
        tracker.finish(0, true, at(t0, 6));
        tracker.observe(0, 0, 1, at(t0, 7));
        tracker.observe(0, 0, 0, at(t0, 7));
        tracker.observe(1, 0, 0, at(t0, 7));
        tracker.observe(1, 0, 1, at(t0, 7));
        assert_eq!(tracker.counts().out_of_order, 0);
    }

    #[test]
    fn order_is_judged_per_room() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0, 1]);
        tracker.begin(0, t0);
        tracker.finish(0, true, at(t0, 1));
        tracker.begin(1, at(t0, 5));
        tracker.finish(1, true, at(t0, 6));
        // User 2 is in both rooms and sees the later room-1 event first.
        tracker.observe(2, 1, 1, at(t0, 7));
        tracker.observe(2, 0, 0, at(t0, 8));
        assert_eq!(tracker.counts().out_of_order, 0);
    }

    #[test]
    fn an_operation_seen_before_its_response_is_never_out_of_order() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0, 0]);
        tracker.begin(0, t0);
        tracker.begin(1, at(t0, 3));
        // Operation 0's event is in the sync before its own response arrived.
        tracker.observe(0, 0, 1, at(t0, 4));
        tracker.observe(0, 0, 0, at(t0, 4));
        tracker.finish(0, true, at(t0, 5));
        tracker.finish(1, true, at(t0, 5));
        assert_eq!(tracker.counts().out_of_order, 0);
        assert_eq!(tracker.counts().delivered, 2);
    }

    #[test]
    fn the_operation_span_runs_from_first_start_to_last_end() {
        let t0 = Instant::now();
        let mut tracker = two_rooms(&[0, 0]);
        assert_eq!(tracker.operation_span(), None);
        tracker.begin(1, at(t0, 2));
        tracker.begin(0, at(t0, 1));
        tracker.finish(0, true, at(t0, 9));
        tracker.finish(1, false, at(t0, 4));
        assert_eq!(tracker.operation_span(), Some((at(t0, 1), at(t0, 9))));
    }
}
