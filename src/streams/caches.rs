//! The `caches` stream (DESIGN §4, `reference/synapse-workers.md` §3.2-3.4):
//! invalidations of per-instance caches for changes that are not events
//! (a logged-out device's access tokens, a forgotten room). Any instance
//! writes it. A row is stored in PostgreSQL (`storage::caches`), then
//! published as `RDATA caches <instance> <id> [cache, keys, ts]`; readers
//! apply a writer's rows only after its first `POSITION` on their current
//! subscription, which catches up from PostgreSQL what they missed, exactly as
//! for the events stream. So a reader that was disconnected from Redis, or whose
//! writer died between storing a row and publishing it, still learns of every
//! invalidation and keeps the rest of its caches.
//!
//! Unlike the events stream, every id is written by one instance and its rows
//! are written one at a time, so a writer's position is simply its last row:
//! no persisted-up-to bookkeeping is needed. Readers track one position per
//! writer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::registry::{ShardBy, Storage, StreamError, StreamSpec};
use super::replication::{Command, Publisher, ReplicatedStream, ReplicationStats};
use crate::storage::streams::StreamTable;
use crate::storage::{self, StorageResult};

/// The stream's name on the wire and in `stream_positions`-like places.
pub const CACHES_STREAM: &str = "caches";

pub const SPEC: StreamSpec = StreamSpec {
    name: CACHES_STREAM,
    shard_by: ShardBy::Instance,
    storage: Storage::Postgres(&StreamTable {
        table: "cache_invalidation_stream_by_instance",
        instance_column: "instance_name",
        id_column: "stream_id",
    }),
    sequence: "cache_invalidation_stream_seq",
    token: None,
};

/// How long invalidations are kept for readers catching up (Synapse keeps
/// them a week, `RETENTION_PERIOD_OF_CACHE_INVALIDATIONS_MS`).
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// One row: the entries of the cache `cache` under `keys` are stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    pub cache: String,
    /// The cache's own key parts (a user id, a device id, ...); `None` widens
    /// the invalidation to every value of that part.
    pub keys: Vec<Option<String>>,
}

impl Invalidation {
    pub fn new(cache: &str, keys: &[Option<&str>]) -> Invalidation {
        Invalidation {
            cache: cache.to_owned(),
            keys: keys.iter().map(|key| key.map(str::to_owned)).collect(),
        }
    }

    /// The key part at `index` (`None` when absent or a wildcard).
    pub fn key(&self, index: usize) -> Option<&str> {
        self.keys.get(index).and_then(Option::as_deref)
    }

    /// The RDATA row, in Synapse's shape: `[cache_func, keys, invalidation_ts]`.
    pub fn to_row(&self, invalidation_ts: i64) -> Value {
        json!([self.cache, self.keys, invalidation_ts])
    }

