//! Latency summaries: p50 / p95 / p99 / max over every sample of a run.
//!
//! A run keeps all its samples (a few hundred thousand durations at most), so
//! the percentiles are exact nearest-rank values over the sorted samples
//! rather than a histogram's approximation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencySummary {
    /// Summarises `samples` (in any order); all zero when there are none.
    pub fn of(mut samples: Vec<Duration>) -> LatencySummary {
        if samples.is_empty() {
            return LatencySummary::default();
        }
        samples.sort_unstable();
        LatencySummary {
            count: samples.len() as u64,
            p50: millis(nearest_rank(&samples, 50.0)),
            p95: millis(nearest_rank(&samples, 95.0)),
            p99: millis(nearest_rank(&samples, 99.0)),
            max: millis(samples[samples.len() - 1]),
        }
    }
}

/// The smallest sample such that at least `percentile` % of the samples are
/// less than or equal to it. `sorted` must be sorted and not empty.
fn nearest_rank(sorted: &[Duration], percentile: f64) -> Duration {
    let rank = (percentile / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn no_samples_summarise_to_zero() {
        assert_eq!(LatencySummary::of(Vec::new()), LatencySummary::default());
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let summary = LatencySummary::of(ms([7]));
        assert_eq!(summary.count, 1);
        assert_eq!(
            (summary.p50, summary.p95, summary.p99, summary.max),
            (7.0, 7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn hundred_samples_give_the_nearest_rank() {
        // 1..=100 ms, shuffled: p50 is the 50th value, p99 the 99th.
        let mut samples = ms(1..=100);
        samples.reverse();
        samples.swap(3, 70);
        let summary = LatencySummary::of(samples);
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50, 50.0);
        assert_eq!(summary.p95, 95.0);
        assert_eq!(summary.p99, 99.0);
        assert_eq!(summary.max, 100.0);
    }

    #[test]
    fn a_slow_tail_shows_in_p99_and_max_only() {
        let mut samples = ms(std::iter::repeat_n(2, 990));
        samples.extend(ms(std::iter::repeat_n(500, 10)));
        let summary = LatencySummary::of(samples);
        assert_eq!(summary.p50, 2.0);
        assert_eq!(summary.p95, 2.0);
        assert_eq!(summary.p99, 2.0);
        assert_eq!(summary.max, 500.0);

        let mut samples = ms(std::iter::repeat_n(2, 980));
        samples.extend(ms(std::iter::repeat_n(500, 20)));
        assert_eq!(LatencySummary::of(samples).p99, 500.0);
    }

    #[test]
    fn sub_millisecond_samples_keep_their_fraction() {
        let summary = LatencySummary::of(vec![Duration::from_micros(250)]);
        assert!((summary.p50 - 0.25).abs() < 1e-9);
    }
}
