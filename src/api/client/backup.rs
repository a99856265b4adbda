//! Server-side key backup (`/room_keys`): a user's backup versions, and the
//! encrypted room keys their clients store in the current one and read
//! back on a new device. The server never sees inside `auth_data` or a
//! key's `session_data`; it keeps, for each session, the better of the keys
//! uploaded (the spec's order, [`RoomKey::replaces`]), and answers each
//! change with the version's `etag` (changed whenever its keys changed)
//! and key `count`.
//!
//! Versions are numbers, shown as strings; one that is not a number names
//! no version (`404`), as in Synapse.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::limits::{
    check_bytes, check_json_no_nul, check_no_nul, MAX_ROOM_KEY_SESSION_ID_BYTES,
};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::storage::backup::{
    self, BackupVersion, KeysUpdate, RoomKey, RoomKeys, Selection, VersionRefusal,
};

/// A backup algorithm's name, in bytes (the spec names one, of 38).
const MAX_ALGORITHM_BYTES: usize = 255;

#[derive(Deserialize)]
pub struct CreateVersionRequest {
    algorithm: String,
    auth_data: Map<String, Value>,
}

/// POST /_matrix/client/v3/room_keys/version
pub async fn create_version(
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<CreateVersionRequest>,
) -> ApiResult<HttpResponse> {
    let auth_data = check_version_body(&body.algorithm, body.auth_data)?;
    let version =
        backup::create_version(&node.pool, &requester.user_id, &body.algorithm, &auth_data).await?;
    Ok(HttpResponse::Ok().json(json!({ "version": version.to_string() })))
}

/// GET /_matrix/client/v3/room_keys/version
pub async fn get_current_version(
    node: web::Data<Node>,
    requester: Requester,
) -> ApiResult<HttpResponse> {
    let version = backup::version(&node.pool, &requester.user_id, None)
        .await?
        .ok_or_else(|| ApiError::not_found("no backup version found"))?;
    Ok(HttpResponse::Ok().json(version_json(&version)))
}

/// GET /_matrix/client/v3/room_keys/version/{version}
pub async fn get_version(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let number = parse_version(&path)?;
    let version = backup::version(&node.pool, &requester.user_id, Some(number))
        .await?
        .ok_or_else(unknown_version)?;
    Ok(HttpResponse::Ok().json(version_json(&version)))
}

#[derive(Deserialize)]
pub struct UpdateVersionRequest {
    algorithm: String,
    auth_data: Map<String, Value>,
    version: Option<String>,
}

