//! The `push_rules` stream: users' changes to their push rules, written by
//! the push rules writers (`roles/push_rules`), sharded by user, stored in
//! PostgreSQL (`storage/push_rules`, one row per user). A row is
//! `[user_id]` (the rules are read from the table by whoever needs them);
//! it wakes its user's long-polls, which then send the whole ruleset as
//! the `m.push_rules` account data event, and marks the user's cached
//! ruleset stale on every instance (`push::rules::RulesetCache`).

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::notifier::Notifier;
use super::registry::{ShardBy, Storage, StreamError, StreamRows, StreamSpec, TokenSlot};
use crate::push::rules::{ruleset_json, RulesetCache};
use crate::storage::push_rules;
use crate::storage::streams::StreamTable;

/// The push rules stream's name (and its writers' role and placement kind).
pub const PUSH_RULES_STREAM: &str = "push_rules";

pub const SPEC: StreamSpec = StreamSpec {
    name: PUSH_RULES_STREAM,
    shard_by: ShardBy::User,
    storage: Storage::Postgres(&StreamTable {
        table: "push_rules",
        instance_column: "instance_name",
        id_column: "stream_id",
    }),
    sequence: "push_rules_stream_seq",
    token: Some(TokenSlot::PushRules),
};

/// The push rules stream on one instance.
pub struct PushRulesRows {
    pool: Pool,
}

impl PushRulesRows {
    pub fn new(pool: Pool) -> PushRulesRows {
        PushRulesRows { pool }
    }
}

impl StreamRows for PushRulesRows {
    fn spec(&self) -> &'static StreamSpec {
        &SPEC
    }

    /// Its user: push rules are nobody else's.
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
            let written = push_rules::written_by(&self.pool, writer, after, upto).await?;
            Ok(written
                .into_iter()
                .map(|(position, user_id)| (position, push_rules_row(&user_id)))
                .collect())
        })
    }
}

/// A push rules stream row: `[user_id]`.
pub fn push_rules_row(user_id: &str) -> Value {
    json!([user_id])
}

/// The `m.push_rules` global account data event for `user_id` when this
/// answer should carry it: always on an initial sync (`since` None), else
/// when the user's rules changed in `(since, upto]`.
pub async fn push_rules_event(
    pool: &Pool,
    notifier: &Notifier,
    cache: &RulesetCache,
    user_id: &str,
    since: Option<i64>,
    upto: i64,
) -> Result<Option<Value>, crate::storage::StorageError> {
    if let Some(since) = since {
        if since >= upto || !notifier.has_changed_since(PUSH_RULES_STREAM, user_id, since) {
            return Ok(None);
        }
    }
    let Ok(user_id) = ruma::UserId::parse(user_id) else {
        return Ok(None);
    };
    let ruleset = cache.ruleset(pool, notifier, &user_id).await?;
    Ok(Some(json!({
        "type": "m.push_rules",
        "content": { "global": ruleset_json(&ruleset) },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_wakes_its_user() {
        let pool = crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1)
            .expect("a pool is made without connecting");
        let row = push_rules_row("@a:x");
        assert_eq!(PushRulesRows::new(pool).keys(&row), vec!["@a:x"]);
    }
}
