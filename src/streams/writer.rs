//! The writing end of a stream: the position bookkeeping of the multi-writer
//! algorithm (`reference/synapse-workers.md` §5.3-5.4) that every writer
//! needs, so that no writer copies it. A writer
//! 1. [`allocates`](StreamWriter::allocate) positions from the stream's
//!    sequence (the positions are unfinished until step 3),
//! 2. writes its rows, with [`store_position`](StreamWriter::store_position)
//!    in the same transaction (the `stream_positions` row readers catch up
//!    to and a restarted writer resumes from),
//! 3. [`finishes`](StreamWriter::finish) them once committed: the positions
//!    are marked finished, the rows' keys are recorded and woken, and each row
//!    is published as `RDATA`; or [`abandons`](StreamWriter::abandon) them
//!    when the transaction rolled back (gaps, never rows).
//!
//! The idle claim (a writer with nothing in flight claims the highest
//! position anyone allocated) and the answers to `REPLICATE` are made by
//! replication for every stream this instance writes.

use std::sync::Arc;

use deadpool_postgres::GenericClient;
use serde_json::Value;

use super::registry::{StreamRows, StreamSpec};
use super::replication::{Command, Publisher};
use super::shared::SharedStream;
use crate::storage::{StorageError, StorageResult};

/// One instance's writing end of one stream. Cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    rows: Arc<dyn StreamRows>,
    instance: String,
    stream: SharedStream,
    /// None in a single process: nobody else to tell.
    publisher: Option<Publisher>,
}

impl StreamWriter {
    pub fn new(
        rows: Arc<dyn StreamRows>,
        instance: &str,
        stream: SharedStream,
        publisher: Option<Publisher>,
    ) -> StreamWriter {
        StreamWriter {
            rows,
            instance: instance.to_owned(),
            stream,
            publisher,
        }
    }

