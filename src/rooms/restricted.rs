//! Restricted joins (`restricted` and `knock_restricted` join rules): who
//! may join without an invite because they are in one of the rooms the join
//! rules `allow`, and which local member vouches for the join with
//! `join_authorised_via_users_server`, as Synapse's event auth handler
//! decides. The room version's auth rules then check the voucher (joined,
//! with the power to invite); this module only picks them.

use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use crate::error::{ApiError, ApiResult, ErrCode};
use crate::node::Node;
use crate::rooms::power::current_power_levels;
use crate::storage::rooms;

/// The rooms whose members may join, when the join rule is `restricted` or
/// `knock_restricted` (every room version Lattice supports knows both);
/// `None` for any other join rule. Malformed entries are skipped.
pub fn allowed_rooms(join_rules: &Value) -> Option<Vec<String>> {
    let rule = join_rules.get("join_rule").and_then(Value::as_str)?;
    if rule != "restricted" && rule != "knock_restricted" {
        return None;
    }
    let allow = join_rules.get("allow").and_then(Value::as_array);
    Some(
        allow
            .into_iter()
            .flatten()
            .filter(|entry| entry.get("type").and_then(Value::as_str) == Some("m.room_membership"))
            .filter_map(|entry| entry.get("room_id").and_then(Value::as_str))
            .map(str::to_owned)
            .collect(),
    )
}

/// Whether `user_id` is joined to one of `room_ids`.
pub async fn is_in_any(node: &Node, room_ids: &[String], user_id: &str) -> ApiResult<bool> {
    for room_id in room_ids {
        let membership = rooms::membership(&node.pool, room_id, user_id).await?;
        if membership.is_some_and(|m| m.membership == "join") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Who vouches for `user`'s join of `room_id`: `None` when the join needs
/// no one (the user is invited or joined already, or the join rule is not
/// restricted); a local member who may invite when the user is in an
/// allowed room; 403 when they are in none, and 400
/// `M_UNABLE_TO_GRANT_JOIN` when no local member may invite.
pub async fn join_authoriser(
    node: &Node,
    room_id: &str,
    user: &UserId,
) -> ApiResult<Option<OwnedUserId>> {
    let membership = rooms::membership(&node.pool, room_id, user.as_str()).await?;
    if membership.is_some_and(|m| m.membership == "join" || m.membership == "invite") {
        return Ok(None);
    }
    let Some(join_rules) =
        rooms::current_state_event(&node.pool, room_id, "m.room.join_rules", "").await?
    else {
        return Ok(None);
    };
    let Some(allowed) = allowed_rooms(join_rules.content()) else {
        return Ok(None);
    };
    if !is_in_any(node, &allowed, user.as_str()).await? {
        return Err(ApiError::forbidden(
            "you are not invited to this room, nor in a room its join rules allow",
        ));
    }
    let Some((_, levels)) = current_power_levels(&node.pool, room_id).await? else {
        return Ok(None);
    };
    let server_name = node.config.server_name.as_str();
    let mut candidates: Vec<OwnedUserId> = rooms::joined_members(&node.pool, room_id)
        .await?
        .into_iter()
        .filter_map(|member| member.state_key)
        .filter_map(|member| OwnedUserId::try_from(member).ok())
        .filter(|member| member.server_name().as_str() == server_name)
        .filter(|member| levels.user_can_invite(member))
        .collect();
    // The most powerful first, then by id: the same answer every time.
    candidates.sort_by(|a, b| levels.for_user(b).cmp(&levels.for_user(a)).then(a.cmp(b)));
    candidates.into_iter().next().map(Some).ok_or_else(|| {
        ApiError::new(
            ErrCode::UnableToGrantJoin,
            "no member of this server may invite to this room",
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_restricted_rules_allow_rooms() {
        let rules = json!({
            "join_rule": "restricted",
            "allow": [
                { "type": "m.room_membership", "room_id": "!a:x" },
                { "type": "m.other", "room_id": "!b:x" },
                { "type": "m.room_membership" },
                "nonsense",
            ],
        });
        assert_eq!(allowed_rooms(&rules), Some(vec!["!a:x".to_owned()]));
        let knock = json!({ "join_rule": "knock_restricted", "allow": "nonsense" });
        assert_eq!(allowed_rooms(&knock), Some(vec![]));
        assert_eq!(allowed_rooms(&json!({ "join_rule": "public" })), None);
        assert_eq!(allowed_rooms(&json!({})), None);
    }
}
