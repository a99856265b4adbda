//! When and from where each device was last used (`last_seen_ts`,
//! `last_seen_ip` of `GET /devices`), kept as Synapse keeps client IPs:
//! each instance notes what its authenticated requests show in memory,
//! and writes the changes to the database in one statement every few
//! seconds, off the requests' path. A device seen again from the same
//! address within [`GRANULARITY_MS`] is not written again, so a client
//! long-polling `/sync` costs no write per request.
//!
//! The instance answering `GET /devices` adds what it has noted and not
//! yet written; other instances' notes arrive within [`FLUSH_INTERVAL`].

use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::storage::devices::{self, Device, LastSeen};

/// A device seen again from the same address sooner than this after it was
/// noted is not noted again (Synapse's `LAST_SEEN_GRANULARITY`).
pub const GRANULARITY_MS: i64 = 120_000;

/// How often the notes are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Past this many users, the notes already written are forgotten rather
/// than kept (forgetting costs at most one extra write per device).
const MAX_USERS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    ip: String,
    ts: i64,
}

/// One instance's notes.
#[derive(Default)]
pub struct LastSeenTracker {
    notes: Mutex<Notes>,
}

#[derive(Default)]
struct Notes {
    /// The latest note of each device, by user then device (looked up by
    /// `&str` without allocating).
    latest: foldhash::HashMap<String, foldhash::HashMap<String, Seen>>,
    /// The notes not yet written.
    pending: foldhash::HashMap<(String, String), Seen>,
}

impl LastSeenTracker {
    /// Notes that `user_id`'s `device_id` made a request from `ip` at `now_ms`.
    pub fn record(&self, user_id: &str, device_id: &str, ip: &str, now_ms: i64) {
        let Ok(mut notes) = self.notes.lock() else {
            return;
        };
        if let Some(seen) = notes.latest.get(user_id).and_then(|d| d.get(device_id)) {
            if seen.ip == ip && now_ms.saturating_sub(seen.ts) < GRANULARITY_MS {
                return;
            }
        }
        if notes.latest.len() >= MAX_USERS && !notes.latest.contains_key(user_id) {
            notes.latest.clear();
        }
        let seen = Seen {
            ip: ip.to_owned(),
            ts: now_ms,
        };
        notes
            .latest
            .entry(user_id.to_owned())
            .or_default()
            .insert(device_id.to_owned(), seen.clone());
        notes
            .pending
            .insert((user_id.to_owned(), device_id.to_owned()), seen);
    }

    /// `devices` with what this instance noted since they were stored.
    pub fn merge_into(&self, user_id: &str, devices: &mut [Device]) {
        let Ok(notes) = self.notes.lock() else {
            return;
        };
        let Some(noted) = notes.latest.get(user_id) else {
            return;
        };
        for device in devices {
            if let Some(seen) = noted.get(&device.device_id) {
                if device.last_seen_ts.is_none_or(|ts| ts <= seen.ts) {
                    device.last_seen_ts = Some(seen.ts);
                    device.last_seen_ip = Some(seen.ip.clone());
                }
            }
        }
    }

    /// Forgets the notes of removed devices.
    pub fn forget(&self, user_id: &str, device_ids: &[&str]) {
        let Ok(mut notes) = self.notes.lock() else {
            return;
        };
        if let Some(noted) = notes.latest.get_mut(user_id) {
            for device_id in device_ids {
                noted.remove(*device_id);
            }
        }
        for device_id in device_ids {
            notes
                .pending
                .remove(&(user_id.to_owned(), (*device_id).to_owned()));
        }
    }

