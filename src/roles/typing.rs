//! The `typing` role: the writers of the typing stream (`streams/typing`).
//! Each instance listed in `stream_writers.typing` and running the role
//! hosts a [`TypingWriter`] for the rooms sharded to it; requests reach it
//! through its mailbox from the `client` instance that served
//! `PUT /rooms/{roomId}/typing/{userId}` (`api/client/typing.rs`), and
//! readers that missed rows ask it for them. The messages below are what
//! crosses the mailbox.
//!
//! - [`rooms`]: who types where and until when, as plain data.
//! - [`timer`]: the clock, and the task that wakes the writer at the next
//!   expiry, so typing ends without a request.
//! - [`writer`]: the actor.

mod rooms;
mod timer;
mod writer;

use std::sync::Arc;

use lattice_actors::RemoteMessage;
use ruma::{OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::streams::typing::TYPING_STREAM;
use crate::streams::typing::{TypingRow, TypingRows};
pub use writer::TypingWriter;

use super::{ActorStart, StartedActor, WriteError};

/// Starts this instance's typing writer and its expiry timer (a row of the
/// role table).
pub fn start(start: &ActorStart) -> Result<StartedActor, String> {
    let writer = start
        .streams
        .writer(TYPING_STREAM)
        .cloned()
        .ok_or("the typing stream has no writer here")?;
    let replica = start
        .streams
        .rows::<TypingRows>(TYPING_STREAM)
        .ok_or("the typing stream is not registered")?
        .replica()
        .clone();
    let pool = start.pool.clone();
    let shards = start
        .mailboxes
        .shard_map(TYPING_STREAM)
        .cloned()
        .ok_or("the typing stream has no shard map")?;
    let clock = timer::Clock::start();
    let (next_deadline, deadlines) = watch::channel(None);
    let next_deadline = Arc::new(next_deadline);
    let addr = start
        .supervisor
        .start("typing_writer", move || {
            TypingWriter::new(
                pool.clone(),
                writer.clone(),
                replica.clone(),
                shards.clone(),
                clock,
                next_deadline.clone(),
            )
        })
        .map_err(|e| e.to_string())?;
    start.mailboxes.register(addr.mailbox::<SetTyping>());
    start.mailboxes.register(addr.mailbox::<GetTypingRows>());
    let expire = addr.mailbox::<ExpireTyping>();
    tokio::spawn(timer::run(clock, deadlines, move || {
        expire.tell(ExpireTyping).is_ok()
    }));
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<SetTyping>())
                .route_mailbox(addr.mailbox::<GetTypingRows>())
        }),
    })
}

/// `user_id` starts (for `timeout_ms`) or stops typing in `room_id`. The
/// caller has checked that they may; `timeout_ms` is already capped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetTyping {
    pub room_id: OwnedRoomId,
    pub user_id: OwnedUserId,
    pub typing: bool,
    pub timeout_ms: u64,
}

/// What a [`SetTyping`] wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TypingWritten {
    /// The writer, whose position the caller waits for (read-your-writes).
    pub instance: String,
    /// The position of the row written; none when nothing changed (typing
    /// again, or stopping when not typing).
    pub position: Option<i64>,
}

impl RemoteMessage for SetTyping {
    /// Refused only when its position could not be allocated.
    type Reply = Result<TypingWritten, WriteError>;
    const WIRE_NAME: &'static str = "typing.set.v1";
}

/// The catch-up of a reader that missed rows: the latest row of each room
/// written with `after < position <= upto`, in order of position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetTypingRows {
    pub after: i64,
    pub upto: i64,
}

impl RemoteMessage for GetTypingRows {
    type Reply = Vec<(i64, TypingRow)>;
    const WIRE_NAME: &'static str = "typing.rows.v1";
}

/// From the expiry timer: end the typing whose time has come. Local only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpireTyping;

impl RemoteMessage for ExpireTyping {
    type Reply = ();
    const WIRE_NAME: &'static str = "typing.expire.v1";
}
