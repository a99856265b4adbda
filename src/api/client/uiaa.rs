//! User-interactive authentication (the spec's "User-Interactive
//! Authentication API", ruma's `uiaa`) for a user who is already signed in
//! and asks for something that needs their password again: deleting
//! devices, uploading cross-signing keys.
//!
//! One flow with one stage, `m.login.password`, as Synapse offers a user
//! with a password. A request without `auth` starts a session and is
//! answered `401` with the flows; a wrong password (or an identifier naming
//! someone else) is `401` again with `M_FORBIDDEN`, and the client may try
//! again with the same session. A session is bound to the user and to the
//! request it was started for (method and path, as Synapse binds it), and
//! it authorises that request once: it ends when the password is accepted.
//! Failures count against the account's failed-login budget
//! (`rate_limits.login_failed_attempts`), as in Synapse.
//!
//! Registration's flow (`m.login.dummy`, and `m.login.registration_token`
//! when tokens are required: `account/registration_auth.rs`) shares the
//! sessions' table; its sessions are bound to no user, and neither kind is
//! accepted in place of the other.

use actix_web::HttpRequest;
use serde::Deserialize;
use serde_json::json;

use crate::api::limits::{check_bytes, MAX_PASSWORD_BYTES, MAX_UIA_SESSION_BYTES};
use crate::api::Requester;
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::storage::accounts::{self, UiaOperation};
use crate::util::random_string;

/// How long a session lasts (Synapse's `SESSION_EXPIRE_MS`): the
/// `background` instance deletes older ones, finished or not, hourly.
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(48 * 3600);

/// The one stage of the one flow offered.
pub const PASSWORD_STAGE: &str = "m.login.password";

/// The `auth` object of a request body (the spec's `AuthenticationData`),
/// with the fields of the `m.login.password` stage.
#[derive(Debug, Default, Deserialize)]
pub struct AuthData {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub session: Option<String>,
    pub identifier: Option<UserIdentifier>,
    /// Deprecated: the user id or localpart, before identifiers existed.
    pub user: Option<String>,
    pub password: Option<String>,
}

/// A `m.id.user` identifier (other kinds name no user of this server here).
#[derive(Debug, Deserialize)]
pub struct UserIdentifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub user: Option<String>,
}

/// Runs the password flow for `requester`'s `request`: `Ok` once they have
/// given their password in a session started for this request (which is
/// then over), otherwise the error the client is answered with, a `401`
/// carrying the flows and the session where the client may go on.
pub async fn authenticate_with_password(
    node: &Node,
    request: &HttpRequest,
    requester: &Requester,
    auth: Option<&AuthData>,
) -> ApiResult<()> {
    let operation = UiaOperation {
        user_id: requester.user_id.clone(),
        method: request.method().as_str().to_owned(),
        uri: request.path().to_owned(),
    };
    // Synapse refuses before anything once the failures are used up.
    node.login_failures.check_unused(&requester.user_id)?;
    let Some(auth) = auth else {
        let session = start_session(node, &operation).await?;
        return Err(challenge(&session, None));
    };
    let session = match &auth.session {
        Some(session) => {
            check_bytes("the auth session", session, MAX_UIA_SESSION_BYTES)?;
            match accounts::uia_operation(&node.pool, session).await? {
                None => {
                    return Err(ApiError::new(
                        ErrCode::Unknown,
                        "unknown user-interactive auth session",
                    ))
                }
                Some(bound) if bound.as_ref() != Some(&operation) => {
                    return Err(ApiError::forbidden(
                        "the user-interactive auth session was started for another request",
                    ))
                }
                Some(_) => session.clone(),
            }
        }
        None => start_session(node, &operation).await?,
    };
    let Some(kind) = &auth.kind else {
        return Err(challenge(&session, None));
    };
    if kind != PASSWORD_STAGE {
        return Err(ApiError::new(
            ErrCode::Unknown,
            format!("unknown login type `{kind}`"),
        ));
    }
    let named = match (&auth.identifier, &auth.user) {
        (Some(identifier), _) => {
            if identifier.kind != "m.id.user" {
                return Err(ApiError::new(
                    ErrCode::Unknown,
                    format!("unknown login identifier type `{}`", identifier.kind),
                ));
            }
            identifier
                .user
                .as_deref()
                .ok_or_else(|| ApiError::missing_param("identifier.user is required"))?
        }
        (None, Some(user)) => user.as_str(),
        (None, None) => return Err(ApiError::missing_param("an identifier is required")),
    };
    let password = auth
        .password
        .as_deref()
        .ok_or_else(|| ApiError::missing_param("a password is required"))?;
    check_bytes("the password", password, MAX_PASSWORD_BYTES)?;

    // Someone else's password never authorises this user's request: the
    // same answer as a wrong password, and without checking theirs (which
    // would tell the requester whether it was right).
    let accepted = names_user(named, &requester.user_id, &node.config.server_name) && {
        let record = accounts::password_record(&node.pool, &requester.user_id).await?;
        node.passwords
            .verify_or_dummy(password.to_owned(), record.and_then(|r| r.password_hash))
            .await
            .map_err(ApiError::internal)?
    };
    if !accepted {
        node.login_failures.use_one(&requester.user_id);
        return Err(challenge(
            &session,
            Some(ApiError::forbidden("invalid username or password")),
        ));
    }
    // The session authorises this one request: a concurrent request that
    // gave the same session and password finds it over.
    if !accounts::consume_uia_session(&node.pool, &session).await? {
        return Err(ApiError::new(
            ErrCode::Unknown,
            "unknown user-interactive auth session",
        ));
    }
    Ok(())
}

