//! The in-process integration tests: one binary (one link) for every area of
//! the Client-Server API. Each test starts its own cluster (`cluster.rs`) on a
//! fresh PostgreSQL database; every answer is checked against the Matrix spec
//! (`spec.rs`).
//!
//! They need a PostgreSQL server they may create databases on:
//! `LATTICE_PG_FAST=1 .ci/postgres.sh start` runs one on 127.0.0.1:5433, the
//! default; `LATTICE_TEST_DATABASE_URL` names another (its database is only
//! used to create and drop the tests' own). Then `cargo test --test it`;
//! `RUST_LOG=lattice=debug` shows the servers' logs.

mod cluster;
mod spec;

mod account_data;
mod account_management;
mod accounts;
mod admin;
mod authorization;
mod backup;
mod device_lists;
mod devices;
mod directory;
mod discovery;
mod errors;
mod filter;
mod follower;
mod fuzz;
mod idempotency;
mod keys;
mod knocking;
mod limits;
mod media;
mod membership;
mod messages;
mod metrics;
mod notifications;
mod persister;
mod presence;
mod profile;
mod push_rules;
mod receipts;
mod refresh_tokens;
mod registration_tokens;
mod relations;
mod replication;
mod reports;
mod restricted_joins;
mod room_summary;
mod room_upgrades;
mod rooms;
mod search;
mod shards;
mod spaces;
mod state;
mod sync;
mod timestamp_to_event;
mod to_device;
mod typing;
mod user_directory;
mod voip;
mod whois;