    /// Reads an RDATA row; `None` when it is not one.
    pub fn from_row(row: &Value) -> Option<Invalidation> {
        let cache = row.get(0)?.as_str()?.to_owned();
        let keys = row
            .get(1)?
            .as_array()?
            .iter()
            .map(|key| match key {
                Value::Null => Some(None),
                Value::String(key) => Some(Some(key.clone())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Invalidation { cache, keys })
    }
}

/// Applies an invalidation to this instance's caches.
pub type Invalidate = Arc<dyn Fn(&Invalidation) + Send + Sync>;

/// This instance's writing end of the stream.
pub struct CachesWriter {
    instance: String,
    pool: Pool,
    publisher: Publisher,
    /// Held while a row is stored and queued for publishing, so that this
    /// instance's rows reach PostgreSQL and Redis in id order: a reader may
    /// then take a writer's latest id as the proof that it has every earlier one.
    writing: tokio::sync::Mutex<()>,
    position: Arc<AtomicI64>,
}

/// How often a row that could not be stored is tried again, and for how long.
const WRITE_RETRY: Duration = Duration::from_millis(200);
const WRITE_ATTEMPTS: usize = 25;

impl CachesWriter {
    /// `position`: this instance's last stored row (`storage::caches::
    /// last_written_by`), so that after a restart it announces what it may
    /// have stored without publishing; shared with the replication reader,
    /// which announces it when asked (`REPLICATE`).
    pub fn new(
        instance: &str,
        pool: Pool,
        publisher: Publisher,
        position: Arc<AtomicI64>,
    ) -> CachesWriter {
        CachesWriter {
            instance: instance.to_owned(),
            pool,
            publisher,
            writing: tokio::sync::Mutex::new(()),
            position,
        }
    }

    /// Stores `invalidation` and publishes it. A database that is down is
    /// retried for a few seconds: the change it invalidates is already
    /// committed, so giving up would leave other instances stale.
    pub async fn write(&self, invalidation: Invalidation) -> StorageResult<()> {
        let _in_order = self.writing.lock().await;
        let mut attempt = 0;
        let id = loop {
            match storage::caches::insert(&self.pool, &self.instance, &invalidation).await {
                Ok(id) => break id,
                Err(error) if attempt + 1 < WRITE_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(error = %error, cache = %invalidation.cache, "storing a cache invalidation failed, retrying");
                    tokio::time::sleep(WRITE_RETRY).await;
                }
                Err(error) => return Err(error),
            }
        };
        self.position.store(id, Ordering::Release);
        self.publisher.publish(Command::Rdata {
            stream: CACHES_STREAM.to_owned(),
            instance: self.instance.clone(),
            token: Some(id),
            row: invalidation.to_row(crate::util::now_ms()),
        });
        Ok(())
    }
}

/// A reader's view of the stream: how far it has applied each writer's rows,
/// and which writers' rows it may apply as they arrive on the current
/// subscription (Synapse's `_streams_by_connection`).
#[derive(Debug, Default)]
pub struct CachesReader {
    local: String,
    /// Rows at or below this id were written before this instance cached
    /// anything: where every writer's position starts.
    floor: i64,
    /// Where the next subscription reads back every writer's rows from: the
    /// sequence's value when the previous one began.
    read_back_after: i64,
    positions: HashMap<String, i64>,
    connected: HashSet<String>,
}

impl CachesReader {
    /// `floor`: the sequence's last value before this instance cached
    /// anything (the change behind any row at or below it was committed
    /// before the row's id was taken, so a cache filled later saw it).
    pub fn new(local: &str, floor: i64) -> CachesReader {
        CachesReader {
            local: local.to_owned(),
            floor,
            read_back_after: floor,
            positions: HashMap::new(),
            connected: HashSet::new(),
        }
    }

    /// The writers whose rows this instance applied (or caught up with)
    /// beyond where it started, and how far.
    pub fn positions(&self) -> &HashMap<String, i64> {
        &self.positions
    }

    /// How far `writer`'s rows are applied.
    pub fn position(&self, writer: &str) -> i64 {
        self.positions.get(writer).copied().unwrap_or(self.floor)
    }

    /// Where a new subscription reads back every writer's rows from, whoever
    /// wrote them (they may come from a writer that will never announce
    /// itself again): the sequence's value when the previous one began.
    /// Reading back from the previous subscription's start rather than from
    /// this one's covers a row whose id was taken before that start but which
    /// was stored only after that subscription read back, and then lost with it.
    pub fn read_back_after(&self) -> i64 {
        self.read_back_after
    }

    /// A new subscription has read back (call it once that succeeded, so a
    /// failed read-back is read again): no writer's rows are applied as they
    /// arrive until its `POSITION` was caught up on it.
    pub fn subscribed(&mut self, sequence_last_value: i64) {
        self.connected.clear();
        self.read_back_after = self.read_back_after.max(sequence_last_value);
    }

    /// A row read back from PostgreSQL: whether to apply it; records it as
    /// applied if so.
    pub fn take_stored(&mut self, writer: &str, id: i64) -> bool {
        if writer == self.local || id <= self.position(writer) {
            return false;
        }
        self.positions.insert(writer.to_owned(), id);
        true
    }

    /// An RDATA row: whether to apply it. Rows of a writer whose POSITION
    /// this subscription has not caught up yet are dropped: the catch-up
    /// reads them.
    pub fn take_published(&mut self, writer: &str, id: i64) -> bool {
        self.connected.contains(writer) && self.take_stored(writer, id)
    }

    /// A POSITION: the ids `(after, upto]` of `writer` to read back, if any.
    pub fn missing(&self, writer: &str, new: i64) -> Option<(i64, i64)> {
        let current = self.position(writer);
        (writer != self.local && new > current).then_some((current, new))
    }

    /// `writer`'s rows up to `upto` were read back without its POSITION.
    pub fn advance(&mut self, writer: &str, upto: i64) {
        if writer != self.local && upto > self.position(writer) {
            self.positions.insert(writer.to_owned(), upto);
        }
    }

