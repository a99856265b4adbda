//! HTTP: the routes every instance may serve, and the extractors handlers share
//! (authentication, JSON bodies with Matrix errors, rate limiting).

pub mod admin;
pub mod client;
pub mod limits;
pub mod metrics;
pub mod routing;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use actix_web::{dev::Payload, web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::streams::caches::Invalidation;

/// The largest request body accepted (the spec's event size limit is 64 KiB;
/// other bodies are smaller still).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every route of the Client-Server API, plus the catch-all answering
/// `404 M_UNRECOGNIZED`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    client::configure(cfg);
    admin::configure(cfg);
    cfg.app_data(web::PathConfig::default().error_handler(|error, _| {
        ApiError::invalid_param(format!("bad path parameter: {error}")).into()
    }))
    .app_data(web::QueryConfig::default().error_handler(|error, _| {
        ApiError::invalid_param(format!("bad query parameter: {error}")).into()
    }))
    .default_service(web::to(unrecognized));
}

async fn unrecognized(request: HttpRequest) -> ApiResult<HttpResponse> {
    if request.method() == actix_web::http::Method::OPTIONS {
        return Ok(HttpResponse::Ok().finish());
    }
    Err(ApiError::unrecognized("unrecognized request"))
}

/// The node every handler works with, from the app data.
pub fn node(request: &HttpRequest) -> ApiResult<web::Data<Node>> {
    // The shared handle, not a copy of the node (a clone of each of its
    // two dozen handles, per request).
    request
        .app_data::<web::Data<Node>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("node missing from app data"))
}

/// A JSON body the endpoint requires: `M_NOT_JSON` when it is missing or
/// not JSON, `M_BAD_JSON` when it has the wrong shape, `M_TOO_LARGE` past
/// the size limit. Whether an endpoint may be called without a body is
/// decided by its handler's extractor: this one, or [`OptionalJsonBody`].
pub struct JsonBody<T>(pub T);

/// A JSON body that may be left out, read as `{}` when it is: for the
/// endpoints the spec or Synapse let clients call without one (joining,
/// leaving and the other membership changes). An empty body only: one of
/// whitespace is not JSON, as anywhere else.
pub struct OptionalJsonBody<T>(pub T);

/// Whether a request without a body is refused or read as `{}`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EmptyBody {
    Refused,
    ReadAsEmptyObject,
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        extract_json(request, payload, EmptyBody::Refused, JsonBody)
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        extract_json(
            request,
            payload,
            EmptyBody::ReadAsEmptyObject,
            OptionalJsonBody,
        )
    }
}

/// The body extractors' common part: read the body, and let an error wait
/// for the request's authentication ([`AuthenticationPending`]).
fn extract_json<T: DeserializeOwned + 'static, Body: 'static>(
    request: &HttpRequest,
    payload: &mut Payload,
    empty: EmptyBody,
    wrap: fn(T) -> Body,
) -> LocalBoxFuture<'static, Result<Body, ApiError>> {
    let payload = payload.take();
    let authentication = AuthenticationPending::take(request);
    Box::pin(async move {
        let body = read_json(payload, empty).await;
        if body.is_err() {
            AuthenticationPending::settled(authentication).await;
        }
        body.map(wrap)
    })
}

/// Left in the request by [`Requester`]'s extractor until it has
/// authenticated the request (or failed to). actix-web answers with the
/// first extractor that fails, and a bad body is known at once while a
/// token may need a database read: a body's error waits for this, so that an
/// unauthenticated request is answered `401` whatever its body, as Synapse
/// does.
struct AuthenticationPending(futures::channel::oneshot::Receiver<()>);

impl AuthenticationPending {
    /// What [`Requester`] left, if the handler authenticates.
    fn take(request: &HttpRequest) -> Option<AuthenticationPending> {
        request.extensions_mut().remove::<AuthenticationPending>()
    }

