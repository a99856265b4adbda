//! Streams (DESIGN §3-4): the [`registry`] of every stream, each in a module
//! of its own (its row, shard key and catch-up); positions and their id
//! generator; the [`writer`] every stream's writer uses; the [`follower`]
//! that processes a stream in order from a stored checkpoint; the tokens clients
//! hold; the notifier that wakes long-polls when a stream advances;
//! replication, which carries rows and positions between instances; the
//! [`stall`] watchdog, which reads back from PostgreSQL what replication
//! failed to bring; and the settling of writers that are [`gone`].

pub mod account_data;
pub mod caches;
pub mod change_cache;
pub mod device_lists;
pub mod events;
pub mod follower;
pub mod gone;
pub mod id_gen;
pub mod notifier;
pub mod presence;
pub mod push_rules;
pub mod receipts;
pub mod registry;
pub mod replication;
pub mod shared;
pub mod stall;
pub mod to_device;
pub mod token;
pub mod typing;
pub mod writer;
