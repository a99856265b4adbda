//! Errors as the Client-Server API shows them.
//!
//! Every failure a handler can produce is an [`ApiError`]; it becomes Matrix JSON
//! (`{"errcode", "error"}`) with the right HTTP status in exactly one place, the
//! `ResponseError` impl below. Lower layers have their own error enums
//! ([`crate::storage::StorageError`], `MailboxError`) that convert into it.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde_json::json;

/// A Matrix error: an `errcode`, a human-readable message, and the extra fields
/// some codes carry.
#[derive(Debug, thiserror::Error)]
#[error("{errcode}: {message}")]
pub struct ApiError {
    pub errcode: ErrCode,
    pub message: String,
    /// `retry_after_ms` for `M_LIMIT_EXCEEDED`.
    pub retry_after_ms: Option<u64>,
    /// The user-interactive authentication state for a `401` during UIA.
    pub uia: Option<serde_json::Value>,
    /// `current_version` for `M_WRONG_ROOM_KEYS_VERSION`.
    pub current_version: Option<String>,
    /// `soft_logout: true` for an expired access token: the client may
    /// refresh it, or sign in again on the same device.
    pub soft_logout: bool,
}

/// The Matrix error codes Lattice produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    Forbidden,
    UnknownToken,
    MissingToken,
    BadJson,
    NotJson,
    NotFound,
    LimitExceeded,
    Unrecognized,
    /// `M_UNRECOGNIZED` with 405: a known endpoint, another method.
    MethodNotAllowed,
    Unknown,
    UserInUse,
    InvalidUsername,
    RoomInUse,
    InvalidRoomState,
    Exclusive,
    InvalidParam,
    MissingParam,
    TooLarge,
    UnsupportedRoomVersion,
    Unauthorized,
    UserDeactivated,
    GuestAccessForbidden,
    Unavailable,
    BadAlias,
    /// `M_UNKNOWN` with 409, Synapse's answer when an alias exists.
    AliasInUse,
    /// `M_UNKNOWN` for failures that are the server's fault (500).
    Internal,
    /// `M_BAD_JSON` with 405: account data only the server sets
    /// (`m.fully_read`, `m.push_rules`), as the spec answers.
    ServerControlled,
    /// A key's signature is missing or does not verify (cross-signing).
    InvalidSignature,
    /// `M_TOO_LARGE` with 400: a field longer than allowed, as Synapse
    /// answers a device's display name.
    FieldTooLarge,
    /// A key backup version that is not the current one (403).
    WrongRoomKeysVersion,
    /// Media whose asynchronous upload has not come yet (504).
    NotYetUploaded,
    /// A media id that already has content (409).
    CannotOverwriteMedia,
    /// A user's media upload quota used up (400, as Synapse).
    ResourceLimitExceeded,
    ThreepidMediumNotSupported,
    ThreepidAuthFailed,
    ProfileTooLarge,
    KeyTooLarge,
    /// A restricted join the user may make, but no local member with the
    /// power to invite can vouch for (400, as Synapse).
    UnableToGrantJoin,
    /// `M_UNKNOWN` with 403: a URL preview of an address in the deny list
    /// (Synapse's "IP address blocked").
    AddressBlocked,
    /// `M_UNKNOWN` with 502: a page a URL preview fetches cannot be had
    /// (unreachable, timed out, an error status, a type not previewed).
    BadGateway,
    /// `M_TOO_LARGE` with 502: a page larger than `max_spider_size`, as
    /// Synapse answers.
    UpstreamTooLarge,
}