    /// `writer` was caught up to `new`: apply its rows as they arrive.
    pub fn caught_up(&mut self, writer: &str, new: i64) {
        if writer == self.local {
            return;
        }
        if new > self.position(writer) {
            self.positions.insert(writer.to_owned(), new);
        }
        self.connected.insert(writer.to_owned());
    }
}

/// The `caches` stream as replication drives it on one instance.
pub struct CachesStream {
    instance: String,
    pool: Pool,
    reader: Mutex<CachesReader>,
    invalidate: Invalidate,
    /// This instance's last row (the [`CachesWriter`] moves it).
    position: Arc<AtomicI64>,
    stats: Arc<ReplicationStats>,
    /// Bumped whenever a writer's position moves here.
    moved: tokio::sync::watch::Sender<u64>,
    /// Held while rows are applied: RDATA, a POSITION's catch-up and the
    /// stall watchdog's never interleave.
    applying: tokio::sync::Mutex<()>,
}

impl CachesStream {
    /// `floor`: see [`CachesReader::new`]; `position`: shared with this
    /// instance's [`CachesWriter`].
    pub fn new(
        instance: &str,
        pool: Pool,
        floor: i64,
        invalidate: Invalidate,
        position: Arc<AtomicI64>,
        stats: Arc<ReplicationStats>,
    ) -> CachesStream {
        CachesStream {
            instance: instance.to_owned(),
            pool,
            reader: Mutex::new(CachesReader::new(instance, floor)),
            invalidate,
            position,
            stats,
            moved: tokio::sync::watch::channel(0).0,
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn moved(&self) {
        self.moved
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Read-your-writes for invalidations: waits (at most `timeout`) until
    /// this instance has applied every row the others have stored, so that
    /// a client who logged out or forgot a room through another instance is
    /// answered without the stale cache entry. What replication has not
    /// brought by then is read back from PostgreSQL (a recovery: this
    /// instance's replication stalls).
    pub async fn catch_up_with_writers(&self, timeout: Duration) -> Result<(), StreamError> {
        let after = self.reader().read_back_after();
        let newest = storage::caches::newest_by_writer_after(&self.pool, after).await?;
        let mut moved = self.moved.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let behind = |stream: &CachesStream| {
            let reader = stream.reader();
            newest
                .iter()
                .any(|(writer, id)| *writer != stream.instance && reader.position(writer) < *id)
        };
        while behind(self) {
            if tokio::time::timeout_at(deadline, moved.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        for (writer, id) in &newest {
            if ReplicatedStream::catch_up(self, writer, *id).await? {
                self.stats.recovered(CACHES_STREAM);
            }
        }
        Ok(())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, CachesReader> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How far this instance applied each writer's rows, as JSON
    /// (`{"writer": position}`), for the cluster view.
    pub fn positions_json(&self) -> Value {
        json!(self.reader().positions())
    }

    fn apply_stored(&self, rows: Vec<(i64, String, Invalidation)>) {
        for (id, writer, invalidation) in rows {
            let take = self.reader().take_stored(&writer, id);
            if take {
                (self.invalidate)(&invalidation);
                self.stats
                    .caches_caught_up_rows
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.moved();
    }
}

impl ReplicatedStream for CachesStream {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// Applies every invalidation stored since the previous subscription
    /// began, whoever wrote it: rows published while this instance was not
    /// subscribed are lost on Redis, and their writer may never announce
    /// itself again.
    fn subscribed(&self) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            let _applying = self.applying.lock().await;
            let last = storage::caches::last_allocated(&self.pool).await?;
            let after = self.reader().read_back_after();
            let rows = storage::caches::written_between(&self.pool, None, after, i64::MAX).await?;
            self.reader().subscribed(last);
            self.apply_stored(rows);
            Ok(())
        })
    }

    fn local_position(&self) -> Option<i64> {
        Some(self.position.load(Ordering::Acquire))
    }

    /// Rows are written one at a time, each at its own id: nothing to claim.
    fn idle_claim(&self) -> Option<i64> {
        None
    }

    fn on_row<'a>(&'a self, writer: &'a str, token: i64, row: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _applying = self.applying.lock().await;
            if !self.reader().take_published(writer, token) {
                return;
            }
            match Invalidation::from_row(row) {
                Some(invalidation) => (self.invalidate)(&invalidation),
                None => {
                    tracing::warn!(writer = %writer, token, "replication: a caches row that is not an invalidation")
                }
            }
            self.stats.applied.fetch_add(1, Ordering::Relaxed);
            self.moved();
        })
    }

    fn on_position<'a>(
        &'a self,
        writer: &'a str,
        new: i64,
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        Box::pin(async move {
            if writer == self.instance {
                return Ok(());
            }
            let _applying = self.applying.lock().await;
            let missing = self.reader().missing(writer, new);
            if let Some((after, upto)) = missing {
                let rows =
                    storage::caches::written_between(&self.pool, Some(writer), after, upto).await?;
                self.apply_stored(rows);
            }
            self.reader().caught_up(writer, new);
            self.moved();
            Ok(())
        })
    }

    fn processed(&self) -> Vec<(String, i64)> {
        let mut positions: Vec<(String, i64)> = self
            .reader()
            .positions()
            .iter()
            .map(|(writer, position)| (writer.clone(), *position))
            .collect();
        positions.sort();
        positions
    }

    /// Each other instance's newest row since this instance's last
    /// subscription began (a writer's rows are stored one at a time, in
    /// id order).
    fn written<'a>(
        &'a self,
        pool: &'a Pool,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StreamError>> {
        Box::pin(async move {
            let after = self.reader().read_back_after();
            let mut newest = storage::caches::newest_by_writer_after(pool, after).await?;
            newest.retain(|(writer, _)| *writer != self.instance);
            Ok(newest)
        })
    }

