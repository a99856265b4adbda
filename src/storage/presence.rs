//! The `presence_stream` table: each user's latest presence, one row per
//! user, replaced (with a new stream position) at each change.

use deadpool_postgres::{GenericClient, Pool};
use ruma::presence::PresenceState;
use tokio_postgres::Row;

use super::StorageResult;
use crate::streams::presence::PresenceStatus;

/// A stored presence row: whose, where in the stream, what.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPresence {
    pub stream_id: i64,
    pub user_id: String,
    pub status: PresenceStatus,
}

const COLUMNS: &str =
    "stream_id, user_id, state, last_active_ts, last_user_sync_ts, status_msg, currently_active";

fn stored(row: &Row) -> StoredPresence {
    StoredPresence {
        stream_id: row.get(0),
        user_id: row.get(1),
        status: PresenceStatus {
            state: PresenceState::from(row.get::<_, &str>(2)),
            last_active_ts: row.get(3),
            last_user_sync_ts: row.get(4),
            status_msg: row.get(5),
            currently_active: row.get(6),
        },
    }
}

/// Replaces `user_id`'s row with `status` at `stream_id`, written by `instance`.
pub async fn put(
    client: &impl GenericClient,
    instance: &str,
    stream_id: i64,
    user_id: &str,
    status: &PresenceStatus,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO presence_stream
                (stream_id, instance_name, user_id, state, last_active_ts, last_user_sync_ts, status_msg, currently_active)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (user_id) DO UPDATE SET
                stream_id = EXCLUDED.stream_id, instance_name = EXCLUDED.instance_name,
                state = EXCLUDED.state, last_active_ts = EXCLUDED.last_active_ts,
                last_user_sync_ts = EXCLUDED.last_user_sync_ts, status_msg = EXCLUDED.status_msg,
                currently_active = EXCLUDED.currently_active",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &stream_id,
                &instance,
                &user_id,
                &status.state.as_str(),
                &status.last_active_ts,
                &status.last_user_sync_ts,
                &status.status_msg,
                &status.currently_active,
            ],
        )
        .await?;
    Ok(())
}

/// The rooms each of `user_ids` is joined to, as `(user_id, room_id)`.
pub async fn joined_rooms_of(
    client: &impl GenericClient,
    user_ids: &[String],
) -> StorageResult<Vec<(String, String)>> {
    let statement = client
        .prepare_cached(
            "SELECT state_key, room_id FROM current_state
             WHERE type = 'm.room.member' AND state_key = ANY($1) AND membership = 'join'",
        )
        .await?;
    let rows = client.query(&statement, &[&user_ids]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// `user_id`'s presence, if it ever had one.
pub async fn of_user(pool: &Pool, user_id: &str) -> StorageResult<Option<StoredPresence>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM presence_stream WHERE user_id = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&statement, &[&user_id])
        .await?
        .as_ref()
        .map(stored))
}

/// Every stored presence (a writer's start: it keeps those of its users).
pub async fn all(pool: &Pool) -> StorageResult<Vec<StoredPresence>> {
    let client = pool.get().await?;
    let rows = client
        .query(&format!("SELECT {COLUMNS} FROM presence_stream"), &[])
        .await?;
    Ok(rows.iter().map(stored).collect())
}

/// The rows `instance` wrote at positions `after < stream_id <= upto` that
/// are still stored (a later change of the same user replaces an earlier
/// one), each with the rooms its user is joined to now, in stream order.
pub async fn written_by(
    pool: &Pool,
    instance: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<(StoredPresence, Vec<String>)>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, ARRAY(
                SELECT c.room_id FROM current_state c
                WHERE c.type = 'm.room.member' AND c.state_key = p.user_id AND c.membership = 'join')
             FROM presence_stream p
             WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3
             ORDER BY stream_id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&instance, &after, &upto])
        .await?;
    Ok(rows.iter().map(|row| (stored(row), row.get(7))).collect())
}

/// The presence of `user_id` and of every user joined to one of
/// `room_ids`, changed at positions `after < stream_id <= upto` (without
/// `after`: everyone's current one that is not `offline`, for an initial
/// sync).
pub async fn visible_to(
    pool: &Pool,
    user_id: &str,
    room_ids: &[String],
    after: Option<i64>,
    upto: i64,
) -> StorageResult<Vec<StoredPresence>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM presence_stream
             WHERE stream_id > $3 AND stream_id <= $4
               AND ($5 OR state <> 'offline')
               AND (user_id = $1 OR user_id IN (
                    SELECT state_key FROM current_state
                    WHERE type = 'm.room.member' AND membership = 'join' AND room_id = ANY($2)))
             ORDER BY stream_id"
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &user_id,
                &room_ids,
                &after.unwrap_or(0),
                &upto,
                &after.is_some(),
            ],
        )
        .await?;
    Ok(rows.iter().map(stored).collect())
}

/// Whether `a` and `b` are joined to a room together.
pub async fn share_a_room(pool: &Pool, a: &str, b: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT EXISTS (
                SELECT 1 FROM current_state x JOIN current_state y ON x.room_id = y.room_id
                WHERE x.type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join'
                  AND y.type = 'm.room.member' AND y.state_key = $2 AND y.membership = 'join')",
        )
        .await?;
    Ok(client.query_one(&statement, &[&a, &b]).await?.get(0))
}
