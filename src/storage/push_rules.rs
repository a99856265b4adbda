//! Push rules in PostgreSQL (migration 0011): one row per user who changed
//! their rules, holding all their changes (`push::rules::UserRules` as
//! JSON); a write replaces it and takes a new position in the `push_rules`
//! stream. A user without a row has the server defaults.

use deadpool_postgres::{GenericClient, Pool};
use serde_json::Value;

use super::StorageResult;

/// `user_id`'s stored rules, if they changed any.
pub async fn rules_of_user(
    client: &impl GenericClient,
    user_id: &str,
) -> StorageResult<Option<Value>> {
    let statement = client
        .prepare_cached("SELECT rules FROM push_rules WHERE user_id = $1")
        .await?;
    let row = client.query_opt(&statement, &[&user_id]).await?;
    Ok(row.map(|row| row.get(0)))
}

/// The stored rules of those of `user_ids` who changed theirs, in one query.
pub async fn rules_of_users(pool: &Pool, user_ids: &[&str]) -> StorageResult<Vec<(String, Value)>> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT user_id, rules FROM push_rules WHERE user_id = ANY($1)")
        .await?;
    let rows = client.query(&statement, &[&user_ids]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Sets `user_id`'s rules at `stream_id`.
pub async fn put(
    client: &impl GenericClient,
    instance: &str,
    user_id: &str,
    rules: &Value,
    stream_id: i64,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO push_rules (user_id, rules, stream_id, instance_name) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE
             SET rules = EXCLUDED.rules, stream_id = EXCLUDED.stream_id,
                 instance_name = EXCLUDED.instance_name",
        )
        .await?;
    client
        .execute(&statement, &[&user_id, rules, &stream_id, &instance])
        .await?;
    Ok(())
}

/// The users whose rules `instance` wrote at positions `after < stream_id
/// <= upto` and still holds, in stream order.
pub async fn written_by(
    pool: &Pool,
    instance: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<(i64, String)>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT stream_id, user_id FROM push_rules
             WHERE instance_name = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id",
        )
        .await?;
    let rows = client
        .query(&statement, &[&instance, &after, &upto])
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}
