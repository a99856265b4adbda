//! Server-side search (`POST /search`, the spec's "Server Side Search"):
//! full-text search of the rooms the user is joined to (Synapse's choice:
//! rooms left are not searched), over `content.body`, `content.name` and
//! `content.topic` ([`crate::storage::search`], PostgreSQL full text with
//! the 'english' configuration), best or latest first, a page at a time.
//!
//! Every match goes through the history visibility rules before it is
//! answered ([`visible_scattered_events`]): a room whose history is
//! `joined` does not give away what was said before the user joined. A page
//! short of visible matches is filled from the next ones, so `next_batch`
//! always continues where the answered results end.

use std::collections::{BTreeMap, HashMap, HashSet};

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::client::events::client_events;
use crate::api::{JsonBody, Requester};
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::access::{visible_events, visible_scattered_events};
use crate::rooms::filter::{Filter, RoomEventFilter};
use crate::rooms::relations::bundle_aggregations;
use crate::storage::rooms::{self, StoredEvent};
use crate::storage::search::{
    self, SearchCursor, SearchHit, SearchOrder, SearchQuery, SEARCH_KEYS,
};
use crate::streams::token::RoomStreamToken;

/// Results per page unless the filter says otherwise (Synapse's default).
const DEFAULT_LIMIT: u64 = 10;
const MAX_LIMIT: u64 = 100;
/// Events of context on each side unless `event_context` says (the spec's 5).
const DEFAULT_CONTEXT: i64 = 5;
const MAX_CONTEXT: i64 = 50;
/// Pages of matches read to fill one page of visible results.
const MAX_PAGES_READ: usize = 10;

#[derive(Debug, Deserialize)]
pub struct SearchRequest {
    search_categories: Categories,
}

#[derive(Debug, Deserialize)]
struct Categories {
    room_events: Option<RoomEventsCriteria>,
}

#[derive(Debug, Deserialize)]
struct RoomEventsCriteria {
    search_term: String,
    keys: Option<Vec<String>>,
    filter: Option<Value>,
    order_by: Option<String>,
    event_context: Option<EventContext>,
    #[serde(default)]
    include_state: bool,
    groupings: Option<Groupings>,
}

#[derive(Debug, Deserialize)]
struct EventContext {
    before_limit: Option<i64>,
    after_limit: Option<i64>,
    #[serde(default)]
    include_profile: bool,
}

#[derive(Debug, Deserialize)]
struct Groupings {
    #[serde(default)]
    group_by: Vec<Group>,
}

#[derive(Debug, Deserialize)]
struct Group {
    key: String,
}

#[derive(Debug, Deserialize)]
pub struct SearchParams {
    next_batch: Option<String>,
}

/// POST /_matrix/client/v3/search
pub async fn search(
    node: web::Data<Node>,
    requester: Requester,
    params: web::Query<SearchParams>,
    JsonBody(body): JsonBody<SearchRequest>,
) -> ApiResult<HttpResponse> {
    let Some(criteria) = body.search_categories.room_events else {
        return Ok(HttpResponse::Ok().json(json!({ "search_categories": {} })));
    };
    let order = match criteria.order_by.as_deref() {
        None | Some("rank") => SearchOrder::Rank,
        Some("recent") => SearchOrder::Recent,
        Some(other) => {
            return Err(ApiError::invalid_param(format!(
                "order_by must be rank or recent, not {other}"
            )))
        }
    };
    let keys = match criteria.keys {
        None => SEARCH_KEYS.iter().map(|k| (*k).to_owned()).collect(),
        Some(keys) => {
            if let Some(unknown) = keys.iter().find(|k| !SEARCH_KEYS.contains(&k.as_str())) {
                return Err(ApiError::invalid_param(format!(
                    "cannot search {unknown}: only content.body, content.name and content.topic"
                )));
            }
            keys
        }
    };
    let group_keys: Vec<String> = criteria
        .groupings
        .map(|g| g.group_by.into_iter().map(|g| g.key).collect())
        .unwrap_or_default();
    if let Some(unknown) = group_keys
        .iter()
        .find(|k| !matches!(k.as_str(), "room_id" | "sender"))
    {
        return Err(ApiError::invalid_param(format!(
            "cannot group by {unknown}: only room_id and sender"
        )));
    }
    let filter = match criteria.filter {
        None => RoomEventFilter::default(),
        Some(value) => {
            Filter::parse(json!({ "room": { "timeline": value } }))?
                .room
                .timeline
        }
    };
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize;
    let after = params
        .next_batch
        .as_deref()
        .map(|batch| parse_batch(batch, order))
        .transpose()?;
    if criteria.search_term.trim().is_empty() {
        return Err(ApiError::invalid_param("search_term may not be empty"));
    }

    let room_ids = rooms::joined_rooms(&node.pool, &requester.user_id).await?;
    let query = SearchQuery {
        term: &criteria.search_term,
        room_ids: &room_ids,
        keys: &keys,
        filter: &filter,
        order,
    };
    let (hits, more) = visible_hits(&node, &requester.user_id, &query, after, limit).await?;
    let count = search::count(&node.pool, &query).await?;

    let events: Vec<StoredEvent> = hits.iter().map(|h| h.event.clone()).collect();
    let mut formatted = client_events(&node, &events, Some(&requester)).await?;
    bundle_aggregations(&node, &requester, formatted.iter_mut().collect()).await?;
    let mut results = Vec::with_capacity(hits.len());
    for (hit, event) in hits.iter().zip(formatted) {
        let context = match &criteria.event_context {
            Some(wanted) => event_context(&node, &requester, &hit.event, wanted).await?,
            None => json!({}),
        };
        results.push(json!({ "rank": hit.rank, "result": event, "context": context }));
    }

    let mut answer = json!({
        "results": results,
        "count": count,
        "highlights": highlights(&criteria.search_term),
    });
    if more {
        if let Some(last) = hits.last() {
            answer["next_batch"] = json!(batch_token(order, last));
        }
    }
    if criteria.include_state {
        let mut state = Map::new();
        let result_rooms: BTreeMap<&str, ()> = hits
            .iter()
            .map(|h| (h.event.room_id.as_str(), ()))
            .collect();
        for room_id in result_rooms.keys() {
            let events = rooms::current_state(&node.pool, room_id).await?;
            state.insert(
                (*room_id).to_owned(),
                json!(client_events(&node, &events, Some(&requester)).await?),
            );
        }
        answer["state"] = Value::Object(state);
    }
    if !group_keys.is_empty() {
        let mut groups = Map::new();
        for key in &group_keys {
            groups.insert(key.clone(), group(&hits, key));
        }
        answer["groups"] = Value::Object(groups);
    }
    Ok(HttpResponse::Ok().json(json!({ "search_categories": { "room_events": answer } })))
}

