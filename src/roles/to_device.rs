//! The `to_device` role: the writers of the to-device stream, one per
//! instance `stream_writers.to_device` lists, sharded by the receiving
//! user. A [`ToDeviceWriter`] stores its part of a `PUT /sendToDevice`
//! ([`SendToDevice`]: the messages to the users it owns), expanding `*` to
//! every device the user has at that moment and skipping devices and users
//! that do not exist (as Synapse does). What queued in its inbox is
//! committed in one transaction. Each part is recorded with its
//! transaction id in that transaction, so a part delivered twice (a
//! client's retry after another part failed, a redelivered mailbox
//! message) stores nothing the second time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::Arc;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler};
use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use crate::streams::to_device::TO_DEVICE_STREAM;

use super::WriteError;
use super::{ActorStart, StartedActor};
use crate::shards::ShardMap;
use crate::storage::to_device::{self, InboxMessage};
use crate::storage::{StorageError, StorageResult};
use crate::streams::to_device::to_device_row;
use crate::streams::writer::StreamWriter;

/// The device id that means every device of the user.
pub const ALL_DEVICES: &str = "*";

/// Deliveries of the writer's mailbox endpoint handled at once.
const REMOTE_WRITER_CONCURRENCY: usize = 64;

/// Starts this instance's to-device writer (a row of the role table).
pub fn start(start: &ActorStart) -> Result<StartedActor, String> {
    let writer = start
        .streams
        .writer(TO_DEVICE_STREAM)
        .cloned()
        .ok_or("the to_device stream has no writer here")?;
    let pool = start.pool.clone();
    let shards = start
        .mailboxes
        .shard_map(TO_DEVICE_STREAM)
        .cloned()
        .ok_or("the stream has no shard map")?;
    let addr = start
        .supervisor
        .start("to_device_writer", move || {
            ToDeviceWriter::new(pool.clone(), writer.clone(), shards.clone())
        })
        .map_err(|e| e.to_string())?;
    start.mailboxes.register(addr.mailbox::<SendToDevice>());
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<SendToDevice>())
                .concurrency(REMOTE_WRITER_CONCURRENCY)
        }),
    })
}

/// Store the messages of one send to the users this writer owns. The
/// request was checked where it entered the server (sizes, shapes).
/// Delivered twice, it stores once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendToDevice {
    pub sender: OwnedUserId,
    /// The sending device: with `txn_id`, what makes the send idempotent.
    pub sender_device: String,
    pub txn_id: String,
    /// The event type.
    pub kind: String,
    /// Receiving user → device id (or [`ALL_DEVICES`]) → content.
    pub messages: BTreeMap<OwnedUserId, BTreeMap<String, Map<String, Value>>>,
}

/// What a writer stored of a send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToDeviceWritten {
    /// The writer that stored it.
    pub instance: String,
    /// Its position in the to-device stream; None when nothing was stored
    /// (no such devices, or stored before).
    pub position: Option<i64>,
}

impl lattice_actors::RemoteMessage for SendToDevice {
    type Reply = Result<ToDeviceWritten, WriteError>;
    const WIRE_NAME: &'static str = "to_device.send.v1";
}

/// The `(device, content)` messages of `by_device` for `user_id`, whose
/// devices are `devices`: `*` means every one of them (and then the other
/// entries are ignored, as in Synapse); a device that does not exist is
/// skipped.
fn expand<'a>(
    by_device: &'a BTreeMap<String, Map<String, Value>>,
    devices: &'a BTreeSet<String>,
) -> Vec<(&'a str, &'a Map<String, Value>)> {
    if let Some(content) = by_device.get(ALL_DEVICES) {
        return devices
            .iter()
            .map(|device| (device.as_str(), content))
            .collect();
    }
    by_device
        .iter()
        .filter(|(device, _)| devices.contains(*device))
        .map(|(device, content)| (device.as_str(), content))
        .collect()
}

/// One message of a request: receiving user, device, content.
type Message<'a> = (String, &'a str, &'a Map<String, Value>);

