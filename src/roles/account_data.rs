//! The `account_data` role: the writers of the account data stream, one per
//! instance `stream_writers.account_data` lists, sharded by user. An
//! [`AccountDataWriter`] sets read markers ([`SetReadMarker`]:
//! `m.fully_read` room account data, which never moves back to an earlier
//! event, as in Synapse's read marker handler) and what clients store
//! ([`ChangeAccountData`]: global and room account data, and room tags,
//! which it reads, changes and writes back as the room's `m.tag` in its
//! own transaction: one writer owns a user, so no two change one user's
//! tags at once). It commits what queued in its inbox in one transaction.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use crate::streams::account_data::ACCOUNT_DATA_STREAM;

use super::WriteError;
use super::{ActorStart, StartedActor};
use crate::shards::ShardMap;
use crate::storage::account_data::{self, AccountData};
use crate::storage::receipts::event_position_in_room;
use crate::storage::{StorageError, StorageResult};
use crate::streams::account_data::account_data_row;
use crate::streams::writer::StreamWriter;

/// The room account data type of the read marker.
pub const FULLY_READ: &str = "m.fully_read";

/// The room account data type room tags are shown as (`{"tags": {...}}`).
pub const TAGS: &str = "m.tag";

/// Deliveries of the writer's mailbox endpoint handled at once.
const REMOTE_WRITER_CONCURRENCY: usize = 64;

/// Starts this instance's account data writer (a row of the role table).
pub fn start(start: &ActorStart) -> Result<StartedActor, String> {
    let writer = start
        .streams
        .writer(ACCOUNT_DATA_STREAM)
        .cloned()
        .ok_or("the account_data stream has no writer here")?;
    let pool = start.pool.clone();
    let shards = start
        .mailboxes
        .shard_map(ACCOUNT_DATA_STREAM)
        .cloned()
        .ok_or("the account_data stream has no shard map")?;
    let addr = start
        .supervisor
        .start("account_data_writer", move || {
            AccountDataWriter::new(pool.clone(), writer.clone(), shards.clone())
        })
        .map_err(|e| e.to_string())?;
    start.mailboxes.register(addr.mailbox::<SetReadMarker>());
    start
        .mailboxes
        .register(addr.mailbox::<ChangeAccountData>());
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<SetReadMarker>())
                .route_mailbox(addr.mailbox::<ChangeAccountData>())
                .concurrency(REMOTE_WRITER_CONCURRENCY)
        }),
    })
}

/// Move `user_id`'s read marker (`m.fully_read`) in `room_id` to
/// `event_id`, unless it is at that event or a later one already.
/// Delivered twice, it writes once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetReadMarker {
    pub user_id: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
}

/// What a write of account data changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDataWritten {
    /// The writer that stored it.
    pub instance: String,
    /// Its position in the account data stream; None when nothing changed.
    pub position: Option<i64>,
}

impl lattice_actors::RemoteMessage for SetReadMarker {
    type Reply = Result<AccountDataWritten, WriteError>;
    const WIRE_NAME: &'static str = "account_data.set_read_marker.v1";
}

/// Change `user_id`'s account data as a client asked. The request was
/// checked where it entered the server (the user's own, a type clients
/// may set, an object). Delivered twice, it leaves the same data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeAccountData {
    pub user_id: OwnedUserId,
    pub change: AccountDataChange,
}

/// What a [`ChangeAccountData`] does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AccountDataChange {
    /// Set the account data `kind` (of `room_id`, or global) to `content`.
    Put {
        room_id: Option<OwnedRoomId>,
        kind: String,
        content: Map<String, Value>,
    },
    /// Tag `room_id` with `tag`, `content` its metadata (`order`).
    PutTag {
        room_id: OwnedRoomId,
        tag: String,
        content: Map<String, Value>,
    },
    /// Remove `tag` from `room_id` (nothing changes if it has no such tag).
    DeleteTag { room_id: OwnedRoomId, tag: String },
}

impl lattice_actors::RemoteMessage for ChangeAccountData {
    type Reply = Result<AccountDataWritten, WriteError>;
    const WIRE_NAME: &'static str = "account_data.change.v1";
}

