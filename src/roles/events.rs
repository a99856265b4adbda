//! The `events` role: the writer of the events stream. Room events are built,
//! signed, authorised and persisted by the [`EventPersister`]: it owns the head
//! of every room it writes (the latest event, depth and state), so events of
//! one room are strictly ordered without locks. Events will be sharded by room
//! over several persisters; the messages below are what crosses the mailbox.

mod authorization;
mod heads;
mod persister;
mod rows;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId};
use serde::{Deserialize, Serialize};

pub use crate::streams::events::EVENTS_STREAM;
pub use persister::{parse_stored_pdu, EventPersister};

use super::{ActorStart, StartedActor, WriteError};

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
    let server_name = start.server_name.clone();
    let signing_key = start.signing_key.clone();
    let recent_events = start.recent_events.clone();
    let recent_push = start.recent_push.clone();
    let cached_rooms = start.config.event_writer_cached_rooms;
    let shards = start
        .mailboxes
        .shard_map(EVENTS_STREAM)
        .cloned()
        .ok_or("the events stream's shards have no map")?;
    let addr = start
        .supervisor
        .start("event_persister", move || {
            EventPersister::new(
                pool.clone(),
                server_name.clone(),
                signing_key.key_pair(),
                writer.clone(),
                recent_events.clone(),
                recent_push.clone(),
                cached_rooms,
                shards.clone(),
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

/// Build, authorise and persist one event in an existing room. Ids are
/// ruma's types, parsed where the request entered the server; on the wire
/// they are the same JSON strings as before.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendEvent {
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub kind: String,
    pub state_key: Option<String>,
    pub content: serde_json::Value,
    /// For `m.room.redaction`.
    pub redacts: Option<OwnedEventId>,
    /// What makes the send idempotent: the client's transaction id, or a
    /// request id made where the request entered the server.
    pub txn: Option<Transaction>,
    /// What the event does for the members it notifies, evaluated where
    /// the send entered the server (`push::evaluator`); stored with it.
    #[serde(default)]
    pub push: Option<crate::push::evaluator::PushActions>,
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
    /// Any version a client names: the persister refuses the ones this
    /// server does not support.
    pub room_version: RoomVersionId,
    pub creator: OwnedUserId,
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
    pub sender: OwnedUserId,
    pub kind: String,
    pub state_key: Option<String>,
    pub content: serde_json::Value,
}

/// Where an event landed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Persisted {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    /// The writer that persisted it (its position is what to wait for).
    pub instance: String,
    /// The position of the event in the events stream; the caller waits until
    /// its view of the stream reaches it before answering (read-your-writes).
    pub stream_ordering: i64,
}

// v2: the reply's error is the `WriteError` enum, no longer an errcode string.
// v3: the push actions travel with the send.
impl lattice_actors::RemoteMessage for SendEvent {
    type Reply = Result<Persisted, WriteError>;
    const WIRE_NAME: &'static str = "events.send.v3";
}

impl lattice_actors::RemoteMessage for CreateRoom {
    type Reply = Result<Persisted, WriteError>;
    const WIRE_NAME: &'static str = "events.create_room.v2";
}

#[cfg(test)]
mod tests {
    use ruma::{owned_event_id, owned_room_id, owned_user_id};
    use serde_json::json;

    use super::*;

    #[test]
    fn ids_cross_the_mailbox_as_the_strings_they_were() {
        let send = SendEvent {
            room_id: owned_room_id!("!room:example.org"),
            sender: owned_user_id!("@alice:example.org"),
            kind: "m.room.redaction".into(),
            state_key: None,
            content: json!({}),
            redacts: Some(owned_event_id!("$target")),
            txn: None,
            push: None,
        };
        let wire = serde_json::to_value(&send).expect("encodes");
        assert_eq!(wire["room_id"], "!room:example.org");
        assert_eq!(wire["sender"], "@alice:example.org");
        assert_eq!(wire["redacts"], "$target");
        let read: SendEvent = serde_json::from_value(wire).expect("decodes");
        assert_eq!(read.room_id, send.room_id);
        assert_eq!(read.sender, send.sender);
        assert_eq!(read.redacts, send.redacts);

        let create = CreateRoom {
            room_version: RoomVersionId::V12,
            creator: owned_user_id!("@alice:example.org"),
            create_content: serde_json::Map::new(),
            initial_events: vec![InitialEvent {
                sender: owned_user_id!("@alice:example.org"),
                kind: "m.room.member".into(),
                state_key: Some("@alice:example.org".into()),
                content: json!({ "membership": "join" }),
            }],
            is_public: false,
            request_id: "r".into(),
        };
        let wire = serde_json::to_value(&create).expect("encodes");
        assert_eq!(wire["room_version"], "12");
        assert_eq!(wire["creator"], "@alice:example.org");
        assert_eq!(wire["initial_events"][0]["sender"], "@alice:example.org");
        let read: CreateRoom = serde_json::from_value(wire).expect("decodes");
        assert_eq!(read.room_version, RoomVersionId::V12);
        assert_eq!(
            read.initial_events[0].sender,
            create.initial_events[0].sender
        );

        // A version this server does not support still decodes: the
        // persister answers M_UNSUPPORTED_ROOM_VERSION, not a decode error.
        let mut wire = serde_json::to_value(&create).expect("encodes");
        wire["room_version"] = json!("future-version");
        let read: CreateRoom = serde_json::from_value(wire).expect("decodes");
        assert_eq!(read.room_version.as_str(), "future-version");
    }

    #[test]
    fn a_malformed_id_does_not_decode() {
        let wire = json!({
            "room_id": "no sigil",
            "sender": "@alice:example.org",
            "kind": "m.room.message",
            "state_key": null,
            "content": {},
            "redacts": null,
            "txn": null,
        });
        assert!(serde_json::from_value::<SendEvent>(wire).is_err());
    }

    #[test]
    fn a_writers_answer_crosses_the_mailbox() {
        type Reply = <SendEvent as lattice_actors::RemoteMessage>::Reply;
        let persisted: Reply = Ok(Persisted {
            event_id: owned_event_id!("$event"),
            room_id: owned_room_id!("!room:example.org"),
            instance: "events1".into(),
            stream_ordering: 42,
        });
        let wire = serde_json::to_value(&persisted).expect("encodes");
        assert_eq!(wire["Ok"]["event_id"], "$event");
        assert_eq!(wire["Ok"]["room_id"], "!room:example.org");
        let read: Reply = serde_json::from_value(wire).expect("decodes");
        let read = read.expect("persisted");
        assert_eq!(read.event_id, owned_event_id!("$event"));
        assert_eq!(read.stream_ordering, 42);

        for error in [
            WriteError::Forbidden("no power".into()),
            WriteError::NotFound("unknown room".into()),
            WriteError::BadJson("not an object".into()),
            WriteError::InvalidParam("NUL".into()),
            WriteError::UnsupportedRoomVersion("99".into()),
            WriteError::TooLarge,
            WriteError::Storage("connection reset".into()),
            WriteError::Internal("no answer".into()),
        ] {
            let refused: Reply = Err(error.clone());
            let wire = serde_json::to_string(&refused).expect("encodes");
            let read: Reply = serde_json::from_str(&wire).expect("decodes");
            assert_eq!(read.expect_err("refused"), error, "{wire}");
        }
    }
}
