//! The `typing` stream: who is typing in each room. Its rows live only in the
//! memory of its writers (`roles/typing`), which are sharded by room, so a
//! room's rows always come from one writer; their positions come from the
//! `typing_stream_seq` sequence shared by every writer, like any stream's.
//!
//! A row replaces the whole list of typing users of its room, as in Synapse,
//! and carries each user's expiry (milliseconds since the epoch): the writer
//! writes a row of its own when someone's typing expires, but should it die,
//! every process still stops showing its users once their expiry has passed,
//! instead of showing them forever.
//!
//! Each process keeps a [`TypingReplica`]: the latest row of every room it
//! heard of, fed by [`StreamRows::apply`] with the rows of other instances and
//! by the local writer directly. `/sync` reads its `m.typing` events there
//! ([`TypingReplica::event_since`]); a reader that missed rows asks their
//! writer for them through its mailbox (`GetTypingRows`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::registry::{ShardBy, Storage, StreamError, StreamRows, StreamSpec, Streams, TokenSlot};
use super::token::StreamToken;
use crate::roles::typing::GetTypingRows;
use crate::roles::Mailboxes;

/// The typing stream's name.
pub const TYPING_STREAM: &str = "typing";

pub const SPEC: StreamSpec = StreamSpec {
    name: TYPING_STREAM,
    shard_by: ShardBy::Room,
    storage: Storage::Memory,
    sequence: "typing_stream_seq",
    token: Some(TokenSlot::Typing),
};

/// How long a reader catching up waits for a writer's rows. Replication
/// waits for them before it reads further, so not long.
const READ_ROWS_DEADLINE: Duration = Duration::from_secs(5);

/// How long past a user's expiry a replica still shows them. The writer
/// writes a row when a typing user expires or renews; this margin only
/// keeps a replica from dropping a user a moment before that row arrives.
/// Past it, the writer is taken for dead.
pub const EXPIRY_GRACE_MS: i64 = 5_000;

/// One row: the users typing in a room, each with the time (milliseconds
/// since the epoch) their typing ends unless renewed. It replaces the room's
/// previous row. On the wire: `{"room_id":"!r:x","typing":[["@a:x",1700000030000]]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingRow {
    pub room_id: String,
    /// `(user id, expiry)`, sorted by user id.
    pub typing: Vec<(String, i64)>,
}

impl TypingRow {
    pub fn to_value(&self) -> Value {
        json!({ "room_id": self.room_id, "typing": self.typing })
    }

    /// The row in `value`, if it is one.
    pub fn from_value(value: &Value) -> Option<TypingRow> {
        serde_json::from_value(value.clone()).ok()
    }

    /// The users shown as typing at `now_ms`: every one until their expiry
    /// (and the grace) has passed.
    pub fn user_ids_at(&self, now_ms: i64) -> Vec<String> {
        self.typing
            .iter()
            .filter(|(_, until)| until.saturating_add(EXPIRY_GRACE_MS) > now_ms)
            .map(|(user_id, _)| user_id.clone())
            .collect()
    }
}

/// The latest typing row of every room this process heard of, by room.
#[derive(Debug, Default)]
pub struct TypingReplica {
    rooms: Mutex<foldhash::HashMap<String, (i64, TypingRow)>>,
}

impl TypingReplica {
    /// Takes `row`, written at `position`, unless a later row of its room is
    /// already known.
    pub fn apply(&self, position: i64, row: TypingRow) {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        match rooms.get(&row.room_id) {
            Some((known, _)) if *known >= position => {}
            _ => {
                rooms.insert(row.room_id.clone(), (position, row));
            }
        }
    }

    /// The `m.typing` event of `room_id` for a `/sync` from the typing
    /// position `since` (none: an initial sync) to `upto`: the users typing
    /// at `now_ms` when the room's typing changed in `since < position <=
    /// upto` (a change after `upto` is for the next sync). An initial sync
    /// shows who is typing, if anyone is.
    pub fn event_since(
        &self,
        room_id: &str,
        since: Option<i64>,
        upto: i64,
        now_ms: i64,
    ) -> Option<Value> {
        let rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        let (position, row) = rooms.get(room_id)?;
        if *position > upto {
            return None;
        }
        let user_ids = row.user_ids_at(now_ms);
        let shown = match since {
            Some(since) => *position > since,
            None => !user_ids.is_empty(),
        };
        shown.then(|| json!({ "type": "m.typing", "content": { "user_ids": user_ids } }))
    }

    /// The position of the latest row of `room_id`, if any.
    pub fn position(&self, room_id: &str) -> Option<i64> {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(room_id)
            .map(|(position, _)| *position)
    }
}

/// The `m.typing` event of `room_id` for a `/sync` answer from `since`
/// (none: an initial sync) to `upto`, as this instance's replica has it:
/// [`TypingReplica::event_since`] between the tokens' typing components.
pub fn sync_event(
    streams: &Streams,
    room_id: &str,
    since: Option<&StreamToken>,
    upto: &StreamToken,
) -> Option<Value> {
    streams
        .rows::<TypingRows>(TYPING_STREAM)?
        .replica
        .event_since(
            room_id,
            since.map(|since| since.typing),
            upto.typing,
            crate::util::now_ms(),
        )
}

/// The typing stream on one instance.
pub struct TypingRows {
    replica: Arc<TypingReplica>,
    /// To ask a writer for rows this instance missed.
    mailboxes: Arc<Mailboxes>,
}

