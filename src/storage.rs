//! PostgreSQL storage: the connection pool, the embedded migrations, and one
//! module per area of the schema. Queries live here, not in handlers.

pub mod account_data;
pub mod accounts;
pub mod backup;
pub mod caches;
pub mod device_lists;
pub mod devices;
pub mod followers;
pub mod instances;
pub mod keys;
pub mod media;
pub mod presence;
pub mod push_actions;
pub mod push_rules;
pub mod receipts;
pub mod registration_tokens;
pub mod relations;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod shards;
pub mod streams;
pub mod to_device;
pub mod user_directory;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {error}{detail}", error = .0, detail = db_error_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database url: {0}")]
    Url(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write of a shard's owner found that it no longer owns the shard at
    /// the epoch it wrote under (`storage::shards::fence`): nothing was
    /// committed.
    #[error("no longer the owner of shard {shard} of {kind}")]
    Fenced { kind: String, shard: i32 },
    /// A batch of events held a transaction id already stored with an
    /// earlier event (a request that came again): nothing was committed.
    #[error("a transaction id of the batch was used before")]
    TxnSeen,
}

pub type StorageResult<T> = Result<T, StorageError>;

/// What PostgreSQL said, which `tokio_postgres::Error` shows only as "db error".
fn db_error_detail(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|db| format!(": {} ({})", db.message(), db.code().code()))
        .unwrap_or_default()
}

/// The migrations, applied in order, each in its own transaction.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("storage/migrations/0001_initial.sql"),
    ),
    (
        "0002_instances",
        include_str!("storage/migrations/0002_instances.sql"),
    ),
    (
        "0003_caches",
        include_str!("storage/migrations/0003_caches.sql"),
    ),
    (
        "0004_instances_caches",
        include_str!("storage/migrations/0004_instances_caches.sql"),
    ),
    (
        "0005_scoped_transactions",
        include_str!("storage/migrations/0005_scoped_transactions.sql"),
    ),
    (
        "0006_receipts",
        include_str!("storage/migrations/0006_receipts.sql"),
    ),
    (
        "0007_typing",
        include_str!("storage/migrations/0007_typing.sql"),
    ),
    (
        "0008_followers_and_positions",
        include_str!("storage/migrations/0008_followers_and_positions.sql"),
    ),
    (
        "0009_account_data",
        include_str!("storage/migrations/0009_account_data.sql"),
    ),
    (
        "0010_presence",
        include_str!("storage/migrations/0010_presence.sql"),
    ),
    (
        "0011_push_rules",
        include_str!("storage/migrations/0011_push_rules.sql"),
    ),
    (
        "0012_relations",
        include_str!("storage/migrations/0012_relations.sql"),
    ),
    (
        "0013_user_directory",
        include_str!("storage/migrations/0013_user_directory.sql"),
    ),
    (
        "0014_devices",
        include_str!("storage/migrations/0014_devices.sql"),
    ),
    (
        "0015_room_keys",
        include_str!("storage/migrations/0015_room_keys.sql"),
    ),
    (
        "0016_e2e_keys",
        include_str!("storage/migrations/0016_e2e_keys.sql"),
    ),
    (
        "0017_device_lists",
        include_str!("storage/migrations/0017_device_lists.sql"),
    ),
    (
        "0018_to_device",
        include_str!("storage/migrations/0018_to_device.sql"),
    ),
    (
        "0019_push_actions_compact",
        include_str!("storage/migrations/0019_push_actions_compact.sql"),
    ),
    (
        "0020_push_actions_by_event",
        include_str!("storage/migrations/0020_push_actions_by_event.sql"),
    ),
    (
        "0021_media",
        include_str!("storage/migrations/0021_media.sql"),
    ),
    (
        "0022_event_search",
        include_str!("storage/migrations/0022_event_search.sql"),
    ),
    (
        "0023_reports",
        include_str!("storage/migrations/0023_reports.sql"),
    ),
    (
        "0024_account_lifecycle",
        include_str!("storage/migrations/0024_account_lifecycle.sql"),
    ),
    (
        "0025_refresh_tokens",
        include_str!("storage/migrations/0025_refresh_tokens.sql"),
    ),
    (
        "0026_profile_fields",
        include_str!("storage/migrations/0026_profile_fields.sql"),
    ),
    (
        "0027_events_by_timestamp",
        include_str!("storage/migrations/0027_events_by_timestamp.sql"),
    ),
    (
        "0028_shard_leases",
        include_str!("storage/migrations/0028_shard_leases.sql"),
    ),
    (
        "0029_connections_and_registration_tokens",
        include_str!("storage/migrations/0029_connections_and_registration_tokens.sql"),
    ),
    (
        "0030_instances_replication",
        include_str!("storage/migrations/0030_instances_replication.sql"),
    ),
    (
        "0031_to_device_txn_parts",
        include_str!("storage/migrations/0031_to_device_txn_parts.sql"),
    ),
    (
        "0032_event_search_by_persister",
        include_str!("storage/migrations/0032_event_search_by_persister.sql"),
    ),
];

pub fn connect(url: &str, pool_size: usize) -> StorageResult<Pool> {
    let config: tokio_postgres::Config =
        url.parse().map_err(|e| StorageError::Url(format!("{e}")))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pool_size)
        .build()
        .map_err(|e| StorageError::Url(e.to_string()))
}

/// Applies every migration the database has not seen yet. Concurrent callers
/// (several instances starting at once) serialise on an advisory lock.
pub async fn migrate(pool: &Pool) -> StorageResult<()> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock(7461746963)", &[])
        .await?;
    transaction
        .execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_ts BIGINT NOT NULL)",
            &[],
        )
        .await?;
    let applied: Vec<String> = transaction
        .query("SELECT name FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (name, sql) in MIGRATIONS {
        if applied.iter().any(|a| a == name) {
            continue;
        }
        tracing::info!(migration = name, "applying migration");
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (name, applied_ts) VALUES ($1, $2)",
                &[name, &crate::util::now_ms()],
            )
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}
