//! The replication protocol's commands (DESIGN §4, Synapse's grammar from
//! `reference/synapse-workers.md` §2.2-2.3): after committing, a writer
//! publishes `RDATA <stream> <instance> <token|batch> <json>` per row and
//! `POSITION <stream> <instance> <prev> <new>`; a process that connects
//! publishes `REPLICATE` and writers answer with their positions. One pub/sub
//! message is one command, as readable text, so `redis-cli subscribe` shows
//! the traffic.
//!
//! With a `replication_secret`, every line is prefixed by `SIG <hex hmac> `
//! over the rest of the line (the same HMAC as mailbox envelopes); a reader
//! with a secret drops and counts lines whose signature is missing or wrong,
//! so nothing they say is applied.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt;
use lattice_actors::HmacKey;
use tokio::sync::mpsc;

use super::caches::{CachesReader, Invalidate, Invalidation, CACHES_STREAM};
use super::shared::SharedStream;
use crate::roles::events::{stored_event_of_row, EVENTS_STREAM};
use crate::storage;
use crate::storage::rooms::StoredEvent;

/// One replication command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A row of a stream; `token` is `None` for all but the last row of a
    /// batch sharing one position.
    Rdata {
        stream: String,
        instance: String,
        token: Option<i64>,
        row: serde_json::Value,
    },
    /// The writer `instance` has advanced `stream` from `prev` to `new`.
    Position {
        stream: String,
        instance: String,
        prev: i64,
        new: i64,
    },
    /// Sent by a process that (re)connects: every writer answers with POSITIONs.
    Replicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown replication command `{0}`")]
    Unknown(String),
    #[error("malformed {command}: {reason}")]
    Malformed {
        command: &'static str,
        reason: String,
    },
    #[error("replication line is not signed or its signature is wrong")]
    BadSignature,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Rdata {
                stream,
                instance,
                token,
                row,
            } => {
                let token = token.map_or_else(|| "batch".to_owned(), |t| t.to_string());
                write!(f, "RDATA {stream} {instance} {token} {row}")
            }
            Command::Position {
                stream,
                instance,
                prev,
                new,
            } => {
                write!(f, "POSITION {stream} {instance} {prev} {new}")
            }
            Command::Replicate => f.write_str("REPLICATE "),
        }
    }
}