impl TypingRows {
    pub fn new(mailboxes: Arc<Mailboxes>) -> TypingRows {
        TypingRows {
            replica: Arc::new(TypingReplica::default()),
            mailboxes,
        }
    }

    /// This process's replica, which the local writer feeds too.
    pub fn replica(&self) -> &Arc<TypingReplica> {
        &self.replica
    }
}

impl StreamRows for TypingRows {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// Its room.
    fn keys(&self, row: &Value) -> Vec<String> {
        row.get("room_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .into_iter()
            .collect()
    }

    /// The latest row of each room `writer` wrote in `after < position <= upto`
    /// (earlier rows of a room were replaced by it).
    fn read_rows<'a>(
        &'a self,
        writer: &'a str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
        Box::pin(async move {
            let failed = |message: String| StreamError::Writer {
                writer: writer.to_owned(),
                message,
            };
            let mailbox = self
                .mailboxes
                .on_instance::<GetTypingRows>(TYPING_STREAM, writer)
                .map_err(|e| failed(e.message))?;
            let rows = mailbox
                .call(GetTypingRows { after, upto }, READ_ROWS_DEADLINE)
                .await
                .map_err(|e| failed(e.to_string()))?;
            Ok(rows
                .into_iter()
                .map(|(position, row)| (position, row.to_value()))
                .collect())
        })
    }

    fn apply(&self, _writer: &str, position: i64, row: &Value) {
        match TypingRow::from_value(row) {
            Some(row) => self.replica.apply(position, row),
            None => tracing::warn!(position, "typing: dropped a row that is not one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(room_id: &str, typing: &[(&str, i64)]) -> TypingRow {
        TypingRow {
            room_id: room_id.to_owned(),
            typing: typing.iter().map(|(u, t)| ((*u).to_owned(), *t)).collect(),
        }
    }

    fn user_ids(event: Option<Value>) -> Option<Vec<String>> {
        event.map(|event| {
            assert_eq!(event["type"], "m.typing");
            serde_json::from_value(event["content"]["user_ids"].clone()).expect("user ids")
        })
    }

    #[test]
    fn a_row_round_trips_as_json_and_wakes_its_room() {
        let typing = row("!r:x", &[("@a:x", 1_000), ("@b:x", 2_000)]);
        let value = typing.to_value();
        assert_eq!(
            value.to_string(),
            r#"{"room_id":"!r:x","typing":[["@a:x",1000],["@b:x",2000]]}"#
        );
        assert_eq!(TypingRow::from_value(&value), Some(typing));
        assert_eq!(TypingRow::from_value(&json!({ "room_id": 5 })), None);
        assert_eq!(TypingRow::from_value(&json!({ "room_id": "!r:x" })), None);
        let rows = TypingRows::new(Arc::new(Mailboxes::new(
            lattice_actors::Placement::single_process("main"),
            None,
            Vec::new(),
        )));
        assert_eq!(rows.keys(&value), vec!["!r:x"]);
        assert!(rows.keys(&json!({})).is_empty());
    }

    #[test]
    fn a_sync_sees_a_rooms_typing_once_between_its_tokens() {
        let replica = TypingReplica::default();
        replica.apply(5, row("!r:x", &[("@a:x", 10_000)]));
        // Changed after `since`, before `upto`: shown.
        assert_eq!(
            user_ids(replica.event_since("!r:x", Some(4), 5, 0)),
            Some(vec!["@a:x".to_owned()])
        );
        // Already seen at `since`: not again.
        assert_eq!(replica.event_since("!r:x", Some(5), 9, 0), None);
        // Not yet at `upto`: for the next sync.
        assert_eq!(replica.event_since("!r:x", Some(3), 4, 0), None);
        // A room nobody typed in has nothing.
        assert_eq!(replica.event_since("!other:x", None, 9, 0), None);
        // An initial sync shows who types.
        assert_eq!(
            user_ids(replica.event_since("!r:x", None, 5, 0)),
            Some(vec!["@a:x".to_owned()])
        );
        // Stopping is a change: an empty list, but not for an initial sync.
        replica.apply(7, row("!r:x", &[]));
        assert_eq!(
            user_ids(replica.event_since("!r:x", Some(5), 7, 0)),
            Some(vec![])
        );
        assert_eq!(replica.event_since("!r:x", None, 7, 0), None);
    }

    #[test]
    fn an_older_row_never_replaces_a_newer_one() {
        let replica = TypingReplica::default();
        replica.apply(7, row("!r:x", &[]));
        replica.apply(5, row("!r:x", &[("@a:x", 10_000)]));
        assert_eq!(replica.position("!r:x"), Some(7));
        assert_eq!(
            user_ids(replica.event_since("!r:x", Some(1), 9, 0)),
            Some(vec![])
        );
    }

    #[test]
    fn users_whose_expiry_passed_are_dropped_even_without_a_row() {
        // The writer died: its last row is all there is.
        let replica = TypingReplica::default();
        replica.apply(5, row("!r:x", &[("@a:x", 10_000), ("@b:x", 40_000)]));
        assert_eq!(
            user_ids(replica.event_since("!r:x", Some(1), 5, 10_000 + EXPIRY_GRACE_MS - 1)),
            Some(vec!["@a:x".to_owned(), "@b:x".to_owned()])
        );
        assert_eq!(
            user_ids(replica.event_since("!r:x", Some(1), 5, 10_000 + EXPIRY_GRACE_MS)),
            Some(vec!["@b:x".to_owned()])
        );
        assert_eq!(
            replica.event_since("!r:x", None, 5, 40_000 + EXPIRY_GRACE_MS),
            None
        );
    }
}