pub struct ToDeviceWriter {
    pool: Pool,
    /// Which users' shards this writer holds: it writes only theirs.
    shards: Arc<ShardMap>,
    /// The to-device stream's writing end.
    writer: StreamWriter,
    sends_stored: u64,
    sends_repeated: u64,
    messages_stored: u64,
    writes_failed: u64,
}

impl ToDeviceWriter {
    pub fn new(pool: Pool, writer: StreamWriter, shards: Arc<ShardMap>) -> ToDeviceWriter {
        ToDeviceWriter {
            pool,
            shards,
            writer,
            sends_stored: 0,
            sends_repeated: 0,
            messages_stored: 0,
            writes_failed: 0,
        }
    }

    /// Commits `requests` in one transaction; each gets its own answer.
    async fn send(
        &mut self,
        requests: Vec<SendToDevice>,
    ) -> Vec<Result<ToDeviceWritten, WriteError>> {
        let shards = self.shards.clone();
        super::owned_only(
            &shards,
            requests,
            |request| {
                request
                    .messages
                    .keys()
                    .map(|user| user.to_string())
                    .collect()
            },
            |kept| async {
                let count = kept.len();
                match self.send_in_transaction(kept).await {
                    Ok(answers) => answers.into_iter().map(Ok).collect(),
                    Err(error) => {
                        if !matches!(error, crate::storage::StorageError::Fenced { .. }) {
                            self.writes_failed += 1;
                        }
                        vec![Err(WriteError::from_storage(error, "the to-device messages")); count]
                    }
                }
            },
        )
        .await
    }