impl Command {
    /// Parses one line. Blank lines are `Ok(None)`, as in Synapse.
    pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
        match name {
            "RDATA" => {
                let malformed = |reason: &str| ParseError::Malformed {
                    command: "RDATA",
                    reason: reason.to_owned(),
                };
                let mut parts = rest.splitn(4, ' ');
                let (Some(stream), Some(instance), Some(token), Some(row)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(malformed("expected <stream> <instance> <token> <json>"));
                };
                let token = match token {
                    "batch" => None,
                    number => Some(
                        number
                            .parse::<i64>()
                            .map_err(|_| malformed("token is not a number"))?,
                    ),
                };
                let row = serde_json::from_str(row).map_err(|_| malformed("row is not JSON"))?;
                Ok(Some(Command::Rdata {
                    stream: stream.to_owned(),
                    instance: instance.to_owned(),
                    token,
                    row,
                }))
            }
            "POSITION" => {
                let malformed = |reason: &str| ParseError::Malformed {
                    command: "POSITION",
                    reason: reason.to_owned(),
                };
                let parts: Vec<&str> = rest.split(' ').collect();
                let [stream, instance, prev, new] = parts.as_slice() else {
                    return Err(malformed("expected <stream> <instance> <prev> <new>"));
                };
                let number = |text: &str| {
                    text.parse::<i64>()
                        .map_err(|_| malformed("positions must be numbers"))
                };
                Ok(Some(Command::Position {
                    stream: (*stream).to_owned(),
                    instance: (*instance).to_owned(),
                    prev: number(prev)?,
                    new: number(new)?,
                }))
            }
            "REPLICATE" => Ok(Some(Command::Replicate)),
            other => Err(ParseError::Unknown(other.chars().take(32).collect())),
        }
    }

    /// The line to publish, signed when a key is given.
    pub fn to_line(&self, key: Option<&HmacKey>) -> String {
        let line = self.to_string();
        match key {
            Some(key) => format!("SIG {} {line}", key.compute_bytes(line.as_bytes())),
            None => line,
        }
    }

    /// Reads a published line: with a key, only correctly signed lines pass.
    pub fn from_line(line: &str, key: Option<&HmacKey>) -> Result<Option<Command>, ParseError> {
        let Some(key) = key else {
            return Command::parse(line);
        };
        let Some((signature, rest)) = line.strip_prefix("SIG ").and_then(|l| l.split_once(' '))
        else {
            return Err(ParseError::BadSignature);
        };
        if !key.verify_bytes(rest.as_bytes(), signature) {
            return Err(ParseError::BadSignature);
        }
        Command::parse(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_round_trip_in_synapse_grammar() {
        let commands = [
            Command::Rdata {
                stream: "events".into(),
                instance: "events1".into(),
                token: Some(42),
                row: json!(["$ev", "!room:x", "m.room.message", "with spaces inside"]),
            },
            Command::Rdata {
                stream: "caches".into(),
                instance: "main".into(),
                token: None,
                row: json!({}),
            },
            Command::Position {
                stream: "events".into(),
                instance: "events1".into(),
                prev: 40,
                new: 42,
            },
            Command::Replicate,
        ];
        for command in commands {
            let line = command.to_string();
            assert_eq!(Command::parse(&line), Ok(Some(command.clone())), "{line}");
        }
        assert_eq!(Command::Replicate.to_string(), "REPLICATE ");
        assert_eq!(
            Command::Position {
                stream: "events".into(),
                instance: "w1".into(),
                prev: 1,
                new: 2
            }
            .to_string(),
            "POSITION events w1 1 2"
        );
    }

    #[test]
    fn lag_is_what_a_writer_announced_beyond_what_this_instance_processed() {
        use crate::streams::id_gen::{LoadedPositions, StreamPositions};
        use crate::streams::notifier::Notifier;

        let writers = vec!["events1".to_owned(), "events2".to_owned()];
        let positions = StreamPositions::new(
            "main",
            &writers,
            LoadedPositions {
                stream_positions: vec![("events1".into(), 5), ("events2".into(), 5)],
                ..LoadedPositions::default()
            },
        );
        let stream = SharedStream::new(positions, Notifier::new(1));
        let stats = ReplicationStats::default();
        let lags = |stats: &ReplicationStats| {
            stats
                .events_lag(&stream)
                .iter()
                .map(|l| (l.writer.clone(), l.announced, l.processed, l.lag()))
                .collect::<Vec<_>>()
        };
        // Nothing heard yet: no lag, at the position loaded at start-up.
        assert_eq!(
            lags(&stats),
            vec![("events1".into(), 5, 5, 0), ("events2".into(), 5, 5, 0)]
        );

        stats.announce(EVENTS_STREAM, "events1", 9);
        stats.announce(EVENTS_STREAM, "events1", 7);
        assert_eq!(lags(&stats)[0], ("events1".into(), 9, 5, 4));

        stream.update(|p| p.advance("events1", 8));
        assert_eq!(lags(&stats)[0], ("events1".into(), 9, 8, 1));
        stream.update(|p| p.advance("events1", 9));
        assert_eq!(lags(&stats)[0], ("events1".into(), 9, 9, 0));
        // Caught up from PostgreSQL beyond the last announcement: not negative.
        stream.update(|p| p.advance("events2", 12));
        assert_eq!(lags(&stats)[1], ("events2".into(), 12, 12, 0));
        stats.announce(EVENTS_STREAM, "events2", 10);
        assert_eq!(lags(&stats)[1], ("events2".into(), 10, 12, 0));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Command::parse("   "), Ok(None));
        for line in [
            "RDATA",
            "RDATA events",
            "RDATA events main x {}",
            "RDATA events main 1 {",
            "POSITION a b 1",
            "POSITION a b c d",
            "NOPE 1",
        ] {
            assert!(Command::parse(line).is_err(), "{line}");
        }
    }

    #[test]
    fn signed_lines_verify_and_tampered_or_unsigned_ones_do_not() {
        let key = HmacKey::new("secret").expect("key");
        let other = HmacKey::new("another secret").expect("key");
        let command = Command::Position {
            stream: "events".into(),
            instance: "main".into(),
            prev: 1,
            new: 9,
        };
        let line = command.to_line(Some(&key));
        assert!(line.starts_with("SIG "));
        assert_eq!(
            Command::from_line(&line, Some(&key)),
            Ok(Some(command.clone()))
        );
        assert_eq!(
            Command::from_line(&line, Some(&other)),
            Err(ParseError::BadSignature)
        );
        assert_eq!(
            Command::from_line(&line.replace(" 9", " 99"), Some(&key)),
            Err(ParseError::BadSignature)
        );
        assert_eq!(
            Command::from_line(&command.to_string(), Some(&key)),
            Err(ParseError::BadSignature)
        );
    }
}

