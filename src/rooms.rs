//! The Matrix room model: room versions, events (PDUs) with their hashes,
//! signatures and auth rules, and filters over them.

pub mod filter;
pub mod pdu;
pub mod version;
pub mod visibility;
