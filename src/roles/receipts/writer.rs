//! The receipts writer: commits the receipts queued in its inbox in one
//! PostgreSQL transaction (group commit), then finishes their positions in
//! the receipts stream (wake-ups, `RDATA`). Each receipt is checked against
//! its room (the event must be one of the room's) and against the stored
//! receipt of the same user, type and thread: one for an earlier event is
//! accepted and changes nothing, as in Synapse.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler};
use serde_json::{json, Value};

use super::{PutReceipt, ReceiptWritten};
use crate::roles::WriteError;
use crate::shards::ShardMap;
use crate::storage::receipts::{self, Receipt};
use crate::storage::{StorageError, StorageResult};
use crate::streams::receipts::receipt_row;
use crate::streams::writer::StreamWriter;

/// Receipts of one user, type and thread in one room replace each other.
type ReceiptKey = (String, String, String, Option<String>);

fn receipt_key(receipt: &Receipt) -> ReceiptKey {
    (
        receipt.room_id.clone(),
        receipt.receipt_type.clone(),
        receipt.user_id.clone(),
        receipt.thread_id.clone(),
    )
}

/// What to do with one receipt of a batch.
#[derive(Debug)]
enum Decision {
    Refused(WriteError),
    /// The stored receipt (or an earlier one of the batch) points to the
    /// same or a later event.
    Unchanged,
    /// Write it; the receipted event's position in the events stream.
    Write(i64),
}

/// Decides, in the order given, which receipts of a batch move forward:
/// `event_position` is each receipted event's position (None: not an event
/// of the room) and `stored` the position its key points to now. A receipt
/// of the batch counts as stored for the ones after it.
struct Decider {
    latest: HashMap<ReceiptKey, i64>,
}

impl Decider {
    fn new() -> Decider {
        Decider {
            latest: HashMap::new(),
        }
    }

    /// The position the batch so far left `receipt`'s key at, if any.
    fn written_in_batch(&self, receipt: &Receipt) -> Option<i64> {
        self.latest.get(&receipt_key(receipt)).copied()
    }

    fn decide(
        &mut self,
        receipt: &Receipt,
        event_position: Option<i64>,
        stored: Option<i64>,
    ) -> Decision {
        let Some(position) = event_position else {
            return Decision::Refused(WriteError::NotFound(format!(
                "event {} not found in this room",
                receipt.event_id
            )));
        };
        let current = self.written_in_batch(receipt).or(stored);
        if current.is_some_and(|current| current >= position) {
            return Decision::Unchanged;
        }
        self.latest.insert(receipt_key(receipt), position);
        Decision::Write(position)
    }
}

pub struct ReceiptsWriter {
    pool: Pool,
    /// Which rooms' shards this writer holds: it writes only those.
    shards: Arc<ShardMap>,
    /// The receipts stream's writing end: positions, wake-ups, replication.
    writer: StreamWriter,
    receipts_stored: u64,
    receipts_unchanged: u64,
    receipts_refused: u64,
    batches: u64,
    writes_failed: u64,
}

impl ReceiptsWriter {
    pub fn new(pool: Pool, writer: StreamWriter, shards: Arc<ShardMap>) -> ReceiptsWriter {
        ReceiptsWriter {
            pool,
            shards,
            writer,
            receipts_stored: 0,
            receipts_unchanged: 0,
            receipts_refused: 0,
            batches: 0,
            writes_failed: 0,
        }
    }

    /// Commits `requests` in one transaction; each gets its own answer.
    /// Those of rooms whose shard is not held here are refused (`NotOwner`).
    async fn put(&mut self, requests: Vec<PutReceipt>) -> Vec<Result<ReceiptWritten, WriteError>> {
        self.batches += 1;
        let shards = self.shards.clone();
        crate::roles::owned_only(
            &shards,
            requests,
            |request| vec![request.room_id.to_string()],
            |kept| async {
                let count = kept.len();
                match self.put_in_transaction(kept).await {
                    Ok(answers) => answers,
                    Err(error) => {
                        if !matches!(error, StorageError::Fenced { .. }) {
                            self.writes_failed += 1;
                        }
                        vec![Err(WriteError::from_storage(error, "the receipts")); count]
                    }
                }
            },
        )
        .await
    }

    async fn put_in_transaction(
        &mut self,
        requests: Vec<PutReceipt>,
    ) -> StorageResult<Vec<Result<ReceiptWritten, WriteError>>> {
        let instance = self.writer.instance().to_owned();
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        self.shards
            .fence(&transaction, requests.iter().map(|r| r.room_id.as_str()))
            .await?;
        let mut decider = Decider::new();
        let mut decisions = Vec::with_capacity(requests.len());
        for request in requests {
            let receipt = Receipt {
                room_id: request.room_id.to_string(),
                receipt_type: request.receipt_type.as_str().to_owned(),
                user_id: request.user_id.to_string(),
                thread_id: request.thread_id,
                event_id: request.event_id.to_string(),
                data: json!({ "ts": request.ts }),
            };
            let event_position =
                receipts::event_position_in_room(&transaction, &receipt.room_id, &receipt.event_id)
                    .await?;
            let stored = match (event_position, decider.written_in_batch(&receipt)) {
                (Some(_), None) => receipts::receipted_position(&transaction, &receipt).await?,
                _ => None,
            };
            let decision = decider.decide(&receipt, event_position, stored);
            decisions.push((receipt, decision));
        }
        let to_write = decisions
            .iter()
            .filter(|(_, d)| matches!(d, Decision::Write(_)))
            .count();
        let positions = if to_write == 0 {
            Vec::new()
        } else {
            self.writer.allocate(&transaction, to_write).await?
        };
        let written = self
            .write(&transaction, &instance, &decisions, &positions)
            .await;
        let written = match written {
            Ok(written) => match transaction.commit().await {
                Ok(()) => written,
                Err(error) => {
                    self.writer.abandon(&positions);
                    return Err(error.into());
                }
            },
            Err(error) => {
                self.writer.abandon(&positions);
                return Err(error);
            }
        };
        if !positions.is_empty() {
            let rows: Vec<(i64, Value)> = written
                .iter()
                .flatten()
                .map(|(position, receipt)| (*position, receipt_row(receipt)))
                .collect();
            let keys = written
                .iter()
                .flatten()
                .map(|(_, receipt)| receipt.room_id.clone())
                .collect();
            self.writer.finish_with_keys(&positions, keys, || rows);
        }
        let answers = decisions
            .into_iter()
            .zip(written)
            .map(|((_, decision), written)| match decision {
                Decision::Refused(error) => {
                    self.receipts_refused += 1;
                    Err(error)
                }
                Decision::Unchanged | Decision::Write(_) => {
                    match written {
                        Some(_) => self.receipts_stored += 1,
                        None => self.receipts_unchanged += 1,
                    }
                    Ok(ReceiptWritten {
                        instance: instance.clone(),
                        position: written.map(|(position, _)| position),
                    })
                }
            })
            .collect();
        Ok(answers)
    }

