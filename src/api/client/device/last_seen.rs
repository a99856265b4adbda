//! When and from where each device was last used (`last_seen_ts`,
//! `last_seen_ip` of `GET /devices`, and every address with its latest user
//! agent for `GET /admin/whois`), kept as Synapse keeps client IPs: each
//! instance notes what its authenticated requests show in memory, and
//! writes the changes to the database in one statement every few seconds,
//! off the requests' path. A device seen again from the same address with
//! the same user agent within [`GRANULARITY_MS`] is not written again, so a
//! client long-polling `/sync` costs no write per request.
//!
//! The instance answering `GET /devices` or a whois adds what it has noted
//! and not yet written; other instances' notes arrive within
//! [`FLUSH_INTERVAL`].

use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::storage::devices::{self, Connection, Device, LastSeen};

/// A device seen again from the same address sooner than this after it was
/// noted is not noted again (Synapse's `LAST_SEEN_GRANULARITY`).
pub const GRANULARITY_MS: i64 = 120_000;

/// How often the notes are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// How long an address a device used is kept after its last use
/// (Synapse's `user_ips_max_age`); the `background` instance deletes older
/// ones hourly.
pub const CONNECTION_RETENTION: Duration = Duration::from_secs(28 * 24 * 3600);

/// Past this many users, the notes already written are forgotten rather
/// than kept (forgetting costs at most one extra write per device).
const MAX_USERS: usize = 100_000;

/// The longest user agent kept; longer ones are cut (on a character
/// boundary).
const MAX_USER_AGENT_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    ip: String,
    user_agent: Option<String>,
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
    /// The notes not yet written, by user, device and address: a device
    /// that moved between addresses within one flush has each written.
    pending: foldhash::HashMap<(String, String, String), Seen>,
}

