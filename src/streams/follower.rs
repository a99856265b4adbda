//! A stream follower: processes one stream's rows in stream order, from a
//! checkpoint stored in PostgreSQL, and resumes from it after a restart.
//! Pushers, federation senders and application-service senders are
//! followers (of the events stream, of receipts, of to-device messages):
//! each is a [`FollowRows`] handler given to [`StreamFollower::run`].
//!
//! A follower reads only up to the stream's persisted-up-to position, the
//! point below which no writer can still add a row, so that "in order" holds
//! across several writers: rows of every writer in `(checkpoint, upto]`
//! are read (back from PostgreSQL, or from the writers of a memory stream),
//! merged by position and handed over in one batch; once the handler
//! succeeded the checkpoint moves to `upto`. Delivery is at least once: a
//! process that dies between the handler and the checkpoint hands the same
//! rows over again when it restarts, so handlers are idempotent.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::Value;

use super::registry::{RegisteredStream, StreamError};
use crate::storage;

/// One row as a follower sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowedRow {
    pub position: i64,
    pub writer: String,
    pub row: Value,
}

/// What a follower does with the rows.
pub trait FollowRows: Send {
    /// Handles `rows` (in stream order; may be empty when only positions
    /// moved). An error leaves the checkpoint where it was: the same rows
    /// come again after [`FOLLOW_RETRY`].
    fn handle<'a>(&'a mut self, rows: &'a [FollowedRow]) -> BoxFuture<'a, Result<(), String>>;
}

/// Where a follower with no checkpoint yet begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// At the stream's current position: only rows written from now on.
    Now,
    /// At the beginning: every row the stream still has.
    Beginning,
}

/// How long a follower waits before trying a failed batch again.
pub const FOLLOW_RETRY: Duration = Duration::from_secs(1);

/// How long a follower sleeps without news before looking again (a wake-up
/// of the notifier normally comes first).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Positions read in one batch at most, so that a follower far behind
/// catches up in bounded steps.
const MAX_BATCH_SPAN: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
}

/// One follower of one stream on this instance.
pub struct StreamFollower {
    /// Names the checkpoint: unique per follower (e.g. `pusher:@alice:x`).
    name: String,
    stream: RegisteredStream,
    pool: Pool,
}

impl StreamFollower {
    pub fn new(name: impl Into<String>, stream: RegisteredStream, pool: Pool) -> StreamFollower {
        StreamFollower {
            name: name.into(),
            stream,
            pool,
        }
    }

    /// Where this follower resumes: its stored checkpoint, or where
    /// `start` says for a new one (then stored at once, so a restart
    /// resumes there and not at a later "now").
    pub async fn checkpoint(&self, start: StartFrom) -> Result<i64, FollowError> {
        if let Some(position) = storage::followers::checkpoint(&self.pool, &self.name).await? {
            return Ok(position);
        }
        let position = match start {
            StartFrom::Now => self.stream.positions.persisted_upto(),
            StartFrom::Beginning => 0,
        };
        storage::followers::store_checkpoint(
            &self.pool,
            &self.name,
            self.stream.spec().name,
            position,
        )
        .await?;
        Ok(position)
    }

    /// Handles every batch that is ready after `after`; returns the new
    /// checkpoint (stored).
    pub async fn step(
        &self,
        after: i64,
        handler: &mut impl FollowRows,
    ) -> Result<i64, FollowError> {
        let persisted = self.stream.positions.persisted_upto();
        let Some(upto) = batch_end(after, persisted) else {
            return Ok(after);
        };
        let writers = self.stream.positions.read(|p| p.writers().to_vec());
        let mut per_writer = Vec::with_capacity(writers.len());
        for writer in writers {
            let rows = self.stream.rows.read_rows(&writer, after, upto).await?;
            per_writer.push((writer, rows));
        }
        let rows = merge_in_order(per_writer);
        if let Err(error) = handler.handle(&rows).await {
            tracing::warn!(follower = %self.name, error = %error, after, upto, "follower: handler failed, retrying");
            tokio::time::sleep(FOLLOW_RETRY).await;
            return Ok(after);
        }
        storage::followers::store_checkpoint(&self.pool, &self.name, self.stream.spec().name, upto)
            .await?;
        Ok(upto)
    }

    /// Follows the stream for ever (until the task is dropped).
    pub async fn run(self, start: StartFrom, mut handler: impl FollowRows) {
        let mut checkpoint = loop {
            match self.checkpoint(start).await {
                Ok(position) => break position,
                Err(error) => {
                    tracing::warn!(follower = %self.name, error = %error, "follower: cannot read its checkpoint");
                    tokio::time::sleep(FOLLOW_RETRY).await;
                }
            }
        };
        let notifier = self.stream.positions.notifier().clone();
        loop {
            if self.stream.positions.persisted_upto() <= checkpoint {
                notifier.changed(IDLE_POLL).await;
                continue;
            }
            match self.step(checkpoint, &mut handler).await {
                Ok(position) => checkpoint = position,
                Err(error) => {
                    tracing::warn!(follower = %self.name, error = %error, "follower: reading the stream failed");
                    tokio::time::sleep(FOLLOW_RETRY).await;
                }
            }
        }
    }
}

/// The end of the next batch after `after`, when the stream has moved.
fn batch_end(after: i64, persisted: i64) -> Option<i64> {
    (persisted > after).then(|| persisted.min(after.saturating_add(MAX_BATCH_SPAN)))
}

/// Every writer's rows, merged by position (each writer's are in order).
fn merge_in_order(per_writer: Vec<(String, Vec<(i64, Value)>)>) -> Vec<FollowedRow> {
    let mut rows: Vec<FollowedRow> = per_writer
        .into_iter()
        .flat_map(|(writer, rows)| {
            rows.into_iter().map(move |(position, row)| FollowedRow {
                position,
                writer: writer.clone(),
                row,
            })
        })
        .collect();
    rows.sort_by_key(|row| row.position);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_of_several_writers_are_handed_over_in_stream_order() {
        let merged = merge_in_order(vec![
            ("w1".into(), vec![(2, json!("a")), (5, json!("c"))]),
            ("w2".into(), vec![(3, json!("b")), (9, json!("d"))]),
        ]);
        let order: Vec<(i64, &str)> = merged
            .iter()
            .map(|r| (r.position, r.writer.as_str()))
            .collect();
        assert_eq!(order, vec![(2, "w1"), (3, "w2"), (5, "w1"), (9, "w2")]);
    }

    #[test]
    fn batches_stop_at_what_every_writer_persisted_and_are_bounded() {
        assert_eq!(batch_end(10, 10), None, "nothing new");
        assert_eq!(batch_end(10, 8), None, "never backwards");
        assert_eq!(batch_end(10, 15), Some(15));
        assert_eq!(batch_end(0, 5_000), Some(MAX_BATCH_SPAN));
    }
}
