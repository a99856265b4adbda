//! Devices: the ones each user is signed in on, their names, and when and
//! from where (with which user agent) each was last used. A device is
//! created with its first access token (`accounts::create_device_and_token`);
//! here it is read, renamed, and removed with its tokens.

use deadpool_postgres::Pool;

use super::StorageResult;

/// One device as `GET /devices` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<i64>,
}

fn device(row: &tokio_postgres::Row) -> Device {
    Device {
        device_id: row.get(0),
        display_name: row.get(1),
        last_seen_ip: row.get(2),
        last_seen_ts: row.get(3),
    }
}

/// The user's devices, by id.
pub async fn devices(pool: &Pool, user_id: &str) -> StorageResult<Vec<Device>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices
             WHERE user_id = $1 ORDER BY device_id",
            &[&user_id],
        )
        .await?;
    Ok(rows.iter().map(device).collect())
}

/// One device of the user, if they have it.
pub async fn get(pool: &Pool, user_id: &str, device_id: &str) -> StorageResult<Option<Device>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices
             WHERE user_id = $1 AND device_id = $2",
            &[&user_id, &device_id],
        )
        .await?;
    Ok(row.as_ref().map(device))
}

/// Renames the device (`None` leaves the name as it is); false when the
/// user has no such device.
pub async fn set_display_name(
    pool: &Pool,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
) -> StorageResult<bool> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE devices SET display_name = COALESCE($3, display_name)
             WHERE user_id = $1 AND device_id = $2",
            &[&user_id, &device_id, &display_name],
        )
        .await?;
    Ok(updated == 1)
}

/// The ids of the user's devices.
pub async fn device_ids(pool: &Pool, user_id: &str) -> StorageResult<Vec<String>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id",
            &[&user_id],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Deletes the listed devices of the user and their access and refresh
/// tokens, in one transaction; the ids of the devices that existed.
pub async fn delete(pool: &Pool, user_id: &str, device_ids: &[&str]) -> StorageResult<Vec<String>> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    super::accounts::delete_device_tokens(&transaction, user_id, device_ids).await?;
    let rows = transaction
        .query(
            "DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2) RETURNING device_id",
            &[&user_id, &device_ids],
        )
        .await?;
    transaction.commit().await?;
    let mut deleted: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    deleted.sort();
    Ok(deleted)
}

/// When and from where a device was used, and with which user agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSeen {
    pub user_id: String,
    pub device_id: String,
    pub ip: String,
    pub user_agent: Option<String>,
    pub ts: i64,
}

/// Records when and from where devices were last used, in one statement:
/// each address of each device with its user agent
/// (`device_connections`), and each device's latest use (`devices`). A
/// record older than the stored one changes nothing; a device removed
/// meanwhile is skipped. Rows are written in key order, so that two
/// instances flushing at once cannot deadlock.
pub async fn record_last_seen(pool: &Pool, seen: &[LastSeen]) -> StorageResult<u64> {
    let mut seen: Vec<&LastSeen> = seen.iter().collect();
    seen.sort_by(|a, b| (&a.user_id, &a.device_id, &a.ip).cmp(&(&b.user_id, &b.device_id, &b.ip)));
    let user_ids: Vec<&str> = seen.iter().map(|s| s.user_id.as_str()).collect();
    let device_ids: Vec<&str> = seen.iter().map(|s| s.device_id.as_str()).collect();
    let ips: Vec<&str> = seen.iter().map(|s| s.ip.as_str()).collect();
    let user_agents: Vec<Option<&str>> = seen.iter().map(|s| s.user_agent.as_deref()).collect();
    let timestamps: Vec<i64> = seen.iter().map(|s| s.ts).collect();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH v AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                 WITH ORDINALITY AS v (user_id, device_id, ip, user_agent, ts, n)
             ),
             connections AS (
               INSERT INTO device_connections AS c (user_id, device_id, ip, user_agent, last_seen_ts)
               SELECT v.user_id, v.device_id, v.ip, v.user_agent, v.ts FROM v
               JOIN devices d ON d.user_id = v.user_id AND d.device_id = v.device_id
               ORDER BY v.n
               ON CONFLICT (user_id, device_id, ip) DO UPDATE
                 SET user_agent = EXCLUDED.user_agent, last_seen_ts = EXCLUDED.last_seen_ts
                 WHERE c.last_seen_ts <= EXCLUDED.last_seen_ts
             )
             UPDATE devices d SET last_seen_ip = l.ip, last_seen_ts = l.ts
             FROM (
               SELECT DISTINCT ON (user_id, device_id) user_id, device_id, ip, ts FROM v
               ORDER BY user_id, device_id, ts DESC
             ) l
             WHERE d.user_id = l.user_id AND d.device_id = l.device_id
               AND (d.last_seen_ts IS NULL OR d.last_seen_ts <= l.ts)",
        )
        .await?;
    let updated = client
        .execute(
            &statement,
            &[&user_ids, &device_ids, &ips, &user_agents, &timestamps],
        )
        .await?;
    Ok(updated)
}

/// One address a device used, with the user agent last seen from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub device_id: String,
    pub ip: String,
    pub user_agent: Option<String>,
    pub last_seen_ts: i64,
}

/// Every address each of the user's devices used (in the retention), by
/// device then latest use first.
pub async fn connections(pool: &Pool, user_id: &str) -> StorageResult<Vec<Connection>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT device_id, ip, user_agent, last_seen_ts FROM device_connections
             WHERE user_id = $1 ORDER BY device_id, last_seen_ts DESC",
            &[&user_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Connection {
            device_id: row.get(0),
            ip: row.get(1),
            user_agent: row.get(2),
            last_seen_ts: row.get(3),
        })
        .collect())
}

/// Forgets the addresses not used since `before_ts`; how many went.
pub async fn delete_connections_older_than(pool: &Pool, before_ts: i64) -> StorageResult<u64> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM device_connections WHERE last_seen_ts < $1",
            &[&before_ts],
        )
        .await?)
}