impl LastSeenTracker {
    /// Notes that `user_id`'s `device_id` made a request from `ip` with
    /// `user_agent` at `now_ms`.
    pub fn record(
        &self,
        user_id: &str,
        device_id: &str,
        ip: &str,
        user_agent: Option<&str>,
        now_ms: i64,
    ) {
        let user_agent = user_agent.map(cut_user_agent);
        let Ok(mut notes) = self.notes.lock() else {
            return;
        };
        if let Some(seen) = notes.latest.get(user_id).and_then(|d| d.get(device_id)) {
            if seen.ip == ip
                && seen.user_agent.as_deref() == user_agent
                && now_ms.saturating_sub(seen.ts) < GRANULARITY_MS
            {
                return;
            }
        }
        if notes.latest.len() >= MAX_USERS && !notes.latest.contains_key(user_id) {
            notes.latest.clear();
        }
        let seen = Seen {
            ip: ip.to_owned(),
            user_agent: user_agent.map(str::to_owned),
            ts: now_ms,
        };
        notes
            .latest
            .entry(user_id.to_owned())
            .or_default()
            .insert(device_id.to_owned(), seen.clone());
        notes.pending.insert(
            (user_id.to_owned(), device_id.to_owned(), ip.to_owned()),
            seen,
        );
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

    /// `connections` (of `user_id`'s devices, as stored) with what this
    /// instance noted since: a newer use of a stored address replaces it,
    /// a new address is added.
    pub fn merge_connections(&self, user_id: &str, connections: &mut Vec<Connection>) {
        let Ok(notes) = self.notes.lock() else {
            return;
        };
        let noted = notes
            .latest
            .get(user_id)
            .into_iter()
            .flatten()
            .map(|(device_id, seen)| (device_id.as_str(), seen))
            .chain(
                notes
                    .pending
                    .iter()
                    .filter(|((user, _, _), _)| user == user_id)
                    .map(|((_, device_id, _), seen)| (device_id.as_str(), seen)),
            );
        for (device_id, seen) in noted {
            let stored = connections
                .iter_mut()
                .find(|c| c.device_id == device_id && c.ip == seen.ip);
            match stored {
                Some(stored) if stored.last_seen_ts >= seen.ts => {}
                Some(stored) => {
                    stored.last_seen_ts = seen.ts;
                    stored.user_agent = seen.user_agent.clone();
                }
                None => connections.push(Connection {
                    device_id: device_id.to_owned(),
                    ip: seen.ip.clone(),
                    user_agent: seen.user_agent.clone(),
                    last_seen_ts: seen.ts,
                }),
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
        notes.pending.retain(|(user, device, _), _| {
            user != user_id || !device_ids.contains(&device.as_str())
        });
    }

    fn take_pending(&self) -> Vec<LastSeen> {
        let Ok(mut notes) = self.notes.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut notes.pending)
            .into_iter()
            .map(|((user_id, device_id, ip), seen)| LastSeen {
                user_id,
                device_id,
                ip,
                user_agent: seen.user_agent,
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
                .entry((seen.user_id, seen.device_id, seen.ip.clone()))
                .or_insert(Seen {
                    ip: seen.ip,
                    user_agent: seen.user_agent,
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

/// `user_agent` cut to [`MAX_USER_AGENT_BYTES`].
fn cut_user_agent(user_agent: &str) -> &str {
    if user_agent.len() <= MAX_USER_AGENT_BYTES {
        return user_agent;
    }
    let mut end = MAX_USER_AGENT_BYTES;
    while !user_agent.is_char_boundary(end) {
        end -= 1;
    }
    &user_agent[..end]
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

    const AGENT: Option<&str> = Some("Element/1.0");

    #[test]
    fn a_device_seen_again_soon_from_the_same_address_is_written_once() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", AGENT, 1_000);
        tracker.record(
            "@a:x",
            "PHONE",
            "10.0.0.2",
            AGENT,
            1_000 + GRANULARITY_MS - 1,
        );
        let pending = tracker.take_pending();
        assert_eq!(
            pending,
            vec![LastSeen {
                user_id: "@a:x".into(),
                device_id: "PHONE".into(),
                ip: "10.0.0.2".into(),
                user_agent: AGENT.map(str::to_owned),
                ts: 1_000,
            }]
        );
        // Nothing new until the granularity has passed, the address or the
        // user agent changed.
        tracker.record("@a:x", "PHONE", "10.0.0.2", AGENT, 2_000);
        assert!(tracker.take_pending().is_empty());
        tracker.record("@a:x", "PHONE", "10.0.0.2", AGENT, 1_000 + GRANULARITY_MS);
        assert_eq!(tracker.take_pending()[0].ts, 1_000 + GRANULARITY_MS);
        tracker.record(
            "@a:x",
            "PHONE",
            "10.0.0.3",
            AGENT,
            1_000 + GRANULARITY_MS + 1,
        );
        assert_eq!(tracker.take_pending()[0].ip, "10.0.0.3");
        tracker.record(
            "@a:x",
            "PHONE",
            "10.0.0.3",
            Some("Element/1.1"),
            1_000 + GRANULARITY_MS + 2,
        );
        assert_eq!(
            tracker.take_pending()[0].user_agent.as_deref(),
            Some("Element/1.1")
        );
    }

    #[test]
    fn every_address_a_device_used_between_two_writes_is_written() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", AGENT, 1_000);
        tracker.record("@a:x", "PHONE", "10.0.0.3", AGENT, 2_000);
        tracker.record("@a:x", "PHONE", "10.0.0.2", AGENT, 3_000);
        let mut pending = tracker.take_pending();
        pending.sort_by(|a, b| a.ip.cmp(&b.ip));
        let written: Vec<(&str, i64)> = pending.iter().map(|s| (s.ip.as_str(), s.ts)).collect();
        assert_eq!(written, vec![("10.0.0.2", 3_000), ("10.0.0.3", 2_000)]);
    }

    #[test]
    fn the_notes_show_in_the_devices_answered_until_written() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", AGENT, 5_000);
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
    fn the_notes_show_in_the_connections_answered_until_written() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", Some("Element/2"), 5_000);
        tracker.record("@a:x", "LAPTOP", "10.0.0.9", None, 6_000);
        tracker.record("@b:x", "PHONE", "10.0.0.7", AGENT, 6_000);
        let connection = |device: &str, ip: &str, agent: Option<&str>, ts: i64| Connection {
            device_id: device.to_owned(),
            ip: ip.to_owned(),
            user_agent: agent.map(str::to_owned),
            last_seen_ts: ts,
        };
        let mut connections = vec![
            connection("PHONE", "10.0.0.1", AGENT, 1_000),
            connection("PHONE", "10.0.0.2", AGENT, 2_000),
            connection("LAPTOP", "10.0.0.9", AGENT, 9_000),
        ];
        tracker.merge_connections("@a:x", &mut connections);
        assert_eq!(
            connections,
            vec![
                connection("PHONE", "10.0.0.1", AGENT, 1_000),
                connection("PHONE", "10.0.0.2", Some("Element/2"), 5_000),
                // The stored use is newer than the note.
                connection("LAPTOP", "10.0.0.9", AGENT, 9_000),
            ]
        );
        let mut none = Vec::new();
        tracker.merge_connections("@c:x", &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn a_failed_write_is_retried_unless_a_newer_note_came() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", AGENT, 1_000);
        let failed = tracker.take_pending();
        tracker.record("@a:x", "PHONE", "10.0.0.2", None, 2_000);
        tracker.restore(failed);
        let pending = tracker.take_pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].ts, pending[0].user_agent.as_deref()),
            (2_000, None)
        );
    }

    #[test]
    fn removed_devices_are_forgotten() {
        let tracker = LastSeenTracker::default();
        tracker.record("@a:x", "PHONE", "10.0.0.2", AGENT, 1_000);
        tracker.record("@a:x", "LAPTOP", "10.0.0.2", AGENT, 1_000);
        tracker.forget("@a:x", &["PHONE"]);
        let pending = tracker.take_pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].device_id, "LAPTOP");
        let mut devices = vec![device("PHONE", None)];
        tracker.merge_into("@a:x", &mut devices);
        assert_eq!(devices[0], device("PHONE", None));
    }

    #[test]
    fn long_user_agents_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_USER_AGENT_BYTES);
        let cut = cut_user_agent(&long);
        assert!(cut.len() <= MAX_USER_AGENT_BYTES && cut.len() >= MAX_USER_AGENT_BYTES - 1);
        assert_eq!(cut_user_agent("Element/1.0"), "Element/1.0");
    }
}
