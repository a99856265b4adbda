//! Time for the typing writer: the [`Clock`] its expiries are read on, and
//! the expiry timer, a task that sleeps until the writer's next expiry and
//! then tells the writer, so typing ends without any request.
//!
//! Expiries travel in rows as wall-clock milliseconds, but the writer's
//! clock is tokio's (wall-clock time when the writer started, plus tokio's
//! elapsed time), so that tests run it on paused time.

#[cfg(test)]
use std::time::Duration;

use tokio::sync::watch;
#[cfg(test)]
use tokio::time::Instant;

pub use crate::util::Clock;

/// Runs until `fire` fails or `deadlines` is closed: sleeps until the time
/// `deadlines` holds (none: until it changes), then calls `fire` and waits
/// for the writer to set its next deadline.
pub async fn run(
    clock: Clock,
    mut deadlines: watch::Receiver<Option<i64>>,
    fire: impl Fn() -> bool,
) {
    loop {
        let next = *deadlines.borrow_and_update();
        let Some(deadline) = next else {
            if deadlines.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep_until(clock.instant_at(deadline)) => {
                if !fire() {
                    return;
                }
                // The writer always sets its next deadline after expiring.
                if deadlines.changed().await.is_err() {
                    return;
                }
            }
            changed = deadlines.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_on_tokios_time() {
        let clock = Clock::starting_at(1_000_000);
        assert_eq!(clock.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now_ms(), 1_002_500);
        assert_eq!(clock.instant_at(1_002_500), Instant::now());
        assert_eq!(clock.instant_at(0), clock.instant_at(1_000_000));
    }

    /// Lets the timer task run until it waits again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_fires_at_each_deadline_the_writer_sets_and_not_before() {
        let clock = Clock::starting_at(0);
        let (deadlines, receiver) = watch::channel(None);
        let fired = Arc::new(AtomicUsize::new(0));
        let counter = fired.clone();
        let timer = tokio::spawn(run(clock, receiver, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            true
        }));
        settle().await;
        // No deadline: nothing, however long.
        tokio::time::advance(Duration::from_secs(3600)).await;
        settle().await;
        assert_eq!(fired.load(Ordering::SeqCst), 0);

        let start = clock.now_ms();
        deadlines.send_replace(Some(start + 30_000));
        settle().await;
        tokio::time::advance(Duration::from_millis(29_999)).await;
        settle().await;
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        // An earlier deadline replaces it.
        deadlines.send_replace(Some(start + 29_999 + 100));
        settle().await;
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        // It waits for the writer's next deadline before firing again.
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        deadlines.send_replace(None);
        settle().await;
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!(fired.load(Ordering::SeqCst), 1);

        drop(deadlines);
        timer.await.expect("the timer ends with its writer");
    }
}
