//! The `device_lists` stream in PostgreSQL (migration 0017): the table
//! `device_lists_stream`, one row per change of a user's devices, and the
//! membership reads that say whose device lists a user follows (everyone
//! sharing a room with them).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::StorageResult;

/// One row of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListChange {
    pub stream_id: i64,
    pub user_id: String,
    /// The device (or cross-signing public key) that changed; `None` for a
    /// change of the signatures `user_id` made of `signed_user_id`'s keys.
    pub device_id: Option<String>,
    pub signed_user_id: Option<String>,
}

fn change(row: &Row) -> DeviceListChange {
    DeviceListChange {
        stream_id: row.get(0),
        user_id: row.get(1),
        device_id: row.get(2),
        signed_user_id: row.get(3),
    }
}

/// Stores `changes`, written by `instance`.
pub async fn insert_changes(
    client: &impl GenericClient,
    instance: &str,
    changes: &[DeviceListChange],
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO device_lists_stream
                 (stream_id, instance_name, user_id, device_id, signed_user_id)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    for change in changes {
        client
            .execute(
                &statement,
                &[
                    &change.stream_id,
                    &instance,
                    &change.user_id,
                    &change.device_id,
                    &change.signed_user_id,
                ],
            )
            .await?;
    }
    Ok(())
}

/// The rows `instance` wrote at `after < stream_id <= upto`, in order.
pub async fn written_by(
    client: &impl GenericClient,
    instance: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<DeviceListChange>> {
    let statement = client
        .prepare_cached(
            "SELECT stream_id, user_id, device_id, signed_user_id FROM device_lists_stream
             WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id",
        )
        .await?;
    let rows = client
        .query(&statement, &[&instance, &after, &upto])
        .await?;
    Ok(rows.iter().map(change).collect())
}

/// Those of `user_ids` whose devices changed at `after < stream_id <= upto`.
pub async fn users_with_changed_devices(
    client: &impl GenericClient,
    user_ids: &[String],
    after: i64,
    upto: i64,
) -> StorageResult<Vec<String>> {
    let statement = client
        .prepare_cached(
            "SELECT DISTINCT user_id FROM device_lists_stream
             WHERE user_id = ANY($1) AND stream_id > $2 AND stream_id <= $3
               AND signed_user_id IS NULL",
        )
        .await?;
    let rows = client
        .query(&statement, &[&user_ids, &after, &upto])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The users whose keys `signer` signed (or unsigned) at
/// `after < stream_id <= upto`.
pub async fn users_signed_by(
    client: &impl GenericClient,
    signer: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<String>> {
    let statement = client
        .prepare_cached(
            "SELECT DISTINCT signed_user_id FROM device_lists_stream
             WHERE user_id = $1 AND stream_id > $2 AND stream_id <= $3
               AND signed_user_id IS NOT NULL",
        )
        .await?;
    let rows = client.query(&statement, &[&signer, &after, &upto]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The users joined to a room `user_id` is joined to (`user_id` among them
/// when joined anywhere).
pub async fn users_sharing_a_room(
    client: &impl GenericClient,
    user_id: &str,
) -> StorageResult<Vec<String>> {
    let statement = client
        .prepare_cached(
            "SELECT DISTINCT other.state_key FROM current_state mine
             JOIN current_state other ON other.room_id = mine.room_id
                 AND other.type = 'm.room.member' AND other.membership = 'join'
             WHERE mine.type = 'm.room.member' AND mine.state_key = $1
               AND mine.membership = 'join'",
        )
        .await?;
    let rows = client.query(&statement, &[&user_id]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The rooms `user_ids` are joined to, as `(user_id, room_id)`.
pub async fn joined_rooms_of_users(
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

/// The members (joined, invited) of `room_ids`.
pub async fn members_of_rooms(
    client: &impl GenericClient,
    room_ids: &[String],
) -> StorageResult<Vec<String>> {
    let statement = client
        .prepare_cached(
            "SELECT DISTINCT state_key FROM current_state
             WHERE room_id = ANY($1) AND type = 'm.room.member'
               AND membership IN ('join', 'invite')",
        )
        .await?;
    let rows = client.query(&statement, &[&room_ids]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The membership changes in `room_ids` at `after < stream_ordering <=
/// upto`, as `(room_id, user_id, membership)`, in order.
pub async fn membership_changes_in_rooms(
    client: &impl GenericClient,
    room_ids: &[String],
    after: i64,
    upto: i64,
) -> StorageResult<Vec<(String, String, String)>> {
    let statement = client
        .prepare_cached(
            "SELECT room_id, user_id, membership FROM membership_history
             WHERE room_id = ANY($1) AND stream_ordering > $2 AND stream_ordering <= $3
             ORDER BY stream_ordering",
        )
        .await?;
    let rows = client
        .query(&statement, &[&room_ids, &after, &upto])
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// The rooms whose membership of `user_id` changed at `after <
/// stream_ordering <= upto`.
pub async fn rooms_with_own_membership_changes(
    client: &impl GenericClient,
    user_id: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<String>> {
    let statement = client
        .prepare_cached(
            "SELECT DISTINCT room_id FROM membership_history
             WHERE user_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3",
        )
        .await?;
    let rows = client.query(&statement, &[&user_id, &after, &upto]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The ids of `user_id`'s devices.
pub async fn device_ids(client: &impl GenericClient, user_id: &str) -> StorageResult<Vec<String>> {
    let statement = client
        .prepare_cached("SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id")
        .await?;
    let rows = client.query(&statement, &[&user_id]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
