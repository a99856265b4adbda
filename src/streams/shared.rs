//! One process's view of one stream, shared by the local writer (if this
//! instance writes the stream) and the replication reader (which hears of
//! every other writer). Every change re-derives the notifier's position of
//! the stream from it, so long-polls wake at the persisted-up-to position of
//! all writers.
//!
//! A request reads a stream only up to that position, so a row above it
//! (another writer has not persisted a smaller id yet) cannot be answered
//! with: its keys are woken when the position passes it, whichever row moved
//! the position then, as Synapse's notifier holds back its pending room
//! events until the persisted position reaches them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::id_gen::StreamPositions;
use super::notifier::Notifier;

#[derive(Clone)]
pub struct SharedStream {
    name: &'static str,
    positions: Arc<Mutex<StreamPositions>>,
    /// The keys of rows above the persisted-up-to position, by position:
    /// woken once the position reaches them. Guarded by `positions`' lock
    /// order: taken only while `positions` is held.
    pending: Arc<Mutex<BTreeMap<i64, Vec<String>>>>,
    notifier: Notifier,
    /// Bumped on every change, for callers waiting on one writer's position.
    changes: Arc<watch::Sender<u64>>,
}

impl SharedStream {
    pub fn new(name: &'static str, positions: StreamPositions, notifier: Notifier) -> SharedStream {
        notifier.forget_changes_until(name, positions.persisted_upto());
        notifier.on_new_rows(name, positions.persisted_upto(), Vec::<String>::new());
        SharedStream {
            name,
            positions: Arc::new(Mutex::new(positions)),
            pending: Arc::default(),
            notifier,
            changes: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StreamPositions> {
        // A panic while holding the lock cannot leave the positions half
        // updated in a way later calls could not cope with: keep going.
        self.positions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the positions, then lets the notifier advance to the
    /// (possibly new) persisted-up-to position.
    pub fn update<R>(&self, f: impl FnOnce(&mut StreamPositions) -> R) -> R {
        self.record(Vec::new(), 0, f)
    }

    /// Like `update`, for rows that changed `keys` (rooms, users) at
    /// `position`: the change is recorded before the notifier advances past
    /// it, then the long-polls listening on `keys` are woken, at once if
    /// the stream is persisted up to `position`, else when it is.
    pub fn record<R>(
        &self,
        keys: Vec<String>,
        position: i64,
        f: impl FnOnce(&mut StreamPositions) -> R,
    ) -> R {
        let (result, upto, woken) = {
            let mut positions = self.lock();
            if !keys.is_empty() {
                self.notifier.record_changes(self.name, &keys, position);
            }
            let result = f(&mut positions);
            let upto = positions.persisted_upto();
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut woken = Vec::new();
            if position > upto {
                if !keys.is_empty() {
                    pending.entry(position).or_default().extend(keys);
                }
            } else {
                woken = keys;
            }
            if pending
                .first_key_value()
                .is_some_and(|(first, _)| *first <= upto)
            {
                let above = pending.split_off(&upto.saturating_add(1));
                woken.extend(
                    std::mem::replace(&mut *pending, above)
                        .into_values()
                        .flatten(),
                );
                woken.sort_unstable();
                woken.dedup();
            }
            (result, upto, woken)
        };
        self.notifier.on_new_rows(self.name, upto, woken);
        self.changes
            .send_modify(|version| *version = version.wrapping_add(1));
        result
    }

    /// Waits (at most `timeout`) until this process has seen `writer` reach
    /// `position`: read-your-writes for a caller whose write another
    /// instance persisted. True when reached.
    pub async fn wait_for_writer(&self, writer: &str, position: i64, timeout: Duration) -> bool {
        let mut changes = self.changes.subscribe();
        let reached =
            |stream: &SharedStream| stream.read(|p| p.current_token_for_writer(writer)) >= position;
        let deadline = tokio::time::Instant::now() + timeout;
        while !reached(self) {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return reached(self),
            }
        }
        true
    }

    /// Reads the positions without waking anyone.
    pub fn read<R>(&self, f: impl FnOnce(&StreamPositions) -> R) -> R {
        f(&self.lock())
    }

    /// Replaces the whole view (a writer restarting reloads it from the database).
    pub fn replace(&self, positions: StreamPositions) {
        self.notifier
            .forget_changes_until(self.name, positions.persisted_upto());
        self.update(|current| *current = positions);
    }

    /// The stream's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The position up to which every writer has persisted.
    pub fn persisted_upto(&self) -> i64 {
        self.read(StreamPositions::persisted_upto)
    }

    /// How far this instance has seen `writer` go.
    pub fn writer_position(&self, writer: &str) -> i64 {
        self.read(|p| p.current_token_for_writer(writer))
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::streams::id_gen::LoadedPositions;

    #[tokio::test(start_paused = true)]
    async fn a_row_above_the_floor_wakes_its_room_when_another_writers_row_moves_the_floor() {
        let writers = ["a".to_owned(), "b".to_owned()];
        let notifier = Notifier::new();
        let stream = SharedStream::new(
            "test",
            StreamPositions::new("reader", &writers, LoadedPositions::default()),
            notifier.clone(),
        );
        let in_room = notifier.listen(vec!["!a:x".to_owned()]);
        // b persisted 3 in !a while a has not persisted 2: nothing of !a
        // can be read yet, so waking its readers now would be in vain.
        stream.record(vec!["!a:x".to_owned()], 3, |p| p.advance("b", 3));
        assert_eq!(notifier.position("test"), 1);
        assert!(!in_room.wait(Duration::from_millis(10)).await);
        // a's row in another room moves the floor past 3: !a is woken.
        stream.record(vec!["!b:x".to_owned()], 2, |p| p.advance("a", 2));
        assert_eq!(notifier.position("test"), 3);
        assert!(in_room.wait(Duration::from_millis(10)).await);
        assert!(stream.pending.lock().map(|p| p.is_empty()).unwrap_or(false));
    }
}
