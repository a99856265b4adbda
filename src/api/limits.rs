//! Bounds on what clients supply, each checked where the input arrives (the
//! handler), before anything reaches a writer or the database.
//!
//! Every string that ends up in an index must stay well below PostgreSQL's
//! limit for one index row (about 2,700 bytes), or the insert fails; since a
//! writer commits concurrent requests together, one such string would fail
//! everyone's requests in the batch. Every list a client sends is bounded too,
//! so that no single request can make a writer work for long. Where Synapse
//! has a limit, Lattice uses the same one, so clients written against it never
//! meet a bound here that they would not meet there.
//!
//! Identifiers parsed with ruma (user, room and event ids, room aliases) are
//! bounded by ruma's own 255-byte limit; event types and state keys by the
//! events writer (255 bytes each), and whole events by its 64 KiB PDU limit.
//! The checks are length comparisons: nothing here queries anything.

use crate::error::{ApiError, ApiResult, ErrCode};

/// A transaction id (`PUT .../send/{eventType}/{txnId}`, `.../redact/{eventId}/{txnId}`),
/// in bytes. Stored in the `(user, device, txn id)` key that makes sends idempotent.
pub const MAX_TXN_ID_BYTES: usize = 255;

/// How deeply a request body's JSON may nest. Parsing stops at 128 levels;
/// a body that deep parsed here could not be decoded again once wrapped in
/// a mailbox message to a writer on another instance (a few levels more),
/// so a split answered it late with 503. No Matrix content nests this deep.
pub const MAX_JSON_DEPTH: usize = 64;

/// Refuses a body nested deeper than [`MAX_JSON_DEPTH`] (`400 M_BAD_JSON`).
pub fn check_json_depth(value: &serde_json::Value) -> ApiResult<()> {
    use serde_json::Value;
    fn containers(value: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => Box::new(std::iter::empty()),
        };
        Box::new(children.filter(|child| child.is_array() || child.is_object()))
    }
    // The arrays and objects at each depth, the body itself at depth 1.
    let mut level: Vec<&Value> = vec![value];
    for _ in 0..MAX_JSON_DEPTH {
        level = level.into_iter().flat_map(containers).collect();
        if level.is_empty() {
            return Ok(());
        }
    }
    Err(ApiError::bad_json(format!(
        "JSON may nest at most {MAX_JSON_DEPTH} levels"
    )))
}

/// A device id chosen by the client at `/login` or `/register`, in bytes
/// (Synapse: 512 characters). Part of the devices' and transaction ids' keys.
pub const MAX_DEVICE_ID_BYTES: usize = 512;

/// `initial_device_display_name`, in characters (Synapse's `MAX_DEVICE_DISPLAY_NAME_LEN`).
pub const MAX_DEVICE_DISPLAY_NAME_CHARS: usize = 100;

/// A profile's display name, in characters (Synapse's `MAX_DISPLAYNAME_LEN`).
pub const MAX_DISPLAYNAME_CHARS: usize = 256;

/// A profile's avatar URL, in bytes (Synapse's `MAX_AVATAR_URL_LEN`); it must
/// also be an `mxc://` URI.
pub const MAX_AVATAR_URL_BYTES: usize = 1000;

/// A password, in bytes: at registration, and at login (no stored password is longer).
pub const MAX_PASSWORD_BYTES: usize = 512;

/// A user id, in bytes (the spec's limit, and Synapse's): at registration, and
/// the identifier of a login.
pub const MAX_USER_ID_BYTES: usize = 255;

/// A room alias, `#localpart:server` in bytes (Synapse's `MAX_ALIAS_LENGTH`).
pub const MAX_ALIAS_BYTES: usize = 255;

/// The `reason` of a membership change or a redaction, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;

/// Events in `createRoom`'s `initial_state`. Clients send a handful
/// (encryption, history visibility, join rules, avatar); a room's whole
/// initial state is written in one transaction by the events writer, which
/// meanwhile writes nothing else: at these two bounds a createRoom holds it
/// about 70 ms (release build, this project's 2-core machine), while 256
/// state events held it 150 ms.
pub const MAX_INITIAL_STATE_EVENTS: usize = 100;

/// Users in `createRoom`'s `invite` (each is an invite event written with
/// the room; more can be invited once it exists).
pub const MAX_CREATE_ROOM_INVITES: usize = 50;

/// The `generic_search_term` of a `POST /publicRooms` search, in bytes.
pub const MAX_SEARCH_TERM_BYTES: usize = 1000;

/// The most rooms one page of `/publicRooms` lists, whatever `limit` asks for.
pub const MAX_PUBLIC_ROOMS_PAGE: usize = 500;

/// Devices one `POST /delete_devices` may name.
pub const MAX_DELETED_DEVICES: usize = 1000;

/// A megolm session id in the key backup's paths and bodies, in bytes
/// (they are 43 characters; part of the stored keys' primary key).
pub const MAX_ROOM_KEY_SESSION_ID_BYTES: usize = 255;

/// A user-interactive authentication session id sent back by the client, in
/// bytes (ours are 24 characters).
pub const MAX_UIA_SESSION_BYTES: usize = 255;

