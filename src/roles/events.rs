//! The `events` role: the writer of the events stream. Room events are built,
//! signed, authorised and persisted by the [`EventPersister`]: it owns the head
//! of every room it writes (the latest event, depth and state), so events of
//! one room are strictly ordered without locks. Events will be sharded by room
//! over several persisters; the messages below are what crosses the mailbox.

mod authorization;
mod heads;
mod persister;
mod rows;

use serde::{Deserialize, Serialize};

pub use crate::streams::events::EVENTS_STREAM;
pub use persister::{parse_stored_pdu, EventPersister};

use super::{ActorStart, StartedActor};

/// Deliveries of the persister's mailbox endpoint handled at once: enough to
/// fill its batches (100 sends a transaction).
const REMOTE_PERSISTER_CONCURRENCY: usize = 256;

/// Starts this instance's event persister (a row of the role table).
pub fn start(start: &ActorStart) -> Result<StartedActor, String> {
    let writer = start
        .streams
        .writer(EVENTS_STREAM)
        .cloned()
        .ok_or("the events stream has no writer here")?;
    let pool = start.pool.clone();
    let instance = start.instance.clone();
    let server_name = start.server_name.clone();
    let signing_key = start.signing_key.clone();
    let writers = start.mailboxes.instances(EVENTS_STREAM);
    let recent_events = start.recent_events.clone();
    let cached_rooms = start.config.event_writer_cached_rooms;
    let addr = start
        .supervisor
        .start("event_persister", move || {
            EventPersister::new(
                pool.clone(),
                instance.clone(),
                server_name.clone(),
                signing_key.key_pair(),
                writer.clone(),
                writers.clone(),
                recent_events.clone(),
                cached_rooms,
            )
        })
        .map_err(|e| e.to_string())?;
    start.mailboxes.register(addr.mailbox::<SendEvent>());
    start.mailboxes.register(addr.mailbox::<CreateRoom>());
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<SendEvent>())
                .route_mailbox(addr.mailbox::<CreateRoom>())
                // Many deliveries in flight, so that the persister's inbox fills and
                // it commits them in batches as it does for local callers; one at a
                // time, every remote send paid a transaction of its own.
                .concurrency(REMOTE_PERSISTER_CONCURRENCY)
        }),
    })
}

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
    /// What makes the send idempotent: the client's transaction id, or a
    /// request id made where the request entered the server.
    pub txn: Option<Transaction>,
}

/// What makes a write idempotent, so that a client's retry, or a mailbox
/// message delivered twice, writes once and is answered from storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transaction {
    /// The client's device (empty for [`TxnEndpoint::Request`]).
    pub device_id: String,
    pub txn_id: String,
    /// Transaction ids are scoped per device and endpoint (and room, for
    /// the endpoints under `/rooms/{roomId}`), as the spec says.
    #[serde(default)]
    pub endpoint: TxnEndpoint,
}

impl Transaction {
    /// A client's transaction id given to `endpoint`.
    pub fn client(device_id: String, txn_id: String, endpoint: TxnEndpoint) -> Transaction {
        Transaction {
            device_id,
            txn_id,
            endpoint,
        }
    }

    /// A request id for a request without a client transaction id (state
    /// events, membership, createRoom), made once where it entered the
    /// server, so that a redelivered mailbox message writes once.
    pub fn request() -> Transaction {
        Transaction {
            device_id: String::new(),
            txn_id: crate::util::random_string(24),
            endpoint: TxnEndpoint::Request,
        }
    }

    /// Whether the client gave this id (then `/sync` shows it to the
    /// sending device as `unsigned.transaction_id`).
    pub fn is_client(&self) -> bool {
        self.endpoint != TxnEndpoint::Request
    }
}

/// The endpoint a transaction id was given to: part of its scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnEndpoint {
    /// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
    #[default]
    Send,
    /// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`.
    Redact,
    /// No client transaction id: a request id made by the server.
    Request,
}

impl TxnEndpoint {
    /// The name stored in `event_txn_ids.endpoint`.
    pub fn as_str(self) -> &'static str {
        match self {
            TxnEndpoint::Send => "send",
            TxnEndpoint::Redact => "redact",
            TxnEndpoint::Request => "request",
        }
    }
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
    /// Made where the request entered the server, so that a redelivered
    /// message answers the room it created instead of creating another
    /// (empty: not idempotent, as from an older sender).
    #[serde(default)]
    pub request_id: String,
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
