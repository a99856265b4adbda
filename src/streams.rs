//! Streams (DESIGN §3): positions and their id generator, the tokens clients
//! hold, and the notifier that wakes long-polls when a stream advances.

pub mod caches;
pub mod change_cache;
pub mod id_gen;
pub mod notifier;
pub mod replication;
pub mod shared;
pub mod token;
