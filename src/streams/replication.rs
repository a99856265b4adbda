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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use lattice_actors::HmacKey;
use serde_json::Value;
use tokio::sync::mpsc;

use super::registry::{RegisteredStream, Storage, StreamError, StreamSpec};
use super::shared::SharedStream;

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
        let stream = SharedStream::new("events", positions, Notifier::new());
        let stats = ReplicationStats::default();
        let processed = |stream: &SharedStream| {
            stream.read(|p| {
                p.writers()
                    .iter()
                    .map(|w| (w.clone(), p.current_token_for_writer(w)))
                    .collect::<Vec<_>>()
            })
        };
        let lags = |stats: &ReplicationStats| {
            stats
                .lag("events", processed(&stream))
                .iter()
                .map(|l| (l.writer.clone(), l.announced, l.processed, l.lag()))
                .collect::<Vec<_>>()
        };
        // Nothing heard yet: no lag, at the position loaded at start-up.
        assert_eq!(
            lags(&stats),
            vec![("events1".into(), 5, 5, 0), ("events2".into(), 5, 5, 0)]
        );

        stats.announce("events", "events1", 9);
        stats.announce("events", "events1", 7);
        assert_eq!(lags(&stats)[0], ("events1".into(), 9, 5, 4));

        stream.update(|p| p.advance("events1", 8));
        assert_eq!(lags(&stats)[0], ("events1".into(), 9, 8, 1));
        stream.update(|p| p.advance("events1", 9));
        assert_eq!(lags(&stats)[0], ("events1".into(), 9, 9, 0));
        // Caught up from PostgreSQL beyond the last announcement: not negative.
        stream.update(|p| p.advance("events2", 12));
        assert_eq!(lags(&stats)[1], ("events2".into(), 12, 12, 0));
        stats.announce("events", "events2", 10);
        assert_eq!(lags(&stats)[1], ("events2".into(), 10, 12, 0));
    }

    /// Rows two writers wrote, as a memory stream's writers would answer a
    /// catch-up, recording what they were asked.
    struct WrittenRows {
        rows: Vec<(&'static str, i64, &'static str)>,
        asked: Mutex<Vec<(String, i64, i64)>>,
    }

    static WRITTEN: crate::streams::registry::StreamSpec = crate::streams::registry::StreamSpec {
        name: "written",
        shard_by: crate::streams::registry::ShardBy::Room,
        storage: crate::streams::registry::Storage::Memory,
        sequence: "written_seq",
        token: None,
    };

    impl crate::streams::registry::StreamRows for WrittenRows {
        fn spec(&self) -> &'static crate::streams::registry::StreamSpec {
            &WRITTEN
        }

        fn keys(&self, row: &Value) -> Vec<String> {
            row.as_str().map(str::to_owned).into_iter().collect()
        }

        fn read_rows<'a>(
            &'a self,
            writer: &'a str,
            after: i64,
            upto: i64,
        ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>> {
            self.asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((writer.to_owned(), after, upto));
            let rows = self
                .rows
                .iter()
                .filter(|(w, p, _)| *w == writer && after < *p && *p <= upto)
                .map(|(_, p, room)| (*p, json!(room)))
                .collect();
            Box::pin(async move { Ok(rows) })
        }
    }

    #[tokio::test]
    async fn a_writers_rows_are_caught_up_after_another_writers_claim_moved_the_floor() {
        use crate::streams::id_gen::{LoadedPositions, StreamPositions};
        use crate::streams::notifier::Notifier;
        use crate::streams::registry::RegisteredStream;

        let writers = vec!["w1".to_owned(), "w2".to_owned()];
        let positions = StreamPositions::new("reader", &writers, LoadedPositions::default());
        let notifier = Notifier::new();
        let stream = SharedStream::new("written", positions, notifier.clone());
        // w2 wrote 2 and, idle, claimed 3, which w1 wrote.
        let rows = Arc::new(WrittenRows {
            rows: vec![("w2", 2, "!b:x"), ("w1", 3, "!a:x")],
            asked: Mutex::new(Vec::new()),
        });
        let replicated = PositionedStream::new(
            RegisteredStream {
                rows: rows.clone(),
                positions: stream.clone(),
                writer: None,
            },
            "reader",
            Arc::new(ReplicationStats::default()),
        );
        // A (re)subscribing reader hears w2's POSITION first.
        replicated.on_position("w2", 3).await.expect("caught up");
        assert_eq!(stream.persisted_upto(), 3, "w2's claim moves the floor");
        replicated.on_position("w1", 3).await.expect("caught up");
        assert_eq!(
            *rows.asked.lock().unwrap_or_else(PoisonError::into_inner),
            vec![("w2".to_owned(), 1, 3), ("w1".to_owned(), 1, 3)],
            "w1's row is asked for although the floor passed it"
        );
        assert!(notifier.has_changed_since("written", "!a:x", 2));
        // Its RDATA, had it come after the claim, would not be dropped either.
        replicated.on_row("w1", 4, &json!("!c:x")).await;
        assert!(notifier.has_changed_since("written", "!c:x", 3));
    }

    #[tokio::test]
    async fn a_catch_up_from_storage_applies_each_row_once_and_a_gone_writer_is_released() {
        use crate::streams::id_gen::{LoadedPositions, StreamPositions};
        use crate::streams::notifier::Notifier;
        use crate::streams::registry::RegisteredStream;

        let writers = vec!["w1".to_owned(), "w2".to_owned()];
        let positions = StreamPositions::new("reader", &writers, LoadedPositions::default());
        let notifier = Notifier::new();
        let stream = SharedStream::new("written", positions, notifier.clone());
        let rows = Arc::new(WrittenRows {
            rows: vec![("w1", 2, "!a:x"), ("w1", 3, "!b:x"), ("w1", 5, "!c:x")],
            asked: Mutex::new(Vec::new()),
        });
        let stats = Arc::new(ReplicationStats::default());
        let replicated = PositionedStream::new(
            RegisteredStream {
                rows: rows.clone(),
                positions: stream.clone(),
                writer: None,
            },
            "reader",
            stats.clone(),
        );
        replicated.on_position("w1", 2).await.expect("caught up");
        replicated.on_position("w2", 1).await.expect("caught up");
        let listener = notifier.listen(vec!["!c:x".to_owned()]);
        // Replication stops; PostgreSQL has w1 at 5.
        assert!(replicated.catch_up("w1", 5).await.expect("read back"));
        assert_eq!(replicated.heard_from("w1"), 5);
        assert!(notifier.has_changed_since("written", "!b:x", 2));
        // One read back for the POSITION, two now.
        assert_eq!(stats.caught_up_rows.load(Ordering::Relaxed), 3);
        // Nothing more to read, and the RDATA arriving late is not applied
        // again.
        assert!(!replicated.catch_up("w1", 5).await.expect("read back"));
        replicated.on_row("w1", 5, &json!("!c:x")).await;
        assert_eq!(stats.applied.load(Ordering::Relaxed), 0);
        // Neither this instance nor an unknown instance is caught up.
        assert!(!replicated.catch_up("reader", 9).await.expect("refused"));
        assert!(!replicated.catch_up("w3", 9).await.expect("refused"));
        // 4 was rolled back: w2 holds the floor back at the gap.
        assert_eq!(stream.persisted_upto(), 3, "w2 holds the floor back");
        assert!(
            !listener.wait(Duration::from_millis(10)).await,
            "!c's row at 5 cannot be read yet: its waiters sleep on"
        );
        // w2 is gone: it wrote nothing more than what PostgreSQL has (up
        // to 5, the sequence); settled there, it holds back nobody.
        replicated.on_writer_gone("w2", 5).await.expect("settled");
        assert_eq!(replicated.heard_from("w2"), 5);
        assert_eq!(stream.persisted_upto(), 5);
        assert!(listener.wait(Duration::from_secs(1)).await, "now they wake");
        assert_eq!(
            stats.applied.load(Ordering::Relaxed),
            0,
            "nothing applied twice"
        );
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
    /// What each writer has announced, by stream then writer, whether or
    /// not this instance has processed it yet: replication lag is measured
    /// against its highest position, and the stall watchdog sees from its
    /// message count that replication delivers again.
    announced: Mutex<BTreeMap<String, BTreeMap<String, Heard>>>,
    /// The writers the stall watchdog (`streams::stall`) finds stalled, as
    /// `(stream, writer)`.
    stalled: Mutex<BTreeSet<(String, String)>>,
    /// Catch-ups from PostgreSQL that found what replication had not
    /// brought, by stream.
    recoveries: Mutex<BTreeMap<String, u64>>,
}

