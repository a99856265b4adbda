//! To-device delivery bookkeeping for `chat-todevice`: each message sent
//! to a room is also sent as a to-device message to every other member's
//! devices (the shape of an encrypted room's key sharing); this counts
//! what each recipient's `/sync` showed, and how long after the send left.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::bench::latency::LatencySummary;
use crate::bench::report::ToDeviceDelivery;
use crate::bench::tracker::UserIndex;

/// The to-device messages of a run, by the operation that sent them.
#[derive(Debug, Default)]
pub struct ToDeviceTracker {
    /// When each operation's to-device send left, and to whom.
    sent: HashMap<usize, (Instant, HashSet<UserIndex>)>,
    expected: u64,
    seen: HashSet<(UserIndex, usize)>,
    duplicated: u64,
    unexpected: u64,
    latencies: Vec<Duration>,
}

impl ToDeviceTracker {
    /// Operation `op` sends to `recipients` (one device each), leaving at
    /// `start`. Called before the request leaves, so no delivery precedes it.
    pub fn begin(
        &mut self,
        op: usize,
        start: Instant,
        recipients: impl IntoIterator<Item = UserIndex>,
    ) {
        let recipients: HashSet<UserIndex> = recipients.into_iter().collect();
        self.expected += recipients.len() as u64;
        self.sent.insert(op, (start, recipients));
    }

    /// The send of `op` failed for good: nothing is owed.
    pub fn failed(&mut self, op: usize) {
        if let Some((_, recipients)) = self.sent.remove(&op) {
            self.expected -= recipients.len() as u64;
        }
    }

    /// `user`'s `/sync` showed the to-device message of `op` at `now`.
    pub fn observe(&mut self, user: UserIndex, op: usize, now: Instant) {
        let Some((start, recipients)) = self.sent.get(&op) else {
            self.unexpected += 1;
            return;
        };
        if !recipients.contains(&user) {
            self.unexpected += 1;
        } else if !self.seen.insert((user, op)) {
            self.duplicated += 1;
        } else {
            self.latencies.push(now.saturating_duration_since(*start));
        }
    }

    /// Every owed message was seen.
    pub fn settled(&self) -> bool {
        self.seen.len() as u64 >= self.expected
    }

    pub fn delivered(&self) -> u64 {
        self.seen.len() as u64
    }

    /// The report's part, taking the latencies.
    pub fn report(&mut self) -> ToDeviceDelivery {
        let delivered = self.seen.len() as u64;
        ToDeviceDelivery {
            expected: self.expected,
            delivered,
            undelivered: self.expected.saturating_sub(delivered),
            duplicated: self.duplicated,
            unexpected: self.unexpected,
            latency_ms: LatencySummary::of(std::mem::take(&mut self.latencies)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_recipient_counts_once_and_strangers_are_unexpected() {
        let mut tracker = ToDeviceTracker::default();
        let start = Instant::now();
        tracker.begin(7, start, [1, 2]);
        tracker.begin(8, start, [3]);
        tracker.failed(8);
        assert!(!tracker.settled());
        tracker.observe(1, 7, start + Duration::from_millis(5));
        tracker.observe(1, 7, start + Duration::from_millis(6));
        tracker.observe(3, 7, start);
        tracker.observe(2, 99, start);
        assert!(!tracker.settled());
        tracker.observe(2, 7, start + Duration::from_millis(9));
        assert!(tracker.settled());
        let report = tracker.report();
        assert_eq!(
            (report.expected, report.delivered, report.undelivered),
            (2, 2, 0)
        );
        assert_eq!((report.duplicated, report.unexpected), (1, 2));
        assert_eq!(report.latency_ms.count, 2);
        assert_eq!(report.latency_ms.max, 9.0);
    }
}