    /// Waits until the request's authentication, if any, has settled.
    async fn settled(pending: Option<AuthenticationPending>) {
        if let Some(AuthenticationPending(settled)) = pending {
            // The sender is dropped, never sent on: either way it settled.
            let _ = settled.await;
        }
    }
}

/// Reads the whole body (up to the size limit) and parses it into `T`.
async fn read_json<T: DeserializeOwned>(mut payload: Payload, empty: EmptyBody) -> ApiResult<T> {
    use futures::StreamExt;
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::new(ErrCode::NotJson, format!("could not read body: {e}")))?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::new(ErrCode::TooLarge, "request body too large"));
        }
        bytes.extend_from_slice(&chunk);
    }
    let value: serde_json::Value = match (bytes.is_empty(), empty) {
        (true, EmptyBody::ReadAsEmptyObject) => serde_json::Value::Object(Default::default()),
        (true, EmptyBody::Refused) => {
            return Err(ApiError::new(
                ErrCode::NotJson,
                "this endpoint needs a JSON body",
            ))
        }
        (false, _) => serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(ErrCode::NotJson, format!("content not JSON: {e}")))?,
    };
    crate::api::limits::check_json_depth(&value)?;
    parse_json(value)
}

/// Reads a JSON value into `T`, answering `M_BAD_JSON` with the reason.
pub fn parse_json<T: DeserializeOwned>(value: serde_json::Value) -> ApiResult<T> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_json(format!("invalid request body: {e}")))
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Requester {
    pub user_id: String,
    pub device_id: String,
    pub is_admin: bool,
}

impl Requester {
    /// The user as ruma's id, for messages to writers. Token owners are ids
    /// this server registered, so this fails only on a corrupt row.
    pub fn user(&self) -> ApiResult<ruma::OwnedUserId> {
        ruma::OwnedUserId::try_from(self.user_id.as_str())
            .map_err(|e| ApiError::internal(format!("token owner `{}`: {e}", self.user_id)))
    }
}

/// The access token of a request: the `Authorization: Bearer` header, or the
/// deprecated `access_token` query parameter.
pub fn access_token(request: &HttpRequest) -> ApiResult<Option<String>> {
    if let Some(header) = request.headers().get("Authorization") {
        let header = header
            .to_str()
            .map_err(|_| ApiError::new(ErrCode::MissingToken, "malformed Authorization header"))?;
        return match header.strip_prefix("Bearer ") {
            Some(token) => Ok(Some(token.trim().to_owned())),
            None => Err(ApiError::new(
                ErrCode::MissingToken,
                "Authorization header is not a Bearer token",
            )),
        };
    }
    let query = web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map_err(|_| ApiError::invalid_param("malformed query string"))?;
    Ok(query.get("access_token").cloned())
}

impl FromRequest for Requester {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let (settled, pending) = futures::channel::oneshot::channel::<()>();
        request
            .extensions_mut()
            .insert(AuthenticationPending(pending));
        let request = request.clone();
        Box::pin(async move {
            // Dropped when this future ends, however it ends.
            let _settled = settled;
            let node = node(&request)?;
            let token = access_token(&request)?
                .ok_or_else(|| ApiError::new(ErrCode::MissingToken, "missing access token"))?;
            let mut owner = match node.tokens.get(&token) {
                Some(owner) => owner,
                None => {
                    let owner = crate::storage::accounts::token_owner(&node.pool, &token)
                        .await?
                        .ok_or_else(|| {
                            ApiError::new(ErrCode::UnknownToken, "unknown access token")
                        })?;
                    node.tokens.insert(&token, owner.clone());
                    owner
                }
            };
            // The expiry came with the owner, from the cache or the same row.
            if owner
                .expires_ts
                .is_some_and(|expires| expires <= crate::util::now_ms())
            {
                return Err(ApiError {
                    soft_logout: true,
                    ..ApiError::new(ErrCode::UnknownToken, "the access token has expired")
                });
            }
            // Once per refreshed token: its first use spends the refresh
            // token it replaced.
            if owner.first_use_pending {
                crate::storage::accounts::mark_token_used(&node.pool, &token).await?;
                owner.first_use_pending = false;
                node.tokens.insert(&token, owner.clone());
            }
            if owner.deactivated {
                return Err(ApiError::new(
                    ErrCode::UnknownToken,
                    "this account has been deactivated",
                ));
            }
            node.rate_limiter.check(&owner.user_id)?;
            node.last_seen.record(
                &owner.user_id,
                &owner.device_id,
                &client_ip(&request),
                user_agent(&request),
                crate::util::now_ms(),
            );
            Ok(Requester {
                user_id: owner.user_id,
                device_id: owner.device_id,
                is_admin: owner.is_admin,
            })
        })
    }
}

