//! Registration tokens (`registration_requires_token`): the tokens admins
//! make, and their uses counted as Synapse counts them. A registration's
//! auth session that accepts a token holds one `pending` use of it
//! ([`hold_for_session`], checking and counting in one statement, so that
//! concurrent registrations never take more uses than allowed); the use is
//! `completed` in the transaction that creates the account
//! ([`super::accounts::register_user`]), or given back when the session
//! expires unused ([`super::accounts::delete_uia_sessions_older_than`]).

use deadpool_postgres::{GenericClient, Pool};
use serde::Serialize;

use super::StorageResult;
use crate::util::now_ms;

/// A token as the admin API shows it (Synapse's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationToken {
    pub token: String,
    /// `None`: no limit.
    pub uses_allowed: Option<i32>,
    /// Registrations under way that accepted it.
    pub pending: i32,
    /// Accounts made with it.
    pub completed: i32,
    /// When it stops being valid (ms since the epoch); `None`: never.
    pub expiry_time: Option<i64>,
}

const COLUMNS: &str = "token, uses_allowed, pending, completed, expiry_time";

fn from_row(row: &tokio_postgres::Row) -> RegistrationToken {
    RegistrationToken {
        token: row.get(0),
        uses_allowed: row.get(1),
        pending: row.get(2),
        completed: row.get(3),
        expiry_time: row.get(4),
    }
}

/// The condition a valid token meets at `$now` (its `uses_allowed` not
/// used up by the pending and completed uses, its expiry not reached).
const VALID: &str = "(uses_allowed IS NULL OR pending + completed < uses_allowed)
                     AND (expiry_time IS NULL OR expiry_time > $now)";

fn valid_at(now_parameter: &str) -> String {
    VALID.replace("$now", now_parameter)
}

/// Every token, by token; only the valid ones (`Some(true)`) or only the
/// others (`Some(false)`) if asked.
pub async fn list(pool: &Pool, valid: Option<bool>) -> StorageResult<Vec<RegistrationToken>> {
    let client = pool.get().await?;
    let rows = match valid {
        None => {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM registration_tokens ORDER BY token"),
                    &[],
                )
                .await?
        }
        Some(valid) => {
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM registration_tokens WHERE ({}) = $2 ORDER BY token",
                        valid_at("$1")
                    ),
                    &[&now_ms(), &valid],
                )
                .await?
        }
    };
    Ok(rows.iter().map(from_row).collect())
}

pub async fn get(pool: &Pool, token: &str) -> StorageResult<Option<RegistrationToken>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM registration_tokens WHERE token = $1"),
            &[&token],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Whether `token` may be used now.
pub async fn is_valid(pool: &Pool, token: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT 1 FROM registration_tokens WHERE token = $1 AND {}",
                valid_at("$2")
            ),
            &[&token, &now_ms()],
        )
        .await?;
    Ok(row.is_some())
}

/// Stores a new token; false when it exists already.
pub async fn create(
    pool: &Pool,
    token: &str,
    uses_allowed: Option<i32>,
    expiry_time: Option<i64>,
) -> StorageResult<bool> {
    let client = pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO registration_tokens (token, uses_allowed, expiry_time) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&token, &uses_allowed, &expiry_time],
        )
        .await?;
    Ok(inserted == 1)
}

/// What an update changes: `None` leaves a field as it is, `Some(None)`
/// clears it.
#[derive(Debug, Default)]
pub struct TokenChanges {
    pub uses_allowed: Option<Option<i32>>,
    pub expiry_time: Option<Option<i64>>,
}

/// Changes a token; `None` when there is no such token.
pub async fn update(
    pool: &Pool,
    token: &str,
    changes: &TokenChanges,
) -> StorageResult<Option<RegistrationToken>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE registration_tokens SET
                   uses_allowed = CASE WHEN $2 THEN $3 ELSE uses_allowed END,
                   expiry_time = CASE WHEN $4 THEN $5 ELSE expiry_time END
                 WHERE token = $1
                 RETURNING {COLUMNS}"
            ),
            &[
                &token,
                &changes.uses_allowed.is_some(),
                &changes.uses_allowed.flatten(),
                &changes.expiry_time.is_some(),
                &changes.expiry_time.flatten(),
            ],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Deletes a token (the sessions holding a use of it let go of it); false
/// when there was none.
pub async fn delete(pool: &Pool, token: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    let deleted = client
        .execute(
            "DELETE FROM registration_tokens WHERE token = $1",
            &[&token],
        )
        .await?;
    Ok(deleted == 1)
}

/// What [`hold_for_session`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The session now holds a pending use of the token (or already did).
    Held,
    /// The session holds a use of another token.
    OtherToken,
    /// The token does not exist, expired or is used up.
    Invalid,
    /// No registration session has this id.
    UnknownSession,
}

/// Lets a registration's session take a pending use of `token`, once: the
/// token's validity is checked and its `pending` raised in one statement,
/// in the transaction that records the token and the completed stage
/// `stage` in the session.
pub async fn hold_for_session(
    pool: &Pool,
    session_id: &str,
    token: &str,
    stage: &str,
) -> StorageResult<Hold> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let Some(row) = transaction
        .query_opt(
            "SELECT registration_token FROM uia_sessions
             WHERE session_id = $1 AND user_id IS NULL FOR UPDATE",
            &[&session_id],
        )
        .await?
    else {
        return Ok(Hold::UnknownSession);
    };
    match row.get::<_, Option<String>>(0) {
        Some(held) if held == token => return Ok(Hold::Held),
        Some(_) => return Ok(Hold::OtherToken),
        None => {}
    }
    let taken = transaction
        .execute(
            &format!(
                "UPDATE registration_tokens SET pending = pending + 1
                 WHERE token = $1 AND {}",
                valid_at("$2")
            ),
            &[&token, &now_ms()],
        )
        .await?;
    if taken == 0 {
        return Ok(Hold::Invalid);
    }
    transaction
        .execute(
            "UPDATE uia_sessions SET registration_token = $2,
               completed = CASE WHEN $3 = ANY(completed) THEN completed
                                ELSE array_append(completed, $3) END
             WHERE session_id = $1",
            &[&session_id, &token, &stage],
        )
        .await?;
    transaction.commit().await?;
    Ok(Hold::Held)
}

/// Counts the use a registration's session held as completed, in the
/// transaction that ends the session.
pub async fn complete_use(client: &impl GenericClient, token: &str) -> StorageResult<()> {
    client
        .execute(
            "UPDATE registration_tokens SET pending = GREATEST(pending - 1, 0), completed = completed + 1
             WHERE token = $1",
            &[&token],
        )
        .await?;
    Ok(())
}
