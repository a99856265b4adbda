//! Loading a stream's positions at start-up (Synapse's `_load_current_ids`,
//! `reference/synapse-workers.md` §5.5): the `stream_positions` rows, the
//! sequence, and the rows written since the lowest known position.

use deadpool_postgres::Pool;

use super::StorageResult;
use crate::streams::id_gen::{LoadedPositions, StreamPositions};

/// Where a stream's rows live, so the loader can scan them.
pub struct StreamTable {
    /// The name in `stream_positions`.
    pub stream_name: &'static str,
    pub table: &'static str,
    pub instance_column: &'static str,
    pub id_column: &'static str,
    pub sequence: &'static str,
}

pub const EVENTS: StreamTable = StreamTable {
    stream_name: "events",
    table: "events",
    instance_column: "instance_name",
    id_column: "stream_ordering",
    sequence: "events_stream_seq",
};

pub async fn load_positions(
    pool: &Pool,
    stream: &StreamTable,
    local_instance: &str,
    writers: &[String],
) -> StorageResult<StreamPositions> {
    let client = pool.get().await?;
    if !writers.is_empty() {
        // A writer that was removed from the config starts afresh if re-added.
        client
            .execute(
                "DELETE FROM stream_positions WHERE stream_name = $1 AND NOT (instance_name = ANY($2))",
                &[&stream.stream_name, &writers],
            )
            .await?;
    }
    let stream_positions: Vec<(String, i64)> = client
        .query(
            "SELECT instance_name, stream_id FROM stream_positions WHERE stream_name = $1",
            &[&stream.stream_name],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let is_writer = writers.iter().any(|w| w == local_instance);
    let sequence_last_value: Option<i64> = if is_writer {
        let row = client
            .query_one(&format!("SELECT last_value FROM {}", stream.sequence), &[])
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
                        stream.instance_column,
                        stream.id_column,
                        stream.table,
                        stream.id_column,
                        stream.id_column
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
                    &format!("SELECT MAX({}) FROM {}", stream.id_column, stream.table),
                    &[],
                )
                .await?;
            loaded.max_table_id = row.get(0);
        }
    }
    Ok(StreamPositions::new(local_instance, writers, loaded))
}