impl ErrCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrCode::Forbidden => "M_FORBIDDEN",
            ErrCode::UnknownToken => "M_UNKNOWN_TOKEN",
            ErrCode::MissingToken => "M_MISSING_TOKEN",
            ErrCode::BadJson => "M_BAD_JSON",
            ErrCode::NotJson => "M_NOT_JSON",
            ErrCode::NotFound => "M_NOT_FOUND",
            ErrCode::LimitExceeded => "M_LIMIT_EXCEEDED",
            ErrCode::Unrecognized | ErrCode::MethodNotAllowed => "M_UNRECOGNIZED",
            ErrCode::Unknown => "M_UNKNOWN",
            ErrCode::UserInUse => "M_USER_IN_USE",
            ErrCode::InvalidUsername => "M_INVALID_USERNAME",
            ErrCode::RoomInUse => "M_ROOM_IN_USE",
            ErrCode::InvalidRoomState => "M_INVALID_ROOM_STATE",
            ErrCode::Exclusive => "M_EXCLUSIVE",
            ErrCode::InvalidParam => "M_INVALID_PARAM",
            ErrCode::MissingParam => "M_MISSING_PARAM",
            ErrCode::TooLarge => "M_TOO_LARGE",
            ErrCode::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            ErrCode::Unauthorized => "M_UNAUTHORIZED",
            ErrCode::UserDeactivated => "M_USER_DEACTIVATED",
            ErrCode::GuestAccessForbidden => "M_GUEST_ACCESS_FORBIDDEN",
            ErrCode::Unavailable => "M_UNAVAILABLE",
            ErrCode::BadAlias => "M_BAD_ALIAS",
            ErrCode::AliasInUse => "M_UNKNOWN",
            ErrCode::Internal => "M_UNKNOWN",
            ErrCode::ServerControlled => "M_BAD_JSON",
            ErrCode::InvalidSignature => "M_INVALID_SIGNATURE",
            ErrCode::FieldTooLarge => "M_TOO_LARGE",
            ErrCode::WrongRoomKeysVersion => "M_WRONG_ROOM_KEYS_VERSION",
            ErrCode::NotYetUploaded => "M_NOT_YET_UPLOADED",
            ErrCode::CannotOverwriteMedia => "M_CANNOT_OVERWRITE_MEDIA",
            ErrCode::ResourceLimitExceeded => "M_RESOURCE_LIMIT_EXCEEDED",
            ErrCode::ThreepidMediumNotSupported => "M_THREEPID_MEDIUM_NOT_SUPPORTED",
            ErrCode::ThreepidAuthFailed => "M_THREEPID_AUTH_FAILED",
            ErrCode::ProfileTooLarge => "M_PROFILE_TOO_LARGE",
            ErrCode::KeyTooLarge => "M_KEY_TOO_LARGE",
            ErrCode::UnableToGrantJoin => "M_UNABLE_TO_GRANT_JOIN",
            ErrCode::AddressBlocked | ErrCode::BadGateway => "M_UNKNOWN",
            ErrCode::UpstreamTooLarge => "M_TOO_LARGE",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ErrCode::Forbidden
            | ErrCode::GuestAccessForbidden
            | ErrCode::UserDeactivated
            | ErrCode::WrongRoomKeysVersion
            | ErrCode::AddressBlocked => StatusCode::FORBIDDEN,
            ErrCode::UnknownToken | ErrCode::MissingToken | ErrCode::Unauthorized => {
                StatusCode::UNAUTHORIZED
            }
            ErrCode::NotFound | ErrCode::Unrecognized => StatusCode::NOT_FOUND,
            ErrCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrCode::MethodNotAllowed | ErrCode::ServerControlled => StatusCode::METHOD_NOT_ALLOWED,
            ErrCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrCode::AliasInUse | ErrCode::CannotOverwriteMedia => StatusCode::CONFLICT,
            ErrCode::NotYetUploaded => StatusCode::GATEWAY_TIMEOUT,
            ErrCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrCode::BadGateway | ErrCode::UpstreamTooLarge => StatusCode::BAD_GATEWAY,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for ErrCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ApiError {
    pub fn new(errcode: ErrCode, message: impl Into<String>) -> Self {
        ApiError {
            errcode,
            message: message.into(),
            retry_after_ms: None,
            uia: None,
            current_version: None,
            soft_logout: false,
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrCode::NotFound, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrCode::BadJson, message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrCode::InvalidParam, message)
    }
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(ErrCode::MissingParam, message)
    }
    pub fn unrecognized(message: impl Into<String>) -> Self {
        Self::new(ErrCode::Unrecognized, message)
    }
    /// A failure that is the server's fault. Logged here, shown to the client
    /// without internals.
    pub fn internal(context: impl std::fmt::Display) -> Self {
        tracing::error!(error = %context, "internal error");
        Self::new(ErrCode::Internal, "internal server error")
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrCode::Unavailable, message)
    }
    /// A key backup write to a version that is not `current_version`.
    pub fn wrong_room_keys_version(current_version: String) -> Self {
        ApiError {
            current_version: Some(current_version),
            ..Self::new(
                ErrCode::WrongRoomKeysVersion,
                "wrong backup version: only the current version takes keys",
            )
        }
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        ApiError {
            retry_after_ms: Some(retry_after_ms),
            ..Self::new(ErrCode::LimitExceeded, "too many requests")
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        if self.uia.is_some() {
            return StatusCode::UNAUTHORIZED;
        }
        self.errcode.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = match &self.uia {
            Some(serde_json::Value::Object(flows)) => flows.clone(),
            _ => serde_json::Map::new(),
        };
        body.insert("errcode".into(), json!(self.errcode.as_str()));
        body.insert("error".into(), json!(self.message));
        if let Some(ms) = self.retry_after_ms {
            body.insert("retry_after_ms".into(), json!(ms));
        }
        if let Some(version) = &self.current_version {
            body.insert("current_version".into(), json!(version));
        }
        if self.soft_logout {
            body.insert("soft_logout".into(), json!(true));
        }
        let mut response = HttpResponse::build(self.status_code());
        if let Some(ms) = self.retry_after_ms {
            response.insert_header(("Retry-After", ms.div_ceil(1000).to_string()));
        }
        response.json(serde_json::Value::Object(body))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> Self {
        use tokio_postgres::error::SqlState;
        // PostgreSQL refuses NUL characters in text and `\u0000` in jsonb:
        // that is the client's input, not the server's fault.
        if let crate::storage::StorageError::Postgres(postgres) = &error {
            if postgres.code() == Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE)
                || postgres.code() == Some(&SqlState::UNTRANSLATABLE_CHARACTER)
            {
                return ApiError::invalid_param("text may not contain NUL characters");
            }
        }
        ApiError::internal(error)
    }
}

