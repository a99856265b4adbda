//! Replay protection: the request ids a process accepted, remembered until
//! their deadline.
//!
//! The HMAC proves who wrote an envelope, not that it is new: anyone who can
//! read a mailbox stream can `XADD` a copy of a signed entry, and the copy
//! verifies. Every request carries a unique `request_id` and a deadline, both
//! signed, and a request is never handled after its deadline; so remembering
//! the ids accepted until their deadlines pass is enough to refuse every
//! copy. That only holds if every deadline is near: an authenticated
//! transport refuses envelopes without one, or with one further away than
//! its replay window, which also bounds how long an id is kept.
//!
//! What is remembered is per process (per transport value), which is where
//! a destination's entries go; a process that restarts forgets, so a copy of
//! a request sent before the restart, still within its deadline, can be
//! handled once more (as a legitimate redelivery to a new owner would be).
//!
//! A legitimate redelivery is not a replay: entries are only redelivered
//! when their owner gave them back unacknowledged (its subscription ended,
//! its acknowledgement failed) or vanished. The owner forgets the ids it
//! gives back ([`SeenRequests::forget`]) before requeueing them, and a
//! vanished owner's memory went with it. The `attempts` field of an entry
//! is not signed, so it is not trusted to tell one from the other.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

/// What [`SeenRequests::accept`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// First time: remembered until its deadline.
    Fresh,
    /// Already accepted, and its deadline has not passed: a copy.
    Replayed,
    /// No deadline, or one further than the replay window: it could not be
    /// remembered for as long as it is valid.
    Unbounded,
}

/// The request ids accepted whose deadlines have not passed.
pub(super) struct SeenRequests {
    window_ms: u64,
    capacity: usize,
    /// Deadline of each remembered id.
    deadlines: HashMap<String, u64>,
    /// The same, soonest deadline first, to forget expired ids in order.
    /// Entries of ids forgotten early stay until their deadline and are
    /// skipped then.
    by_deadline: BinaryHeap<Reverse<(u64, String)>>,
    /// Ids forgotten before their deadline because `capacity` was reached.
    evicted: u64,
}

impl SeenRequests {
    /// Remember ids for at most `window`, and at most `capacity` at once.
    pub(super) fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity: capacity.max(1),
            deadlines: HashMap::new(),
            by_deadline: BinaryHeap::new(),
            evicted: 0,
        }
    }

    /// Accept `request_id`, valid until `deadline_unix_ms`, at wall-clock
    /// time `now_unix_ms`.
    pub(super) fn accept(
        &mut self,
        request_id: &str,
        deadline_unix_ms: Option<u64>,
        now_unix_ms: u64,
    ) -> Verdict {
        self.prune(now_unix_ms);
        let latest = now_unix_ms.saturating_add(self.window_ms);
        let Some(deadline) = deadline_unix_ms.filter(|deadline| *deadline <= latest) else {
            return Verdict::Unbounded;
        };
        if self.deadlines.contains_key(request_id) {
            return Verdict::Replayed;
        }
        while self.deadlines.len() >= self.capacity {
            if !self.evict_soonest() {
                break;
            }
        }
        self.deadlines.insert(request_id.to_owned(), deadline);
        self.by_deadline
            .push(Reverse((deadline, request_id.to_owned())));
        Verdict::Fresh
    }

    /// Forget `request_id`: its entry was given back unacknowledged, so the
    /// next delivery of it is a redelivery, not a replay.
    pub(super) fn forget(&mut self, request_id: &str) {
        self.deadlines.remove(request_id);
    }

    /// Ids remembered now.
    pub(super) fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// Ids forgotten early because the memory was full.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    fn prune(&mut self, now_unix_ms: u64) {
        while let Some(Reverse((deadline, _))) = self.by_deadline.peek() {
            if *deadline > now_unix_ms {
                break;
            }
            if let Some(Reverse((deadline, id))) = self.by_deadline.pop() {
                if self.deadlines.get(&id) == Some(&deadline) {
                    self.deadlines.remove(&id);
                }
            }
        }
    }

    /// Forget the remembered id whose deadline is soonest; false if none is.
    fn evict_soonest(&mut self) -> bool {
        while let Some(Reverse((deadline, id))) = self.by_deadline.pop() {
            if self.deadlines.get(&id) == Some(&deadline) {
                self.deadlines.remove(&id);
                self.evicted += 1;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_copy_is_refused_until_its_deadline() {
        let mut seen = SeenRequests::new(MINUTE, 100);
        assert_eq!(seen.accept("a", Some(2_000), 1_000), Verdict::Fresh);
        assert_eq!(seen.accept("a", Some(2_000), 1_500), Verdict::Replayed);
        assert_eq!(seen.accept("b", Some(2_000), 1_500), Verdict::Fresh);
        // Past the deadline the id is forgotten (the transport drops the
        // envelope as expired anyway).
        assert_eq!(seen.accept("c", Some(9_000), 2_000), Verdict::Fresh);
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn no_deadline_or_one_beyond_the_window_is_unbounded() {
        let mut seen = SeenRequests::new(MINUTE, 100);
        assert_eq!(seen.accept("a", None, 1_000), Verdict::Unbounded);
        assert_eq!(seen.accept("a", Some(61_001), 1_000), Verdict::Unbounded);
        assert_eq!(seen.accept("a", Some(61_000), 1_000), Verdict::Fresh);
    }

    #[test]
    fn a_forgotten_id_is_accepted_again() {
        let mut seen = SeenRequests::new(MINUTE, 100);
        assert_eq!(seen.accept("a", Some(5_000), 1_000), Verdict::Fresh);
        seen.forget("a");
        assert_eq!(seen.accept("a", Some(5_000), 1_100), Verdict::Fresh);
        assert_eq!(seen.accept("a", Some(5_000), 1_200), Verdict::Replayed);
        // The stale heap entry of the first acceptance does not forget the
        // second one early, nor twice.
        assert_eq!(seen.accept("b", Some(6_000), 4_000), Verdict::Fresh);
        assert_eq!(seen.accept("a", Some(5_000), 4_500), Verdict::Replayed);
        assert_eq!(seen.accept("b", Some(6_000), 5_500), Verdict::Replayed);
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn memory_is_bounded_by_forgetting_the_soonest_deadline() {
        let mut seen = SeenRequests::new(MINUTE, 2);
        assert_eq!(seen.accept("late", Some(9_000), 1_000), Verdict::Fresh);
        assert_eq!(seen.accept("soon", Some(3_000), 1_000), Verdict::Fresh);
        assert_eq!(seen.accept("new", Some(8_000), 1_000), Verdict::Fresh);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen.evicted(), 1);
        assert_eq!(seen.accept("late", Some(9_000), 1_000), Verdict::Replayed);
        assert_eq!(seen.accept("soon", Some(3_000), 1_000), Verdict::Fresh);
    }
}
