//! The presence state machine of one writer, as plain data with the time
//! passed in: Synapse's `handle_update`, `handle_timeout` and
//! `should_notify` (`synapse/handlers/presence.py`), per user rather than
//! per device.
//!
//! - A user told to be online (`PUT`, or a `/sync` starting while offline)
//!   is online and active now; `currently_active` holds for
//!   [`LAST_ACTIVE_GRANULARITY_MS`] after their last activity.
//! - Online and inactive for [`IDLE_TIMER_MS`]: `unavailable`.
//! - Not syncing anywhere for [`SYNC_ONLINE_TIMEOUT_MS`] after their last
//!   sync (or activity): `offline`.
//! - Only a change worth telling others about ([`should_notify`]) becomes
//!   a stream row; the rest (a sync's time moving) stays here.

use std::collections::{BTreeSet, HashMap, HashSet};

use ruma::presence::PresenceState;

use crate::streams::presence::PresenceStatus;

/// Online and inactive this long: unavailable (Synapse's `IDLE_TIMER`).
pub const IDLE_TIMER_MS: i64 = 5 * 60 * 1000;
/// Not syncing this long after the last sync: offline (`SYNC_ONLINE_TIMEOUT`).
pub const SYNC_ONLINE_TIMEOUT_MS: i64 = 30 * 1000;
/// How long activity counts as `currently_active`, and the least move of
/// `last_active_ts` worth a row of its own (`LAST_ACTIVE_GRANULARITY`).
pub const LAST_ACTIVE_GRANULARITY_MS: i64 = 60 * 1000;
/// An instance not heard from this long has stopped: its syncing users
/// are no longer syncing (`EXTERNAL_PROCESS_EXPIRY`).
pub const EXTERNAL_PROCESS_EXPIRY_MS: i64 = 5 * 60 * 1000;

/// A change to write: the user and their new presence.
pub type Change = (String, PresenceStatus);

/// The presence of one writer's users, who syncs where, and when each
/// user's next timer is due.
#[derive(Default)]
pub struct Users {
    states: HashMap<String, PresenceStatus>,
    /// The users syncing on each instance.
    syncing: HashMap<String, HashSet<String>>,
    /// When each instance was last heard from.
    heard: HashMap<String, i64>,
    /// (when, user): a timer of the user may be due.
    deadlines: BTreeSet<(i64, String)>,
}

impl Users {
    /// `user_id`'s presence (offline if never seen).
    pub fn status(&self, user_id: &str) -> PresenceStatus {
        self.states.get(user_id).cloned().unwrap_or_default()
    }

    /// How many users have a presence here, and how many sync.
    pub fn counts(&self) -> (usize, usize) {
        let syncing: HashSet<&String> = self.syncing.values().flatten().collect();
        (self.states.len(), syncing.len())
    }

    /// Takes a stored presence at start-up. A user stored as syncing may
    /// still be: their instance has [`SYNC_ONLINE_TIMEOUT_MS`] from now to
    /// say so before they go offline.
    pub fn load(&mut self, user_id: &str, mut status: PresenceStatus, now: i64) {
        if status.state != PresenceState::Offline {
            status.last_user_sync_ts = status.last_user_sync_ts.max(now);
        }
        self.schedule(user_id, &status);
        self.states.insert(user_id.to_owned(), status);
    }

    /// Forgets the users `gone` says are no longer this writer's (their
    /// shard moved to another): their presence, whether they sync and
    /// their timers are the new owner's.
    pub fn forget(&mut self, gone: impl Fn(&str) -> bool) {
        self.states.retain(|user, _| !gone(user));
        for users in self.syncing.values_mut() {
            users.retain(|user| !gone(user));
        }
        self.deadlines.retain(|(_, user)| !gone(user));
    }

    /// The user sets their presence (`PUT /presence/{userId}/status`):
    /// the state and status message as given; online counts as activity.
    pub fn set(
        &mut self,
        user_id: &str,
        state: PresenceState,
        status_msg: Option<String>,
        now: i64,
    ) -> Option<Change> {
        let mut status = self.status(user_id);
        if state == PresenceState::Online {
            status.last_active_ts = now;
        }
        status.state = state;
        status.status_msg = status_msg;
        self.update(user_id, status, now)
    }

    /// The user did something (sent an event, a receipt): active now, and
    /// back online if they were idle (Synapse's `bump_presence_active_time`).
    /// An offline user stays offline: activity alone does not sign them in.
    pub fn active(&mut self, user_id: &str, now: i64) -> Option<Change> {
        let mut status = self.status(user_id);
        if status.state == PresenceState::Offline {
            return None;
        }
        status.last_active_ts = now;
        if status.state == PresenceState::Unavailable {
            status.state = PresenceState::Online;
        }
        self.update(user_id, status, now)
    }