/// What this instance heard from one writer of one stream over Redis.
#[derive(Debug, Clone, Copy, Default)]
struct Heard {
    /// The highest position announced (POSITION, or the token of an RDATA).
    position: i64,
    /// RDATA and POSITION messages heard.
    messages: u64,
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
            "stalled_writers": self.stalled_json(),
            "recoveries": self.recoveries(),
        })
    }

    /// Records that `writer` announced `position` on `stream`; positions
    /// never go back.
    pub fn announce(&self, stream: &str, writer: &str, position: i64) {
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let heard = announced
            .entry(stream.to_owned())
            .or_default()
            .entry(writer.to_owned())
            .or_insert(Heard {
                position,
                messages: 0,
            });
        heard.position = heard.position.max(position);
        heard.messages += 1;
    }

    /// How many messages of `writer` on `stream` this instance has heard.
    pub fn messages_from(&self, stream: &str, writer: &str) -> u64 {
        self.announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .and_then(|writers| writers.get(writer))
            .map_or(0, |heard| heard.messages)
    }

    /// Marks `writer` of `stream` stalled, or no longer; true when that
    /// changed.
    pub fn set_stalled(&self, stream: &str, writer: &str, stalled: bool) -> bool {
        let mut set = self.stalled.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (stream.to_owned(), writer.to_owned());
        if stalled {
            set.insert(key)
        } else {
            set.remove(&key)
        }
    }

    /// Whether `writer` of `stream` is stalled.
    pub fn is_stalled(&self, stream: &str, writer: &str) -> bool {
        self.stalled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(stream.to_owned(), writer.to_owned()))
    }

    /// The stalled writers, as `(stream, writer)`.
    pub fn stalled(&self) -> Vec<(String, String)> {
        self.stalled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The stalled writers, as `[{"stream", "writer"}]` (the cluster view's
    /// `stalled_writers`).
    pub fn stalled_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.stalled()
                .iter()
                .map(|(stream, writer)| serde_json::json!({ "stream": stream, "writer": writer }))
                .collect(),
        )
    }

    /// Counts one catch-up from PostgreSQL that found what replication had
    /// not brought.
    pub fn recovered(&self, stream: &str) {
        *self
            .recoveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(stream.to_owned())
            .or_insert(0) += 1;
    }

    /// The recoveries of each stream so far.
    pub fn recoveries(&self) -> BTreeMap<String, u64> {
        self.recoveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The lag of each writer of `stream`, from how far this instance
    /// processed each (`processed`, in the order given).
    pub fn lag(&self, stream: &str, processed: Vec<(String, i64)>) -> Vec<WriterLag> {
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let heard = announced.get(stream);
        processed
            .into_iter()
            .map(|(writer, processed)| WriterLag {
                stream: stream.to_owned(),
                announced: heard
                    .and_then(|writers| writers.get(&writer))
                    .map_or(processed, |heard| heard.position),
                writer,
                processed,
            })
            .collect()
    }
}

