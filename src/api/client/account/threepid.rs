//! Third-party ids (email addresses, phone numbers). Lattice sends no email,
//! has no SMS delegate and talks to no identity server, so no account has a
//! third-party id; these endpoints answer as Synapse answers when neither
//! `email` nor `account_threepid_delegates` is configured:
//! requesting a validation token is refused with
//! `M_THREEPID_MEDIUM_NOT_SUPPORTED` (`M_UNKNOWN` for password resets and
//! registration, as Synapse), adding one fails for want of a validated
//! session (`M_THREEPID_AUTH_FAILED`), and unbinding or deleting one finds
//! nothing to do (`id_server_unbind_result: "no-support"`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::client::uiaa::{self, AuthData};
use crate::api::limits::check_bytes;
use crate::api::{rate_limit_ip, JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;

/// GET /_matrix/client/v3/account/3pid
pub async fn get_threepids(_requester: Requester) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "threepids": [] }))
}

/// POST /_matrix/client/v3/account/3pid/email/requestToken
pub async fn request_email_token(_requester: Requester) -> ApiResult<HttpResponse> {
    Err(ApiError::new(
        ErrCode::ThreepidMediumNotSupported,
        "adding an email address to an account is disabled on this server",
    ))
}

/// The body of the `msisdn/requestToken` endpoints, checked before the
/// answer (as Synapse parses it first). Here and below, fields marked
/// `allow(dead_code)` are read only to require them.
#[derive(Deserialize)]
pub struct MsisdnTokenRequest {
    client_secret: String,
    country: String,
    phone_number: String,
    #[allow(dead_code)]
    send_attempt: u64,
}

impl MsisdnTokenRequest {
    fn check(&self) -> ApiResult<()> {
        check_client_secret(&self.client_secret)?;
        check_bytes("country", &self.country, 2)?;
        check_bytes("phone_number", &self.phone_number, 255)
    }
}

/// POST /_matrix/client/v3/account/3pid/msisdn/requestToken
pub async fn request_msisdn_token(
    _requester: Requester,
    JsonBody(body): JsonBody<MsisdnTokenRequest>,
) -> ApiResult<HttpResponse> {
    body.check()?;
    Err(ApiError::new(
        ErrCode::ThreepidMediumNotSupported,
        "adding a phone number to an account is not supported by this server",
    ))
}

/// POST /_matrix/client/v3/account/password/email/requestToken
pub async fn request_password_email_token(request: HttpRequest) -> ApiResult<HttpResponse> {
    rate_limit_ip(&request)?;
    Err(ApiError::new(
        ErrCode::Unknown,
        "email-based password resets are disabled on this server",
    ))
}

/// POST /_matrix/client/v3/register/email/requestToken
pub async fn request_register_email_token(request: HttpRequest) -> ApiResult<HttpResponse> {
    rate_limit_ip(&request)?;
    Err(ApiError::new(
        ErrCode::Unknown,
        "email-based registration is disabled on this server",
    ))
}

/// POST /_matrix/client/v3/register/msisdn/requestToken
pub async fn request_register_msisdn_token(
    request: HttpRequest,
    JsonBody(body): JsonBody<MsisdnTokenRequest>,
) -> ApiResult<HttpResponse> {
    rate_limit_ip(&request)?;
    body.check()?;
    Err(ApiError::new(
        ErrCode::Unknown,
        "registration by phone number is not supported on this server",
    ))
}

#[derive(Deserialize)]
pub struct AddThreepidRequest {
    auth: Option<AuthData>,
    client_secret: String,
    sid: String,
}

/// POST /_matrix/client/v3/account/3pid/add
///
/// After the password, as Synapse: no validation session can exist here.
pub async fn add_threepid(
    request: HttpRequest,
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<AddThreepidRequest>,
) -> ApiResult<HttpResponse> {
    check_client_secret(&body.client_secret)?;
    check_bytes("sid", &body.sid, 255)?;
    uiaa::authenticate_with_password(&node, &request, &requester, body.auth.as_ref()).await?;
    Err(no_validated_session())
}

/// POST /_matrix/client/v3/account/3pid (deprecated)
pub async fn post_threepid(
    _requester: Requester,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<HttpResponse> {
    let credentials = body
        .get("three_pid_creds")
        .or_else(|| body.get("threePidCreds"))
        .ok_or_else(|| ApiError::missing_param("missing param three_pid_creds"))?;
    for field in ["client_secret", "sid"] {
        if credentials.get(field).and_then(Value::as_str).is_none() {
            return Err(ApiError::missing_param(format!(
                "three_pid_creds.{field} is required"
            )));
        }
    }
    Err(no_validated_session())
}

#[derive(Deserialize)]
pub struct BindRequest {
    client_secret: String,
    #[allow(dead_code)]
    id_access_token: String,
    id_server: String,
    sid: String,
}

/// POST /_matrix/client/v3/account/3pid/bind
///
/// Synapse asks the identity server; Lattice talks to none.
pub async fn bind_threepid(
    _requester: Requester,
    JsonBody(body): JsonBody<BindRequest>,
) -> ApiResult<HttpResponse> {
    check_client_secret(&body.client_secret)?;
    check_bytes("sid", &body.sid, 255)?;
    Err(ApiError::new(
        ErrCode::Unknown,
        format!(
            "this server does not talk to identity servers, so it cannot bind through {}",
            body.id_server
        ),
    ))
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    Email,
    Msisdn,
}

/// The body of `unbind` and `delete`.
#[derive(Deserialize)]
pub struct ThreepidRequest {
    #[allow(dead_code)]
    address: String,
    #[allow(dead_code)]
    medium: Medium,
    #[allow(dead_code)]
    id_server: Option<String>,
}

/// POST /_matrix/client/v3/account/3pid/unbind
pub async fn unbind_threepid(
    _requester: Requester,
    JsonBody(_body): JsonBody<ThreepidRequest>,
) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "id_server_unbind_result": "no-support" }))
}

/// POST /_matrix/client/v3/account/3pid/delete
pub async fn delete_threepid(
    _requester: Requester,
    JsonBody(_body): JsonBody<ThreepidRequest>,
) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "id_server_unbind_result": "no-support" }))
}

fn no_validated_session() -> ApiError {
    ApiError::new(
        ErrCode::ThreepidAuthFailed,
        "no validated third-party id session found",
    )
}

/// The spec's client secret: 1 to 255 of `[0-9a-zA-Z.=_-]`.
fn check_client_secret(secret: &str) -> ApiResult<()> {
    let valid = !secret.is_empty()
        && secret.len() <= 255
        && secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '=' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid_param(
            "client_secret must be 1 to 255 of [0-9a-zA-Z.=_-]",
        ))
    }
}
