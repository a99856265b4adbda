//! The stall watchdog (issue 17): a reader whose replication stops
//! advancing, because Redis is partitioned away or a writer died between
//! committing and publishing, notices it and reads what it missed back
//! from PostgreSQL, so that `/sync` answers with the rows instead of
//! waiting for messages that will not come.
//!
//! Every `replication.stall_check_ms`, for each replicated stream and each
//! other writer of it, the watchdog compares how far this instance has
//! applied the writer's rows ([`ReplicatedStream::heard_from`]) with how
//! far PostgreSQL says the writer has written ([`ReplicatedStream::written`]:
//! its `stream_positions` row, written in the transaction of its rows, or
//! the claim it stored, below). A writer PostgreSQL is ahead of is normal
//! for the moment between a commit and its `RDATA`; one this instance has
//! still not caught up with a whole check later is **stalled**: its rows
//! are read back and applied as replication would have applied them
//! ([`ReplicatedStream::catch_up`]: caches, then positions, then waiters),
//! which wakes the long-polls waiting for them. The writer stays stalled
//! (`lattice_replication_stalled`, the cluster view's `stalled_writers`)
//! until replication brings a message of it again and nothing is missing;
//! meanwhile every check catches up what it wrote.
//!
//! Two things a reader cut off from Redis could not otherwise learn are
//! stored for it:
//! - **Claims.** An idle writer announces (`POSITION`) that it claims the
//!   highest position anyone allocated, so that it does not hold back the
//!   stream's floor. The watchdog of each writer stores what it announced
//!   (`stream_claims`), and readers catch up to it like to a written row.
//! - **Gone writers.** An event persister that died announces nothing
//!   more, and its last position would hold back the floor of every reader
//!   (where a rolled-back position leaves a gap) until it comes back. A
//!   writer of a kind whose writers hold shard leases (`crate::shards`)
//!   that is no longer a live member and owns no shard can commit nothing
//!   more: every shard it held was taken at a new epoch, and its
//!   transactions are fenced at the old one. Once PostgreSQL has nothing of
//!   it beyond what this instance applied, the watchdog claims for it what
//!   its own idle claim would have been ([`ReplicatedStream::release`]): the
//!   highest position seen when it was found gone, once the shard table
//!   was read twice since (a writer that allocated that position would
//!   have been in the table then; the reasoning is at
//!   `StallWatchdog::release_gone_writers`). The one write not fenced is a
//!   room's creation: a persister whose lease expired while it created a
//!   room, and that commits it afterwards, is not covered.
//!   Writers of other streams have no lease: a quiet one cannot be told
//!   from a dead one, and is never released.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;

use super::registry::{self, Storage};
use super::replication::{Claims, ReplicatedStream, Replication, ReplicationStats};
use crate::shards::ShardMap;

/// What the watchdog remembers of one writer of one stream between checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct WriterWatch {
    /// What PostgreSQL said at the previous check that this instance had
    /// not applied yet.
    pending: Option<i64>,
    /// The writer's messages heard when it was last caught up from
    /// PostgreSQL: one more means replication delivers again.
    messages_at_catch_up: u64,
}

impl WriterWatch {
    /// One check: PostgreSQL has the writer at `written`, this instance at
    /// `heard`. True when the writer is stalled (what PostgreSQL had a
    /// whole check ago has still not been applied): catch it up now.
    fn check(&mut self, written: i64, heard: i64) -> bool {
        if written <= heard {
            self.pending = None;
            return false;
        }
        match self.pending {
            Some(previous) if heard < previous => {
                self.pending = None;
                true
            }
            _ => {
                self.pending = Some(written);
                false
            }
        }
    }
}

/// A writer found gone: when, and the position to claim for it.
#[derive(Debug, Clone, Copy)]
struct GoneWriter {
    /// The shard map's generation when `claim` was taken.
    generation: u64,
    /// The highest position seen then: the writer, were it alive, would
    /// have allocated it before then, while it was a member.
    claim: i64,
    /// Whether its release was logged.
    logged: bool,
}

