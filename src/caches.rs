//! In-memory caches of hot database reads, and how each stays true.
//!
//! A cache here is kept right in one of two ways. Reads that follow a stream
//! are checked against the notifier's change cache: an entry remembers the
//! stream position it was read at and is used only while its key has not
//! changed since. Reads that change outside a stream (forgetting a room) are
//! invalidated explicitly, here and, through the `caches` replication stream,
//! on every other instance; a generation counter keeps a read that raced an
//! invalidation from being stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;

use crate::storage::rooms::{self, Membership};
use crate::storage::StorageResult;
use crate::streams::notifier::Notifier;

/// The name of the membership cache in `caches` stream rows: `["memberships", user_id]`.
pub const MEMBERSHIP_CACHE: &str = "memberships";

/// Users whose memberships are kept before the cache starts over.
const MAX_CACHED_USERS: usize = 100_000;

/// Every room a user is in, was invited to or left: what each `/sync` of
/// that user starts from.
#[derive(Default)]
pub struct MembershipCache {
    entries: Mutex<HashMap<String, CachedMemberships>>,
    generation: AtomicU64,
}

struct CachedMemberships {
    /// The events stream position the read started at.
    read_at: i64,
    memberships: Arc<Vec<Membership>>,
}

impl MembershipCache {
    /// The memberships of `user_id`, from the cache while they have not
    /// changed, else from the database.
    pub async fn memberships_of_user(
        &self,
        pool: &Pool,
        notifier: &Notifier,
        user_id: &str,
    ) -> StorageResult<Arc<Vec<Membership>>> {
        if let Some(cached) = self.lookup(notifier, user_id) {
            return Ok(cached);
        }
        let generation = self.generation.load(Ordering::Acquire);
        // Read the position first: a change after it marks the entry stale
        // whether or not the query below saw it.
        let read_at = notifier.events_position();
        let memberships = Arc::new(rooms::memberships_of_user(pool, user_id).await?);
        if let Ok(mut entries) = self.entries.lock() {
            if self.generation.load(Ordering::Acquire) == generation {
                if entries.len() >= MAX_CACHED_USERS {
                    entries.clear();
                }
                entries.insert(
                    user_id.to_owned(),
                    CachedMemberships {
                        read_at,
                        memberships: Arc::clone(&memberships),
                    },
                );
            }
        }
        Ok(memberships)
    }

    fn lookup(&self, notifier: &Notifier, user_id: &str) -> Option<Arc<Vec<Membership>>> {
        let entries = self.entries.lock().ok()?;
        let cached = entries.get(user_id)?;
        if notifier.has_changed_since(user_id, cached.read_at) {
            return None;
        }
        Some(Arc::clone(&cached.memberships))
    }

    /// Drops what is known of `user_id` (a room forgotten or remembered).
    pub fn forget(&self, user_id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(user_id);
        }
    }

    /// Applies a `caches` stream row; `None` (replication reconnected, rows
    /// may have been missed) drops everything.
    pub fn invalidate(&self, row: Option<&serde_json::Value>) {
        match row {
            None => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut entries) = self.entries.lock() {
                    entries.clear();
                }
            }
            Some(row)
                if row.get(0).and_then(serde_json::Value::as_str) == Some(MEMBERSHIP_CACHE) =>
            {
                if let Some(user_id) = row.get(1).and_then(serde_json::Value::as_str) {
                    self.forget(user_id);
                }
            }
            Some(_) => {}
        }
    }
}
