//! A room's current power levels, read from its current state: what the
//! endpoints that act for a user ask before they write (may this user send a
//! tombstone, who of the local members may invite), so that they answer
//! before the event persister would refuse the event, or pick who vouches
//! for a restricted join.

use ruma::events::room::power_levels::RoomPowerLevels;
use ruma::RoomVersionId;

use crate::error::{ApiError, ApiResult};
use crate::roles::events::parse_stored_pdu;
use crate::rooms::pdu;
use crate::rooms::version::parse_supported;
use crate::storage::rooms;
use crate::storage::rooms::StoredEvent;
use deadpool_postgres::Pool;

/// The room's version and its effective power levels (spec defaults without
/// a power-levels event; creators privileged in version 12); `None` for a
/// room this server does not know.
pub async fn current_power_levels(
    pool: &Pool,
    room_id: &str,
) -> ApiResult<Option<(RoomVersionId, RoomPowerLevels)>> {
    let Some(info) = rooms::room_info(pool, room_id).await? else {
        return Ok(None);
    };
    let version = parse_supported(&info.room_version).ok_or_else(|| {
        ApiError::internal(format!("room of unsupported version {}", info.room_version))
    })?;
    let Some(create) = rooms::current_state_event(pool, room_id, "m.room.create", "").await? else {
        return Ok(None);
    };
    let power_levels = rooms::current_state_event(pool, room_id, "m.room.power_levels", "").await?;
    let levels = power_levels_of(&version, &create, power_levels.as_ref())?;
    Ok(Some((version, levels)))
}

/// [`pdu::room_power_levels`] over stored events.
pub fn power_levels_of(
    version: &RoomVersionId,
    create: &StoredEvent,
    power_levels: Option<&StoredEvent>,
) -> ApiResult<RoomPowerLevels> {
    let parse = |event: &StoredEvent| {
        parse_stored_pdu(version, (*event.pdu).clone()).map_err(ApiError::internal)
    };
    let create = parse(create)?;
    let power_levels = power_levels.map(parse).transpose()?;
    pdu::room_power_levels(version, &create, power_levels.as_ref()).map_err(ApiError::internal)
}