/// One instance's stall watchdog; [`run`](StallWatchdog::run) it as a task.
pub struct StallWatchdog {
    instance: String,
    pool: Pool,
    period: Duration,
    streams: Vec<Arc<dyn ReplicatedStream>>,
    stats: Arc<ReplicationStats>,
    claims: Arc<Claims>,
    /// Shard ownership of the kinds whose writers hold leases (the events
    /// persisters'): it tells a writer that is gone from one that is quiet.
    leases: Vec<Arc<ShardMap>>,
    watches: BTreeMap<(&'static str, String), WriterWatch>,
    /// The claims stored so far, by stream.
    stored_claims: BTreeMap<&'static str, i64>,
    /// The writers found gone, by stream.
    gone: BTreeMap<(&'static str, String), GoneWriter>,
    /// The stalled writers last written to the `instances` table.
    reported: Option<Value>,
}

impl StallWatchdog {
    pub fn new(
        replication: &Replication,
        instance: &str,
        pool: Pool,
        period: Duration,
        leases: Vec<Arc<ShardMap>>,
    ) -> StallWatchdog {
        StallWatchdog {
            instance: instance.to_owned(),
            pool,
            period,
            streams: replication.streams().to_vec(),
            stats: replication.stats.clone(),
            claims: replication.claims(),
            leases,
            watches: BTreeMap::new(),
            stored_claims: BTreeMap::new(),
            gone: BTreeMap::new(),
            reported: None,
        }
    }

    /// Checks every `period` until the task is aborted.
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.store_claims().await {
                tracing::warn!(error = %error, "replication: storing this writer's claims failed");
            }
            for stream in self.streams.clone() {
                if let Err(error) = self.check(stream.as_ref()).await {
                    tracing::warn!(stream = stream.name(), error = %error, "replication: stall check failed");
                }
            }
            if let Err(error) = self.report().await {
                tracing::warn!(error = %error, "replication: recording the stalled writers failed");
            }
        }
    }

    /// Stores the positions this instance announced as a writer of a
    /// stored stream since the last check.
    async fn store_claims(&mut self) -> Result<(), crate::storage::StorageError> {
        for (stream, claim) in self.claims.latest() {
            let stored = registry::spec(stream).is_some_and(|spec| {
                spec.has_configured_writers() && matches!(spec.storage, Storage::Postgres(_))
            });
            if !stored || self.stored_claims.get(stream).is_some_and(|s| *s >= claim) {
                continue;
            }
            crate::storage::streams::store_claim(&self.pool, stream, &self.instance, claim).await?;
            self.stored_claims.insert(stream, claim);
        }
        Ok(())
    }

    /// One check of one stream.
    async fn check(
        &mut self,
        stream: &dyn ReplicatedStream,
    ) -> Result<(), super::registry::StreamError> {
        let name = stream.name();
        // Read before `written`: see `release_gone_writers`.
        let leases = self.leases.iter().find(|map| map.kind() == name).cloned();
        let lease_generation = leases.as_ref().map(|map| map.generation());
        let written = stream.written(&self.pool).await?;
        for (writer, position) in &written {
            let heard = stream.heard_from(writer);
            let messages = self.stats.messages_from(name, writer);
            let watch = self.watches.entry((name, writer.clone())).or_default();
            let stalled = self.stats.is_stalled(name, writer);
            if stalled && messages > watch.messages_at_catch_up && *position <= heard {
                self.stats.set_stalled(name, writer, false);
                tracing::info!(stream = name, writer = %writer, "replication: the writer is heard again");
            }
            if !watch.check(*position, heard) {
                continue;
            }
            watch.messages_at_catch_up = messages;
            if stream.catch_up(writer, *position).await? {
                self.stats.recovered(name);
                if self.stats.set_stalled(name, writer, true) {
                    tracing::warn!(
                        stream = name,
                        writer = %writer,
                        heard,
                        written = position,
                        "replication: the writer stalled; what it wrote is read back from PostgreSQL"
                    );
                }
            }
        }
        if let (Some(leases), Some(generation)) = (leases, lease_generation) {
            self.release_gone_writers(stream, &leases, generation, &written)
                .await;
        }
        Ok(())
    }

