//! The notifier: long-polling requests wait here for the streams they care
//! about to move. Writers (or, on other instances, replication) announce each
//! new position of a stream with the rooms and users it concerns; only the
//! requests listening on one of those keys are woken, so an event in one room
//! costs nothing to clients who are not in it. It keeps, per stream, the
//! position this instance has seen persisted and which keys changed when.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::change_cache::StreamChangeCache;

/// Shared by every handler of one instance; clone freely.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each stream's persisted-up-to position, as this instance knows it.
    positions: Mutex<BTreeMap<&'static str, i64>>,
    /// Bumped whenever a position moves, for [`Notifier::changed`].
    moved: watch::Sender<u64>,
    listeners: Mutex<foldhash::HashMap<String, Vec<Weak<Notify>>>>,
    /// Per stream, the last position at which each room or user changed.
    changes: Mutex<foldhash::HashMap<&'static str, StreamChangeCache>>,
}

/// A registration on some keys; wakes when any of them is notified after the
/// listener was created. Unregisters itself when dropped.
pub struct Listener {
    notify: Arc<Notify>,
    keys: Vec<String>,
    notifier: Notifier,
}

impl Default for Notifier {
    fn default() -> Notifier {
        Notifier::new()
    }
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                positions: Mutex::new(BTreeMap::new()),
                moved: watch::channel(0).0,
                listeners: Mutex::default(),
                changes: Mutex::default(),
            }),
        }
    }

    /// The position up to which `stream` is persisted, as this instance
    /// knows it (0 for a stream it has not heard of).
    pub fn position(&self, stream: &str) -> i64 {
        self.positions().get(stream).copied().unwrap_or(0)
    }

    /// The position up to which the events stream is persisted.
    pub fn events_position(&self) -> i64 {
        self.position(super::events::EVENTS_STREAM)
    }

    /// Every stream's position, by name.
    pub fn positions_by_stream(&self) -> BTreeMap<&'static str, i64> {
        self.positions().clone()
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, i64>> {
        self.inner
            .positions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until some stream's position moves (or `timeout` passes).
    pub async fn changed(&self, timeout: Duration) {
        let mut moved = self.inner.moved.subscribe();
        let _ = tokio::time::timeout(timeout, moved.changed()).await;
    }

    /// Registers interest in `keys` (room ids and user ids). Register before
    /// reading the state you compare against, so no wake-up is missed.
    pub fn listen(&self, keys: Vec<String>) -> Listener {
        let notify = Arc::new(Notify::new());
        if let Ok(mut listeners) = self.inner.listeners.lock() {
            for key in &keys {
                let weak = Arc::downgrade(&notify);
                // A busy key is there already: no copy of it to look it up.
                match listeners.get_mut(key.as_str()) {
                    Some(waiting) => waiting.push(weak),
                    None => {
                        listeners.insert(key.clone(), vec![weak]);
                    }
                }
            }
        }
        Listener {
            notify,
            keys,
            notifier: self.clone(),
        }
    }

    /// Announces that `stream` reached `position` with rows that concern
    /// `keys`. Positions never go back.
    pub fn on_new_rows(
        &self,
        stream: &'static str,
        position: i64,
        keys: impl IntoIterator<Item = String>,
    ) {
        let moved = {
            let mut positions = self.positions();
            let current = positions.entry(stream).or_insert(0);
            if position > *current {
                *current = position;
                true
            } else {
                false
            }
        };
        if moved {
            self.inner
                .moved
                .send_modify(|version| *version = version.wrapping_add(1));
        }
        let Ok(mut listeners) = self.inner.listeners.lock() else {
            return;
        };
        for key in keys {
            if let Some(waiting) = listeners.get_mut(&key) {
                waiting.retain(|weak| match weak.upgrade() {
                    Some(notify) => {
                        notify.notify_one();
                        true
                    }
                    None => false,
                });
            }
        }
    }

    /// Records that `keys` changed on `stream` at `position`; call it
    /// before the position is announced.
    pub fn record_changes(&self, stream: &'static str, keys: &[String], position: i64) {
        self.changes()
            .entry(stream)
            .or_insert_with(|| StreamChangeCache::new(0))
            .record(keys, position);
    }

    /// Whether the room or user `key` may have changed on `stream` after `since`.
    pub fn has_changed_since(&self, stream: &str, key: &str, since: i64) -> bool {
        self.changes()
            .get(stream)
            .is_none_or(|changes| changes.has_changed_since(key, since))
    }

    /// Forgets the changes of `stream` at or before `position`, which then
    /// all count as maybe changed.
    pub fn forget_changes_until(&self, stream: &'static str, position: i64) {
        self.changes()
            .entry(stream)
            .or_insert_with(|| StreamChangeCache::new(position))
            .forget_until(position);
    }

    fn changes(
        &self,
    ) -> std::sync::MutexGuard<'_, foldhash::HashMap<&'static str, StreamChangeCache>> {
        // The cache is consistent between calls; a panic elsewhere while
        // holding the lock leaves nothing half done.
        self.inner
            .changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many listeners are registered, for `Observe`.
    pub fn listener_count(&self) -> usize {
        self.inner
            .listeners
            .lock()
            .map(|l| l.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

impl Listener {
    /// Waits until notified or until `timeout` passes; true when notified.
    pub async fn wait(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.notify.notified())
            .await
            .is_ok()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Ok(mut listeners) = self.notifier.inner.listeners.lock() else {
            return;
        };
        for key in &self.keys {
            if let Some(waiting) = listeners.get_mut(key) {
                waiting.retain(|weak| {
                    weak.strong_count() > 0
                        && !std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&self.notify))
                });
                if waiting.is_empty() {
                    listeners.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_listeners_on_a_notified_key_wake() {
        let notifier = Notifier::new();
        let in_room = notifier.listen(vec!["!a:x".into()]);
        let elsewhere = notifier.listen(vec!["!b:x".into()]);
        // Notified before waiting: the permit is kept, nothing is lost.
        notifier.on_new_rows("events", 5, vec!["!a:x".to_owned()]);
        assert!(in_room.wait(Duration::from_secs(30)).await);
        assert!(!elsewhere.wait(Duration::from_secs(30)).await);
        assert_eq!(notifier.events_position(), 5);
        // Positions never go backwards, and each stream has its own.
        notifier.on_new_rows("events", 3, Vec::<String>::new());
        notifier.on_new_rows("typing", 2, Vec::<String>::new());
        assert_eq!(notifier.events_position(), 5);
        assert_eq!(notifier.position("typing"), 2);
        assert_eq!(notifier.position("receipts"), 0);
    }

    #[test]
    fn changes_are_kept_per_stream() {
        let notifier = Notifier::new();
        notifier.forget_changes_until("events", 10);
        notifier.forget_changes_until("typing", 10);
        notifier.record_changes("events", &["!a:x".to_owned()], 12);
        assert!(notifier.has_changed_since("events", "!a:x", 11));
        assert!(!notifier.has_changed_since("typing", "!a:x", 11));
        // A stream nothing is known of may have changed anywhere.
        assert!(notifier.has_changed_since("receipts", "!a:x", 11));
    }

    #[test]
    fn dropped_listeners_unregister() {
        let notifier = Notifier::new();
        let listener = notifier.listen(vec!["@u:x".into(), "!a:x".into()]);
        assert_eq!(notifier.listener_count(), 2);
        drop(listener);
        assert_eq!(notifier.listener_count(), 0);
    }
}