    /// Upserts the receipts decided to be written, with the stream position
    /// in the same transaction. Per decision, the position and receipt
    /// stored (None when nothing was: refused, unchanged, or a concurrent
    /// write got there first with a later event).
    async fn write(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
        instance: &str,
        decisions: &[(Receipt, Decision)],
        positions: &[i64],
    ) -> StorageResult<Vec<Option<(i64, Receipt)>>> {
        let mut positions = positions.iter().copied();
        let mut written = Vec::with_capacity(decisions.len());
        for (receipt, decision) in decisions {
            let Decision::Write(event_position) = decision else {
                written.push(None);
                continue;
            };
            let position = positions
                .next()
                .ok_or_else(|| StorageError::Corrupt("fewer positions than receipts".into()))?;
            let stored =
                receipts::upsert(transaction, position, instance, receipt, *event_position).await?;
            written.push(stored.then(|| (position, receipt.clone())));
        }
        let used: Vec<i64> = written.iter().flatten().map(|(p, _)| *p).collect();
        self.writer.store_position(transaction, &used).await?;
        Ok(written)
    }
}

impl Actor for ReceiptsWriter {
    async fn started(&mut self, _ctx: &mut Context) -> Result<(), String> {
        // A restarted incarnation may have lost track of positions the one
        // before it allocated: reload them.
        self.writer
            .reload(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn observe(&self) -> Value {
        let mut snapshot = self.writer.observe();
        snapshot.insert("receipts_stored".into(), json!(self.receipts_stored));
        snapshot.insert("receipts_unchanged".into(), json!(self.receipts_unchanged));
        snapshot.insert("receipts_refused".into(), json!(self.receipts_refused));
        snapshot.insert("batches".into(), json!(self.batches));
        snapshot.insert("writes_failed".into(), json!(self.writes_failed));
        Value::Object(snapshot)
    }
}

impl Handler<PutReceipt> for ReceiptsWriter {
    /// Receipts that queue up while a transaction commits go into the next one.
    const BATCH_LIMIT: usize = 100;

    async fn handle(
        &mut self,
        msg: PutReceipt,
        _ctx: &mut Context,
    ) -> Result<Result<ReceiptWritten, WriteError>, String> {
        Ok(crate::roles::sole_answer(self.put(vec![msg]).await))
    }

    async fn handle_batch(
        &mut self,
        msgs: Vec<PutReceipt>,
        _ctx: &mut Context,
    ) -> Vec<Result<Result<ReceiptWritten, WriteError>, String>> {
        self.put(msgs).await.into_iter().map(Ok).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(user: &str, thread: Option<&str>) -> Receipt {
        Receipt {
            room_id: "!r:x".into(),
            receipt_type: "m.read".into(),
            user_id: user.into(),
            thread_id: thread.map(str::to_owned),
            event_id: "$e".into(),
            data: json!({ "ts": 1 }),
        }
    }

    #[test]
    fn a_receipt_never_moves_back() {
        let mut decider = Decider::new();
        // Forward from what is stored: written.
        assert!(matches!(
            decider.decide(&receipt("@a:x", None), Some(10), Some(5)),
            Decision::Write(10)
        ));
        // Back, or to the same event, from what the batch wrote: unchanged.
        assert!(matches!(
            decider.decide(&receipt("@a:x", None), Some(8), None),
            Decision::Unchanged
        ));
        assert!(matches!(
            decider.decide(&receipt("@a:x", None), Some(10), None),
            Decision::Unchanged
        ));
        // Back from what is stored: unchanged.
        assert!(matches!(
            decider.decide(&receipt("@b:x", None), Some(3), Some(5)),
            Decision::Unchanged
        ));
        // Each thread, and each user, has its own receipt.
        assert!(matches!(
            decider.decide(&receipt("@a:x", Some("main")), Some(4), None),
            Decision::Write(4)
        ));
        assert!(matches!(
            decider.decide(&receipt("@c:x", None), Some(1), None),
            Decision::Write(1)
        ));
    }

    #[test]
    fn an_event_of_another_room_is_refused() {
        let mut decider = Decider::new();
        assert!(matches!(
            decider.decide(&receipt("@a:x", None), None, None),
            Decision::Refused(WriteError::NotFound(_))
        ));
        // And leaves nothing behind for the receipts after it.
        assert!(matches!(
            decider.decide(&receipt("@a:x", None), Some(1), None),
            Decision::Write(1)
        ));
    }
}