/// Up to `limit` matches the user may see, after `after`, reading pages of
/// matches until there are enough; and whether more may follow.
async fn visible_hits(
    node: &Node,
    user_id: &str,
    query: &SearchQuery<'_>,
    mut after: Option<SearchCursor>,
    limit: usize,
) -> ApiResult<(Vec<SearchHit>, bool)> {
    let mut visible = Vec::new();
    for _ in 0..MAX_PAGES_READ {
        let page = search::search(&node.pool, query, after, limit as i64).await?;
        let exhausted = page.len() < limit;
        let Some(last) = page.last() else {
            return Ok((visible, false));
        };
        after = Some(cursor_of(last));
        let allowed = allowed_in_page(node, user_id, &page).await?;
        for hit in page {
            if !allowed.contains(&hit.event.stream_ordering) {
                continue;
            }
            visible.push(hit);
            if visible.len() == limit {
                return Ok((visible, true));
            }
        }
        if exhausted {
            return Ok((visible, false));
        }
    }
    // Many matches in a row the user may not see: what was found so far,
    // and a batch to go on from.
    Ok((visible, true))
}

/// The positions of the matches in `page` the user may see, room by room.
async fn allowed_in_page(
    node: &Node,
    user_id: &str,
    page: &[SearchHit],
) -> ApiResult<HashSet<i64>> {
    let mut by_room: HashMap<&str, Vec<StoredEvent>> = HashMap::new();
    for hit in page {
        by_room
            .entry(hit.event.room_id.as_str())
            .or_default()
            .push(hit.event.clone());
    }
    let mut allowed = HashSet::new();
    for (room_id, events) in by_room {
        // Joined rooms only: the user is not peeking.
        let visible = visible_scattered_events(node, room_id, user_id, false, events).await?;
        allowed.extend(visible.iter().map(|e| e.stream_ordering));
    }
    Ok(allowed)
}

fn cursor_of(hit: &SearchHit) -> SearchCursor {
    SearchCursor {
        rank: hit.rank,
        stream_ordering: hit.event.stream_ordering,
    }
}

/// `r<rank bits>_<position>` or `s<position>`: opaque to clients, and tied
/// to the order it was made for.
fn batch_token(order: SearchOrder, last: &SearchHit) -> String {
    match order {
        SearchOrder::Rank => format!(
            "r{:08x}_{}",
            last.rank.to_bits(),
            last.event.stream_ordering
        ),
        SearchOrder::Recent => format!("s{}", last.event.stream_ordering),
    }
}

fn parse_batch(batch: &str, order: SearchOrder) -> ApiResult<SearchCursor> {
    let invalid = || ApiError::invalid_param("invalid next_batch");
    match order {
        SearchOrder::Rank => {
            let (bits, position) = batch
                .strip_prefix('r')
                .and_then(|rest| rest.split_once('_'))
                .ok_or_else(invalid)?;
            let bits = u32::from_str_radix(bits, 16).map_err(|_| invalid())?;
            Ok(SearchCursor {
                rank: f32::from_bits(bits),
                stream_ordering: position.parse().map_err(|_| invalid())?,
            })
        }
        SearchOrder::Recent => Ok(SearchCursor {
            rank: 0.0,
            stream_ordering: batch
                .strip_prefix('s')
                .and_then(|p| p.parse().ok())
                .ok_or_else(invalid)?,
        }),
    }
}