/// PUT /_matrix/client/v3/room_keys/version/{version}
///
/// Only `auth_data` changes: the algorithm must be the version's, and a
/// `version` in the body must be the one in the path (Synapse's checks).
pub async fn update_version(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    JsonBody(body): JsonBody<UpdateVersionRequest>,
) -> ApiResult<HttpResponse> {
    if body.version.as_ref().is_some_and(|v| v != path.as_str()) {
        return Err(ApiError::invalid_param(
            "the version in the body does not match the one in the path",
        ));
    }
    let number = parse_version(&path)?;
    let auth_data = check_version_body(&body.algorithm, body.auth_data)?;
    let existing = backup::version(&node.pool, &requester.user_id, Some(number))
        .await?
        .ok_or_else(unknown_version)?;
    if existing.algorithm != body.algorithm {
        return Err(ApiError::invalid_param(
            "the algorithm does not match the version's",
        ));
    }
    if !backup::update_auth_data(&node.pool, &requester.user_id, number, &auth_data).await? {
        return Err(unknown_version());
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// DELETE /_matrix/client/v3/room_keys/version/{version}
pub async fn delete_version(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let number = parse_version(&path)?;
    if !backup::delete_version(&node.pool, &requester.user_id, number).await? {
        return Err(unknown_version());
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<String>,
}

impl VersionQuery {
    /// The required `version` parameter, as a number.
    fn number(&self) -> ApiResult<i64> {
        let version = self
            .version
            .as_deref()
            .ok_or_else(|| ApiError::missing_param("the version parameter is required"))?;
        parse_version(version)
    }
}

/// One session's key as clients send and get it (the spec's `KeyBackupData`).
#[derive(Deserialize)]
pub struct KeyBackupData {
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    session_data: Map<String, Value>,
}

#[derive(Deserialize)]
pub struct RoomKeyBackup {
    sessions: BTreeMap<String, KeyBackupData>,
}

#[derive(Deserialize)]
pub struct KeysBackupData {
    rooms: BTreeMap<String, RoomKeyBackup>,
}

/// PUT /_matrix/client/v3/room_keys/keys
pub async fn put_keys(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<VersionQuery>,
    JsonBody(body): JsonBody<KeysBackupData>,
) -> ApiResult<HttpResponse> {
    let mut keys = RoomKeys::new();
    for (room_id, room) in body.rooms {
        check_room_id(&room_id)?;
        let sessions = keys.entry(room_id).or_default();
        for (session_id, key) in room.sessions {
            check_session_id(&session_id)?;
            sessions.insert(session_id, room_key(key)?);
        }
    }
    store_keys(&node, &requester, &query, keys).await
}

/// PUT /_matrix/client/v3/room_keys/keys/{roomId}
pub async fn put_room_keys(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    query: web::Query<VersionQuery>,
    JsonBody(body): JsonBody<RoomKeyBackup>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    check_room_id(&room_id)?;
    let mut sessions = BTreeMap::new();
    for (session_id, key) in body.sessions {
        check_session_id(&session_id)?;
        sessions.insert(session_id, room_key(key)?);
    }
    store_keys(
        &node,
        &requester,
        &query,
        RoomKeys::from([(room_id, sessions)]),
    )
    .await
}

/// PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
pub async fn put_session_key(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    query: web::Query<VersionQuery>,
    JsonBody(body): JsonBody<KeyBackupData>,
) -> ApiResult<HttpResponse> {
    let (room_id, session_id) = path.into_inner();
    check_room_id(&room_id)?;
    check_session_id(&session_id)?;
    let key = room_key(body)?;
    let keys = RoomKeys::from([(room_id, BTreeMap::from([(session_id, key)]))]);
    store_keys(&node, &requester, &query, keys).await
}

/// GET /_matrix/client/v3/room_keys/keys
pub async fn get_keys(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<VersionQuery>,
) -> ApiResult<HttpResponse> {
    let keys = read_keys(&node, &requester, &query, Selection::All).await?;
    let rooms: Map<String, Value> = keys
        .iter()
        .map(|(room_id, sessions)| {
            (
                room_id.clone(),
                json!({ "sessions": sessions_json(sessions) }),
            )
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "rooms": rooms })))
}

/// GET /_matrix/client/v3/room_keys/keys/{roomId}
///
/// A room without keys is an empty answer, not an error (as in Synapse).
pub async fn get_room_keys(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    query: web::Query<VersionQuery>,
) -> ApiResult<HttpResponse> {
    let room_id = path.into_inner();
    let keys = read_keys(&node, &requester, &query, Selection::Room(&room_id)).await?;
    let sessions = keys.get(&room_id).map(sessions_json).unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({ "sessions": sessions })))
}

/// GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
pub async fn get_session_key(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    query: web::Query<VersionQuery>,
) -> ApiResult<HttpResponse> {
    let (room_id, session_id) = path.into_inner();
    let selection = Selection::Session(&room_id, &session_id);
    let keys = read_keys(&node, &requester, &query, selection).await?;
    let key = keys
        .get(&room_id)
        .and_then(|sessions| sessions.get(&session_id))
        .ok_or_else(|| ApiError::not_found("no key found for this session"))?;
    Ok(HttpResponse::Ok().json(key_json(key)))
}

/// DELETE /_matrix/client/v3/room_keys/keys
pub async fn delete_keys(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<VersionQuery>,
) -> ApiResult<HttpResponse> {
    remove_keys(&node, &requester, &query, Selection::All).await
}

/// DELETE /_matrix/client/v3/room_keys/keys/{roomId}
pub async fn delete_room_keys(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    query: web::Query<VersionQuery>,
) -> ApiResult<HttpResponse> {
    remove_keys(&node, &requester, &query, Selection::Room(&path)).await
}

/// DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
pub async fn delete_session_key(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    query: web::Query<VersionQuery>,
) -> ApiResult<HttpResponse> {
    let (room_id, session_id) = path.into_inner();
    remove_keys(
        &node,
        &requester,
        &query,
        Selection::Session(&room_id, &session_id),
    )
    .await
}

