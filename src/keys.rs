//! End-to-end encryption keys as the server checks them (Client-Server API
//! "End-to-end encryption"): the shape of device keys and cross-signing
//! keys, and their ed25519 signatures, verified with ruma's canonical JSON
//! and `ruma::signatures` (never by hand). The HTTP side is
//! `api/client/keys.rs`; storage is `storage/keys.rs`.

use ruma::serde::Base64;
use ruma::signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes};
use ruma::{CanonicalJsonValue, SigningKeyAlgorithm};
use serde_json::Value;

/// The three kinds of cross-signing key, as `usage` names them.
pub const CROSS_SIGNING_KEY_TYPES: [&str; 3] = ["master", "self_signing", "user_signing"];

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is not what it claims to be (shape, owner, usage).
    #[error("{0}")]
    Invalid(String),
    /// The signature it needs is missing or does not verify.
    #[error("{0}")]
    BadSignature(String),
}

/// Whether `object` carries a valid signature by `signer`'s key `key_id`
/// (`ed25519:<name>`) made with `public_key` (unpadded base64).
pub fn verify_signature(object: &Value, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(signature) = object
        .get("signatures")
        .and_then(|signatures| signatures.get(signer))
        .and_then(|signatures| signatures.get(key_id))
        .and_then(Value::as_str)
    else {
        return false;
    };
    verify_detached(object, signature, public_key)
}

/// Whether `signature` (unpadded base64) is `public_key`'s ed25519
/// signature of `object`'s canonical JSON (without `signatures` and
/// `unsigned`).
pub fn verify_detached(object: &Value, signature: &str, public_key: &str) -> bool {
    let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(object.clone())
    else {
        return false;
    };
    let Ok(canonical) = to_canonical_json_string_for_signing(&object) else {
        return false;
    };
    let (Ok(signature), Ok(public_key)) = (
        Base64::<ruma::serde::base64::Standard>::parse(signature),
        Base64::<ruma::serde::base64::Standard>::parse(public_key),
    ) else {
        return false;
    };
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        canonical.as_bytes(),
    )
    .is_ok()
}

/// `object` without `signatures` and `unsigned`: what a signature covers,
/// for comparing two copies of one key.
pub fn signed_part(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    object
}

/// Checks the device keys a device uploads for itself: its own user and
/// device ids, `algorithms`, `keys` with its `ed25519:<device_id>` key, and
/// a valid signature by that key.
pub fn check_device_keys(keys: &Value, user_id: &str, device_id: &str) -> Result<(), KeyError> {
    let invalid = |message: &str| Err(KeyError::Invalid(message.to_owned()));
    let Some(object) = keys.as_object() else {
        return invalid("device_keys must be an object");
    };
    if object.get("user_id").and_then(Value::as_str) != Some(user_id) {
        return invalid("device_keys.user_id must be the uploading user");
    }
    if object.get("device_id").and_then(Value::as_str) != Some(device_id) {
        return invalid("device_keys.device_id must be the uploading device");
    }
    if !object
        .get("algorithms")
        .and_then(Value::as_array)
        .is_some_and(|algorithms| algorithms.iter().all(Value::is_string))
    {
        return invalid("device_keys.algorithms must be a list of strings");
    }
    let Some(key_map) = object.get("keys").and_then(Value::as_object) else {
        return invalid("device_keys.keys must be an object");
    };
    if !key_map.values().all(Value::is_string) {
        return invalid("device_keys.keys must map key ids to keys");
    }
    let key_id = format!("ed25519:{device_id}");
    let Some(public_key) = key_map.get(&key_id).and_then(Value::as_str) else {
        return invalid("device_keys.keys has no ed25519 key of the device");
    };
    if !object.get("signatures").is_some_and(Value::is_object) {
        return invalid("device_keys.signatures must be an object");
    }
    // An invalid parameter, not M_INVALID_SIGNATURE: the keys themselves
    // are wrong, as for any other malformed upload.
    if !verify_signature(keys, user_id, &key_id, public_key) {
        return invalid("device_keys are not signed by the device's own ed25519 key");
    }
    Ok(())
}

/// A cross-signing key's one key: `(key_id, public_key)`.
pub fn cross_signing_public_key(key: &Value) -> Option<(String, String)> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (key_id, public_key) = keys.iter().next()?;
    let name = key_id.strip_prefix("ed25519:")?;
    let public_key = public_key.as_str()?;
    if name.is_empty() || Base64::<ruma::serde::base64::Standard>::parse(public_key).is_err() {
        return None;
    }
    Some((key_id.clone(), public_key.to_owned()))
}

