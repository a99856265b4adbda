//! The `receipts` role: the writers of the receipts stream, one per instance
//! with the role, each writing the rooms whose shards it holds
//! (`crate::shards`) (unlike Synapse, whose
//! receipts have several writers too but whose typing has one). A
//! [`ReceiptsWriter`] commits the receipts queued in its inbox in one
//! transaction and never moves a user's receipt back to an earlier event.
//! The messages below are what crosses its mailbox.

mod writer;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

pub use crate::streams::receipts::RECEIPTS_STREAM;
pub use writer::ReceiptsWriter;

use super::WriteError;
use super::{ActorStart, StartedActor};

/// Deliveries of the writer's mailbox endpoint handled at once, so that
/// remote receipts queue up and are committed together as local ones are.
const REMOTE_WRITER_CONCURRENCY: usize = 64;

/// Starts this instance's receipts writer (a row of the role table).
pub fn start(start: &ActorStart) -> Result<StartedActor, String> {
    let writer = start
        .streams
        .writer(RECEIPTS_STREAM)
        .cloned()
        .ok_or("the receipts stream has no writer here")?;
    let pool = start.pool.clone();
    let shards = start
        .mailboxes
        .shard_map(RECEIPTS_STREAM)
        .cloned()
        .ok_or("the receipts stream has no shard map")?;
    let addr = start
        .supervisor
        .start("receipts_writer", move || {
            ReceiptsWriter::new(pool.clone(), writer.clone(), shards.clone())
        })
        .map_err(|e| e.to_string())?;
    start.mailboxes.register(addr.mailbox::<PutReceipt>());
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<PutReceipt>())
                .concurrency(REMOTE_WRITER_CONCURRENCY)
        }),
    })
}

/// The receipt types a client sets with a receipt (`m.fully_read` is a
/// read marker: room account data, `roles/account_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReceiptType {
    #[serde(rename = "m.read")]
    Read,
    #[serde(rename = "m.read.private")]
    ReadPrivate,
}

impl ReceiptType {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptType::Read => "m.read",
            ReceiptType::ReadPrivate => crate::streams::receipts::READ_PRIVATE,
        }
    }
}

/// Set `user_id`'s receipt of `receipt_type` in `room_id` (and thread) to
/// `event_id`, unless it already points to that event or a later one.
/// Delivered twice, it writes once: the second finds its event receipted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutReceipt {
    pub room_id: OwnedRoomId,
    pub user_id: OwnedUserId,
    pub receipt_type: ReceiptType,
    /// None: unthreaded; `main` or a thread root's event id (checked where
    /// the request entered the server).
    pub thread_id: Option<String>,
    pub event_id: OwnedEventId,
    /// When the server received the receipt (ms since the epoch): set where
    /// the request entered, so a redelivered message carries the same.
    pub ts: i64,
}

/// What a receipt changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptWritten {
    /// The writer that stored it.
    pub instance: String,
    /// Its position in the receipts stream (what the caller waits to see,
    /// read-your-writes); None when nothing changed (the stored receipt
    /// was for the same or a later event).
    pub position: Option<i64>,
}

impl lattice_actors::RemoteMessage for PutReceipt {
    type Reply = Result<ReceiptWritten, WriteError>;
    const WIRE_NAME: &'static str = "receipts.put.v1";
}