    /// Releases the writers of `stream` that hold no lease any more and
    /// whose every row this instance has applied.
    ///
    /// A position is claimed for a gone writer only once the shard table
    /// was read twice since the position was seen (`generation`, read
    /// before `written`): the second read began after the writer, had it
    /// been alive, allocated the position, so it would have shown the
    /// writer as a member or an owner; as it did not, the writer's
    /// transactions are fenced, and the ones that committed before the
    /// read are in `written`.
    async fn release_gone_writers(
        &mut self,
        stream: &dyn ReplicatedStream,
        leases: &ShardMap,
        generation: u64,
        written: &[(String, i64)],
    ) {
        let name = stream.name();
        let live = leases.live_members();
        let owners: Vec<String> = leases
            .counts()
            .into_iter()
            .map(|(owner, _)| owner)
            .collect();
        for (writer, _) in stream.processed() {
            if writer == self.instance || live.contains(&writer) || owners.contains(&writer) {
                self.gone.remove(&(name, writer));
                continue;
            }
            let heard = stream.heard_from(&writer);
            if written
                .iter()
                .any(|(w, position)| *w == writer && *position > heard)
            {
                continue;
            }
            let gone = self
                .gone
                .entry((name, writer.clone()))
                .or_insert(GoneWriter {
                    generation,
                    claim: stream.highest_seen(),
                    logged: false,
                });
            if generation < gone.generation + 2 {
                continue;
            }
            if stream.release(&writer, gone.claim).await && !gone.logged {
                gone.logged = true;
                tracing::info!(stream = name, writer = %writer, "replication: the writer is gone; it no longer holds back the stream");
            }
            // What is seen now is claimed after two more reads.
            gone.generation = generation;
            gone.claim = stream.highest_seen();
            self.stats.set_stalled(name, &writer, false);
        }
    }

