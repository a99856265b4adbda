//! Which rooms and users changed since a position: Synapse's
//! `StreamChangeCache` for the events stream. Every instance records the
//! keys of each row it learns of (from its own writer or from replication)
//! before its notifier advances past that row, so "nothing changed since
//! `since`" is always safe to believe and an incremental `/sync` can skip
//! the rooms that did not move without asking the database.
//!
//! It remembers a bounded number of keys. A key it does not know, or a
//! position from before what it remembers, answers "maybe changed".

use std::collections::BTreeMap;

/// How many keys are remembered before the oldest are forgotten.
const DEFAULT_MAX_KEYS: usize = 200_000;

pub struct StreamChangeCache {
    /// Changes at or before this position are not known.
    earliest_known: i64,
    last_change: foldhash::HashMap<String, i64>,
    /// The same keys by position, to forget the oldest first.
    by_position: BTreeMap<i64, Vec<String>>,
    max_keys: usize,
}

impl StreamChangeCache {
    /// A cache that knows nothing at or before `position`.
    pub fn new(position: i64) -> StreamChangeCache {
        StreamChangeCache::with_capacity(position, DEFAULT_MAX_KEYS)
    }

    pub fn with_capacity(position: i64, max_keys: usize) -> StreamChangeCache {
        StreamChangeCache {
            earliest_known: position,
            last_change: foldhash::HashMap::default(),
            by_position: BTreeMap::new(),
            max_keys: max_keys.max(1),
        }
    }

    /// Whether `key` may have changed after `since`: false only when the
    /// cache knows it did not.
    pub fn has_changed_since(&self, key: &str, since: i64) -> bool {
        if since < self.earliest_known {
            return true;
        }
        self.last_change
            .get(key)
            .is_some_and(|&position| position > since)
    }

    /// Records that `keys` changed at `position`.
    pub fn record<'a>(&mut self, keys: impl IntoIterator<Item = &'a String>, position: i64) {
        if position <= self.earliest_known {
            return;
        }
        for key in keys {
            match self.last_change.get_mut(key.as_str()) {
                Some(last) if *last >= position => continue,
                Some(last) => {
                    let previous = *last;
                    *last = position;
                    if let Some(at_previous) = self.by_position.get_mut(&previous) {
                        at_previous.retain(|k| k != key);
                        if at_previous.is_empty() {
                            self.by_position.remove(&previous);
                        }
                    }
                }
                None => {
                    self.last_change.insert(key.clone(), position);
                }
            }
            self.by_position
                .entry(position)
                .or_default()
                .push(key.clone());
        }
        while self.last_change.len() > self.max_keys {
            let Some((oldest, keys)) = self.by_position.pop_first() else {
                break;
            };
            for key in keys {
                self.last_change.remove(&key);
            }
            self.earliest_known = self.earliest_known.max(oldest);
        }
    }

    /// Forgets everything at or before `position` (a view reloaded from the
    /// database may hold rows this cache never saw).
    pub fn forget_until(&mut self, position: i64) {
        if position <= self.earliest_known {
            return;
        }
        self.earliest_known = position;
        while let Some(entry) = self.by_position.first_entry() {
            if *entry.key() > position {
                break;
            }
            for key in entry.remove() {
                self.last_change.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.last_change.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_change.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn knows_what_did_not_change() {
        let mut cache = StreamChangeCache::new(10);
        cache.record(&keys(&["!a", "@u"]), 12);
        cache.record(&keys(&["!b"]), 15);
        assert!(cache.has_changed_since("!a", 11));
        assert!(!cache.has_changed_since("!a", 12));
        assert!(cache.has_changed_since("!b", 12));
        assert!(!cache.has_changed_since("!c", 10), "never changed after 10");
        assert!(cache.has_changed_since("!c", 9), "before what it knows");
    }

    #[test]
    fn a_later_change_moves_the_key() {
        let mut cache = StreamChangeCache::new(0);
        cache.record(&keys(&["!a"]), 5);
        cache.record(&keys(&["!a"]), 9);
        cache.record(&keys(&["!a"]), 7); // late and older: ignored
        assert!(cache.has_changed_since("!a", 8));
        assert!(!cache.has_changed_since("!a", 9));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.by_position.len(), 1);
    }

    #[test]
    fn forgetting_the_oldest_keys_raises_what_is_known() {
        let mut cache = StreamChangeCache::with_capacity(0, 2);
        cache.record(&keys(&["!a"]), 1);
        cache.record(&keys(&["!b"]), 2);
        cache.record(&keys(&["!c"]), 3);
        assert_eq!(cache.len(), 2);
        // `!a` is forgotten, so what changed at 1 is not known any more.
        assert!(cache.has_changed_since("!a", 0));
        assert!(cache.has_changed_since("!zzz", 0));
        assert!(!cache.has_changed_since("!a", 3));
        assert!(!cache.has_changed_since("!b", 2));
    }

    #[test]
    fn forget_until_drops_what_came_before() {
        let mut cache = StreamChangeCache::new(0);
        cache.record(&keys(&["!a"]), 3);
        cache.record(&keys(&["!b"]), 8);
        cache.forget_until(5);
        assert!(cache.has_changed_since("!a", 4));
        assert!(!cache.has_changed_since("!a", 5));
        assert!(cache.has_changed_since("!b", 5));
        cache.record(&keys(&["!c"]), 4); // at or before what is known: ignored
        assert!(!cache.has_changed_since("!c", 5));
    }
}
