//! The `to_device` stream: messages to single devices
//! (`PUT /sendToDevice`), written by the to-device writers
//! (`roles/to_device`), sharded by the receiving user, stored in
//! PostgreSQL (`storage/to_device`, `device_inbox`) until the receiving
//! device acknowledges them. A row is the receiving users of one part of a
//! send (`[user_id, ...]`: the messages are read from the table by the
//! `/sync` that shows them); it wakes those users' long-polls.

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::registry::{ShardBy, Storage, StreamError, StreamRows, StreamSpec, TokenSlot};
use crate::storage::streams::StreamTable;
use crate::storage::to_device;

/// The to-device stream's name (and its writers' role and placement kind).
pub const TO_DEVICE_STREAM: &str = "to_device";

pub const SPEC: StreamSpec = StreamSpec {
    name: TO_DEVICE_STREAM,
    shard_by: ShardBy::User,
    storage: Storage::Postgres(&StreamTable {
        table: "device_inbox",
        instance_column: "instance_name",
        id_column: "stream_id",
    }),
    sequence: "to_device_stream_seq",
    token: Some(TokenSlot::ToDevice),
};

/// The to-device stream on one instance.
pub struct ToDeviceRows {
    pool: Pool,
}

impl ToDeviceRows {
    pub fn new(pool: Pool) -> ToDeviceRows {
        ToDeviceRows { pool }
    }
}

impl StreamRows for ToDeviceRows {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// The receiving users: a message is nobody else's.
    fn keys(&self, row: &Value) -> Vec<String> {
        row.as_array()
            .map(|users| {
                users
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn read_rows<'a>(
        &'a self,
        writer: &'a str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
        Box::pin(async move {
            let written = to_device::written_by(&self.pool, writer, after, upto).await?;
            Ok(written
                .into_iter()
                .map(|(position, users)| (position, to_device_row(&users)))
                .collect())
        })
    }
}

/// A to-device stream row: the users whose devices got messages.
pub fn to_device_row(users: &[String]) -> Value {
    json!(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_wakes_its_receiving_users() {
        let pool = crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1)
            .expect("a pool is made without connecting");
        let row = to_device_row(&["@a:x".to_owned(), "@b:x".to_owned()]);
        assert_eq!(row, json!(["@a:x", "@b:x"]));
        assert_eq!(ToDeviceRows::new(pool).keys(&row), vec!["@a:x", "@b:x"]);
    }
}