/// A writer's refusal as the client sees it: the one place a
/// A refused key: `M_INVALID_PARAM`, or `M_INVALID_SIGNATURE` for a
/// signature that does not verify.
impl From<crate::keys::KeyError> for ApiError {
    fn from(error: crate::keys::KeyError) -> Self {
        match error {
            crate::keys::KeyError::Invalid(message) => ApiError::invalid_param(message),
            crate::keys::KeyError::BadSignature(message) => {
                ApiError::new(ErrCode::InvalidSignature, message)
            }
        }
    }
}

/// [`WriteError`](crate::roles::WriteError) becomes a Matrix error.
impl From<crate::roles::WriteError> for ApiError {
    fn from(error: crate::roles::WriteError) -> Self {
        use crate::roles::WriteError;
        match error {
            WriteError::Forbidden(message) => ApiError::forbidden(message),
            WriteError::NotFound(message) => ApiError::not_found(message),
            WriteError::BadJson(message) => ApiError::bad_json(message),
            WriteError::InvalidParam(message) => ApiError::invalid_param(message),
            WriteError::UnsupportedRoomVersion(version) => ApiError::new(
                ErrCode::UnsupportedRoomVersion,
                format!("unsupported room version {version}"),
            ),
            WriteError::TooLarge => ApiError::new(ErrCode::TooLarge, "event too large"),
            WriteError::Storage(_) | WriteError::Internal(_) => ApiError::internal(error),
            // The shard is moving: the writer that had it gave it up and
            // the one taking it is not known here yet.
            WriteError::NotOwner(_) => ApiError::unavailable(
                "the room's writer is moving to another instance; try again".to_owned(),
            ),
        }
    }
}

/// A refused change of push rules as the client sees it (the spec's and
/// Synapse's answers: a misplaced rule is 400 `M_UNKNOWN`).
impl From<crate::push::rules::RuleError> for ApiError {
    fn from(error: crate::push::rules::RuleError) -> Self {
        use crate::push::rules::RuleError;
        match &error {
            RuleError::UnknownKind(_) | RuleError::InvalidRuleId(_) | RuleError::ServerDefault => {
                ApiError::invalid_param(error.to_string())
            }
            RuleError::NotFound(_) => ApiError::not_found(error.to_string()),
            RuleError::Placement(_) => ApiError::new(ErrCode::Unknown, error.to_string()),
            RuleError::BadJson(_) => ApiError::bad_json(error.to_string()),
        }
    }
}

