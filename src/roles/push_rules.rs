//! The `push_rules` role: the writers of the push rules stream, one per
//! instance with the role, each writing the users whose shards it holds
//! (`crate::shards`). A
//! [`PushRulesWriter`] applies each change to the user's stored rules
//! (`push::rules::UserRules`) and stores them at a new stream position; a
//! change it refuses writes nothing. It commits what queued in its inbox in
//! one transaction.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler};
use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use crate::streams::push_rules::PUSH_RULES_STREAM;

use super::{ActorStart, StartedActor};
use crate::push::rules::{RuleChange, RuleError, UserRules};
use crate::shards::ShardMap;
use crate::storage::{push_rules as stored, StorageError, StorageResult};
use crate::streams::push_rules::push_rules_row;
use crate::streams::writer::StreamWriter;

/// Deliveries of the writer's mailbox endpoint handled at once.
const REMOTE_WRITER_CONCURRENCY: usize = 64;

/// Starts this instance's push rules writer (a row of the role table).
pub fn start(start: &ActorStart) -> Result<StartedActor, String> {
    let writer = start
        .streams
        .writer(PUSH_RULES_STREAM)
        .cloned()
        .ok_or("the push_rules stream has no writer here")?;
    let pool = start.pool.clone();
    let shards = start
        .mailboxes
        .shard_map(PUSH_RULES_STREAM)
        .cloned()
        .ok_or("the push_rules stream has no shard map")?;
    let addr = start
        .supervisor
        .start("push_rules_writer", move || {
            PushRulesWriter::new(pool.clone(), writer.clone(), shards.clone())
        })
        .map_err(|e| e.to_string())?;
    start.mailboxes.register(addr.mailbox::<ChangePushRules>());
    Ok(StartedActor {
        serve: Box::new(move |endpoint| {
            endpoint
                .route_mailbox(addr.mailbox::<ChangePushRules>())
                .concurrency(REMOTE_WRITER_CONCURRENCY)
        }),
    })
}

/// Change `user_id`'s push rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangePushRules {
    pub user_id: OwnedUserId,
    pub change: RuleChange,
}

/// What a change of push rules wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRulesWritten {
    /// The writer that stored it.
    pub instance: String,
    /// Its position in the push rules stream.
    pub position: i64,
}

