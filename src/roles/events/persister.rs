//! The event persister: builds each event on top of its room's head
//! (`heads`), signs it, checks the auth rules against the room's current
//! state and what else a sender may do (`authorization`), and commits a
//! batch of events in one PostgreSQL transaction (`rows`). Then it advances
//! the events stream and wakes the long-polls that care.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler};
use ruma::{
    signatures::Ed25519KeyPair, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName,
    OwnedUserId, RoomId, RoomVersionId,
};
use serde_json::{json, Value};

use super::authorization::{self, Redaction, ROOM_REDACTION};
use super::heads::{snapshot_due, RoomHead, RoomHeads};
use super::rows::{self, stored_event, NewEvent, RoomRow, StateGroupChange};
use super::{CreateRoom, Persisted, SendEvent, Transaction};
use crate::caches::RecentEventsCache;
use crate::push::recent::{RecentPushActions, RowActions};
use crate::roles::WriteError;
use crate::rooms::pdu::{self, Pdu, PduError, ProtoEvent};
use crate::rooms::version::parse_supported;
use crate::shards::{shard_of, ShardMap, OWNERSHIP_REFRESH_WAIT};
use crate::storage::rooms::{self as stored_rooms, StoredEvent};
use crate::storage::{StorageError, StorageResult};
use crate::streams::events::EVENTS_STREAM;
use crate::streams::events::{event_row, relation_parent, row_keys};
use crate::streams::writer::StreamWriter;
use crate::util::{now_ms, random_string};

/// The largest PDU the spec allows, in bytes of canonical JSON.
const MAX_PDU_BYTES: usize = 65_536;

