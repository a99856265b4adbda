//! The stream registry (DESIGN §3-4): every stream Lattice has, listed once.
//!
//! A stream is described twice over. Its static facts are a [`StreamSpec`]
//! (its name, how its rows are sharded over writers, where they live, its
//! place in the `/sync` token), a `const SPEC` in the stream's own module,
//! listed in [`SPECS`]. Its behaviour on a running instance is a value
//! implementing [`StreamRows`] (which keys a row wakes, how a reader catches
//! up a gap, what a row from another instance changes here), made for each
//! node by [`stream_rows`]. Replication, the notifier, metrics, the cluster
//! view and the `/sync` token iterate over these; they never name a stream.
//!
//! Adding a stream: write `streams/<name>.rs` with its `SPEC` and its
//! `StreamRows`, add the spec to [`SPECS`] and one line to [`stream_rows`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::id_gen::StreamPositions;
use super::notifier::Notifier;
use super::shared::SharedStream;
use super::token::{MultiWriterStreamToken, RoomStreamToken, StreamKey, StreamToken};
use super::writer::StreamWriter;
use crate::storage::streams::StreamTable;

/// What a stream's rows are sharded by over its writers (the key given to
/// Synapse's sharding rule, `lattice_actors::shard_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardBy {
    Room,
    User,
    /// Every instance writes rows of its own (the `caches` stream).
    Instance,
}

/// Where a stream's rows live, which says how a reader catches up a gap.
#[derive(Debug, Clone, Copy)]
pub enum Storage {
    /// Rows are stored: a reader reads the gap back from this table.
    Postgres(&'static StreamTable),
    /// Rows live in their writer's memory: a reader asks the writer.
    Memory,
}

/// The component of the `/sync` token that holds a stream's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSlot {
    Room,
    Presence,
    Typing,
    Receipts,
    AccountData,
    PushRules,
    ToDevice,
    DeviceLists,
}

impl TokenSlot {
    /// The component with `position` in it.
    pub fn key(self, position: i64) -> StreamKey {
        match self {
            TokenSlot::Room => StreamKey::Room(RoomStreamToken::live(position)),
            TokenSlot::Presence => StreamKey::Presence(position),
            TokenSlot::Typing => StreamKey::Typing(position),
            TokenSlot::Receipts => StreamKey::Receipts(MultiWriterStreamToken::new(position)),
            TokenSlot::AccountData => StreamKey::AccountData(position),
            TokenSlot::PushRules => StreamKey::PushRules(position),
            TokenSlot::ToDevice => StreamKey::ToDevice(position),
            TokenSlot::DeviceLists => StreamKey::DeviceLists(MultiWriterStreamToken::new(position)),
        }
    }

    /// The position `token` holds in this component (its minimum, for a
    /// vector clock: every writer has reached it).
    pub fn position(self, token: &StreamToken) -> i64 {
        match self {
            TokenSlot::Room => token.room.stream(),
            TokenSlot::Presence => token.presence,
            TokenSlot::Typing => token.typing,
            TokenSlot::Receipts => token.receipts.stream(),
            TokenSlot::AccountData => token.account_data,
            TokenSlot::PushRules => token.push_rules,
            TokenSlot::ToDevice => token.to_device,
            TokenSlot::DeviceLists => token.device_lists.stream(),
        }
    }
}

/// The static facts of one stream.
#[derive(Debug)]
pub struct StreamSpec {
    /// The name on the wire (`RDATA <name> ...`), in `stream_positions`,
    /// and the `stream_writers` key.
    pub name: &'static str,
    pub shard_by: ShardBy,
    pub storage: Storage,
    /// The PostgreSQL sequence its positions come from.
    pub sequence: &'static str,
    /// Its component of the `/sync` token (none: clients never wait on it).
    pub token: Option<TokenSlot>,
}

impl StreamSpec {
    /// Whether its writers are the instances `stream_writers` lists (every
    /// stream but `caches`, which each instance writes for itself).
    pub fn has_configured_writers(&self) -> bool {
        self.shard_by != ShardBy::Instance
    }
}

/// Every stream, in the order metrics and the cluster view list them.
pub const SPECS: &[&StreamSpec] = &[
    &super::events::SPEC,
    &super::receipts::SPEC,
    &super::account_data::SPEC,
    &super::typing::SPEC,
    &super::caches::SPEC,
    &super::push_rules::SPEC,
    &super::presence::SPEC,
    &super::device_lists::SPEC,
    &super::to_device::SPEC,
];

