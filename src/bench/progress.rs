//! The progress line on stderr: the phase, a bar, counts, deliveries and
//! errors. Redrawn in place four times a second on a terminal; when stderr is
//! a file or a pipe, one plain line every five seconds instead.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bench::tracker::Tracker;

const BAR_WIDTH: usize = 30;

pub struct Progress {
    title: String,
    phase: Mutex<&'static str>,
    done: AtomicU64,
    total: AtomicU64,
    pub errors: AtomicU64,
    enabled: bool,
    stopped: AtomicBool,
}

impl Progress {
    pub fn new(title: String, enabled: bool) -> Progress {
        Progress {
            title,
            phase: Mutex::new("start"),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            enabled,
            stopped: AtomicBool::new(false),
        }
    }

    /// Starts a phase of `total` steps.
    pub fn phase(&self, phase: &'static str, total: usize) {
        if let Ok(mut current) = self.phase.lock() {
            *current = phase;
        }
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total as u64, Ordering::Relaxed);
    }

    pub fn step(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Draws until [`Progress::finish`]; runs on the coordinating runtime.
    pub fn spawn_printer(
        self: &Arc<Self>,
        tracker: Arc<Mutex<Tracker>>,
    ) -> tokio::task::JoinHandle<()> {
        let progress = self.clone();
        tokio::spawn(async move {
            if !progress.enabled {
                return;
            }
            let terminal = std::io::stderr().is_terminal();
            let every = if terminal {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(5)
            };
            while !progress.stopped.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                let line = progress.line(&tracker);
                let mut stderr = std::io::stderr().lock();
                let _ = if terminal {
                    write!(stderr, "\r\x1b[K{line}")
                } else {
                    writeln!(stderr, "{line}")
                };
                let _ = stderr.flush();
            }
            if terminal {
                let _ = write!(std::io::stderr(), "\r\x1b[K");
            }
        })
    }

    pub fn finish(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn line(&self, tracker: &Mutex<Tracker>) -> String {
        let phase = self.phase.lock().map(|p| *p).unwrap_or("?");
        let mut done = self.done.load(Ordering::Relaxed);
        let mut total = self.total.load(Ordering::Relaxed);
        let mut deliveries = String::new();
        if let Ok(tracker) = tracker.lock() {
            let counts = tracker.counts();
            if counts.expected > 0 {
                deliveries = format!("  delivered {}/{}", counts.delivered, counts.expected);
            }
            // A phase without steps of its own (waiting for deliveries) shows those.
            if total == 0 {
                (done, total) = (counts.delivered, counts.expected);
            }
        }
        let mut line = format!(
            "{} {phase:<12} {} {done}/{total}{deliveries}",
            self.title,
            bar(done, total)
        );
        let errors = self.errors.load(Ordering::Relaxed);
        if errors > 0 {
            line.push_str(&format!("  errors {errors}"));
        }
        line
    }
}

fn bar(done: u64, total: u64) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as f64 / total as f64) * BAR_WIDTH as f64).round() as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(bar(0, 10), format!("[{}]", "-".repeat(30)));
        assert_eq!(
            bar(5, 10),
            format!("[{}{}]", "#".repeat(15), "-".repeat(15))
        );
        assert_eq!(bar(12, 10), format!("[{}]", "#".repeat(30)));
        assert_eq!(bar(3, 0), format!("[{}]", "-".repeat(30)));
    }
}
