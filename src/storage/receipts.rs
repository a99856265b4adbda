//! Receipts in PostgreSQL (`receipts`, migration 0006): each user's latest
//! receipt of each type in each room and thread. The writer's statements
//! (the receipted event's position, the stored receipt's, the upsert that
//! never moves a receipt back) run in its transaction; the readers' select
//! the rows a room had set between two stream positions, or the rows one
//! writer wrote (replication's catch-up).

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Row;

use super::StorageResult;

/// One receipt: who read up to which event, of which type, in which thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub room_id: String,
    pub receipt_type: String,
    pub user_id: String,
    /// None: unthreaded; `main` or a thread root's event id.
    pub thread_id: Option<String>,
    pub event_id: String,
    /// What clients see beside the event id: `{"ts": ...}`.
    pub data: Value,
}

/// A stored receipt and the stream position that set it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReceipt {
    pub stream_id: i64,
    pub receipt: Receipt,
}

const RECEIPT_COLUMNS: &str =
    "stream_id, room_id, receipt_type, user_id, thread_id, event_id, data";

fn stored_receipt(row: &Row) -> StoredReceipt {
    StoredReceipt {
        stream_id: row.get(0),
        receipt: Receipt {
            room_id: row.get(1),
            receipt_type: row.get(2),
            user_id: row.get(3),
            thread_id: row.get(4),
            event_id: row.get(5),
            data: row.get(6),
        },
    }
}

/// The position in the events stream of `event_id`, if it is an event of
/// `room_id`.
pub async fn event_position_in_room(
    client: &impl GenericClient,
    room_id: &str,
    event_id: &str,
) -> StorageResult<Option<i64>> {
    let statement = client
        .prepare_cached("SELECT stream_ordering FROM events WHERE event_id = $1 AND room_id = $2")
        .await?;
    let row = client.query_opt(&statement, &[&event_id, &room_id]).await?;
    Ok(row.map(|row| row.get(0)))
}

/// The events-stream position of the event the stored receipt of this
/// (room, type, user, thread) points to, if there is one.
pub async fn receipted_position(
    client: &impl GenericClient,
    receipt: &Receipt,
) -> StorageResult<Option<i64>> {
    let statement = client
        .prepare_cached(
            "SELECT event_stream_ordering FROM receipts
             WHERE room_id = $1 AND receipt_type = $2 AND user_id = $3
               AND thread_id IS NOT DISTINCT FROM $4",
        )
        .await?;
    let row = client
        .query_opt(
            &statement,
            &[
                &receipt.room_id,
                &receipt.receipt_type,
                &receipt.user_id,
                &receipt.thread_id,
            ],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Stores `receipt` at `stream_id` unless the stored one points to the same
/// or a later event (`event_position` is the receipted event's). True when
/// the row was written.
pub async fn upsert(
    client: &impl GenericClient,
    stream_id: i64,
    instance: &str,
    receipt: &Receipt,
    event_position: i64,
) -> StorageResult<bool> {
    let statement = client
        .prepare_cached(
            "INSERT INTO receipts (stream_id, instance_name, room_id, receipt_type, user_id, thread_id,
                                   event_id, event_stream_ordering, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT ON CONSTRAINT receipts_key DO UPDATE
             SET stream_id = EXCLUDED.stream_id, instance_name = EXCLUDED.instance_name,
                 event_id = EXCLUDED.event_id,
                 event_stream_ordering = EXCLUDED.event_stream_ordering, data = EXCLUDED.data
             WHERE receipts.event_stream_ordering < EXCLUDED.event_stream_ordering",
        )
        .await?;
    let written = client
        .execute(
            &statement,
            &[
                &stream_id,
                &instance,
                &receipt.room_id,
                &receipt.receipt_type,
                &receipt.user_id,
                &receipt.thread_id,
                &receipt.event_id,
                &event_position,
                &receipt.data,
            ],
        )
        .await?;
    Ok(written == 1)
}

/// The receipts of `room_ids` set at positions `after < stream_id <= upto`,
/// in stream order.
pub async fn receipts_in_rooms(
    pool: &Pool,
    room_ids: &[String],
    after: i64,
    upto: i64,
) -> StorageResult<Vec<StoredReceipt>> {
    if room_ids.is_empty() || after >= upto {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts
             WHERE room_id = ANY($1) AND stream_id > $2 AND stream_id <= $3
             ORDER BY stream_id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&room_ids, &after, &upto])
        .await?;
    Ok(rows.iter().map(stored_receipt).collect())
}

/// The receipts `instance` wrote at positions `after < stream_id <= upto`
/// that are still stored (a later receipt of the same user replaces an
/// earlier one), in stream order.
pub async fn written_by(
    pool: &Pool,
    instance: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<StoredReceipt>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts
             WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3
             ORDER BY stream_id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&instance, &after, &upto])
        .await?;
    Ok(rows.iter().map(stored_receipt).collect())
}