/// Why a change was not written: refused, or the server's fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum PushRulesWriteError {
    #[error(transparent)]
    Refused(#[from] RuleError),
    #[error(transparent)]
    Failed(#[from] super::WriteError),
}

impl super::WriterRefusal for PushRulesWriteError {
    fn not_owner(&self) -> bool {
        matches!(
            self,
            PushRulesWriteError::Failed(super::WriteError::NotOwner(_))
        )
    }
}

impl lattice_actors::RemoteMessage for ChangePushRules {
    type Reply = Result<PushRulesWritten, PushRulesWriteError>;
    const WIRE_NAME: &'static str = "push_rules.change.v1";
}

type Answer = Result<PushRulesWritten, PushRulesWriteError>;

pub struct PushRulesWriter {
    pool: Pool,
    /// Which users' shards this writer holds: it writes only theirs.
    shards: Arc<ShardMap>,
    /// The push rules stream's writing end.
    writer: StreamWriter,
    changes_stored: u64,
    changes_refused: u64,
    writes_failed: u64,
}

impl PushRulesWriter {
    pub fn new(pool: Pool, writer: StreamWriter, shards: Arc<ShardMap>) -> PushRulesWriter {
        PushRulesWriter {
            pool,
            shards,
            writer,
            changes_stored: 0,
            changes_refused: 0,
            writes_failed: 0,
        }
    }

    /// Applies `requests` and commits them in one transaction; each gets
    /// its own answer.
    /// Those of users whose shard is not held here are refused (`NotOwner`).
    async fn change(&mut self, requests: Vec<ChangePushRules>) -> Vec<Answer> {
        let shards = self.shards.clone();
        super::owned_only(
            &shards,
            requests,
            |request| vec![request.user_id.to_string()],
            |kept| async {
                let count = kept.len();
                match self.change_in_transaction(kept).await {
                    Ok(answers) => answers,
                    Err(error) => {
                        if !matches!(error, StorageError::Fenced { .. }) {
                            self.writes_failed += 1;
                        }
                        let error = super::WriteError::from_storage(error, "the push rules");
                        vec![Err(PushRulesWriteError::Failed(error)); count]
                    }
                }
            },
        )
        .await
    }

    async fn change_in_transaction(
        &mut self,
        requests: Vec<ChangePushRules>,
    ) -> StorageResult<Vec<Answer>> {
        let instance = self.writer.instance().to_owned();
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let users: Vec<String> = requests.iter().map(|r| r.user_id.to_string()).collect();
        self.shards
            .fence(&transaction, users.iter().map(String::as_str))
            .await?;
        // Each user's rules as this batch changes them.
        let mut rules: HashMap<OwnedUserId, UserRules> = HashMap::new();
        // For each request: its user when it changed something.
        let mut changed: Vec<Result<OwnedUserId, RuleError>> = Vec::with_capacity(requests.len());
        for request in requests {
            if !rules.contains_key(&request.user_id) {
                let current = stored::rules_of_user(&transaction, request.user_id.as_str())
                    .await?
                    .map(|value| UserRules::from_stored(request.user_id.as_str(), value))
                    .unwrap_or_default();
                rules.insert(request.user_id.clone(), current);
            }
            let Some(user_rules) = rules.get_mut(&request.user_id) else {
                continue;
            };
            // Applied to a copy: a refused change leaves the rules as they were.
            let mut next = user_rules.clone();
            match next.apply(&request.user_id, request.change) {
                Ok(()) => {
                    *user_rules = next;
                    changed.push(Ok(request.user_id));
                }
                Err(error) => {
                    self.changes_refused += 1;
                    changed.push(Err(error));
                }
            }
        }
        // One position per user changed: their latest rules.
        let mut users: Vec<&OwnedUserId> = changed.iter().filter_map(|c| c.as_ref().ok()).collect();
        users.sort();
        users.dedup();
        let positions = if users.is_empty() {
            Vec::new()
        } else {
            self.writer.allocate(&transaction, users.len()).await?
        };
        let position_of: HashMap<&OwnedUserId, i64> = users
            .iter()
            .copied()
            .zip(positions.iter().copied())
            .collect();
        let result: StorageResult<()> = async {
            for (user_id, position) in &position_of {
                if let Some(user_rules) = rules.get(*user_id) {
                    stored::put(
                        &transaction,
                        &instance,
                        user_id.as_str(),
                        &user_rules.to_stored(),
                        *position,
                    )
                    .await?;
                }
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
        if !positions.is_empty() {
            let rows: Vec<(i64, Value)> = position_of
                .iter()
                .map(|(user_id, position)| (*position, push_rules_row(user_id.as_str())))
                .collect();
            let keys = position_of.keys().map(|u| u.to_string()).collect();
            self.writer.finish_with_keys(&positions, keys, || rows);
        }
        let answers = changed
            .iter()
            .map(|change| match change {
                Ok(user_id) => {
                    self.changes_stored += 1;
                    Ok(PushRulesWritten {
                        instance: instance.clone(),
                        position: position_of.get(user_id).copied().unwrap_or_default(),
                    })
                }
                Err(error) => Err(PushRulesWriteError::Refused(error.clone())),
            })
            .collect();
        Ok(answers)
    }
}

impl Actor for PushRulesWriter {
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
        snapshot.insert("changes_refused".into(), json!(self.changes_refused));
        snapshot.insert("writes_failed".into(), json!(self.writes_failed));
        Value::Object(snapshot)
    }
}

impl Handler<ChangePushRules> for PushRulesWriter {
    /// Changes that queue up while a transaction commits go into the next one.
    const BATCH_LIMIT: usize = 100;

    async fn handle(&mut self, msg: ChangePushRules, _ctx: &mut Context) -> Result<Answer, String> {
        Ok(self.change(vec![msg]).await.pop().unwrap_or_else(|| {
            Err(PushRulesWriteError::Failed(
                super::WriteError::not_answered(),
            ))
        }))
    }

    async fn handle_batch(
        &mut self,
        msgs: Vec<ChangePushRules>,
        _ctx: &mut Context,
    ) -> Vec<Result<Answer, String>> {
        self.change(msgs).await.into_iter().map(Ok).collect()
    }
}
