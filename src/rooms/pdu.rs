//! Persistent data units (PDUs): building, signing, parsing, authorising and redacting room
//! events for room versions 10, 11 and 12. Everything the Matrix specification defines
//! precisely (canonical JSON, content hashes, ed25519 signatures, reference hashes and event ids,
//! the MSC4291 room ids of room version 12, redaction, auth-event selection and the
//! authorization rules) is delegated to ruma (`ruma::canonical_json`, `ruma::signatures`,
//! `ruma::state_res`); this module only maps between the server's own [`Pdu`] record and those
//! APIs, and adds the client-facing helpers (ClientEvent formatting and power-level look-ups).

use std::borrow::Borrow;
use std::collections::HashMap;

use ruma::{
    canonical_json::{redact, redact_content_in_place, CanonicalJsonFieldError, RedactedBecause},
    events::{
        room::power_levels::{
            RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource, UserPowerLevel,
        },
        StateEventType, TimelineEventType,
    },
    room_version_rules::RoomVersionRules,
    signatures::{hash_and_sign_event, reference_hash, sign_event, Ed25519KeyPair},
    state_res::{
        check_pdu_format, check_state_dependent_auth_rules, check_state_independent_auth_rules,
        events::RoomCreateEvent,
    },
    CanonicalJsonError, CanonicalJsonObject, CanonicalJsonValue, EventId, Int,
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, ServerName, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Value};

/// Event type of the room creation event.
const ROOM_CREATE: &str = "m.room.create";
/// Event type of redaction events.
const ROOM_REDACTION: &str = "m.room.redaction";

