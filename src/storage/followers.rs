//! Stream followers' checkpoints (`streams::follower`).

use deadpool_postgres::Pool;

use super::StorageResult;
use crate::util::now_ms;

/// Where `follower` has processed its stream up to, if it ever started.
pub async fn checkpoint(pool: &Pool, follower: &str) -> StorageResult<Option<i64>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT position FROM stream_followers WHERE follower = $1",
            &[&follower],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Records that `follower` has processed `stream` up to `position`.
pub async fn store_checkpoint(
    pool: &Pool,
    follower: &str,
    stream: &str,
    position: i64,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO stream_followers (follower, stream_name, position, updated_ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (follower) DO UPDATE SET stream_name = EXCLUDED.stream_name,
               position = EXCLUDED.position, updated_ts = EXCLUDED.updated_ts",
            &[&follower, &stream, &position, &now_ms()],
        )
        .await?;
    Ok(())
}
