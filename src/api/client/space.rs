//! Spaces: `GET /rooms/{roomId}/hierarchy`, the rooms of a space and of
//! its subspaces, walked depth first through their `m.space.child` state as
//! Synapse's room summary handler walks them, keeping only the rooms the
//! requester could join or peek into. Each room is shown by [`summary_of`],
//! as `GET /room_summary` ([`super::room::summary`]) shows one room, and
//! who may see it is [`is_accessible`] for both.
//!
//! Pages are not kept on the server: a `from` token holds how many rooms
//! were already answered and a digest of the request it continues, and each
//! page walks the hierarchy again from the top. A token given with other
//! parameters (another room, `suggested_only`, `max_depth`) is refused.

use std::collections::{HashMap, HashSet};

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::client::directory::room_summary;
use crate::api::client::membership::check_room_id;
use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::restricted::{allowed_rooms, is_in_any};
use crate::storage::rooms;
use crate::storage::rooms::StoredEvent;

/// Rooms in one page at most (Synapse's `MAX_ROOMS`), and the default.
const MAX_ROOMS_PER_PAGE: usize = 50;
/// Rooms looked at in one request at most, included or not: a bound on the
/// work of a request over a very large (or cyclic) hierarchy.
const MAX_ROOMS_WALKED: usize = 2000;

/// The parameters of one hierarchy request, as its query gives them.
struct HierarchyQuery {
    suggested_only: bool,
    max_depth: Option<u64>,
    limit: usize,
    from: Option<String>,
}

impl HierarchyQuery {
    fn parse(query: &HashMap<String, String>) -> ApiResult<HierarchyQuery> {
        let suggested_only = match query.get("suggested_only").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "`suggested_only` must be true or false",
                ))
            }
        };
        let positive = |name: &str| -> ApiResult<Option<u64>> {
            query
                .get(name)
                .map(|text| {
                    text.parse::<u64>().map_err(|_| {
                        ApiError::invalid_param(format!("`{name}` must be a non-negative integer"))
                    })
                })
                .transpose()
        };
        let max_depth = positive("max_depth")?;
        let limit = match positive("limit")? {
            Some(0) => return Err(ApiError::invalid_param("`limit` must be positive")),
            Some(limit) => usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .min(MAX_ROOMS_PER_PAGE),
            None => MAX_ROOMS_PER_PAGE,
        };
        Ok(HierarchyQuery {
            suggested_only,
            max_depth,
            limit,
            from: query.get("from").cloned(),
        })
    }

    /// What a `from` token must have been made for.
    fn digest(&self, room_id: &str, user_id: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(
            format!(
                "{room_id}\n{user_id}\n{}\n{:?}",
                self.suggested_only, self.max_depth
            )
            .as_bytes(),
        );
        hasher.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// How many rooms the pages before this one answered.
    fn offset(&self, digest: &str) -> ApiResult<usize> {
        let Some(token) = &self.from else {
            return Ok(0);
        };
        token
            .split_once('_')
            .filter(|(_, made_for)| *made_for == digest)
            .and_then(|(offset, _)| offset.parse().ok())
            .ok_or_else(|| ApiError::invalid_param("unknown pagination token"))
    }
}

