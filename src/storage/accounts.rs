//! Users, access tokens (with the device each is for: `devices.rs` has the
//! rest), refresh and login tokens, user-interactive auth sessions and
//! filters. Every token is stored as its SHA-256 ([`hash_token`]), never in
//! the clear.

use deadpool_postgres::{GenericClient, Pool};
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
    /// When the token stops working (ms since the epoch): only tokens given
    /// with a refresh token expire.
    pub expires_ts: Option<i64>,
    /// A token issued by a refresh that has not been used yet: its first
    /// use spends the refresh token before it ([`mark_token_used`]).
    pub first_use_pending: bool,
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
    let inserted = insert_user(&transaction, user_id, localpart, password_hash, is_admin).await?;
    transaction.commit().await?;
    Ok(inserted)
}

/// Inserts the user and their user directory terms; false when the id is
/// taken.
async fn insert_user(
    transaction: &deadpool_postgres::Transaction<'_>,
    user_id: &str,
    localpart: &str,
    password_hash: Option<&str>,
    is_admin: bool,
) -> StorageResult<bool> {
    let inserted = transaction
        .execute(
            "INSERT INTO users (user_id, localpart, password_hash, is_admin, displayname, created_ts)
             VALUES ($1, $2, $3, $4, $2, $5) ON CONFLICT DO NOTHING",
            &[&user_id, &localpart, &password_hash, &is_admin, &now_ms()],
        )
        .await?;
    if inserted == 1 {
        super::user_directory::set_terms(transaction, user_id, Some(localpart)).await?;
    }
    Ok(inserted == 1)
}

/// What [`register_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    UserIdTaken,
    /// The auth session had ended (a concurrent registration with it
    /// finished first): nothing was created.
    SessionEnded,
}

/// Creates a user through `/register`, ending the registration's auth
/// session (if it had one) in the same transaction, and counting the
/// registration token use the session held as completed: a session
/// registers one account, and a token use is never both given back and
/// spent.
pub async fn register_user(
    pool: &Pool,
    user_id: &str,
    localpart: &str,
    password_hash: &str,
    session_id: Option<&str>,
) -> StorageResult<Registered> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    if let Some(session_id) = session_id {
        let Some(ended) = transaction
            .query_opt(
                "DELETE FROM uia_sessions WHERE session_id = $1 AND user_id IS NULL
                 RETURNING registration_token",
                &[&session_id],
            )
            .await?
        else {
            return Ok(Registered::SessionEnded);
        };
        if let Some(token) = ended.get::<_, Option<String>>(0) {
            super::registration_tokens::complete_use(&transaction, &token).await?;
        }
    }
    if !insert_user(&transaction, user_id, localpart, Some(password_hash), false).await? {
        return Ok(Registered::UserIdTaken);
    }
    transaction.commit().await?;
    Ok(Registered::Created)
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

/// The refresh half of a session whose access token expires.
pub struct NewRefreshToken<'a> {
    pub refresh_token: &'a str,
    /// When the access token issued with it expires.
    pub access_expires_ts: i64,
}

