//! The users syncing on one instance, told to their presence writers as
//! Synapse's workers do (`USER_SYNC`, `synapse/handlers/presence.py`
//! `WorkerPresenceHandler`): a user's first concurrent `/sync` is a start,
//! told at once (batched with whatever else started meanwhile); their last
//! one ending is a stop, told only if they have not synced again within
//! [`UPDATE_SYNCING_USERS_MS`] (a client long-polls again at once, so the
//! gap between two requests is no stop). Every [`UPDATE_SYNCING_USERS_MS`]
//! each writer also gets the full list of its users syncing here, which
//! repairs anything lost (a restarted writer, a message dropped).
//!
//! Activity (sending an event, a receipt: Synapse's
//! `bump_presence_active_time`) is told the same way, at most once per
//! user per [`LAST_ACTIVE_GRANULARITY_MS`], so a chatting user stays online
//! instead of going idle while they sync.
//!
//! A `/sync` request costs a lock and a counter; messages follow
//! transitions, never requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use ruma::presence::PresenceState;
use ruma::OwnedUserId;
use tokio::sync::Notify;

use crate::roles::presence::state::LAST_ACTIVE_GRANULARITY_MS;
use crate::roles::presence::{UserSyncs, PRESENCE_STREAM};
use crate::roles::Mailboxes;

/// How long a user must have stopped syncing before the writer is told,
/// and how often the full list is sent (Synapse's `UPDATE_SYNCING_USERS`).
pub const UPDATE_SYNCING_USERS_MS: u64 = 10_000;

/// How long the telling task gathers news after it is woken before telling
/// the writers (a presence change reaches others this much later).
const GATHER_MS: u64 = 50;

/// The users syncing on this instance.
pub struct SyncingUsers {
    mailboxes: Arc<Mailboxes>,
    inner: Mutex<Inner>,
    /// Wakes the task that tells the writers.
    wake: Arc<Notify>,
    running: AtomicBool,
}

#[derive(Default)]
struct Inner {
    users: foldhash::HashMap<String, Syncing>,
    /// Starts not told yet.
    started: Vec<(String, PresenceState)>,
    /// Users active since the last report.
    active: Vec<String>,
    /// When each user's activity was last told: told again only after
    /// [`LAST_ACTIVE_GRANULARITY_MS`].
    active_told: foldhash::HashMap<String, i64>,
}

struct Syncing {
    /// Requests of the user running now.
    requests: usize,
    /// The presence the user's syncs ask for, as told to the writer.
    state: PresenceState,
    /// When the last request ended, while none runs.
    ended_at: Option<i64>,
}

/// What to tell the writers.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub started: Vec<(String, PresenceState)>,
    pub stopped: Vec<(String, i64)>,
    /// Everyone syncing here, when it is time for the full list.
    pub syncing: Option<Vec<(String, PresenceState)>>,
    /// Users who were active (sent an event, a receipt).
    pub active: Vec<String>,
}