/// GET /_matrix/client/v1/rooms/{roomId}/hierarchy
pub async fn get_hierarchy(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> ApiResult<HttpResponse> {
    let room_id = check_room_id(&path.into_inner())?;
    let query = HierarchyQuery::parse(&query)?;
    let digest = query.digest(room_id.as_str(), &requester.user_id);
    let offset = query.offset(&digest)?;
    if !is_accessible(&node, room_id.as_str(), Some(&requester.user_id)).await? {
        return Err(ApiError::forbidden(
            "you cannot join or peek into this room, so you cannot see its hierarchy",
        ));
    }

    // Depth first, the next room last on the stack, as Synapse walks.
    let mut stack: Vec<(String, u64)> = vec![(room_id.to_string(), 0)];
    let mut seen = HashSet::new();
    let mut included = 0usize;
    let mut page = Vec::new();
    let mut more = false;
    while let Some((room, depth)) = stack.pop() {
        if seen.len() >= MAX_ROOMS_WALKED {
            break;
        }
        if !seen.insert(room.clone()) {
            continue;
        }
        let Some(entry) = summarise(&node, &room, &requester.user_id, query.suggested_only).await?
        else {
            continue;
        };
        if included >= offset + query.limit {
            more = true;
            break;
        }
        if included >= offset {
            page.push(entry.json.clone());
        }
        included += 1;
        if query.max_depth.is_none_or(|max| depth < max) {
            stack.extend(
                entry
                    .children
                    .into_iter()
                    .rev()
                    .map(|child| (child, depth + 1)),
            );
        }
    }
    let mut answer = json!({ "rooms": page });
    if more {
        answer["next_batch"] = json!(format!("{included}_{digest}"));
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// One room of the hierarchy: its summary with `children_state`, and the
/// children to walk, in order.
struct RoomEntry {
    json: Value,
    children: Vec<String>,
}

/// The room's entry, or `None` when the requester may not see it or this
/// server does not know it.
async fn summarise(
    node: &Node,
    room_id: &str,
    user_id: &str,
    suggested_only: bool,
) -> ApiResult<Option<RoomEntry>> {
    if !is_accessible(node, room_id, Some(user_id)).await? {
        return Ok(None);
    }
    let state = rooms::current_state(&node.pool, room_id).await?;
    let Some(mut json) = summary_of(room_id, &state) else {
        return Ok(None);
    };
    let children = if json["room_type"] == "m.space" {
        children_of(&state, suggested_only)
    } else {
        Vec::new()
    };
    json["children_state"] = Value::Array(
        children
            .iter()
            .map(|child| {
                json!({
                    "type": child.kind,
                    "state_key": child.state_key,
                    "content": child.content(),
                    "sender": child.sender,
                    "origin_server_ts": child.origin_server_ts,
                })
            })
            .collect(),
    );
    let children = children
        .iter()
        .filter_map(|child| child.state_key.clone())
        .collect();
    Ok(Some(RoomEntry { json, children }))
}

/// A room as the hierarchy and `GET /room_summary` show it, from its
/// current state: the directory's chunk with `room_version`, `encryption`
/// and `allowed_room_ids` (Synapse's `_build_room_entry`); `None` without
/// a create event (a room this server does not know).
pub fn summary_of(room_id: &str, state: &[StoredEvent]) -> Option<Value> {
    let create = state.iter().find(|e| e.kind == "m.room.create")?;
    let joined = state
        .iter()
        .filter(|e| {
            e.kind == "m.room.member"
                && e.content().get("membership").and_then(Value::as_str) == Some("join")
        })
        .count();
    let by_type: HashMap<String, Value> = state
        .iter()
        .filter(|e| e.state_key.as_deref() == Some(""))
        .map(|e| (e.kind.clone(), e.content().clone()))
        .collect();
    let mut json = room_summary(room_id, joined as i64, &by_type);
    if let Some(version) = create.content().get("room_version") {
        json["room_version"] = version.clone();
    }
    if let Some(algorithm) = by_type
        .get("m.room.encryption")
        .and_then(|c| c.get("algorithm"))
        .filter(|a| a.is_string())
    {
        json["encryption"] = algorithm.clone();
    }
    if let Some(allowed) = by_type.get("m.room.join_rules").and_then(allowed_rooms) {
        if !allowed.is_empty() {
            json["allowed_room_ids"] = json!(allowed);
        }
    }
    Some(json)
}

/// The space's `m.space.child` events that name a child (a non-empty
/// `via`), the suggested ones only if asked, in the spec's order: by
/// `order` (when valid; those without come after), then the event's
/// timestamp, then the child's room id.
fn children_of(state: &[StoredEvent], suggested_only: bool) -> Vec<&StoredEvent> {
    let mut children: Vec<&StoredEvent> = state
        .iter()
        .filter(|e| e.kind == "m.space.child")
        .filter(|e| {
            e.content()
                .get("via")
                .and_then(Value::as_array)
                .is_some_and(|via| !via.is_empty() && via.iter().all(Value::is_string))
        })
        .filter(|e| !suggested_only || e.content().get("suggested") == Some(&Value::Bool(true)))
        .collect();
    children.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    children
}

fn sort_key(child: &StoredEvent) -> (bool, Option<&str>, i64, Option<&str>) {
    let order = child
        .content()
        .get("order")
        .and_then(Value::as_str)
        .filter(|order| order.len() <= 50 && order.chars().all(|c| (' '..='~').contains(&c)));
    (
        order.is_none(),
        order,
        child.origin_server_ts,
        child.state_key.as_deref(),
    )
}

/// Whether the user (`None`: someone not signed in) could join or peek
/// into the room (Synapse's `_is_local_room_accessible`): a public or
/// knockable join rule, world readable history, being joined or invited,
/// or being in a room a restricted join rule allows.
pub async fn is_accessible(node: &Node, room_id: &str, user_id: Option<&str>) -> ApiResult<bool> {
    let join_rules = rooms::current_state_event(&node.pool, room_id, "m.room.join_rules", "")
        .await?
        .map(|e| e.content().clone());
    let join_rule = join_rules
        .as_ref()
        .and_then(|c| c.get("join_rule"))
        .and_then(Value::as_str);
    if matches!(
        join_rule,
        Some("public") | Some("knock") | Some("knock_restricted")
    ) {
        return Ok(true);
    }
    let visibility =
        rooms::current_state_event(&node.pool, room_id, "m.room.history_visibility", "").await?;
    if visibility.is_some_and(|e| {
        e.content()
            .get("history_visibility")
            .and_then(Value::as_str)
            == Some("world_readable")
    }) {
        return Ok(true);
    }
    let Some(user_id) = user_id else {
        return Ok(false);
    };
    let membership = rooms::membership(&node.pool, room_id, user_id).await?;
    if membership.is_some_and(|m| m.membership == "join" || m.membership == "invite") {
        return Ok(true);
    }
    match join_rules.as_ref().and_then(allowed_rooms) {
        Some(allowed) => is_in_any(node, &allowed, user_id).await,
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ApiResult<HierarchyQuery> {
        HierarchyQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn tokens_continue_only_the_request_they_were_made_for() {
        let first = query(&[]).expect("valid");
        let digest = first.digest("!space:x", "@a:x");
        let next = query(&[("from", &format!("3_{digest}"))]).expect("valid");
        assert_eq!(next.offset(&digest).expect("its own token"), 3);
        let other =
            query(&[("from", &format!("3_{digest}")), ("suggested_only", "true")]).expect("valid");
        let other_digest = other.digest("!space:x", "@a:x");
        assert!(other.offset(&other_digest).is_err());
        let junk = query(&[("from", "junk")]).expect("valid");
        assert!(junk.offset(&digest).is_err());
    }

    #[test]
    fn limits_are_positive_and_capped() {
        assert!(query(&[("limit", "0")]).is_err());
        assert!(query(&[("limit", "-1")]).is_err());
        assert!(query(&[("max_depth", "x")]).is_err());
        assert!(query(&[("suggested_only", "yes")]).is_err());
        assert_eq!(query(&[("limit", "1000")]).expect("capped").limit, 50);
    }
}
