//! The rows a batch of new events writes, in one PostgreSQL transaction:
//! `events`, `state_groups`, `current_state`, `membership_history`,
//! `event_txn_ids`, push actions, the search index, redactions, relations and
//! the writer's stream position. What the events are (built and authorised)
//! is the persister's business; how they are stored is this module's.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use futures::future::BoxFuture;
use ruma::CanonicalJsonValue;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

use super::{Persisted, SendEvent, Transaction};
use crate::rooms::pdu::Pdu;
use crate::storage::relations;
use crate::storage::rooms::StoredEvent;
use crate::storage::search::SearchRows;
use crate::storage::{StorageError, StorageResult};
use crate::streams::events::EVENTS_STREAM;
use crate::streams::writer::StreamWriter;
use crate::util::now_ms;

/// One event ready to be written.
pub struct NewEvent {
    pub pdu: Arc<Pdu>,
    pub state_group: StateGroupChange,
    /// Stored with the event, so that the request is answered from storage
    /// when it comes again.
    pub txn: Option<Transaction>,
    /// The push actions evaluated for it, stored with it.
    pub push: Option<crate::push::evaluator::PushActions>,
}

impl NewEvent {
    /// The request this event was built from, to build it again on a new
    /// head (when the group commit it was in failed and is retried).
    pub fn into_request(self) -> SendEvent {
        let pdu = Arc::unwrap_or_clone(self.pdu);
        SendEvent {
            room_id: pdu.room_id,
            sender: pdu.sender,
            kind: pdu.kind,
            state_key: pdu.state_key,
            content: pdu.content,
            redacts: pdu.redacts,
            txn: self.txn,
            push: self.push,
        }
    }
}

pub enum StateGroupChange {
    /// A message: the state after it is the state before it.
    Unchanged(i64),
    /// A state event: a new group (its id is the event's stream ordering).
    New {
        prev_group: Option<i64>,
        chain_length: i32,
        delta: Vec<(String, String, String)>,
    },
}

