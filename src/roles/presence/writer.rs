//! The [`PresenceWriter`]: one per instance with the `presence` role,
//! owning the presence of the users whose shards it holds (`crate::shards`).
//! A change worth telling takes a position from the stream's sequence,
//! replaces the user's row in the same transaction, and is finished (woken
//! here, published as `RDATA` to the others) with the rooms the user is in,
//! which is whom it wakes. The timers run on [`CheckTimers`], told every
//! [`TICK`] (Synapse checks its wheel timer every 5 s too).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use lattice_actors::{Actor, Context, Handler, Mailbox};
use serde_json::{json, Value};

use super::state::{Change, Users};
use super::{CheckTimers, PresenceWritten, SetPresence, UserSyncs, WriteError};
use crate::roles::Mailboxes;
use crate::shards::{shard_of, OWNERSHIP_REFRESH_WAIT, SHARD_COUNT};
use crate::storage::{presence, StorageError, StorageResult};
use crate::streams::presence::{PresenceRow, PresenceStatus, PRESENCE_STREAM};
use crate::streams::writer::StreamWriter;

/// How often the timers are checked.
pub const TICK: Duration = Duration::from_secs(5);

pub use crate::util::Clock;

/// Tells the writer to check its timers every [`TICK`], until it is gone.
pub async fn tick(mailbox: Mailbox<CheckTimers>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if mailbox.tell(CheckTimers).is_err() {
            return;
        }
    }
}

pub struct PresenceWriter {
    pool: Pool,
    writer: StreamWriter,
    mailboxes: Arc<Mailboxes>,
    clock: Clock,
    users: Users,
    /// The shards of the presence stream this writer holds, as
    /// [`follow_ownership`](Self::follow_ownership) last saw.
    held: HashSet<i32>,
    /// Changes whose write failed, written with the next write or tick.
    owed: BTreeMap<String, PresenceStatus>,
    rows_written: u64,
    writes_failed: u64,
}

impl PresenceWriter {
    pub fn new(
        pool: Pool,
        writer: StreamWriter,
        mailboxes: Arc<Mailboxes>,
        clock: Clock,
    ) -> PresenceWriter {
        PresenceWriter {
            pool,
            writer,
            mailboxes,
            clock,
            users: Users::default(),
            held: HashSet::new(),
            owed: BTreeMap::new(),
            rows_written: 0,
            writes_failed: 0,
        }
    }

    /// Whether `user_id`'s presence is this writer's: its shard was held
    /// here when [`follow_ownership`](Self::follow_ownership) last looked.
    fn owns(&self, user_id: &str) -> bool {
        self.held.contains(&shard_of(user_id))
    }

    /// Takes the users of the shards given to this writer since it last
    /// looked (their stored presence, with its timers) and forgets those of
    /// the shards it lost. What a user's old owner wrote last is what the
    /// new one goes on from; a sync instance tells the new owner who syncs
    /// with its next list.
    async fn follow_ownership(&mut self) {
        let Some(map) = self.mailboxes.shard_map(PRESENCE_STREAM) else {
            return;
        };
        let held: HashSet<i32> = (0..SHARD_COUNT)
            .filter(|shard| map.held_here(*shard).is_some())
            .collect();
        if held == self.held {
            return;
        }
        let lost: HashSet<i32> = self.held.difference(&held).copied().collect();
        let gained: HashSet<i32> = held.difference(&self.held).copied().collect();
        if !lost.is_empty() {
            self.users.forget(|user| lost.contains(&shard_of(user)));
            self.owed.retain(|user, _| !lost.contains(&shard_of(user)));
        }
        if !gained.is_empty() {
            let stored = match presence::all(&self.pool).await {
                Ok(stored) => stored,
                Err(error) => {
                    // Looked at again with the next message or tick.
                    tracing::warn!(error = %error, "presence: loading the users of new shards failed");
                    self.held.retain(|shard| !lost.contains(shard));
                    return;
                }
            };
            let now = self.clock.now_ms();
            for stored in stored {
                if gained.contains(&shard_of(&stored.user_id)) {
                    self.users.load(&stored.user_id, stored.status, now);
                }
            }
        }
        self.held = held;
    }

    /// Writes `changes` and whatever is owed; each user's position.
    async fn write(&mut self, changes: Vec<Change>) -> HashMap<String, i64> {
        self.owed.extend(changes);
        self.owed
            .retain(|user, _| self.held.contains(&shard_of(user)));
        if self.owed.is_empty() {
            return HashMap::new();
        }
        let owed: Vec<Change> = std::mem::take(&mut self.owed).into_iter().collect();
        match self.write_rows(&owed).await {
            Ok(positions) => positions,
            Err(error) => {
                self.writes_failed += 1;
                tracing::warn!(error = %error, users = owed.len(), "presence: writing rows failed, retrying at the next tick");
                // A later change of the same user, made meanwhile, wins.
                for (user_id, status) in owed {
                    self.owed.entry(user_id).or_insert(status);
                }
                HashMap::new()
            }
        }
    }

