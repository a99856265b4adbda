//! Account data in PostgreSQL (migration 0006): for now the room account
//! data (`room_account_data`) that read markers (`m.fully_read`) are stored
//! as. One row per (user, room, type); a write replaces it and takes a new
//! position in the `account_data` stream.

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Row;

use super::StorageResult;

/// One piece of room account data and the stream position that set it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomAccountData {
    pub stream_id: i64,
    pub user_id: String,
    pub room_id: String,
    pub kind: String,
    pub content: Value,
}

const COLUMNS: &str = "stream_id, user_id, room_id, type, content";

fn room_account_data(row: &Row) -> RoomAccountData {
    RoomAccountData {
        stream_id: row.get(0),
        user_id: row.get(1),
        room_id: row.get(2),
        kind: row.get(3),
        content: row.get(4),
    }
}

/// The content of `user_id`'s account data `kind` in `room_id`, if set.
pub async fn room_content(
    client: &impl GenericClient,
    user_id: &str,
    room_id: &str,
    kind: &str,
) -> StorageResult<Option<Value>> {
    let statement = client
        .prepare_cached(
            "SELECT content FROM room_account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&user_id, &room_id, &kind])
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Sets `user_id`'s account data `kind` in `room_id` at `stream_id`.
pub async fn put_room(
    client: &impl GenericClient,
    instance: &str,
    data: &RoomAccountData,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO room_account_data (user_id, room_id, type, content, stream_id, instance_name)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (user_id, room_id, type) DO UPDATE
             SET content = EXCLUDED.content, stream_id = EXCLUDED.stream_id,
                 instance_name = EXCLUDED.instance_name",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &data.user_id,
                &data.room_id,
                &data.kind,
                &data.content,
                &data.stream_id,
                &instance,
            ],
        )
        .await?;
    Ok(())
}

/// `user_id`'s account data in `room_id` set at positions `after <
/// stream_id <= upto` (all of it from 0), in stream order.
pub async fn room_data_of_user(
    pool: &Pool,
    user_id: &str,
    room_id: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<RoomAccountData>> {
    if after >= upto {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM room_account_data
             WHERE user_id = $1 AND room_id = $2 AND stream_id > $3 AND stream_id <= $4
             ORDER BY stream_id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&user_id, &room_id, &after, &upto])
        .await?;
    Ok(rows.iter().map(room_account_data).collect())
}

/// The room account data `instance` wrote at positions `after < stream_id
/// <= upto` that is still stored, in stream order.
pub async fn written_by(
    pool: &Pool,
    instance: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<RoomAccountData>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM room_account_data
             WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&instance, &after, &upto])
        .await?;
    Ok(rows.iter().map(room_account_data).collect())
}
