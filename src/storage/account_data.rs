//! Account data in PostgreSQL (migrations 0006 and 0009): the table
//! `account_data`, one row per (user, room, type), where a NULL room is
//! the user's global account data. A write replaces the row and takes a new
//! position in the `account_data` stream, so "what changed between two
//! positions" is a range of `stream_id`. Room tags are the room account
//! data `m.tag` (`{"tags": {...}}`), as `/sync` shows them.

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Row;

use super::StorageResult;

/// One piece of account data and the stream position that set it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountData {
    pub stream_id: i64,
    pub user_id: String,
    /// The room it is about; `None` for global account data.
    pub room_id: Option<String>,
    pub kind: String,
    pub content: Value,
}

const COLUMNS: &str = "stream_id, user_id, room_id, type, content";

fn account_data(row: &Row) -> AccountData {
    AccountData {
        stream_id: row.get(0),
        user_id: row.get(1),
        room_id: row.get(2),
        kind: row.get(3),
        content: row.get(4),
    }
}

/// The condition on `room_id` (parameter `$2`) for rows of `room_id`:
/// `IS NULL` for global account data, where `=` would match nothing (and
/// `IS NOT DISTINCT FROM` could not use the index).
fn same_room(room_id: Option<&str>) -> &'static str {
    match room_id {
        Some(_) => "room_id = $2",
        None => "($2::TEXT IS NULL AND room_id IS NULL)",
    }
}

/// The content of `user_id`'s account data `kind` (in `room_id`, or
/// global without one), if set.
pub async fn content(
    client: &impl GenericClient,
    user_id: &str,
    room_id: Option<&str>,
    kind: &str,
) -> StorageResult<Option<Value>> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT content FROM account_data WHERE user_id = $1 AND {} AND type = $3",
            same_room(room_id)
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&user_id, &room_id, &kind])
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// The content of `user_id`'s account data `kind` in `room_id`, if set.
pub async fn room_content(
    client: &impl GenericClient,
    user_id: &str,
    room_id: &str,
    kind: &str,
) -> StorageResult<Option<Value>> {
    content(client, user_id, Some(room_id), kind).await
}

/// Sets `data` (replacing what its user had of its type there) at its
/// `stream_id`, written by `instance`.
pub async fn put(
    client: &impl GenericClient,
    instance: &str,
    data: &AccountData,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO account_data (user_id, room_id, type, content, stream_id, instance_name)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT ON CONSTRAINT account_data_key DO UPDATE
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

/// `user_id`'s account data in `room_id` (global without one) set at
/// positions `after < stream_id <= upto` (all of it from 0), in stream
/// order.
pub async fn data_of_user(
    pool: &Pool,
    user_id: &str,
    room_id: Option<&str>,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<AccountData>> {
    if after >= upto {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM account_data
             WHERE user_id = $1 AND {} AND stream_id > $3 AND stream_id <= $4
             ORDER BY stream_id",
            same_room(room_id)
        ))
        .await?;
    let rows = client
        .query(&statement, &[&user_id, &room_id, &after, &upto])
        .await?;
    Ok(rows.iter().map(account_data).collect())
}

/// The account data `instance` wrote at positions `after < stream_id <=
/// upto` that is still stored (global and per room), in stream order.
pub async fn written_by(
    pool: &Pool,
    instance: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<AccountData>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM account_data
             WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&instance, &after, &upto])
        .await?;
    Ok(rows.iter().map(account_data).collect())
}