/// The words of the search term, for clients to highlight (without the
/// operators of `websearch_to_tsquery`: quotes, `-word`, `or`).
fn highlights(term: &str) -> Vec<String> {
    let mut words: Vec<String> = term
        .split_whitespace()
        .filter(|word| !word.starts_with('-') && !word.eq_ignore_ascii_case("or"))
        .map(|word| {
            word.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|word| !word.is_empty())
        .collect();
    words.sort();
    words.dedup();
    words
}

/// `groups.<key>`: the results' event ids per room or sender; a group's
/// `order` is its place among the groups (by its first result, so by its
/// best or latest one).
fn group(hits: &[SearchHit], key: &str) -> Value {
    let mut groups: Map<String, Value> = Map::new();
    for hit in hits {
        let name = if key == "room_id" {
            &hit.event.room_id
        } else {
            &hit.event.sender
        };
        let position = groups.len();
        let entry = groups
            .entry(name.clone())
            .or_insert_with(|| json!({ "results": [], "order": position }));
        if let Some(results) = entry["results"].as_array_mut() {
            results.push(json!(hit.event.event_id));
        }
    }
    Value::Object(groups)
}

/// The `context` of one result: the events around it the user may see,
/// pagination tokens, and with `include_profile` its senders' display names
/// and avatars as they were at the result.
async fn event_context(
    node: &Node,
    requester: &Requester,
    event: &StoredEvent,
    wanted: &EventContext,
) -> ApiResult<Value> {
    let before_limit = wanted
        .before_limit
        .unwrap_or(DEFAULT_CONTEXT)
        .clamp(0, MAX_CONTEXT);
    let after_limit = wanted
        .after_limit
        .unwrap_or(DEFAULT_CONTEXT)
        .clamp(0, MAX_CONTEXT);
    let everything = RoomEventFilter::default();
    let room_id = &event.room_id;
    let position = event.stream_ordering;
    let before = rooms::paginate(
        &node.pool,
        room_id,
        position - 1,
        None,
        false,
        before_limit,
        &everything,
    )
    .await?;
    let after = rooms::paginate(
        &node.pool,
        room_id,
        position,
        None,
        true,
        after_limit,
        &everything,
    )
    .await?;
    let start = before
        .last()
        .map_or(position - 1, |e| e.stream_ordering - 1);
    let end = after.last().map_or(position, |e| e.stream_ordering);
    let user_id = &requester.user_id;
    let before = visible_events(node, room_id, user_id, false, before).await?;
    let after = visible_events(node, room_id, user_id, false, after).await?;
    let mut context = json!({
        "events_before": client_events(node, &before, Some(requester)).await?,
        "events_after": client_events(node, &after, Some(requester)).await?,
        "start": RoomStreamToken::live(start).to_string(),
        "end": RoomStreamToken::live(end).to_string(),
    });
    if wanted.include_profile {
        let senders: BTreeMap<&str, ()> = before
            .iter()
            .chain(&after)
            .chain(std::iter::once(event))
            .map(|e| (e.sender.as_str(), ()))
            .collect();
        let mut profiles = Map::new();
        for sender in senders.keys() {
            let member = rooms::state_contents_at(
                &node.pool,
                room_id,
                position,
                &[("m.room.member", sender)],
            )
            .await?;
            let content = member.into_iter().next().flatten();
            // Only the fields that are set (the spec's strings, never null).
            let mut profile = Map::new();
            for field in ["displayname", "avatar_url"] {
                if let Some(value) = content.as_ref().and_then(|c| c.get(field)) {
                    if value.is_string() {
                        profile.insert(field.to_owned(), value.clone());
                    }
                }
            }
            profiles.insert((*sender).to_owned(), Value::Object(profile));
        }
        context["profile_info"] = Value::Object(profiles);
    }
    Ok(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_belong_to_their_order() {
        let cursor = parse_batch("r3dcccccd_42", SearchOrder::Rank).expect("rank batch");
        assert_eq!(cursor.rank, 0.1);
        assert_eq!(cursor.stream_ordering, 42);
        assert_eq!(
            parse_batch("s17", SearchOrder::Recent)
                .expect("recent batch")
                .stream_ordering,
            17
        );
        assert!(parse_batch("s17", SearchOrder::Rank).is_err());
        assert!(parse_batch("r1_2", SearchOrder::Recent).is_err());
        assert!(parse_batch("rzz_2", SearchOrder::Rank).is_err());
    }

    #[test]
    fn highlights_are_the_words_searched() {
        assert_eq!(
            highlights("\"Hello, World\" or cats -dogs"),
            vec!["cats", "hello", "world"]
        );
    }
}
