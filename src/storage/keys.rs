//! End-to-end encryption keys in PostgreSQL (migration 0016): devices'
//! identity keys, one-time and fallback keys, users' cross-signing keys and
//! the signatures uploaded for them. Keys of a device are deleted with it
//! (`ON DELETE CASCADE`).

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use serde_json::Value;

use super::StorageResult;

/// A device of a user with the identity keys it uploaded.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceKeys {
    pub user_id: String,
    pub device_id: String,
    pub display_name: Option<String>,
    pub key_json: Value,
}

/// A cross-signing key of a user.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossSigningKey {
    pub user_id: String,
    /// `master`, `self_signing` or `user_signing`.
    pub key_type: String,
    /// The key's name in its id (`ed25519:<public_key>`).
    pub public_key: String,
    pub key_json: Value,
}

/// A signature of a key (device or cross-signing) by someone's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSignature {
    pub target_user_id: String,
    /// The device id, or the cross-signing key's public key.
    pub target_key_id: String,
    pub signer_user_id: String,
    pub signer_key_id: String,
    pub signature: String,
}

/// The identity keys `device_id` of `user_id` uploaded, if any.
pub async fn device_keys(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Option<Value>> {
    let statement = client
        .prepare_cached(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&user_id, &device_id])
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Stores the identity keys of a device (which must exist), replacing what
/// it had. False when they were stored already, exactly so.
pub async fn set_device_keys(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    key_json: &Value,
) -> StorageResult<bool> {
    let statement = client
        .prepare_cached(
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = EXCLUDED.key_json
             WHERE e2e_device_keys.key_json IS DISTINCT FROM EXCLUDED.key_json",
        )
        .await?;
    let changed = client
        .execute(&statement, &[&user_id, &device_id, key_json])
        .await?;
    Ok(changed > 0)
}

/// Whether `user_id` has the device `device_id`.
pub async fn device_exists(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
) -> StorageResult<bool> {
    let statement = client
        .prepare_cached("SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2")
        .await?;
    Ok(client
        .query_opt(&statement, &[&user_id, &device_id])
        .await?
        .is_some())
}

/// The devices of `user_id` with identity keys (those of `device_ids` only,
/// when given), with their display names.
pub async fn devices_with_keys(
    client: &impl GenericClient,
    user_id: &str,
    device_ids: Option<&[String]>,
) -> StorageResult<Vec<DeviceKeys>> {
    let statement = client
        .prepare_cached(
            "SELECT d.device_id, d.display_name, k.key_json
             FROM e2e_device_keys k
             JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
             WHERE k.user_id = $1 AND ($2::TEXT[] IS NULL OR k.device_id = ANY($2))
             ORDER BY d.device_id",
        )
        .await?;
    let rows = client.query(&statement, &[&user_id, &device_ids]).await?;
    Ok(rows
        .iter()
        .map(|row| DeviceKeys {
            user_id: user_id.to_owned(),
            device_id: row.get(0),
            display_name: row.get(1),
            key_json: row.get(2),
        })
        .collect())
}

/// The one-time keys of a device among `ids` (`(algorithm, key_id)`), as stored.
pub async fn one_time_keys(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    key_ids: &[String],
) -> StorageResult<BTreeMap<(String, String), Value>> {
    let statement = client
        .prepare_cached(
            "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys
             WHERE user_id = $1 AND device_id = $2 AND key_id = ANY($3)",
        )
        .await?;
    let rows = client
        .query(&statement, &[&user_id, &device_id, &key_ids])
        .await?;
    Ok(rows
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect())
}

/// Adds one-time keys (`(algorithm, key_id, key)`) to a device; one already
/// there is left as it is.
pub async fn add_one_time_keys(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    keys: &[(String, String, Value)],
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .await?;
    for (algorithm, key_id, key) in keys {
        client
            .execute(&statement, &[&user_id, &device_id, algorithm, key_id, key])
            .await?;
    }
    Ok(())
}

/// Sets a device's fallback key of `algorithm`: unused, unless it is the
/// key the device has already (which keeps its `used` mark, as Synapse).
pub async fn set_fallback_key(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    key: &Value,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
             SET key_id = EXCLUDED.key_id, key_json = EXCLUDED.key_json, used = FALSE
             WHERE e2e_fallback_keys.key_id <> EXCLUDED.key_id
                OR e2e_fallback_keys.key_json <> EXCLUDED.key_json",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&user_id, &device_id, &algorithm, &key_id, key],
        )
        .await?;
    Ok(())
}

