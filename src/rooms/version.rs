//! The room versions Lattice creates and joins.

use ruma::RoomVersionId;

pub const SUPPORTED_ROOM_VERSIONS: [&str; 3] = ["10", "11", "12"];

/// The room version for `text`, if Lattice supports it.
pub fn parse_supported(text: &str) -> Option<RoomVersionId> {
    match text {
        "10" => Some(RoomVersionId::V10),
        "11" => Some(RoomVersionId::V11),
        "12" => Some(RoomVersionId::V12),
        _ => None,
    }
}