    /// What `instance` says of its syncing users: those that `started`
    /// (with the presence their `/sync` asked for), those that `stopped`
    /// (and when), and, from time to time, every user syncing there.
    pub fn syncs(
        &mut self,
        instance: &str,
        started: &[(String, PresenceState)],
        stopped: &[(String, i64)],
        syncing: Option<&[(String, PresenceState)]>,
        now: i64,
    ) -> Vec<Change> {
        self.heard.insert(instance.to_owned(), now);
        let mut changes = Vec::new();
        for (user_id, last_sync) in stopped {
            changes.extend(self.stop(instance, user_id, *last_sync, now));
        }
        let mut started: Vec<(String, PresenceState)> = started.to_vec();
        if let Some(syncing) = syncing {
            let listed: HashSet<&String> = syncing.iter().map(|(user, _)| user).collect();
            let gone: Vec<String> = self
                .syncing
                .get(instance)
                .map(|users| {
                    users
                        .iter()
                        .filter(|user| !listed.contains(user))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for user_id in gone {
                changes.extend(self.stop(instance, &user_id, now, now));
            }
            let known = self.syncing.get(instance);
            started.extend(
                syncing
                    .iter()
                    .filter(|(user, _)| !known.is_some_and(|users| users.contains(user)))
                    .cloned(),
            );
        }
        for (user_id, state) in started {
            changes.extend(self.start(instance, &user_id, state, now));
        }
        changes
    }

    fn start(
        &mut self,
        instance: &str,
        user_id: &str,
        state: PresenceState,
        now: i64,
    ) -> Option<Change> {
        self.syncing
            .entry(instance.to_owned())
            .or_default()
            .insert(user_id.to_owned());
        let mut status = self.status(user_id);
        status.last_user_sync_ts = now;
        match state {
            // A sync brings an offline user online; it is not activity
            // otherwise, so a user who only syncs goes idle.
            PresenceState::Online if status.state == PresenceState::Offline => {
                status.state = PresenceState::Online;
                status.last_active_ts = now;
            }
            PresenceState::Unavailable => status.state = PresenceState::Unavailable,
            _ => {}
        }
        self.update(user_id, status, now)
    }

    fn stop(&mut self, instance: &str, user_id: &str, last_sync: i64, now: i64) -> Option<Change> {
        if let Some(users) = self.syncing.get_mut(instance) {
            users.remove(user_id);
        }
        let mut status = self.status(user_id);
        status.last_user_sync_ts = status.last_user_sync_ts.max(last_sync);
        self.update(user_id, status, now)
    }

    fn is_syncing(&self, user_id: &str) -> bool {
        self.syncing.values().any(|users| users.contains(user_id))
    }

    /// The changes the timers due at `now` make: idle users become
    /// unavailable, users who stopped syncing offline, `currently_active`
    /// lapses; the syncing users of instances not heard from lately stop.
    pub fn expire(&mut self, now: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        let silent: Vec<(String, i64)> = self
            .heard
            .iter()
            .filter(|(_, heard)| now - **heard > EXTERNAL_PROCESS_EXPIRY_MS)
            .map(|(instance, heard)| (instance.clone(), *heard))
            .collect();
        for (instance, heard) in silent {
            self.heard.remove(&instance);
            for user_id in self.syncing.remove(&instance).unwrap_or_default() {
                changes.extend(self.stop(&instance, &user_id, heard, now));
            }
        }
        let due: Vec<(i64, String)> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect();
        for (at, user_id) in due {
            self.deadlines.remove(&(at, user_id.clone()));
            let Some(status) = self.timeout(&user_id, now) else {
                continue;
            };
            changes.extend(self.update(&user_id, status, now));
        }
        changes
    }

    /// Synapse's `handle_timeout` for one of our users: the presence its
    /// timers make of it at `now`.
    fn timeout(&self, user_id: &str, now: i64) -> Option<PresenceStatus> {
        let mut status = self.status(user_id);
        if status.state == PresenceState::Offline {
            return None;
        }
        if status.state == PresenceState::Online && now - status.last_active_ts > IDLE_TIMER_MS {
            status.state = PresenceState::Unavailable;
        }
        let sync_or_active = status.last_user_sync_ts.max(status.last_active_ts);
        if !self.is_syncing(user_id) && now - sync_or_active > SYNC_ONLINE_TIMEOUT_MS {
            status.state = PresenceState::Offline;
        }
        Some(status)
    }

    /// Synapse's `handle_update`: sets `currently_active`, arms the
    /// user's timers and keeps `status`; the change when it is worth a row.
    fn update(&mut self, user_id: &str, mut status: PresenceStatus, now: i64) -> Option<Change> {
        let previous = self.status(user_id);
        status.currently_active = status.state == PresenceState::Online
            && now - status.last_active_ts < LAST_ACTIVE_GRANULARITY_MS;
        self.schedule(user_id, &status);
        let notify = should_notify(&previous, &status);
        self.states.insert(user_id.to_owned(), status.clone());
        notify.then(|| (user_id.to_owned(), status))
    }

    /// Arms `status`'s timers (a timer that finds nothing to do is harmless).
    fn schedule(&mut self, user_id: &str, status: &PresenceStatus) {
        let mut at = Vec::new();
        if status.state == PresenceState::Online {
            at.push(status.last_active_ts + IDLE_TIMER_MS + 1);
            if status.currently_active {
                at.push(status.last_active_ts + LAST_ACTIVE_GRANULARITY_MS);
            }
        }
        if status.state != PresenceState::Offline {
            at.push(
                status.last_user_sync_ts.max(status.last_active_ts) + SYNC_ONLINE_TIMEOUT_MS + 1,
            );
        }
        for at in at {
            self.deadlines.insert((at, user_id.to_owned()));
        }
    }

    /// When the next timer is due, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(at, _)| *at)
    }
}

/// Synapse's `should_notify`: whether the change from `old` to `new` is
/// worth telling others (a stream row).
pub fn should_notify(old: &PresenceStatus, new: &PresenceStatus) -> bool {
    if old == new {
        return false;
    }
    if old.status_msg != new.status_msg || old.state != new.state {
        return true;
    }
    let bumped = new.last_active_ts - old.last_active_ts > LAST_ACTIVE_GRANULARITY_MS;
    if old.state == PresenceState::Online {
        new.currently_active != old.currently_active || (bumped && !new.currently_active)
    } else {
        bumped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_000_000_000;

    fn states(changes: &[Change]) -> Vec<(&str, &str)> {
        changes
            .iter()
            .map(|(user, status)| (user.as_str(), status.state.as_str()))
            .collect()
    }

    #[test]
    fn set_online_is_active_then_idle_then_offline_without_a_sync() {
        let mut users = Users::default();
        let change = users
            .set("@a:x", PresenceState::Online, Some("hi".into()), START)
            .expect("a change");
        assert_eq!(change.1.state, PresenceState::Online);
        assert!(change.1.currently_active);
        assert_eq!(change.1.status_msg.as_deref(), Some("hi"));
        // Setting the same again is no new row.
        assert!(users
            .set("@a:x", PresenceState::Online, Some("hi".into()), START + 10)
            .is_none());
        // Not syncing: offline once the sync timeout passes.
        assert!(users.expire(START + SYNC_ONLINE_TIMEOUT_MS).is_empty());
        let changes = users.expire(START + 10 + SYNC_ONLINE_TIMEOUT_MS + 1);
        assert_eq!(states(&changes), vec![("@a:x", "offline")]);
        assert!(!changes[0].1.currently_active);
        // Offline has no timers.
        assert!(users.expire(START + IDLE_TIMER_MS * 10).is_empty());
    }

    #[test]
    fn a_syncing_user_is_online_goes_idle_and_offline_after_the_sync_stops() {
        let mut users = Users::default();
        let changes = users.syncs(
            "sync1",
            &[("@a:x".into(), PresenceState::Online)],
            &[],
            None,
            START,
        );
        assert_eq!(states(&changes), vec![("@a:x", "online")]);
        assert!(changes[0].1.currently_active);
        // Still syncing: not offline; currently_active lapses after a minute.
        let changes = users.expire(START + LAST_ACTIVE_GRANULARITY_MS);
        assert_eq!(states(&changes), vec![("@a:x", "online")]);
        assert!(!changes[0].1.currently_active);
        // Idle for the idle timer: unavailable. (sync1 is heard from
        // meanwhile: its full list every 10 s.)
        users.syncs("sync1", &[], &[], None, START + IDLE_TIMER_MS - 10_000);
        assert!(users.expire(START + IDLE_TIMER_MS).is_empty());
        let changes = users.expire(START + IDLE_TIMER_MS + 1);
        assert_eq!(states(&changes), vec![("@a:x", "unavailable")]);
        // The sync stops; offline once the timeout passes after it.
        let stop = START + IDLE_TIMER_MS + 5_000;
        assert!(users
            .syncs("sync1", &[], &[("@a:x".into(), stop)], None, stop + 10_000)
            .is_empty());
        assert!(users.expire(stop + SYNC_ONLINE_TIMEOUT_MS).is_empty());
        let changes = users.expire(stop + SYNC_ONLINE_TIMEOUT_MS + 1);
        assert_eq!(states(&changes), vec![("@a:x", "offline")]);
    }

    #[test]
    fn activity_keeps_a_syncing_user_online_and_wakes_an_idle_one() {
        let mut users = Users::default();
        let a = || vec![("@a:x".to_owned(), PresenceState::Online)];
        users.syncs("sync1", &a(), &[], None, START);
        // Chatting every few minutes: never idle.
        let mut now = START;
        for _ in 0..4 {
            now += IDLE_TIMER_MS - 1_000;
            users.syncs("sync1", &[], &[], Some(&a()), now);
            users.expire(now);
            assert_eq!(users.status("@a:x").state, PresenceState::Online);
            users.active("@a:x", now);
        }
        // Quiet for the idle time: unavailable; activity: online again.
        now += IDLE_TIMER_MS + 1;
        users.syncs("sync1", &[], &[], Some(&a()), now);
        let changes = users.expire(now);
        assert_eq!(states(&changes), vec![("@a:x", "unavailable")]);
        let change = users.active("@a:x", now + 1).expect("a change");
        assert_eq!(change.1.state, PresenceState::Online);
        assert!(change.1.currently_active);
        // Activity does not sign in someone offline.
        assert!(users.active("@b:x", now).is_none());
        assert_eq!(users.status("@b:x").state, PresenceState::Offline);
    }

    #[test]
    fn a_user_syncing_on_two_instances_stays_while_one_syncs() {
        let mut users = Users::default();
        let a = || vec![("@a:x".to_owned(), PresenceState::Online)];
        users.syncs("sync1", &a(), &[], None, START);
        assert!(users.syncs("sync2", &a(), &[], None, START).is_empty());
        users.syncs("sync1", &[], &[("@a:x".into(), START)], None, START);
        // Still syncing on sync2: never offline.
        users.expire(START + SYNC_ONLINE_TIMEOUT_MS * 2);
        assert_eq!(users.status("@a:x").state, PresenceState::Online);
        // The full list from sync2 no longer has them: stopped now.
        let now = START + SYNC_ONLINE_TIMEOUT_MS * 3;
        users.syncs("sync2", &[], &[], Some(&[]), now);
        let changes = users.expire(now + SYNC_ONLINE_TIMEOUT_MS + 1);
        assert_eq!(states(&changes), vec![("@a:x", "offline")]);
    }

    #[test]
    fn set_presence_unavailable_and_silent_instances() {
        let mut users = Users::default();
        let changes = users.syncs(
            "sync1",
            &[("@a:x".into(), PresenceState::Unavailable)],
            &[],
            None,
            START,
        );
        assert_eq!(states(&changes), vec![("@a:x", "unavailable")]);
        // sync1 is heard from (its full list every 10 s) for a while: they stay.
        users.syncs("sync1", &[], &[], None, START + EXTERNAL_PROCESS_EXPIRY_MS);
        assert!(users
            .expire(START + EXTERNAL_PROCESS_EXPIRY_MS + 1)
            .is_empty());
        // Then never again: its users stopped when it was last heard from.
        let later = START + 2 * EXTERNAL_PROCESS_EXPIRY_MS + 1;
        let changes = users.expire(later);
        assert_eq!(states(&changes), vec![("@a:x", "offline")]);
    }

    #[test]
    fn a_sync_keeps_the_status_message_and_last_active_moves_are_granular() {
        let mut users = Users::default();
        users.set("@a:x", PresenceState::Offline, Some("away".into()), START);
        let (_, status) = users
            .syncs(
                "s",
                &[("@a:x".into(), PresenceState::Online)],
                &[],
                None,
                START,
            )
            .pop()
            .expect("online");
        assert_eq!(status.status_msg.as_deref(), Some("away"));
        let online = status.clone();
        // A small move of last_active_ts while active is no row.
        let moved = PresenceStatus {
            last_active_ts: online.last_active_ts + 1_000,
            ..online.clone()
        };
        assert!(!should_notify(&online, &moved));
        let inactive = PresenceStatus {
            currently_active: false,
            ..online.clone()
        };
        assert!(should_notify(&online, &inactive));
    }

    #[test]
    fn loaded_users_get_a_sync_timeout_from_start() {
        let mut users = Users::default();
        let stored = PresenceStatus {
            state: PresenceState::Online,
            last_active_ts: START - IDLE_TIMER_MS,
            last_user_sync_ts: START - IDLE_TIMER_MS,
            status_msg: None,
            currently_active: false,
        };
        users.load("@a:x", stored, START);
        // Their instance reports them syncing within the timeout: they stay.
        users.syncs(
            "s",
            &[],
            &[],
            Some(&[("@a:x".into(), PresenceState::Online)]),
            START + 10_000,
        );
        let changes = users.expire(START + SYNC_ONLINE_TIMEOUT_MS + 1);
        // Idle since long ago: unavailable, not offline.
        assert_eq!(states(&changes), vec![("@a:x", "unavailable")]);
    }
}