    async fn write_rows(&mut self, changes: &[Change]) -> StorageResult<HashMap<String, i64>> {
        let instance = self.writer.instance().to_owned();
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        // Only while this writer holds the users' shards (`crate::shards`).
        if let Some(map) = self.mailboxes.shard_map(PRESENCE_STREAM) {
            map.fence(&transaction, changes.iter().map(|(user, _)| user.as_str()))
                .await?;
        }
        let positions = self.writer.allocate(&transaction, changes.len()).await?;
        let result: StorageResult<Vec<(i64, PresenceRow)>> = async {
            let users: Vec<String> = changes.iter().map(|(user, _)| user.clone()).collect();
            let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
            for (user_id, room_id) in presence::joined_rooms_of(&transaction, &users).await? {
                rooms.entry(user_id).or_default().push(room_id);
            }
            let mut rows = Vec::with_capacity(changes.len());
            for ((user_id, status), &position) in changes.iter().zip(&positions) {
                presence::put(&transaction, &instance, position, user_id, status).await?;
                rows.push((
                    position,
                    PresenceRow {
                        user_id: user_id.clone(),
                        status: status.clone(),
                        rooms: rooms.remove(user_id).unwrap_or_default(),
                    },
                ));
            }
            self.writer.store_position(&transaction, &positions).await?;
            Ok(rows)
        }
        .await;
        let committed = match result {
            Ok(rows) => transaction
                .commit()
                .await
                .map(|()| rows)
                .map_err(StorageError::from),
            Err(error) => Err(error),
        };
        let rows = match committed {
            Ok(rows) => rows,
            Err(error) => {
                self.writer.abandon(&positions);
                return Err(error);
            }
        };
        self.rows_written += rows.len() as u64;
        let written = rows
            .iter()
            .map(|(position, row)| (row.user_id.clone(), *position))
            .collect();
        self.writer.finish(
            rows.into_iter()
                .map(|(position, row)| (position, row.to_value()))
                .collect(),
        );
        Ok(written)
    }
}

impl Actor for PresenceWriter {
    async fn started(&mut self, _ctx: &mut Context) -> Result<(), String> {
        // A restarted incarnation may have lost track of positions the one
        // before it allocated, and of its users: reload both.
        self.writer
            .reload(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        self.users = Users::default();
        self.held.clear();
        self.follow_ownership().await;
        Ok(())
    }

    fn observe(&self) -> Value {
        let (users, syncing) = self.users.counts();
        let mut snapshot = self.writer.observe();
        snapshot.insert("users".into(), json!(users));
        snapshot.insert("syncing_users".into(), json!(syncing));
        snapshot.insert("next_timer_ms".into(), json!(self.users.next_deadline()));
        snapshot.insert("rows_written".into(), json!(self.rows_written));
        snapshot.insert("owed_rows".into(), json!(self.owed.len()));
        snapshot.insert("writes_failed".into(), json!(self.writes_failed));
        Value::Object(snapshot)
    }
}

impl Handler<SetPresence> for PresenceWriter {
    async fn handle(
        &mut self,
        msg: SetPresence,
        _ctx: &mut Context,
    ) -> Result<Result<PresenceWritten, WriteError>, String> {
        let user_id = msg.user_id.to_string();
        self.follow_ownership().await;
        if !self.owns(&user_id) {
            if let Some(map) = self.mailboxes.shard_map(PRESENCE_STREAM) {
                map.refresh(OWNERSHIP_REFRESH_WAIT).await;
            }
            self.follow_ownership().await;
            if !self.owns(&user_id) {
                return Ok(Err(WriteError::NotOwner(shard_of(&user_id))));
            }
        }
        let now = self.clock.now_ms();
        let Some(change) = self.users.set(&user_id, msg.presence, msg.status_msg, now) else {
            return Ok(Ok(PresenceWritten {
                instance: self.writer.instance().to_owned(),
                position: None,
            }));
        };
        let positions = self.write(vec![change]).await;
        Ok(match positions.get(&user_id) {
            Some(&position) => Ok(PresenceWritten {
                instance: self.writer.instance().to_owned(),
                position: Some(position),
            }),
            None => Err(WriteError::Storage(
                "the presence could not be stored".into(),
            )),
        })
    }
}

impl Handler<UserSyncs> for PresenceWriter {
    async fn handle(&mut self, msg: UserSyncs, _ctx: &mut Context) -> Result<(), String> {
        self.follow_ownership().await;
        let now = self.clock.now_ms();
        // Users whose shard is not held here are the owner's: their sync
        // instance tells it with its next list.
        let started: Vec<_> = msg
            .started
            .into_iter()
            .map(|(user, state)| (user.to_string(), state))
            .filter(|(user, _)| self.owns(user))
            .collect();
        let stopped: Vec<_> = msg
            .stopped
            .into_iter()
            .map(|(user, at)| (user.to_string(), at))
            .filter(|(user, _)| self.owns(user))
            .collect();
        let syncing: Option<Vec<_>> = msg.syncing.map(|syncing| {
            syncing
                .into_iter()
                .map(|(user, state)| (user.to_string(), state))
                .filter(|(user, _)| self.owns(user))
                .collect()
        });
        let mut changes =
            self.users
                .syncs(&msg.instance, &started, &stopped, syncing.as_deref(), now);
        for user_id in msg.active {
            if self.owns(user_id.as_str()) {
                changes.extend(self.users.active(user_id.as_str(), now));
            }
        }
        self.write(changes).await;
        Ok(())
    }
}

impl Handler<CheckTimers> for PresenceWriter {
    async fn handle(&mut self, _msg: CheckTimers, _ctx: &mut Context) -> Result<(), String> {
        self.follow_ownership().await;
        let changes = self.users.expire(self.clock.now_ms());
        self.write(changes).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::presence::PresenceState;

    use super::super::state::{IDLE_TIMER_MS, SYNC_ONLINE_TIMEOUT_MS};
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_on_tokios_time() {
        let clock = Clock::starting_at(1_000_000);
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now_ms(), 1_002_500);
    }

