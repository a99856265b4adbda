//! End-to-end encryption keys (Client-Server API "End-to-end encryption"):
//! `POST /keys/upload` (device keys, signed by the device itself; one-time
//! keys; fallback keys), `POST /keys/query` (device keys and cross-signing
//! keys with the signatures the querier may see), `POST /keys/claim`
//! (a one-time key, else the fallback key) and `GET /keys/changes`.
//! Cross-signing uploads are [`cross_signing`].
//!
//! Every change of a user's devices is told to the `device_lists` stream
//! through [`devices_changed`]: the function any endpoint that adds,
//! removes or re-keys a device calls.

pub mod cross_signing;

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::client::membership::check_user_id;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::keys::{check_device_keys, signed_part};
use crate::node::Node;
use crate::roles::device_lists::{RecordDeviceChanges, DEVICE_LISTS_STREAM};
use crate::storage::keys::{self, StoredSignature};
use crate::streams::token::{StreamToken, TokenError};

/// Tells the `device_lists` stream that `device_ids` of `user_id` were
/// added, removed or re-keyed (a cross-signing key counts as a device named
/// by its public key), through the writer that owns the user, and waits
/// until this instance has seen it. Users sharing a room with `user_id`
/// (and `user_id`'s other devices) see `user_id` in `device_lists.changed`
/// of their next `/sync` and in `/keys/changes`.
pub async fn devices_changed(node: &Node, user_id: &str, device_ids: Vec<String>) -> ApiResult<()> {
    record_device_changes(node, user_id, device_ids, Vec::new()).await
}

/// [`devices_changed`], with the users whose keys `user_id` signed (or
/// re-signed) with their user-signing key: a change only `user_id` sees.
async fn record_device_changes(
    node: &Node,
    user_id: &str,
    device_ids: Vec<String>,
    signed_users: Vec<OwnedUserId>,
) -> ApiResult<()> {
    if device_ids.is_empty() && signed_users.is_empty() {
        return Ok(());
    }
    let user_id = OwnedUserId::try_from(user_id)
        .map_err(|e| ApiError::internal(format!("device owner `{user_id}`: {e}")))?;
    let shard_key = user_id.to_string();
    let request = RecordDeviceChanges {
        user_id,
        device_ids,
        signed_users,
    };
    let written = node
        .call_owner(DEVICE_LISTS_STREAM, &shard_key, request)
        .await??;
    if let Some(position) = written.position {
        node.wait_for_write(DEVICE_LISTS_STREAM, &written.instance, position)
            .await;
    }
    Ok(())
}

/// The body of `POST /keys/upload`.
#[derive(Deserialize)]
pub struct UploadKeysBody {
    device_keys: Option<Value>,
    #[serde(default)]
    one_time_keys: Option<Map<String, Value>>,
    #[serde(default)]
    fallback_keys: Option<Map<String, Value>>,
}

/// `algorithm:key_id` split in two, or 400.
fn algorithm_and_key_id(name: &str) -> ApiResult<(String, String)> {
    match name.split_once(':') {
        Some((algorithm, key_id)) if !algorithm.is_empty() && !key_id.is_empty() => {
            Ok((algorithm.to_owned(), key_id.to_owned()))
        }
        _ => Err(ApiError::invalid_param(format!(
            "`{name}` is not an `algorithm:key_id` key name"
        ))),
    }
}

/// A one-time or fallback key: a string (unsigned) or an object (signed).
fn check_key_value(name: &str, key: &Value) -> ApiResult<()> {
    if key.is_string() || key.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_json(format!(
            "key `{name}` must be a string or an object"
        )))
    }
}