/// The `m.tag` content `current` becomes after `change` (a tag change), or
/// `None` when it stays as it is (removing a tag the room does not have).
/// Keys of `m.tag` other than `tags` are kept.
fn changed_tags(current: Option<&Value>, change: &AccountDataChange) -> Option<Value> {
    let mut content = match current {
        Some(Value::Object(content)) => content.clone(),
        _ => Map::new(),
    };
    let mut tags = match content.remove("tags") {
        Some(Value::Object(tags)) => tags,
        _ => Map::new(),
    };
    match change {
        AccountDataChange::PutTag { tag, content, .. } => {
            tags.insert(tag.clone(), Value::Object(content.clone()));
        }
        AccountDataChange::DeleteTag { tag, .. } => {
            tags.remove(tag)?;
        }
        AccountDataChange::Put { .. } => return None,
    }
    content.insert("tags".into(), Value::Object(tags));
    Some(Value::Object(content))
}

pub struct AccountDataWriter {
    pool: Pool,
    /// Which users' shards this writer holds: it writes only theirs.
    shards: Arc<ShardMap>,
    /// The account data stream's writing end.
    writer: StreamWriter,
    markers_stored: u64,
    markers_unchanged: u64,
    data_stored: u64,
    data_unchanged: u64,
    writes_failed: u64,
}

/// An answer per request of a batch; `None` until it is known.
type Answers = Vec<Option<Result<AccountDataWritten, WriteError>>>;

/// Account data a batch writes: the request it answers and what it sets
/// (its position is allocated when the batch stores it).
struct ToWrite {
    answer: usize,
    user_id: String,
    room_id: Option<String>,
    kind: String,
    content: Value,
}

impl AccountDataWriter {
    pub fn new(pool: Pool, writer: StreamWriter, shards: Arc<ShardMap>) -> AccountDataWriter {
        AccountDataWriter {
            pool,
            shards,
            writer,
            markers_stored: 0,
            markers_unchanged: 0,
            data_stored: 0,
            data_unchanged: 0,
            writes_failed: 0,
        }
    }

    /// Commits `requests` in one transaction; each gets its own answer.
    async fn set_read_markers(
        &mut self,
        requests: Vec<SetReadMarker>,
    ) -> Vec<Result<AccountDataWritten, WriteError>> {
        let shards = self.shards.clone();
        super::owned_only(
            &shards,
            requests,
            |request| vec![request.user_id.to_string()],
            |kept| async {
                let count = kept.len();
                let result = self.set_markers_in_transaction(kept).await;
                self.answered(result, count, "the read markers")
            },
        )
        .await
    }

    /// Commits `requests` in one transaction; each gets its own answer.
    async fn change_account_data(
        &mut self,
        requests: Vec<ChangeAccountData>,
    ) -> Vec<Result<AccountDataWritten, WriteError>> {
        let shards = self.shards.clone();
        super::owned_only(
            &shards,
            requests,
            |request| vec![request.user_id.to_string()],
            |kept| async {
                let count = kept.len();
                let result = self.change_in_transaction(kept).await;
                self.answered(result, count, "the account data")
            },
        )
        .await
    }

    /// The answers of a batch of `count` requests, each the same error when
    /// the batch could not be stored.
    fn answered(
        &mut self,
        result: StorageResult<Answers>,
        count: usize,
        failure: &str,
    ) -> Vec<Result<AccountDataWritten, WriteError>> {
        match result {
            Ok(answers) => answers
                .into_iter()
                .map(|answer| answer.unwrap_or_else(|| Err(WriteError::not_answered())))
                .collect(),
            Err(error) => {
                if !matches!(error, StorageError::Fenced { .. }) {
                    self.writes_failed += 1;
                }
                vec![Err(WriteError::from_storage(error, failure)); count]
            }
        }
    }