/// Errors produced while building, parsing or checking PDUs.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The room version is not one this module supports (10, 11 and 12 are).
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(RoomVersionId),
    /// The event (or proto-event) is structurally invalid.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// The PDU failed ruma's event-format / size-limit check.
    #[error("invalid PDU format: {0}")]
    Format(String),
    /// The event was rejected by the authorization rules.
    #[error("event not authorised: {0}")]
    Auth(String),
    /// A server tried to sign an event for a user on another server.
    #[error("sender {sender} does not belong to the signing server {origin}")]
    ForeignSender {
        /// The event's sender.
        sender: OwnedUserId,
        /// The server that was asked to sign.
        origin: OwnedServerName,
    },
    /// A value could not be represented as canonical JSON (floats, out-of-range integers, ...).
    #[error("not canonical JSON: {0}")]
    CanonicalJson(#[from] CanonicalJsonError),
    /// A required JSON field was missing or of the wrong type.
    #[error("invalid JSON field: {0}")]
    Field(#[from] CanonicalJsonFieldError),
    /// Hashing or signing failed (includes the 65 535 byte PDU size limit).
    #[error("hashing or signing failed: {0}")]
    Signing(#[from] ruma::signatures::JsonError),
    /// A Matrix identifier could not be parsed.
    #[error("invalid identifier: {0}")]
    Id(#[from] ruma::IdParseError),
    /// Plain JSON (de)serialisation failed.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

/// Returns the ruma rules of a supported room version (10, 11 or 12), or
/// [`PduError::UnsupportedRoomVersion`].
pub fn room_version_rules(room_version: &RoomVersionId) -> Result<RoomVersionRules, PduError> {
    match room_version {
        RoomVersionId::V10 | RoomVersionId::V11 | RoomVersionId::V12 => room_version
            .rules()
            .ok_or_else(|| PduError::UnsupportedRoomVersion(room_version.clone())),
        other => Err(PduError::UnsupportedRoomVersion(other.clone())),
    }
}

/// Whether this module can build and check events for `room_version`.
pub fn is_supported_room_version(room_version: &RoomVersionId) -> bool {
    room_version_rules(room_version).is_ok()
}

/// A persisted room event.
///
/// The typed fields are a parsed view of [`Pdu::json`], which is the complete signed federation
/// form of the event (no `event_id` field, as in every room version since 3; no `room_id` field
/// for a room version 12 `m.room.create`). `json` is what goes over federation; the other fields
/// are for the server's own use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pdu {
    /// `$` + the URL-safe unpadded base64 reference hash of the event.
    pub event_id: OwnedEventId,
    /// The room; for a v12 `m.room.create` this is derived from the event id.
    pub room_id: OwnedRoomId,
    /// The sending user.
    pub sender: OwnedUserId,
    /// The event type (`type` in JSON).
    pub kind: String,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// The event content (a JSON object).
    pub content: Value,
    /// Milliseconds since the Unix epoch on the originating server.
    pub origin_server_ts: u64,
    /// The events this event follows in the room DAG.
    pub prev_events: Vec<OwnedEventId>,
    /// The events that authorise this event.
    pub auth_events: Vec<OwnedEventId>,
    /// The depth of the event in the DAG.
    pub depth: u64,
    /// For `m.room.redaction`: the redacted event (top level in v10, `content.redacts` in v11+).
    pub redacts: Option<OwnedEventId>,
    /// The full signed federation JSON of the event.
    pub json: CanonicalJsonObject,
}

/// The typed fields of a PDU, read from its JSON.
#[derive(Deserialize)]
struct PduFields {
    #[serde(rename = "type")]
    kind: String,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    state_key: Option<String>,
    content: Value,
    origin_server_ts: u64,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    depth: u64,
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a PDU received over federation (or loaded from storage in federation form).
    ///
    /// Runs ruma's event-format and size checks, computes the event id from the reference hash
    /// and, for a room version 12 `m.room.create`, derives the room id from it. This does *not*
    /// verify hashes or signatures (use `ruma::signatures::verify_event` with the origin's keys)
    /// nor the authorization rules (use [`check_auth`] and friends). The JSON is kept as given,
    /// including any `unsigned` section.
    pub fn from_federation_json(
        room_version: &RoomVersionId,
        json: CanonicalJsonObject,
    ) -> Result<Self, PduError> {
        let rules = room_version_rules(room_version)?;
        Self::from_canonical(&rules, json)
    }

    /// Convenience wrapper around [`Pdu::from_federation_json`] for a raw JSON string.
    pub fn from_federation_str(room_version: &RoomVersionId, json: &str) -> Result<Self, PduError> {
        let object: CanonicalJsonObject = serde_json::from_str(json)?;
        Self::from_federation_json(room_version, object)
    }

    fn from_canonical(
        rules: &RoomVersionRules,
        json: CanonicalJsonObject,
    ) -> Result<Self, PduError> {
        check_pdu_format(&json, &rules.event_format).map_err(PduError::Format)?;

        let fields: PduFields =
            serde_json::from_value(CanonicalJsonValue::Object(json.clone()).into())?;
        if !fields.content.is_object() {
            return Err(PduError::Invalid(
                "`content` must be a JSON object".to_owned(),
            ));
        }

        let hash = reference_hash(&json, rules)?;
        let event_id = EventId::new_v2_or_v3(&hash)?;

        let room_id = match fields.room_id {
            Some(room_id) => room_id,
            None if fields.kind == ROOM_CREATE
                && rules.authorization.room_create_event_id_as_room_id =>
            {
                RoomId::new_v2(&hash)?
            }
            None => return Err(PduError::Invalid("missing `room_id`".to_owned())),
        };

        let redacts = if fields.kind != ROOM_REDACTION {
            None
        } else if rules.redaction.content_field_redacts {
            match fields.content.get("redacts") {
                None => None,
                Some(Value::String(id)) => Some(EventId::parse(id.as_str())?),
                Some(_) => {
                    return Err(PduError::Invalid(
                        "`content.redacts` must be a string".to_owned(),
                    ))
                }
            }
        } else {
            fields.redacts
        };

        Ok(Self {
            event_id,
            room_id,
            sender: fields.sender,
            kind: fields.kind,
            state_key: fields.state_key,
            content: fields.content,
            origin_server_ts: fields.origin_server_ts,
            prev_events: fields.prev_events,
            auth_events: fields.auth_events,
            depth: fields.depth,
            redacts,
            json,
        })
    }

    /// Whether this is a state event.
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The `(type, state_key)` pair of a state event.
    pub fn state_pair(&self) -> Option<(StateEventType, String)> {
        self.state_key
            .as_ref()
            .map(|key| (StateEventType::from(self.kind.as_str()), key.clone()))
    }

    /// Adds this server's signature to the event JSON (e.g. co-signing an invite or a
    /// `send_join` event). The event id is unaffected: signatures are not part of the
    /// reference hash.
    pub fn add_signature(
        &mut self,
        room_version: &RoomVersionId,
        origin: &ServerName,
        key: &Ed25519KeyPair,
    ) -> Result<(), PduError> {
        let rules = room_version_rules(room_version)?;
        sign_event(origin.as_str(), key, &mut self.json, &rules.redaction)?;
        Ok(())
    }

    /// Returns the redacted form of this event (content stripped per the room version's
    /// redaction algorithm, `unsigned` and unprotected top-level keys removed). The event id
    /// and the signatures stay valid; only the content hash no longer matches.
    pub fn redacted(&self, room_version: &RoomVersionId) -> Result<Pdu, PduError> {
        let rules = room_version_rules(room_version)?;
        let json = redact(self.json.clone(), &rules.redaction, None)?;
        Self::from_canonical(&rules, json)
    }
}

/// An event that this server is about to create, before hashing, signing and id assignment.
#[derive(Clone, Debug)]
pub struct ProtoEvent {
    /// The room; `None` only for a room version 12 `m.room.create` (the id is derived from it).
    pub room_id: Option<OwnedRoomId>,
    /// The sending user; must belong to the signing server.
    pub sender: OwnedUserId,
    /// The event type.
    pub kind: String,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// The event content; must be a JSON object of canonical JSON values (no floats).
    pub content: Value,
    /// Milliseconds since the Unix epoch.
    pub origin_server_ts: u64,
    /// Forward extremities this event follows (at most 20).
    pub prev_events: Vec<OwnedEventId>,
    /// Auth events, normally from [`select_auth_events`] (at most 10).
    pub auth_events: Vec<OwnedEventId>,
    /// Depth in the DAG (max of the prev events' depths + 1; 1 for the create event).
    pub depth: u64,
    /// For `m.room.redaction`: the event to redact. Placed at the top level in v10 and in
    /// `content.redacts` in v11+.
    pub redacts: Option<OwnedEventId>,
}

/// Builds the federation JSON for `proto`, adds the content hash, signs it with `key` as
/// `origin` and computes the event id (and, for a v12 `m.room.create`, the room id).
///
/// The key id is `ed25519:<key.version()>`: the version lives in the [`Ed25519KeyPair`].
pub fn build_and_sign(
    room_version: &RoomVersionId,
    origin: &ServerName,
    key: &Ed25519KeyPair,
    proto: ProtoEvent,
) -> Result<Pdu, PduError> {
    let rules = room_version_rules(room_version)?;

    if proto.sender.server_name() != origin {
        return Err(PduError::ForeignSender {
            sender: proto.sender,
            origin: origin.to_owned(),
        });
    }

    let is_create = proto.kind == ROOM_CREATE;
    let room_id_from_create = rules.authorization.room_create_event_id_as_room_id;
    match (&proto.room_id, is_create && room_id_from_create) {
        (Some(_), true) => {
            return Err(PduError::Invalid(format!(
                "an m.room.create event in room version {room_version} must not have a room_id"
            )))
        }
        (None, false) => return Err(PduError::Invalid("missing room_id".to_owned())),
        _ => {}
    }
    if proto.redacts.is_some() && proto.kind != ROOM_REDACTION {
        return Err(PduError::Invalid(
            "`redacts` is only valid on m.room.redaction".to_owned(),
        ));
    }

    let CanonicalJsonValue::Object(mut content) = CanonicalJsonValue::try_from(proto.content)?
    else {
        return Err(PduError::Invalid(
            "`content` must be a JSON object".to_owned(),
        ));
    };

    let mut object = CanonicalJsonObject::new();
    if let Some(redacts) = &proto.redacts {
        if rules.redaction.content_field_redacts {
            content.insert("redacts".to_owned(), redacts.to_string().into());
        } else {
            object.insert("redacts".to_owned(), redacts.to_string().into());
        }
    }
    object.insert("type".to_owned(), proto.kind.into());
    if let Some(room_id) = &proto.room_id {
        object.insert("room_id".to_owned(), room_id.to_string().into());
    }
    object.insert("sender".to_owned(), proto.sender.to_string().into());
    if let Some(state_key) = proto.state_key {
        object.insert("state_key".to_owned(), state_key.into());
    }
    object.insert("content".to_owned(), content.into());
    object.insert(
        "origin_server_ts".to_owned(),
        canonical_uint(proto.origin_server_ts, "origin_server_ts")?,
    );
    object.insert("depth".to_owned(), canonical_uint(proto.depth, "depth")?);
    object.insert("prev_events".to_owned(), id_array(&proto.prev_events));
    object.insert("auth_events".to_owned(), id_array(&proto.auth_events));

    hash_and_sign_event(origin.as_str(), key, &mut object, &rules.redaction)?;
    Pdu::from_canonical(&rules, object)
}

fn canonical_uint(value: u64, field: &str) -> Result<CanonicalJsonValue, PduError> {
    UInt::new(value)
        .map(CanonicalJsonValue::from)
        .ok_or_else(|| PduError::Invalid(format!("`{field}` is out of the canonical JSON range")))
}

fn id_array(ids: &[OwnedEventId]) -> CanonicalJsonValue {
    CanonicalJsonValue::Array(ids.iter().map(|id| id.to_string().into()).collect())
}

/// The `(type, state_key)` pairs whose current state events must be the `auth_events` of a new
/// event (spec "auth events selection", via `ruma::state_res::auth_types_for_event`).
///
/// `m.room.create` is included for v10/v11 and omitted for v12, where the room id implies it.
/// A create event itself has no auth events.
pub fn auth_types_for_event(
    room_version: &RoomVersionId,
    kind: &str,
    state_key: Option<&str>,
    sender: &UserId,
    content: &Value,
) -> Result<Vec<(StateEventType, String)>, PduError> {
    let rules = room_version_rules(room_version)?;
    let raw_content = serde_json::value::to_raw_value(content)?;
    ruma::state_res::auth_types_for_event(
        &TimelineEventType::from(kind),
        sender,
        state_key,
        &raw_content,
        &rules.authorization,
    )
    .map_err(PduError::Invalid)
}

/// Resolves [`auth_types_for_event`] against a state look-up returning the current event id for
/// a `(type, state_key)` pair; missing state is skipped. The result is what goes into
/// [`ProtoEvent::auth_events`].
pub fn select_auth_events(
    room_version: &RoomVersionId,
    kind: &str,
    state_key: Option<&str>,
    sender: &UserId,
    content: &Value,
    current_event_id: impl Fn(&StateEventType, &str) -> Option<OwnedEventId>,
) -> Result<Vec<OwnedEventId>, PduError> {
    Ok(
        auth_types_for_event(room_version, kind, state_key, sender, content)?
            .iter()
            .filter_map(|(event_type, key)| current_event_id(event_type, key))
            .collect(),
    )
}

/// The view of a [`Pdu`] handed to ruma-state-res (which wants raw JSON content and typed
/// event types).
#[derive(Clone, Debug)]
struct AuthEvent {
    event_id: OwnedEventId,
    /// `None` when the JSON has no `room_id` (a v12 `m.room.create`), as the auth rules expect.
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    event_type: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
}

impl AuthEvent {
    fn new(pdu: &Pdu) -> Result<Self, PduError> {
        Ok(Self {
            event_id: pdu.event_id.clone(),
            room_id: pdu
                .json
                .contains_key("room_id")
                .then(|| pdu.room_id.clone()),
            sender: pdu.sender.clone(),
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new_saturating(
                pdu.origin_server_ts,
            )),
            event_type: TimelineEventType::from(pdu.kind.as_str()),
            content: serde_json::value::to_raw_value(&pdu.content)?,
            state_key: pdu.state_key.clone(),
            prev_events: pdu.prev_events.clone(),
            auth_events: pdu.auth_events.clone(),
            redacts: pdu.redacts.clone(),
        })
    }

    /// For look-ups inside ruma's checks, which cannot report our errors: an unconvertible
    /// event (only possible for hand-made `Pdu`s) is logged and treated as absent.
    fn lookup(pdu: Option<impl Borrow<Pdu>>) -> Option<Self> {
        let pdu = pdu?;
        let pdu = pdu.borrow();
        match Self::new(pdu) {
            Ok(event) => Some(event),
            Err(error) => {
                tracing::warn!(event_id = %pdu.event_id, %error, "unusable auth event");
                None
            }
        }
    }
}

impl ruma::state_res::Event for AuthEvent {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.event_type
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        // Rejected events are never persisted as state, so they cannot be handed to us.
        false
    }
}

/// Full authorization check of `pdu` against a room state (`fetch_state` returns the state
/// event for a `(type, state_key)` pair).
///
/// Runs ruma's state-independent rules, requiring `pdu.auth_events` to be exactly the
/// `fetch_state` events of [`auth_types_for_event`] (plus, in v12, the create event must be
/// resolvable), and then the state-dependent rules: power levels, membership transitions, join
/// rules, v12 creators with infinite power, ... Use it for events this server builds, and for
/// received events with the state built from their own auth events. For the "state before the
/// event" and soft-fail checks, whose state need not match `auth_events`, use
/// [`check_auth_against_state`]; to check `auth_events` against arbitrary events, use
/// [`check_auth_events`]. State events returned by `fetch_state` must not be rejected events.
pub fn check_auth<P: Borrow<Pdu>>(
    room_version: &RoomVersionId,
    pdu: &Pdu,
    fetch_state: impl Fn(&StateEventType, &str) -> Option<P>,
) -> Result<(), PduError> {
    let rules = room_version_rules(room_version)?;
    let incoming = AuthEvent::new(pdu)?;

    let mut candidates: HashMap<OwnedEventId, AuthEvent> = HashMap::new();
    if pdu.kind != ROOM_CREATE {
        let mut wanted = auth_types_for_event(
            room_version,
            &pdu.kind,
            pdu.state_key.as_deref(),
            &pdu.sender,
            &pdu.content,
        )?;
        wanted.push((StateEventType::RoomCreate, String::new()));
        for (event_type, state_key) in &wanted {
            if let Some(event) = fetch_state(event_type, state_key) {
                let event = AuthEvent::new(event.borrow())?;
                candidates.insert(event.event_id.clone(), event);
            }
        }
    }
    check_state_independent_auth_rules(&rules.authorization, &incoming, |id: &EventId| {
        candidates.get(id)
    })
    .map_err(PduError::Auth)?;

    check_state_dependent_auth_rules(&rules.authorization, &incoming, |event_type, state_key| {
        AuthEvent::lookup(fetch_state(event_type, state_key))
    })
    .map_err(PduError::Auth)
}

/// Only the state-dependent authorization rules, against any state (the state before the event,
/// or the current state for soft-failure).
pub fn check_auth_against_state<P: Borrow<Pdu>>(
    room_version: &RoomVersionId,
    pdu: &Pdu,
    fetch_state: impl Fn(&StateEventType, &str) -> Option<P>,
) -> Result<(), PduError> {
    let rules = room_version_rules(room_version)?;
    let incoming = AuthEvent::new(pdu)?;
    check_state_dependent_auth_rules(&rules.authorization, &incoming, |event_type, state_key| {
        AuthEvent::lookup(fetch_state(event_type, state_key))
    })
    .map_err(PduError::Auth)
}

/// Only the state-independent authorization rules: the `m.room.create` rules for a create
/// event; otherwise the shape of `auth_events` (resolved by id with `fetch_event`: same room,
/// no duplicates, only selected types, create event present or, in v12, resolvable from the
/// room id).
pub fn check_auth_events(
    room_version: &RoomVersionId,
    pdu: &Pdu,
    fetch_event: impl Fn(&EventId) -> Option<Pdu>,
) -> Result<(), PduError> {
    let rules = room_version_rules(room_version)?;
    let incoming = AuthEvent::new(pdu)?;
    check_state_independent_auth_rules(&rules.authorization, &incoming, |id: &EventId| {
        AuthEvent::lookup(fetch_event(id))
    })
    .map_err(PduError::Auth)
}

/// Redacts an event content for the client-side view of a redacted event, using ruma's
/// redaction rules for the room version. Fails if `content` is not a canonical JSON object.
pub fn redact_content(
    room_version: &RoomVersionId,
    kind: &str,
    content: &Value,
) -> Result<Value, PduError> {
    let rules = room_version_rules(room_version)?;
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(content.clone())?
    else {
        return Err(PduError::Invalid(
            "`content` must be a JSON object".to_owned(),
        ));
    };
    redact_content_in_place(&mut object, &rules.redaction, kind);
    Ok(CanonicalJsonValue::Object(object).into())
}

/// The redacted federation JSON of `pdu`. With `redacted_because` (the redaction event), its
/// federation JSON is placed in `unsigned.redacted_because`.
pub fn redact_pdu_json(
    room_version: &RoomVersionId,
    pdu: &Pdu,
    redacted_because: Option<&Pdu>,
) -> Result<CanonicalJsonObject, PduError> {
    let rules = room_version_rules(room_version)?;
    let because = redacted_because.map(|event| RedactedBecause::from_json(event.json.clone()));
    Ok(redact(pdu.json.clone(), &rules.redaction, because)?)
}

/// Formats `pdu` as a Client-Server API `ClientEvent` (without `unsigned`, which the caller
/// adds). `redacts` is emitted at the top level for every room version (as clients still
/// expect), and additionally stays in `content` for v11+.
pub fn client_event(pdu: &Pdu) -> Value {
    let mut event = serde_json::Map::new();
    event.insert("content".to_owned(), pdu.content.clone());
    event.insert(
        "event_id".to_owned(),
        Value::String(pdu.event_id.to_string()),
    );
    event.insert(
        "origin_server_ts".to_owned(),
        Value::from(pdu.origin_server_ts),
    );
    event.insert("room_id".to_owned(), Value::String(pdu.room_id.to_string()));
    event.insert("sender".to_owned(), Value::String(pdu.sender.to_string()));
    event.insert("type".to_owned(), Value::String(pdu.kind.clone()));
    if let Some(state_key) = &pdu.state_key {
        event.insert("state_key".to_owned(), Value::String(state_key.clone()));
    }
    if let Some(redacts) = &pdu.redacts {
        event.insert("redacts".to_owned(), Value::String(redacts.to_string()));
    }
    Value::Object(event)
}

/// A user's power level: room version 12 creators are above every integer level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PowerLevel {
    /// An ordinary integer power level.
    Int(i64),
    /// A room creator in a room version that privileges creators (v12+).
    Infinite,
}

