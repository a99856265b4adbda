//! The `account_data` role: the writers of the account data stream, one per
//! instance `stream_writers.account_data` lists, sharded by user. For now
//! an [`AccountDataWriter`] sets read markers (`m.fully_read` room account
//! data, which never moves back to an earlier event, as in Synapse's read
//! marker handler); the account data endpoints come with issue 13. It
//! commits what queued in its inbox in one transaction.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use crate::streams::account_data::ACCOUNT_DATA_STREAM;

use super::WriteError;
use super::{ActorStart, StartedActor};
use crate::storage::account_data::{self, RoomAccountData};
use crate::storage::receipts::event_position_in_room;
use crate::storage::{StorageError, StorageResult};
use crate::streams::account_data::account_data_row;
use crate::streams::writer::StreamWriter;

/// The room account data type of the read marker.
pub const FULLY_READ: &str = "m.fully_read";

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
    let addr = start
        .supervisor
        .start("account_data_writer", move || {
            AccountDataWriter::new(pool.clone(), writer.clone())
        })
        .map_err(|e| e.to_string())?;
    start.mailboxes.register(addr.mailbox::<SetReadMarker>());
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<SetReadMarker>())
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

pub struct AccountDataWriter {
    pool: Pool,
    /// The account data stream's writing end.
    writer: StreamWriter,
    markers_stored: u64,
    markers_unchanged: u64,
    writes_failed: u64,
}

impl AccountDataWriter {
    pub fn new(pool: Pool, writer: StreamWriter) -> AccountDataWriter {
        AccountDataWriter {
            pool,
            writer,
            markers_stored: 0,
            markers_unchanged: 0,
            writes_failed: 0,
        }
    }

    /// Commits `requests` in one transaction; each gets its own answer.
    async fn set_read_markers(
        &mut self,
        requests: Vec<SetReadMarker>,
    ) -> Vec<Result<AccountDataWritten, WriteError>> {
        let count = requests.len();
        match self.set_in_transaction(requests).await {
            Ok(answers) => answers,
            Err(error) => {
                self.writes_failed += 1;
                tracing::error!(error = %error, markers = count, "account data writer storage error");
                vec![
                    Err(WriteError::Storage(
                        "the read markers could not be stored".into()
                    ));
                    count
                ]
            }
        }
    }

    async fn set_in_transaction(
        &mut self,
        requests: Vec<SetReadMarker>,
    ) -> StorageResult<Vec<Result<AccountDataWritten, WriteError>>> {
        let instance = self.writer.instance().to_owned();
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
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
                answers.push(Some(Ok(AccountDataWritten {
                    instance: instance.clone(),
                    position: None,
                })));
                continue;
            }
            latest.insert(key, position);
            to_write.push((answers.len(), user_id, room_id, event_id));
            answers.push(None);
        }
        let positions = if to_write.is_empty() {
            Vec::new()
        } else {
            self.writer.allocate(&*transaction, to_write.len()).await?
        };
        let mut written = Vec::with_capacity(to_write.len());
        let result: StorageResult<()> = async {
            for ((index, user_id, room_id, event_id), position) in
                to_write.into_iter().zip(&positions)
            {
                let data = RoomAccountData {
                    stream_id: *position,
                    user_id,
                    room_id,
                    kind: FULLY_READ.to_owned(),
                    content: json!({ "event_id": event_id }),
                };
                account_data::put_room(&transaction, &instance, &data).await?;
                written.push((index, data));
            }
            self.writer
                .store_position(&*transaction, &positions)
                .await?;
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
        if !positions.is_empty() {
            let rows: Vec<(i64, Value)> = written
                .iter()
                .map(|(_, data)| {
                    (
                        data.stream_id,
                        account_data_row(&data.user_id, Some(&data.room_id), &data.kind),
                    )
                })
                .collect();
            let keys = written
                .iter()
                .map(|(_, data)| data.user_id.clone())
                .collect();
            self.writer.finish_with_keys(&positions, keys, || rows);
        }
        for (index, data) in written {
            self.markers_stored += 1;
            answers[index] = Some(Ok(AccountDataWritten {
                instance: instance.clone(),
                position: Some(data.stream_id),
            }));
        }
        Ok(answers
            .into_iter()
            .map(|answer| {
                answer
                    .unwrap_or_else(|| Err(WriteError::Internal("request was not answered".into())))
            })
            .collect())
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
        Ok(self
            .set_read_markers(vec![msg])
            .await
            .pop()
            .unwrap_or_else(|| Err(WriteError::Internal("request was not answered".into()))))
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