/// What replication needs of one stream on one instance, whatever its
/// bookkeeping: [`PositionedStream`] for the streams of the registry, the
/// `caches` stream's own for it. Replication never names a stream.
///
/// Rows reach a stream three ways: RDATA ([`on_row`](Self::on_row)), the
/// catch-up of a POSITION ([`on_position`](Self::on_position)), and the
/// stall watchdog's catch-up from PostgreSQL ([`catch_up`](Self::catch_up)).
/// A stream applies them one at a time, each only if it is beyond how far
/// the writer was applied, so none is applied twice or skipped by a race.
pub trait ReplicatedStream: Send + Sync {
    fn spec(&self) -> &'static StreamSpec;

    fn name(&self) -> &'static str {
        self.spec().name
    }

    /// A subscription began (before `REPLICATE` is sent): rows of every
    /// writer are dropped until its `POSITION` on this subscription.
    fn subscribed(&self) -> BoxFuture<'_, Result<(), StreamError>>;

    /// The position to announce when asked (`REPLICATE`), when this
    /// instance writes the stream.
    fn local_position(&self) -> Option<i64>;

    /// A position this writer may claim without writing (idle claim).
    fn idle_claim(&self) -> Option<i64>;

    /// An `RDATA` row from another instance.
    fn on_row<'a>(&'a self, writer: &'a str, token: i64, row: &'a Value) -> BoxFuture<'a, ()>;

    /// A `POSITION` from another instance: catch up the gap, then advance.
    fn on_position<'a>(
        &'a self,
        writer: &'a str,
        new: i64,
    ) -> BoxFuture<'a, Result<(), StreamError>>;

    /// How far this instance processed each writer, for the lag.
    fn processed(&self) -> Vec<(String, i64)>;

    /// `writer` can write no more, and wrote nothing above `position`:
    /// read back what it wrote that was not heard, then let it hold the
    /// floor no further back than `position`.
    fn on_writer_gone<'a>(
        &'a self,
        writer: &'a str,
        position: i64,
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        let _ = (writer, position);
        Box::pin(async { Ok(()) })
    }

    /// How far PostgreSQL says each other writer has written: the positions
    /// a reader may catch up to without hearing them (every row up to one
    /// is committed). Empty for a stream whose rows live in memory.
    fn written<'a>(
        &'a self,
        pool: &'a deadpool_postgres::Pool,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StreamError>>;

    /// How far this instance has applied `writer`'s own rows (not the
    /// floor other writers moved): what [`written`](Self::written) is
    /// compared with.
    fn heard_from(&self, writer: &str) -> i64;

    /// Reads `writer`'s rows up to `upto` back from PostgreSQL and applies
    /// them as replication would have (caches, then positions, then
    /// waiters), without waiting for a `POSITION`. True when this moved the
    /// writer's position: replication had not brought it there.
    fn catch_up<'a>(
        &'a self,
        writer: &'a str,
        upto: i64,
    ) -> BoxFuture<'a, Result<bool, StreamError>>;
}