    fn heard_from(&self, writer: &str) -> i64 {
        self.reader().position(writer)
    }

    fn catch_up<'a>(
        &'a self,
        writer: &'a str,
        upto: i64,
    ) -> BoxFuture<'a, Result<bool, StreamError>> {
        Box::pin(async move {
            // Without waiting for the lock when nothing is missing: every
            // read-your-writes sync asks.
            if self.reader().missing(writer, upto).is_none() {
                return Ok(false);
            }
            let _applying = self.applying.lock().await;
            let Some((after, upto)) = self.reader().missing(writer, upto) else {
                return Ok(false);
            };
            let rows =
                storage::caches::written_between(&self.pool, Some(writer), after, upto).await?;
            self.apply_stored(rows);
            // Unlike a POSITION, this says nothing of rows published since:
            // the writer stays as connected as it was.
            let mut reader = self.reader();
            if upto > reader.position(writer) {
                reader.advance(writer, upto);
            }
            drop(reader);
            self.moved();
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_in_synapse_shape() {
        let invalidation = Invalidation::new("access_tokens", &[Some("@a:x"), None]);
        let row = invalidation.to_row(7);
        assert_eq!(row, json!(["access_tokens", ["@a:x", null], 7]));
        assert_eq!(Invalidation::from_row(&row), Some(invalidation));
        assert_eq!(Invalidation::from_row(&json!(["x", [1]])), None);
        assert_eq!(Invalidation::from_row(&json!({})), None);
    }

    #[test]
    fn rows_of_a_writer_wait_for_its_position_on_each_subscription() {
        let mut reader = CachesReader::new("sync2", 10);
        assert_eq!(reader.read_back_after(), 10);
        reader.subscribed(12);
        // Before main's POSITION: dropped, the catch-up will read it.
        assert!(!reader.take_published("main", 13));
        assert_eq!(reader.missing("main", 13), Some((10, 13)));
        assert!(reader.take_stored("main", 13));
        reader.caught_up("main", 13);
        assert!(reader.take_published("main", 15));
        // Duplicates and echoes are not applied twice.
        assert!(!reader.take_published("main", 15));
        assert!(!reader.take_published("sync2", 16));
        assert_eq!(reader.missing("sync2", 16), None);

        // Reconnected: rows after the last subscription's floor are read
        // back, whoever wrote them; main's again only after its POSITION.
        assert_eq!(reader.read_back_after(), 12);
        reader.subscribed(20);
        assert!(!reader.take_stored("main", 14), "already applied");
        assert!(
            reader.take_stored("gone", 18),
            "a writer that never announces again"
        );
        assert!(!reader.take_published("main", 21));
        assert_eq!(reader.missing("main", 21), Some((15, 21)));
        reader.caught_up("main", 21);
        assert_eq!(reader.missing("main", 21), None);
    }

    #[test]
    fn rows_written_before_start_up_are_not_applied() {
        let mut reader = CachesReader::new("sync2", 10);
        reader.subscribed(10);
        assert!(!reader.take_stored("main", 9));
        assert_eq!(reader.missing("main", 9), None);
        reader.caught_up("main", 9);
        assert!(!reader.take_published("main", 10));
        assert!(reader.take_published("main", 11));
    }
}
