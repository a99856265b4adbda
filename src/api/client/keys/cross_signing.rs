//! Cross-signing: `POST /keys/device_signing/upload` (a user's master,
//! self-signing and user-signing keys) and `POST /keys/signatures/upload`
//! (signatures of one's own devices by the self-signing key, of one's
//! master key by one's devices, of other users' master keys by one's
//! user-signing key), each signature checked against the signer's stored
//! key (`crate::keys`), as Synapse's `E2eKeysHandler` does.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use ruma::OwnedUserId;
use serde_json::{json, Map, Value};

use super::record_device_changes;
use crate::api::client::membership::check_user_id;
use crate::api::client::uiaa::{authenticate_with_password, AuthData};
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult, ErrCode};
use crate::keys::{
    check_cross_signing_key, cross_signing_public_key, signed_part, verify_signature,
};
use crate::node::Node;
use crate::storage::keys::{self, CrossSigningKey, StoredSignature};

/// The body of `POST /keys/device_signing/upload`.
pub type DeviceSigningBody = Map<String, Value>;

/// The cross-signing keys an upload sets, checked: `(key_type, key,
/// public_key)`.
pub(crate) async fn checked_signing_keys(
    node: &Node,
    user_id: &str,
    body: &DeviceSigningBody,
) -> ApiResult<Vec<CrossSigningKey>> {
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let key = |name: &str| body.get(name).filter(|v| !v.is_null());
    let mut checked = Vec::new();
    let master = match key("master_key") {
        Some(master) => {
            let (key_id, public_key) = check_cross_signing_key(master, user_id, "master", None)?;
            checked.push(CrossSigningKey {
                user_id: user_id.to_owned(),
                key_type: "master".into(),
                public_key: key_name(&key_id),
                key_json: master.clone(),
            });
            Some((key_id, public_key))
        }
        None => keys::cross_signing_key(&client, user_id, "master")
            .await?
            .and_then(|stored| cross_signing_public_key(&stored.key_json)),
    };
    for (field, key_type) in [
        ("self_signing_key", "self_signing"),
        ("user_signing_key", "user_signing"),
    ] {
        let Some(value) = key(field) else {
            continue;
        };
        let Some((master_id, master_key)) = &master else {
            return Err(ApiError::new(
                ErrCode::MissingParam,
                "no master key is available to check the other keys",
            ));
        };
        let (key_id, _) =
            check_cross_signing_key(value, user_id, key_type, Some((master_id, master_key)))?;
        checked.push(CrossSigningKey {
            user_id: user_id.to_owned(),
            key_type: key_type.into(),
            public_key: key_name(&key_id),
            key_json: value.clone(),
        });
    }
    if checked.is_empty() && master.is_none() {
        return Err(ApiError::new(
            ErrCode::MissingParam,
            "no master key is available",
        ));
    }
    // A key named like a device would be confused with it (the spec's 403).
    for key in &checked {
        if keys::device_exists(&client, user_id, &key.public_key).await? {
            return Err(ApiError::forbidden(
                "a cross-signing key's public key is the id of one of the user's devices",
            ));
        }
    }
    Ok(checked)
}

/// The name of a key id (`ed25519:<name>`): how signatures/upload names
/// a cross-signing key.
fn key_name(key_id: &str) -> String {
    key_id.strip_prefix("ed25519:").unwrap_or(key_id).to_owned()
}

/// The keys of an upload that differ from the user's current ones (or
/// are new), and whether the user has cross-signing set up (a master key):
/// then changing anything needs user-interactive authentication, as
/// Synapse's `has_different_keys` decides (the same keys again need none).
pub(crate) async fn changed_keys(
    node: &Node,
    user_id: &str,
    keys: Vec<CrossSigningKey>,
) -> ApiResult<(Vec<CrossSigningKey>, bool)> {
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let set_up = keys::cross_signing_key(&client, user_id, "master")
        .await?
        .is_some();
    let mut changed = Vec::new();
    for key in keys {
        let stored = keys::cross_signing_key(&client, user_id, &key.key_type).await?;
        if stored.is_none_or(|stored| signed_part(&stored.key_json) != signed_part(&key.key_json)) {
            changed.push(key);
        }
    }
    Ok((changed, set_up))
}

