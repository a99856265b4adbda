//! Registration tokens for admins, modelled on Synapse's admin API of the
//! same name (`/_synapse/admin/v1/registration_tokens`), under
//! `/_lattice/admin/v1/registration_tokens`: list (`?valid=true|false`),
//! create (`POST .../new` with `token`, or a random one of `length`, and
//! `uses_allowed`, `expiry_time`), read, update (`PUT`) and delete. A token
//! is shown with its `pending` and `completed` uses. Bad fields are `400
//! M_INVALID_PARAM` with Synapse's reasons; an unknown token is `404`.

use actix_web::{web, HttpResponse};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::require_admin;
use crate::api::client::account::registration_auth::MAX_TOKEN_CHARS;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::storage::registration_tokens::{self, TokenChanges};
use crate::util::now_ms;

/// The characters a token may have (Synapse's: unreserved URI characters).
const TOKEN_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";

/// The length of a token made without one given.
const DEFAULT_LENGTH: i64 = 16;

#[derive(Deserialize)]
pub struct ListQuery {
    valid: Option<String>,
}

/// GET /_lattice/admin/v1/registration_tokens
pub async fn list_tokens(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let valid = match query.valid.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(ApiError::invalid_param("`valid` must be true or false")),
    };
    let tokens = registration_tokens::list(&node.pool, valid).await?;
    Ok(HttpResponse::Ok().json(json!({ "registration_tokens": tokens })))
}

/// POST /_lattice/admin/v1/registration_tokens/new
pub async fn create_token(
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let given = match body.get("token") {
        None => None,
        Some(Value::String(token)) => {
            check_token(token)?;
            Some(token.clone())
        }
        Some(_) => return Err(ApiError::invalid_param("token must be a string")),
    };
    let length = match body.get("length") {
        None => DEFAULT_LENGTH,
        Some(length) => length
            .as_i64()
            .filter(|length| (1..=MAX_TOKEN_CHARS as i64).contains(length))
            .ok_or_else(|| {
                ApiError::invalid_param(format!(
                    "length must be an integer greater than zero and not greater than {MAX_TOKEN_CHARS}"
                ))
            })?,
    };
    let uses_allowed = uses_allowed(body.get("uses_allowed"))?.flatten();
    let expiry_time = expiry_time(body.get("expiry_time"))?.flatten();
    let token = match given {
        Some(token) => {
            if !registration_tokens::create(&node.pool, &token, uses_allowed, expiry_time).await? {
                return Err(ApiError::invalid_param(format!(
                    "token already exists: {token}"
                )));
            }
            token
        }
        None => loop {
            // Retried on the rare collision, as Synapse does.
            let token = random_token(length as usize);
            if registration_tokens::create(&node.pool, &token, uses_allowed, expiry_time).await? {
                break token;
            }
        },
    };
    Ok(HttpResponse::Ok().json(json!({
        "token": token,
        "uses_allowed": uses_allowed,
        "pending": 0,
        "completed": 0,
        "expiry_time": expiry_time,
    })))
}

/// GET /_lattice/admin/v1/registration_tokens/{token}
pub async fn get_token(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let token = path.into_inner();
    let found = registration_tokens::get(&node.pool, &token)
        .await?
        .ok_or_else(|| not_found(&token))?;
    Ok(HttpResponse::Ok().json(found))
}

/// PUT /_lattice/admin/v1/registration_tokens/{token}
///
/// Changes the fields given (`null` clears one); none given answers the
/// token as it is.
pub async fn update_token(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let token = path.into_inner();
    let changes = TokenChanges {
        uses_allowed: uses_allowed(body.get("uses_allowed"))?,
        expiry_time: expiry_time(body.get("expiry_time"))?,
    };
    let updated = if changes.uses_allowed.is_none() && changes.expiry_time.is_none() {
        registration_tokens::get(&node.pool, &token).await?
    } else {
        registration_tokens::update(&node.pool, &token, &changes).await?
    };
    Ok(HttpResponse::Ok().json(updated.ok_or_else(|| not_found(&token))?))
}

/// DELETE /_lattice/admin/v1/registration_tokens/{token}
pub async fn delete_token(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let token = path.into_inner();
    if !registration_tokens::delete(&node.pool, &token).await? {
        return Err(not_found(&token));
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

fn not_found(token: &str) -> ApiError {
    ApiError::not_found(format!("no such registration token: {token}"))
}

/// A token an admin chose: 1 to 64 of [`TOKEN_CHARS`].
fn check_token(token: &str) -> ApiResult<()> {
    if token.is_empty() || token.chars().count() > MAX_TOKEN_CHARS {
        return Err(ApiError::invalid_param(format!(
            "token must not be empty and must not be longer than {MAX_TOKEN_CHARS} characters"
        )));
    }
    if !token.chars().all(|c| TOKEN_CHARS.contains(c)) {
        return Err(ApiError::invalid_param(
            "token must consist only of characters matched by the regex [A-Za-z0-9._~-]",
        ));
    }
    Ok(())
}

fn random_token(length: usize) -> String {
    let chars = TOKEN_CHARS.as_bytes();
    let mut rng = rand::thread_rng();
    (0..length)
        .map(|_| chars[rng.gen_range(0..chars.len())] as char)
        .collect()
}

/// `uses_allowed` as a body gives it: absent (`None`), `null` (no limit) or
/// a non-negative integer.
fn uses_allowed(value: Option<&Value>) -> ApiResult<Option<Option<i32>>> {
    match value {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(value) => value
            .as_i64()
            .filter(|uses| *uses >= 0)
            .and_then(|uses| i32::try_from(uses).ok())
            .map(|uses| Some(Some(uses)))
            .ok_or_else(|| {
                ApiError::invalid_param("uses_allowed must be a non-negative integer or null")
            }),
    }
}

/// `expiry_time` as a body gives it: absent (`None`), `null` (never) or a
/// time in milliseconds that is not past.
fn expiry_time(value: Option<&Value>) -> ApiResult<Option<Option<i64>>> {
    match value {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(value) => {
            let expiry = value
                .as_i64()
                .ok_or_else(|| ApiError::invalid_param("expiry_time must be an integer or null"))?;
            if expiry < now_ms() {
                return Err(ApiError::invalid_param(
                    "expiry_time must not be in the past",
                ));
            }
            Ok(Some(Some(expiry)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_1_to_64_unreserved_characters() {
        assert!(check_token("abc.DEF_~-9").is_ok());
        assert!(check_token("").is_err());
        assert!(check_token(&"a".repeat(65)).is_err());
        assert!(check_token("with space").is_err());
        assert!(check_token("slash/").is_err());
        let made = random_token(64);
        assert_eq!(made.len(), 64);
        assert!(check_token(&made).is_ok());
    }

    #[test]
    fn fields_are_absent_null_or_valid() {
        assert_eq!(uses_allowed(None).ok(), Some(None));
        assert_eq!(uses_allowed(Some(&Value::Null)).ok(), Some(Some(None)));
        assert_eq!(uses_allowed(Some(&json!(3))).ok(), Some(Some(Some(3))));
        assert!(uses_allowed(Some(&json!(-1))).is_err());
        assert!(uses_allowed(Some(&json!("3"))).is_err());
        assert!(uses_allowed(Some(&json!(1.5))).is_err());
        assert!(expiry_time(Some(&json!(1))).is_err());
        assert!(expiry_time(Some(&json!("soon"))).is_err());
        let later = now_ms() + 60_000;
        assert_eq!(
            expiry_time(Some(&json!(later))).ok(),
            Some(Some(Some(later)))
        );
    }
}
