//! The `events` role: the writer of the events stream. Room events are built,
//! signed, authorised and persisted by the [`EventPersister`]: it owns the head
//! of every room it writes (the latest event, depth and state), so events of
//! one room are strictly ordered without locks. Events will be sharded by room
//! over several persisters; the messages below are what crosses the mailbox.

mod authorization;
mod persister;

use serde::{Deserialize, Serialize};

pub use persister::{
    event_row, parse_stored_pdu, stored_event_of_row, EventPersister, EVENTS_STREAM,
};

use crate::error::{ApiError, ErrCode};

/// Build, authorise and persist one event in an existing room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendEvent {
    pub room_id: String,
    pub sender: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub content: serde_json::Value,
    /// For `m.room.redaction`.
    pub redacts: Option<String>,
    /// The sender's device and transaction id, making the send idempotent.
    pub txn: Option<Transaction>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transaction {
    pub device_id: String,
    pub txn_id: String,
}

/// Create a room: its create event and initial state, in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRoom {
    pub room_version: String,
    pub creator: String,
    /// Content of the `m.room.create` event (without `creator` and
    /// `room_version`, which the persister sets as the version requires).
    pub create_content: serde_json::Map<String, serde_json::Value>,
    /// The events after the create event, in order.
    pub initial_events: Vec<InitialEvent>,
    pub is_public: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitialEvent {
    pub sender: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub content: serde_json::Value,
}

/// Where an event landed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Persisted {
    pub event_id: String,
    pub room_id: String,
    /// The writer that persisted it (its position is what to wait for).
    pub instance: String,
    /// The position of the event in the events stream; the caller waits until
    /// its view of the stream reaches it before answering (read-your-writes).
    pub stream_ordering: i64,
}

/// Why a write was refused: a Matrix error the client should see.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{errcode}: {message}")]
pub struct WriteError {
    pub errcode: String,
    pub message: String,
}

impl WriteError {
    pub fn new(errcode: ErrCode, message: impl Into<String>) -> WriteError {
        WriteError {
            errcode: errcode.as_str().to_owned(),
            message: message.into(),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        let errcode = match error.errcode.as_str() {
            "M_FORBIDDEN" => ErrCode::Forbidden,
            "M_NOT_FOUND" => ErrCode::NotFound,
            "M_BAD_JSON" => ErrCode::BadJson,
            "M_INVALID_PARAM" => ErrCode::InvalidParam,
            "M_UNSUPPORTED_ROOM_VERSION" => ErrCode::UnsupportedRoomVersion,
            "M_TOO_LARGE" => ErrCode::TooLarge,
            "M_LIMIT_EXCEEDED" => ErrCode::LimitExceeded,
            _ => return ApiError::internal(error),
        };
        ApiError::new(errcode, error.message)
    }
}

impl lattice_actors::RemoteMessage for SendEvent {
    type Reply = Result<Persisted, WriteError>;
    const WIRE_NAME: &'static str = "events.send.v1";
}

impl lattice_actors::RemoteMessage for CreateRoom {
    type Reply = Result<Persisted, WriteError>;
    const WIRE_NAME: &'static str = "events.create_room.v1";
}
