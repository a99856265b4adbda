//! Lattice: a Matrix homeserver whose work is done by actors that run all in
//! one process or spread over many processes sharing one PostgreSQL and one
//! Redis.
//!
//! - [`node`] is one running instance: configuration, database pool, actors
//!   (started by a `lattice_actors::Supervisor`) and the HTTP listener.
//! - [`api`] holds the HTTP handlers, one module per area of the Matrix spec;
//!   they read from [`storage`] and write through mailboxes to the writers of
//!   [`roles`] (the event persister is the writer of the events stream).
//! - [`streams`] has stream positions, client tokens and the notifier that
//!   wakes long-polling `/sync` requests.
//! - [`caches`] keeps hot database reads in memory, each kept true by the
//!   stream it follows or by explicit invalidation.
//! - [`rooms`] is the Matrix room model (PDUs, auth rules via ruma, filters,
//!   history visibility and who may read a room).
//! - [`sync`] computes a `/sync` answer, one module per section of it.
//! - [`signing_key`] is this server's ed25519 key, which signs its events
//!   (not the end-to-end encryption `keys` of the spec).
//! - [`bench`] is `lattice bench`, the load generator that measures Lattice
//!   and any other homeserver through the Client-Server API.
//! - [`up`] is `lattice up`, which runs a whole topology on one machine as
//!   child processes, and `lattice routes`, the nginx configuration in front
//!   of it.

pub mod api;
pub mod bench;
pub mod caches;
pub mod config;
pub mod error;
pub mod keys;
pub mod media;
pub mod node;
pub mod passwords;
pub mod push;
pub mod roles;
pub mod rooms;
pub mod shards;
pub mod signing_key;
pub mod storage;
pub mod streams;
pub mod sync;
pub mod up;
pub mod util;