    /// Writes the stalled writers to this instance's `instances` row when
    /// they changed (the heartbeat writes them too).
    async fn report(&mut self) -> Result<(), crate::storage::StorageError> {
        let stalled = self.stats.stalled_json();
        if self.reported.as_ref() == Some(&stalled) {
            return Ok(());
        }
        crate::storage::instances::set_stalled_writers(&self.pool, &self.instance, &stalled)
            .await?;
        self.reported = Some(stalled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::streams::registry::StreamError;

    #[test]
    fn a_writer_is_stalled_when_what_postgres_had_a_check_ago_is_still_missing() {
        let mut watch = WriterWatch::default();
        // Nothing written beyond what was heard.
        assert!(!watch.check(5, 5));
        // Committed, its RDATA on the way: wait a check.
        assert!(!watch.check(7, 5));
        // Heard meanwhile, and more written: still no stall.
        assert!(!watch.check(9, 7));
        assert_eq!(watch.pending, Some(9));
        // A whole check later 9 has still not been heard: stalled.
        assert!(watch.check(11, 8));
        assert_eq!(watch.pending, None);
        // Caught up: fine again.
        assert!(!watch.check(11, 11));
        assert!(!watch.check(12, 11));
        assert!(!watch.check(12, 12));
        assert_eq!(watch.pending, None);
    }

    /// A stream as the watchdog sees it: writers, how far each was heard,
    /// and the highest position seen.
    struct Heard {
        writers: Vec<&'static str>,
        heard: std::sync::Mutex<BTreeMap<String, i64>>,
        highest: std::sync::atomic::AtomicI64,
    }

    impl ReplicatedStream for Heard {
        fn spec(&self) -> &'static registry::StreamSpec {
            &crate::streams::events::SPEC
        }

        fn subscribed(&self) -> BoxFuture<'_, Result<(), StreamError>> {
            Box::pin(async { Ok(()) })
        }

        fn local_position(&self) -> Option<i64> {
            None
        }

        fn idle_claim(&self) -> Option<i64> {
            None
        }

        fn on_row<'a>(&'a self, _: &'a str, _: i64, _: &'a Value) -> BoxFuture<'a, ()> {
            Box::pin(async {})
        }

        fn on_position<'a>(&'a self, _: &'a str, _: i64) -> BoxFuture<'a, Result<(), StreamError>> {
            Box::pin(async { Ok(()) })
        }

        fn processed(&self) -> Vec<(String, i64)> {
            self.writers
                .iter()
                .map(|w| (w.to_string(), self.heard_from(w)))
                .collect()
        }

        fn written<'a>(
            &'a self,
            _: &'a Pool,
        ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StreamError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn heard_from(&self, writer: &str) -> i64 {
            self.heard
                .lock()
                .expect("heard")
                .get(writer)
                .copied()
                .unwrap_or(1)
        }

        fn catch_up<'a>(&'a self, _: &'a str, _: i64) -> BoxFuture<'a, Result<bool, StreamError>> {
            Box::pin(async { Ok(false) })
        }

        fn highest_seen(&self) -> i64 {
            self.highest.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn release<'a>(&'a self, writer: &'a str, upto: i64) -> BoxFuture<'a, bool> {
            Box::pin(async move {
                let mut heard = self.heard.lock().expect("heard");
                let position = heard.entry(writer.to_owned()).or_insert(1);
                let moved = upto > *position;
                *position = (*position).max(upto);
                moved
            })
        }
    }

    fn lease(shard: i32, owner: &str) -> crate::storage::shards::Lease {
        crate::storage::shards::Lease {
            shard,
            owner: owner.to_owned(),
            epoch: 1,
            since_ts: 0,
            pinned: false,
        }
    }

    fn member(instance: &str, expires_ts: i64) -> crate::storage::shards::Member {
        crate::storage::shards::Member {
            instance: instance.to_owned(),
            expires_ts,
            joined_ts: 0,
        }
    }

    #[tokio::test]
    async fn a_gone_event_persister_is_released_only_once_the_table_shows_it_fenced_twice() {
        let pool = crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1)
            .expect("a pool is made without connecting");
        let map = Arc::new(ShardMap::new("events", "reader"));
        let mut watchdog = StallWatchdog {
            instance: "reader".into(),
            pool,
            period: Duration::from_secs(1),
            streams: Vec::new(),
            stats: Arc::default(),
            claims: Arc::default(),
            leases: vec![map.clone()],
            watches: BTreeMap::new(),
            stored_claims: BTreeMap::new(),
            gone: BTreeMap::new(),
            reported: None,
        };
        let stream = Heard {
            writers: vec!["events1", "events2", "reader"],
            heard: std::sync::Mutex::new(BTreeMap::new()),
            highest: 10.into(),
        };
        // Never read: nothing is known to be gone.
        let generation = map.generation();
        watchdog
            .release_gone_writers(&stream, &map, generation, &[])
            .await;
        // events2 died, but still owns a shard: it is not fenced.
        let now = crate::util::now_ms();
        let alive = now + 60_000;
        map.replace(
            &[member("events1", alive), member("events2", now - 1)],
            &[lease(0, "events1"), lease(1, "events2")],
            now,
        );
        for _ in 0..3 {
            watchdog
                .release_gone_writers(&stream, &map, map.generation(), &[])
                .await;
        }
        assert_eq!(stream.heard_from("events2"), 1);
        // Its shard was taken: gone, from the first check that sees it so,
        // at the position seen then, after two more reads of the table.
        let taken = [lease(0, "events1"), lease(1, "events1")];
        map.replace(&[member("events1", alive)], &taken, now);
        watchdog
            .release_gone_writers(&stream, &map, map.generation(), &[])
            .await;
        stream
            .highest
            .store(12, std::sync::atomic::Ordering::SeqCst);
        map.replace(&[member("events1", alive)], &taken, now);
        watchdog
            .release_gone_writers(&stream, &map, map.generation(), &[])
            .await;
        assert_eq!(stream.heard_from("events2"), 1, "one read since");
        map.replace(&[member("events1", alive)], &taken, now);
        // PostgreSQL has rows of it not applied yet: not before they are.
        let behind = vec![("events2".to_owned(), 3)];
        watchdog
            .release_gone_writers(&stream, &map, map.generation(), &behind)
            .await;
        assert_eq!(stream.heard_from("events2"), 1);
        watchdog
            .release_gone_writers(&stream, &map, map.generation(), &[])
            .await;
        assert_eq!(
            stream.heard_from("events2"),
            10,
            "what was seen when it was found gone"
        );
        // A live writer and this instance are never released.
        assert_eq!(stream.heard_from("events1"), 1);
        assert_eq!(stream.heard_from("reader"), 1);
        // Later positions follow, two reads later each.
        map.replace(&[member("events1", alive)], &taken, now);
        map.replace(&[member("events1", alive)], &taken, now);
        watchdog
            .release_gone_writers(&stream, &map, map.generation(), &[])
            .await;
        assert_eq!(stream.heard_from("events2"), 12);
    }

    #[test]
    fn a_reader_ahead_of_postgres_is_not_stalled() {
        // A writer heard through its POSITION claims beyond its last row.
        let mut watch = WriterWatch::default();
        assert!(!watch.check(5, 9));
        assert!(!watch.check(5, 9));
        assert_eq!(watch.pending, None);
    }
}
