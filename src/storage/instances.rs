//! The instances of a deployment and their heartbeats.

use deadpool_postgres::Pool;
use serde_json::{json, Value};

use super::StorageResult;
use crate::util::now_ms;

pub struct Heartbeat<'a> {
    pub instance: &'a str,
    pub roles: &'a [String],
    pub host: &'a str,
    pub pid: i32,
    pub started_ts: i64,
    pub events_position: i64,
    /// How far this instance has seen each stream persisted.
    pub stream_positions: Value,
    /// How far this instance applied each writer's `caches` rows.
    pub caches_positions: Value,
    /// The writers this instance finds stalled (`[{"stream", "writer"}]`).
    pub stalled_writers: Value,
}

pub async fn beat(pool: &Pool, beat: &Heartbeat<'_>) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO instances (instance_name, roles, host, pid, started_ts, heartbeat_ts, events_position, caches_positions, stream_positions, stalled_writers)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (instance_name) DO UPDATE SET roles = EXCLUDED.roles, host = EXCLUDED.host,
               pid = EXCLUDED.pid, started_ts = EXCLUDED.started_ts, heartbeat_ts = EXCLUDED.heartbeat_ts,
               events_position = EXCLUDED.events_position, caches_positions = EXCLUDED.caches_positions,
               stream_positions = EXCLUDED.stream_positions, stalled_writers = EXCLUDED.stalled_writers",
            &[&beat.instance, &beat.roles, &beat.host, &beat.pid, &beat.started_ts, &now_ms(), &beat.events_position, &beat.caches_positions, &beat.stream_positions, &beat.stalled_writers],
        )
        .await?;
    Ok(())
}

/// Records the writers `instance` finds stalled now, between heartbeats.
pub async fn set_stalled_writers(
    pool: &Pool,
    instance: &str,
    stalled: &Value,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE instances SET stalled_writers = $2 WHERE instance_name = $1",
            &[&instance, stalled],
        )
        .await?;
    Ok(())
}

/// Every instance seen, and for every stream its writers' positions and
/// each instance's view of it with its lag.
pub async fn cluster(pool: &Pool) -> StorageResult<Value> {
    let client = pool.get().await?;
    let instances = client
        .query(
            "SELECT instance_name, roles, host, pid, started_ts, heartbeat_ts, stream_positions, stalled_writers
             FROM instances ORDER BY instance_name",
            &[],
        )
        .await?;
    let writers = client
        .query(
            "SELECT stream_name, instance_name, stream_id FROM stream_positions ORDER BY stream_name, instance_name",
            &[],
        )
        .await?;
    let mut streams = serde_json::Map::new();
    for spec in crate::streams::registry::configured_streams() {
        let stream_writers: Vec<(String, i64)> = writers
            .iter()
            .filter(|row| row.get::<_, String>(0) == spec.name)
            .map(|row| (row.get(1), row.get(2)))
            .collect();
        let newest = stream_writers.iter().map(|(_, p)| *p).max().unwrap_or(0);
        let readers: Vec<Value> = instances
            .iter()
            .map(|row| {
                let positions: Value = row.get(6);
                let position = positions.get(spec.name).and_then(Value::as_i64).unwrap_or(0);
                json!({ "instance": row.get::<_, String>(0), "position": position, "lag": (newest - position).max(0) })
            })
            .collect();
        let stream_writers: Vec<Value> = stream_writers
            .iter()
            .map(|(instance, position)| json!({ "instance": instance, "position": position }))
            .collect();
        streams.insert(
            spec.name.to_owned(),
            json!({ "writers": stream_writers, "readers": readers }),
        );
    }
    streams.insert("caches".to_owned(), caches_stream(&client).await?);
    let instances: Vec<Value> = instances
        .iter()
        .map(|row| {
            json!({
                "name": row.get::<_, String>(0),
                "roles": row.get::<_, Vec<String>>(1),
                "host": row.get::<_, String>(2),
                "pid": row.get::<_, i32>(3),
                "started_ts": row.get::<_, i64>(4),
                "last_heartbeat_ts": row.get::<_, i64>(5),
                // Writers whose replication this instance found stalled
                // and reads back from PostgreSQL (`streams::stall`).
                "stalled_writers": row.get::<_, Value>(7),
            })
        })
        .collect();
    Ok(json!({ "instances": instances, "streams": streams }))
}

/// The `caches` stream: every instance that wrote a row, at its last one,
/// and how far each instance applied each of them. A reader's lag counts
/// only writers it has heard of: one it never heard of wrote nothing since
/// the reader started, or is not running.
async fn caches_stream(client: &deadpool_postgres::Object) -> StorageResult<Value> {
    let writers: Vec<(String, i64)> = client
        .query(
            "SELECT instance_name, MAX(stream_id) FROM cache_invalidation_stream_by_instance
             GROUP BY instance_name ORDER BY instance_name",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let readers: Vec<Value> = client
        .query(
            "SELECT instance_name, caches_positions FROM instances ORDER BY instance_name",
            &[],
        )
        .await?
        .iter()
        .map(|row| {
            let positions: Value = row.get(1);
            let lag: i64 = writers
                .iter()
                .filter_map(|(writer, newest)| {
                    let seen = positions.get(writer).and_then(Value::as_i64)?;
                    Some((newest - seen).max(0))
                })
                .sum();
            json!({ "instance": row.get::<_, String>(0), "positions": positions, "lag": lag })
        })
        .collect();
    let writers: Vec<Value> = writers
        .iter()
        .map(|(instance, position)| json!({ "instance": instance, "position": position }))
        .collect();
    Ok(json!({ "writers": writers, "readers": readers }))
}