impl PowerLevel {
    /// Whether this level meets `required`.
    pub fn at_least(self, required: i64) -> bool {
        match self {
            Self::Infinite => true,
            Self::Int(level) => level >= required,
        }
    }
}

impl From<UserPowerLevel> for PowerLevel {
    fn from(level: UserPowerLevel) -> Self {
        match level {
            UserPowerLevel::Int(level) => Self::Int(i64::from(level)),
            // `UserPowerLevel` is non-exhaustive; anything but an integer is the creator level.
            _ => Self::Infinite,
        }
    }
}

/// The creators of the room described by `create` (the `m.room.create` event): `content.creator`
/// in v10, the sender in v11+, plus `content.additional_creators` in v12.
pub fn room_creators(
    room_version: &RoomVersionId,
    create: &Pdu,
) -> Result<Vec<OwnedUserId>, PduError> {
    let rules = room_version_rules(room_version)?;
    if create.kind != ROOM_CREATE {
        return Err(PduError::Invalid(format!(
            "{} is not an m.room.create event",
            create.event_id
        )));
    }
    let creators = RoomCreateEvent::new(AuthEvent::new(create)?)
        .creators(&rules.authorization)
        .map_err(PduError::Invalid)?;
    let mut creators: Vec<OwnedUserId> = creators.into_iter().collect();
    creators.sort();
    Ok(creators)
}

