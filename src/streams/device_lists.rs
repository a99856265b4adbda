//! The `device_lists` stream: changes of users' devices (a device added,
//! removed or re-keyed, a cross-signing key uploaded) and of the signatures
//! a user made of other users' keys, written by the device lists writers
//! (`roles/device_lists`), sharded by the user whose devices changed,
//! stored in PostgreSQL (`storage/device_lists`).
//!
//! A row is `[user_id, device_id, signed_user_id, rooms]`: a device change
//! (`signed_user_id` null) concerns everyone who shares a room with
//! `user_id`, so it wakes `user_id` and the rooms they were joined to when
//! it was written (the long-polls of those rooms' members listen on them);
//! a signature change (`device_id` null) concerns its signer only and wakes
//! just them. `/sync` and `/keys/changes` then read the table
//! (`sync/device_lists`).

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::registry::{ShardBy, Storage, StreamError, StreamRows, StreamSpec, TokenSlot};
use crate::storage::device_lists::{self, DeviceListChange};
use crate::storage::streams::StreamTable;

/// The device lists stream's name (and its writers' role and placement kind).
pub const DEVICE_LISTS_STREAM: &str = "device_lists";

pub const SPEC: StreamSpec = StreamSpec {
    name: DEVICE_LISTS_STREAM,
    shard_by: ShardBy::User,
    storage: Storage::Postgres(&StreamTable {
        table: "device_lists_stream",
        instance_column: "instance_name",
        id_column: "stream_id",
    }),
    sequence: "device_lists_stream_seq",
    token: Some(TokenSlot::DeviceLists),
};

/// The device lists stream on one instance.
pub struct DeviceListsRows {
    pool: Pool,
}

impl DeviceListsRows {
    pub fn new(pool: Pool) -> DeviceListsRows {
        DeviceListsRows { pool }
    }
}

impl StreamRows for DeviceListsRows {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// The user, and for a device change the rooms they were joined to.
    fn keys(&self, row: &Value) -> Vec<String> {
        let Some(user_id) = row.get(0).and_then(Value::as_str) else {
            return Vec::new();
        };
        let mut keys = vec![user_id.to_owned()];
        if row.get(2).is_none_or(Value::is_null) {
            keys.extend(
                row.get(3)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned),
            );
        }
        keys
    }

    fn read_rows<'a>(
        &'a self,
        writer: &'a str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let changes = device_lists::written_by(&client, writer, after, upto).await?;
            // The rooms are read now, not as they were: a wake-up is a hint
            // the reader's `/sync` checks.
            let mut users: Vec<String> = changes.iter().map(|c| c.user_id.clone()).collect();
            users.sort_unstable();
            users.dedup();
            let rooms = rooms_by_user(device_lists::joined_rooms_of_users(&client, &users).await?);
            Ok(changes
                .iter()
                .map(|change| {
                    let rooms = rooms.get(&change.user_id).map(Vec::as_slice).unwrap_or(&[]);
                    (change.stream_id, device_lists_row(change, rooms))
                })
                .collect())
        })
    }
}

/// `(user_id, room_id)` pairs grouped by user.
pub fn rooms_by_user(pairs: Vec<(String, String)>) -> BTreeMap<String, Vec<String>> {
    let mut rooms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (user_id, room_id) in pairs {
        rooms.entry(user_id).or_default().push(room_id);
    }
    rooms
}

/// A device lists stream row: `[user_id, device_id, signed_user_id,
/// rooms]` (`rooms`: where `user_id` was joined, for a device change).
pub fn device_lists_row(change: &DeviceListChange, rooms: &[String]) -> Value {
    let rooms: &[String] = if change.signed_user_id.is_some() {
        &[]
    } else {
        rooms
    };
    json!([
        change.user_id,
        change.device_id,
        change.signed_user_id,
        rooms
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> DeviceListsRows {
        let pool = crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1)
            .expect("a pool is made without connecting");
        DeviceListsRows::new(pool)
    }

    #[test]
    fn a_device_change_wakes_its_user_and_their_rooms() {
        let change = DeviceListChange {
            stream_id: 5,
            user_id: "@a:x".into(),
            device_id: Some("DEV".into()),
            signed_user_id: None,
        };
        let row = device_lists_row(&change, &["!r:x".to_owned(), "!s:x".to_owned()]);
        assert_eq!(row, json!(["@a:x", "DEV", null, ["!r:x", "!s:x"]]));
        assert_eq!(rows().keys(&row), vec!["@a:x", "!r:x", "!s:x"]);
    }

    #[test]
    fn a_signature_change_wakes_only_its_signer() {
        let change = DeviceListChange {
            stream_id: 6,
            user_id: "@a:x".into(),
            device_id: None,
            signed_user_id: Some("@b:x".into()),
        };
        let row = device_lists_row(&change, &["!r:x".to_owned()]);
        assert_eq!(row, json!(["@a:x", null, "@b:x", []]));
        assert_eq!(rows().keys(&row), vec!["@a:x"]);
    }
}
