//! The user-interactive authentication of `/register`: one flow, of
//! `m.login.dummy` alone, or, with `registration_requires_token`, of
//! `m.login.registration_token` then `m.login.dummy`, as Synapse puts the
//! token stage before each of its flows. Stages may be completed in any
//! order, each in its own request of the same session; the `401` that
//! answers an unfinished flow lists the stages done (`completed`).
//!
//! A token accepted by a session holds one pending use of it from then on
//! ([`registration_tokens::hold_for_session`]): the use is spent when the
//! account is made, in the same transaction that ends the session
//! ([`accounts::register_user`]), or given back when the session expires.
//! `GET /register/m.login.registration_token/validity` tells whether a
//! token may be used now.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::rate_limit_ip;
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::storage::accounts;
use crate::storage::registration_tokens::{self, Hold};
use crate::util::random_string;

pub const DUMMY_STAGE: &str = "m.login.dummy";
pub const TOKEN_STAGE: &str = "m.login.registration_token";

/// The longest token an admin can make (Synapse's limit): a longer one is
/// known to be invalid without asking the database.
pub const MAX_TOKEN_CHARS: usize = 64;

/// The `auth` object of a registration request.
#[derive(Debug, Default, Deserialize)]
pub struct RegistrationAuth {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub session: Option<String>,
    /// `m.login.registration_token`'s token (any JSON, checked here, so that
    /// a wrong type is the stage's `M_INVALID_PARAM`).
    pub token: Option<Value>,
}

/// The stages of the one flow offered.
pub fn flow(node: &Node) -> &'static [&'static str] {
    if node.config.registration_requires_token {
        &[TOKEN_STAGE, DUMMY_STAGE]
    } else {
        &[DUMMY_STAGE]
    }
}

/// Runs the flow for a registration request: `Ok(session)` once its
/// stages are all complete (the session to end with the registration;
/// `None` for the dummy flow completed without one), otherwise the error
/// the client is answered with, a `401` with the flow, the session and the
/// stages done when the client may go on.
pub async fn authenticate(
    node: &Node,
    auth: Option<&RegistrationAuth>,
) -> ApiResult<Option<String>> {
    let flow = flow(node);
    let given_session = auth.and_then(|auth| auth.session.as_deref());
    let Some(kind) = auth.and_then(|auth| auth.kind.as_deref()) else {
        // No stage attempted: where the flow stands, in a new session
        // unless the client named one it has.
        let session = match given_session {
            Some(session) => session.to_owned(),
            None => start_session(node).await?,
        };
        let completed = stages_of(node, &session).await?;
        return Err(challenge(flow, &session, &completed, None));
    };
    if !flow.contains(&kind) {
        return Err(ApiError::invalid_param(format!(
            "unsupported auth type `{kind}`"
        )));
    }
    let session = match given_session {
        Some(session) => session.to_owned(),
        // The dummy flow alone needs no session, as before tokens.
        None if flow == [DUMMY_STAGE] => return Ok(None),
        None if kind == TOKEN_STAGE => {
            return Err(ApiError::missing_param(
                "the registration token stage needs a session",
            ))
        }
        None => start_session(node).await?,
    };
    if kind == TOKEN_STAGE {
        let token = match auth.and_then(|auth| auth.token.as_ref()) {
            None => return Err(ApiError::missing_param("missing registration token")),
            Some(Value::String(token)) => token,
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "the registration token must be a string",
                ))
            }
        };
        let held = if token.chars().count() > MAX_TOKEN_CHARS {
            Hold::Invalid
        } else {
            registration_tokens::hold_for_session(&node.pool, &session, token, TOKEN_STAGE).await?
        };
        match held {
            Hold::Held => {}
            Hold::UnknownSession => return Err(unknown_session()),
            Hold::OtherToken => {
                return Err(ApiError::invalid_param(
                    "the registration token has changed",
                ))
            }
            Hold::Invalid => {
                let completed = stages_of(node, &session).await?;
                return Err(challenge(
                    flow,
                    &session,
                    &completed,
                    Some(ApiError::new(
                        ErrCode::Unauthorized,
                        "invalid registration token",
                    )),
                ));
            }
        }
    } else if !accounts::complete_registration_stage(&node.pool, &session, kind).await? {
        return Err(unknown_session());
    }
    let completed = stages_of(node, &session).await?;
    if flow
        .iter()
        .all(|stage| completed.iter().any(|done| done == stage))
    {
        Ok(Some(session))
    } else {
        Err(challenge(flow, &session, &completed, None))
    }
}

async fn start_session(node: &Node) -> ApiResult<String> {
    let session = random_string(24);
    accounts::create_uia_session(&node.pool, &session).await?;
    Ok(session)
}

/// The stages `session` completed; an unknown session is an error.
async fn stages_of(node: &Node, session: &str) -> ApiResult<Vec<String>> {
    accounts::registration_session_stages(&node.pool, session)
        .await?
        .ok_or_else(unknown_session)
}

fn unknown_session() -> ApiError {
    ApiError::new(ErrCode::Unknown, "unknown user-interactive auth session")
}

/// The spec's `401`: the flow, the session and the stages done, with the
/// errcode and message of a failed stage when there was one.
fn challenge(
    flow: &[&str],
    session: &str,
    completed: &[String],
    failure: Option<ApiError>,
) -> ApiError {
    let mut error = failure.unwrap_or_else(|| {
        ApiError::new(
            ErrCode::Unauthorized,
            "user-interactive authentication required",
        )
    });
    let mut uia = json!({
        "flows": [{ "stages": flow }],
        "params": {},
        "session": session,
    });
    if !completed.is_empty() {
        uia["completed"] = json!(completed);
    }
    error.uia = Some(uia);
    error
}

#[derive(Deserialize)]
pub struct ValidityQuery {
    token: Option<String>,
}

/// GET /_matrix/client/v1/register/m.login.registration_token/validity
///
/// Rate limited by address, as the spec asks (guessing tokens); `403` when
/// registration is closed, as the spec says.
pub async fn registration_token_validity(
    request: HttpRequest,
    node: web::Data<Node>,
    query: web::Query<ValidityQuery>,
) -> ApiResult<HttpResponse> {
    rate_limit_ip(&request)?;
    if !node.config.enable_registration {
        return Err(ApiError::forbidden("registration has been disabled"));
    }
    let token = query
        .token
        .as_deref()
        .ok_or_else(|| ApiError::missing_param("`token` is required"))?;
    let valid = token.chars().count() <= MAX_TOKEN_CHARS
        && registration_tokens::is_valid(&node.pool, token).await?;
    Ok(HttpResponse::Ok().json(json!({ "valid": valid })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_lists_the_stages_done_once_there_are_some() {
        let first = challenge(&[TOKEN_STAGE, DUMMY_STAGE], "abc", &[], None);
        assert_eq!(first.errcode, ErrCode::Unauthorized);
        assert_eq!(
            first.uia,
            Some(json!({
                "flows": [{ "stages": [TOKEN_STAGE, DUMMY_STAGE] }],
                "params": {},
                "session": "abc",
            }))
        );
        let failed = challenge(
            &[TOKEN_STAGE, DUMMY_STAGE],
            "abc",
            &[DUMMY_STAGE.to_owned()],
            Some(ApiError::new(
                ErrCode::Unauthorized,
                "invalid registration token",
            )),
        );
        assert_eq!(failed.message, "invalid registration token");
        assert_eq!(
            failed.uia.as_ref().map(|uia| uia["completed"].clone()),
            Some(json!([DUMMY_STAGE]))
        );
    }
}
