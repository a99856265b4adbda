//! Users, access tokens (with the device each is for: `devices.rs` has the
//! rest), user-interactive auth sessions and filters.

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};

use super::StorageResult;
use crate::util::now_ms;

/// Who an access token belongs to.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user_id: String,
    pub device_id: String,
    pub is_admin: bool,
    pub deactivated: bool,
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub async fn user_exists(pool: &Pool, user_id: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    let row = client
        .query_opt("SELECT 1 FROM users WHERE user_id = $1", &[&user_id])
        .await?;
    Ok(row.is_some())
}

/// Creates the user; false when the id is taken.
pub async fn create_user(
    pool: &Pool,
    user_id: &str,
    localpart: &str,
    password_hash: Option<&str>,
    is_admin: bool,
) -> StorageResult<bool> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let inserted = transaction
        .execute(
            "INSERT INTO users (user_id, localpart, password_hash, is_admin, displayname, created_ts)
             VALUES ($1, $2, $3, $4, $2, $5) ON CONFLICT DO NOTHING",
            &[&user_id, &localpart, &password_hash, &is_admin, &now_ms()],
        )
        .await?;
    if inserted == 1 {
        super::user_directory::set_terms(&transaction, user_id, Some(localpart)).await?;
    }
    transaction.commit().await?;
    Ok(inserted == 1)
}

pub struct PasswordRecord {
    pub password_hash: Option<String>,
    pub deactivated: bool,
}

pub async fn password_record(pool: &Pool, user_id: &str) -> StorageResult<Option<PasswordRecord>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT password_hash, deactivated FROM users WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
    Ok(row.map(|row| PasswordRecord {
        password_hash: row.get(0),
        deactivated: row.get(1),
    }))
}

/// Creates (or refreshes) the device and a new access token for it.
pub async fn create_device_and_token(
    pool: &Pool,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    token: &str,
) -> StorageResult<()> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, device_id) DO UPDATE SET
               display_name = COALESCE(EXCLUDED.display_name, devices.display_name)",
            &[&user_id, &device_id, &display_name, &now_ms()],
        )
        .await?;
    // Logging in again with the same device id replaces its old tokens.
    transaction
        .execute(
            "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
            &[&user_id, &device_id],
        )
        .await?;
    transaction
        .execute(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)",
            &[&hash_token(token), &user_id, &device_id, &now_ms()],
        )
        .await?;
    transaction.commit().await?;
    Ok(())
}

pub async fn token_owner(pool: &Pool, token: &str) -> StorageResult<Option<TokenOwner>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT t.user_id, t.device_id, u.is_admin, u.deactivated
             FROM access_tokens t JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = $1",
        )
        .await?;
    let row = client.query_opt(&statement, &[&hash_token(token)]).await?;
    Ok(row.map(|row| TokenOwner {
        user_id: row.get(0),
        device_id: row.get(1),
        is_admin: row.get(2),
        deactivated: row.get(3),
    }))
}

pub async fn create_uia_session(pool: &Pool, session_id: &str) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO uia_sessions (session_id, created_ts) VALUES ($1, $2)",
            &[&session_id, &now_ms()],
        )
        .await?;
    Ok(())
}

/// Whether `session_id` is a registration's session (one bound to no user).
pub async fn uia_session_exists(pool: &Pool, session_id: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    Ok(client
        .query_opt(
            "SELECT 1 FROM uia_sessions WHERE session_id = $1 AND user_id IS NULL",
            &[&session_id],
        )
        .await?
        .is_some())
}

pub async fn delete_uia_session(pool: &Pool, session_id: &str) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "DELETE FROM uia_sessions WHERE session_id = $1",
            &[&session_id],
        )
        .await?;
    Ok(())
}

/// The request a signed-in user's UIA session was started for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiaOperation {
    pub user_id: String,
    pub method: String,
    pub uri: String,
}

/// Starts a UIA session bound to `operation`.
pub async fn create_bound_uia_session(
    pool: &Pool,
    session_id: &str,
    operation: &UiaOperation,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO uia_sessions (session_id, created_ts, user_id, method, uri)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &session_id,
                &now_ms(),
                &operation.user_id,
                &operation.method,
                &operation.uri,
            ],
        )
        .await?;
    Ok(())
}

/// What a session was started for: `None` for an unknown session,
/// `Some(None)` for a registration's (bound to no user).
pub async fn uia_operation(
    pool: &Pool,
    session_id: &str,
) -> StorageResult<Option<Option<UiaOperation>>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT user_id, method, uri FROM uia_sessions WHERE session_id = $1",
            &[&session_id],
        )
        .await?;
    Ok(row.map(|row| {
        match (
            row.get::<_, Option<String>>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<String>>(2),
        ) {
            (Some(user_id), Some(method), Some(uri)) => Some(UiaOperation {
                user_id,
                method,
                uri,
            }),
            _ => None,
        }
    }))
}

/// Deletes the sessions started before `before_ts` (finished or
/// abandoned); how many went.
pub async fn delete_uia_sessions_older_than(pool: &Pool, before_ts: i64) -> StorageResult<u64> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM uia_sessions WHERE created_ts < $1",
            &[&before_ts],
        )
        .await?)
}

/// Ends a session once it has authorised its request; false when it had
/// already ended (a concurrent request with the same session used it).
pub async fn consume_uia_session(pool: &Pool, session_id: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    let deleted = client
        .execute(
            "DELETE FROM uia_sessions WHERE session_id = $1",
            &[&session_id],
        )
        .await?;
    Ok(deleted == 1)
}

pub struct Profile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

pub async fn profile(pool: &Pool, user_id: &str) -> StorageResult<Option<Profile>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT displayname, avatar_url FROM users WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
    Ok(row.map(|row| Profile {
        displayname: row.get(0),
        avatar_url: row.get(1),
    }))
}

pub async fn set_displayname(
    pool: &Pool,
    user_id: &str,
    displayname: Option<&str>,
) -> StorageResult<()> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "UPDATE users SET displayname = $2 WHERE user_id = $1",
            &[&user_id, &displayname],
        )
        .await?;
    super::user_directory::set_terms(&transaction, user_id, displayname).await?;
    transaction.commit().await?;
    Ok(())
}

pub async fn set_avatar_url(
    pool: &Pool,
    user_id: &str,
    avatar_url: Option<&str>,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE users SET avatar_url = $2 WHERE user_id = $1",
            &[&user_id, &avatar_url],
        )
        .await?;
    Ok(())
}

pub async fn create_filter(
    pool: &Pool,
    user_id: &str,
    filter: &serde_json::Value,
) -> StorageResult<i64> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "INSERT INTO filters (user_id, filter_id, filter)
             VALUES ($1, nextval('filter_id_seq'), $2) RETURNING filter_id",
            &[&user_id, filter],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn filter(
    pool: &Pool,
    user_id: &str,
    filter_id: i64,
) -> StorageResult<Option<serde_json::Value>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT filter FROM filters WHERE user_id = $1 AND filter_id = $2",
            &[&user_id, &filter_id],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}
