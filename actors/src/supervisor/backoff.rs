//! Exponential restart backoff.
//!
//! The first restart waits `initial`; each further consecutive failure waits
//! `multiplier` times longer, capped at `max`. An incarnation that ran for at
//! least `reset_after` before failing is considered to have been healthy, so
//! the sequence starts over from `initial`.

use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// Growth factor between consecutive failures (at least 1).
    pub multiplier: u32,
    /// An incarnation that lived this long resets the sequence.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    /// 10 ms doubling to 5 s, reset after 30 s of healthy running.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(5),
            multiplier: 2,
            reset_after: Duration::from_secs(30),
        }
    }
}

/// The state of one actor's backoff sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    last: Option<Duration>,
}

impl Backoff {
    /// A fresh sequence.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, last: None }
    }

    /// The delay before restarting an incarnation that failed after running
    /// for `ran_for`.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.config.reset_after {
            self.last = None;
        }
        let delay = match self.last {
            None => self.config.initial,
            Some(last) => last.saturating_mul(self.config.multiplier.max(1)),
        }
        .min(self.config.max);
        self.last = Some(delay);
        delay
    }

    /// Forget past failures.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(BackoffConfig::default());
        let quick = Duration::from_millis(1);
        let delays: Vec<u64> = (0..12)
            .map(|_| u64::try_from(b.next_delay(quick).as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(
            delays,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5000, 5000, 5000]
        );
        // A long healthy run starts the sequence over.
        assert_eq!(
            b.next_delay(Duration::from_secs(30)),
            Duration::from_millis(10)
        );
        assert_eq!(b.next_delay(quick), Duration::from_millis(20));
        b.reset();
        assert_eq!(b.next_delay(quick), Duration::from_millis(10));
    }

    #[test]
    fn degenerate_multiplier_is_constant() {
        let mut b = Backoff::new(BackoffConfig {
            multiplier: 0,
            ..BackoffConfig::default()
        });
        assert_eq!(b.next_delay(Duration::ZERO), Duration::from_millis(10));
        assert_eq!(b.next_delay(Duration::ZERO), Duration::from_millis(10));
    }
}