/// The transaction of a batch: every row of every event, then the
/// writer's position in the events stream.
///
/// The statements every batch has (the fence, `events`, `event_txn_ids`,
/// push actions, the search index, relations, the position) go to
/// PostgreSQL together, without waiting for each other's answers
/// (tokio-postgres pipelines the requests of futures polled together), so
/// a batch costs the round trips of `BEGIN`, that group and `COMMIT`, not
/// one or two per statement. The rows of state events and redactions,
/// rare beside messages, follow one by one.
pub async fn commit(
    client: &mut deadpool_postgres::Object,
    writer: &StreamWriter,
    room: Option<RoomRow>,
    events: &[NewEvent],
    positions: &[i64],
    fence: &[(i32, i64)],
) -> StorageResult<(Vec<Persisted>, HashMap<String, i64>)> {
    let instance_name = writer.instance();
    let transaction = client.transaction().await?;
    if let Some(room) = &room {
        transaction
            .execute(
                "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts) VALUES ($1, $2, $3, $4, $5)",
                &[&room.room_id, &room.version, &room.creator, &room.is_public, &now_ms()],
            )
            .await?;
    }
    let mut rows = EventRows::default();
    let mut search = SearchRows::default();
    // The newest state group of each room, as the batch advances it.
    let mut current_groups: HashMap<String, i64> = HashMap::new();
    for (event, position) in events.iter().zip(positions) {
        let pdu = &event.pdu;
        let room_id = pdu.room_id.as_str();
        let state_group = match &event.state_group {
            StateGroupChange::Unchanged(group) => {
                current_groups.get(room_id).copied().unwrap_or(*group)
            }
            StateGroupChange::New {
                prev_group,
                chain_length,
                delta,
            } => {
                let prev_group =
                    prev_group.map(|p| current_groups.get(room_id).copied().unwrap_or(p));
                let delta: Vec<Value> = delta.iter().map(|(t, k, e)| json!([t, k, e])).collect();
                transaction
                    .execute(
                        "INSERT INTO state_groups (state_group, room_id, prev_group, chain_length, delta)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[position, &room_id, &prev_group, chain_length, &Value::Array(delta)],
                    )
                    .await?;
                *position
            }
        };
        current_groups.insert(room_id.to_owned(), state_group);
        rows.push(event, *position, state_group);
        search.push(
            *position,
            room_id,
            &pdu.kind,
            pdu.state_key.as_deref(),
            &pdu.content,
        );
    }
    let txns = TxnRows::of(events);
    let push: Vec<_> = events
        .iter()
        .zip(positions)
        .filter_map(|(e, p)| {
            let push = e.push.as_ref()?;
            Some((e.pdu.room_id.as_str(), e.pdu.event_id.as_str(), *p, push))
        })
        .collect();
    let pdus = events.iter().map(|event| event.pdu.as_ref());
    // A deposed owner must not commit (and a handover waits for us): the
    // fence's answer is read before `COMMIT`.
    let statements: Vec<BoxFuture<'_, StorageResult<()>>> = vec![
        Box::pin(crate::storage::shards::fence(
            &transaction,
            EVENTS_STREAM,
            instance_name,
            fence,
        )),
        Box::pin(insert_events(&transaction, instance_name, &rows)),
        Box::pin(insert_txn_ids(&transaction, &txns)),
        Box::pin(crate::storage::push_actions::insert(&transaction, &push)),
        Box::pin(crate::storage::search::index(&transaction, &search)),
        Box::pin(relations::store(
            &transaction,
            pdus.zip(positions.iter().copied()),
        )),
        Box::pin(writer.store_position(&transaction, positions)),
    ];
    first_failure(futures::future::join_all(statements).await)?;
    let mut persisted = Vec::with_capacity(events.len());
    for (event, position) in events.iter().zip(positions) {
        let pdu = &event.pdu;
        let room_id = pdu.room_id.as_str();
        if let Some(state_key) = &pdu.state_key {
            let membership = (pdu.kind == "m.room.member")
                .then(|| {
                    pdu.content
                        .get("membership")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .flatten();
            transaction
                .execute(
                    "INSERT INTO current_state (room_id, type, state_key, event_id, stream_ordering, membership)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (room_id, type, state_key) DO UPDATE SET
                       event_id = EXCLUDED.event_id, stream_ordering = EXCLUDED.stream_ordering,
                       membership = EXCLUDED.membership",
                    &[&room_id, &pdu.kind, state_key, &pdu.event_id.as_str(), position, &membership],
                )
                .await?;
            if let Some(membership) = &membership {
                transaction
                    .execute(
                        "INSERT INTO membership_history (stream_ordering, room_id, user_id, membership, event_id)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[position, &room_id, state_key, membership, &pdu.event_id.as_str()],
                    )
                    .await?;
                // A new membership un-forgets the room (as in Synapse),
                // in the same transaction so no reader sees one without the other.
                transaction
                    .execute(
                        "DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2",
                        &[state_key, &room_id],
                    )
                    .await?;
            }
        }
        if let Some(redacts) = &pdu.redacts {
            transaction
                .execute(
                    "UPDATE events SET redacted_by = $1 WHERE event_id = $2 AND room_id = $3 AND redacted_by IS NULL",
                    &[&pdu.event_id.as_str(), &redacts.as_str(), &room_id],
                )
                .await?;
        }
        persisted.push(Persisted {
            event_id: pdu.event_id.clone(),
            room_id: pdu.room_id.clone(),
            instance: instance_name.to_owned(),
            stream_ordering: *position,
        });
    }
    transaction.commit().await?;
    Ok((persisted, current_groups))
}

/// The outcome of statements sent together: the first that failed, in the
/// order they were sent. Once one fails PostgreSQL refuses the rest of the
/// transaction ("current transaction is aborted"): that answer only says
/// another went wrong first, so it is reported only if nothing else is.
fn first_failure(results: Vec<StorageResult<()>>) -> StorageResult<()> {
    let mut aborted = None;
    for result in results {
        match result {
            Ok(()) => {}
            Err(StorageError::Postgres(error))
                if error.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) =>
            {
                aborted.get_or_insert(StorageError::Postgres(error));
            }
            Err(error) => return Err(error),
        }
    }
    aborted.map_or(Ok(()), Err)
}

/// The batch's `events` rows, in one statement.
async fn insert_events(
    client: &impl GenericClient,
    instance_name: &str,
    rows: &EventRows<'_>,
) -> StorageResult<()> {
    let statement = client
        .prepare_cached(
            "INSERT INTO events (stream_ordering, event_id, room_id, instance_name, depth, sender, type,
                state_key, origin_server_ts, state_group, pdu, txn_device_id, txn_id)
             SELECT r.stream_ordering, r.event_id, r.room_id, $4, r.depth, r.sender, r.type,
                r.state_key, r.origin_server_ts, r.state_group, r.pdu, r.txn_device_id, r.txn_id
             FROM unnest($1::bigint[], $2::text[], $3::text[], $5::bigint[], $6::text[], $7::text[],
                $8::text[], $9::bigint[], $10::bigint[], $11::jsonb[], $12::text[], $13::text[])
               AS r (stream_ordering, event_id, room_id, depth, sender, type,
                state_key, origin_server_ts, state_group, pdu, txn_device_id, txn_id)",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &rows.stream_ordering,
                &rows.event_id,
                &rows.room_id,
                &instance_name,
                &rows.depth,
                &rows.sender,
                &rows.kind,
                &rows.state_key,
                &rows.origin_server_ts,
                &rows.state_group,
                &rows.pdu,
                &rows.txn_device_id,
                &rows.txn_id,
            ],
        )
        .await?;
    Ok(())
}