/// The spec of the stream named `name`.
pub fn spec(name: &str) -> Option<&'static StreamSpec> {
    SPECS.iter().copied().find(|spec| spec.name == name)
}

/// The streams whose writers `stream_writers` configures.
pub fn configured_streams() -> impl Iterator<Item = &'static StreamSpec> {
    SPECS
        .iter()
        .copied()
        .filter(|spec| spec.has_configured_writers())
}

/// Why rows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("asking writer `{writer}`: {message}")]
    Writer { writer: String, message: String },
}

/// A stream's behaviour on a running instance.
pub trait StreamRows: std::any::Any + Send + Sync {
    fn spec(&self) -> &'static StreamSpec;

    /// The notifier keys (room ids, user ids) a row wakes.
    fn keys(&self, row: &Value) -> Vec<String>;

    /// The rows `writer` wrote with `after < position <= upto`, in order:
    /// read back from PostgreSQL, or asked of the writer (memory streams).
    fn read_rows<'a>(
        &'a self,
        writer: &'a str,
        after: i64,
        upto: i64,
    ) -> BoxFuture<'a, Result<Vec<(i64, Value)>, StreamError>>;

    /// Applies a row another instance wrote, before long-polls hear of it
    /// (replicas, caches). A local writer updates local state itself.
    fn apply(&self, _writer: &str, _position: i64, _row: &Value) {}
}

/// One stream on one instance: its facts, its behaviour, its positions, and
/// its writing end when this instance writes it.
#[derive(Clone)]
pub struct RegisteredStream {
    pub rows: Arc<dyn StreamRows>,
    pub positions: SharedStream,
    pub writer: Option<StreamWriter>,
}

impl RegisteredStream {
    pub fn spec(&self) -> &'static StreamSpec {
        self.rows.spec()
    }
}

/// Every positioned stream of one instance (all but `caches`, whose
/// bookkeeping is its own), by name. Cheap to clone.
#[derive(Clone)]
pub struct Streams {
    notifier: Notifier,
    streams: Arc<BTreeMap<&'static str, RegisteredStream>>,
}

impl Streams {
    pub fn new(notifier: Notifier, streams: Vec<RegisteredStream>) -> Streams {
        Streams {
            notifier,
            streams: Arc::new(
                streams
                    .into_iter()
                    .map(|stream| (stream.spec().name, stream))
                    .collect(),
            ),
        }
    }

    /// This instance's view of the stream `name`.
    pub fn get(&self, name: &str) -> Option<&SharedStream> {
        self.streams.get(name).map(|stream| &stream.positions)
    }

    /// The stream `name` with its behaviour and writer.
    pub fn registered(&self, name: &str) -> Option<&RegisteredStream> {
        self.streams.get(name)
    }

    /// The behaviour of `name` as its own type, for the code that reads
    /// what it holds (a replica, a cache).
    pub fn rows<T: StreamRows>(&self, name: &str) -> Option<&T> {
        let rows: &dyn std::any::Any = self.streams.get(name)?.rows.as_ref();
        rows.downcast_ref::<T>()
    }