    /// Ticks for `ms` of tokio's time, applying the timers due at each
    /// tick; the changes as (user, state).
    async fn run_for(
        interval: &mut tokio::time::Interval,
        clock: Clock,
        users: &mut Users,
        ms: i64,
    ) -> Vec<(String, String)> {
        let until = clock.now_ms() + ms;
        let mut changes = Vec::new();
        while clock.now_ms() < until {
            interval.tick().await;
            // sync1 is heard from: its full list every 10 s.
            users.syncs("sync1", &[], &[], None, clock.now_ms());
            changes.extend(users.expire(clock.now_ms()));
        }
        changes
            .into_iter()
            .map(|(user, status)| (user, status.state.as_str().to_owned()))
            .collect()
    }

    /// The timers driven as the writer drives them: a tick every [`TICK`]
    /// on tokio's (paused) clock, each applying what is due.
    #[tokio::test(start_paused = true)]
    async fn on_paused_time_idle_users_become_unavailable_and_stopped_ones_offline() {
        let clock = Clock::starting_at(1_000_000_000);
        let mut users = Users::default();
        let now = clock.now_ms();
        users.syncs(
            "sync1",
            &[("@a:x".into(), PresenceState::Online)],
            &[],
            None,
            now,
        );
        users.set("@b:x", PresenceState::Online, None, now);
        users.syncs(
            "sync1",
            &[("@b:x".into(), PresenceState::Online)],
            &[],
            None,
            now,
        );
        let mut interval = tokio::time::interval(TICK);
        // Four minutes: still online (only currently_active lapsed).
        let changes = run_for(&mut interval, clock, &mut users, 4 * 60 * 1000).await;
        assert!(changes.iter().all(|(_, state)| state == "online"));
        assert_eq!(users.status("@a:x").state, PresenceState::Online);
        // Past the idle timer: both unavailable.
        let changes = run_for(
            &mut interval,
            clock,
            &mut users,
            IDLE_TIMER_MS - 4 * 60 * 1000 + TICK.as_millis() as i64,
        )
        .await;
        assert_eq!(users.status("@a:x").state, PresenceState::Unavailable);
        assert_eq!(users.status("@b:x").state, PresenceState::Unavailable);
        assert_eq!(changes.len(), 2);
        // @b stops syncing: offline once the sync timeout passes, @a stays.
        let stopped = clock.now_ms();
        users.syncs("sync1", &[], &[("@b:x".into(), stopped)], None, stopped);
        let changes = run_for(
            &mut interval,
            clock,
            &mut users,
            SYNC_ONLINE_TIMEOUT_MS - TICK.as_millis() as i64,
        )
        .await;
        assert!(changes.is_empty());
        assert_eq!(users.status("@b:x").state, PresenceState::Unavailable);
        let changes = run_for(
            &mut interval,
            clock,
            &mut users,
            2 * TICK.as_millis() as i64,
        )
        .await;
        assert_eq!(changes, vec![("@b:x".to_owned(), "offline".to_owned())]);
        assert_eq!(users.status("@a:x").state, PresenceState::Unavailable);
    }
}