impl SyncingUsers {
    pub fn new(mailboxes: Arc<Mailboxes>) -> Arc<SyncingUsers> {
        Arc::new(SyncingUsers {
            mailboxes,
            inner: Mutex::new(Inner::default()),
            wake: Arc::new(Notify::new()),
            running: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under the lock is complete before it is released.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A `/sync` of `user_id` asking for `state` begins; it ends when the
    /// guard is dropped. Starts the telling task on first use.
    pub fn syncing(self: &Arc<Self>, user_id: &str, state: PresenceState) -> SyncingGuard {
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(Arc::downgrade(self), self.wake.clone()));
        }
        if self.begin(user_id, state) {
            self.wake.notify_one();
        }
        SyncingGuard {
            users: Arc::clone(self),
            user_id: user_id.to_owned(),
        }
    }

    /// `user_id` did something (sent an event, a receipt) at `now`: told
    /// to their writer unless told less than [`LAST_ACTIVE_GRANULARITY_MS`]
    /// ago.
    pub fn active(self: &Arc<Self>, user_id: &str, now: i64) {
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(Arc::downgrade(self), self.wake.clone()));
        }
        if self.note_active(user_id, now) {
            self.wake.notify_one();
        }
    }

    /// Notes activity; true when it is to be told.
    fn note_active(&self, user_id: &str, now: i64) -> bool {
        let mut inner = self.lock();
        if inner
            .active_told
            .get(user_id)
            .is_some_and(|told| now - told < LAST_ACTIVE_GRANULARITY_MS)
        {
            return false;
        }
        inner.active_told.insert(user_id.to_owned(), now);
        inner.active.push(user_id.to_owned());
        true
    }

    /// Counts a request in; true when it is a start to tell.
    fn begin(&self, user_id: &str, state: PresenceState) -> bool {
        let mut inner = self.lock();
        let changed = match inner.users.get_mut(user_id) {
            Some(syncing) => {
                syncing.requests += 1;
                syncing.ended_at = None;
                let changed = syncing.state != state;
                syncing.state = state.clone();
                changed
            }
            None => {
                inner.users.insert(
                    user_id.to_owned(),
                    Syncing {
                        requests: 1,
                        state: state.clone(),
                        ended_at: None,
                    },
                );
                true
            }
        };
        if changed {
            inner.started.push((user_id.to_owned(), state));
        }
        changed
    }

    fn end(&self, user_id: &str, now: i64) {
        let mut inner = self.lock();
        if let Some(syncing) = inner.users.get_mut(user_id) {
            syncing.requests = syncing.requests.saturating_sub(1);
            if syncing.requests == 0 {
                syncing.ended_at = Some(now);
            }
        }
    }

    /// What to tell at `now`: the starts, the users who stopped at least
    /// [`UPDATE_SYNCING_USERS_MS`] ago (forgotten here), and the full list
    /// when `full`.
    pub fn report(&self, now: i64, full: bool) -> Report {
        let mut inner = self.lock();
        let started = std::mem::take(&mut inner.started);
        let active = std::mem::take(&mut inner.active);
        inner
            .active_told
            .retain(|_, told| now - *told < LAST_ACTIVE_GRANULARITY_MS);
        let debounce = UPDATE_SYNCING_USERS_MS as i64;
        let stopped: Vec<(String, i64)> = inner
            .users
            .iter()
            .filter_map(|(user, syncing)| {
                syncing
                    .ended_at
                    .filter(|ended| now - ended >= debounce)
                    .map(|ended| (user.clone(), ended))
            })
            .collect();
        for (user, _) in &stopped {
            inner.users.remove(user);
        }
        let syncing = full.then(|| {
            inner
                .users
                .iter()
                .map(|(user, syncing)| (user.clone(), syncing.state.clone()))
                .collect()
        });
        Report {
            started,
            stopped,
            syncing,
            active,
        }
    }

    /// Sends `report` to the writers, each its own users (and each the full
    /// list, even empty, when it is one).
    fn tell(&self, report: Report) {
        let local = self.mailboxes.placement().local_instance().to_owned();
        // A user whose shard has no owner this moment is told of with the
        // next full list, to whoever owns it then.
        let writer_of = |user: &str| {
            self.mailboxes
                .owner_instance(PRESENCE_STREAM, user)
                .unwrap_or_default()
        };
        let mut messages: HashMap<String, UserSyncs> = HashMap::new();
        let full = report.syncing.is_some();
        let blank = || UserSyncs {
            instance: local.clone(),
            started: Vec::new(),
            stopped: Vec::new(),
            syncing: full.then(Vec::new),
            active: Vec::new(),
        };
        if full {
            for writer in self.mailboxes.writers(PRESENCE_STREAM) {
                messages.entry(writer).or_insert_with(blank);
            }
        }
        for (user, state) in report.started {
            let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else {
                continue;
            };
            messages
                .entry(writer_of(&user))
                .or_insert_with(blank)
                .started
                .push((user_id, state));
        }
        for (user, ended) in report.stopped {
            let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else {
                continue;
            };
            messages
                .entry(writer_of(&user))
                .or_insert_with(blank)
                .stopped
                .push((user_id, ended));
        }
        for user in report.active {
            let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else {
                continue;
            };
            messages
                .entry(writer_of(&user))
                .or_insert_with(blank)
                .active
                .push(user_id);
        }
        for (user, state) in report.syncing.unwrap_or_default() {
            let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else {
                continue;
            };
            if let Some(syncing) = &mut messages
                .entry(writer_of(&user))
                .or_insert_with(blank)
                .syncing
            {
                syncing.push((user_id, state));
            }
        }
        for (writer, message) in messages {
            if writer.is_empty() {
                continue;
            }
            let sent = self
                .mailboxes
                .on_instance::<UserSyncs>(PRESENCE_STREAM, &writer)
                .map_err(|e| e.to_string())
                .and_then(|mailbox| mailbox.tell(message).map_err(|e| e.to_string()));
            if let Err(error) = sent {
                // The next full list repairs it.
                tracing::debug!(writer, error, "presence: telling a writer who syncs failed");
            }
        }
    }
}

