//! The notifier: long-polling requests wait here for the streams they care
//! about to move. Writers (or, on other instances, replication) announce each
//! new position with the rooms and users it concerns; only the requests
//! listening on one of those keys are woken, so an event in one room costs
//! nothing to clients who are not in it.

use std::collections::HashMap;
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
    events_position: watch::Sender<i64>,
    listeners: Mutex<HashMap<String, Vec<Weak<Notify>>>>,
    /// The last position at which each room or user changed.
    changes: Mutex<StreamChangeCache>,
}

/// A registration on some keys; wakes when any of them is notified after the
/// listener was created. Unregisters itself when dropped.
pub struct Listener {
    notify: Arc<Notify>,
    keys: Vec<String>,
    notifier: Notifier,
}

impl Notifier {
    pub fn new(events_position: i64) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                events_position: watch::channel(events_position).0,
                listeners: Mutex::new(HashMap::new()),
                changes: Mutex::new(StreamChangeCache::new(events_position)),
            }),
        }
    }

    /// The position up to which the events stream is persisted, as this
    /// instance knows it.
    pub fn events_position(&self) -> i64 {
        *self.inner.events_position.borrow()
    }

    /// Registers interest in `keys` (room ids and user ids). Register before
    /// reading the state you compare against, so no wake-up is missed.
    pub fn listen(&self, keys: Vec<String>) -> Listener {
        let notify = Arc::new(Notify::new());
        if let Ok(mut listeners) = self.inner.listeners.lock() {
            for key in &keys {
                listeners
                    .entry(key.clone())
                    .or_default()
                    .push(Arc::downgrade(&notify));
            }
        }
        Listener {
            notify,
            keys,
            notifier: self.clone(),
        }
    }

    /// Announces that the events stream reached `position` with events that
    /// concern `keys`.
    pub fn on_new_events(&self, position: i64, keys: impl IntoIterator<Item = String>) {
        self.inner.events_position.send_if_modified(|current| {
            if position > *current {
                *current = position;
                true
            } else {
                false
            }
        });
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

    /// Records that `keys` changed at `position`; call it before the
    /// position is announced.
    pub fn record_changes(&self, keys: &[String], position: i64) {
        self.changes().record(keys, position);
    }

    /// Whether the room or user `key` may have changed after `since`.
    pub fn has_changed_since(&self, key: &str, since: i64) -> bool {
        self.changes().has_changed_since(key, since)
    }

    /// Forgets the changes at or before `position`, which then all count as
    /// maybe changed.
    pub fn forget_changes_until(&self, position: i64) {
        self.changes().forget_until(position);
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, StreamChangeCache> {
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
        let notifier = Notifier::new(1);
        let in_room = notifier.listen(vec!["!a:x".into()]);
        let elsewhere = notifier.listen(vec!["!b:x".into()]);
        // Notified before waiting: the permit is kept, nothing is lost.
        notifier.on_new_events(5, vec!["!a:x".to_owned()]);
        assert!(in_room.wait(Duration::from_secs(30)).await);
        assert!(!elsewhere.wait(Duration::from_secs(30)).await);
        assert_eq!(notifier.events_position(), 5);
        // Positions never go backwards.
        notifier.on_new_events(3, Vec::<String>::new());
        assert_eq!(notifier.events_position(), 5);
    }

    #[test]
    fn dropped_listeners_unregister() {
        let notifier = Notifier::new(1);
        let listener = notifier.listen(vec!["@u:x".into(), "!a:x".into()]);
        assert_eq!(notifier.listener_count(), 2);
        drop(listener);
        assert_eq!(notifier.listener_count(), 0);
    }
}