/// A stream of the registry as replication drives it: rows of a writer are
/// applied in order once its first `POSITION` on the current subscription
/// was caught up (from PostgreSQL, or by asking the writer), exactly as
/// Synapse's `ReplicationCommandHandler` does (reference §2.5).
pub struct PositionedStream {
    stream: RegisteredStream,
    instance: String,
    stats: Arc<ReplicationStats>,
    /// The writers whose POSITION this subscription has caught up.
    connected: Mutex<HashSet<String>>,
    /// Held while rows are applied: RDATA, a POSITION's catch-up and the
    /// stall watchdog's never interleave.
    applying: tokio::sync::Mutex<()>,
}

impl PositionedStream {
    pub fn new(
        stream: RegisteredStream,
        instance: &str,
        stats: Arc<ReplicationStats>,
    ) -> PositionedStream {
        PositionedStream {
            stream,
            instance: instance.to_owned(),
            stats,
            connected: Mutex::new(HashSet::new()),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn connected(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn positions(&self) -> &SharedStream {
        &self.stream.positions
    }

    fn is_other_writer(&self, writer: &str) -> bool {
        writer != self.instance
            && self
                .positions()
                .read(|p| p.writers().iter().any(|w| w == writer))
    }

    /// Applies `writer`'s rows `current < position <= new` read back from
    /// where they live, then advances it to `new`; the caller holds
    /// `applying`. True when the writer's position moved.
    async fn read_back(&self, writer: &str, new: i64) -> Result<bool, StreamError> {
        if !self.apply_rows_upto(writer, new).await? {
            return Ok(false);
        }
        self.positions().update(|p| p.advance(writer, new));
        Ok(true)
    }

    /// Reads `writer`'s rows above what was heard of it up to `upto` back
    /// from PostgreSQL and applies each, advancing the writer to each row,
    /// not to `upto` (which may not be an id it persisted). False when
    /// nothing was missing.
    async fn apply_rows_upto(&self, writer: &str, upto: i64) -> Result<bool, StreamError> {
        // Not `writer_position`: the floor another writer's idle claim
        // moved would skip this writer's rows.
        let current = self.positions().read(|p| p.heard_from(writer));
        if upto <= current {
            return Ok(false);
        }
        for (position, row) in self.stream.rows.read_rows(writer, current, upto).await? {
            self.stream.rows.apply(writer, position, &row);
            self.positions()
                .record(self.stream.rows.keys(&row), position, |p| {
                    p.advance(writer, position)
                });
            self.stats.caught_up_rows.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }
}

impl ReplicatedStream for PositionedStream {
    fn spec(&self) -> &'static StreamSpec {
        self.stream.spec()
    }

    fn subscribed(&self) -> BoxFuture<'_, Result<(), StreamError>> {
        self.connected().clear();
        Box::pin(async { Ok(()) })
    }

    fn local_position(&self) -> Option<i64> {
        self.stream
            .writer
            .as_ref()
            .map(|_| self.positions().writer_position(&self.instance))
    }

    fn idle_claim(&self) -> Option<i64> {
        self.stream.writer.as_ref()?;
        self.positions().read(|p| p.idle_claim())
    }

    fn on_row<'a>(&'a self, writer: &'a str, token: i64, row: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if writer == self.instance || !self.connected().contains(writer) {
                return;
            }
            let _applying = self.applying.lock().await;
            if token <= self.positions().read(|p| p.heard_from(writer)) {
                return;
            }
            self.stream.rows.apply(writer, token, row);
            self.positions()
                .record(self.stream.rows.keys(row), token, |p| {
                    p.advance(writer, token)
                });
            self.stats.applied.fetch_add(1, Ordering::Relaxed);
        })
    }

    fn on_position<'a>(
        &'a self,
        writer: &'a str,
        new: i64,
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        Box::pin(async move {
            if writer == self.instance {
                return Ok(());
            }
            let _applying = self.applying.lock().await;
            self.read_back(writer, new).await?;
            self.connected().insert(writer.to_owned());
            Ok(())
        })
    }

    fn on_writer_gone<'a>(
        &'a self,
        writer: &'a str,
        position: i64,
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        Box::pin(async move {
            if writer == self.instance {
                return Ok(());
            }
            let _applying = self.applying.lock().await;
            // The rows of a stream kept in memory went with the writer
            // (typing: nobody types there any more); stored ones are read back.
            if !matches!(
                self.stream.spec().storage,
                crate::streams::registry::Storage::Memory
            ) {
                self.apply_rows_upto(writer, position).await?;
            }
            self.positions().update(|p| p.settle(writer, position));
            Ok(())
        })
    }

    fn processed(&self) -> Vec<(String, i64)> {
        self.positions().read(|positions| {
            positions
                .writers()
                .iter()
                .map(|writer| (writer.clone(), positions.current_token_for_writer(writer)))
                .collect()
        })
    }

    /// The greater of each writer's `stream_positions` row (written in the
    /// transaction of its rows; a writer commits one transaction at a time)
    /// and its stored claim (what it announced idle), for the configured
    /// writers other than this instance.
    fn written<'a>(
        &'a self,
        pool: &'a deadpool_postgres::Pool,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StreamError>> {
        Box::pin(async move {
            if matches!(self.spec().storage, Storage::Memory) {
                return Ok(Vec::new());
            }
            let written = crate::storage::streams::written_positions(pool, self.name()).await?;
            Ok(written
                .into_iter()
                .filter(|(writer, _)| self.is_other_writer(writer))
                .collect())
        })
    }

    fn heard_from(&self, writer: &str) -> i64 {
        self.positions().read(|p| p.heard_from(writer))
    }

    /// Catch-up of a configured writer only: an unknown one would become a
    /// writer here and hold back the floor.
    fn catch_up<'a>(
        &'a self,
        writer: &'a str,
        upto: i64,
    ) -> BoxFuture<'a, Result<bool, StreamError>> {
        Box::pin(async move {
            // Without waiting for the lock when nothing is missing: every
            // read-your-writes sync that waited in vain asks.
            if !self.is_other_writer(writer) || self.heard_from(writer) >= upto {
                return Ok(false);
            }
            let _applying = self.applying.lock().await;
            self.read_back(writer, upto).await
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
    /// A publisher whose commands wait in `queue` until
    /// [`Replication::start`] publishes them.
    pub fn new() -> (Publisher, PublishQueue) {
        let (commands, queue) = mpsc::unbounded_channel();
        (Publisher { commands }, PublishQueue(queue))
    }

    pub fn publish(&self, command: Command) {
        // The task ends only with the node; then nobody needs the command.
        let _ = self.commands.send(command);
    }
}

/// The commands a [`Publisher`] queued, for the publishing task.
pub struct PublishQueue(pub(crate) mpsc::UnboundedReceiver<Command>);

/// Where and as whom an instance replicates.
pub struct ReplicationConfig {
    /// The Redis the mailboxes use (the same URL, credentials and TLS).
    pub redis: redis::Client,
    /// The pub/sub channel: the server name, as in Synapse.
    pub channel: String,
    pub instance: String,
    pub key: Option<HmacKey>,
}

/// The running replication of one instance; dropping it stops its tasks.
pub struct Replication {
    pub stats: Arc<ReplicationStats>,
    streams: Vec<Arc<dyn ReplicatedStream>>,
    claims: Arc<Claims>,
    cut_off: Arc<CutOff>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The positions this instance announced as a writer (`POSITION`: idle
/// claims and answers to `REPLICATE`), by stream: what it stores in
/// PostgreSQL for readers that cannot hear it (`streams::stall`).
#[derive(Default)]
pub struct Claims(Mutex<BTreeMap<&'static str, i64>>);

impl Claims {
    fn announced(&self, stream: &'static str, position: i64) {
        let mut claims = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let claim = claims.entry(stream).or_insert(position);
        *claim = (*claim).max(position);
    }

    /// The latest claim announced on each stream.
    pub fn latest(&self) -> Vec<(&'static str, i64)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(stream, claim)| (*stream, *claim))
            .collect()
    }
}

/// The test hook that cuts an instance off from replication, as a
/// partitioned Redis would: while it is active, every message that arrives
/// is dropped; when it ends, the subscription is made again, as after a
/// partition that healed.
#[derive(Default)]
struct CutOff {
    active: AtomicBool,
    ended: tokio::sync::Notify,
}

impl Drop for Replication {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Replication {
    /// `writer` of `stream` can write no more (it holds no shard and is no
    /// live member): everything it committed is at or below `position`.
    /// Its rows this instance has not heard of are read back from
    /// PostgreSQL (those it committed but never announced, because it
    /// died), and its position moves to `position`, so that it no longer
    /// holds back the floor every token is cut at.
    pub async fn writer_gone(
        &self,
        stream: &str,
        writer: &str,
        position: i64,
    ) -> Result<(), StreamError> {
        match self.streams.iter().find(|s| s.name() == stream) {
            Some(replicated) => replicated.on_writer_gone(writer, position).await,
            None => Ok(()),
        }
    }

    /// Starts publishing what `publisher` queues and reading every stream
    /// of `streams`; an unreachable Redis is retried in the background.
    pub fn start(
        config: ReplicationConfig,
        publisher: Publisher,
        queue: PublishQueue,
        streams: Vec<Arc<dyn ReplicatedStream>>,
        stats: Arc<ReplicationStats>,
    ) -> Replication {
        let client = config.redis.clone();
        let config = Arc::new(config);
        let streams_by_name: Arc<BTreeMap<&'static str, Arc<dyn ReplicatedStream>>> = Arc::new(
            streams
                .iter()
                .map(|stream| (stream.name(), Arc::clone(stream)))
                .collect(),
        );
        let claims = Arc::new(Claims::default());
        let cut_off = Arc::new(CutOff::default());
        let tasks = vec![
            tokio::spawn(publish_loop(client.clone(), config.clone(), queue.0)),
            tokio::spawn(read_loop(
                client,
                config.clone(),
                Reader {
                    streams: streams_by_name.clone(),
                    publisher: publisher.clone(),
                    stats: stats.clone(),
                    claims: claims.clone(),
                    cut_off: cut_off.clone(),
                },
            )),
            tokio::spawn(announce_idle_positions(
                config,
                streams_by_name,
                publisher,
                claims.clone(),
            )),
        ];
        Replication {
            stats,
            streams,
            claims,
            cut_off,
            tasks,
        }
    }

    /// The lag of every writer of every stream, as this instance sees it.
    pub fn lags(&self) -> Vec<WriterLag> {
        self.streams
            .iter()
            .flat_map(|stream| self.stats.lag(stream.name(), stream.processed()))
            .collect()
    }

    /// Every stream this instance replicates.
    pub fn streams(&self) -> &[Arc<dyn ReplicatedStream>] {
        &self.streams
    }

    /// What this instance announced as a writer.
    pub fn claims(&self) -> Arc<Claims> {
        self.claims.clone()
    }

    /// Reads `writer`'s rows of `stream` up to `upto` back from PostgreSQL
    /// (a reader that waited for them in vain), counted as a recovery when
    /// replication had not brought them. True when it did.
    pub async fn catch_up(
        &self,
        stream: &str,
        writer: &str,
        upto: i64,
    ) -> Result<bool, StreamError> {
        let Some(replicated) = self.streams.iter().find(|s| s.name() == stream) else {
            return Ok(false);
        };
        let moved = replicated.catch_up(writer, upto).await?;
        if moved {
            self.stats.recovered(stream);
        }
        Ok(moved)
    }

    /// Test hook: while `cut` is true, every replication message that
    /// arrives here is dropped, as if Redis were partitioned away; setting
    /// it back to false subscribes again, as after the partition healed.
    pub fn cut_off(&self, cut: bool) {
        let was = self.cut_off.active.swap(cut, Ordering::SeqCst);
        if was && !cut {
            self.cut_off.ended.notify_one();
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

type StreamsByName = Arc<BTreeMap<&'static str, Arc<dyn ReplicatedStream>>>;

/// Writers announce their position when it moved without a write of their
/// own (an idle writer claims what others allocated), so one quiet writer
/// never holds back everyone's persisted-up-to position.
async fn announce_idle_positions(
    config: Arc<ReplicationConfig>,
    streams: StreamsByName,
    publisher: Publisher,
    claims: Arc<Claims>,
) {
    let mut announced: BTreeMap<&'static str, i64> = streams
        .values()
        .filter_map(|stream| Some((stream.name(), stream.local_position()?)))
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        for stream in streams.values() {
            let Some(claim) = stream.idle_claim() else {
                continue;
            };
            let last = announced.entry(stream.name()).or_insert(0);
            if claim > *last {
                publisher.publish(Command::Position {
                    stream: stream.name().to_owned(),
                    instance: config.instance.clone(),
                    prev: *last,
                    new: claim,
                });
                claims.announced(stream.name(), claim);
                *last = claim;
            }
        }
    }
}

/// What the reading task works with.
struct Reader {
    streams: StreamsByName,
    publisher: Publisher,
    stats: Arc<ReplicationStats>,
    claims: Arc<Claims>,
    cut_off: Arc<CutOff>,
}

async fn read_loop(client: redis::Client, config: Arc<ReplicationConfig>, reader: Reader) {
    loop {
        match read_connection(&client, &config, &reader).await {
            Ok(()) => tracing::warn!("replication: subscription ended, reconnecting"),
            Err(error) => {
                tracing::warn!(error = %error, "replication: subscription failed, reconnecting")
            }
        }
        reader.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RETRY).await;
    }
}

/// Answers `REPLICATE`: the position of every stream this instance writes.
fn announce_positions(config: &ReplicationConfig, reader: &Reader) {
    for stream in reader.streams.values() {
        if let Some(position) = stream.local_position() {
            reader.publisher.publish(Command::Position {
                stream: stream.name().to_owned(),
                instance: config.instance.clone(),
                prev: position,
                new: position,
            });
            reader.claims.announced(stream.name(), position);
        }
    }
}

/// One subscription: subscribe, ask every writer for its position, then apply
/// what arrives in order. Rows of a writer are applied only after its first
/// POSITION on this subscription, which catches up what was missed.
async fn read_connection(
    client: &redis::Client,
    config: &ReplicationConfig,
    reader: &Reader,
) -> Result<(), ReplicationError> {
    let Reader {
        streams,
        publisher,
        stats,
        cut_off,
        ..
    } = reader;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&config.channel).await?;
    for stream in streams.values() {
        stream.subscribed().await?;
    }
    publisher.publish(Command::Replicate);
    announce_positions(config, reader);
    let mut messages = pubsub.on_message();
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            // The cut-off ended: subscribe again, as after a partition.
            () = cut_off.ended.notified() => return Ok(()),
        };
        let Some(message) = message else {
            break;
        };
        if cut_off.active.load(Ordering::SeqCst) {
            continue;
        }
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
            Command::Replicate => announce_positions(config, reader),
            Command::Rdata {
                stream,
                instance,
                token,
                row,
            } => {
                // Rows of a batch come with the token of its last row; no
                // writer here sends batches.
                let (Some(token), Some(replicated)) = (token, streams.get(stream.as_str())) else {
                    continue;
                };
                if instance == config.instance {
                    continue;
                }
                // Announced even while its rows are still dropped (before
                // the writer's first POSITION): that is lag too.
                stats.announce(&stream, &instance, token);
                replicated.on_row(&instance, token, &row).await;
            }
            Command::Position {
                stream,
                instance,
                new,
                ..
            } => {
                let Some(replicated) = streams.get(stream.as_str()) else {
                    continue;
                };
                if instance == config.instance {
                    continue;
                }
                stats.announce(&stream, &instance, new);
                replicated.on_position(&instance, new).await?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum ReplicationError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}