/// Counters of the replication reader, for `Observe` and tests.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    pub applied: AtomicU64,
    pub caught_up_rows: AtomicU64,
    /// Rows of the `caches` stream read back from PostgreSQL.
    pub caches_caught_up_rows: AtomicU64,
    pub rejected: AtomicU64,
    pub reconnects: AtomicU64,
    /// The highest position each writer has announced (POSITION, or the
    /// token of an RDATA), by stream then writer, whether or not this
    /// instance has processed it yet: what replication lag is measured
    /// against.
    announced: Mutex<BTreeMap<String, BTreeMap<String, i64>>>,
    /// The `caches` stream as the reader sees it: how far each writer's
    /// rows are applied (the events stream's are in its `SharedStream`).
    caches: Mutex<CachesReader>,
}

/// How far this instance's view of one writer of one stream is behind what
/// that writer announced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriterLag {
    pub stream: String,
    pub writer: String,
    /// The writer's latest announced position (the processed one if it has
    /// announced nothing this instance heard).
    pub announced: i64,
    /// The position this instance has processed, up to which it can serve.
    pub processed: i64,
}

impl WriterLag {
    /// Positions announced and not processed yet; never negative (a writer
    /// heard of through PostgreSQL catch-up can be ahead of its last
    /// announcement).
    pub fn lag(&self) -> i64 {
        (self.announced - self.processed).max(0)
    }
}

