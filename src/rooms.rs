//! The Matrix room model: room versions, events (PDUs) with their hashes,
//! signatures and auth rules, filters over them, history visibility, and
//! who may read a room ([`access`]).

pub mod access;
pub mod filter;
pub mod pdu;
pub mod power;
pub mod relations;
pub mod restricted;
pub mod version;
pub mod visibility;