/// `M_INVALID_PARAM` unless `value` is at most `max` bytes.
pub fn check_bytes(what: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.len() > max {
        return Err(ApiError::invalid_param(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// `M_INVALID_PARAM` unless `value` is at most `max` characters.
pub fn check_chars(what: &str, value: &str, max: usize) -> ApiResult<()> {
    // A string of at most `max` bytes has at most `max` characters: count
    // only the long ones.
    if value.len() > max && value.chars().count() > max {
        return Err(ApiError::invalid_param(format!(
            "{what} is longer than {max} characters"
        )));
    }
    Ok(())
}

/// `M_INVALID_PARAM` unless a list has at most `max` entries.
pub fn check_count(what: &str, count: usize, max: usize) -> ApiResult<()> {
    if count > max {
        return Err(ApiError::invalid_param(format!(
            "{what} has more than {max} entries"
        )));
    }
    Ok(())
}

/// A transaction id: not empty and at most [`MAX_TXN_ID_BYTES`].
pub fn check_txn_id(txn_id: &str) -> ApiResult<()> {
    if txn_id.is_empty() {
        return Err(ApiError::invalid_param("the transaction id is empty"));
    }
    check_bytes("the transaction id", txn_id, MAX_TXN_ID_BYTES)
}

/// A device id chosen by the client: not empty, at most [`MAX_DEVICE_ID_BYTES`],
/// and storable (registration creates the account before the device, so the
/// database must not be the one to refuse it).
pub fn check_device_id(device_id: &str) -> ApiResult<()> {
    if device_id.is_empty() {
        return Err(ApiError::invalid_param("device_id is empty"));
    }
    check_bytes("device_id", device_id, MAX_DEVICE_ID_BYTES)?;
    check_no_nul("device_id", device_id)
}

/// `M_INVALID_PARAM` for text PostgreSQL cannot store.
pub fn check_no_nul(what: &str, value: &str) -> ApiResult<()> {
    if value.contains('\0') {
        return Err(ApiError::invalid_param(format!(
            "{what} may not contain NUL characters"
        )));
    }
    Ok(())
}

/// `M_INVALID_PARAM` for JSON PostgreSQL cannot store in `jsonb`: a NUL
/// character in a string or a key.
pub fn check_json_no_nul(what: &str, value: &serde_json::Value) -> ApiResult<()> {
    use serde_json::Value;
    fn contains_nul(value: &Value) -> bool {
        match value {
            Value::String(text) => text.contains('\0'),
            Value::Array(items) => items.iter().any(contains_nul),
            Value::Object(fields) => fields
                .iter()
                .any(|(key, value)| key.contains('\0') || contains_nul(value)),
            _ => false,
        }
    }
    if contains_nul(value) {
        return Err(ApiError::invalid_param(format!(
            "{what} may not contain NUL characters"
        )));
    }
    Ok(())
}

/// An avatar URL: an `mxc://` URI of at most [`MAX_AVATAR_URL_BYTES`].
pub fn check_avatar_url(url: &str) -> ApiResult<()> {
    check_bytes("avatar_url", url, MAX_AVATAR_URL_BYTES)?;
    <&ruma::MxcUri>::from(url)
        .validate()
        .map_err(|_| ApiError::new(ErrCode::InvalidParam, "avatar_url must be an mxc:// URI"))
}

/// An optional `reason`: at most [`MAX_REASON_BYTES`].
pub fn check_reason(reason: Option<&str>) -> ApiResult<()> {
    reason.map_or(Ok(()), |r| check_bytes("reason", r, MAX_REASON_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"a":{"a":...1...}}` with `levels` objects.
    fn nested(levels: usize) -> serde_json::Value {
        (0..levels).fold(
            serde_json::json!(1),
            |inner, _| serde_json::json!({ "a": inner }),
        )
    }

    #[test]
    fn json_may_nest_to_its_limit_and_not_one_level_more() {
        assert!(check_json_depth(&nested(MAX_JSON_DEPTH)).is_ok());
        let error = check_json_depth(&nested(MAX_JSON_DEPTH + 1)).expect_err("too deep");
        assert_eq!(error.errcode, ErrCode::BadJson);
        assert!(check_json_depth(&serde_json::json!([[], {}, "x"])).is_ok());
    }

    #[test]
    fn bounds_allow_their_limit_and_refuse_one_more() {
        assert!(check_txn_id(&"t".repeat(MAX_TXN_ID_BYTES)).is_ok());
        let error = check_txn_id(&"t".repeat(MAX_TXN_ID_BYTES + 1)).expect_err("too long");
        assert_eq!(error.errcode, ErrCode::InvalidParam);
        assert!(check_txn_id("").is_err());
        assert!(check_device_id(&"D".repeat(MAX_DEVICE_ID_BYTES)).is_ok());
        assert!(check_device_id(&"D".repeat(MAX_DEVICE_ID_BYTES + 1)).is_err());
        assert!(check_device_id("PHONE\0").is_err());
        assert!(check_count("invite", MAX_CREATE_ROOM_INVITES, MAX_CREATE_ROOM_INVITES).is_ok());
        assert!(check_count(
            "invite",
            MAX_CREATE_ROOM_INVITES + 1,
            MAX_CREATE_ROOM_INVITES
        )
        .is_err());
    }

    #[test]
    fn character_bounds_count_characters_not_bytes() {
        // 256 four-byte characters: 1,024 bytes, still a valid display name.
        let emoji = "😀".repeat(MAX_DISPLAYNAME_CHARS);
        assert!(check_chars("displayname", &emoji, MAX_DISPLAYNAME_CHARS).is_ok());
        let longer = format!("{emoji}x");
        assert!(check_chars("displayname", &longer, MAX_DISPLAYNAME_CHARS).is_err());
    }

    #[test]
    fn avatar_urls_are_bounded_mxc_uris() {
        assert!(check_avatar_url("mxc://example.org/abc123").is_ok());
        assert!(check_avatar_url("https://example.org/a.png").is_err());
        assert!(check_avatar_url("mxc://example.org").is_err());
        let long = format!("mxc://example.org/{}", "a".repeat(MAX_AVATAR_URL_BYTES));
        assert!(check_avatar_url(&long).is_err());
    }
}
