//! The [`TypingWriter`]: one per instance listed in `stream_writers.typing`,
//! owning the typing state of the rooms sharded to it. A change takes a
//! position from the stream's sequence, updates this process's replica,
//! and is finished (woken here, published as `RDATA` to the others). Typing
//! that expires is written the same way, when the expiry timer tells it to.

use std::collections::BTreeSet;
use std::sync::Arc;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::rooms::TypingRooms;
use super::timer::Clock;
use super::{ExpireTyping, GetTypingRows, SetTyping, TypingWritten, WriteError};
use crate::shards::ShardMap;
use crate::streams::typing::{TypingReplica, TypingRow};
use crate::streams::writer::StreamWriter;

/// How long after a failed write (the sequence unreachable) it is retried.
const RETRY_MS: i64 = 1_000;

pub struct TypingWriter {
    pool: Pool,
    writer: StreamWriter,
    replica: Arc<TypingReplica>,
    /// Which rooms' shards this writer holds: it takes typing only there.
    shards: Arc<ShardMap>,
    clock: Clock,
    rooms: TypingRooms,
    /// Rooms whose row is owed: changed, but their write failed. They are
    /// written with the next write, or at `retry_at`.
    owed: BTreeSet<String>,
    retry_at: Option<i64>,
    /// The expiry timer's deadline.
    next_deadline: Arc<watch::Sender<Option<i64>>>,
    rows_written: u64,
}

impl TypingWriter {
    pub fn new(
        pool: Pool,
        writer: StreamWriter,
        replica: Arc<TypingReplica>,
        shards: Arc<ShardMap>,
        clock: Clock,
        next_deadline: Arc<watch::Sender<Option<i64>>>,
    ) -> TypingWriter {
        TypingWriter {
            pool,
            writer,
            replica,
            shards,
            clock,
            rooms: TypingRooms::default(),
            owed: BTreeSet::new(),
            retry_at: None,
            next_deadline,
            rows_written: 0,
        }
    }

    fn written(&self, position: Option<i64>) -> TypingWritten {
        TypingWritten {
            instance: self.writer.instance().to_owned(),
            position,
        }
    }

    /// Writes the rows of `rooms` and of every room owed, then sets the
    /// timer. The position of the last row, if any was written.
    async fn write(&mut self, rooms: Vec<String>) -> Result<Option<i64>, String> {
        self.owed.extend(rooms);
        let written = if self.owed.is_empty() {
            Ok(None)
        } else {
            self.write_owed().await
        };
        match &written {
            Ok(_) => self.retry_at = None,
            Err(error) => {
                tracing::warn!(error = %error, rooms = self.owed.len(), "typing: writing rows failed, retrying");
                self.retry_at = Some(self.clock.now_ms() + RETRY_MS);
            }
        }
        self.schedule();
        written
    }

    async fn write_owed(&mut self) -> Result<Option<i64>, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let positions = self
            .writer
            .allocate(&client, self.owed.len())
            .await
            .map_err(|e| e.to_string())?;
        let rooms = std::mem::take(&mut self.owed);
        let mut rows = Vec::with_capacity(positions.len());
        for (room_id, &position) in rooms.iter().zip(&positions) {
            let row = self.rooms.write(room_id, position);
            // Before the position is finished: a long-poll woken by it reads it.
            self.replica.apply(position, row.clone());
            rows.push((position, row.to_value()));
        }
        self.rows_written += rows.len() as u64;
        self.writer.finish(rows);
        Ok(positions.last().copied())
    }

    /// Sets the timer to the next expiry (or retry).
    fn schedule(&self) {
        let next = [self.rooms.next_deadline(), self.retry_at]
            .into_iter()
            .flatten()
            .min();
        self.next_deadline.send_replace(next);
    }
}

impl Actor for TypingWriter {
    async fn started(&mut self, _ctx: &mut Context) -> Result<(), String> {
        // A restarted writer starts with nobody typing: forget the old timer.
        self.schedule();
        Ok(())
    }

    fn observe(&self) -> Value {
        let (rooms, users) = self.rooms.counts();
        json!({
            "typing_rooms": rooms,
            "typing_users": users,
            "rows_kept": self.rooms.rows_kept(),
            "rows_written": self.rows_written,
            "owed_rooms": self.owed.len(),
            "position": self.writer.stream().writer_position(self.writer.instance()),
        })
    }
}

impl Handler<SetTyping> for TypingWriter {
    async fn handle(
        &mut self,
        msg: SetTyping,
        _ctx: &mut Context,
    ) -> Result<Result<TypingWritten, WriteError>, String> {
        let (room_id, user_id) = (msg.room_id.as_str(), msg.user_id.as_str());
        // Typing lives in its room's owner's memory: a room that moved
        // starts again with nobody typing there, as after a restart.
        if let Some(shard) = self
            .shards
            .refusals(&[room_id])
            .await
            .into_iter()
            .flatten()
            .next()
        {
            return Ok(Err(WriteError::NotOwner(shard)));
        }
        let now = self.clock.now_ms();
        let changed = if msg.typing {
            let timeout = i64::try_from(msg.timeout_ms).unwrap_or(i64::MAX);
            self.rooms
                .start(room_id, user_id, now.saturating_add(timeout), now)
        } else {
            self.rooms.stop(room_id, user_id)
        };
        if !changed {
            // A renewal may have moved the next expiry.
            self.schedule();
            return Ok(Ok(self.written(None)));
        }
        Ok(match self.write(vec![room_id.to_owned()]).await {
            Ok(position) => Ok(self.written(position)),
            Err(error) => Err(WriteError::Storage(error)),
        })
    }
}

impl Handler<GetTypingRows> for TypingWriter {
    async fn handle(
        &mut self,
        msg: GetTypingRows,
        _ctx: &mut Context,
    ) -> Result<Vec<(i64, TypingRow)>, String> {
        Ok(self.rooms.rows_between(msg.after, msg.upto))
    }
}

impl Handler<ExpireTyping> for TypingWriter {
    async fn handle(&mut self, _msg: ExpireTyping, _ctx: &mut Context) -> Result<(), String> {
        let rooms = self.rooms.expire(self.clock.now_ms());
        self.write(rooms).await.map(|_| ())
    }
}
