//! Stream positions in PostgreSQL: loading a stream's positions at start-up
//! (Synapse's `_load_current_ids`, `reference/synapse-workers.md` §5.5: the
//! `stream_positions` rows, the sequence, and the rows written since the
//! lowest known position) and recording a writer's position.

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;

use super::StorageResult;
use crate::streams::id_gen::{LoadedPositions, StreamPositions};
use crate::streams::registry::{Storage, StreamSpec};

/// Where a stored stream's rows live, so the loader can scan them.
#[derive(Debug)]
pub struct StreamTable {
    pub table: &'static str,
    pub instance_column: &'static str,
    pub id_column: &'static str,
}

/// Records that `instance` has written `stream` up to `position` (never
/// moving it back); run it in the transaction that wrote the rows.
pub async fn store_position(
    client: &impl GenericClient,
    stream: &str,
    instance: &str,
    position: i64,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES ($1, $2, $3)
             ON CONFLICT (stream_name, instance_name) DO UPDATE SET stream_id = EXCLUDED.stream_id
             WHERE stream_positions.stream_id < EXCLUDED.stream_id",
        )
        .await?;
    client
        .execute(&statement, &[&stream, &instance, &position])
        .await?;
    Ok(())
}

/// Every writer's recorded position, as `(stream, instance, position)`.
pub async fn recorded_positions(pool: &Pool) -> StorageResult<Vec<(String, String, i64)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT stream_name, instance_name, stream_id FROM stream_positions",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// How far each writer of `stream` has written as PostgreSQL says, as
/// `(instance, position)`: the greater of its `stream_positions` row and the
/// claim it stored.
pub async fn written_positions(pool: &Pool, stream: &str) -> StorageResult<Vec<(String, i64)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT instance_name, MAX(position) FROM (
               SELECT instance_name, stream_id AS position FROM stream_positions WHERE stream_name = $1
               UNION ALL
               SELECT instance_name, position FROM stream_claims WHERE stream_name = $1
             ) AS written GROUP BY instance_name",
            &[&stream],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Stores that `instance` announced it claims `stream` up to `position`
/// (never moving it back), for readers that cannot hear it.
pub async fn store_claim(
    pool: &Pool,
    stream: &str,
    instance: &str,
    position: i64,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO stream_claims (stream_name, instance_name, position, claimed_ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream_name, instance_name) DO UPDATE
             SET position = EXCLUDED.position, claimed_ts = EXCLUDED.claimed_ts
             WHERE stream_claims.position < EXCLUDED.position",
            &[&stream, &instance, &position, &crate::util::now_ms()],
        )
        .await?;
    Ok(())
}

pub async fn load_positions(
    pool: &Pool,
    spec: &StreamSpec,
    local_instance: &str,
    writers: &[String],
) -> StorageResult<StreamPositions> {
    let client = pool.get().await?;
    if !writers.is_empty() {
        // A writer that was removed from the config starts afresh if re-added.
        client
            .execute(
                "DELETE FROM stream_positions WHERE stream_name = $1 AND NOT (instance_name = ANY($2))",
                &[&spec.name, &writers],
            )
            .await?;
        client
            .execute(
                "DELETE FROM stream_claims WHERE stream_name = $1 AND NOT (instance_name = ANY($2))",
                &[&spec.name, &writers],
            )
            .await?;
    }
    let stream_positions: Vec<(String, i64)> = client
        .query(
            "SELECT instance_name, stream_id FROM stream_positions WHERE stream_name = $1",
            &[&spec.name],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let is_writer = writers.iter().any(|w| w == local_instance);
    let sequence_last_value: Option<i64> = if is_writer {
        let row = client
            .query_one(&format!("SELECT last_value FROM {}", spec.sequence), &[])
            .await?;
        Some(row.get(0))
    } else {
        None
    };
    let mut loaded = LoadedPositions {
        stream_positions,
        sequence_last_value,
        ..Default::default()
    };
    let table = match spec.storage {
        Storage::Postgres(table) => table,
        // Rows in writers' memory: positions are all there is to load.
        Storage::Memory => return Ok(StreamPositions::new(local_instance, writers, loaded)),
    };
    match StreamPositions::startup_scan_from(
        local_instance,
        writers,
        &loaded.stream_positions,
        sequence_last_value,
    ) {
        Some(min) => {
            loaded.rows_from_min = client
                .query(
                    &format!(
                        "SELECT {}, {} FROM {} WHERE {} >= $1 ORDER BY {}",
                        table.instance_column,
                        table.id_column,
                        table.table,
                        table.id_column,
                        table.id_column
                    ),
                    &[&min],
                )
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
        }
        None => {
            let row = client
                .query_one(
                    &format!("SELECT MAX({}) FROM {}", table.id_column, table.table),
                    &[],
                )
                .await?;
            loaded.max_table_id = row.get(0);
        }
    }
    Ok(StreamPositions::new(local_instance, writers, loaded))
}
