//! The `account_data` stream: users' account data, written by the account
//! data writers (`roles/account_data`), sharded by user, stored in
//! PostgreSQL (`storage/account_data`): global and per room, read markers
//! (`m.fully_read`) and room tags (`m.tag`) included. A row is Synapse's
//! `[user_id, room_id, type]` (`room_id` null for global account data; the
//! content is read from the table by the `/sync` that shows it); it wakes
//! its user's long-polls.

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::notifier::Notifier;
use super::registry::{ShardBy, Storage, StreamError, StreamRows, StreamSpec, TokenSlot};
use crate::storage::account_data;
use crate::storage::streams::StreamTable;

/// The account data stream's name (and its writers' role and placement kind).
pub const ACCOUNT_DATA_STREAM: &str = "account_data";

pub const SPEC: StreamSpec = StreamSpec {
    name: ACCOUNT_DATA_STREAM,
    shard_by: ShardBy::User,
    storage: Storage::Postgres(&StreamTable {
        table: "account_data",
        instance_column: "instance_name",
        id_column: "stream_id",
    }),
    sequence: "account_data_stream_seq",
    token: Some(TokenSlot::AccountData),
};

/// The account data stream on one instance.
pub struct AccountDataRows {
    pool: Pool,
}

impl AccountDataRows {
    pub fn new(pool: Pool) -> AccountDataRows {
        AccountDataRows { pool }
    }
}

impl StreamRows for AccountDataRows {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// Its user: account data is nobody else's.
    fn keys(&self, row: &Value) -> Vec<String> {
        row.get(0)
            .and_then(Value::as_str)
            .map(|user_id| vec![user_id.to_owned()])
            .unwrap_or_default()
    }

    fn read_rows<'a>(
        &'a self,
        writer: &'a str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
        Box::pin(async move {
            let written = account_data::written_by(&self.pool, writer, after, upto).await?;
            Ok(written
                .iter()
                .map(|data| {
                    (
                        data.stream_id,
                        account_data_row(&data.user_id, data.room_id.as_deref(), &data.kind),
                    )
                })
                .collect())
        })
    }
}

/// `user_id`'s account data events of `room_id` (global ones without a
/// room) set at positions `since < position <= upto` (all of them without
/// `since`: an initial sync), as `/sync` shows them (`{"type",
/// "content"}`). A user whose account data did not change since `since`
/// costs no read.
pub async fn account_data_events(
    pool: &Pool,
    notifier: &Notifier,
    user_id: &str,
    room_id: Option<&str>,
    since: Option<i64>,
    upto: i64,
) -> Result<Vec<Value>, crate::storage::StorageError> {
    if let Some(since) = since {
        if since >= upto || !notifier.has_changed_since(ACCOUNT_DATA_STREAM, user_id, since) {
            return Ok(Vec::new());
        }
    }
    let data = account_data::data_of_user(pool, user_id, room_id, since.unwrap_or(0), upto).await?;
    Ok(data
        .into_iter()
        .map(|data| json!({ "type": data.kind, "content": data.content }))
        .collect())
}

/// An account data stream row: `[user_id, room_id, type]` (no room for
/// global account data).
pub fn account_data_row(user_id: &str, room_id: Option<&str>, kind: &str) -> Value {
    json!([user_id, room_id, kind])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_wakes_its_user() {
        let pool = crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1)
            .expect("a pool is made without connecting");
        let row = account_data_row("@a:x", Some("!r:x"), "m.fully_read");
        assert_eq!(row, json!(["@a:x", "!r:x", "m.fully_read"]));
        assert_eq!(AccountDataRows::new(pool).keys(&row), vec!["@a:x"]);
    }
}