/// Creates (or refreshes) the device and a new access token for it, with a
/// refresh token when `refresh` is given.
pub async fn create_device_and_token(
    pool: &Pool,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    token: &str,
    refresh: Option<NewRefreshToken<'_>>,
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
    delete_device_tokens(&transaction, user_id, &[device_id]).await?;
    match refresh {
        None => {
            transaction
                .execute(
                    "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)
                     VALUES ($1, $2, $3, $4)",
                    &[&hash_token(token), &user_id, &device_id, &now_ms()],
                )
                .await?;
        }
        Some(refresh) => {
            insert_refreshable_pair(&transaction, user_id, device_id, token, &refresh).await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// Deletes every access and refresh token of these devices of the user.
pub async fn delete_device_tokens(
    client: &impl GenericClient,
    user_id: &str,
    device_ids: &[&str],
) -> StorageResult<()> {
    client
        .execute(
            "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = ANY($2)",
            &[&user_id, &device_ids],
        )
        .await?;
    client
        .execute(
            "DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = ANY($2)",
            &[&user_id, &device_ids],
        )
        .await?;
    Ok(())
}

/// Stores a refresh token and the expiring access token issued with it;
/// the refresh token's id.
async fn insert_refreshable_pair(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    access_token: &str,
    refresh: &NewRefreshToken<'_>,
) -> StorageResult<i64> {
    let row = client
        .query_one(
            "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[
                &hash_token(refresh.refresh_token),
                &user_id,
                &device_id,
                &now_ms(),
            ],
        )
        .await?;
    let refresh_id: i64 = row.get(0);
    client
        .execute(
            "INSERT INTO access_tokens
               (token_hash, user_id, device_id, created_ts, expires_ts, refresh_token_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &hash_token(access_token),
                &user_id,
                &device_id,
                &now_ms(),
                &refresh.access_expires_ts,
                &refresh_id,
            ],
        )
        .await?;
    Ok(refresh_id)
}

/// What became of a refresh token given to `POST /refresh`.
#[derive(Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// Swapped: the new pair is stored, the old access token is gone.
    Swapped { user_id: String, device_id: String },
    /// No such token (never issued, or long since spent).
    Unknown,
    /// Spent already, and its successor has been used since: the token was
    /// copied, and the session it belongs to must end.
    Reused { user_id: String, device_id: String },
}

/// Swaps `old_refresh_token` for `access_token` and `refresh.refresh_token`,
/// in one transaction. The spec's rule: the old refresh token stays good
/// until its successor (the new access token or the new refresh token) is
/// used, so a client that lost the answer can ask again (the unused
/// successor is then replaced); after that it is spent, and using it again
/// is [`Refreshed::Reused`]. The old access token ends at once (the spec
/// lets the server choose), and the refresh token spent before the old one
/// is forgotten.
pub async fn refresh_session(
    pool: &Pool,
    old_refresh_token: &str,
    access_token: &str,
    refresh: NewRefreshToken<'_>,
) -> StorageResult<Refreshed> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let Some(row) = transaction
        .query_opt(
            "SELECT id, user_id, device_id, next_token_id FROM refresh_tokens
             WHERE token_hash = $1 FOR UPDATE",
            &[&hash_token(old_refresh_token)],
        )
        .await?
    else {
        return Ok(Refreshed::Unknown);
    };
    let old_id: i64 = row.get(0);
    let user_id: String = row.get(1);
    let device_id: String = row.get(2);
    if let Some(successor) = row.get::<_, Option<i64>>(3) {
        let successor_used = transaction
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM refresh_tokens
                                WHERE id = $1 AND next_token_id IS NOT NULL)
                     OR EXISTS (SELECT 1 FROM access_tokens
                                WHERE refresh_token_id = $1 AND used)",
                &[&successor],
            )
            .await?
            .get::<_, bool>(0);
        if successor_used {
            return Ok(Refreshed::Reused { user_id, device_id });
        }
        // Never used: replaced by the pair issued now (its access token
        // goes with it, by the foreign key).
        transaction
            .execute("DELETE FROM refresh_tokens WHERE id = $1", &[&successor])
            .await?;
    }
    let new_id =
        insert_refreshable_pair(&transaction, &user_id, &device_id, access_token, &refresh).await?;
    transaction
        .execute(
            "UPDATE refresh_tokens SET next_token_id = $2 WHERE id = $1",
            &[&old_id, &new_id],
        )
        .await?;
    transaction
        .execute(
            "DELETE FROM access_tokens WHERE refresh_token_id = $1",
            &[&old_id],
        )
        .await?;
    transaction
        .execute(
            "DELETE FROM refresh_tokens WHERE next_token_id = $1",
            &[&old_id],
        )
        .await?;
    transaction.commit().await?;
    Ok(Refreshed::Swapped { user_id, device_id })
}

/// Notes the first use of an access token issued by a refresh, which
/// spends the refresh token it was issued for.
pub async fn mark_token_used(pool: &Pool, token: &str) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE access_tokens SET used = TRUE WHERE token_hash = $1 AND NOT used",
            &[&hash_token(token)],
        )
        .await?;
    Ok(())
}

pub async fn token_owner(pool: &Pool, token: &str) -> StorageResult<Option<TokenOwner>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT t.user_id, t.device_id, u.is_admin, u.deactivated, t.expires_ts,
                    t.refresh_token_id IS NOT NULL AND NOT t.used
             FROM access_tokens t JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = $1",
        )
        .await?;
    let row = client.query_opt(&statement, &[&hash_token(token)]).await?;
    Ok(row.map(|row| TokenOwner {
        user_id: row.get(0),
        device_id: row.get(1),
        is_admin: row.get(2),
        deactivated: row.get(3),
        expires_ts: row.get(4),
        first_use_pending: row.get(5),
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

/// The stages a registration's session (one bound to no user) completed;
/// `None` for an unknown session or one of a signed-in user.
pub async fn registration_session_stages(
    pool: &Pool,
    session_id: &str,
) -> StorageResult<Option<Vec<String>>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT completed FROM uia_sessions WHERE session_id = $1 AND user_id IS NULL",
            &[&session_id],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Records that a registration's session completed `stage`; false for an
/// unknown session.
pub async fn complete_registration_stage(
    pool: &Pool,
    session_id: &str,
    stage: &str,
) -> StorageResult<bool> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE uia_sessions SET completed = CASE WHEN $2 = ANY(completed) THEN completed
                                                      ELSE array_append(completed, $2) END
             WHERE session_id = $1 AND user_id IS NULL",
            &[&session_id, &stage],
        )
        .await?;
    Ok(updated == 1)
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
/// abandoned), giving back the registration token uses they held, in one
/// statement; how many went.
pub async fn delete_uia_sessions_older_than(pool: &Pool, before_ts: i64) -> StorageResult<u64> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "WITH gone AS (
               DELETE FROM uia_sessions WHERE created_ts < $1 RETURNING registration_token
             ),
             given_back AS (
               UPDATE registration_tokens t SET pending = GREATEST(t.pending - g.uses, 0)
               FROM (
                 SELECT registration_token, COUNT(*)::INTEGER AS uses FROM gone
                 WHERE registration_token IS NOT NULL GROUP BY registration_token
               ) g
               WHERE t.token = g.registration_token
             )
             SELECT COUNT(*) FROM gone",
            &[&before_ts],
        )
        .await?;
    Ok(row.get::<_, i64>(0).unsigned_abs())
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