/// Stores checked keys and tells the device lists stream: the master and
/// self-signing keys as devices of the user (everyone sharing a room
/// fetches them again), the user-signing key as a change only the user
/// sees.
pub(crate) async fn store_signing_keys(
    node: &Node,
    user_id: &str,
    keys: &[CrossSigningKey],
) -> ApiResult<()> {
    {
        let client = node
            .pool
            .get()
            .await
            .map_err(crate::storage::StorageError::from)?;
        for key in keys {
            keys::set_cross_signing_key(&client, key).await?;
        }
    }
    let devices: Vec<String> = keys
        .iter()
        .filter(|key| key.key_type != "user_signing")
        .map(|key| key.public_key.clone())
        .collect();
    let own = OwnedUserId::try_from(user_id)
        .map_err(|e| ApiError::internal(format!("key owner `{user_id}`: {e}")))?;
    let signed: Vec<OwnedUserId> = if keys.iter().any(|key| key.key_type == "user_signing") {
        vec![own]
    } else {
        Vec::new()
    };
    record_device_changes(node, user_id, devices, signed).await
}

/// POST /_matrix/client/v3/keys/device_signing/upload
///
/// The first upload needs no user-interactive authentication; replacing
/// keys the user has needs it (spec v1.11, MSC3967); uploading the same
/// keys again does not.
pub async fn upload_signing_keys(
    node: web::Data<Node>,
    request: HttpRequest,
    requester: Requester,
    JsonBody(body): JsonBody<DeviceSigningBody>,
) -> ApiResult<HttpResponse> {
    let user_id = requester.user_id.as_str();
    let keys = checked_signing_keys(&node, user_id, &body).await?;
    let (keys, set_up) = changed_keys(&node, user_id, keys).await?;
    if keys.is_empty() {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    if set_up {
        let auth: Option<AuthData> = match body.get("auth").filter(|auth| !auth.is_null()) {
            Some(auth) => Some(
                serde_json::from_value(auth.clone())
                    .map_err(|e| ApiError::bad_json(format!("auth: {e}")))?,
            ),
            None => None,
        };
        authenticate_with_password(&node, &request, &requester, auth.as_ref()).await?;
    }
    store_signing_keys(&node, user_id, &keys).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// POST /_matrix/client/v3/keys/signatures/upload
pub async fn upload_signatures(
    node: web::Data<Node>,
    requester: Requester,
    JsonBody(body): JsonBody<BTreeMap<String, Map<String, Value>>>,
) -> ApiResult<HttpResponse> {
    let signer = requester.user_id.as_str();
    let client = node
        .pool
        .get()
        .await
        .map_err(crate::storage::StorageError::from)?;
    let mut failures: Map<String, Value> = Map::new();
    let mut changed_devices = Vec::new();
    let mut signed_users = Vec::new();
    let self_signing = keys::cross_signing_key(&client, signer, "self_signing").await?;
    let user_signing = keys::cross_signing_key(&client, signer, "user_signing").await?;
    for (target_user, signed_keys) in &body {
        let target = check_user_id(target_user)?;
        for (target_key_id, object) in signed_keys {
            let outcome = if target_user == signer {
                sign_own_key(
                    &client,
                    signer,
                    target_key_id,
                    object,
                    self_signing.as_ref(),
                )
                .await?
            } else {
                sign_other_users_master_key(
                    &client,
                    signer,
                    target_user,
                    target_key_id,
                    object,
                    user_signing.as_ref(),
                )
                .await?
            };
            match outcome {
                Ok(signatures) => {
                    for signature in &signatures {
                        keys::store_signature(&client, signature).await?;
                    }
                    if target_user == signer {
                        changed_devices.push(target_key_id.clone());
                    } else if !signed_users.contains(&target) {
                        signed_users.push(target.clone());
                    }
                }
                Err((errcode, error)) => {
                    if let Some(by_user) = failures
                        .entry(target_user.clone())
                        .or_insert_with(|| Value::Object(Map::new()))
                        .as_object_mut()
                    {
                        by_user.insert(
                            target_key_id.clone(),
                            json!({ "errcode": errcode, "error": error }),
                        );
                    }
                }
            }
        }
    }
    drop(client);
    record_device_changes(&node, signer, changed_devices, signed_users).await?;
    Ok(HttpResponse::Ok().json(json!({ "failures": failures })))
}

/// A refusal of one signed key: its errcode and message.
type Refusal = (&'static str, String);

/// The signatures of `object` the signer may add to a key of their own: a
/// device key signed by their self-signing key, or their master key signed
/// by one of their devices.
async fn sign_own_key(
    client: &impl deadpool_postgres::GenericClient,
    user_id: &str,
    target_key_id: &str,
    object: &Value,
    self_signing: Option<&CrossSigningKey>,
) -> ApiResult<Result<Vec<StoredSignature>, Refusal>> {
    if let Some(device_key) = keys::device_keys(client, user_id, target_key_id).await? {
        let Some(self_signing) = self_signing else {
            return Ok(Err((
                "M_INVALID_SIGNATURE",
                "no self-signing key is uploaded".into(),
            )));
        };
        if signed_part(&device_key) != signed_part(object) {
            return Ok(Err((
                "M_INVALID_PARAM",
                "the signed key is not the device's key".into(),
            )));
        }
        let Some((key_id, public_key)) = cross_signing_public_key(&self_signing.key_json) else {
            return Ok(Err((
                "M_INVALID_SIGNATURE",
                "the self-signing key is unusable".into(),
            )));
        };
        return Ok(signature_by(
            object,
            user_id,
            target_key_id,
            user_id,
            &key_id,
            &public_key,
        ));
    }
    let master = keys::cross_signing_key(client, user_id, "master").await?;
    if let Some(master) = master.filter(|master| master.public_key == target_key_id) {
        if signed_part(&master.key_json) != signed_part(object) {
            return Ok(Err((
                "M_INVALID_PARAM",
                "the signed key is not the master key".into(),
            )));
        }
        // Signatures by the user's devices (each checked with its key).
        let mut signatures = Vec::new();
        let by_user = object
            .get("signatures")
            .and_then(|s| s.get(user_id))
            .and_then(Value::as_object);
        for key_id in by_user.into_iter().flat_map(|s| s.keys()) {
            let Some(device_id) = key_id.strip_prefix("ed25519:") else {
                continue;
            };
            if device_id == master.public_key {
                continue;
            }
            let Some(device_key) = keys::device_keys(client, user_id, device_id).await? else {
                continue;
            };
            let Some(public_key) = device_key
                .get("keys")
                .and_then(|k| k.get(key_id))
                .and_then(Value::as_str)
            else {
                continue;
            };
            match signature_by(object, user_id, target_key_id, user_id, key_id, public_key) {
                Ok(found) => signatures.extend(found),
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
        if signatures.is_empty() {
            return Ok(Err((
                "M_INVALID_SIGNATURE",
                "no signature by one of the user's devices".into(),
            )));
        }
        return Ok(Ok(signatures));
    }
    Ok(Err((
        "M_NOT_FOUND",
        format!("no key {target_key_id} of {user_id}"),
    )))
}

/// The signature of another user's master key by the signer's user-signing key.
async fn sign_other_users_master_key(
    client: &impl deadpool_postgres::GenericClient,
    signer: &str,
    target_user: &str,
    target_key_id: &str,
    object: &Value,
    user_signing: Option<&CrossSigningKey>,
) -> ApiResult<Result<Vec<StoredSignature>, Refusal>> {
    let Some(user_signing) = user_signing else {
        return Ok(Err((
            "M_INVALID_SIGNATURE",
            "no user-signing key is uploaded".into(),
        )));
    };
    let master = keys::cross_signing_key(client, target_user, "master").await?;
    let Some(master) = master.filter(|master| master.public_key == target_key_id) else {
        return Ok(Err((
            "M_NOT_FOUND",
            format!("{target_key_id} is not the master key of {target_user}"),
        )));
    };
    if signed_part(&master.key_json) != signed_part(object) {
        return Ok(Err((
            "M_INVALID_PARAM",
            "the signed key is not the master key".into(),
        )));
    }
    let Some((key_id, public_key)) = cross_signing_public_key(&user_signing.key_json) else {
        return Ok(Err((
            "M_INVALID_SIGNATURE",
            "the user-signing key is unusable".into(),
        )));
    };
    Ok(signature_by(
        object,
        target_user,
        target_key_id,
        signer,
        &key_id,
        &public_key,
    ))
}

/// The signature of `object` by `signer`'s key `key_id` (`public_key`), to
/// store for the target, or a refusal when it is missing or wrong.
fn signature_by(
    object: &Value,
    target_user_id: &str,
    target_key_id: &str,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<Vec<StoredSignature>, Refusal> {
    let Some(signature) = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
    else {
        return Err(("M_INVALID_SIGNATURE", format!("no signature by {key_id}")));
    };
    if !verify_signature(object, signer, key_id, public_key) {
        return Err((
            "M_INVALID_SIGNATURE",
            format!("the signature by {key_id} does not verify"),
        ));
    }
    Ok(vec![StoredSignature {
        target_user_id: target_user_id.to_owned(),
        target_key_id: target_key_id.to_owned(),
        signer_user_id: signer.to_owned(),
        signer_key_id: key_id.to_owned(),
        signature: signature.to_owned(),
    }])
}