/// POST /_matrix/client/v3/keys/upload
pub async fn upload_keys(
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<UploadKeysBody>,
) -> ApiResult<HttpResponse> {
    let (user_id, device_id) = (requester.user_id.as_str(), requester.device_id.as_str());
    // Everything is checked before anything is stored.
    let device_keys = body
        .device_keys
        .filter(|keys| !keys.is_null() && keys.as_object().is_none_or(|k| !k.is_empty()));
    if let Some(device_keys) = &device_keys {
        check_device_keys(device_keys, user_id, device_id)?;
    }
    let mut one_time = Vec::new();
    for (name, key) in body.one_time_keys.iter().flatten() {
        let (algorithm, key_id) = algorithm_and_key_id(name)?;
        check_key_value(name, key)?;
        one_time.push((algorithm, key_id, key.clone()));
    }
    let mut fallback = Vec::new();
    for (name, key) in body.fallback_keys.iter().flatten() {
        let (algorithm, key_id) = algorithm_and_key_id(name)?;
        check_key_value(name, key)?;
        fallback.push((algorithm, key_id, key.clone()));
    }

    let mut client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    if !one_time.is_empty() {
        let transaction = client
            .transaction()
            .await
            .map_err(crate::storage::StorageError::from)?;
        let ids: Vec<String> = one_time.iter().map(|(_, id, _)| id.clone()).collect();
        let existing = keys::one_time_keys(&transaction, user_id, device_id, &ids).await?;
        for (algorithm, key_id, key) in &one_time {
            if let Some(stored) = existing.get(&(algorithm.clone(), key_id.clone())) {
                // The same key again (a retried upload) is fine, as in Synapse.
                if signed_part(stored) != signed_part(key) {
                    return Err(ApiError::invalid_param(format!(
                        "one-time key {algorithm}:{key_id} already exists with other content"
                    )));
                }
            }
        }
        keys::add_one_time_keys(&transaction, user_id, device_id, &one_time).await?;
        transaction
            .commit()
            .await
            .map_err(crate::storage::StorageError::from)?;
    }
    for (algorithm, key_id, key) in &fallback {
        keys::set_fallback_key(&client, user_id, device_id, algorithm, key_id, key).await?;
    }
    if !one_time.is_empty() || !fallback.is_empty() {
        node.forget_key_counts(&[(user_id, device_id)]).await?;
    }
    if let Some(device_keys) = &device_keys {
        // The device's own signature is kept with the keys; signatures by
        // others are stored apart (and forgotten when the keys change).
        if keys::set_device_keys(&client, user_id, device_id, device_keys).await? {
            keys::delete_signatures_of(&client, user_id, device_id).await?;
            drop(client);
            devices_changed(&node, user_id, vec![device_id.to_owned()]).await?;
            client = node
                .pool
                .get()
                .await
                .map_err(crate::storage::StorageError::from)?;
        }
    }
    let counts = one_time_key_counts(&client, user_id, device_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "one_time_key_counts": counts })))
}

/// How many one-time keys a device has left by algorithm, with
/// `signed_curve25519` always there (0 when none), as Synapse answers.
pub async fn one_time_key_counts(
    client: &impl deadpool_postgres::GenericClient,
    user_id: &str,
    device_id: &str,
) -> ApiResult<BTreeMap<String, i64>> {
    let mut counts = keys::one_time_key_counts(client, user_id, device_id).await?;
    counts.entry("signed_curve25519".to_owned()).or_insert(0);
    Ok(counts)
}

/// The body of `POST /keys/query`.
#[derive(Deserialize)]
pub struct QueryKeysBody {
    device_keys: BTreeMap<String, Vec<String>>,
}

/// POST /_matrix/client/v3/keys/query
pub async fn query_keys(
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<QueryKeysBody>,
) -> ApiResult<HttpResponse> {
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let querier = requester.user_id.clone();
    let mut device_keys = Map::new();
    let mut failures = Map::new();
    let mut local_users = Vec::new();
    for (user_id, device_ids) in &body.device_keys {
        let parsed = check_user_id(user_id)?;
        if parsed.server_name().as_str() != node.config.server_name {
            // No federation yet: another server's users cannot be asked.
            failures.insert(
                parsed.server_name().to_string(),
                json!({ "status": 503, "message": "federation is not available" }),
            );
            continue;
        }
        let wanted = (!device_ids.is_empty()).then_some(device_ids.as_slice());
        let devices = keys::devices_with_keys(&client, user_id, wanted).await?;
        let signatures =
            keys::signatures_of(&client, user_id, &[user_id.clone(), querier.clone()]).await?;
        let mut user_devices = Map::new();
        for device in devices {
            let mut key = device.key_json;
            add_signatures(&mut key, &device.device_id, &signatures);
            if let Some(object) = key.as_object_mut() {
                let mut unsigned = Map::new();
                if let Some(name) = device.display_name {
                    unsigned.insert("device_display_name".into(), Value::String(name));
                }
                object.insert("unsigned".into(), Value::Object(unsigned));
            }
            user_devices.insert(device.device_id, key);
        }
        device_keys.insert(user_id.clone(), Value::Object(user_devices));
        local_users.push(user_id.clone());
    }
    let mut master_keys = Map::new();
    let mut self_signing_keys = Map::new();
    let mut user_signing_keys = Map::new();
    for key in keys::cross_signing_keys(&client, &local_users).await? {
        let signatures = keys::signatures_of(
            &client,
            &key.user_id,
            &[key.user_id.clone(), querier.clone()],
        )
        .await?;
        let mut key_json = key.key_json;
        add_signatures(&mut key_json, &key.public_key, &signatures);
        match key.key_type.as_str() {
            "master" => master_keys.insert(key.user_id, key_json),
            "self_signing" => self_signing_keys.insert(key.user_id, key_json),
            // Only its owner sees a user-signing key.
            "user_signing" if key.user_id == querier => {
                user_signing_keys.insert(key.user_id, key_json)
            }
            _ => None,
        };
    }
    Ok(HttpResponse::Ok().json(json!({
        "device_keys": device_keys,
        "failures": failures,
        "master_keys": master_keys,
        "self_signing_keys": self_signing_keys,
        "user_signing_keys": user_signing_keys,
    })))
}

