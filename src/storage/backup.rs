//! Server-side key backup: each user's backup versions and the room keys
//! stored in them (`0015_room_keys.sql`).
//!
//! Every write takes a transaction-scoped advisory lock on the user first
//! (Synapse's per-user upload lock), so that two uploads at once are
//! applied one after the other: each sees the other's keys when it decides
//! which to keep, and the etag moves once for each.

use std::collections::BTreeMap;

use deadpool_postgres::{GenericClient, Pool};
use serde_json::Value;

use super::StorageResult;

/// One version's description, as `GET /room_keys/version` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupVersion {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: Value,
    pub etag: i64,
    pub count: i64,
}

/// One session's key, as stored and shown.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomKey {
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    pub session_data: Value,
}

impl RoomKey {
    /// Whether `self`, newly uploaded, replaces `existing` (the spec's
    /// rule: a verified key beats an unverified one; between keys equally
    /// verified, the one decrypting from an earlier message; then the one
    /// forwarded fewer times).
    pub fn replaces(&self, existing: &RoomKey) -> bool {
        if self.is_verified != existing.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != existing.first_message_index {
            return self.first_message_index < existing.first_message_index;
        }
        self.forwarded_count < existing.forwarded_count
    }
}

/// Keys by room id, then session id.
pub type RoomKeys = BTreeMap<String, BTreeMap<String, RoomKey>>;

/// Why a write to a version's keys was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRefusal {
    /// The version does not exist (or was deleted), or the user has none.
    Unknown,
    /// The version exists but is not the current one, which is this.
    NotCurrent { current: i64 },
}

/// The etag and count of a version after a change to its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysUpdate {
    pub etag: i64,
    pub count: i64,
}

/// Which keys of a version a read or deletion concerns.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    All,
    Room(&'a str),
    Session(&'a str, &'a str),
}

impl Selection<'_> {
    fn room(&self) -> Option<&str> {
        match self {
            Selection::All => None,
            Selection::Room(room) | Selection::Session(room, _) => Some(room),
        }
    }
    fn session(&self) -> Option<&str> {
        match self {
            Selection::Session(_, session) => Some(session),
            _ => None,
        }
    }
}

/// Waits for, then holds until the transaction ends, the user's backup lock.
async fn lock_user(client: &impl GenericClient, user_id: &str) -> StorageResult<()> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('room_keys ' || $1, 0))",
            &[&user_id],
        )
        .await?;
    Ok(())
}

/// Creates a version after every one the user ever had; its number.
pub async fn create_version(
    pool: &Pool,
    user_id: &str,
    algorithm: &str,
    auth_data: &Value,
) -> StorageResult<i64> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    lock_user(&transaction, user_id).await?;
    let row = transaction
        .query_one(
            "INSERT INTO room_key_backup_versions (user_id, version, algorithm, auth_data)
             SELECT $1::TEXT, COALESCE(MAX(version), 0) + 1, $2::TEXT, $3::JSONB
             FROM room_key_backup_versions WHERE user_id = $1
             RETURNING version",
            &[&user_id, &algorithm, auth_data],
        )
        .await?;
    transaction.commit().await?;
    Ok(row.get(0))
}

/// A version not deleted (the current one for `None`), with its key count.
pub async fn version(
    pool: &Pool,
    user_id: &str,
    version: Option<i64>,
) -> StorageResult<Option<BackupVersion>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT v.version, v.algorithm, v.auth_data, v.etag,
                    (SELECT COUNT(*) FROM room_keys k
                     WHERE k.user_id = v.user_id AND k.version = v.version)
             FROM room_key_backup_versions v
             WHERE v.user_id = $1 AND NOT v.deleted AND ($2::BIGINT IS NULL OR v.version = $2)
             ORDER BY v.version DESC LIMIT 1",
            &[&user_id, &version],
        )
        .await?;
    Ok(row.map(|row| BackupVersion {
        version: row.get(0),
        algorithm: row.get(1),
        auth_data: row.get(2),
        etag: row.get(3),
        count: row.get(4),
    }))
}

/// Replaces a version's `auth_data`; false when it does not exist.
pub async fn update_auth_data(
    pool: &Pool,
    user_id: &str,
    version: i64,
    auth_data: &Value,
) -> StorageResult<bool> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    lock_user(&transaction, user_id).await?;
    let updated = transaction
        .execute(
            "UPDATE room_key_backup_versions SET auth_data = $3
             WHERE user_id = $1 AND version = $2 AND NOT deleted",
            &[&user_id, &version, auth_data],
        )
        .await?;
    transaction.commit().await?;
    Ok(updated == 1)
}