/// The batch's transaction ids, in one statement. One already stored means
/// its request came again: the batch fails with [`StorageError::TxnSeen`]
/// (the persister does not look them up before writing, since they are
/// nearly always new) and is written again without the repeated requests.
async fn insert_txn_ids(client: &impl GenericClient, txns: &TxnRows<'_>) -> StorageResult<()> {
    if txns.txn_id.is_empty() {
        return Ok(());
    }
    let statement = client
        .prepare_cached(
            "INSERT INTO event_txn_ids (user_id, device_id, endpoint, room_id, txn_id, event_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let inserted = client
        .execute(
            &statement,
            &[
                &txns.user_id,
                &txns.device_id,
                &txns.endpoint,
                &txns.room_id,
                &txns.txn_id,
                &txns.event_id,
            ],
        )
        .await?;
    if inserted < txns.txn_id.len() as u64 {
        return Err(StorageError::TxnSeen);
    }
    Ok(())
}

/// A just-committed event as the database now holds it (not redacted: a
/// redaction only ever applies to events already stored).
pub fn stored_event(event: &NewEvent, position: i64) -> StoredEvent {
    let pdu = &event.pdu;
    let (txn_device_id, txn_id) = match &event.txn {
        Some(txn) if txn.is_client() => (Some(txn.device_id.clone()), Some(txn.txn_id.clone())),
        _ => (None, None),
    };
    StoredEvent {
        stream_ordering: position,
        event_id: pdu.event_id.to_string(),
        room_id: pdu.room_id.to_string(),
        depth: pdu.depth as i64,
        sender: pdu.sender.to_string(),
        kind: pdu.kind.clone(),
        state_key: pdu.state_key.clone(),
        origin_server_ts: pdu.origin_server_ts as i64,
        pdu: Arc::new(Value::from(CanonicalJsonValue::Object(pdu.json.clone()))),
        redacted_by: None,
        txn_device_id,
        txn_id,
    }
}

/// The columns of a batch's `events` rows, as arrays for one `unnest` insert.
#[derive(Default)]
struct EventRows<'a> {
    stream_ordering: Vec<i64>,
    event_id: Vec<&'a str>,
    room_id: Vec<&'a str>,
    depth: Vec<i64>,
    sender: Vec<&'a str>,
    kind: Vec<&'a str>,
    state_key: Vec<Option<&'a str>>,
    origin_server_ts: Vec<i64>,
    state_group: Vec<i64>,
    pdu: Vec<Value>,
    txn_device_id: Vec<Option<&'a str>>,
    txn_id: Vec<Option<&'a str>>,
}

impl<'a> EventRows<'a> {
    fn push(&mut self, event: &'a NewEvent, position: i64, state_group: i64) {
        let pdu = &event.pdu;
        self.stream_ordering.push(position);
        self.event_id.push(pdu.event_id.as_str());
        self.room_id.push(pdu.room_id.as_str());
        self.depth.push(pdu.depth as i64);
        self.sender.push(pdu.sender.as_str());
        self.kind.push(&pdu.kind);
        self.state_key.push(pdu.state_key.as_deref());
        self.origin_server_ts.push(pdu.origin_server_ts as i64);
        self.state_group.push(state_group);
        self.pdu
            .push(Value::from(CanonicalJsonValue::Object(pdu.json.clone())));
        // Only a client's own transaction id is shown back to it (`/sync`'s
        // `unsigned.transaction_id`), not a request id the server made.
        let (device, txn) = match &event.txn {
            Some(txn) if txn.is_client() => {
                (Some(txn.device_id.as_str()), Some(txn.txn_id.as_str()))
            }
            _ => (None, None),
        };
        self.txn_device_id.push(device);
        self.txn_id.push(txn);
    }
}

/// The `event_txn_ids` rows of a batch, as arrays for one `unnest` insert.
#[derive(Default)]
struct TxnRows<'a> {
    user_id: Vec<&'a str>,
    device_id: Vec<&'a str>,
    endpoint: Vec<&'static str>,
    room_id: Vec<&'a str>,
    txn_id: Vec<&'a str>,
    event_id: Vec<&'a str>,
}

impl<'a> TxnRows<'a> {
    fn of(events: &'a [NewEvent]) -> TxnRows<'a> {
        let mut rows = TxnRows::default();
        for event in events {
            let Some(txn) = &event.txn else { continue };
            rows.user_id.push(event.pdu.sender.as_str());
            rows.device_id.push(&txn.device_id);
            rows.endpoint.push(txn.endpoint.as_str());
            rows.room_id.push(if txn.is_client() {
                event.pdu.room_id.as_str()
            } else {
                ""
            });
            rows.txn_id.push(&txn.txn_id);
            rows.event_id.push(event.pdu.event_id.as_str());
        }
        rows
    }
}

pub struct RoomRow {
    pub room_id: String,
    pub version: String,
    pub creator: String,
    pub is_public: bool,
}