/// Adds to `key` (the key `target_key_id`) the stored signatures of it.
fn add_signatures(key: &mut Value, target_key_id: &str, signatures: &[StoredSignature]) {
    let Some(object) = key.as_object_mut() else {
        return;
    };
    let all = object
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(all) = all.as_object_mut() else {
        return;
    };
    for signature in signatures
        .iter()
        .filter(|s| s.target_key_id == target_key_id)
    {
        if let Some(by_signer) = all
            .entry(signature.signer_user_id.clone())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
        {
            by_signer.insert(
                signature.signer_key_id.clone(),
                Value::String(signature.signature.clone()),
            );
        }
    }
}

/// The body of `POST /keys/claim`.
#[derive(Deserialize)]
pub struct ClaimKeysBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
}

/// POST /_matrix/client/v3/keys/claim
///
/// A device that does not exist, or has no key of the algorithm, is left
/// out of the answer (Synapse); another server's users are in `failures`.
pub async fn claim_keys(
    node: web::Data<Node>,
    _requester: Requester,
    JsonBody(body): JsonBody<ClaimKeysBody>,
) -> ApiResult<HttpResponse> {
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let mut claimed = Map::new();
    let mut claimed_from: Vec<(&str, &str)> = Vec::new();
    let mut failures = Map::new();
    for (user_id, devices) in &body.one_time_keys {
        let parsed = check_user_id(user_id)?;
        if parsed.server_name().as_str() != node.config.server_name {
            failures.insert(
                parsed.server_name().to_string(),
                json!({ "status": 503, "message": "federation is not available" }),
            );
            continue;
        }
        let mut user_keys = Map::new();
        for (device_id, algorithm) in devices {
            if let Some((key_id, key)) =
                keys::claim_key(&client, user_id, device_id, algorithm).await?
            {
                claimed_from.push((user_id, device_id));
                user_keys.insert(
                    device_id.clone(),
                    json!({ format!("{algorithm}:{key_id}"): key }),
                );
            }
        }
        if !user_keys.is_empty() {
            claimed.insert(user_id.clone(), Value::Object(user_keys));
        }
    }
    // The claimed devices' counts went down (or their fallback key was used).
    node.forget_key_counts(&claimed_from).await?;
    Ok(HttpResponse::Ok().json(json!({ "one_time_keys": claimed, "failures": failures })))
}

#[derive(Deserialize)]
pub struct KeyChangesQuery {
    from: Option<String>,
    to: Option<String>,
}

/// GET /_matrix/client/v3/keys/changes
///
/// The users whose devices changed between two `/sync` tokens, among those
/// sharing a room with the requester, and those who stopped sharing any
/// (`sync::device_lists::changes_between`, as `/sync` computes them).
pub async fn key_changes(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<KeyChangesQuery>,
) -> ApiResult<HttpResponse> {
    let parse = |name: &str, token: &Option<String>| -> ApiResult<StreamToken> {
        token
            .as_deref()
            .ok_or_else(|| ApiError::missing_param(format!("`{name}` is required")))?
            .parse()
            .map_err(|e: TokenError| ApiError::invalid_param(e.to_string()))
    };
    let from = parse("from", &query.from)?;
    let to = parse("to", &query.to)?;
    let now = crate::sync::current_token(&node, Some(&to));
    let to = crate::sync::clamp(&to, &now);
    let from = crate::sync::clamp(&from, &to);
    let memberships = node
        .memberships
        .memberships_of_user(&node.pool, &node.notifier, &requester.user_id)
        .await?;
    let lists = crate::sync::device_lists::changes_between(
        &node,
        &requester.user_id,
        &memberships,
        &from,
        &to,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "changed": lists.changed, "left": lists.left })))
}
