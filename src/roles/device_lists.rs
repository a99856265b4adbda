//! The `device_lists` role: the writers of the device lists stream, one per
//! instance `stream_writers.device_lists` lists, sharded by the user whose
//! devices changed. A [`DeviceListsWriter`] records what [`RecordDeviceChanges`]
//! says changed (devices added, removed or re-keyed, cross-signing keys,
//! signatures a user made of others' keys) as stream rows, each with the
//! rooms its user is joined to at that moment (the long-polls it wakes). It
//! commits what queued in its inbox in one transaction.

use std::sync::Arc;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler};
use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use crate::streams::device_lists::DEVICE_LISTS_STREAM;

use super::WriteError;
use super::{ActorStart, StartedActor};
use crate::shards::ShardMap;
use crate::storage::device_lists::{self, DeviceListChange};
use crate::storage::StorageResult;
use crate::streams::device_lists::{device_lists_row, rooms_by_user};
use crate::streams::writer::StreamWriter;

/// Deliveries of the writer's mailbox endpoint handled at once.
const REMOTE_WRITER_CONCURRENCY: usize = 64;

/// Starts this instance's device lists writer (a row of the role table).
pub fn start(start: &ActorStart) -> Result<StartedActor, String> {
    let writer = start
        .streams
        .writer(DEVICE_LISTS_STREAM)
        .cloned()
        .ok_or("the device_lists stream has no writer here")?;
    let pool = start.pool.clone();
    let shards = start
        .mailboxes
        .shard_map(DEVICE_LISTS_STREAM)
        .cloned()
        .ok_or("the stream has no shard map")?;
    let addr = start
        .supervisor
        .start("device_lists_writer", move || {
            DeviceListsWriter::new(pool.clone(), writer.clone(), shards.clone())
        })
        .map_err(|e| e.to_string())?;
    start
        .mailboxes
        .register(addr.mailbox::<RecordDeviceChanges>());
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<RecordDeviceChanges>())
                .concurrency(REMOTE_WRITER_CONCURRENCY)
        }),
    })
}

/// Record that `user_id`'s devices `device_ids` changed (a cross-signing
/// key counts as a device named by its public key), and that the
/// signatures `user_id` made of `signed_users`' keys changed. Delivered
/// twice, it records twice: a change told twice is harmless.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordDeviceChanges {
    pub user_id: OwnedUserId,
    pub device_ids: Vec<String>,
    pub signed_users: Vec<OwnedUserId>,
}

/// Where a [`RecordDeviceChanges`] was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceChangesRecorded {
    /// The writer that stored it.
    pub instance: String,
    /// Its last position in the device lists stream; None when it had
    /// nothing to record.
    pub position: Option<i64>,
}

impl lattice_actors::RemoteMessage for RecordDeviceChanges {
    type Reply = Result<DeviceChangesRecorded, WriteError>;
    const WIRE_NAME: &'static str = "device_lists.record_changes.v1";
}

pub struct DeviceListsWriter {
    pool: Pool,
    /// Which users' shards this writer holds: it writes only theirs.
    shards: Arc<ShardMap>,
    /// The device lists stream's writing end.
    writer: StreamWriter,
    changes_stored: u64,
    writes_failed: u64,
}

impl DeviceListsWriter {
    pub fn new(pool: Pool, writer: StreamWriter, shards: Arc<ShardMap>) -> DeviceListsWriter {
        DeviceListsWriter {
            pool,
            shards,
            writer,
            changes_stored: 0,
            writes_failed: 0,
        }
    }

    /// Commits `requests` in one transaction; each gets its own answer.
    async fn record(
        &mut self,
        requests: Vec<RecordDeviceChanges>,
    ) -> Vec<Result<DeviceChangesRecorded, WriteError>> {
        let shards = self.shards.clone();
        super::owned_only(
            &shards,
            requests,
            |request| vec![request.user_id.to_string()],
            |kept| async {
                let count = kept.len();
                match self.record_in_transaction(kept).await {
                    Ok(answers) => answers.into_iter().map(Ok).collect(),
                    Err(error) => {
                        if !matches!(error, crate::storage::StorageError::Fenced { .. }) {
                            self.writes_failed += 1;
                        }
                        vec![Err(WriteError::from_storage(error, "the device list changes")); count]
                    }
                }
            },
        )
        .await
    }

