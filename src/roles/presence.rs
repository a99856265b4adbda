//! The `presence` role: the writers of the presence stream
//! (`streams/presence`). Each instance listed in `stream_writers.presence`
//! and running the role hosts a [`PresenceWriter`] for the users sharded
//! to it (Synapse allows one presence writer; Lattice any number). It
//! keeps its users' presence, runs their timers, and writes each change
//! worth telling as a stream row. Requests reach it through its mailbox:
//! `PUT /presence/{userId}/status` from a `client` instance, and what the
//! `sync` instances say of who syncs there ([`UserSyncs`], sent when a user
//! starts or stops syncing, not per request).
//!
//! - [`state`]: the state machine and its timers, as plain data.
//! - [`writer`]: the actor, its clock and the tick that runs the timers.

pub mod state;
mod writer;

use lattice_actors::RemoteMessage;
use ruma::presence::PresenceState;
use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};

pub use crate::streams::presence::PRESENCE_STREAM;
pub use state::{
    EXTERNAL_PROCESS_EXPIRY_MS, IDLE_TIMER_MS, LAST_ACTIVE_GRANULARITY_MS, SYNC_ONLINE_TIMEOUT_MS,
};
pub use writer::{Clock, PresenceWriter, TICK};

use super::{ActorStart, StartedActor, WriteError};

/// Starts this instance's presence writer and the tick that runs its
/// timers (a row of the role table).
pub fn start(start: &ActorStart) -> Result<StartedActor, String> {
    let writer = start
        .streams
        .writer(PRESENCE_STREAM)
        .cloned()
        .ok_or("the presence stream has no writer here")?;
    let pool = start.pool.clone();
    let mailboxes = start.mailboxes.clone();
    let clock = Clock::start();
    let addr = start
        .supervisor
        .start("presence_writer", move || {
            PresenceWriter::new(pool.clone(), writer.clone(), mailboxes.clone(), clock)
        })
        .map_err(|e| e.to_string())?;
    start.mailboxes.register(addr.mailbox::<SetPresence>());
    start.mailboxes.register(addr.mailbox::<UserSyncs>());
    tokio::spawn(writer::tick(addr.mailbox::<CheckTimers>()));
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<SetPresence>())
                .route_mailbox(addr.mailbox::<UserSyncs>())
        }),
    })
}

/// `user_id` sets their presence (the caller checked it is theirs and
/// that `presence` is one of the spec's three).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetPresence {
    pub user_id: OwnedUserId,
    pub presence: PresenceState,
    pub status_msg: Option<String>,
}

/// What a [`SetPresence`] wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceWritten {
    /// The writer, whose position the caller waits for (read-your-writes).
    pub instance: String,
    /// The position of the row written; none when nothing changed.
    pub position: Option<i64>,
}

impl RemoteMessage for SetPresence {
    type Reply = Result<PresenceWritten, WriteError>;
    const WIRE_NAME: &'static str = "presence.set.v1";
}

/// What the `sync` instance `instance` says of its users syncing: Synapse's
/// `USER_SYNC`, batched. `started` users began syncing (with the presence
/// their `/sync` asks for), `stopped` ones stopped (when, in ms); every
/// [`UPDATE_SYNCING_USERS_MS`](crate::sync::presence::syncing::UPDATE_SYNCING_USERS_MS)
/// `syncing` lists all of them, so a restarted writer learns them again
/// and one that was missed is corrected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserSyncs {
    pub instance: String,
    pub started: Vec<(OwnedUserId, PresenceState)>,
    pub stopped: Vec<(OwnedUserId, i64)>,
    pub syncing: Option<Vec<(OwnedUserId, PresenceState)>>,
    /// Users who did something here (sent an event, a receipt): Synapse's
    /// `bump_presence_active_time`.
    #[serde(default)]
    pub active: Vec<OwnedUserId>,
}

impl RemoteMessage for UserSyncs {
    type Reply = ();
    const WIRE_NAME: &'static str = "presence.user_syncs.v1";
}

/// From the tick: apply the timers that are due. Local only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckTimers;

impl RemoteMessage for CheckTimers {
    type Reply = ();
    const WIRE_NAME: &'static str = "presence.check_timers.v1";
}