impl From<crate::roles::push_rules::PushRulesWriteError> for ApiError {
    fn from(error: crate::roles::push_rules::PushRulesWriteError) -> Self {
        use crate::roles::push_rules::PushRulesWriteError;
        match error {
            PushRulesWriteError::Refused(error) => error.into(),
            PushRulesWriteError::Failed(error) => error.into(),
        }
    }
}

/// A media repository failure as the client sees it (the spec's statuses;
/// Synapse's where the spec says nothing).
impl From<crate::media::MediaError> for ApiError {
    fn from(error: crate::media::MediaError) -> Self {
        use crate::media::MediaError;
        let message = error.to_string();
        match error {
            MediaError::NotFound => ApiError::not_found(message),
            MediaError::NotYetUploaded => ApiError::new(ErrCode::NotYetUploaded, message),
            MediaError::TooLarge { .. } | MediaError::TooLargeToThumbnail(_) => {
                ApiError::new(ErrCode::TooLarge, message)
            }
            MediaError::QuotaExceeded => ApiError::new(ErrCode::ResourceLimitExceeded, message),
            MediaError::Forbidden(_) => ApiError::forbidden(message),
            MediaError::CannotOverwrite => ApiError::new(ErrCode::CannotOverwriteMedia, message),
            MediaError::TooManyPending { retry_after_ms } => ApiError {
                message,
                ..ApiError::limit_exceeded(retry_after_ms)
            },
            MediaError::CannotThumbnail(_) => ApiError::new(ErrCode::Unknown, message),
            MediaError::BadUpload(_) => ApiError::new(ErrCode::Unknown, message),
            MediaError::PreviewsDisabled => ApiError::unrecognized(message),
            MediaError::BadPreviewUrl(_) => ApiError::invalid_param(message),
            MediaError::AddressBlocked => ApiError::new(ErrCode::AddressBlocked, message),
            MediaError::PreviewFetch(_) => ApiError::new(ErrCode::BadGateway, message),
            MediaError::PreviewTooLarge { .. } => ApiError::new(ErrCode::UpstreamTooLarge, message),
            MediaError::Storage(error) => error.into(),
            MediaError::Io(error) => ApiError::internal(format!("media store: {error}")),
        }
    }
}

impl From<lattice_actors::MailboxError> for ApiError {
    fn from(error: lattice_actors::MailboxError) -> Self {
        tracing::warn!(error = %error, "mailbox call failed");
        ApiError::unavailable(format!("a writer could not be reached: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::WriteError;

    /// What a client sees for an error: status, errcode and message.
    fn seen(error: ApiError) -> (u16, String, String) {
        let response = error.error_response();
        let body = actix_web::body::to_bytes(response.into_body());
        let body = futures::executor::block_on(body).expect("a body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        (
            error.status_code().as_u16(),
            body["errcode"].as_str().unwrap_or_default().to_owned(),
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    }

    #[test]
    fn each_write_error_is_one_matrix_error() {
        let cases = [
            (
                WriteError::Forbidden("no power".into()),
                403,
                "M_FORBIDDEN",
                "no power",
            ),
            (
                WriteError::NotFound("unknown room".into()),
                404,
                "M_NOT_FOUND",
                "unknown room",
            ),
            (
                WriteError::BadJson("not an object".into()),
                400,
                "M_BAD_JSON",
                "not an object",
            ),
            (
                WriteError::InvalidParam("NUL".into()),
                400,
                "M_INVALID_PARAM",
                "NUL",
            ),
            (
                WriteError::UnsupportedRoomVersion("99".into()),
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
                "unsupported room version 99",
            ),
            (WriteError::TooLarge, 413, "M_TOO_LARGE", "event too large"),
            // The server's faults: no internals shown to the client.
            (
                WriteError::Storage("connection reset".into()),
                500,
                "M_UNKNOWN",
                "internal server error",
            ),
            (
                WriteError::Internal("room without create event".into()),
                500,
                "M_UNKNOWN",
                "internal server error",
            ),
        ];
        for (error, status, errcode, message) in cases {
            let shown = seen(ApiError::from(error.clone()));
            assert_eq!(
                shown,
                (status, errcode.to_owned(), message.to_owned()),
                "{error:?}"
            );
        }
    }
}