    pub fn spec(&self) -> &'static StreamSpec {
        self.rows.spec()
    }

    /// This instance's name: the writer named in its rows and positions.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The stream as this instance sees it.
    pub fn stream(&self) -> &SharedStream {
        &self.stream
    }

    /// Allocates `count` positions from the stream's sequence. They hold back
    /// this instance's position until finished or abandoned.
    pub async fn allocate(
        &self,
        client: &impl GenericClient,
        count: usize,
    ) -> StorageResult<Vec<i64>> {
        let fetch = self
            .stream
            .update(|p| p.begin_fetch())
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let allocated = match client
            .prepare_cached(&format!(
                "SELECT nextval('{}') FROM generate_series(1::bigint, $1::bigint)",
                self.spec().sequence
            ))
            .await
        {
            Ok(statement) => client.query(&statement, &[&(count as i64)]).await,
            Err(error) => Err(error),
        };
        match allocated {
            Ok(rows) => {
                let positions: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
                self.stream.update(|p| p.end_fetch(fetch, &positions));
                Ok(positions)
            }
            Err(error) => {
                self.stream.update(|p| p.end_fetch(fetch, &[]));
                Err(error.into())
            }
        }
    }

    /// Records, inside the writer's transaction, that this instance has
    /// written up to the largest of `positions`.
    pub async fn store_position(
        &self,
        client: &impl GenericClient,
        positions: &[i64],
    ) -> StorageResult<()> {
        let Some(position) = positions.iter().copied().max() else {
            return Ok(());
        };
        crate::storage::streams::store_position(client, self.spec().name, &self.instance, position)
            .await
    }

    /// Reloads this stream's positions from PostgreSQL, as at start-up: a
    /// restarted writer actor may have lost track of positions the
    /// incarnation before it allocated.
    pub async fn reload(&self, pool: &deadpool_postgres::Pool) -> StorageResult<()> {
        let writers = self.stream.read(|p| p.writers().to_vec());
        let positions =
            crate::storage::streams::load_positions(pool, self.spec(), &self.instance, &writers)
                .await?;
        self.stream.replace(positions);
        Ok(())
    }

    /// The writer's part of its actor's `Observe` snapshot: the stream, and
    /// how far it and this writer have come.
    pub fn observe(&self) -> serde_json::Map<String, Value> {
        let mut snapshot = serde_json::Map::new();
        snapshot.insert("instance".into(), self.instance.clone().into());
        snapshot.insert("stream".into(), self.spec().name.into());
        snapshot.insert(
            "stream_position".into(),
            self.stream.persisted_upto().into(),
        );
        snapshot.insert(
            "writer_position".into(),
            self.stream.writer_position(&self.instance).into(),
        );
        snapshot
    }

    /// Positions whose transaction rolled back: they count as finished, as
    /// gaps that never hold a row.
    pub fn abandon(&self, positions: &[i64]) {
        self.stream.update(|p| p.mark_finished(positions));
    }

    /// After commit: marks `rows`' positions finished, records and wakes the
    /// keys they concern, and publishes each row.
    pub fn finish(&self, rows: Vec<(i64, Value)>) {
        let keys = rows
            .iter()
            .flat_map(|(_, row)| self.rows.keys(row))
            .collect();
        let positions: Vec<i64> = rows.iter().map(|(position, _)| *position).collect();
        self.finish_with_keys(&positions, keys, move || rows);
    }

    /// Like [`finish`](Self::finish) for a writer that knows the keys
    /// without the rows: `rows` is called only when there is someone to
    /// publish them to (never in a single process).
    pub fn finish_with_keys(
        &self,
        positions: &[i64],
        mut keys: Vec<String>,
        rows: impl FnOnce() -> Vec<(i64, Value)>,
    ) {
        keys.sort_unstable();
        keys.dedup();
        let last = positions.iter().copied().max().unwrap_or(0);
        self.stream
            .record(keys, last, |p| p.mark_finished(positions));
        if let Some(publisher) = &self.publisher {
            for (position, row) in rows() {
                publisher.publish(Command::Rdata {
                    stream: self.spec().name.to_owned(),
                    instance: self.instance.clone(),
                    token: Some(position),
                    row,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;
    use serde_json::json;

    use super::*;
    use crate::streams::id_gen::{LoadedPositions, StreamPositions};
    use crate::streams::notifier::Notifier;
    use crate::streams::registry::{ShardBy, Storage, StreamError, TokenSlot};

    static SPEC: StreamSpec = StreamSpec {
        name: "test",
        shard_by: ShardBy::Room,
        storage: Storage::Memory,
        sequence: "test_stream_seq",
        token: Some(TokenSlot::Typing),
    };

    /// Rows `{"room": ...}` that wake their room.
    struct RoomRows;

    impl StreamRows for RoomRows {
        fn spec(&self) -> &'static StreamSpec {
            &SPEC
        }

        fn keys(&self, row: &Value) -> Vec<String> {
            row["room"]
                .as_str()
                .map(str::to_owned)
                .into_iter()
                .collect()
        }

        fn read_rows<'a>(
            &'a self,
            _writer: &'a str,
            _after: i64,
            _upto: i64,
        ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    /// The writer `w` of a fresh stream, with a publisher, and what it publishes.
    fn writer() -> (StreamWriter, crate::streams::replication::PublishQueue) {
        let positions = StreamPositions::new(
            "w",
            &["w".to_owned()],
            LoadedPositions {
                sequence_last_value: Some(1),
                ..LoadedPositions::default()
            },
        );
        let stream = SharedStream::new("test", positions, Notifier::new());
        let (publisher, queue) = Publisher::new();
        (
            StreamWriter::new(Arc::new(RoomRows), "w", stream, Some(publisher)),
            queue,
        )
    }

    /// Allocates `positions` as the sequence would have.
    fn allocated(writer: &StreamWriter, positions: &[i64]) {
        let fetch = writer
            .stream()
            .update(|p| p.begin_fetch())
            .expect("a writer");
        writer.stream().update(|p| p.end_fetch(fetch, positions));
    }

    #[tokio::test(start_paused = true)]
    async fn finished_rows_advance_the_stream_wake_their_keys_and_are_published() {
        let (writer, mut queue) = writer();
        let notifier = writer.stream().notifier().clone();
        let listener = notifier.listen(vec!["!a:x".to_owned()]);
        allocated(&writer, &[2, 3]);
        // Unfinished: nobody may read past 1 yet.
        assert_eq!(notifier.position("test"), 1);
        writer.finish(vec![
            (2, json!({"room": "!a:x"})),
            (3, json!({"room": "!b:x"})),
        ]);
        assert_eq!(notifier.position("test"), 3);
        assert!(listener.wait(std::time::Duration::from_secs(1)).await);
        // Keys are recorded at the batch's last position: never too early.
        assert!(notifier.has_changed_since("test", "!a:x", 2));
        assert!(!notifier.has_changed_since("test", "!a:x", 3));
        let published: Vec<String> = std::iter::from_fn(|| queue.0.try_recv().ok())
            .map(|command| command.to_string())
            .collect();
        assert_eq!(
            published,
            vec![
                r#"RDATA test w 2 {"room":"!a:x"}"#,
                r#"RDATA test w 3 {"room":"!b:x"}"#
            ]
        );
    }

    #[test]
    fn abandoned_positions_are_gaps_that_hold_nothing_back() {
        let (writer, mut queue) = writer();
        allocated(&writer, &[2, 3]);
        writer.abandon(&[2]);
        // 3 is still unfinished.
        assert_eq!(writer.stream().persisted_upto(), 2);
        writer.finish(vec![(3, json!({"room": "!a:x"}))]);
        assert_eq!(writer.stream().persisted_upto(), 3);
        assert_eq!(writer.stream().notifier().position("test"), 3);
        assert!(queue.0.try_recv().is_ok(), "the row is published");
        assert!(queue.0.try_recv().is_err(), "nothing for the gap");
    }
}