/// Stores keys in the version the query names, which must be the current one.
async fn store_keys(
    node: &Node,
    requester: &Requester,
    query: &VersionQuery,
    keys: RoomKeys,
) -> ApiResult<HttpResponse> {
    let version = query.number()?;
    match backup::put_keys(&node.pool, &requester.user_id, version, &keys).await? {
        Ok(update) => Ok(HttpResponse::Ok().json(update_json(update))),
        Err(VersionRefusal::Unknown) => Err(unknown_version()),
        Err(VersionRefusal::NotCurrent { current }) => {
            Err(ApiError::wrong_room_keys_version(current.to_string()))
        }
    }
}

async fn read_keys(
    node: &Node,
    requester: &Requester,
    query: &VersionQuery,
    selection: Selection<'_>,
) -> ApiResult<RoomKeys> {
    let version = query.number()?;
    backup::keys(&node.pool, &requester.user_id, version, selection)
        .await?
        .ok_or_else(unknown_version)
}

async fn remove_keys(
    node: &Node,
    requester: &Requester,
    query: &VersionQuery,
    selection: Selection<'_>,
) -> ApiResult<HttpResponse> {
    let version = query.number()?;
    let update = backup::delete_keys(&node.pool, &requester.user_id, version, selection)
        .await?
        .ok_or_else(unknown_version)?;
    Ok(HttpResponse::Ok().json(update_json(update)))
}

/// A version number as clients write it; anything else names no version.
fn parse_version(version: &str) -> ApiResult<i64> {
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unknown_version());
    }
    version.parse().map_err(|_| unknown_version())
}

fn unknown_version() -> ApiError {
    ApiError::not_found("unknown backup version")
}

/// The checks shared by creating and updating a version.
fn check_version_body(algorithm: &str, auth_data: Map<String, Value>) -> ApiResult<Value> {
    if algorithm.is_empty() {
        return Err(ApiError::invalid_param("the algorithm is empty"));
    }
    check_bytes("the algorithm", algorithm, MAX_ALGORITHM_BYTES)?;
    check_no_nul("the algorithm", algorithm)?;
    let auth_data = Value::Object(auth_data);
    check_json_no_nul("auth_data", &auth_data)?;
    Ok(auth_data)
}

fn check_room_id(room_id: &str) -> ApiResult<()> {
    <&ruma::RoomId>::try_from(room_id)
        .map(|_| ())
        .map_err(|e| ApiError::invalid_param(format!("invalid room id `{room_id}`: {e}")))
}

fn check_session_id(session_id: &str) -> ApiResult<()> {
    if session_id.is_empty() {
        return Err(ApiError::invalid_param("a session id is empty"));
    }
    check_bytes("a session id", session_id, MAX_ROOM_KEY_SESSION_ID_BYTES)?;
    check_no_nul("a session id", session_id)
}

fn room_key(key: KeyBackupData) -> ApiResult<RoomKey> {
    let number = |what: &str, value: u64| {
        i64::try_from(value).map_err(|_| ApiError::invalid_param(format!("{what} is too large")))
    };
    let session_data = Value::Object(key.session_data);
    check_json_no_nul("session_data", &session_data)?;
    Ok(RoomKey {
        first_message_index: number("first_message_index", key.first_message_index)?,
        forwarded_count: number("forwarded_count", key.forwarded_count)?,
        is_verified: key.is_verified,
        session_data,
    })
}

fn version_json(version: &BackupVersion) -> Value {
    json!({
        "version": version.version.to_string(),
        "algorithm": version.algorithm,
        "auth_data": version.auth_data,
        "count": version.count,
        "etag": version.etag.to_string(),
    })
}

fn update_json(update: KeysUpdate) -> Value {
    json!({ "etag": update.etag.to_string(), "count": update.count })
}

fn key_json(key: &RoomKey) -> Value {
    json!({
        "first_message_index": key.first_message_index,
        "forwarded_count": key.forwarded_count,
        "is_verified": key.is_verified,
        "session_data": key.session_data,
    })
}

fn sessions_json(sessions: &BTreeMap<String, RoomKey>) -> Map<String, Value> {
    sessions
        .iter()
        .map(|(session_id, key)| (session_id.clone(), key_json(key)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrCode;

    #[test]
    fn versions_are_decimal_numbers() {
        assert_eq!(parse_version("1").ok(), Some(1));
        assert_eq!(parse_version("42").ok(), Some(42));
        for bad in ["", "-1", "+1", "1.0", "one", " 1", "99999999999999999999"] {
            let error = parse_version(bad).expect_err(bad);
            assert_eq!(error.errcode, ErrCode::NotFound, "{bad}");
        }
    }
}