impl ReplicationStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "applied": self.applied.load(Ordering::Relaxed),
            "caught_up_rows": self.caught_up_rows.load(Ordering::Relaxed),
            "caches_caught_up_rows": self.caches_caught_up_rows.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "reconnects": self.reconnects.load(Ordering::Relaxed),
        })
    }

    /// Records that `writer` announced `position` on `stream`; positions
    /// never go back.
    pub fn announce(&self, stream: &str, writer: &str, position: i64) {
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let latest = announced
            .entry(stream.to_owned())
            .or_default()
            .entry(writer.to_owned())
            .or_insert(position);
        *latest = (*latest).max(position);
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, CachesReader> {
        self.caches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How far this instance applied each writer's `caches` rows, as JSON
    /// (`{"writer": position}`).
    pub fn caches_positions(&self) -> serde_json::Value {
        serde_json::json!(self.caches().positions())
    }

    /// The lag of every writer of the `caches` stream this instance heard
    /// of (any instance may write it, so the writers are those heard).
    pub fn caches_lag(&self) -> Vec<WriterLag> {
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let heard = announced.get(CACHES_STREAM);
        self.caches()
            .positions()
            .iter()
            .map(|(writer, processed)| WriterLag {
                stream: CACHES_STREAM.to_owned(),
                writer: writer.clone(),
                announced: heard
                    .and_then(|writers| writers.get(writer))
                    .copied()
                    .unwrap_or(*processed),
                processed: *processed,
            })
            .collect()
    }

    /// The lag of every writer of the events stream, as this instance sees
    /// it through `stream` (in writer order).
    pub fn events_lag(&self, stream: &SharedStream) -> Vec<WriterLag> {
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let heard = announced.get(EVENTS_STREAM);
        stream.read(|positions| {
            positions
                .writers()
                .iter()
                .map(|writer| {
                    let processed = positions.current_token_for_writer(writer);
                    let announced = heard
                        .and_then(|writers| writers.get(writer))
                        .copied()
                        .unwrap_or(processed);
                    WriterLag {
                        stream: EVENTS_STREAM.to_owned(),
                        writer: writer.clone(),
                        announced,
                        processed,
                    }
                })
                .collect()
        })
    }
}

/// Publishes commands on the server's channel, in order, from a task of its
/// own; a command waits (and is retried) while Redis is unreachable.
#[derive(Clone)]
pub struct Publisher {
    commands: mpsc::UnboundedSender<Command>,
}

impl Publisher {
    pub fn publish(&self, command: Command) {
        // The task ends only with the node; then nobody needs the command.
        let _ = self.commands.send(command);
    }
}

/// Where and as whom an instance replicates.
pub struct ReplicationConfig {
    /// The Redis the mailboxes use (the same URL, credentials and TLS).
    pub redis: redis::Client,
    /// The pub/sub channel: the server name, as in Synapse.
    pub channel: String,
    pub instance: String,
    pub key: Option<HmacKey>,
    /// Whether this instance writes the events stream (answers REPLICATE and
    /// announces idle positions).
    pub events_writer: bool,
    /// Applies an invalidation another instance wrote on the `caches` stream.
    pub invalidate: Invalidate,
    /// This instance's position on the `caches` stream (its last row),
    /// announced when asked; the [`super::caches::CachesWriter`] moves it.
    pub caches_position: Arc<AtomicI64>,
    /// The `caches` sequence's value before this instance cached anything.
    pub caches_floor: i64,
    /// Takes the events that an events row carries, before the row is
    /// announced to this instance's long-polls.
    pub new_events: NewEvents,
}

/// Takes events another instance persisted, in stream order, and the
/// position they are announced at.
pub type NewEvents = Arc<dyn Fn(&[StoredEvent], i64) + Send + Sync>;

/// The running replication of one instance; dropping it stops its tasks.
pub struct Replication {
    pub publisher: Publisher,
    pub stats: Arc<ReplicationStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Replication {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Replication {
    /// Starts publishing and reading; an unreachable Redis is retried in the
    /// background.
    pub fn start(config: ReplicationConfig, stream: SharedStream, pool: Pool) -> Replication {
        let client = config.redis.clone();
        let (commands, queue) = mpsc::unbounded_channel();
        let publisher = Publisher { commands };
        let stats = Arc::new(ReplicationStats {
            caches: Mutex::new(CachesReader::new(&config.instance, config.caches_floor)),
            ..ReplicationStats::default()
        });
        let config = Arc::new(config);
        let mut tasks = vec![tokio::spawn(publish_loop(
            client.clone(),
            config.clone(),
            queue,
        ))];
        tasks.push(tokio::spawn(read_loop(
            client,
            config.clone(),
            stream.clone(),
            pool,
            publisher.clone(),
            stats.clone(),
        )));
        if config.events_writer {
            tasks.push(tokio::spawn(announce_idle_positions(
                config,
                stream,
                publisher.clone(),
            )));
        }
        Replication {
            publisher,
            stats,
            tasks,
        }
    }
}

const RETRY: Duration = Duration::from_millis(200);

/// Commands published in one pipeline at most.
const PUBLISH_BATCH: usize = 256;

/// Publishes the queued commands in order. Whatever queued up while the
/// last publish was in flight goes out in one pipelined round trip: one
/// round trip per event could not keep up with a busy writer, and rows
/// waited in the queue for hundreds of milliseconds.
async fn publish_loop(
    client: redis::Client,
    config: Arc<ReplicationConfig>,
    mut queue: mpsc::UnboundedReceiver<Command>,
) {
    let mut connection = None;
    let mut lines = Vec::with_capacity(PUBLISH_BATCH);
    while let Some(command) = queue.recv().await {
        lines.clear();
        lines.push(command.to_line(config.key.as_ref()));
        while lines.len() < PUBLISH_BATCH {
            match queue.try_recv() {
                Ok(command) => lines.push(command.to_line(config.key.as_ref())),
                Err(_) => break,
            }
        }
        let mut pipeline = redis::pipe();
        for line in &lines {
            pipeline
                .cmd("PUBLISH")
                .arg(&config.channel)
                .arg(line)
                .ignore();
        }
        loop {
            if connection.is_none() {
                match client.get_connection_manager().await {
                    Ok(manager) => connection = Some(manager),
                    Err(error) => {
                        tracing::warn!(error = %error, "replication: cannot connect to redis to publish");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            let Some(manager) = connection.as_mut() else {
                continue;
            };
            // Readers skip rows they already applied, so a batch retried
            // after a failure halfway through does no harm.
            let published: redis::RedisResult<()> = pipeline.query_async(manager).await;
            match published {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(error = %error, "replication: publish failed, retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

/// Writers announce their position when it moved without a write of their
/// own (an idle writer claims what others allocated), so one quiet writer
/// never holds back everyone's persisted-up-to position.
async fn announce_idle_positions(
    config: Arc<ReplicationConfig>,
    stream: SharedStream,
    publisher: Publisher,
) {
    let mut announced = stream.read(|p| p.current_token_for_writer(&config.instance));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let Some(claim) = stream.read(|p| p.idle_claim()) else {
            continue;
        };
        if claim > announced {
            publisher.publish(Command::Position {
                stream: EVENTS_STREAM.to_owned(),
                instance: config.instance.clone(),
                prev: announced,
                new: claim,
            });
            announced = claim;
        }
    }
}

async fn read_loop(
    client: redis::Client,
    config: Arc<ReplicationConfig>,
    stream: SharedStream,
    pool: Pool,
    publisher: Publisher,
    stats: Arc<ReplicationStats>,
) {
    loop {
        match read_connection(&client, &config, &stream, &pool, &publisher, &stats).await {
            Ok(()) => tracing::warn!("replication: subscription ended, reconnecting"),
            Err(error) => {
                tracing::warn!(error = %error, "replication: subscription failed, reconnecting")
            }
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RETRY).await;
    }
}

/// One subscription: subscribe, ask every writer for its position, then apply
/// what arrives in order. Rows of a writer are applied only after its first
/// POSITION on this subscription, which catches up what was missed from
/// PostgreSQL.
async fn read_connection(
    client: &redis::Client,
    config: &ReplicationConfig,
    stream: &SharedStream,
    pool: &Pool,
    publisher: &Publisher,
    stats: &ReplicationStats,
) -> Result<(), ReplicationError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&config.channel).await?;
    read_back_caches(config, pool, stats).await?;
    publisher.publish(Command::Replicate);
    if config.events_writer {
        announce_position(config, stream, publisher);
    }
    announce_caches_position(config, publisher);
    let mut connected: HashSet<String> = HashSet::new();
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Ok(line) = message.get_payload::<String>() else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let command = match Command::from_line(&line, config.key.as_ref()) {
            Ok(Some(command)) => command,
            Ok(None) => continue,
            Err(error) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %error, "replication: dropped a message");
                continue;
            }
        };
        match command {
            Command::Replicate => {
                if config.events_writer {
                    announce_position(config, stream, publisher);
                }
                announce_caches_position(config, publisher);
            }
            Command::Rdata {
                stream: name,
                instance,
                token: Some(token),
                row,
            } if name == CACHES_STREAM => {
                if instance != config.instance {
                    stats.announce(&name, &instance, token);
                }
                if stats.caches().take_published(&instance, token) {
                    match Invalidation::from_row(&row) {
                        Some(invalidation) => (config.invalidate)(&invalidation),
                        None => {
                            tracing::warn!(writer = %instance, token, "replication: a caches row that is not an invalidation")
                        }
                    }
                    stats.applied.fetch_add(1, Ordering::Relaxed);
                }
            }
            Command::Position {
                stream: name,
                instance,
                new,
                ..
            } if name == CACHES_STREAM => {
                if instance == config.instance {
                    continue;
                }
                stats.announce(&name, &instance, new);
                let missing = stats.caches().missing(&instance, new);
                if let Some((after, upto)) = missing {
                    let rows = storage::caches::written_between(pool, Some(&instance), after, upto)
                        .await?;
                    apply_stored_invalidations(config, stats, rows);
                }
                stats.caches().caught_up(&instance, new);
            }
            Command::Rdata {
                stream: name,
                instance,
                token,
                row,
            } => {
                if name != EVENTS_STREAM || instance == config.instance {
                    continue;
                }
                let Some(token) = token else { continue };
                // Announced even while its rows are still dropped (before
                // the writer's first POSITION): that is lag too.
                stats.announce(&name, &instance, token);
                if !connected.contains(&instance) {
                    continue;
                }
                if token <= stream.read(|p| p.current_token_for_writer(&instance)) {
                    continue;
                }
                if let Some(event) = stored_event_of_row(token, &row) {
                    (config.new_events)(std::slice::from_ref(&event), token);
                }
                stream.record(row_keys(&row), token, |p| p.advance(&instance, token));
                stats.applied.fetch_add(1, Ordering::Relaxed);
            }
            Command::Position {
                stream: name,
                instance,
                new,
                ..
            } => {
                if name != EVENTS_STREAM || instance == config.instance {
                    continue;
                }
                stats.announce(&name, &instance, new);
                catch_up(pool, stream, &instance, new, stats).await?;
                connected.insert(instance);
            }
        }
    }
    Ok(())
}

fn announce_caches_position(config: &ReplicationConfig, publisher: &Publisher) {
    let position = config.caches_position.load(Ordering::Acquire);
    publisher.publish(Command::Position {
        stream: CACHES_STREAM.to_owned(),
        instance: config.instance.clone(),
        prev: position,
        new: position,
    });
}

/// On a new subscription, applies every invalidation stored since the
/// previous one began, whoever wrote it: rows published while this instance
/// was not subscribed are lost on Redis, and their writer may never announce
/// itself again.
async fn read_back_caches(
    config: &ReplicationConfig,
    pool: &Pool,
    stats: &ReplicationStats,
) -> Result<(), ReplicationError> {
    let last = storage::caches::last_allocated(pool).await?;
    let after = stats.caches().read_back_after();
    let rows = storage::caches::written_between(pool, None, after, i64::MAX).await?;
    stats.caches().subscribed(last);
    apply_stored_invalidations(config, stats, rows);
    Ok(())
}

fn apply_stored_invalidations(
    config: &ReplicationConfig,
    stats: &ReplicationStats,
    rows: Vec<(i64, String, Invalidation)>,
) {
    for (id, writer, invalidation) in rows {
        let take = stats.caches().take_stored(&writer, id);
        if take {
            (config.invalidate)(&invalidation);
            stats.caches_caught_up_rows.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn announce_position(config: &ReplicationConfig, stream: &SharedStream, publisher: &Publisher) {
    let position = stream.read(|p| p.current_token_for_writer(&config.instance));
    publisher.publish(Command::Position {
        stream: EVENTS_STREAM.to_owned(),
        instance: config.instance.clone(),
        prev: position,
        new: position,
    });
}

/// Reads the rows `writer` persisted after our view of it, up to `new`, from
/// PostgreSQL, and applies them in order.
async fn catch_up(
    pool: &Pool,
    stream: &SharedStream,
    writer: &str,
    new: i64,
    stats: &ReplicationStats,
) -> Result<(), ReplicationError> {
    let current = stream.read(|p| p.current_token_for_writer(writer));
    if new > current {
        let client = pool.get().await?;
        let rows = client
            .query(
                "SELECT stream_ordering, event_id, room_id, type, state_key, pdu -> 'content' -> 'membership'
                 FROM events WHERE instance_name = $1 AND stream_ordering > $2 AND stream_ordering <= $3
                 ORDER BY stream_ordering",
                &[&writer, &current, &new],
            )
            .await?;
        for row in &rows {
            let position: i64 = row.get(0);
            let membership: Option<serde_json::Value> = row.get(5);
            let event_row = serde_json::json!([
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                row.get::<_, Option<String>>(4),
                membership,
            ]);
            stream.record(row_keys(&event_row), position, |p| {
                p.advance(writer, position)
            });
            stats.caught_up_rows.fetch_add(1, Ordering::Relaxed);
        }
    }
    stream.update(|p| p.advance(writer, new));
    Ok(())
}

/// The notifier keys an events row concerns: its room, and for member
/// events the member (so invitees wake).
fn row_keys(row: &serde_json::Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(room_id) = row.get(1).and_then(serde_json::Value::as_str) {
        keys.push(room_id.to_owned());
    }
    if row.get(2).and_then(serde_json::Value::as_str) == Some("m.room.member") {
        if let Some(user_id) = row.get(3).and_then(serde_json::Value::as_str) {
            keys.push(user_id.to_owned());
        }
    }
    keys
}

#[derive(Debug, thiserror::Error)]
enum ReplicationError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}
