//! The `receipts` stream: read receipts (`m.read`, `m.read.private`),
//! written by the receipts writers (`roles/receipts`), sharded by room,
//! stored in the `receipts` table (`storage/receipts`). A row is the whole
//! receipt, `[room_id, receipt_type, user_id, thread_id, event_id, data]`,
//! as replication carries it and as a catch-up reads it back; it wakes the
//! long-polls of its room. This module also shapes receipts as clients see
//! them: the `m.receipt` event of a room's `ephemeral` section.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::notifier::Notifier;
use super::registry::{ShardBy, Storage, StreamError, StreamRows, StreamSpec, TokenSlot};
use crate::storage::receipts::{self, Receipt, StoredReceipt};
use crate::storage::streams::StreamTable;

/// The receipts stream's name (and its writers' role and placement kind).
pub const RECEIPTS_STREAM: &str = "receipts";

/// The receipt type only its sender sees.
pub const READ_PRIVATE: &str = "m.read.private";

pub const SPEC: StreamSpec = StreamSpec {
    name: RECEIPTS_STREAM,
    shard_by: ShardBy::Room,
    storage: Storage::Postgres(&StreamTable {
        table: "receipts",
        instance_column: "instance_name",
        id_column: "stream_id",
    }),
    sequence: "receipts_stream_seq",
    token: Some(TokenSlot::Receipts),
};

/// The receipts stream on one instance.
pub struct ReceiptsRows {
    pool: Pool,
}

impl ReceiptsRows {
    pub fn new(pool: Pool) -> ReceiptsRows {
        ReceiptsRows { pool }
    }
}

impl StreamRows for ReceiptsRows {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// Its room: every member's long-poll looks (a private receipt is then
    /// found to concern its sender only).
    fn keys(&self, row: &Value) -> Vec<String> {
        row.get(0)
            .and_then(Value::as_str)
            .map(|room_id| vec![room_id.to_owned()])
            .unwrap_or_default()
    }

    fn read_rows<'a>(
        &'a self,
        writer: &'a str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
        Box::pin(async move {
            let written = receipts::written_by(&self.pool, writer, after, upto).await?;
            Ok(written
                .iter()
                .map(|stored| (stored.stream_id, receipt_row(&stored.receipt)))
                .collect())
        })
    }
}

/// A receipts stream row: `[room_id, receipt_type, user_id, thread_id,
/// event_id, data]` (Synapse's columns).
pub fn receipt_row(receipt: &Receipt) -> Value {
    json!([
        receipt.room_id,
        receipt.receipt_type,
        receipt.user_id,
        receipt.thread_id,
        receipt.event_id,
        receipt.data,
    ])
}

/// The receipt a row carries (None for a row of another shape).
pub fn receipt_of_row(row: &Value) -> Option<Receipt> {
    let text = |index: usize| row.get(index)?.as_str().map(str::to_owned);
    let thread_id = match row.get(3)? {
        Value::Null => None,
        Value::String(thread_id) => Some(thread_id.clone()),
        _ => return None,
    };
    Some(Receipt {
        room_id: text(0)?,
        receipt_type: text(1)?,
        user_id: text(2)?,
        thread_id,
        event_id: text(4)?,
        data: row.get(5)?.clone(),
    })
}

/// The `m.receipt` ephemeral event of `room_id` for `viewer`, with the
/// receipts set at positions `since < position <= upto` (every current one
/// without `since`: an initial sync); None when there is none to show (a
/// room whose receipts did not change since `since` is not read at all).
/// Another user's `m.read.private` is never shown.
pub async fn room_receipt_event(
    pool: &Pool,
    notifier: &Notifier,
    room_id: &str,
    since: Option<i64>,
    upto: i64,
    viewer: &str,
) -> Result<Option<Value>, crate::storage::StorageError> {
    if let Some(since) = since {
        if since >= upto || !notifier.has_changed_since(RECEIPTS_STREAM, room_id, since) {
            return Ok(None);
        }
    }
    let rooms = [room_id.to_owned()];
    let stored = receipts::receipts_in_rooms(pool, &rooms, since.unwrap_or(0), upto).await?;
    Ok(receipt_events_of(&stored, viewer).remove(room_id))
}

/// The receipts of `stored` as clients see them: per room, `{"type":
/// "m.receipt", "content": {event_id: {receipt_type: {user_id: {"ts",
/// "thread_id"?}}}}}`.
pub fn receipt_events_of(stored: &[StoredReceipt], viewer: &str) -> BTreeMap<String, Value> {
    let mut contents: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for StoredReceipt { receipt, .. } in stored {
        if receipt.receipt_type == READ_PRIVATE && receipt.user_id != viewer {
            continue;
        }
        let mut data = match &receipt.data {
            Value::Object(data) => data.clone(),
            _ => Map::new(),
        };
        if let Some(thread_id) = &receipt.thread_id {
            data.insert("thread_id".into(), json!(thread_id));
        }
        let by_type = contents
            .entry(receipt.room_id.clone())
            .or_default()
            .entry(receipt.event_id.clone())
            .or_insert_with(|| json!({}));
        by_type[&receipt.receipt_type][&receipt.user_id] = Value::Object(data);
    }
    contents
        .into_iter()
        .map(|(room_id, content)| (room_id, json!({ "type": "m.receipt", "content": content })))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(user: &str, kind: &str, event: &str, thread: Option<&str>) -> StoredReceipt {
        StoredReceipt {
            stream_id: 7,
            receipt: Receipt {
                room_id: "!r:x".into(),
                receipt_type: kind.into(),
                user_id: user.into(),
                thread_id: thread.map(str::to_owned),
                event_id: event.into(),
                data: json!({ "ts": 1000 }),
            },
        }
    }

    #[test]
    fn a_row_carries_the_whole_receipt_and_wakes_its_room() {
        let stored = receipt("@a:x", "m.read", "$e", Some("main"));
        let row = receipt_row(&stored.receipt);
        assert_eq!(
            row,
            json!(["!r:x", "m.read", "@a:x", "main", "$e", { "ts": 1000 }])
        );
        assert_eq!(receipt_of_row(&row), Some(stored.receipt));
        let unthreaded = receipt("@a:x", "m.read", "$e", None).receipt;
        assert_eq!(receipt_of_row(&receipt_row(&unthreaded)), Some(unthreaded));
        assert_eq!(receipt_of_row(&json!(["!r:x"])), None);
        let pool = crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1)
            .expect("a pool is made without connecting");
        assert_eq!(ReceiptsRows::new(pool).keys(&row), vec!["!r:x"]);
    }

    #[test]
    fn receipts_are_grouped_by_event_and_type_as_the_spec_shows_them() {
        let stored = [
            receipt("@a:x", "m.read", "$e", None),
            receipt("@b:x", "m.read", "$e", Some("$root")),
            receipt("@b:x", READ_PRIVATE, "$f", None),
        ];
        let events = receipt_events_of(&stored, "@a:x");
        assert_eq!(
            events["!r:x"],
            json!({ "type": "m.receipt", "content": { "$e": { "m.read": {
                "@a:x": { "ts": 1000 },
                "@b:x": { "ts": 1000, "thread_id": "$root" },
            } } } })
        );
        // A private receipt is its sender's alone.
        let own = receipt_events_of(&stored, "@b:x");
        assert_eq!(
            own["!r:x"]["content"]["$f"],
            json!({ READ_PRIVATE: { "@b:x": { "ts": 1000 } } })
        );
        let only_private = receipt_events_of(&stored[2..], "@a:x");
        assert!(only_private.is_empty());
    }
}