    /// The writing end of `name`, when this instance writes it.
    pub fn writer(&self, name: &str) -> Option<&StreamWriter> {
        self.streams.get(name).and_then(|s| s.writer.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &RegisteredStream> {
        self.streams.values()
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The `/sync` token of everything this instance has seen persisted
    /// on every stream.
    pub fn current_token(&self) -> StreamToken {
        self.advance(&StreamToken::START)
    }

    /// Whether this instance's token ([`advance`](Self::advance)) is at
    /// least as far as `token` in every registered stream's component.
    pub fn has_reached(&self, token: &StreamToken) -> bool {
        self.streams.values().all(|stream| {
            let spec = stream.spec();
            spec.token
                .is_none_or(|slot| self.notifier.position(spec.name) >= slot.position(token))
        })
    }

    /// Waits (at most `timeout`) until this instance has seen as far as
    /// `token`, a token another instance gave: Synapse's
    /// `wait_for_stream_token`. An answer from an instance that lags would
    /// otherwise start from its own, earlier, position and repeat what the
    /// client already has. True when reached.
    pub async fn wait_for_token(&self, token: &StreamToken, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.has_reached(token) {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded: a move between the check and the subscription is
            // seen at the next check.
            self.notifier
                .changed((deadline - now).min(Duration::from_millis(20)))
                .await;
        }
        true
    }

    /// `base` with the component of every registered stream replaced by
    /// the position this instance has seen persisted (components of streams
    /// that do not exist yet are kept as they are). The notifier's position,
    /// which moves just after the stream's own: caches read at it.
    pub fn advance(&self, base: &StreamToken) -> StreamToken {
        let mut token = base.clone();
        for stream in self.streams.values() {
            let spec = stream.spec();
            if let Some(slot) = spec.token {
                token.replace(slot.key(self.notifier.position(spec.name)));
            }
        }
        token
    }
}

/// A stream's positions as loaded for `local_instance`, wrapped for sharing.
pub fn shared(
    spec: &'static StreamSpec,
    positions: StreamPositions,
    notifier: &Notifier,
) -> SharedStream {
    SharedStream::new(spec.name, positions, notifier.clone())
}

/// What a stream's behaviour may need of its node.
pub struct NodeParts {
    pub pool: deadpool_postgres::Pool,
    pub notifier: Notifier,
    pub recent_events: Arc<crate::caches::RecentEventsCache>,
    pub recent_push: Arc<crate::push::recent::RecentPushActions>,
    /// To ask a memory stream's writers for rows.
    pub mailboxes: Arc<crate::roles::Mailboxes>,
}

/// The behaviour of every stream whose writers `stream_writers` places,
/// made for one node: one line per stream.
pub fn stream_rows(parts: &NodeParts) -> Vec<Arc<dyn StreamRows>> {
    vec![
        Arc::new(super::events::EventsRows::new(
            parts.pool.clone(),
            parts.notifier.clone(),
            parts.recent_events.clone(),
            parts.recent_push.clone(),
        )),
        Arc::new(super::receipts::ReceiptsRows::new(parts.pool.clone())),
        Arc::new(super::account_data::AccountDataRows::new(
            parts.pool.clone(),
        )),
        Arc::new(super::typing::TypingRows::new(parts.mailboxes.clone())),
        Arc::new(super::push_rules::PushRulesRows::new(parts.pool.clone())),
        Arc::new(super::presence::PresenceRows::new(
            parts.pool.clone(),
            parts.mailboxes.clone(),
        )),
        Arc::new(super::device_lists::DeviceListsRows::new(
            parts.pool.clone(),
        )),
        Arc::new(super::to_device::ToDeviceRows::new(parts.pool.clone())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::id_gen::LoadedPositions;

    #[test]
    fn every_stream_is_listed_once_under_its_own_name() {
        let mut names: Vec<&str> = SPECS.iter().map(|spec| spec.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SPECS.len());
        assert_eq!(spec("events").map(|s| s.name), Some("events"));
        assert!(spec("nonsense").is_none());
        // caches has no configured writers: every instance writes its own.
        assert!(configured_streams().all(|spec| spec.name != "caches"));
    }

    /// A reader of `name` whose writer `w` is at `position`.
    fn stream_at(name: &'static str, position: i64, notifier: &Notifier) -> SharedStream {
        let positions = StreamPositions::new(
            "reader",
            &["w".to_owned()],
            LoadedPositions {
                stream_positions: vec![("w".to_owned(), position)],
                ..LoadedPositions::default()
            },
        );
        SharedStream::new(name, positions, notifier.clone())
    }

    #[test]
    fn the_sync_token_holds_each_streams_position_in_its_slot() {
        let notifier = Notifier::new();
        let events = stream_at("events", 7, &notifier);
        let rows: Arc<dyn StreamRows> = Arc::new(super::super::events::EventsRows::new(
            crate::storage::connect("postgresql://nobody@127.0.0.1:1/none", 1).expect("pool"),
            notifier.clone(),
            Arc::new(crate::caches::RecentEventsCache::default()),
            Arc::default(),
        ));
        let streams = Streams::new(
            notifier,
            vec![RegisteredStream {
                rows,
                positions: events,
                writer: None,
            }],
        );
        let token = streams.current_token();
        assert_eq!(token.to_string(), "s7_0_0_0_0_0_0_0");
        // Only registered streams' components move.
        let since: StreamToken = "s90_3_4_5_6_7_8_9".parse().expect("token");
        assert_eq!(streams.advance(&since).to_string(), "s7_3_4_5_6_7_8_9");
        assert_eq!(TokenSlot::Room.position(&since), 90);
        assert_eq!(TokenSlot::Typing.position(&since), 4);
    }
}