    fn take_pending(&self) -> Vec<LastSeen> {
        let Ok(mut notes) = self.notes.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut notes.pending)
            .into_iter()
            .map(|((user_id, device_id), seen)| LastSeen {
                user_id,
                device_id,
                ip: seen.ip,
                ts: seen.ts,
            })
            .collect()
    }

    /// Puts back notes whose write failed, unless newer ones came meanwhile.
    fn restore(&self, failed: Vec<LastSeen>) {
        let Ok(mut notes) = self.notes.lock() else {
            return;
        };
        for seen in failed {
            notes
                .pending
                .entry((seen.user_id, seen.device_id))
                .or_insert(Seen {
                    ip: seen.ip,
                    ts: seen.ts,
                });
        }
    }

    /// Writes the notes not yet written.
    pub async fn flush(&self, pool: &Pool) {
        let pending = self.take_pending();
        if pending.is_empty() {
            return;
        }
        if let Err(error) = devices::record_last_seen(pool, &pending).await {
            tracing::warn!(error = %error, devices = pending.len(), "recording devices' last use failed");
            self.restore(pending);
        }
    }
}

/// Writes the instance's notes every [`FLUSH_INTERVAL`], for as long as it runs.
pub async fn flush_periodically(tracker: std::sync::Arc<LastSeenTracker>, pool: Pool) {
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        tracker.flush(&pool).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, ts: Option<i64>) -> Device {
        Device {
            device_id: id.to_owned(),
            display_name: None,
            last_seen_ip: ts.map(|_| "10.0.0.1".to_owned()),
            last_seen_ts: ts,
        }
    }

    #[test]
    fn a_device_seen_again_soon_from_the_same_address_is_written_once() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", 1_000);
        tracker.record("@a:x", "PHONE", "10.0.0.2", 1_000 + GRANULARITY_MS - 1);
        let pending = tracker.take_pending();
        assert_eq!(
            pending,
            vec![LastSeen {
                user_id: "@a:x".into(),
                device_id: "PHONE".into(),
                ip: "10.0.0.2".into(),
                ts: 1_000,
            }]
        );
        // Nothing new until the granularity has passed or the address changed.
        tracker.record("@a:x", "PHONE", "10.0.0.2", 2_000);
        assert!(tracker.take_pending().is_empty());
        tracker.record("@a:x", "PHONE", "10.0.0.2", 1_000 + GRANULARITY_MS);
        assert_eq!(tracker.take_pending()[0].ts, 1_000 + GRANULARITY_MS);
        tracker.record("@a:x", "PHONE", "10.0.0.3", 1_000 + GRANULARITY_MS + 1);
        assert_eq!(tracker.take_pending()[0].ip, "10.0.0.3");
    }

    #[test]
    fn the_notes_show_in_the_devices_answered_until_written() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", 5_000);
        let mut devices = vec![
            device("LAPTOP", Some(4_000)),
            device("PHONE", Some(4_000)),
            device("TABLET", None),
        ];
        tracker.merge_into("@a:x", &mut devices);
        assert_eq!(devices[0], device("LAPTOP", Some(4_000)));
        assert_eq!(devices[1].last_seen_ts, Some(5_000));
        assert_eq!(devices[1].last_seen_ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(devices[2], device("TABLET", None));
        // Someone else's devices are not touched.
        let mut others = vec![device("PHONE", Some(4_000))];
        tracker.merge_into("@b:x", &mut others);
        assert_eq!(others[0], device("PHONE", Some(4_000)));
    }

    #[test]
    fn a_failed_write_is_retried_unless_a_newer_note_came() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", 1_000);
        let failed = tracker.take_pending();
        tracker.record("@a:x", "PHONE", "10.0.0.3", 2_000);
        tracker.restore(failed);
        let pending = tracker.take_pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].ip, "10.0.0.3");
    }

    #[test]
    fn removed_devices_are_forgotten() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", 1_000);
        tracker.forget("@a:x", &["PHONE"]);
        assert!(tracker.take_pending().is_empty());
        let mut devices = vec![device("PHONE", None)];
        tracker.merge_into("@a:x", &mut devices);
        assert_eq!(devices[0], device("PHONE", None));
    }
}