/// Replaces the user's password hash.
pub async fn set_password_hash(
    pool: &Pool,
    user_id: &str,
    password_hash: &str,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE users SET password_hash = $2 WHERE user_id = $1",
            &[&user_id, &password_hash],
        )
        .await?;
    Ok(())
}

/// Marks the account deactivated (and erased, with `erase`), for good:
/// its profile, extended profile fields and user directory entry go. The
/// password hash stays, so that the right password is told the account is
/// deactivated rather than that it is wrong.
pub async fn deactivate(pool: &Pool, user_id: &str, erase: bool) -> StorageResult<()> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "UPDATE users SET deactivated = TRUE, erased = erased OR $2,
                              displayname = NULL, avatar_url = NULL
             WHERE user_id = $1",
            &[&user_id, &erase],
        )
        .await?;
    transaction
        .execute("DELETE FROM profile_fields WHERE user_id = $1", &[&user_id])
        .await?;
    transaction
        .execute(
            "DELETE FROM user_directory_terms WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
    transaction.commit().await?;
    Ok(())
}

/// Whether the account was deactivated with `erase: true`.
pub async fn is_erased(pool: &Pool, user_id: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    let row = client
        .query_opt("SELECT erased FROM users WHERE user_id = $1", &[&user_id])
        .await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

/// Stores a login token for `user_id` until `expires_ts`, and forgets the
/// ones that have expired.
pub async fn create_login_token(
    pool: &Pool,
    token: &str,
    user_id: &str,
    expires_ts: i64,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "DELETE FROM login_tokens WHERE expires_ts < $1",
            &[&now_ms()],
        )
        .await?;
    client
        .execute(
            "INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)",
            &[&hash_token(token), &user_id, &expires_ts],
        )
        .await?;
    Ok(())
}

/// Spends a login token: the user it was issued to when it exists and has
/// not expired. Either way it cannot be used again.
pub async fn consume_login_token(pool: &Pool, token: &str) -> StorageResult<Option<String>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "DELETE FROM login_tokens WHERE token_hash = $1 RETURNING user_id, expires_ts",
            &[&hash_token(token)],
        )
        .await?;
    Ok(row.and_then(|row| {
        let expires_ts: i64 = row.get(1);
        (expires_ts >= now_ms()).then(|| row.get(0))
    }))
}

/// The user's extended profile fields (every key but `displayname` and
/// `avatar_url`), by key.
pub async fn profile_fields(
    pool: &Pool,
    user_id: &str,
) -> StorageResult<Vec<(String, serde_json::Value)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT field, value FROM profile_fields WHERE user_id = $1 ORDER BY field",
            &[&user_id],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Sets one extended profile field, unless the whole profile (its JSON,
/// display name, avatar and every field) would then be larger than
/// `max_profile_bytes`; false when it would. Writers of the same profile
/// take turns (the user's row is locked), so two cannot both fit.
pub async fn set_profile_field(
    pool: &Pool,
    user_id: &str,
    field: &str,
    value: &serde_json::Value,
    max_profile_bytes: usize,
) -> StorageResult<bool> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let Some(user) = transaction
        .query_opt(
            "SELECT displayname, avatar_url FROM users WHERE user_id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?
    else {
        return Ok(false);
    };
    let mut profile = serde_json::Map::new();
    for (index, key) in ["displayname", "avatar_url"].into_iter().enumerate() {
        if let Some(text) = user.get::<_, Option<String>>(index) {
            profile.insert(key.to_owned(), serde_json::Value::String(text));
        }
    }
    let rows = transaction
        .query(
            "SELECT field, value FROM profile_fields WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
    for row in &rows {
        profile.insert(row.get(0), row.get(1));
    }
    profile.insert(field.to_owned(), value.clone());
    let size = serde_json::to_vec(&profile).map_or(usize::MAX, |bytes| bytes.len());
    if size > max_profile_bytes {
        return Ok(false);
    }
    transaction
        .execute(
            "INSERT INTO profile_fields (user_id, field, value) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, field) DO UPDATE SET value = EXCLUDED.value",
            &[&user_id, &field, value],
        )
        .await?;
    transaction.commit().await?;
    Ok(true)
}

/// Deletes one extended profile field (no error when it is not set).
pub async fn delete_profile_field(pool: &Pool, user_id: &str, field: &str) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "DELETE FROM profile_fields WHERE user_id = $1 AND field = $2",
            &[&user_id, &field],
        )
        .await?;
    Ok(())
}