/// A transaction id in its full scope: (user, device, endpoint, room, id).
/// Request ids made by the server are unique alone: their room is empty,
/// as for `createRoom`, whose room is not known before it is created.
type TxnKey = (String, String, &'static str, String, String);

/// The full scope of `request`'s transaction id, if it has one.
fn request_key(request: &SendEvent) -> Option<TxnKey> {
    let txn = request.txn.as_ref()?;
    Some(txn_key(
        request.sender.as_str(),
        request.room_id.as_str(),
        txn,
    ))
}

fn txn_key(sender: &str, room_id: &str, txn: &Transaction) -> TxnKey {
    let room_id = if txn.is_client() { room_id } else { "" };
    (
        sender.to_owned(),
        txn.device_id.clone(),
        txn.endpoint.as_str(),
        room_id.to_owned(),
        txn.txn_id.clone(),
    )
}

pub struct EventPersister {
    pool: Pool,
    server_name: OwnedServerName,
    key_pair: Ed25519KeyPair,
    rooms: RoomHeads,
    /// This process's view of the events stream (DESIGN §3), shared with the
    /// replication reader; reloaded when an incarnation starts.
    /// The events stream's writing end: positions, wake-ups, replication.
    writer: StreamWriter,
    /// This instance's recent events of each room, given each committed
    /// event before it is announced.
    recent_events: Arc<RecentEventsCache>,
    /// Given each committed event's push actions before it is announced.
    recent_push: Arc<RecentPushActions>,
    events_persisted: u64,
    writes_failed: u64,
    /// Group commits the database refused and that were committed apart.
    groups_split: u64,
    /// Which rooms' shards this writer owns, and at which epochs
    /// (`crate::shards`): it writes only those, fenced at those epochs.
    shards: Arc<ShardMap>,
    /// Sends refused because their room's shard was not owned here.
    not_owner: u64,
}

impl EventPersister {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        server_name: OwnedServerName,
        key_pair: Ed25519KeyPair,
        writer: StreamWriter,
        recent_events: Arc<RecentEventsCache>,
        recent_push: Arc<RecentPushActions>,
        cached_rooms: usize,
        shards: Arc<ShardMap>,
    ) -> EventPersister {
        EventPersister {
            pool,
            server_name,
            key_pair,
            rooms: RoomHeads::new(cached_rooms),
            writer,
            recent_events,
            recent_push,
            events_persisted: 0,
            writes_failed: 0,
            groups_split: 0,
            shards,
            not_owner: 0,
        }
    }

    /// Answers `NotOwner` to the requests whose room's shard is not owned
    /// here and keeps the others. A writer that was just given a shard may
    /// not have read so yet: it reads the table once before refusing.
    async fn keep_owned(
        &mut self,
        requests: Vec<(usize, SendEvent)>,
        answers: &mut [Option<Result<Persisted, WriteError>>],
    ) -> Vec<(usize, SendEvent)> {
        let held = |map: &ShardMap, request: &SendEvent| {
            map.held_here(shard_of(request.room_id.as_str())).is_some()
        };
        if requests
            .iter()
            .any(|(_, request)| !held(&self.shards, request))
        {
            self.shards.refresh(OWNERSHIP_REFRESH_WAIT).await;
        }
        let mut kept = Vec::with_capacity(requests.len());
        for (index, request) in requests {
            if held(&self.shards, &request) {
                kept.push((index, request));
            } else {
                self.not_owner += 1;
                answers[index] = Some(Err(WriteError::NotOwner(shard_of(
                    request.room_id.as_str(),
                ))));
            }
        }
        kept
    }

    /// The (shard, epoch) of every room `events` write that is held here,
    /// for the transaction's fence; fails for a room whose shard is not
    /// (a new room, created here whatever its shard, is not fenced).
    fn fence_for(
        &self,
        events: &[NewEvent],
        new_room: Option<&str>,
    ) -> StorageResult<Vec<(i32, i64)>> {
        let mut fence: Vec<(i32, i64)> = Vec::new();
        for event in events {
            let room_id = event.pdu.room_id.as_str();
            if new_room == Some(room_id) {
                continue;
            }
            let shard = shard_of(room_id);
            match self.shards.held_here(shard) {
                Some(epoch) => {
                    if !fence.contains(&(shard, epoch)) {
                        fence.push((shard, epoch));
                    }
                }
                None => {
                    return Err(StorageError::Fenced {
                        kind: EVENTS_STREAM.to_owned(),
                        shard,
                    })
                }
            }
        }
        fence.sort_unstable();
        Ok(fence)
    }

    /// Persists a batch of sends in one transaction (group commit). Each
    /// request gets its own answer: one refused by the auth rules, or one
    /// the database refuses, does not hold back the others.
    async fn send_events(
        &mut self,
        requests: Vec<SendEvent>,
    ) -> Vec<Result<Persisted, WriteError>> {
        let mut answers: Vec<Option<Result<Persisted, WriteError>>> = vec![None; requests.len()];
        // Input PostgreSQL would refuse must not reach the batch's transaction,
        // where it would fail everyone else's events with it.
        let requests: Vec<(usize, SendEvent)> = requests
            .into_iter()
            .enumerate()
            .filter_map(|(index, request)| match validate_send(&request) {
                Ok(()) => Some((index, request)),
                Err(error) => {
                    answers[index] = Some(Err(error));
                    None
                }
            })
            .collect();
        // A transaction id seen earlier in this batch: answer as the first.
        // One stored earlier is found by the batch's transaction (`TxnSeen`).
        let mut first_with_txn: HashMap<TxnKey, usize> = HashMap::new();
        let mut duplicates: Vec<(usize, usize)> = Vec::new();
        let mut to_write = Vec::with_capacity(requests.len());
        for (index, request) in requests {
            if let Some(key) = request_key(&request) {
                if let Some(first) = first_with_txn.get(&key) {
                    duplicates.push((index, *first));
                    continue;
                }
                first_with_txn.insert(key, index);
            }
            to_write.push((index, request));
        }
        let to_write = self.keep_owned(to_write, &mut answers).await;
        self.persist_apart_on_failure(to_write, &mut answers).await;
        for (index, first) in duplicates {
            answers[index] = answers[first].clone();
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(WriteError::not_answered())))
            .collect()
    }

    /// Builds and commits `requests` in one transaction. When the database
    /// refuses that transaction, the heads it advanced are forgotten and its
    /// requests are built again and committed in two halves, and so on down
    /// to the one at fault: only that request gets the error, the others
    /// are answered as if it had not been there. An error that is not the
    /// database refusing what it was given (the pool, the connection) fails
    /// the whole group: retrying cannot help.
    async fn persist_apart_on_failure(
        &mut self,
        requests: Vec<(usize, SendEvent)>,
        answers: &mut [Option<Result<Persisted, WriteError>>],
    ) {
        // Groups still to commit, the next one last: halves keep their order,
        // so the events of one room are still built in the order sent. A
        // group whose transaction ids were looked up after it met one
        // already stored is marked, so that a second meeting ends it.
        let mut groups = vec![(requests, false)];
        while let Some((group, looked_up)) = groups.pop() {
            let mut events = Vec::with_capacity(group.len());
            let mut indexes = Vec::with_capacity(group.len());
            for (index, request) in group {
                match self.build_send(request).await {
                    Ok(event) => {
                        events.push(event);
                        indexes.push(index);
                    }
                    Err(error) => answers[index] = Some(Err(error)),
                }
            }
            if events.is_empty() {
                continue;
            }
            let rooms: Vec<String> = events.iter().map(|e| e.pdu.room_id.to_string()).collect();
            match self.write(None, &events).await {
                Ok(persisted) => {
                    for (index, persisted) in indexes.into_iter().zip(persisted) {
                        answers[index] = Some(Ok(persisted));
                    }
                }
                Err(StorageError::TxnSeen) if !looked_up => {
                    self.forget_heads(&rooms);
                    let requests = indexes
                        .into_iter()
                        .zip(events)
                        .map(|(index, event)| (index, event.into_request()))
                        .collect();
                    let rest = self.answer_repeated(requests, answers).await;
                    if !rest.is_empty() {
                        groups.push((rest, true));
                    }
                }
                Err(error) if events.len() > 1 && refused_by_database(&error) => {
                    self.groups_split += 1;
                    tracing::warn!(error = %error, events = events.len(), "group commit refused; committing its requests apart");
                    self.forget_heads(&rooms);
                    let mut first: Vec<(usize, SendEvent)> = indexes
                        .into_iter()
                        .zip(events)
                        .map(|(index, event)| (index, event.into_request()))
                        .collect();
                    let second = first.split_off(first.len() / 2);
                    groups.push((second, looked_up));
                    groups.push((first, looked_up));
                }
                Err(error) => {
                    let error = self.write_failed(&rooms, error);
                    for index in indexes {
                        answers[index] = Some(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Answers the requests whose transaction id is stored (they came
    /// again) with what they wrote the first time, and gives back the
    /// others, still to be written. When the lookup fails, every request
    /// gets its error and none is given back.
    async fn answer_repeated(
        &self,
        requests: Vec<(usize, SendEvent)>,
        answers: &mut [Option<Result<Persisted, WriteError>>],
    ) -> Vec<(usize, SendEvent)> {
        let keys: Vec<TxnKey> = requests
            .iter()
            .filter_map(|(_, request)| request_key(request))
            .collect();
        let sent = match self.already_sent(keys.iter()).await {
            Ok(sent) => sent,
            Err(error) => {
                for (index, _) in requests {
                    answers[index] = Some(Err(error.clone()));
                }
                return Vec::new();
            }
        };
        let mut rest = Vec::with_capacity(requests.len());
        for (index, request) in requests {
            match request_key(&request).and_then(|key| sent.get(&key)) {
                Some(persisted) => answers[index] = Some(Ok(persisted.clone())),
                None => rest.push((index, request)),
            }
        }
        rest
    }

    async fn build_send(&mut self, mut request: SendEvent) -> Result<NewEvent, WriteError> {
        self.load_room(&request.room_id).await?;
        let push = request.push.take();
        let redaction = self
            .redaction(&request.kind, request.redacts, &request.content)
            .await?;
        self.build(
            &request.room_id,
            request.sender,
            request.kind,
            request.state_key,
            request.content,
            redaction,
            request.txn,
        )
        .map(|event| NewEvent { push, ..event })
    }

    /// For a redaction, the event it names as this server knows it (the
    /// one database read an event may need before it is built; ordinary
    /// events need none).
    async fn redaction(
        &self,
        kind: &str,
        redacts: Option<OwnedEventId>,
        content: &Value,
    ) -> Result<Option<Redaction>, WriteError> {
        if kind != ROOM_REDACTION {
            if redacts.is_some() {
                return Err(WriteError::BadJson(
                    "`redacts` is only valid on m.room.redaction".into(),
                ));
            }
            return Ok(None);
        }
        let target_id = authorization::redacted_event_id(redacts, content)?;
        let target = stored_rooms::event_origin(&self.pool, target_id.as_str())
            .await
            .map_err(storage_error)?;
        Ok(Some(Redaction { target_id, target }))
    }

    /// Creates a room. In room version 12 the room id is the hash of the
    /// create event, so two rooms created by one user with the same content
    /// in the same millisecond (on two writers) would have the same id: the
    /// second is built again, a millisecond later.
    async fn create_room(&mut self, request: CreateRoom) -> Result<Persisted, WriteError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.create_room_once(request.clone()).await {
                Err(RoomCreation::IdTaken(_)) if attempts < 5 => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(RoomCreation::IdTaken(error) | RoomCreation::Refused(error)) => {
                    return Err(error)
                }
                Ok(persisted) => return Ok(persisted),
            }
        }
    }

    async fn create_room_once(&mut self, request: CreateRoom) -> Result<Persisted, RoomCreation> {
        // A redelivered request is answered with the room it created.
        let txn = (!request.request_id.is_empty()).then(|| Transaction {
            device_id: String::new(),
            txn_id: request.request_id.clone(),
            endpoint: super::TxnEndpoint::Request,
        });
        let key = txn
            .as_ref()
            .map(|txn| txn_key(request.creator.as_str(), "", txn));
        if let Some(key) = &key {
            if let Some(persisted) = self.already_sent(std::iter::once(key)).await?.remove(key) {
                return Ok(persisted);
            }
        }
        let mut redactions = Vec::with_capacity(request.initial_events.len());
        for event in &request.initial_events {
            validate_event(
                &[event.sender.as_str()],
                &event.kind,
                event.state_key.as_deref(),
                &event.content,
            )?;
            redactions.push(self.redaction(&event.kind, None, &event.content).await?);
        }
        if json_contains_nul(&Value::Object(request.create_content.clone())) {
            return Err(nul_characters().into());
        }
        let version = parse_supported(request.room_version.as_str())
            .ok_or_else(|| WriteError::UnsupportedRoomVersion(request.room_version.to_string()))?;
        let mut create_content = request.create_content;
        create_content.insert("room_version".into(), json!(request.room_version));
        if version == RoomVersionId::V10 {
            create_content.insert("creator".into(), json!(request.creator));
        }
        // Before v12 the room id is random; in v12 it is derived from the create event.
        let room_id = match version {
            RoomVersionId::V10 | RoomVersionId::V11 => Some(
                RoomId::parse(format!("!{}:{}", random_string(18), self.server_name))
                    .map_err(|e| WriteError::Internal(format!("made a malformed room id: {e}")))?,
            ),
            _ => None,
        };
        let proto = ProtoEvent {
            room_id,
            sender: request.creator.clone(),
            kind: "m.room.create".into(),
            state_key: Some(String::new()),
            content: Value::Object(create_content),
            origin_server_ts: now_ms() as u64,
            prev_events: vec![],
            auth_events: vec![],
            depth: 1,
            redacts: None,
        };
        let create = Arc::new(
            pdu::build_and_sign(&version, &self.server_name, &self.key_pair, proto)
                .map_err(pdu_error)?,
        );
        pdu::check_auth(&version, &create, |_, _| None::<&Pdu>).map_err(pdu_error)?;
        let room_id = create.room_id.clone();
        let mut state = HashMap::new();
        state.insert(("m.room.create".to_owned(), String::new()), create.clone());
        let mut head = RoomHead::new(version.clone(), create.event_id.clone(), 1, 0, 0, state);
        head.lease_epoch = self.shards.held_here(shard_of(room_id.as_str()));
        self.rooms.insert(room_id.to_string(), head);
        let create_delta = vec![(
            "m.room.create".to_owned(),
            String::new(),
            create.event_id.to_string(),
        )];
        let mut events = vec![NewEvent {
            pdu: create,
            state_group: StateGroupChange::New {
                prev_group: None,
                chain_length: 0,
                delta: create_delta,
            },
            txn: None,
            push: None,
        }];
        for (initial, redaction) in request.initial_events.into_iter().zip(redactions) {
            let built = self.build(
                &room_id,
                initial.sender,
                initial.kind,
                initial.state_key,
                initial.content,
                redaction,
                None,
            );
            match built {
                Ok(event) => events.push(event),
                Err(error) => {
                    self.rooms.remove(room_id.as_str());
                    return Err(error.into());
                }
            }
        }
        let room_row = RoomRow {
            room_id: room_id.to_string(),
            version: request.room_version.to_string(),
            creator: request.creator.to_string(),
            is_public: request.is_public,
        };
        // The last event answers the request: it carries its id.
        if let Some(last) = events.last_mut() {
            last.txn = txn;
        }
        match self.write(Some(room_row), &events).await {
            Ok(mut persisted) => persisted
                .pop()
                .ok_or_else(|| WriteError::Internal("nothing persisted".into()).into()),
            Err(error) if room_id_taken(&error) => {
                self.forget_heads(&[room_id.to_string()]);
                Err(RoomCreation::IdTaken(WriteError::Internal(
                    "could not make a room id that is not taken".into(),
                )))
            }
            Err(StorageError::TxnSeen) => {
                // Delivered twice, to two writers at once (a shard moving):
                // the other one created it.
                self.forget_heads(&[room_id.to_string()]);
                let sent = match &key {
                    Some(key) => self.already_sent(std::iter::once(key)).await?.remove(key),
                    None => None,
                };
                sent.ok_or_else(|| RoomCreation::Refused(storage_error(StorageError::TxnSeen)))
            }
            Err(error) => Err(self.write_failed(&[room_id.to_string()], error).into()),
        }
    }

    /// Forgets the heads of `rooms` (in memory they ran ahead of the
    /// database) and turns the storage error into the client's answer.
    fn write_failed(&mut self, rooms: &[String], error: StorageError) -> WriteError {
        self.forget_heads(rooms);
        if let StorageError::Fenced { shard, .. } = error {
            // Deposed between the check and the commit: the new owner writes.
            self.not_owner += 1;
            self.shards.refresh_soon();
            return WriteError::NotOwner(shard);
        }
        self.writes_failed += 1;
        tracing::error!(error = %error, "persisting events failed");
        WriteError::Storage(format!("could not persist the event: {error}"))
    }

    /// Forgets the heads of `rooms`, which ran ahead of the database in
    /// memory: they are loaded again when next written.
    fn forget_heads(&mut self, rooms: &[String]) {
        for room_id in rooms {
            self.rooms.remove(room_id);
        }
    }

    /// The events already written with these transaction ids.
    async fn already_sent(
        &self,
        keys: impl Iterator<Item = &TxnKey>,
    ) -> Result<HashMap<TxnKey, Persisted>, WriteError> {
        let keys: Vec<&TxnKey> = keys.collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let column =
            |pick: fn(&TxnKey) -> &str| keys.iter().map(|k| pick(k)).collect::<Vec<&str>>();
        let client = self.pool.get().await.map_err(storage_error)?;
        let statement = client
            .prepare_cached(
                "SELECT q.i, e.event_id, e.room_id, e.stream_ordering, e.instance_name
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                   WITH ORDINALITY AS q (user_id, device_id, endpoint, room_id, txn_id, i)
                 JOIN event_txn_ids t USING (user_id, device_id, endpoint, room_id, txn_id)
                 JOIN events e ON e.event_id = t.event_id",
            )
            .await
            .map_err(|e| storage_error(StorageError::Postgres(e)))?;
        let rows = client
            .query(
                &statement,
                &[
                    &column(|k| &k.0),
                    &column(|k| &k.1),
                    &column(|k| k.2),
                    &column(|k| &k.3),
                    &column(|k| &k.4),
                ],
            )
            .await
            .map_err(|e| storage_error(StorageError::Postgres(e)))?;
        let mut sent = HashMap::with_capacity(rows.len());
        for row in &rows {
            let ordinal: i64 = row.get(0);
            let Some(key) = usize::try_from(ordinal - 1).ok().and_then(|i| keys.get(i)) else {
                continue;
            };
            let (Ok(event_id), Ok(room_id)) = (
                OwnedEventId::try_from(row.get::<_, String>(1)),
                OwnedRoomId::try_from(row.get::<_, String>(2)),
            ) else {
                return Err(storage_error(StorageError::Corrupt(
                    "a stored event with a malformed event or room id".into(),
                )));
            };
            let persisted = Persisted {
                event_id,
                room_id,
                stream_ordering: row.get(3),
                instance: row.get(4),
            };
            sent.insert((*key).clone(), persisted);
        }
        Ok(sent)
    }

    /// Loads the head of a room from the database unless it is cached.
    async fn load_room(&mut self, room_id: &RoomId) -> Result<(), WriteError> {
        let epoch = self.shards.held_here(shard_of(room_id.as_str()));
        match self.rooms.lease_epoch(room_id.as_str()) {
            Some(cached) if cached == epoch => return Ok(()),
            // Read under another epoch: another writer may have written since.
            Some(_) => self.rooms.remove(room_id.as_str()),
            None => {}
        }
        let client = self.pool.get().await.map_err(storage_error)?;
        let Some(room) = client
            .query_opt(
                "SELECT room_version FROM rooms WHERE room_id = $1",
                &[&room_id.as_str()],
            )
            .await
            .map_err(|e| storage_error(StorageError::Postgres(e)))?
        else {
            return Err(unknown_room());
        };
        let version_text: String = room.get(0);
        let version = parse_supported(&version_text)
            .ok_or(WriteError::UnsupportedRoomVersion(version_text))?;
        let latest = client
            .query_one(
                "SELECT e.event_id, e.depth, e.state_group, g.chain_length FROM events e
                 JOIN state_groups g ON g.state_group = e.state_group
                 WHERE e.room_id = $1 ORDER BY e.stream_ordering DESC LIMIT 1",
                &[&room_id.as_str()],
            )
            .await
            .map_err(|e| storage_error(StorageError::Postgres(e)))?;
        let latest_event_id: String = latest.get(0);
        let rows = client
            .query(
                "SELECT e.pdu FROM current_state c JOIN events e ON e.event_id = c.event_id WHERE c.room_id = $1",
                &[&room_id.as_str()],
            )
            .await
            .map_err(|e| storage_error(StorageError::Postgres(e)))?;
        let mut state = HashMap::new();
        for row in rows {
            let json: Value = row.get(0);
            let pdu = parse_stored_pdu(&version, json)
                .map_err(|e| storage_error(StorageError::Corrupt(e.to_string())))?;
            if let Some(state_key) = &pdu.state_key {
                state.insert((pdu.kind.clone(), state_key.clone()), Arc::new(pdu));
            }
        }
        let mut head = RoomHead::new(
            version,
            OwnedEventId::try_from(latest_event_id)
                .map_err(|e| storage_error(StorageError::Corrupt(e.to_string())))?,
            latest.get::<_, i64>(1) as u64,
            latest.get(2),
            latest.get(3),
            state,
        );
        head.lease_epoch = epoch;
        self.rooms.insert(room_id.to_string(), head);
        Ok(())
    }

    /// Builds, signs and authorises an event on top of the room's head, and
    /// advances the head in memory. Every event passes here, whichever
    /// endpoint it came through, so every check of what a sender may do is
    /// here too: the room version's auth rules, then [`authorization`].
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        room_id: &RoomId,
        sender: OwnedUserId,
        kind: String,
        state_key: Option<String>,
        content: Value,
        redaction: Option<Redaction>,
        txn: Option<Transaction>,
    ) -> Result<NewEvent, WriteError> {
        if !content.is_object() {
            return Err(WriteError::BadJson(
                "event content must be a JSON object".into(),
            ));
        }
        let redacts = redaction.as_ref().map(|r| r.target_id.clone());
        let head = self
            .rooms
            .get_mut(room_id.as_str())
            .ok_or_else(unknown_room)?;
        let auth_events = pdu::select_auth_events(
            &head.version,
            &kind,
            state_key.as_deref(),
            &sender,
            &content,
            |t, k| {
                head.state
                    .get(&(t.to_string(), k.to_owned()))
                    .map(|p| p.event_id.clone())
            },
        )
        .map_err(pdu_error)?;
        let proto = ProtoEvent {
            room_id: Some(room_id.to_owned()),
            sender,
            kind,
            state_key,
            content,
            origin_server_ts: now_ms() as u64,
            prev_events: vec![head.latest_event_id.clone()],
            auth_events,
            depth: head.depth + 1,
            redacts,
        };
        let pdu = pdu::build_and_sign(&head.version, &self.server_name, &self.key_pair, proto)
            .map_err(pdu_error)?;
        let size = ruma::canonical_json::to_canonical_value(&pdu.json)
            .map(|v| v.to_string().len())
            .unwrap_or(usize::MAX);
        if size > MAX_PDU_BYTES {
            return Err(WriteError::TooLarge);
        }
        pdu::check_auth(&head.version, &pdu, |t, k| head.state_event(t, k)).map_err(pdu_error)?;
        if let Some(redaction) = &redaction {
            let may_redact_others = head.may_redact_others(&pdu.sender)?;
            authorization::check_redaction(room_id, &pdu.sender, redaction, may_redact_others)?;
        }

        let pdu = Arc::new(pdu);
        head.latest_event_id = pdu.event_id.clone();
        head.depth = pdu.depth;
        let state_group = match &pdu.state_key {
            None => StateGroupChange::Unchanged(head.state_group),
            Some(state_key) => {
                head.state
                    .insert((pdu.kind.clone(), state_key.clone()), pdu.clone());
                if snapshot_due(head.chain_length, head.state.len()) {
                    head.chain_length = 0;
                    let delta = head
                        .state
                        .iter()
                        .map(|((t, k), p)| (t.clone(), k.clone(), p.event_id.to_string()))
                        .collect();
                    StateGroupChange::New {
                        prev_group: None,
                        chain_length: 0,
                        delta,
                    }
                } else {
                    head.chain_length += 1;
                    StateGroupChange::New {
                        prev_group: Some(head.state_group),
                        chain_length: head.chain_length,
                        delta: vec![(
                            pdu.kind.clone(),
                            state_key.clone(),
                            pdu.event_id.to_string(),
                        )],
                    }
                }
            }
        };
        Ok(NewEvent {
            pdu,
            state_group,
            txn,
            push: None,
        })
    }

    /// Commits `events` (all of one room, in order) and advances the stream.
    async fn write(
        &mut self,
        room: Option<RoomRow>,
        events: &[NewEvent],
    ) -> StorageResult<Vec<Persisted>> {
        let fence = self.fence_for(events, room.as_ref().map(|room| room.room_id.as_str()))?;
        let mut client = self.pool.get().await?;
        let positions = self.writer.allocate(&client, events.len()).await?;
        let result =
            rows::commit(&mut client, &self.writer, room, events, &positions, &fence).await;
        if result.is_err() {
            self.writer.abandon(&positions);
        }
        let (persisted, state_groups) = result?;
        for (room_id, group) in state_groups {
            if let Some(head) = self.rooms.get_mut(&room_id) {
                head.state_group = group;
            }
        }
        self.events_persisted += events.len() as u64;
        let keys: Vec<String> = events
            .iter()
            .flat_map(|event| {
                row_keys(
                    event.pdu.room_id.as_str(),
                    &event.pdu.kind,
                    event.pdu.state_key.as_deref(),
                    relation_parent(&event.pdu.content),
                )
            })
            .collect();
        let last = positions.iter().copied().max().unwrap_or(0);
        let stored: Vec<StoredEvent> = events
            .iter()
            .zip(&positions)
            .map(|(event, &position)| stored_event(event, position))
            .collect();
        let actions: Vec<RowActions> = events
            .iter()
            .map(|event| RowActions::of(event.push.as_ref()))
            .collect();
        for (event, actions) in stored.iter().zip(&actions) {
            self.recent_push
                .record(&event.room_id, event.stream_ordering, actions.clone());
        }
        self.recent_events
            .extend(self.writer.stream().notifier(), &stored, last);
        self.writer.finish_with_keys(&positions, keys, || {
            stored
                .iter()
                .zip(&actions)
                .map(|(event, actions)| (event.stream_ordering, event_row(event, actions)))
                .collect()
        });
        Ok(persisted)
    }
}

/// Why a room was not created.
enum RoomCreation {
    /// Another room already has the id this one would have had.
    IdTaken(WriteError),
    Refused(WriteError),
}

impl From<WriteError> for RoomCreation {
    fn from(error: WriteError) -> Self {
        RoomCreation::Refused(error)
    }
}

fn room_id_taken(error: &StorageError) -> bool {
    matches!(error, StorageError::Postgres(postgres)
    if postgres.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("rooms_pkey")
    }))
}

/// Parses a PDU as stored (its federation JSON).
pub fn parse_stored_pdu(version: &RoomVersionId, json: Value) -> Result<Pdu, PduError> {
    let CanonicalJsonValue::Object(object) = CanonicalJsonValue::try_from(json)? else {
        return Err(PduError::Invalid("stored PDU is not an object".into()));
    };
    Pdu::from_federation_json(version, object)
}

/// Refuses what the spec or PostgreSQL would not take: NUL characters
/// anywhere, and event types or state keys over 255 bytes.
fn validate_send(request: &SendEvent) -> Result<(), WriteError> {
    let mut texts = vec![request.room_id.as_str(), request.sender.as_str()];
    texts.extend(request.redacts.as_ref().map(|id| id.as_str()));
    if let Some(txn) = &request.txn {
        texts.push(&txn.device_id);
        texts.push(&txn.txn_id);
    }
    validate_event(
        &texts,
        &request.kind,
        request.state_key.as_deref(),
        &request.content,
    )
}

/// [`validate_send`] for what every event has, and `texts`, the other
/// strings it arrived with.
fn validate_event(
    texts: &[&str],
    kind: &str,
    state_key: Option<&str>,
    content: &Value,
) -> Result<(), WriteError> {
    let nul = |text: &str| text.contains('\0');
    if texts
        .iter()
        .copied()
        .chain([kind])
        .chain(state_key)
        .any(nul)
        || json_contains_nul(content)
    {
        return Err(nul_characters());
    }
    if kind.len() > 255 || state_key.is_some_and(|k| k.len() > 255) {
        return Err(WriteError::InvalidParam(
            "event types and state keys are at most 255 bytes".into(),
        ));
    }
    Ok(())
}

fn nul_characters() -> WriteError {
    WriteError::InvalidParam("text may not contain NUL characters".into())
}

fn unknown_room() -> WriteError {
    WriteError::NotFound("unknown room".into())
}

fn json_contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(json_contains_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| key.contains('\0') || json_contains_nul(value)),
        _ => false,
    }
}