/// Tells the writers what changed whenever woken, and the full list every
/// [`UPDATE_SYNCING_USERS_MS`]; ends with the instance's [`SyncingUsers`].
async fn run(users: Weak<SyncingUsers>, wake: Arc<Notify>) {
    let period = Duration::from_millis(UPDATE_SYNCING_USERS_MS);
    let mut next_full = tokio::time::Instant::now() + period;
    loop {
        let full = tokio::select! {
            () = wake.notified() => false,
            () = tokio::time::sleep_until(next_full) => true,
        };
        if full {
            next_full = tokio::time::Instant::now() + period;
        } else {
            // What else starts or acts meanwhile goes in the same report:
            // a burst of users coming online is one write, not one each.
            tokio::time::sleep(Duration::from_millis(GATHER_MS)).await;
        }
        let Some(users) = users.upgrade() else {
            return;
        };
        let report = users.report(crate::util::now_ms(), full);
        users.tell(report);
    }
}

/// One `/sync` request of a user, counted while it lives.
pub struct SyncingGuard {
    users: Arc<SyncingUsers>,
    user_id: String,
}

impl Drop for SyncingGuard {
    fn drop(&mut self) {
        self.users.end(&self.user_id, crate::util::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Arc<SyncingUsers> {
        let placement = lattice_actors::Placement::single_process("main");
        SyncingUsers::new(Arc::new(Mailboxes::new(placement, None, Vec::new())))
    }

    #[test]
    fn a_start_is_told_once_and_a_stop_only_after_the_debounce() {
        let users = users();
        let online = PresenceState::Online;
        assert!(users.begin("@a:x", online.clone()));
        // A second request while the first runs, and a new long-poll right
        // after one ends: no message.
        assert!(!users.begin("@a:x", online.clone()));
        users.end("@a:x", 1_000);
        users.end("@a:x", 1_000);
        assert!(!users.begin("@a:x", online.clone()));
        users.end("@a:x", 2_000);
        let report = users.report(2_000 + 9_999, false);
        assert_eq!(report.started, vec![("@a:x".to_owned(), online.clone())]);
        assert!(report.stopped.is_empty());
        assert!(report.syncing.is_none());
        let report = users.report(2_000 + 10_000, true);
        assert_eq!(report.stopped, vec![("@a:x".to_owned(), 2_000)]);
        assert_eq!(report.syncing, Some(Vec::new()));
        // Syncing again after the stop is a new start; asking for another
        // presence is one too.
        assert!(users.begin("@a:x", online));
        assert!(users.begin("@a:x", PresenceState::Unavailable));
        assert_eq!(
            users.report(20_000, true).syncing,
            Some(vec![("@a:x".to_owned(), PresenceState::Unavailable)])
        );
    }

    #[test]
    fn activity_is_told_once_per_granularity() {
        let users = users();
        assert!(users.note_active("@a:x", 1_000));
        assert!(!users.note_active("@a:x", 1_000 + LAST_ACTIVE_GRANULARITY_MS - 1));
        assert!(users.note_active("@b:x", 2_000));
        assert_eq!(users.report(3_000, false).active, vec!["@a:x", "@b:x"]);
        assert!(users.report(4_000, false).active.is_empty());
        assert!(users.note_active("@a:x", 1_000 + LAST_ACTIVE_GRANULARITY_MS));
        assert_eq!(
            users
                .report(1_000 + LAST_ACTIVE_GRANULARITY_MS, false)
                .active,
            vec!["@a:x"]
        );
    }
}