/// How many one-time keys a device has left, by algorithm.
pub async fn one_time_key_counts(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
) -> StorageResult<BTreeMap<String, i64>> {
    let statement = client
        .prepare_cached(
            "SELECT algorithm, count(*) FROM e2e_one_time_keys
             WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
        )
        .await?;
    let rows = client.query(&statement, &[&user_id, &device_id]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The algorithms of a device's fallback keys nobody claimed yet.
pub async fn unused_fallback_key_types(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Vec<String>> {
    let statement = client
        .prepare_cached(
            "SELECT algorithm FROM e2e_fallback_keys
             WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm",
        )
        .await?;
    let rows = client.query(&statement, &[&user_id, &device_id]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Claims a key of `algorithm` of a device: a one-time key, deleted as it
/// is handed out (a key another claim holds is skipped, so concurrent
/// claims on any instance never share one), else the fallback key, marked
/// used and kept. `(key_id, key)`.
pub async fn claim_key(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> StorageResult<Option<(String, Value)>> {
    let one_time = client
        .prepare_cached(
            "DELETE FROM e2e_one_time_keys
             WHERE (user_id, device_id, algorithm, key_id) IN (
                 SELECT user_id, device_id, algorithm, key_id FROM e2e_one_time_keys
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                 ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING key_id, key_json",
        )
        .await?;
    if let Some(row) = client
        .query_opt(&one_time, &[&user_id, &device_id, &algorithm])
        .await?
    {
        return Ok(Some((row.get(0), row.get(1))));
    }
    let fallback = client
        .prepare_cached(
            "UPDATE e2e_fallback_keys SET used = TRUE
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
             RETURNING key_id, key_json",
        )
        .await?;
    let row = client
        .query_opt(&fallback, &[&user_id, &device_id, &algorithm])
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// The cross-signing key `key_type` of `user_id`, if set.
pub async fn cross_signing_key(
    client: &impl GenericClient,
    user_id: &str,
    key_type: &str,
) -> StorageResult<Option<CrossSigningKey>> {
    let statement = client
        .prepare_cached(
            "SELECT public_key, key_json FROM e2e_cross_signing_keys
             WHERE user_id = $1 AND key_type = $2",
        )
        .await?;
    let row = client.query_opt(&statement, &[&user_id, &key_type]).await?;
    Ok(row.map(|row| CrossSigningKey {
        user_id: user_id.to_owned(),
        key_type: key_type.to_owned(),
        public_key: row.get(0),
        key_json: row.get(1),
    }))
}

/// The cross-signing keys of `user_ids`.
pub async fn cross_signing_keys(
    client: &impl GenericClient,
    user_ids: &[String],
) -> StorageResult<Vec<CrossSigningKey>> {
    let statement = client
        .prepare_cached(
            "SELECT user_id, key_type, public_key, key_json FROM e2e_cross_signing_keys
             WHERE user_id = ANY($1)",
        )
        .await?;
    let rows = client.query(&statement, &[&user_ids]).await?;
    Ok(rows
        .iter()
        .map(|row| CrossSigningKey {
            user_id: row.get(0),
            key_type: row.get(1),
            public_key: row.get(2),
            key_json: row.get(3),
        })
        .collect())
}

/// Sets (or replaces) a cross-signing key of a user.
pub async fn set_cross_signing_key(
    client: &impl GenericClient,
    key: &CrossSigningKey,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO e2e_cross_signing_keys (user_id, key_type, public_key, key_json)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, key_type) DO UPDATE
             SET public_key = EXCLUDED.public_key, key_json = EXCLUDED.key_json",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&key.user_id, &key.key_type, &key.public_key, &key.key_json],
        )
        .await?;
    Ok(())
}

/// Stores a signature (replacing one by the same key of the same target).
pub async fn store_signature(
    client: &impl GenericClient,
    signature: &StoredSignature,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO e2e_signatures
                 (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
             DO UPDATE SET signature = EXCLUDED.signature",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &signature.target_user_id,
                &signature.target_key_id,
                &signature.signer_user_id,
                &signature.signer_key_id,
                &signature.signature,
            ],
        )
        .await?;
    Ok(())
}

/// Forgets the signatures of a key that changed (they signed the old one).
pub async fn delete_signatures_of(
    client: &impl GenericClient,
    target_user_id: &str,
    target_key_id: &str,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "DELETE FROM e2e_signatures WHERE target_user_id = $1 AND target_key_id = $2",
        )
        .await?;
    client
        .execute(&statement, &[&target_user_id, &target_key_id])
        .await?;
    Ok(())
}

/// The signatures of `target_user_id`'s keys by `signers`.
pub async fn signatures_of(
    client: &impl GenericClient,
    target_user_id: &str,
    signers: &[String],
) -> StorageResult<Vec<StoredSignature>> {
    let statement = client
        .prepare_cached(
            "SELECT target_key_id, signer_user_id, signer_key_id, signature FROM e2e_signatures
             WHERE target_user_id = $1 AND signer_user_id = ANY($2)",
        )
        .await?;
    let rows = client
        .query(&statement, &[&target_user_id, &signers])
        .await?;
    Ok(rows
        .iter()
        .map(|row| StoredSignature {
            target_user_id: target_user_id.to_owned(),
            target_key_id: row.get(0),
            signer_user_id: row.get(1),
            signer_key_id: row.get(2),
            signature: row.get(3),
        })
        .collect())
}
