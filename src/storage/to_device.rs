//! To-device messages in PostgreSQL (migration 0018): `device_inbox`, one
//! row per (receiving device, position) until the device acknowledges it,
//! and `to_device_txns`, the transaction ids that make a send idempotent.
//! The writers (`roles/to_device`) store; `/sync` reads and deletes.

use deadpool_postgres::{GenericClient, Pool};
use serde_json::Value;

use super::StorageResult;

/// A message to store: for `device_id` of `user_id`, at `stream_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxMessage {
    pub user_id: String,
    pub device_id: String,
    pub stream_id: i64,
    pub sender: String,
    pub kind: String,
    pub content: Value,
}

/// The devices of each of `user_ids`, as `(user, device)` pairs.
pub async fn devices_of(
    client: &impl GenericClient,
    user_ids: &[String],
) -> StorageResult<Vec<(String, String)>> {
    let statement = client
        .prepare_cached("SELECT user_id, device_id FROM devices WHERE user_id = ANY($1)")
        .await?;
    let rows = client.query(&statement, &[&user_ids]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Records that the whole send of `txn_id` was stored (every part of it).
pub async fn record_whole_txn(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id, part, created_ts)
             VALUES ($1, $2, $3, '', $4) ON CONFLICT DO NOTHING",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&user_id, &device_id, &txn_id, &crate::util::now_ms()],
        )
        .await?;
    Ok(())
}

/// Records the part of a send for each of `receivers` (user ids) and
/// returns those not recorded before: the others' messages are stored
/// already, by whichever writer owned them then.
pub async fn record_txn_parts(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
    receivers: &[&str],
) -> StorageResult<Vec<String>> {
    let statement = client
        .prepare_cached(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id, part, created_ts)
             SELECT $1, $2, $3, receiver, $5 FROM unnest($4::text[]) AS receiver
             ON CONFLICT DO NOTHING
             RETURNING part",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &user_id,
                &device_id,
                &txn_id,
                &receivers,
                &crate::util::now_ms(),
            ],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Whether the whole send of `txn_id` was stored (every part of it).
pub async fn txn_complete(
    pool: &Pool,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
) -> StorageResult<bool> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT 1 FROM to_device_txns
             WHERE user_id = $1 AND device_id = $2 AND txn_id = $3 AND part = ''",
        )
        .await?;
    Ok(client
        .query_opt(&statement, &[&user_id, &device_id, &txn_id])
        .await?
        .is_some())
}

/// Stores `messages`, written by `instance`, in one statement.
pub async fn insert(
    client: &impl GenericClient,
    instance: &str,
    messages: &[InboxMessage],
) -> StorageResult<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut user_ids = Vec::with_capacity(messages.len());
    let mut device_ids = Vec::with_capacity(messages.len());
    let mut stream_ids = Vec::with_capacity(messages.len());
    let mut senders = Vec::with_capacity(messages.len());
    let mut kinds = Vec::with_capacity(messages.len());
    let mut contents = Vec::with_capacity(messages.len());
    for message in messages {
        user_ids.push(message.user_id.as_str());
        device_ids.push(message.device_id.as_str());
        stream_ids.push(message.stream_id);
        senders.push(message.sender.as_str());
        kinds.push(message.kind.as_str());
        contents.push(&message.content);
    }
    let statement = client
        .prepare_cached(
            "INSERT INTO device_inbox
                 (user_id, device_id, stream_id, instance_name, sender, type, content)
             SELECT u, d, s, $4, se, t, c
             FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $5::TEXT[], $6::TEXT[], $7::JSONB[])
                 AS m (u, d, s, se, t, c)",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &user_ids,
                &device_ids,
                &stream_ids,
                &instance,
                &senders,
                &kinds,
                &contents,
            ],
        )
        .await?;
    Ok(())
}

/// The messages of `device_id` of `user_id` at positions `after <
/// position <= upto`, oldest first, at most `limit`: `(position, {"sender",
/// "type", "content"})`.
pub async fn messages_for_device(
    pool: &Pool,
    user_id: &str,
    device_id: &str,
    after: i64,
    upto: i64,
    limit: i64,
) -> StorageResult<Vec<(i64, Value)>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT stream_id, sender, type, content FROM device_inbox
             WHERE user_id = $1 AND device_id = $2 AND stream_id > $3 AND stream_id <= $4
             ORDER BY stream_id LIMIT $5",
        )
        .await?;
    let rows = client
        .query(&statement, &[&user_id, &device_id, &after, &upto, &limit])
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let (sender, kind, content): (String, String, Value) =
                (row.get(1), row.get(2), row.get(3));
            (
                row.get(0),
                serde_json::json!({ "sender": sender, "type": kind, "content": content }),
            )
        })
        .collect())
}

/// Deletes the messages of `device_id` of `user_id` up to `upto`: the
/// device has them. The number deleted.
pub async fn delete_delivered(
    pool: &Pool,
    user_id: &str,
    device_id: &str,
    upto: i64,
) -> StorageResult<u64> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "DELETE FROM device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3",
        )
        .await?;
    Ok(client
        .execute(&statement, &[&user_id, &device_id, &upto])
        .await?)
}

/// The recipients of what `instance` wrote at positions `after < position
/// <= upto` (and is still undelivered), by position: the stream's catch-up.
pub async fn written_by(
    pool: &Pool,
    instance: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<(i64, Vec<String>)>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT stream_id, ARRAY_AGG(DISTINCT user_id) FROM device_inbox
             WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3
             GROUP BY stream_id ORDER BY stream_id",
        )
        .await?;
    let rows = client
        .query(&statement, &[&instance, &after, &upto])
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}
