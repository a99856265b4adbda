//! Accounts: registration (its user-interactive flow, with registration
//! tokens when they are required, in [`registration_auth`]),
//! login (by password, or by a login token from [`session`]), logout and
//! whoami; changing the password, deactivating and the third-party ids
//! this server does not keep are in the submodules, refreshing a session in
//! [`session`](super::session).

pub mod deactivate;
pub mod password;
pub mod registration_auth;
pub mod threepid;

pub use registration_auth::registration_token_validity;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::api::client::device;
use crate::api::limits::{
    check_bytes, check_chars, check_device_id, check_no_nul, MAX_DEVICE_DISPLAY_NAME_CHARS,
    MAX_PASSWORD_BYTES, MAX_UIA_SESSION_BYTES, MAX_USER_ID_BYTES,
};
use crate::api::{client_ip, rate_limit_ip, user_agent, JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::storage::{accounts, devices};
use crate::util::{now_ms, random_device_id, random_string};
use ruma::OwnedDeviceId;

#[derive(Deserialize)]
pub struct RegisterRequest {
    username: Option<String>,
    password: Option<String>,
    auth: Option<registration_auth::RegistrationAuth>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    /// The client takes refresh tokens (its access token then expires).
    #[serde(default)]
    refresh_token: bool,
}

#[derive(Deserialize)]
pub struct KindQuery {
    kind: Option<String>,
}

/// POST /_matrix/client/v3/register
pub async fn register(
    request: HttpRequest,
    node: web::Data<Node>,
    query: web::Query<KindQuery>,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> ApiResult<HttpResponse> {
    rate_limit_ip(&request)?;
    if query.kind.as_deref() == Some("guest") {
        return Err(ApiError::new(
            ErrCode::GuestAccessForbidden,
            "guest access is disabled",
        ));
    }
    if let Some(kind) = &query.kind {
        if kind != "user" {
            return Err(ApiError::invalid_param(format!("unknown kind `{kind}`")));
        }
    }
    if !node.config.enable_registration {
        return Err(ApiError::forbidden("registration has been disabled"));
    }
    check_new_device(
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
    )?;
    if let Some(session) = body.auth.as_ref().and_then(|auth| auth.session.as_deref()) {
        check_bytes("the auth session", session, MAX_UIA_SESSION_BYTES)?;
    }
    let localpart = match &body.username {
        Some(username) => validate_localpart(username, &node)?,
        None => loop {
            let candidate = random_string(12).to_lowercase();
            if !accounts::user_exists(&node.pool, &user_id(&candidate, &node)).await? {
                break candidate;
            }
        },
    };
    let user_id = user_id(&localpart, &node);
    if accounts::user_exists(&node.pool, &user_id).await? {
        return Err(ApiError::new(
            ErrCode::UserInUse,
            "the desired user id is already taken",
        ));
    }

    let session = registration_auth::authenticate(&node, body.auth.as_ref()).await?;

    let password = body
        .password
        .as_deref()
        .ok_or_else(|| ApiError::missing_param("a password is required"))?;
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::new(
            ErrCode::InvalidParam,
            format!("the password must be 1 to {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    let password_hash = node
        .passwords
        .hash(password.to_owned())
        .await
        .map_err(ApiError::internal)?;
    match accounts::register_user(
        &node.pool,
        &user_id,
        &localpart,
        &password_hash,
        session.as_deref(),
    )
    .await?
    {
        accounts::Registered::Created => {}
        accounts::Registered::UserIdTaken => {
            return Err(ApiError::new(
                ErrCode::UserInUse,
                "the desired user id is already taken",
            ))
        }
        accounts::Registered::SessionEnded => {
            return Err(ApiError::new(
                ErrCode::Unknown,
                "unknown user-interactive auth session",
            ))
        }
    }
    tracing::info!(user_id = %user_id, "registered user");
    if body.inhibit_login {
        return Ok(HttpResponse::Ok().json(json!({ "user_id": user_id })));
    }
    let device_id = body.device_id.unwrap_or_else(random_device_id);
    let mut answer = json!({
        "user_id": user_id,
        "device_id": device_id,
        "home_server": node.config.server_name,
    });
    let session = start_session(
        &node,
        &user_id,
        &device_id,
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )
    .await?;
    session.add_to(&mut answer);
    node.last_seen.record(
        &user_id,
        &device_id,
        &client_ip(&request),
        user_agent(&request),
        now_ms(),
    );
    Ok(HttpResponse::Ok().json(answer))
}
#[derive(Deserialize)]
pub struct AvailableQuery {
    username: String,
}

/// GET /_matrix/client/v3/register/available
pub async fn register_available(
    request: HttpRequest,
    node: web::Data<Node>,
    query: web::Query<AvailableQuery>,
) -> ApiResult<HttpResponse> {
    rate_limit_ip(&request)?;
    let localpart = validate_localpart(&query.username, &node)?;
    if accounts::user_exists(&node.pool, &user_id(&localpart, &node)).await? {
        return Err(ApiError::new(
            ErrCode::UserInUse,
            "the desired user id is already taken",
        ));
    }
    Ok(HttpResponse::Ok().json(json!({ "available": true })))
}

/// GET /_matrix/client/v3/login
///
/// `m.login.token` is offered when signing in from an existing session is
/// on (`login_via_existing_session`), as Synapse offers it then.
/// `m.login.application_service` is not listed: no application service
/// can be registered yet, so no one could use it.
pub async fn login_flows(node: web::Data<Node>) -> HttpResponse {
    let mut flows = vec![json!({ "type": PASSWORD_LOGIN })];
    if node.config.login_via_existing_session.enabled {
        flows.push(json!({ "type": TOKEN_LOGIN, "get_login_token": true }));
    }
    HttpResponse::Ok().json(json!({ "flows": flows }))
}

const PASSWORD_LOGIN: &str = "m.login.password";
const TOKEN_LOGIN: &str = "m.login.token";
const APPSERVICE_LOGIN: &str = "m.login.application_service";

#[derive(Deserialize)]
pub struct LoginRequest {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<UserIdentifier>,
    /// Deprecated: the user id or localpart, before identifiers existed.
    user: Option<String>,
    password: Option<String>,
    /// The login token of `m.login.token`.
    token: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    /// The client takes refresh tokens (its access token then expires).
    #[serde(default)]
    refresh_token: bool,
}

#[derive(Deserialize)]
pub struct UserIdentifier {
    #[serde(rename = "type")]
    kind: String,
    user: Option<String>,
}

/// POST /_matrix/client/v3/login
pub async fn login(
    request: HttpRequest,
    node: web::Data<Node>,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<HttpResponse> {
    rate_limit_ip(&request)?;
    check_new_device(
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
    )?;
    let user_id = match body.kind.as_str() {
        PASSWORD_LOGIN => password_login(&node, &body).await?,
        TOKEN_LOGIN if node.config.login_via_existing_session.enabled => {
            token_login(&node, &body).await?
        }
        APPSERVICE_LOGIN => return Err(appservice_login(&request)),
        other => {
            return Err(ApiError::new(
                ErrCode::Unknown,
                format!("unknown login type `{other}`"),
            ))
        }
    };
    let device_id = body.device_id.unwrap_or_else(random_device_id);
    let mut answer = json!({
        "user_id": user_id,
        "device_id": device_id,
        "home_server": node.config.server_name,
        "well_known": { "m.homeserver": { "base_url": node.config.public_baseurl() } },
    });
    let session = start_session(
        &node,
        &user_id,
        &device_id,
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )
    .await?;
    session.add_to(&mut answer);
    node.last_seen.record(
        &user_id,
        &device_id,
        &client_ip(&request),
        user_agent(&request),
        now_ms(),
    );
    Ok(HttpResponse::Ok().json(answer))
}

/// `m.login.password`: the user the password is right for.
async fn password_login(node: &Node, body: &LoginRequest) -> ApiResult<String> {
    let user = match (&body.identifier, &body.user) {
        (Some(identifier), _) => {
            if identifier.kind != "m.id.user" {
                return Err(ApiError::new(
                    ErrCode::Unknown,
                    format!("unsupported identifier type `{}`", identifier.kind),
                ));
            }
            identifier
                .user
                .clone()
                .ok_or_else(|| ApiError::missing_param("identifier.user is required"))?
        }
        (None, Some(user)) => user.clone(),
        (None, None) => return Err(ApiError::missing_param("an identifier is required")),
    };
    let password = body
        .password
        .clone()
        .ok_or_else(|| ApiError::missing_param("a password is required"))?;
    check_bytes("the password", &password, MAX_PASSWORD_BYTES)?;
    let user_id = if user.starts_with('@') {
        user.to_lowercase()
    } else {
        self::user_id(&user.to_lowercase(), node)
    };
    // No account has a longer id; refused before it keys a rate-limit bucket.
    check_bytes("the user id", &user_id, MAX_USER_ID_BYTES)?;
    // After too many failures, the account is closed to every attempt for a
    // while, whoever makes it and whatever the password (Synapse's order).
    node.login_failures.check_unused(&user_id)?;
    let record = accounts::password_record(&node.pool, &user_id).await?;
    let deactivated = record.as_ref().is_some_and(|r| r.deactivated);
    // Unknown accounts cost the same hash work as known ones.
    let valid = node
        .passwords
        .verify_or_dummy(password, record.and_then(|r| r.password_hash))
        .await
        .map_err(ApiError::internal)?;
    if !valid {
        node.login_failures.use_one(&user_id);
        return Err(ApiError::forbidden(INVALID_LOGIN));
    }
    if deactivated {
        return Err(deactivated_account());
    }
    Ok(user_id)
}

/// `m.login.token`: the user a login token (from `POST /login/get_token`)
/// was issued to. The token is spent whatever the outcome.
async fn token_login(node: &Node, body: &LoginRequest) -> ApiResult<String> {
    let token = body
        .token
        .as_deref()
        .ok_or_else(|| ApiError::missing_param("a token is required"))?;
    check_bytes("the login token", token, MAX_LOGIN_TOKEN_BYTES)?;
    let user_id = accounts::consume_login_token(&node.pool, token)
        .await?
        .ok_or_else(|| ApiError::forbidden("invalid login token"))?;
    let deactivated = accounts::password_record(&node.pool, &user_id)
        .await?
        .is_some_and(|r| r.deactivated);
    if deactivated {
        return Err(deactivated_account());
    }
    Ok(user_id)
}

/// `m.login.application_service`: an application service signs in one of
/// its users with its own token. No application service can be registered
/// yet, so no token is one: the answers Synapse gives a request without a
/// token and one whose token is no application service's.
fn appservice_login(request: &HttpRequest) -> ApiError {
    match crate::api::access_token(request) {
        Ok(Some(_)) => ApiError::new(
            ErrCode::UnknownToken,
            "unrecognised application service token: this server has no application services",
        ),
        Ok(None) => ApiError::new(
            ErrCode::MissingToken,
            "m.login.application_service needs the application service's token",
        ),
        Err(error) => error,
    }
}

fn deactivated_account() -> ApiError {
    ApiError::new(
        ErrCode::UserDeactivated,
        "this account has been deactivated",
    )
}

/// The longest login token accepted (ours are far shorter).
const MAX_LOGIN_TOKEN_BYTES: usize = 255;

/// The tokens of a new session, as the login or registration answer
/// carries them.
pub struct NewSession {
    pub access_token: String,
    /// The refresh token and how long the access token lasts (ms).
    pub refresh: Option<(String, u64)>,
}

impl NewSession {
    pub fn add_to(&self, answer: &mut serde_json::Value) {
        answer["access_token"] = json!(self.access_token);
        if let Some((refresh_token, expires_in_ms)) = &self.refresh {
            answer["refresh_token"] = json!(refresh_token);
            answer["expires_in_ms"] = json!(expires_in_ms);
        }
    }
}

/// Signs `user_id` in on `device_id` (created, or its old tokens replaced):
/// an access token that never expires, or with `refreshable` one that
/// lasts `refreshable_access_token_lifetime`, and a refresh token.
async fn start_session(
    node: &Node,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    refreshable: bool,
) -> ApiResult<NewSession> {
    let access_token = new_access_token();
    let lifetime_ms = node.config.refreshable_access_token_lifetime.as_millis();
    let refresh = refreshable.then(|| (new_refresh_token(), lifetime_ms));
    accounts::create_device_and_token(
        &node.pool,
        user_id,
        device_id,
        display_name,
        &access_token,
        refresh
            .as_ref()
            .map(|(refresh_token, _)| accounts::NewRefreshToken {
                refresh_token,
                access_expires_ts: expiry_from_now(lifetime_ms),
            }),
    )
    .await?;
    // The device's earlier tokens were replaced.
    node.forget_tokens(user_id, Some(device_id)).await?;
    tell_device_lists(node, user_id, vec![device_id.to_owned()]).await;
    Ok(NewSession {
        access_token,
        refresh,
    })
}

/// The time `lifetime_ms` from now, in ms since the epoch.
pub fn expiry_from_now(lifetime_ms: u64) -> i64 {
    now_ms().saturating_add(i64::try_from(lifetime_ms).unwrap_or(i64::MAX))
}

/// GET /_matrix/client/v3/account/whoami
pub async fn whoami(requester: Requester) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "user_id": requester.user_id,
        "device_id": requester.device_id,
        "is_guest": false,
    }))
}

/// POST /_matrix/client/v3/logout
pub async fn logout(node: web::Data<Node>, requester: Requester) -> ApiResult<HttpResponse> {
    let device_id = OwnedDeviceId::from(requester.device_id.as_str());
    device::remove_devices(&node, &requester.user()?, &[device_id]).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// POST /_matrix/client/v3/logout/all
pub async fn logout_all(node: web::Data<Node>, requester: Requester) -> ApiResult<HttpResponse> {
    let device_ids: Vec<OwnedDeviceId> = devices::device_ids(&node.pool, &requester.user_id)
        .await?
        .into_iter()
        .map(OwnedDeviceId::from)
        .collect();
    // A device signed in while this runs is not in the list, and stays.
    device::remove_devices(&node, &requester.user()?, &device_ids).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// The one answer to a login with an unknown user, a user without a
/// password, or a wrong password.
const INVALID_LOGIN: &str = "invalid username or password";

/// Tells the device lists stream that a login, registration or logout
/// added or removed `device_ids`. The session change itself is done by
/// then: when the stream's writer cannot be reached it is not undone, and
/// the users sharing a room miss this change (a warning says so).
async fn tell_device_lists(node: &Node, user_id: &str, device_ids: Vec<String>) {
    if let Err(error) = crate::api::client::keys::devices_changed(node, user_id, device_ids).await {
        tracing::warn!(user_id, error = %error, "device list change not recorded");
    }
}

/// The device a client names at login or registration, before anything is stored.
fn check_new_device(device_id: Option<&str>, display_name: Option<&str>) -> ApiResult<()> {
    if let Some(device_id) = device_id {
        check_device_id(device_id)?;
    }
    if let Some(name) = display_name {
        check_chars(
            "initial_device_display_name",
            name,
            MAX_DEVICE_DISPLAY_NAME_CHARS,
        )?;
        check_no_nul("initial_device_display_name", name)?;
    }
    Ok(())
}

fn user_id(localpart: &str, node: &Node) -> String {
    format!("@{}:{}", localpart, node.config.server_name)
}

/// The localpart rules of the spec (historical characters excluded, as
/// Synapse does for new users), with `M_INVALID_USERNAME` for violations.
fn validate_localpart(username: &str, node: &Node) -> ApiResult<String> {
    let localpart = username
        .strip_prefix('@')
        .and_then(|rest| rest.strip_suffix(&format!(":{}", node.config.server_name)))
        .unwrap_or(username);
    let invalid = |why: &str| ApiError::new(ErrCode::InvalidUsername, why.to_owned());
    if localpart.is_empty() {
        return Err(invalid("the username cannot be empty"));
    }
    if !localpart
        .chars()
        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
    {
        return Err(invalid(
            "the username may contain only a-z, 0-9, and . _ = - / +",
        ));
    }
    if localpart.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid("numeric usernames are reserved"));
    }
    if user_id(localpart, node).len() > MAX_USER_ID_BYTES {
        return Err(invalid("the user id would be longer than 255 bytes"));
    }
    Ok(localpart.to_owned())
}

pub fn new_access_token() -> String {
    format!("lat_{}", random_string(40))
}

pub fn new_refresh_token() -> String {
    format!("latr_{}", random_string(40))
}
