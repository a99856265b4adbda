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
//! An idle writer announces (`POSITION`) that it claims the highest
//! position anyone allocated, so that it does not hold back the stream's
//! floor; a reader cut off from Redis could not learn that. So the watchdog
//! of each writer stores what it announced (`stream_claims`), and readers
//! catch up to it like to a written row. A writer that is gone for good is
//! another matter: [`super::gone`] settles it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;

use super::registry::{self, Storage};
use super::replication::{Claims, ReplicatedStream, Replication, ReplicationStats};

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

/// One instance's stall watchdog; [`run`](StallWatchdog::run) it as a task.
pub struct StallWatchdog {
    instance: String,
    pool: Pool,
    period: Duration,
    streams: Vec<Arc<dyn ReplicatedStream>>,
    stats: Arc<ReplicationStats>,
    claims: Arc<Claims>,
    watches: BTreeMap<(&'static str, String), WriterWatch>,
    /// The claims stored so far, by stream.
    stored_claims: BTreeMap<&'static str, i64>,
    /// The stalled writers last written to the `instances` table.
    reported: Option<Value>,
}

impl StallWatchdog {
    pub fn new(
        replication: &Replication,
        instance: &str,
        pool: Pool,
        period: Duration,
    ) -> StallWatchdog {
        StallWatchdog {
            instance: instance.to_owned(),
            pool,
            period,
            streams: replication.streams().to_vec(),
            stats: replication.stats.clone(),
            claims: replication.claims(),
            watches: BTreeMap::new(),
            stored_claims: BTreeMap::new(),
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
        Ok(())
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
    use super::*;

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

    #[test]
    fn a_reader_ahead_of_postgres_is_not_stalled() {
        // A writer heard through its POSITION claims beyond its last row.
        let mut watch = WriterWatch::default();
        assert!(!watch.check(5, 9));
        assert!(!watch.check(5, 9));
        assert_eq!(watch.pending, None);
    }
}