/// Deletes a version and its keys (its number stays used); false when it
/// does not exist.
pub async fn delete_version(pool: &Pool, user_id: &str, version: i64) -> StorageResult<bool> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    lock_user(&transaction, user_id).await?;
    transaction
        .execute(
            "DELETE FROM room_keys WHERE user_id = $1 AND version = $2",
            &[&user_id, &version],
        )
        .await?;
    let updated = transaction
        .execute(
            "UPDATE room_key_backup_versions SET deleted = TRUE, auth_data = '{}'
             WHERE user_id = $1 AND version = $2 AND NOT deleted",
            &[&user_id, &version],
        )
        .await?;
    transaction.commit().await?;
    Ok(updated == 1)
}

/// Stores `keys` in `version`, which must be the current version, keeping
/// for each session the better of the stored and the new key
/// ([`RoomKey::replaces`]).
pub async fn put_keys(
    pool: &Pool,
    user_id: &str,
    version: i64,
    keys: &RoomKeys,
) -> StorageResult<Result<KeysUpdate, VersionRefusal>> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    lock_user(&transaction, user_id).await?;
    let current: Option<i64> = transaction
        .query_one(
            "SELECT MAX(version) FROM room_key_backup_versions WHERE user_id = $1 AND NOT deleted",
            &[&user_id],
        )
        .await?
        .get(0);
    match current {
        None => return Ok(Err(VersionRefusal::Unknown)),
        Some(current) if current != version => {
            let exists = transaction
                .query_opt(
                    "SELECT 1 FROM room_key_backup_versions
                     WHERE user_id = $1 AND version = $2 AND NOT deleted",
                    &[&user_id, &version],
                )
                .await?
                .is_some();
            return Ok(Err(if exists {
                VersionRefusal::NotCurrent { current }
            } else {
                VersionRefusal::Unknown
            }));
        }
        Some(_) => {}
    }

    let (rooms, sessions): (Vec<&str>, Vec<&str>) = keys
        .iter()
        .flat_map(|(room, sessions)| sessions.keys().map(move |s| (room.as_str(), s.as_str())))
        .unzip();
    let existing: BTreeMap<(String, String), RoomKey> = transaction
        .query(
            "SELECT k.room_id, k.session_id, k.first_message_index, k.forwarded_count,
                    k.is_verified, k.session_data
             FROM room_keys k
             JOIN unnest($3::TEXT[], $4::TEXT[]) AS s(room_id, session_id)
               ON k.room_id = s.room_id AND k.session_id = s.session_id
             WHERE k.user_id = $1 AND k.version = $2",
            &[&user_id, &version, &rooms, &sessions],
        )
        .await?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), room_key(row, 2)))
        .collect();
    let mut written = Vec::new();
    for (room, sessions) in keys {
        for (session, key) in sessions {
            let kept = existing.get(&(room.clone(), session.clone()));
            if kept.is_none_or(|kept| key.replaces(kept)) {
                written.push((room.as_str(), session.as_str(), key));
            }
        }
    }
    if !written.is_empty() {
        let rooms: Vec<&str> = written.iter().map(|(room, _, _)| *room).collect();
        let sessions: Vec<&str> = written.iter().map(|(_, session, _)| *session).collect();
        let indexes: Vec<i64> = written
            .iter()
            .map(|(_, _, k)| k.first_message_index)
            .collect();
        let forwards: Vec<i64> = written.iter().map(|(_, _, k)| k.forwarded_count).collect();
        let verified: Vec<bool> = written.iter().map(|(_, _, k)| k.is_verified).collect();
        let data: Vec<&Value> = written.iter().map(|(_, _, k)| &k.session_data).collect();
        transaction
            .execute(
                "INSERT INTO room_keys (user_id, version, room_id, session_id,
                     first_message_index, forwarded_count, is_verified, session_data)
                 SELECT $1::TEXT, $2::BIGINT, * FROM unnest($3::TEXT[], $4::TEXT[], $5::BIGINT[],
                     $6::BIGINT[], $7::BOOLEAN[], $8::JSONB[])
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
                     first_message_index = EXCLUDED.first_message_index,
                     forwarded_count = EXCLUDED.forwarded_count,
                     is_verified = EXCLUDED.is_verified,
                     session_data = EXCLUDED.session_data",
                &[
                    &user_id, &version, &rooms, &sessions, &indexes, &forwards, &verified, &data,
                ],
            )
            .await?;
    }
    let update = keys_changed(&transaction, user_id, version, !written.is_empty()).await?;
    transaction.commit().await?;
    Ok(Ok(update))
}