fn pdu_error(error: PduError) -> WriteError {
    match error {
        PduError::Signing(ruma::signatures::JsonError::PduTooLarge) => WriteError::TooLarge,
        PduError::Auth(message) => WriteError::Forbidden(message),
        PduError::UnsupportedRoomVersion(version) => {
            WriteError::UnsupportedRoomVersion(version.to_string())
        }
        other => WriteError::BadJson(other.to_string()),
    }
}

/// Whether the database refused what it was given (a constraint, a value
/// out of range, an index row too large): the fault of some request in the
/// transaction, not of the connection or the pool.
fn refused_by_database(error: &StorageError) -> bool {
    matches!(error, StorageError::Postgres(postgres) if postgres.as_db_error().is_some())
}

fn storage_error(error: impl Into<StorageError>) -> WriteError {
    let error = error.into();
    if let StorageError::Postgres(postgres) = &error {
        use tokio_postgres::error::SqlState;
        if postgres.code() == Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE)
            || postgres.code() == Some(&SqlState::UNTRANSLATABLE_CHARACTER)
        {
            return nul_characters();
        }
    }
    tracing::error!(error = %error, "event persister storage error");
    WriteError::Storage(error.to_string())
}

impl Actor for EventPersister {
    async fn started(&mut self, _ctx: &mut Context) -> Result<(), String> {
        // A restarted incarnation may have lost track of rows written by
        // the one before it: reload heads lazily, and the position now.
        self.rooms.clear();
        self.writer
            .reload(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn observe(&self) -> Value {
        let mut snapshot = self.writer.observe();
        snapshot.insert("events_persisted".into(), json!(self.events_persisted));
        snapshot.insert("writes_failed".into(), json!(self.writes_failed));
        snapshot.insert("groups_split".into(), json!(self.groups_split));
        snapshot.insert("not_owner".into(), json!(self.not_owner));
        snapshot.insert("rooms_cached".into(), json!(self.rooms.len()));
        Value::Object(snapshot)
    }
}

impl Handler<SendEvent> for EventPersister {
    /// Sends that queue up while a transaction commits go into the next one.
    const BATCH_LIMIT: usize = 100;

    async fn handle(
        &mut self,
        msg: SendEvent,
        _ctx: &mut Context,
    ) -> Result<Result<Persisted, WriteError>, String> {
        let mut answers = self.send_events(vec![msg]).await;
        self.rooms.evict_beyond_capacity();
        Ok(answers
            .pop()
            .unwrap_or_else(|| Err(WriteError::not_answered())))
    }

    async fn handle_batch(
        &mut self,
        msgs: Vec<SendEvent>,
        _ctx: &mut Context,
    ) -> Vec<Result<Result<Persisted, WriteError>, String>> {
        let answers = self.send_events(msgs).await;
        self.rooms.evict_beyond_capacity();
        answers.into_iter().map(Ok).collect()
    }
}

impl Handler<CreateRoom> for EventPersister {
    async fn handle(
        &mut self,
        msg: CreateRoom,
        _ctx: &mut Context,
    ) -> Result<Result<Persisted, WriteError>, String> {
        let answer = self.create_room(msg).await;
        self.rooms.evict_beyond_capacity();
        Ok(answer)
    }
}
