//! The `presence` stream: users' presence (`online`, `unavailable`,
//! `offline`, a status message, when they were last active), written by
//! the presence writers (`roles/presence`), sharded by user, stored in
//! PostgreSQL (`storage/presence`, one row per user).
//!
//! A row is the user's whole presence plus the rooms they were joined to
//! when it was written. It wakes those rooms (and the user): a long-poll
//! listens on its user's joined rooms already, so whoever shares a room
//! with the user wakes, without a query per row to find who that is (the
//! writer reads the rooms once per change, in its transaction; a reader
//! catching up a gap reads them with the rows). `/sync` then asks the
//! notifier whether any of the syncing user's rooms changed on this stream
//! before it reads anything.

use std::sync::Arc;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use ruma::presence::PresenceState;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::registry::{ShardBy, Storage, StreamError, StreamRows, StreamSpec, TokenSlot};
use crate::roles::Mailboxes;
use crate::storage::presence;
use crate::storage::streams::StreamTable;
use crate::sync::presence::syncing::SyncingUsers;

/// The presence stream's name (and its writers' role and placement kind).
pub const PRESENCE_STREAM: &str = "presence";

pub const SPEC: StreamSpec = StreamSpec {
    name: PRESENCE_STREAM,
    shard_by: ShardBy::User,
    storage: Storage::Postgres(&StreamTable {
        table: "presence_stream",
        instance_column: "instance_name",
        id_column: "stream_id",
    }),
    sequence: "presence_stream_seq",
    token: Some(TokenSlot::Presence),
};

/// One user's presence, as its writer keeps it and a row carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatus {
    pub state: PresenceState,
    /// Milliseconds since the epoch; 0: never active.
    pub last_active_ts: i64,
    /// When the user's last `/sync` ended (or began, while syncing).
    pub last_user_sync_ts: i64,
    pub status_msg: Option<String>,
    pub currently_active: bool,
}

impl Default for PresenceStatus {
    /// Someone never seen: offline.
    fn default() -> PresenceStatus {
        PresenceStatus {
            state: PresenceState::Offline,
            last_active_ts: 0,
            last_user_sync_ts: 0,
            status_msg: None,
            currently_active: false,
        }
    }
}

impl PresenceStatus {
    /// The `m.presence` content (and `GET /presence/{userId}/status` body)
    /// at `now`: Synapse's `format_user_presence_state`, `last_active_ago`
    /// computed at read time, `currently_active` only when online.
    pub fn content(&self, now: i64) -> Value {
        let mut content = Map::new();
        content.insert("presence".into(), json!(self.state.as_str()));
        if self.last_active_ts > 0 {
            content.insert(
                "last_active_ago".into(),
                json!(now.saturating_sub(self.last_active_ts).max(0)),
            );
        }
        if let Some(status_msg) = self.status_msg.as_deref().filter(|msg| !msg.is_empty()) {
            content.insert("status_msg".into(), json!(status_msg));
        }
        if self.state == PresenceState::Online {
            content.insert("currently_active".into(), json!(self.currently_active));
        }
        Value::Object(content)
    }
}

/// A presence stream row: the user, their presence, the rooms it wakes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRow {
    pub user_id: String,
    #[serde(flatten)]
    pub status: PresenceStatus,
    #[serde(default)]
    pub rooms: Vec<String>,
}

impl PresenceRow {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The presence stream on one instance. It also holds the instance's
/// [`SyncingUsers`], the users syncing here, which it reports to their
/// presence writers.
pub struct PresenceRows {
    pool: Pool,
    syncing: Arc<SyncingUsers>,
}

impl PresenceRows {
    pub fn new(pool: Pool, mailboxes: Arc<Mailboxes>) -> PresenceRows {
        PresenceRows {
            pool,
            syncing: SyncingUsers::new(mailboxes),
        }
    }

    /// The users syncing on this instance.
    pub fn syncing(&self) -> &Arc<SyncingUsers> {
        &self.syncing
    }
}

impl StreamRows for PresenceRows {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// The user's rooms (who shares one listens there) and the user.
    fn keys(&self, row: &Value) -> Vec<String> {
        let Ok(row) = serde_json::from_value::<PresenceRow>(row.clone()) else {
            return Vec::new();
        };
        let mut keys = row.rooms;
        keys.push(row.user_id);
        keys
    }

    fn read_rows<'a>(
        &'a self,
        writer: &'a str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
        Box::pin(async move {
            let written = presence::written_by(&self.pool, writer, after, upto).await?;
            Ok(written
                .into_iter()
                .map(|(stored, rooms)| {
                    let row = PresenceRow {
                        user_id: stored.user_id,
                        status: stored.status,
                        rooms,
                    };
                    (stored.stream_id, row.to_value())
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_synapses_format() {
        let online = PresenceStatus {
            state: PresenceState::Online,
            last_active_ts: 1_000,
            last_user_sync_ts: 1_000,
            status_msg: Some("here".into()),
            currently_active: true,
        };
        assert_eq!(
            online.content(1_500),
            json!({ "presence": "online", "last_active_ago": 500, "status_msg": "here", "currently_active": true })
        );
        // Never active, offline: just the state.
        assert_eq!(
            PresenceStatus::default().content(9),
            json!({ "presence": "offline" })
        );
    }

    #[test]
    fn a_row_wakes_its_users_rooms_and_the_user() {
        let pool = crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1)
            .expect("a pool is made without connecting");
        let placement = lattice_actors::Placement::single_process("main");
        let rows = PresenceRows::new(pool, Arc::new(Mailboxes::new(placement, None, Vec::new())));
        let row = PresenceRow {
            user_id: "@a:x".into(),
            status: PresenceStatus::default(),
            rooms: vec!["!r:x".into(), "!s:x".into()],
        };
        let value = row.to_value();
        assert_eq!(value["user_id"], "@a:x");
        assert_eq!(value["state"], "offline");
        assert_eq!(rows.keys(&value), vec!["!r:x", "!s:x", "@a:x"]);
        assert_eq!(
            serde_json::from_value::<PresenceRow>(value).expect("round trip"),
            row
        );
    }
}