async fn start_session(node: &Node, operation: &UiaOperation) -> ApiResult<String> {
    let session = random_string(24);
    accounts::create_bound_uia_session(&node.pool, &session, operation).await?;
    Ok(session)
}

/// The `401` of the spec: the flows, their parameters and the session,
/// with the errcode and message of a failed attempt when there was one.
fn challenge(session: &str, failure: Option<ApiError>) -> ApiError {
    let mut error = failure.unwrap_or_else(|| {
        ApiError::new(
            ErrCode::Unauthorized,
            "user-interactive authentication required",
        )
    });
    error.uia = Some(json!({
        "flows": [{ "stages": [PASSWORD_STAGE] }],
        "params": {},
        "session": session,
    }));
    error
}

/// Whether the user an identifier names (a full id, or a localpart of this
/// server; case does not matter, as at login) is `user_id`.
fn names_user(named: &str, user_id: &str, server_name: &str) -> bool {
    let named = named.to_lowercase();
    if named.starts_with('@') {
        named == user_id
    } else {
        format!("@{named}:{server_name}") == user_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identifier_names_the_user_by_full_id_or_localpart() {
        let me = "@alice:lattice.test";
        assert!(names_user("@alice:lattice.test", me, "lattice.test"));
        assert!(names_user("alice", me, "lattice.test"));
        assert!(names_user("ALICE", me, "lattice.test"));
        assert!(names_user("@Alice:lattice.test", me, "lattice.test"));
        assert!(!names_user("bob", me, "lattice.test"));
        assert!(!names_user("@bob:lattice.test", me, "lattice.test"));
        assert!(!names_user("@alice:elsewhere.test", me, "lattice.test"));
        assert!(!names_user("alice:lattice.test", me, "lattice.test"));
        assert!(!names_user("", me, "lattice.test"));
    }

    #[test]
    fn the_challenge_carries_the_flow_the_session_and_any_failure() {
        let first = challenge("abc", None);
        assert_eq!(first.errcode, ErrCode::Unauthorized);
        assert_eq!(
            first.uia,
            Some(json!({
                "flows": [{ "stages": ["m.login.password"] }],
                "params": {},
                "session": "abc",
            }))
        );
        let failed = challenge("abc", Some(ApiError::forbidden("invalid password")));
        assert_eq!(failed.errcode, ErrCode::Forbidden);
        assert_eq!(failed.message, "invalid password");
        assert_eq!(first.uia, failed.uia);
    }
}