    async fn set_markers_in_transaction(
        &mut self,
        requests: Vec<SetReadMarker>,
    ) -> StorageResult<Answers> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let users: Vec<String> = requests.iter().map(|r| r.user_id.to_string()).collect();
        self.shards
            .fence(&transaction, users.iter().map(String::as_str))
            .await?;
        // Where each (user, room)'s marker is, once this batch moved it.
        let mut latest: HashMap<(String, String), i64> = HashMap::new();
        let mut answers = Vec::with_capacity(requests.len());
        let mut to_write = Vec::new();
        for request in requests {
            let (user_id, room_id) = (request.user_id.to_string(), request.room_id.to_string());
            let event_id = request.event_id.to_string();
            let Some(position) = event_position_in_room(&transaction, &room_id, &event_id).await?
            else {
                answers.push(Some(Err(WriteError::NotFound(format!(
                    "event {event_id} not found in this room"
                )))));
                continue;
            };
            let key = (user_id.clone(), room_id.clone());
            let current = match latest.get(&key) {
                Some(current) => Some(*current),
                None => {
                    self.marker_position(&transaction, &user_id, &room_id)
                        .await?
                }
            };
            if current.is_some_and(|current| current >= position) {
                self.markers_unchanged += 1;
                answers.push(Some(Ok(self.unchanged())));
                continue;
            }
            latest.insert(key, position);
            to_write.push(ToWrite {
                answer: answers.len(),
                user_id,
                room_id: Some(room_id),
                kind: FULLY_READ.to_owned(),
                content: json!({ "event_id": event_id }),
            });
            answers.push(None);
        }
        self.markers_stored += to_write.len() as u64;
        self.store(transaction, to_write, &mut answers).await?;
        Ok(answers)
    }

    async fn change_in_transaction(
        &mut self,
        requests: Vec<ChangeAccountData>,
    ) -> StorageResult<Answers> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let users: Vec<String> = requests.iter().map(|r| r.user_id.to_string()).collect();
        self.shards
            .fence(&transaction, users.iter().map(String::as_str))
            .await?;
        // The `m.tag` contents this batch wrote, by (user, room): a tag
        // change reads the one before it.
        let mut tags: HashMap<(String, String), Value> = HashMap::new();
        let mut answers = Vec::with_capacity(requests.len());
        let mut to_write = Vec::new();
        for request in requests {
            let user_id = request.user_id.to_string();
            let (room_id, kind, content) = match request.change {
                AccountDataChange::Put {
                    room_id,
                    kind,
                    content,
                } => (
                    room_id.map(|room_id| room_id.to_string()),
                    kind,
                    Value::Object(content),
                ),
                AccountDataChange::PutTag { ref room_id, .. }
                | AccountDataChange::DeleteTag { ref room_id, .. } => {
                    let key = (user_id.clone(), room_id.to_string());
                    let current = match tags.get(&key) {
                        Some(current) => Some(current.clone()),
                        None => {
                            account_data::room_content(&transaction, &user_id, &key.1, TAGS).await?
                        }
                    };
                    let Some(changed) = changed_tags(current.as_ref(), &request.change) else {
                        self.data_unchanged += 1;
                        answers.push(Some(Ok(self.unchanged())));
                        continue;
                    };
                    (Some(key.1), TAGS.to_owned(), changed)
                }
            };
            if let (Some(room_id), TAGS) = (&room_id, kind.as_str()) {
                tags.insert((user_id.clone(), room_id.clone()), content.clone());
            }
            to_write.push(ToWrite {
                answer: answers.len(),
                user_id,
                room_id,
                kind,
                content,
            });
            answers.push(None);
        }
        self.data_stored += to_write.len() as u64;
        self.store(transaction, to_write, &mut answers).await?;
        Ok(answers)
    }

    /// The answer to a request that changed nothing.
    fn unchanged(&self) -> AccountDataWritten {
        AccountDataWritten {
            instance: self.writer.instance().to_owned(),
            position: None,
        }
    }

    /// Gives each of `to_write` a position, stores them and commits
    /// `transaction`, then announces the rows and answers their requests.
    async fn store(
        &mut self,
        transaction: deadpool_postgres::Transaction<'_>,
        to_write: Vec<ToWrite>,
        answers: &mut Answers,
    ) -> StorageResult<()> {
        if to_write.is_empty() {
            return Ok(transaction.commit().await?);
        }
        let instance = self.writer.instance().to_owned();
        let positions = self.writer.allocate(&transaction, to_write.len()).await?;
        let mut written = Vec::with_capacity(to_write.len());
        let result: StorageResult<()> = async {
            for (write, position) in to_write.into_iter().zip(&positions) {
                let data = AccountData {
                    stream_id: *position,
                    user_id: write.user_id,
                    room_id: write.room_id,
                    kind: write.kind,
                    content: write.content,
                };
                account_data::put(&transaction, &instance, &data).await?;
                written.push((write.answer, data));
            }
            self.writer.store_position(&transaction, &positions).await?;
            Ok(())
        }
        .await;
        let committed = match result {
            Ok(()) => transaction.commit().await.map_err(StorageError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = committed {
            self.writer.abandon(&positions);
            return Err(error);
        }
        let rows: Vec<(i64, Value)> = written
            .iter()
            .map(|(_, data)| {
                (
                    data.stream_id,
                    account_data_row(&data.user_id, data.room_id.as_deref(), &data.kind),
                )
            })
            .collect();
        let keys = written
            .iter()
            .map(|(_, data)| data.user_id.clone())
            .collect();
        self.writer.finish_with_keys(&positions, keys, || rows);
        for (index, data) in written {
            answers[index] = Some(Ok(AccountDataWritten {
                instance: instance.clone(),
                position: Some(data.stream_id),
            }));
        }
        Ok(())
    }

    /// The events-stream position of the event `user_id`'s read marker in
    /// `room_id` is at, if it has one.
    async fn marker_position(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        user_id: &str,
        room_id: &str,
    ) -> StorageResult<Option<i64>> {
        let content = account_data::room_content(client, user_id, room_id, FULLY_READ).await?;
        let Some(event_id) = content
            .as_ref()
            .and_then(|content| content.get("event_id"))
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        event_position_in_room(client, room_id, event_id).await
    }
}

impl Actor for AccountDataWriter {
    async fn started(&mut self, _ctx: &mut Context) -> Result<(), String> {
        // A restarted incarnation may have lost track of positions the one
        // before it allocated: reload them.
        self.writer
            .reload(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn observe(&self) -> Value {
        let mut snapshot = self.writer.observe();
        snapshot.insert("markers_stored".into(), json!(self.markers_stored));
        snapshot.insert("markers_unchanged".into(), json!(self.markers_unchanged));
        snapshot.insert("data_stored".into(), json!(self.data_stored));
        snapshot.insert("data_unchanged".into(), json!(self.data_unchanged));
        snapshot.insert("writes_failed".into(), json!(self.writes_failed));
        Value::Object(snapshot)
    }
}

impl Handler<SetReadMarker> for AccountDataWriter {
    /// Markers that queue up while a transaction commits go into the next one.
    const BATCH_LIMIT: usize = 100;

    async fn handle(
        &mut self,
        msg: SetReadMarker,
        _ctx: &mut Context,
    ) -> Result<Result<AccountDataWritten, WriteError>, String> {
        Ok(super::sole_answer(self.set_read_markers(vec![msg]).await))
    }

    async fn handle_batch(
        &mut self,
        msgs: Vec<SetReadMarker>,
        _ctx: &mut Context,
    ) -> Vec<Result<Result<AccountDataWritten, WriteError>, String>> {
        self.set_read_markers(msgs)
            .await
            .into_iter()
            .map(Ok)
            .collect()
    }
}

impl Handler<ChangeAccountData> for AccountDataWriter {
    /// Changes that queue up while a transaction commits go into the next one.
    const BATCH_LIMIT: usize = 100;

    async fn handle(
        &mut self,
        msg: ChangeAccountData,
        _ctx: &mut Context,
    ) -> Result<Result<AccountDataWritten, WriteError>, String> {
        Ok(super::sole_answer(
            self.change_account_data(vec![msg]).await,
        ))
    }

    async fn handle_batch(
        &mut self,
        msgs: Vec<ChangeAccountData>,
        _ctx: &mut Context,
    ) -> Vec<Result<Result<AccountDataWritten, WriteError>, String>> {
        self.change_account_data(msgs)
            .await
            .into_iter()
            .map(Ok)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn a_tag_change_rewrites_m_tag_and_keeps_the_other_tags() {
        let room_id: OwnedRoomId = "!r:x".try_into().expect("room id");
        let put = |tag: &str, content: Value| AccountDataChange::PutTag {
            room_id: room_id.clone(),
            tag: tag.into(),
            content: object(content),
        };
        let delete = |tag: &str| AccountDataChange::DeleteTag {
            room_id: room_id.clone(),
            tag: tag.into(),
        };
        let first = changed_tags(None, &put("u.work", json!({ "order": 0.5 })));
        assert_eq!(
            first,
            Some(json!({ "tags": { "u.work": { "order": 0.5 } } }))
        );
        let second = changed_tags(first.as_ref(), &put("m.favourite", json!({})));
        assert_eq!(
            second,
            Some(json!({ "tags": { "u.work": { "order": 0.5 }, "m.favourite": {} } }))
        );
        let removed = changed_tags(second.as_ref(), &delete("u.work"));
        assert_eq!(removed, Some(json!({ "tags": { "m.favourite": {} } })));
        assert_eq!(changed_tags(removed.as_ref(), &delete("u.work")), None);
        assert_eq!(changed_tags(None, &delete("u.work")), None);
        // What a client stored as m.tag by hand is kept beside the tags.
        let odd = json!({ "tags": "not an object", "x": 1 });
        assert_eq!(
            changed_tags(Some(&odd), &put("u.a", json!({}))),
            Some(json!({ "tags": { "u.a": {} }, "x": 1 }))
        );
    }
}