/// Deletes the selected keys of `version`; `None` when the version does
/// not exist.
pub async fn delete_keys(
    pool: &Pool,
    user_id: &str,
    version: i64,
    selection: Selection<'_>,
) -> StorageResult<Option<KeysUpdate>> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    lock_user(&transaction, user_id).await?;
    let exists = transaction
        .query_opt(
            "SELECT 1 FROM room_key_backup_versions
             WHERE user_id = $1 AND version = $2 AND NOT deleted",
            &[&user_id, &version],
        )
        .await?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let deleted = transaction
        .execute(
            "DELETE FROM room_keys WHERE user_id = $1 AND version = $2
               AND ($3::TEXT IS NULL OR room_id = $3)
               AND ($4::TEXT IS NULL OR session_id = $4)",
            &[&user_id, &version, &selection.room(), &selection.session()],
        )
        .await?;
    let update = keys_changed(&transaction, user_id, version, deleted > 0).await?;
    transaction.commit().await?;
    Ok(Some(update))
}

/// Moves the version's etag on when its keys changed; the etag and count.
async fn keys_changed(
    client: &impl GenericClient,
    user_id: &str,
    version: i64,
    changed: bool,
) -> StorageResult<KeysUpdate> {
    let row = client
        .query_one(
            "UPDATE room_key_backup_versions v SET etag = etag + CASE WHEN $3 THEN 1 ELSE 0 END
             WHERE user_id = $1 AND version = $2
             RETURNING etag, (SELECT COUNT(*) FROM room_keys k
                              WHERE k.user_id = v.user_id AND k.version = v.version)",
            &[&user_id, &version, &changed],
        )
        .await?;
    Ok(KeysUpdate {
        etag: row.get(0),
        count: row.get(1),
    })
}

/// The selected keys of `version`; `None` when the version does not exist.
pub async fn keys(
    pool: &Pool,
    user_id: &str,
    version: i64,
    selection: Selection<'_>,
) -> StorageResult<Option<RoomKeys>> {
    let mut client = pool.get().await?;
    // One snapshot for both reads: the version cannot vanish between them.
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let exists = transaction
        .query_opt(
            "SELECT 1 FROM room_key_backup_versions
             WHERE user_id = $1 AND version = $2 AND NOT deleted",
            &[&user_id, &version],
        )
        .await?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let rows = transaction
        .query(
            "SELECT room_id, session_id, first_message_index, forwarded_count,
                    is_verified, session_data
             FROM room_keys WHERE user_id = $1 AND version = $2
               AND ($3::TEXT IS NULL OR room_id = $3)
               AND ($4::TEXT IS NULL OR session_id = $4)",
            &[&user_id, &version, &selection.room(), &selection.session()],
        )
        .await?;
    transaction.commit().await?;
    let mut keys = RoomKeys::new();
    for row in &rows {
        keys.entry(row.get(0))
            .or_default()
            .insert(row.get(1), room_key(row, 2));
    }
    Ok(Some(keys))
}

fn room_key(row: &tokio_postgres::Row, first: usize) -> RoomKey {
    RoomKey {
        first_message_index: row.get(first),
        forwarded_count: row.get(first + 1),
        is_verified: row.get(first + 2),
        session_data: row.get(first + 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(is_verified: bool, first_message_index: i64, forwarded_count: i64) -> RoomKey {
        RoomKey {
            first_message_index,
            forwarded_count,
            is_verified,
            session_data: json!({}),
        }
    }

    #[test]
    fn a_new_key_replaces_the_stored_one_only_when_better_by_the_specs_order() {
        let stored = key(false, 5, 2);
        // Verification first, whatever the rest says.
        assert!(key(true, 9, 9).replaces(&stored));
        assert!(!key(false, 0, 0).replaces(&key(true, 5, 2)));
        // Then the earlier first message.
        assert!(key(false, 4, 9).replaces(&stored));
        assert!(!key(false, 6, 0).replaces(&stored));
        // Then fewer forwards.
        assert!(key(false, 5, 1).replaces(&stored));
        assert!(!key(false, 5, 3).replaces(&stored));
        // An equal key changes nothing.
        assert!(!key(false, 5, 2).replaces(&stored));
        assert!(!key(true, 5, 2).replaces(&key(true, 5, 2)));
    }
}