/// The effective power levels of a room as ruma's [`RoomPowerLevels`] (spec defaults when there
/// is no power-levels event, v12 creators privileged). Offers `for_user`, `user_can_invite`,
/// `user_can_redact_event_of_other`, `user_can_ban_user`, etc.
pub fn room_power_levels(
    room_version: &RoomVersionId,
    create: &Pdu,
    power_levels: Option<&Pdu>,
) -> Result<RoomPowerLevels, PduError> {
    let rules = room_version_rules(room_version)?;
    let creators = room_creators(room_version, create)?;
    let source = match power_levels {
        Some(event) => RoomPowerLevelsSource::Original(serde_json::from_value::<
            RoomPowerLevelsEventContent,
        >(event.content.clone())?),
        None => RoomPowerLevelsSource::None,
    };
    Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
}

/// The power level of `user` given the room's create event and current power-levels event.
pub fn user_power_level(
    room_version: &RoomVersionId,
    create: &Pdu,
    power_levels: Option<&Pdu>,
    user: &UserId,
) -> Result<PowerLevel, PduError> {
    Ok(room_power_levels(room_version, create, power_levels)?
        .for_user(user)
        .into())
}

/// The power level required to send an event of type `kind`: the `events` entry if present,
/// else `state_default` (state events) or `events_default`. Per the `m.room.power_levels`
/// definition, `state_default` is 50 when unspecified in an existing event but 0 when the room
/// has no power-levels event at all (`power_levels` = `None`).
pub fn required_power_level(
    power_levels: Option<&Value>,
    kind: &str,
    is_state: bool,
) -> Result<i64, PduError> {
    let Some(content) = power_levels else {
        return Ok(0);
    };
    let content: RoomPowerLevelsEventContent = serde_json::from_value(content.clone())?;
    let level: Int = match content.events.get(&TimelineEventType::from(kind)) {
        Some(level) => *level,
        None if is_state => content.state_default,
        None => content.events_default,
    };
    Ok(i64::from(level))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ruma::{
        owned_user_id,
        serde::Base64,
        signatures::{verify_event, PublicKeyMap, Verified},
    };
    use serde_json::json;

    use super::*;

    struct Server {
        name: OwnedServerName,
        key: Ed25519KeyPair,
    }

    impl Server {
        fn new(name: &str) -> Self {
            let der = Ed25519KeyPair::generate();
            let key = Ed25519KeyPair::from_der(&der, "1".to_owned()).expect("generated key");
            Self {
                name: name.try_into().expect("server name"),
                key,
            }
        }

        fn public_keys(&self) -> PublicKeyMap {
            let mut keys = BTreeMap::new();
            keys.insert(
                format!("ed25519:{}", self.key.version()),
                Base64::new(self.key.public_key().to_vec()),
            );
            let mut map = PublicKeyMap::new();
            map.insert(self.name.to_string(), keys);
            map
        }
    }

    /// A room driven through the module's public API, with an in-memory state map.
    struct TestRoom {
        version: RoomVersionId,
        servers: Vec<Server>,
        room_id: OwnedRoomId,
        state: HashMap<(StateEventType, String), Pdu>,
        timeline: Vec<Pdu>,
        ts: u64,
    }

    impl TestRoom {
        fn server(&self, user: &UserId) -> &Server {
            self.servers
                .iter()
                .find(|server| server.name == user.server_name())
                .expect("test user on a known server")
        }

        fn build(
            &self,
            sender: &UserId,
            kind: &str,
            state_key: Option<&str>,
            content: Value,
            redacts: Option<OwnedEventId>,
        ) -> Result<Pdu, PduError> {
            let auth_events =
                select_auth_events(&self.version, kind, state_key, sender, &content, |t, k| {
                    self.state
                        .get(&(t.clone(), k.to_owned()))
                        .map(|p| p.event_id.clone())
                })?;
            let last = self.timeline.last().expect("room has a create event");
            let server = self.server(sender);
            build_and_sign(
                &self.version,
                &server.name,
                &server.key,
                ProtoEvent {
                    room_id: Some(self.room_id.clone()),
                    sender: sender.to_owned(),
                    kind: kind.to_owned(),
                    state_key: state_key.map(ToOwned::to_owned),
                    content,
                    origin_server_ts: self.ts + self.timeline.len() as u64,
                    prev_events: vec![last.event_id.clone()],
                    auth_events,
                    depth: last.depth + 1,
                    redacts,
                },
            )
        }

        fn check(&self, pdu: &Pdu) -> Result<(), PduError> {
            check_auth(&self.version, pdu, |t, k| {
                self.state.get(&(t.clone(), k.to_owned())).cloned()
            })
        }

        fn apply(&mut self, pdu: Pdu) {
            if let Some(pair) = pdu.state_pair() {
                self.state.insert(pair, pdu.clone());
            }
            self.timeline.push(pdu);
        }

        /// Builds, authorises and (if allowed) appends an event.
        fn send_full(
            &mut self,
            sender: &UserId,
            kind: &str,
            state_key: Option<&str>,
            content: Value,
            redacts: Option<OwnedEventId>,
        ) -> Result<Pdu, PduError> {
            let pdu = self.build(sender, kind, state_key, content, redacts)?;
            // Every event we build must verify against its server's key.
            let rules = room_version_rules(&self.version)?;
            let verified = verify_event(&self.server(sender).public_keys(), &pdu.json, &rules)
                .expect("signature verifies");
            assert_eq!(verified, Verified::All);
            self.check(&pdu)?;
            self.apply(pdu.clone());
            Ok(pdu)
        }

        fn send(
            &mut self,
            sender: &UserId,
            kind: &str,
            state_key: Option<&str>,
            content: Value,
        ) -> Result<Pdu, PduError> {
            self.send_full(sender, kind, state_key, content, None)
        }

        fn join(&mut self, user: &UserId) -> Result<Pdu, PduError> {
            self.send(
                user,
                "m.room.member",
                Some(user.as_str()),
                json!({"membership": "join"}),
            )
        }

        fn create_event(&self) -> &Pdu {
            &self.timeline[0]
        }

        fn pl_event(&self) -> Option<&Pdu> {
            self.state
                .get(&(StateEventType::RoomPowerLevels, String::new()))
        }
    }

    fn alice() -> OwnedUserId {
        owned_user_id!("@alice:hs1.test")
    }
    fn bob() -> OwnedUserId {
        owned_user_id!("@bob:hs2.test")
    }
    fn carol() -> OwnedUserId {
        owned_user_id!("@carol:hs1.test")
    }

    fn create_proto(version: &RoomVersionId, extra: Value, ts: u64) -> ProtoEvent {
        let mut content = json!({"room_version": version.as_str()});
        if *version == RoomVersionId::V10 {
            content["creator"] = json!(alice());
        }
        if let (Some(content), Some(extra)) = (content.as_object_mut(), extra.as_object()) {
            content.extend(extra.clone());
        }
        let room_id = (*version != RoomVersionId::V12)
            .then(|| RoomId::parse("!genesis:hs1.test").expect("room id"));
        ProtoEvent {
            room_id,
            sender: alice(),
            kind: ROOM_CREATE.to_owned(),
            state_key: Some(String::new()),
            content,
            origin_server_ts: ts,
            prev_events: vec![],
            auth_events: vec![],
            depth: 1,
            redacts: None,
        }
    }

    /// Full genesis: create, creator join, power levels, public join rules, history visibility.
    fn genesis(version: RoomVersionId, create_extra: Value) -> TestRoom {
        let servers = vec![Server::new("hs1.test"), Server::new("hs2.test")];
        let ts = 1_700_000_000_000;
        let create = build_and_sign(
            &version,
            &servers[0].name,
            &servers[0].key,
            create_proto(&version, create_extra, ts),
        )
        .expect("create event builds");
        check_auth(&version, &create, |_, _| None::<Pdu>).expect("create event passes auth");

        let mut room = TestRoom {
            room_id: create.room_id.clone(),
            version: version.clone(),
            servers,
            state: HashMap::new(),
            timeline: vec![],
            ts,
        };
        room.apply(create);

        room.join(&alice()).expect("creator join");
        let users = if version == RoomVersionId::V12 {
            json!({})
        } else {
            json!({ alice().as_str(): 100 })
        };
        room.send(
            &alice(),
            "m.room.power_levels",
            Some(""),
            json!({"users": users, "users_default": 0, "state_default": 50, "events_default": 0}),
        )
        .expect("power levels");
        room.send(
            &alice(),
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "public"}),
        )
        .expect("join rules");
        room.send(
            &alice(),
            "m.room.history_visibility",
            Some(""),
            json!({"history_visibility": "shared"}),
        )
        .expect("history visibility");
        room
    }

    /// Asserts an authorization rejection whose reason mentions `needle`.
    fn assert_rejected<T: std::fmt::Debug>(result: Result<T, PduError>, needle: &str) {
        match result {
            Err(PduError::Auth(reason)) => {
                assert!(
                    reason.contains(needle),
                    "rejected for `{reason}`, expected `{needle}`"
                )
            }
            other => panic!("expected an auth rejection mentioning `{needle}`, got {other:?}"),
        }
    }

    fn all_versions() -> [RoomVersionId; 3] {
        [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12]
    }

    #[test]
    fn genesis_passes_auth_in_all_versions() {
        for version in all_versions() {
            let room = genesis(version.clone(), json!({}));
            assert_eq!(room.timeline.len(), 5, "{version}");
            let create = room.create_event();
            let has_create_in_auth = room.timeline[1..]
                .iter()
                .all(|e| e.auth_events.contains(&create.event_id));
            let none_has_create_in_auth = room.timeline[1..]
                .iter()
                .all(|e| !e.auth_events.contains(&create.event_id));
            if version == RoomVersionId::V12 {
                assert!(
                    none_has_create_in_auth,
                    "v12 must not list the create event"
                );
            } else {
                assert!(has_create_in_auth, "{version} must list the create event");
            }
            for event in &room.timeline {
                assert!(event.event_id.as_str().starts_with('$'));
                assert!(
                    !event.event_id.as_str().contains(['+', '/', '=']),
                    "url-safe base64"
                );
                assert_eq!(event.room_id, room.room_id);
                // Round-trip through the federation form.
                let parsed =
                    Pdu::from_federation_json(&version, event.json.clone()).expect("parses back");
                assert_eq!(&parsed, event);
                // And through storage.
                let stored = serde_json::to_string(event).expect("serialise");
                let loaded: Pdu = serde_json::from_str(&stored).expect("deserialise");
                assert_eq!(&loaded, event);
            }
            // The join rules event is authorised by power levels and the sender's membership,
            // plus the create event before v12.
            let join_rules = room
                .state
                .get(&(StateEventType::RoomJoinRules, String::new()))
                .expect("join rules");
            let expected = if version == RoomVersionId::V12 { 2 } else { 3 };
            assert_eq!(join_rules.auth_events.len(), expected, "{version}");
        }
    }

    #[test]
    fn v12_room_id_is_create_event_id() {
        let room = genesis(RoomVersionId::V12, json!({}));
        let create = room.create_event();
        assert!(!create.json.contains_key("room_id"));
        assert_eq!(
            create.room_id.as_str(),
            format!("!{}", create.event_id.as_str().trim_start_matches('$'))
        );
        // Other events carry the derived room id in their JSON.
        let join = &room.timeline[1];
        assert_eq!(
            join.json.get("room_id").and_then(|v| v.as_str()),
            Some(create.room_id.as_str())
        );
    }

    #[test]
    fn v12_create_with_room_id_and_non_create_without_room_id_are_rejected() {
        let server = Server::new("hs1.test");
        let mut proto = create_proto(&RoomVersionId::V12, json!({}), 1);
        proto.room_id = Some(RoomId::parse("!abc:hs1.test").expect("room id"));
        assert!(matches!(
            build_and_sign(&RoomVersionId::V12, &server.name, &server.key, proto),
            Err(PduError::Invalid(_))
        ));
        let proto = create_proto(&RoomVersionId::V11, json!({}), 1);
        let proto = ProtoEvent {
            room_id: None,
            ..proto
        };
        assert!(matches!(
            build_and_sign(&RoomVersionId::V11, &server.name, &server.key, proto),
            Err(PduError::Invalid(_))
        ));
    }

    #[test]
    fn unsupported_versions_and_foreign_senders_are_rejected() {
        let server = Server::new("hs1.test");
        for version in [RoomVersionId::V1, RoomVersionId::V6, RoomVersionId::V9] {
            let result = build_and_sign(
                &version,
                &server.name,
                &server.key,
                create_proto(&version, json!({}), 1),
            );
            assert!(
                matches!(result, Err(PduError::UnsupportedRoomVersion(_))),
                "{version}"
            );
        }
        let other = Server::new("hs2.test");
        let result = build_and_sign(
            &RoomVersionId::V11,
            &other.name,
            &other.key,
            create_proto(&RoomVersionId::V11, json!({}), 1),
        );
        assert!(matches!(result, Err(PduError::ForeignSender { .. })));
    }

    #[test]
    fn event_ids_are_stable_and_signatures_verify() {
        let server = Server::new("hs1.test");
        for version in all_versions() {
            let first = build_and_sign(
                &version,
                &server.name,
                &server.key,
                create_proto(&version, json!({}), 42),
            )
            .expect("builds");
            let second = build_and_sign(
                &version,
                &server.name,
                &server.key,
                create_proto(&version, json!({}), 42),
            )
            .expect("builds");
            assert_eq!(first.event_id, second.event_id, "{version}");
            assert_eq!(first.json, second.json, "{version}");
            let later = build_and_sign(
                &version,
                &server.name,
                &server.key,
                create_proto(&version, json!({}), 43),
            )
            .expect("builds");
            assert_ne!(first.event_id, later.event_id);

            let rules = room_version_rules(&version).expect("rules");
            assert_eq!(
                verify_event(&server.public_keys(), &first.json, &rules).expect("verifies"),
                Verified::All
            );
            // Another server's key does not verify it.
            let wrong = Server::new("hs1.test").public_keys();
            assert!(verify_event(&wrong, &first.json, &rules).is_err());

            // Tampering with the content breaks the content hash but not the signature of the
            // redacted form; tampering with a protected field breaks the signature.
            let mut tampered = first.json.clone();
            tampered.insert(
                "origin_server_ts".to_owned(),
                CanonicalJsonValue::from(UInt::from(7u32)),
            );
            assert!(verify_event(&server.public_keys(), &tampered, &rules).is_err());
        }
    }

    #[test]
    fn auth_types_follow_the_room_version() {
        let content = json!({"msgtype": "m.text", "body": "hi"});
        let v11 = auth_types_for_event(
            &RoomVersionId::V11,
            "m.room.message",
            None,
            &alice(),
            &content,
        )
        .expect("types");
        assert!(v11.contains(&(StateEventType::RoomCreate, String::new())));
        assert!(v11.contains(&(StateEventType::RoomPowerLevels, String::new())));
        assert!(v11.contains(&(StateEventType::RoomMember, alice().to_string())));
        let v12 = auth_types_for_event(
            &RoomVersionId::V12,
            "m.room.message",
            None,
            &alice(),
            &content,
        )
        .expect("types");
        assert!(!v12.contains(&(StateEventType::RoomCreate, String::new())));
        assert_eq!(v12.len(), 2);

        let join = json!({
            "membership": "join",
            "join_authorised_via_users_server": carol(),
        });
        let types = auth_types_for_event(
            &RoomVersionId::V10,
            "m.room.member",
            Some(bob().as_str()),
            &bob(),
            &join,
        )
        .expect("types");
        assert!(types.contains(&(StateEventType::RoomJoinRules, String::new())));
        assert!(types.contains(&(StateEventType::RoomMember, bob().to_string())));
        assert!(types.contains(&(StateEventType::RoomMember, carol().to_string())));

        let invite = json!({
            "membership": "invite",
            "third_party_invite": {"display_name": "b", "signed": {"token": "tok", "mxid": bob(), "signatures": {}}},
        });
        let types = auth_types_for_event(
            &RoomVersionId::V11,
            "m.room.member",
            Some(bob().as_str()),
            &alice(),
            &invite,
        )
        .expect("types");
        assert!(types.contains(&(StateEventType::RoomThirdPartyInvite, "tok".to_owned())));
        assert!(types.contains(&(StateEventType::RoomMember, bob().to_string())));

        assert!(auth_types_for_event(
            &RoomVersionId::V11,
            ROOM_CREATE,
            Some(""),
            &alice(),
            &json!({})
        )
        .expect("types")
        .is_empty());
    }

    #[test]
    fn membership_rules() {
        for version in all_versions() {
            // Public room: a remote user can join and then talk.
            let mut room = genesis(version.clone(), json!({}));
            room.join(&bob()).expect("public join");
            room.send(
                &bob(),
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": "hi"}),
            )
            .expect("member message");

            // A non-member cannot send messages.
            assert_rejected(
                room.send(
                    &carol(),
                    "m.room.message",
                    None,
                    json!({"msgtype": "m.text", "body": "x"}),
                ),
                "sender's membership is not `join`",
            );

            // A PL 0 member cannot change power levels.
            assert_rejected(
                room.send(
                    &bob(),
                    "m.room.power_levels",
                    Some(""),
                    json!({"users": {bob().as_str(): 100}}),
                ),
                "not have enough power to send event of type `m.room.power_levels`",
            );

            // Ban, then the banned user cannot rejoin.
            room.send(
                &alice(),
                "m.room.member",
                Some(bob().as_str()),
                json!({"membership": "ban"}),
            )
            .expect("ban");
            assert_rejected(room.join(&bob()), "banned user cannot join");

            // Invite-only room: joining without an invite fails, with one it passes.
            room.send(
                &alice(),
                "m.room.join_rules",
                Some(""),
                json!({"join_rule": "invite"}),
            )
            .expect("invite join rule");
            assert_rejected(room.join(&carol()), "not `public`");
            room.send(
                &alice(),
                "m.room.member",
                Some(carol().as_str()),
                json!({"membership": "invite"}),
            )
            .expect("invite");
            room.join(&carol()).expect("invited join");
        }
    }

    #[test]
    fn auth_events_must_match_state() {
        let room = genesis(RoomVersionId::V11, json!({}));
        let mut pdu = room
            .build(
                &alice(),
                "m.room.message",
                None,
                json!({"body": "x", "msgtype": "m.text"}),
                None,
            )
            .expect("builds");
        room.check(&pdu).expect("valid");
        // An event missing its create auth event is rejected (pre-v12)...
        let create_id = room.create_event().event_id.clone();
        let mut proto_auth = pdu.auth_events.clone();
        proto_auth.retain(|id| *id != create_id);
        pdu.auth_events = proto_auth;
        assert_rejected(room.check(&pdu), "no `m.room.create` event in auth events");
        // ... while the state-dependent half alone still passes.
        check_auth_against_state(&RoomVersionId::V11, &pdu, |t, k| {
            room.state.get(&(t.clone(), k.to_owned())).cloned()
        })
        .expect("state-dependent rules pass");
    }

    #[test]
    fn v12_creators_are_privileged() {
        let mut room = genesis(
            RoomVersionId::V12,
            json!({"additional_creators": [carol()]}),
        );
        let create = room.create_event().clone();
        assert_eq!(
            room_creators(&RoomVersionId::V12, &create).expect("creators"),
            vec![alice(), carol()]
        );
        assert_eq!(
            user_power_level(&RoomVersionId::V12, &create, room.pl_event(), &alice()).expect("pl"),
            PowerLevel::Infinite
        );
        assert_eq!(
            user_power_level(&RoomVersionId::V12, &create, room.pl_event(), &carol()).expect("pl"),
            PowerLevel::Infinite
        );
        assert_eq!(
            user_power_level(&RoomVersionId::V12, &create, room.pl_event(), &bob()).expect("pl"),
            PowerLevel::Int(0)
        );

        // The creator can change power levels (without being listed in them).
        room.send(
            &alice(),
            "m.room.power_levels",
            Some(""),
            json!({"users": {bob().as_str(): 75}, "state_default": 60}),
        )
        .expect("creator changes power levels");
        assert_eq!(
            user_power_level(&RoomVersionId::V12, &create, room.pl_event(), &bob()).expect("pl"),
            PowerLevel::Int(75)
        );

        // Listing a creator (primary or additional) in `users` is rejected.
        for creator in [alice(), carol()] {
            assert_rejected(
                room.send(
                    &alice(),
                    "m.room.power_levels",
                    Some(""),
                    json!({"users": {creator.as_str(): 100}}),
                ),
                "creator user IDs are not allowed in the `users` field",
            );
        }
    }

    #[test]
    fn power_level_helpers() {
        let room = genesis(RoomVersionId::V11, json!({}));
        let create = room.create_event();
        let pl = room.pl_event().expect("pl");
        assert_eq!(
            user_power_level(&RoomVersionId::V11, create, Some(pl), &alice()).expect("pl"),
            PowerLevel::Int(100)
        );
        assert_eq!(
            user_power_level(&RoomVersionId::V11, create, Some(pl), &bob()).expect("pl"),
            PowerLevel::Int(0)
        );
        // No power-levels event: the creator has 100 before v12.
        assert_eq!(
            user_power_level(&RoomVersionId::V11, create, None, &alice()).expect("pl"),
            PowerLevel::Int(100)
        );
        assert!(PowerLevel::Infinite > PowerLevel::Int(i64::MAX));
        assert!(PowerLevel::Int(50).at_least(50) && !PowerLevel::Int(49).at_least(50));

        let levels = room_power_levels(&RoomVersionId::V11, create, Some(pl)).expect("levels");
        assert!(levels.user_can_invite(&bob()));
        assert!(!levels.user_can_redact_event_of_other(&bob()));
        assert!(levels.user_can_redact_event_of_other(&alice()));

        let content = json!({"events": {"m.room.name": 10, "m.reaction": 5}, "events_default": 1});
        assert_eq!(
            required_power_level(Some(&content), "m.room.name", true).expect("pl"),
            10
        );
        assert_eq!(
            required_power_level(Some(&content), "m.room.topic", true).expect("pl"),
            50
        );
        assert_eq!(
            required_power_level(Some(&content), "m.reaction", false).expect("pl"),
            5
        );
        assert_eq!(
            required_power_level(Some(&content), "m.room.message", false).expect("pl"),
            1
        );
        assert_eq!(
            required_power_level(None, "m.room.topic", true).expect("pl"),
            0
        );
        assert_eq!(
            required_power_level(None, "m.room.message", false).expect("pl"),
            0
        );
        assert!(required_power_level(Some(&json!({"ban": "x"})), "m.room.topic", true).is_err());
    }

    #[test]
    fn redaction_keeps_only_allowed_keys() {
        let member = json!({"membership": "join", "displayname": "A", "avatar_url": "mxc://a/b",
            "join_authorised_via_users_server": alice()});
        assert_eq!(
            redact_content(&RoomVersionId::V11, "m.room.member", &member).expect("redacts"),
            json!({"membership": "join", "join_authorised_via_users_server": alice()})
        );
        let message = json!({"msgtype": "m.text", "body": "secret"});
        assert_eq!(
            redact_content(&RoomVersionId::V10, "m.room.message", &message).expect("redacts"),
            json!({})
        );
        let pl = json!({"ban": 50, "invite": 0, "notifications": {"room": 50}, "users": {}});
        assert_eq!(
            redact_content(&RoomVersionId::V10, "m.room.power_levels", &pl).expect("redacts"),
            json!({"ban": 50, "users": {}})
        );
        assert_eq!(
            redact_content(&RoomVersionId::V11, "m.room.power_levels", &pl).expect("redacts"),
            json!({"ban": 50, "invite": 0, "users": {}})
        );
        let create = json!({"creator": alice(), "room_version": "10", "m.federate": true});
        assert_eq!(
            redact_content(&RoomVersionId::V10, ROOM_CREATE, &create).expect("redacts"),
            json!({"creator": alice()})
        );
        assert_eq!(
            redact_content(&RoomVersionId::V11, ROOM_CREATE, &create).expect("redacts"),
            create
        );
        assert!(redact_content(&RoomVersionId::V11, "m.room.message", &json!([1])).is_err());
        assert!(redact_content(&RoomVersionId::V11, "m.room.message", &json!({"f": 1.5})).is_err());
    }

    #[test]
    fn redaction_events_and_redacted_pdus() {
        for version in all_versions() {
            let mut room = genesis(version.clone(), json!({}));
            let message = room
                .send(
                    &alice(),
                    "m.room.message",
                    None,
                    json!({"msgtype": "m.text", "body": "oops"}),
                )
                .expect("message");
            let redaction = room
                .send_full(
                    &alice(),
                    ROOM_REDACTION,
                    None,
                    json!({"reason": "typo"}),
                    Some(message.event_id.clone()),
                )
                .expect("redaction passes auth");
            assert_eq!(redaction.redacts.as_ref(), Some(&message.event_id));
            let content_redacts = redaction
                .content
                .get("redacts")
                .and_then(Value::as_str)
                .map(ToOwned::to_owned);
            let top_level = redaction
                .json
                .get("redacts")
                .and_then(|v| v.as_str())
                .map(ToOwned::to_owned);
            if version == RoomVersionId::V10 {
                assert_eq!(top_level.as_deref(), Some(message.event_id.as_str()));
                assert_eq!(content_redacts, None);
            } else {
                assert_eq!(content_redacts.as_deref(), Some(message.event_id.as_str()));
                assert_eq!(top_level, None);
            }
            let client = client_event(&redaction);
            assert_eq!(client["redacts"], json!(message.event_id));
            assert_eq!(client["type"], json!(ROOM_REDACTION));
            assert!(client.get("state_key").is_none());

            // The redacted PDU keeps its id and signatures.
            let redacted = message.redacted(&version).expect("redacts");
            assert_eq!(redacted.event_id, message.event_id);
            assert_eq!(redacted.content, json!({}));
            let rules = room_version_rules(&version).expect("rules");
            assert_eq!(
                verify_event(&room.servers[0].public_keys(), &redacted.json, &rules)
                    .expect("signatures still verify"),
                Verified::Signatures
            );
            let with_because =
                redact_pdu_json(&version, &message, Some(&redaction)).expect("redacts");
            let because = with_because
                .get("unsigned")
                .and_then(|u| u.as_object())
                .and_then(|u| u.get("redacted_because"));
            assert!(because.is_some());
        }
    }

    #[test]
    fn client_event_shape() {
        let room = genesis(RoomVersionId::V11, json!({}));
        let join = &room.timeline[1];
        let client = client_event(join);
        assert_eq!(
            client,
            json!({
                "content": {"membership": "join"},
                "event_id": join.event_id,
                "origin_server_ts": join.origin_server_ts,
                "room_id": room.room_id,
                "sender": alice(),
                "type": "m.room.member",
                "state_key": alice(),
            })
        );
    }

    #[test]
    fn federation_parsing_rejects_bad_input() {
        let room = genesis(RoomVersionId::V12, json!({}));
        let join = room.timeline[1].clone();
        let mut no_depth = join.json.clone();
        no_depth.remove("depth");
        assert!(matches!(
            Pdu::from_federation_json(&RoomVersionId::V12, no_depth),
            Err(PduError::Format(_))
        ));
        // v12 forbids the create event in auth_events.
        let mut with_create = join.json.clone();
        with_create.insert(
            "auth_events".to_owned(),
            id_array(&[room.create_event().event_id.clone()]),
        );
        assert!(Pdu::from_federation_json(&RoomVersionId::V12, with_create).is_err());
        // A v12 create event parsed as v11 has no room id.
        assert!(
            Pdu::from_federation_json(&RoomVersionId::V11, room.create_event().json.clone())
                .is_err()
        );
        let text = serde_json::to_string(&join.json).expect("serialises");
        assert_eq!(
            Pdu::from_federation_str(&RoomVersionId::V12, &text).expect("parses"),
            join
        );
        assert!(Pdu::from_federation_str(&RoomVersionId::V12, "{\"type\": 1.5}").is_err());
    }

    #[test]
    fn cosigning_keeps_event_id() {
        let room = genesis(RoomVersionId::V11, json!({}));
        let mut join = room.timeline[1].clone();
        let before = join.event_id.clone();
        join.add_signature(
            &RoomVersionId::V11,
            &room.servers[1].name,
            &room.servers[1].key,
        )
        .expect("signs");
        let reparsed =
            Pdu::from_federation_json(&RoomVersionId::V11, join.json.clone()).expect("parses");
        assert_eq!(reparsed.event_id, before);
        let rules = room_version_rules(&RoomVersionId::V11).expect("rules");
        let mut keys = room.servers[0].public_keys();
        keys.extend(room.servers[1].public_keys());
        assert_eq!(
            verify_event(&keys, &join.json, &rules).expect("verifies"),
            Verified::All
        );
    }
}
