//! The rows of the `caches` stream (`cache_invalidation_stream_by_instance`):
//! written by any instance, read back by instances catching up.

use deadpool_postgres::Pool;

use super::{StorageError, StorageResult};
use crate::streams::caches::Invalidation;
use crate::util::now_ms;

/// Writes `invalidation` as `instance`'s next row; its stream id.
pub async fn insert(
    pool: &Pool,
    instance: &str,
    invalidation: &Invalidation,
) -> StorageResult<i64> {
    let client = pool.get().await?;
    let keys = serde_json::to_value(&invalidation.keys)
        .map_err(|e| StorageError::Corrupt(format!("cache keys: {e}")))?;
    let row = client
        .query_one(
            "INSERT INTO cache_invalidation_stream_by_instance
               (stream_id, instance_name, cache_func, keys, invalidation_ts)
             VALUES (nextval('cache_invalidation_stream_seq'), $1, $2, $3, $4)
             RETURNING stream_id",
            &[&instance, &invalidation.cache, &keys, &now_ms()],
        )
        .await?;
    Ok(row.get(0))
}

/// The highest id handed out so far: every invalidation at or below it was
/// written before this call (or is being written now).
pub async fn last_allocated(pool: &Pool) -> StorageResult<i64> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT last_value FROM cache_invalidation_stream_seq", &[])
        .await?;
    Ok(row.get(0))
}

/// The id of `instance`'s last row (0 when it wrote none).
pub async fn last_written_by(pool: &Pool, instance: &str) -> StorageResult<i64> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT COALESCE(MAX(stream_id), 0) FROM cache_invalidation_stream_by_instance
             WHERE instance_name = $1",
            &[&instance],
        )
        .await?;
    Ok(row.get(0))
}

/// Each writer's newest row after `after`, as `(writer, stream_id)`.
pub async fn newest_by_writer_after(pool: &Pool, after: i64) -> StorageResult<Vec<(String, i64)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT instance_name, MAX(stream_id) FROM cache_invalidation_stream_by_instance
             WHERE stream_id > $1 GROUP BY instance_name",
            &[&after],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Rows with `after < stream_id <= upto` (any writer when `writer` is
/// `None`), in stream order, as `(stream_id, writer, invalidation)`.
pub async fn written_between(
    pool: &Pool,
    writer: Option<&str>,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<(i64, String, Invalidation)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT stream_id, instance_name, cache_func, keys
             FROM cache_invalidation_stream_by_instance
             WHERE ($1::TEXT IS NULL OR instance_name = $1) AND stream_id > $2 AND stream_id <= $3
             ORDER BY stream_id",
            &[&writer, &after, &upto],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let keys: serde_json::Value = row.get(3);
            let keys = serde_json::from_value(keys)
                .map_err(|e| StorageError::Corrupt(format!("cache keys: {e}")))?;
            Ok((
                row.get(0),
                row.get(1),
                Invalidation {
                    cache: row.get(2),
                    keys,
                },
            ))
        })
        .collect()
}

/// Deletes the invalidations written before `before_ts`; how many went.
pub async fn delete_older_than(pool: &Pool, before_ts: i64) -> StorageResult<u64> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM cache_invalidation_stream_by_instance WHERE invalidation_ts < $1",
            &[&before_ts],
        )
        .await?)
}