    async fn send_in_transaction(
        &mut self,
        requests: Vec<SendToDevice>,
    ) -> StorageResult<Vec<ToDeviceWritten>> {
        let instance = self.writer.instance().to_owned();
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let receivers: Vec<String> = requests
            .iter()
            .flat_map(|r| r.messages.keys().map(ToString::to_string))
            .collect();
        self.shards
            .fence(&transaction, receivers.iter().map(String::as_str))
            .await?;
        // Per request, the receivers whose part was not stored before, by
        // this writer or by one that owned them before (a second request
        // of the same send in this batch finds the first one's records).
        let mut fresh: Vec<BTreeSet<String>> = Vec::with_capacity(requests.len());
        for request in &requests {
            let receivers: Vec<&str> = request.messages.keys().map(|user| user.as_str()).collect();
            let recorded: BTreeSet<String> = to_device::record_txn_parts(
                &transaction,
                request.sender.as_str(),
                &request.sender_device,
                &request.txn_id,
                &receivers,
            )
            .await?
            .into_iter()
            .collect();
            if recorded.len() < receivers.len() {
                self.sends_repeated += 1;
            }
            fresh.push(recorded);
        }
        let users: Vec<String> = requests
            .iter()
            .zip(&fresh)
            .flat_map(|(request, fresh)| {
                request
                    .messages
                    .keys()
                    .map(|user| user.to_string())
                    .filter(|user| fresh.contains(user))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut devices: HashMap<String, BTreeSet<String>> = HashMap::new();
        if !users.is_empty() {
            for (user_id, device_id) in to_device::devices_of(&transaction, &users).await? {
                devices.entry(user_id).or_default().insert(device_id);
            }
        }
        let no_devices = BTreeSet::new();
        // Per request, its messages (user, device, content), when it has any.
        let mut per_request: Vec<Vec<Message<'_>>> = Vec::with_capacity(requests.len());
        for (request, fresh) in requests.iter().zip(&fresh) {
            let mut messages = Vec::new();
            for (user_id, by_device) in &request.messages {
                if fresh.contains(user_id.as_str()) {
                    let user_devices = devices.get(user_id.as_str()).unwrap_or(&no_devices);
                    for (device_id, content) in expand(by_device, user_devices) {
                        messages.push((user_id.to_string(), device_id, content));
                    }
                }
            }
            per_request.push(messages);
        }
        let needed = per_request.iter().filter(|m| !m.is_empty()).count();
        if needed == 0 {
            transaction.commit().await?;
            return Ok(vec![self.stored(None); requests.len()]);
        }
        let positions = self.writer.allocate(&transaction, needed).await?;
        let mut next = positions.iter().copied();
        let mut inbox = Vec::new();
        // Per request, its position and the users it reached.
        let mut written: Vec<Option<(i64, Vec<String>)>> = Vec::with_capacity(requests.len());
        for (request, messages) in requests.iter().zip(&per_request) {
            let Some(position) = (!messages.is_empty()).then(|| next.next()).flatten() else {
                written.push(None);
                continue;
            };
            let mut reached = BTreeSet::new();
            for (user_id, device_id, content) in messages {
                reached.insert(user_id.clone());
                inbox.push(InboxMessage {
                    user_id: user_id.clone(),
                    device_id: (*device_id).to_owned(),
                    stream_id: position,
                    sender: request.sender.to_string(),
                    kind: request.kind.clone(),
                    content: Value::Object((*content).clone()),
                });
            }
            written.push(Some((position, reached.into_iter().collect())));
        }
        let result: StorageResult<()> = async {
            to_device::insert(&transaction, &instance, &inbox).await?;
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
        self.sends_stored += needed as u64;
        self.messages_stored += inbox.len() as u64;
        let keys = written
            .iter()
            .flatten()
            .flat_map(|(_, users)| users.iter().cloned())
            .collect();
        let rows: Vec<(i64, Value)> = written
            .iter()
            .flatten()
            .map(|(position, users)| (*position, to_device_row(users)))
            .collect();
        self.writer.finish_with_keys(&positions, keys, || rows);
        Ok(written
            .into_iter()
            .map(|part| self.stored(part.map(|(position, _)| position)))
            .collect())
    }

    fn stored(&self, position: Option<i64>) -> ToDeviceWritten {
        ToDeviceWritten {
            instance: self.writer.instance().to_owned(),
            position,
        }
    }
}

impl Actor for ToDeviceWriter {
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
        snapshot.insert("sends_stored".into(), json!(self.sends_stored));
        snapshot.insert("sends_repeated".into(), json!(self.sends_repeated));
        snapshot.insert("messages_stored".into(), json!(self.messages_stored));
        snapshot.insert("writes_failed".into(), json!(self.writes_failed));
        Value::Object(snapshot)
    }
}

impl Handler<SendToDevice> for ToDeviceWriter {
    /// Sends that queue up while a transaction commits go into the next one.
    const BATCH_LIMIT: usize = 100;

    async fn handle(
        &mut self,
        msg: SendToDevice,
        _ctx: &mut Context,
    ) -> Result<Result<ToDeviceWritten, WriteError>, String> {
        Ok(super::sole_answer(self.send(vec![msg]).await))
    }

    async fn handle_batch(
        &mut self,
        msgs: Vec<SendToDevice>,
        _ctx: &mut Context,
    ) -> Vec<Result<Result<ToDeviceWritten, WriteError>, String>> {
        self.send(msgs).await.into_iter().map(Ok).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(n: i64) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("n".into(), json!(n));
        map
    }

    #[test]
    fn a_star_reaches_every_device_and_unknown_devices_are_skipped() {
        let devices: BTreeSet<String> = ["A".to_owned(), "B".to_owned()].into();
        let by_device: BTreeMap<String, Map<String, Value>> =
            [("A".to_owned(), content(1)), ("Z".to_owned(), content(2))].into();
        let expanded: Vec<&str> = expand(&by_device, &devices)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(expanded, vec!["A"]);
        let star: BTreeMap<String, Map<String, Value>> =
            [("*".to_owned(), content(3)), ("A".to_owned(), content(4))].into();
        let expanded = expand(&star, &devices);
        assert_eq!(expanded, vec![("A", &content(3)), ("B", &content(3))]);
        assert!(expand(&star, &BTreeSet::new()).is_empty());
    }
}