/// Checks a cross-signing key of `key_type` uploaded by `user_id`: its
/// owner, its usage, its one ed25519 key, and (for the self-signing and
/// user-signing keys) a valid signature by the master key `(key_id,
/// public_key)`. Its `(key_id, public_key)`.
pub fn check_cross_signing_key(
    key: &Value,
    user_id: &str,
    key_type: &str,
    master: Option<(&str, &str)>,
) -> Result<(String, String), KeyError> {
    let invalid = |message: String| Err(KeyError::Invalid(message));
    if !key.is_object() {
        return invalid(format!("the {key_type} key must be an object"));
    }
    if key.get("user_id").and_then(Value::as_str) != Some(user_id) {
        return invalid(format!("the {key_type} key must be the uploading user's"));
    }
    if !key
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|usage| usage.iter().any(|u| u.as_str() == Some(key_type)))
    {
        return invalid(format!(
            "the {key_type} key's usage must include {key_type}"
        ));
    }
    let Some((key_id, public_key)) = cross_signing_public_key(key) else {
        return invalid(format!(
            "the {key_type} key must hold exactly one ed25519 key"
        ));
    };
    if let Some((master_id, master_key)) = master {
        if !verify_signature(key, user_id, master_id, master_key) {
            return Err(KeyError::BadSignature(format!(
                "the {key_type} key is not signed by the master key"
            )));
        }
    }
    Ok((key_id, public_key))
}

#[cfg(test)]
mod tests {
    use ruma::signatures::{sign_json, Ed25519KeyPair};
    use serde_json::json;

    use super::*;

    /// A key pair whose key id is `ed25519:<version>`, and its public key.
    fn key_pair(version: Option<&str>) -> (Ed25519KeyPair, String) {
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, String::new()).expect("a key pair");
        let public =
            Base64::<ruma::serde::base64::Standard>::new(pair.public_key().to_vec()).encode();
        let version = version.map_or_else(|| public.clone(), str::to_owned);
        let pair = Ed25519KeyPair::from_der(&der, version).expect("a key pair");
        (pair, public)
    }

    fn signed(object: Value, signer: &str, pair: &Ed25519KeyPair) -> Value {
        let Ok(CanonicalJsonValue::Object(mut canonical)) = CanonicalJsonValue::try_from(object)
        else {
            panic!("not an object");
        };
        sign_json(signer, pair, &mut canonical).expect("signed");
        CanonicalJsonValue::Object(canonical).into()
    }

    #[test]
    fn device_keys_must_be_signed_by_the_device_itself() {
        let (device, device_public) = key_pair(Some("DEV"));
        let keys = json!({
            "user_id": "@a:x", "device_id": "DEV",
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { "ed25519:DEV": device_public, "curve25519:DEV": "abc" },
        });
        let good = signed(keys.clone(), "@a:x", &device);
        assert_eq!(check_device_keys(&good, "@a:x", "DEV"), Ok(()));
        let (stranger, _) = key_pair(Some("DEV"));
        let forged = signed(keys.clone(), "@a:x", &stranger);
        assert!(matches!(
            check_device_keys(&forged, "@a:x", "DEV"),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            check_device_keys(&good, "@a:x", "OTHER"),
            Err(KeyError::Invalid(_))
        ));
        // Tampering after signing breaks the signature.
        let mut tampered = good.clone();
        tampered["keys"]["curve25519:DEV"] = json!("xyz");
        assert!(check_device_keys(&tampered, "@a:x", "DEV").is_err());
        // What a signature does not cover may change.
        let mut annotated = good;
        annotated["unsigned"] = json!({ "device_display_name": "phone" });
        assert_eq!(check_device_keys(&annotated, "@a:x", "DEV"), Ok(()));
    }

    #[test]
    fn a_self_signing_key_needs_the_master_keys_signature() {
        let (master, master_public) = key_pair(None);
        let master_id = format!("ed25519:{master_public}");
        let (_, ssk_public) = key_pair(None);
        let ssk = json!({
            "user_id": "@a:x", "usage": ["self_signing"],
            "keys": { format!("ed25519:{ssk_public}"): ssk_public },
        });
        let by_master = signed(ssk.clone(), "@a:x", &master);
        assert_eq!(
            check_cross_signing_key(
                &by_master,
                "@a:x",
                "self_signing",
                Some((&master_id, &master_public))
            ),
            Ok((format!("ed25519:{ssk_public}"), ssk_public.clone()))
        );
        // Signed by another key under the master key's id: refused.
        let (impostor, _) = key_pair(Some(&master_public));
        let by_impostor = signed(ssk.clone(), "@a:x", &impostor);
        assert!(matches!(
            check_cross_signing_key(
                &by_impostor,
                "@a:x",
                "self_signing",
                Some((&master_id, &master_public))
            ),
            Err(KeyError::BadSignature(_))
        ));
        assert!(matches!(
            check_cross_signing_key(&ssk, "@a:x", "user_signing", None),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            check_cross_signing_key(&by_master, "@b:x", "self_signing", None),
            Err(KeyError::Invalid(_))
        ));
    }
}