/// The requester of an endpoint that may be called without signing in:
/// `None` without an access token, the token's owner with a valid one, and
/// the usual `401` with one that is not.
pub async fn optional_requester(request: &HttpRequest) -> ApiResult<Option<Requester>> {
    if access_token(request)?.is_none() {
        return Ok(None);
    }
    Requester::extract(request).await.map(Some)
}

/// Checks the per-IP limit; for endpoints without an access token.
pub fn rate_limit_ip(request: &HttpRequest) -> ApiResult<()> {
    let node = node(request)?;
    node.rate_limiter.check(&client_ip(request))
}

/// The address a request came from (the peer of the connection).
pub fn client_ip(request: &HttpRequest) -> String {
    request
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

/// The `User-Agent` a request came with, if it is text.
pub fn user_agent(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|agent| agent.to_str().ok())
}

/// Token buckets per user id or IP address.
pub struct RateLimiter {
    enabled: bool,
    per_second: f64,
    burst: f64,
    buckets: Mutex<foldhash::HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(config: &crate::config::RateLimitConfig) -> RateLimiter {
        RateLimiter::with_rate(config.enabled, config.per_second, config.burst)
    }

    /// Failed logins per account (Synapse's `rc_login.failed_attempts`):
    /// [`RateLimiter::check_unused`] before an attempt, [`RateLimiter::use_one`]
    /// after a failure.
    pub fn login_failures(config: &crate::config::RateLimitConfig) -> RateLimiter {
        let failures = &config.login_failed_attempts;
        RateLimiter::with_rate(config.enabled, failures.per_second, failures.burst)
    }