    async fn record_in_transaction(
        &mut self,
        requests: Vec<RecordDeviceChanges>,
    ) -> StorageResult<Vec<DeviceChangesRecorded>> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let users: Vec<String> = requests.iter().map(|r| r.user_id.to_string()).collect();
        self.shards
            .fence(&transaction, users.iter().map(String::as_str))
            .await?;
        // The changes of each request, positions allocated below.
        let mut planned: Vec<Vec<DeviceListChange>> = requests
            .iter()
            .map(|request| {
                let user_id = request.user_id.to_string();
                let devices = request.device_ids.iter().map(|device_id| DeviceListChange {
                    stream_id: 0,
                    user_id: user_id.clone(),
                    device_id: Some(device_id.clone()),
                    signed_user_id: None,
                });
                let signatures = request.signed_users.iter().map(|signed| DeviceListChange {
                    stream_id: 0,
                    user_id: user_id.clone(),
                    device_id: None,
                    signed_user_id: Some(signed.to_string()),
                });
                devices.chain(signatures).collect()
            })
            .collect();
        let total: usize = planned.iter().map(Vec::len).sum();
        let instance = self.writer.instance().to_owned();
        if total == 0 {
            return Ok(requests
                .iter()
                .map(|_| DeviceChangesRecorded {
                    instance: instance.clone(),
                    position: None,
                })
                .collect());
        }
        let positions = self.writer.allocate(&transaction, total).await?;
        let mut next = positions.iter().copied();
        for change in planned.iter_mut().flatten() {
            change.stream_id = next.next().unwrap_or_default();
        }
        let all: Vec<DeviceListChange> = planned.iter().flatten().cloned().collect();
        let stored = async {
            device_lists::insert_changes(&transaction, &instance, &all).await?;
            self.writer.store_position(&transaction, &positions).await?;
            let mut users: Vec<String> = all.iter().map(|c| c.user_id.clone()).collect();
            users.sort_unstable();
            users.dedup();
            let rooms = device_lists::joined_rooms_of_users(&transaction, &users).await?;
            transaction.commit().await?;
            Ok::<_, crate::storage::StorageError>(rooms_by_user(rooms))
        }
        .await;
        let rooms = match stored {
            Ok(rooms) => rooms,
            Err(error) => {
                self.writer.abandon(&positions);
                return Err(error);
            }
        };
        self.changes_stored += all.len() as u64;
        self.writer.finish(
            all.iter()
                .map(|change| {
                    let rooms = rooms.get(&change.user_id).map(Vec::as_slice).unwrap_or(&[]);
                    (change.stream_id, device_lists_row(change, rooms))
                })
                .collect(),
        );
        Ok(planned
            .iter()
            .map(|changes| DeviceChangesRecorded {
                instance: instance.clone(),
                position: changes.iter().map(|c| c.stream_id).max(),
            })
            .collect())
    }
}

impl Actor for DeviceListsWriter {
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
        snapshot.insert("changes_stored".into(), json!(self.changes_stored));
        snapshot.insert("writes_failed".into(), json!(self.writes_failed));
        Value::Object(snapshot)
    }
}

impl Handler<RecordDeviceChanges> for DeviceListsWriter {
    /// Changes that queue up while a transaction commits go into the next one.
    const BATCH_LIMIT: usize = 100;

    async fn handle(
        &mut self,
        msg: RecordDeviceChanges,
        _ctx: &mut Context,
    ) -> Result<Result<DeviceChangesRecorded, WriteError>, String> {
        Ok(super::sole_answer(self.record(vec![msg]).await))
    }

    async fn handle_batch(
        &mut self,
        msgs: Vec<RecordDeviceChanges>,
        _ctx: &mut Context,
    ) -> Vec<Result<Result<DeviceChangesRecorded, WriteError>, String>> {
        self.record(msgs).await.into_iter().map(Ok).collect()
    }
}
