//! How long remote mailbox calls take, as the caller sees it: from the moment
//! [`Mailbox::call`](crate::Mailbox::call) hands the request to its transport
//! to the moment the reply is decoded (or the call failed). That is the time
//! a request handler on this instance spends waiting for an actor on another
//! one: queueing in Redis, the far actor's inbox and handler, the reply's way
//! back.
//!
//! Each transport value (one process) keeps one [`CallLatency`]
//! ([`Transport::call_latency`](crate::Transport::call_latency)), so every
//! remote mailbox made from it is measured without its creator doing
//! anything. Series are keyed by wire name and destination: both come from
//! code and configuration, never from requests, so their number is bounded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::lock;
use crate::mailbox::MailboxError;

/// Upper bounds (seconds) of the call latency buckets: from a round trip
/// through a local Redis to a call that waited out a 30 s write deadline.
pub const CALL_LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram with fixed bucket bounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative): `counts[i]` counts the
    /// values in `(bounds[i - 1], bounds[i]]`. Values above the last bound
    /// are only in `count`.
    pub counts: Vec<u64>,
    /// Every observation.
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum_seconds: 0.0,
        }
    }

    pub fn observe(&mut self, seconds: f64) {
        if let Some(bucket) = self.bounds.iter().position(|bound| seconds <= *bound) {
            self.counts[bucket] += 1;
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }

    /// `(upper bound, observations at or below it)`, as Prometheus'
    /// `_bucket{le=...}` series want them (without `+Inf`, which is `count`).
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .zip(&self.counts)
            .scan(0, |total, (bound, count)| {
                *total += count;
                Some((*bound, *total))
            })
    }
}

/// Which calls a series counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CallKey {
    /// The message's [`RemoteMessage::WIRE_NAME`](crate::RemoteMessage::WIRE_NAME).
    pub wire_name: &'static str,
    /// The transport destination called (`"events@events1"`).
    pub destination: String,
}

/// The calls of one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallStats {
    /// Every call, answered or failed.
    pub latency: Histogram,
    /// Failed calls by [`MailboxError::kind`].
    pub failures: BTreeMap<&'static str, u64>,
}

/// The remote calls one process made, by wire name and destination.
#[derive(Debug, Default)]
pub struct CallLatency {
    calls: Mutex<BTreeMap<CallKey, CallStats>>,
}

impl CallLatency {
    /// Counts one finished call.
    pub fn record(
        &self,
        wire_name: &'static str,
        destination: &str,
        outcome: Result<(), &MailboxError>,
        elapsed: Duration,
    ) {
        let mut calls = lock(&self.calls);
        let key = CallKey {
            wire_name,
            destination: destination.to_owned(),
        };
        let stats = calls.entry(key).or_insert_with(|| CallStats {
            latency: Histogram::new(&CALL_LATENCY_BUCKETS),
            failures: BTreeMap::new(),
        });
        stats.latency.observe(elapsed.as_secs_f64());
        if let Err(error) = outcome {
            *stats.failures.entry(error.kind()).or_default() += 1;
        }
    }

    /// Every series so far, ordered by wire name then destination.
    pub fn snapshot(&self) -> Vec<(CallKey, CallStats)> {
        lock(&self.calls)
            .iter()
            .map(|(key, stats)| (key.clone(), stats.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_value_once_and_reports_cumulative_buckets() {
        let mut histogram = Histogram::new(&[0.1, 1.0]);
        for seconds in [0.05, 0.1, 0.5, 7.0] {
            histogram.observe(seconds);
        }
        assert_eq!(histogram.counts, vec![2, 1]);
        assert_eq!(histogram.count, 4);
        assert!((histogram.sum_seconds - 7.65).abs() < 1e-9);
        assert_eq!(
            histogram.cumulative().collect::<Vec<_>>(),
            vec![(0.1, 2), (1.0, 3)]
        );
    }

    #[test]
    fn calls_are_kept_apart_by_wire_name_and_destination_and_failures_by_kind() {
        let calls = CallLatency::default();
        let millis = Duration::from_millis;
        calls.record("events.send.v1", "events@e1", Ok(()), millis(3));
        calls.record("events.send.v1", "events@e1", Ok(()), millis(40));
        calls.record(
            "events.send.v1",
            "events@e1",
            Err(&MailboxError::Timeout),
            millis(30_000),
        );
        calls.record("events.send.v1", "events@e2", Ok(()), millis(1));
        calls.record(
            "events.create_room.v1",
            "events@e1",
            Err(&MailboxError::Unreachable),
            millis(2),
        );

        let snapshot = calls.snapshot();
        let keys: Vec<(&str, &str)> = snapshot
            .iter()
            .map(|(key, _)| (key.wire_name, key.destination.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("events.create_room.v1", "events@e1"),
                ("events.send.v1", "events@e1"),
                ("events.send.v1", "events@e2"),
            ]
        );
        let send_e1 = &snapshot[1].1;
        assert_eq!(send_e1.latency.count, 3);
        assert_eq!(send_e1.failures, BTreeMap::from([("timeout", 1)]));
        // 3 ms, then 40 ms: the 30 s call is in the last bucket.
        let cumulative: Vec<(f64, u64)> = send_e1.latency.cumulative().collect();
        assert!(cumulative.contains(&(0.005, 1)), "{cumulative:?}");
        assert!(cumulative.contains(&(0.05, 2)), "{cumulative:?}");
        assert_eq!(cumulative.last(), Some(&(30.0, 3)));
        assert_eq!(snapshot[0].1.failures, BTreeMap::from([("unreachable", 1)]));
    }
}