    fn with_rate(enabled: bool, per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            enabled,
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token from `key`'s bucket, or answers `429` when it has none.
    pub fn check(&self, key: &str) -> ApiResult<()> {
        if !self.enabled {
            return Ok(());
        }
        self.check_at(key, Instant::now())
    }

    /// `429` when `key`'s bucket is empty, without taking a token.
    pub fn check_unused(&self, key: &str) -> ApiResult<()> {
        if !self.enabled {
            return Ok(());
        }
        self.with_bucket(key, Instant::now(), false)
    }

    /// Takes one token from `key`'s bucket if it has one; never refuses.
    pub fn use_one(&self, key: &str) {
        if self.enabled {
            let _ = self.with_bucket(key, Instant::now(), true);
        }
    }

    fn check_at(&self, key: &str, now: Instant) -> ApiResult<()> {
        self.with_bucket(key, now, true)
    }

    /// Refills `key`'s bucket to `now`; when it holds a token, answers `Ok`
    /// (taking the token if `take`), otherwise `429` with the wait.
    fn with_bucket(&self, key: &str, now: Instant, take: bool) -> ApiResult<()> {
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| ApiError::internal("rate limiter poisoned"))?;
        if buckets.len() > 100_000 {
            // Full buckets carry no information: forget them.
            let burst = self.burst;
            let per_second = self.per_second;
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(ApiError::limit_exceeded((wait * 1000.0).ceil() as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_refills() {
        let limiter = RateLimiter::with_rate(true, 2.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("@a:x", start).is_ok());
        }
        let error = limiter
            .check_at("@a:x", start)
            .expect_err("must be refused");
        assert_eq!(error.errcode, ErrCode::LimitExceeded);
        assert_eq!(error.retry_after_ms, Some(500));
        // Another key has its own bucket.
        assert!(limiter.check_at("@b:x", start).is_ok());
        assert!(limiter
            .check_at("@a:x", start + Duration::from_millis(500))
            .is_ok());
    }

    #[test]
    fn failed_logins_are_refused_after_the_burst_until_the_bucket_refills() {
        // Synapse's defaults for `rc_login.failed_attempts`.
        let limiter = RateLimiter::with_rate(true, 0.17, 3);
        let start = Instant::now();
        for _ in 0..3 {
            // Checking alone never uses the bucket up.
            assert!(limiter.with_bucket("@a:x", start, false).is_ok());
            assert!(limiter.with_bucket("@a:x", start, false).is_ok());
            let _ = limiter.with_bucket("@a:x", start, true);
        }
        let error = limiter
            .with_bucket("@a:x", start, false)
            .expect_err("a fourth attempt is refused");
        assert_eq!(error.errcode, ErrCode::LimitExceeded);
        assert_eq!(error.retry_after_ms, Some(5883));
        assert!(limiter.with_bucket("@b:x", start, false).is_ok());
        let refilled = start + Duration::from_millis(5883);
        assert!(limiter.with_bucket("@a:x", refilled, false).is_ok());
    }
}

/// Access tokens this instance has seen, so that a request costs no database
/// round trip to authenticate. Logging out on this instance forgets the
/// device's tokens here; other instances will learn it through the `caches`
/// stream once instances are split.
#[derive(Default)]
pub struct TokenCache {
    owners: Mutex<foldhash::HashMap<Vec<u8>, crate::storage::accounts::TokenOwner>>,
}

/// The name of the token cache in `caches` stream rows (keys: user id, device id or null).
pub const TOKEN_CACHE: &str = "access_tokens";

/// Past this many tokens the cache starts afresh rather than grow.
const MAX_CACHED_TOKENS: usize = 100_000;

impl TokenCache {
    fn get(&self, token: &str) -> Option<crate::storage::accounts::TokenOwner> {
        let key = crate::storage::accounts::hash_token(token);
        self.owners.lock().ok()?.get(&key).cloned()
    }

    fn insert(&self, token: &str, owner: crate::storage::accounts::TokenOwner) {
        if let Ok(mut owners) = self.owners.lock() {
            if owners.len() >= MAX_CACHED_TOKENS {
                owners.clear();
            }
            owners.insert(crate::storage::accounts::hash_token(token), owner);
        }
    }

    /// Applies a `caches` stream row: `[user_id, device_id or null]`.
    pub fn invalidate(&self, invalidation: &Invalidation) {
        if invalidation.cache == TOKEN_CACHE {
            if let Some(user_id) = invalidation.key(0) {
                self.forget(user_id, invalidation.key(1));
            }
        }
    }

    /// Forgets the tokens of one device, or of every device of the user.
    pub fn forget(&self, user_id: &str, device_id: Option<&str>) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.retain(|_, owner| {
                owner.user_id != user_id
                    || device_id.is_some_and(|device| device != owner.device_id)
            });
        }
    }
}

/// Middleware: an instance answers only the endpoints of its roles; the
/// others are `404 M_UNRECOGNIZED`, as for any unknown endpoint.
pub async fn serve_only_own_roles(
    request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let path = request.path();
    let node = request
        .app_data::<web::Data<Node>>()
        .filter(|node| !node.has_every_role());
    if let (Some(node), false) = (node, routing::served_by_every_instance(path)) {
        let role = routing::role_for_path(request.method(), path);
        if !node.has_role(role) {
            return Err(ApiError::unrecognized(format!(
                "this instance does not serve {} requests",
                role.name()
            ))
            .into());
        }
    }
    next.call(request).await
}
