//! The top-level `device_one_time_keys_count` and
//! `device_unused_fallback_key_types` of every `/sync` answer: how many
//! one-time keys the syncing device has left, by algorithm, and which of
//! its fallback keys nobody claimed yet, so it uploads more in time. They
//! are read when the answer leaves (an answer that waited included), not
//! while a long-poll waits.
//!
//! Every instance keeps what it read per device ([`KeyCountCache`], as
//! Synapse caches `count_e2e_one_time_keys`): an upload, a claim or a
//! device removal forgets the device's entry here and, through the `caches`
//! stream, on every other instance, so an answer reads PostgreSQL only
//! after the device's keys changed. Another instance sees the change once
//! the invalidation reaches it (the replication delay, as in Synapse).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::json;
use serde_json::Value;

use crate::api::client::keys::one_time_key_counts;
use crate::api::Requester;
use crate::error::ApiResult;
use crate::node::Node;
use crate::storage::keys;
use crate::streams::caches::Invalidation;

/// The name of the cache in `caches` stream rows (keys: user id, device
/// id, user id, device id, ...).
pub const KEY_COUNTS_CACHE: &str = "e2e_key_counts";

/// Past this many devices the cache starts afresh rather than grow.
const MAX_CACHED_DEVICES: usize = 100_000;

/// What a device's `/sync` answers carry about its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCounts {
    pub one_time: BTreeMap<String, i64>,
    pub unused_fallback: Vec<String>,
}

/// [`KeyCounts`] by (user id, device id). A generation counter keeps a read
/// that raced a change from storing what it read before the change.
#[derive(Default)]
pub struct KeyCountCache {
    generation: AtomicU64,
    devices: Mutex<foldhash::HashMap<(String, String), KeyCounts>>,
}

impl KeyCountCache {
    fn get(&self, user_id: &str, device_id: &str) -> Option<KeyCounts> {
        let devices = self.devices.lock().ok()?;
        devices
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .cloned()
    }

    fn insert_unless_changed(
        &self,
        generation: u64,
        user_id: &str,
        device_id: &str,
        counts: KeyCounts,
    ) {
        if let Ok(mut devices) = self.devices.lock() {
            // Checked under the lock `forget` takes: a change after the
            // read has moved the generation.
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            if devices.len() >= MAX_CACHED_DEVICES {
                devices.clear();
            }
            devices.insert((user_id.to_owned(), device_id.to_owned()), counts);
        }
    }

    /// Forgets what is known of these devices (`(user id, device id)`).
    pub fn forget<'a>(&self, devices: impl IntoIterator<Item = (&'a str, &'a str)>) {
        if let Ok(mut cached) = self.devices.lock() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            for (user_id, device_id) in devices {
                cached.remove(&(user_id.to_owned(), device_id.to_owned()));
            }
        }
    }

    /// Applies a `caches` stream row: pairs of user id and device id.
    pub fn invalidate(&self, invalidation: &Invalidation) {
        if invalidation.cache != KEY_COUNTS_CACHE {
            return;
        }
        let mut pairs = Vec::new();
        let mut index = 0;
        while let (Some(user_id), Some(device_id)) =
            (invalidation.key(index), invalidation.key(index + 1))
        {
            pairs.push((user_id, device_id));
            index += 2;
        }
        self.forget(pairs);
    }
}

/// The invalidation row telling other instances these devices' keys changed.
pub fn invalidation(devices: &[(&str, &str)]) -> Invalidation {
    let keys: Vec<Option<&str>> = devices
        .iter()
        .flat_map(|(user_id, device_id)| [Some(*user_id), Some(*device_id)])
        .collect();
    Invalidation::new(KEY_COUNTS_CACHE, &keys)
}

/// The device's counts, from the cache or read (and then cached).
async fn key_counts(node: &Node, user_id: &str, device_id: &str) -> ApiResult<KeyCounts> {
    if let Some(counts) = node.key_counts.get(user_id, device_id) {
        return Ok(counts);
    }
    let generation = node.key_counts.generation.load(Ordering::Acquire);
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let counts = KeyCounts {
        one_time: one_time_key_counts(&client, user_id, device_id).await?,
        unused_fallback: keys::unused_fallback_key_types(&client, user_id, device_id).await?,
    };
    node.key_counts
        .insert_unless_changed(generation, user_id, device_id, counts.clone());
    Ok(counts)
}

/// Adds both fields to `body`, a `/sync` answer for `requester`'s device.
pub async fn add_key_counts(node: &Node, requester: &Requester, body: &mut Value) -> ApiResult<()> {
    let counts = key_counts(
        node,
        requester.user_id.as_str(),
        requester.device_id.as_str(),
    )
    .await?;
    if let Some(body) = body.as_object_mut() {
        body.insert("device_one_time_keys_count".into(), json!(counts.one_time));
        body.insert(
            "device_unused_fallback_key_types".into(),
            json!(counts.unused_fallback),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: i64) -> KeyCounts {
        KeyCounts {
            one_time: BTreeMap::from([("signed_curve25519".to_owned(), n)]),
            unused_fallback: Vec::new(),
        }
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let cache = KeyCountCache::default();
        let generation = cache.generation.load(Ordering::Acquire);
        cache.forget([("@a:x", "D")]);
        cache.insert_unless_changed(generation, "@a:x", "D", counts(5));
        assert_eq!(cache.get("@a:x", "D"), None);
        let generation = cache.generation.load(Ordering::Acquire);
        cache.insert_unless_changed(generation, "@a:x", "D", counts(4));
        assert_eq!(cache.get("@a:x", "D"), Some(counts(4)));
    }

    #[test]
    fn an_invalidation_row_forgets_each_device_it_names() {
        let cache = KeyCountCache::default();
        for device in ["D1", "D2", "D3"] {
            let generation = cache.generation.load(Ordering::Acquire);
            cache.insert_unless_changed(generation, "@a:x", device, counts(1));
        }
        let row = invalidation(&[("@a:x", "D1"), ("@a:x", "D3")]).to_row(0);
        let parsed = Invalidation::from_row(&row).expect("a row");
        cache.invalidate(&parsed);
        assert_eq!(cache.get("@a:x", "D1"), None);
        assert_eq!(cache.get("@a:x", "D2"), Some(counts(1)));
        assert_eq!(cache.get("@a:x", "D3"), None);
    }
}
