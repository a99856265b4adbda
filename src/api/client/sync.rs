//! `/sync`: initial and incremental, long-polling with `timeout`, filters by id
//! or inline JSON, `full_state`, and the join / invite / leave sections.
//!
//! The `since` token's room component is a position in the events stream. A
//! request first registers with the notifier on the user's id and joined
//! rooms, then computes its answer; if the answer is empty it sleeps until
//! one of those keys is notified or the timeout passes, then computes again.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::client::events::{client_events, stripped_state, STRIPPED_STATE_TYPES};
use crate::api::client::membership::visible_events;
use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::filter::Filter;
use crate::storage::rooms;
use crate::storage::rooms::{Membership, StoredEvent};
use crate::streams::events::EVENTS_STREAM;
use crate::streams::token::{RoomStreamToken, StreamToken};

/// The longest a client may ask to wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Timeline events per room when the filter sets no limit.
const DEFAULT_TIMELINE_LIMIT: i64 = 10;

#[derive(Deserialize)]
pub struct SyncQuery {
    since: Option<String>,
    filter: Option<String>,
    full_state: Option<String>,
    timeout: Option<String>,
    set_presence: Option<String>,
}

/// GET /_matrix/client/v3/sync
///
/// The request is answered on the instance's runtime, not on the HTTP
/// thread that read it. An event wakes every long-poll of its room at once;
/// on the HTTP thread they queued behind each other (and behind every new
/// request) while the runtime's worker threads sat idle, and an instance
/// that serves only /sync has a single HTTP thread.
pub async fn sync(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<SyncQuery>,
) -> ApiResult<HttpResponse> {
    let node = node.into_inner();
    let runtime = node.runtime.clone();
    let answer = AbortOnDrop(runtime.spawn(async move {
        let response = long_poll(&node, &requester, &query.into_inner()).await?;
        serde_json::to_vec(&response).map_err(ApiError::internal)
    }));
    let body = answer.await.map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body))
}

/// A spawned task that is cancelled with the request: a client that hangs
/// up stops its long-poll.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The answer to a /sync: at once when there is something new (or no
/// `since`), else when something happens or the timeout passes.
async fn long_poll(node: &Node, requester: &Requester, query: &SyncQuery) -> ApiResult<Value> {
    let mut since_ephemeral = None;
    let since = match &query.since {
        Some(token) => {
            let token: StreamToken =
                token
                    .parse()
                    .map_err(|e: crate::streams::token::TokenError| {
                        ApiError::invalid_param(e.to_string())
                    })?;
            since_ephemeral = Some(Ephemeral::at(node).min(&Ephemeral::of(&token)));
            // A token from the future (forged, or from before a restore) is clamped.
            Some(
                token
                    .room
                    .max_stream_pos()
                    .min(node.notifier.events_position()),
            )
        }
        None => None,
    };
    // Every database read below is boxed: a long-poll keeps its future for
    // as long as it waits, and inline they would make each one kilobytes larger.
    let filter = Box::pin(load_filter(node, requester, query.filter.as_deref())).await?;
    let full_state = match query.full_state.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid_param("full_state must be true or false")),
    };
    let timeout = match &query.timeout {
        None => Duration::ZERO,
        Some(ms) => Duration::from_millis(
            ms.parse::<u64>()
                .map_err(|_| ApiError::invalid_param("timeout must be a number of milliseconds"))?,
        ),
    }
    .min(MAX_TIMEOUT);
    if let Some(presence) = &query.set_presence {
        if !matches!(presence.as_str(), "online" | "offline" | "unavailable") {
            return Err(ApiError::invalid_param(
                "set_presence must be online, offline or unavailable",
            ));
        }
    }

    let deadline = tokio::time::Instant::now() + timeout;
    // Read-your-writes on an instance other than the writer's: an answer
    // that cannot wait must include what the client wrote before asking. A
    // long-poll needs no such catch-up (a database read per request): a
    // write it has not seen yet wakes it when replication brings it.
    if timeout.is_zero() || since.is_none() || full_state {
        Box::pin(node.catch_up_with_writers()).await?;
    }
    loop {
        // A membership change after this read wakes the user's own key, so
        // the rooms listened to below are never stale for long.
        let memberships = Box::pin(node.memberships.memberships_of_user(
            &node.pool,
            &node.notifier,
            &requester.user_id,
        ))
        .await?;
        let mut keys: Vec<String> = memberships
            .iter()
            .filter(|m| m.membership == "join")
            .map(|m| m.room_id.clone())
            .collect();
        keys.push(requester.user_id.clone());
        let listener = node.notifier.listen(keys);
        let upto = node.notifier.events_position();
        let ephemeral = Ephemeral::at(node);
        let response = Box::pin(compute(
            node,
            requester,
            &filter,
            &memberships,
            since,
            upto,
            full_state,
            (since_ephemeral, ephemeral),
        ))
        .await?;
        let now = tokio::time::Instant::now();
        if !response.is_empty() || since.is_none() || full_state || now >= deadline {
            return Ok(response.into_json(upto, ephemeral));
        }
        if !listener.wait(deadline - now).await {
            // Timed out: nothing happened that concerns this user.
            let upto = node.notifier.events_position().max(upto);
            return Ok(SyncResponse::default().into_json(upto, ephemeral));
        }
    }
}

async fn load_filter(
    node: &Node,
    requester: &Requester,
    filter: Option<&str>,
) -> ApiResult<Arc<Filter>> {
    match filter {
        None => Ok(Arc::new(Filter::default())),
        Some(text) if text.trim_start().starts_with('{') => {
            let value: Value = serde_json::from_str(text)
                .map_err(|_| ApiError::invalid_param("filter is not valid JSON"))?;
            Ok(Arc::new(Filter::parse(value)?))
        }
        Some(id) => {
            let id: i64 = id
                .parse()
                .map_err(|_| ApiError::invalid_param("filter must be a filter id or JSON"))?;
            node.filters
                .filter(&node.pool, &requester.user_id, id)
                .await?
                .ok_or_else(|| ApiError::not_found("no such filter"))
        }
    }
}

/// The receipts and account data positions of a token.
#[derive(Debug, Clone, Copy)]
struct Ephemeral {
    receipts: i64,
    account_data: i64,
}

impl Ephemeral {
    fn at(node: &Node) -> Ephemeral {
        Ephemeral {
            receipts: node
                .notifier
                .position(crate::streams::receipts::RECEIPTS_STREAM),
            account_data: node
                .notifier
                .position(crate::streams::account_data::ACCOUNT_DATA_STREAM),
        }
    }

    fn of(token: &StreamToken) -> Ephemeral {
        Ephemeral {
            receipts: token.receipts.stream(),
            account_data: token.account_data,
        }
    }

    fn min(&self, other: &Ephemeral) -> Ephemeral {
        Ephemeral {
            receipts: self.receipts.min(other.receipts),
            account_data: self.account_data.min(other.account_data),
        }
    }
}

#[derive(Default)]
struct SyncResponse {
    join: Map<String, Value>,
    invite: Map<String, Value>,
    leave: Map<String, Value>,
}

impl SyncResponse {
    fn is_empty(&self) -> bool {
        self.join.is_empty() && self.invite.is_empty() && self.leave.is_empty()
    }

    fn into_json(self, upto: i64, ephemeral: Ephemeral) -> Value {
        let next_batch = StreamToken {
            room: RoomStreamToken::live(upto),
            receipts: crate::streams::token::MultiWriterStreamToken::new(ephemeral.receipts),
            account_data: ephemeral.account_data,
            ..StreamToken::START
        };
        json!({
            "next_batch": next_batch.to_string(),
            "rooms": { "join": self.join, "invite": self.invite, "leave": self.leave, "knock": {} },
            "presence": { "events": [] },
            "account_data": { "events": [] },
            "to_device": { "events": [] },
            "device_lists": { "changed": [], "left": [] },
            "device_one_time_keys_count": {},
        })
    }
}

async fn compute(
    node: &Node,
    requester: &Requester,
    filter: &Filter,
    memberships: &[Membership],
    since: Option<i64>,
    upto: i64,
    full_state: bool,
    (since_ephemeral, upto_ephemeral): (Option<Ephemeral>, Ephemeral),
) -> ApiResult<SyncResponse> {
    let mut response = SyncResponse::default();
    let timeline_limit = filter
        .room
        .timeline
        .limit
        .map(|l| l as i64)
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(0, 1000);

    // Memberships that changed after `upto` are left for the next sync.
    let memberships: Vec<&Membership> = memberships
        .iter()
        .filter(|m| m.stream_ordering <= upto && filter.wants_room(&m.room_id) && !m.forgotten)
        .collect();
    let joined: Vec<&Membership> = memberships
        .iter()
        .copied()
        .filter(|m| m.membership == "join")
        .collect();
    // Only rooms that moved since the token need reading; the notifier's
    // change cache knows which did not.
    let changed_ids: Vec<String> = joined
        .iter()
        .filter(|m| match since {
            Some(s) if !full_state => {
                m.stream_ordering > s
                    || node
                        .notifier
                        .has_changed_since(EVENTS_STREAM, &m.room_id, s)
            }
            _ => true,
        })
        .map(|m| m.room_id.clone())
        .collect();
    let after = since.unwrap_or(0);
    // The filter is applied before the limit, by the reads themselves.
    let timeline_filter = &filter.room.timeline;
    // Incremental syncs mostly want the event that woke them, which another
    // member's sync has usually just read: the recent-events cache has it.
    let mut recent = if since.is_some() && !full_state {
        node.recent_events
            .recent_events_per_room(
                &node.pool,
                &node.notifier,
                &changed_ids,
                after,
                upto,
                timeline_limit,
                timeline_filter,
            )
            .await?
    } else {
        rooms::recent_events_per_room(
            &node.pool,
            &changed_ids,
            after,
            upto,
            timeline_limit,
            timeline_filter,
        )
        .await?
    };

    for membership in &joined {
        let newly_joined = since.is_none_or(|s| membership.stream_ordering > s);
        let events = recent.remove(&membership.room_id).unwrap_or_default();
        let receipts = crate::streams::receipts::room_receipt_event(
            &node.pool,
            &node.notifier,
            &membership.room_id,
            since_ephemeral.map(|s| s.receipts),
            upto_ephemeral.receipts,
            &requester.user_id,
        )
        .await?;
        let account_data = crate::streams::account_data::room_account_data_events(
            &node.pool,
            &node.notifier,
            &requester.user_id,
            &membership.room_id,
            since_ephemeral.map(|s| s.account_data),
            upto_ephemeral.account_data,
        )
        .await?;
        if events.is_empty()
            && receipts.is_none()
            && account_data.is_empty()
            && !newly_joined
            && !full_state
        {
            continue;
        }
        let mut room = room_section(
            node,
            requester,
            filter,
            membership,
            events,
            since,
            timeline_limit,
            newly_joined || full_state,
            upto,
        )
        .await?;
        room["ephemeral"]["events"] = json!(receipts.into_iter().collect::<Vec<_>>());
        room["account_data"]["events"] = json!(account_data);
        response.join.insert(membership.room_id.clone(), room);
    }

    for membership in memberships.iter().filter(|m| m.membership == "invite") {
        if since.is_some_and(|s| membership.stream_ordering <= s) {
            continue;
        }
        let mut state = Vec::new();
        for event in rooms::current_state(&node.pool, &membership.room_id).await? {
            if STRIPPED_STATE_TYPES.contains(&event.kind.as_str()) {
                state.push(stripped_state(&event));
            }
        }
        if let Some(invite) =
            rooms::events_by_ids(&node.pool, std::slice::from_ref(&membership.event_id))
                .await?
                .pop()
        {
            let mut formatted = client_events(node, &[invite], Some(requester)).await?;
            if let Some(event) = formatted.pop() {
                state.push(event);
            }
        }
        response.invite.insert(
            membership.room_id.clone(),
            json!({ "invite_state": { "events": state } }),
        );
    }

    for membership in memberships
        .iter()
        .copied()
        .filter(|m| m.membership == "leave" || m.membership == "ban")
    {
        let include = match since {
            Some(s) => membership.stream_ordering > s,
            None => filter.room.include_leave,
        };
        if !include {
            continue;
        }
        let leave_pos = membership.stream_ordering;
        let events = rooms::recent_events_per_room(
            &node.pool,
            std::slice::from_ref(&membership.room_id),
            after,
            leave_pos,
            timeline_limit,
            timeline_filter,
        )
        .await?
        .remove(&membership.room_id)
        .unwrap_or_default();
        let room = room_section(
            node,
            requester,
            filter,
            membership,
            events,
            since,
            timeline_limit,
            false,
            leave_pos,
        )
        .await?;
        response.leave.insert(membership.room_id.clone(), room);
    }
    Ok(response)
}

/// One room of the `join` or `leave` section. `events` are those that pass
/// the timeline filter, newest first, with one more than the limit when there
/// are more; `end` is the position the
/// section describes the room at (the sync's end for a joined room, the
/// leave for a left one), which is where an empty timeline starts.
#[allow(clippy::too_many_arguments)]
async fn room_section(
    node: &Node,
    requester: &Requester,
    filter: &Filter,
    membership: &Membership,
    mut events: Vec<StoredEvent>,
    since: Option<i64>,
    limit: i64,
    full_state: bool,
    end: i64,
) -> ApiResult<Value> {
    let limited = events.len() as i64 > limit;
    events.truncate(limit.max(0) as usize);
    // What came before the user's current membership is shown by the room's
    // history visibility; what came after their join is theirs to see.
    let is_peeking = membership.membership != "join";
    if is_peeking
        || events
            .iter()
            .any(|e| e.stream_ordering < membership.stream_ordering)
    {
        events = visible_events(
            node,
            &membership.room_id,
            &requester.user_id,
            is_peeking,
            events,
        )
        .await?;
    }
    if events.is_empty() && is_peeking {
        // Nothing of the room is theirs to see (a rejected invite, a ban
        // before joining): their membership event is what there is to show.
        let timeline_filter = &filter.room.timeline;
        events = rooms::events_by_ids(&node.pool, std::slice::from_ref(&membership.event_id))
            .await?
            .into_iter()
            .filter(|e| timeline_filter.matches(&e.room_id, &e.sender, &e.kind, e.content()))
            .collect();
    }
    events.reverse();
    let timeline_start = events.first().map(|e| e.stream_ordering);
    let prev_batch = timeline_start.map(|s| s - 1).unwrap_or(end);

    // State: everything before the timeline for a new room (or full_state), the
    // changes between `since` and the timeline's start when there is a gap.
    let state_before = timeline_start.map(|s| s - 1).unwrap_or(end);
    let state_events: Vec<StoredEvent> = if full_state {
        match rooms::state_group_at(&node.pool, &membership.room_id, state_before).await? {
            Some(group) => rooms::state_group_events(&node.pool, group).await?,
            None => Vec::new(),
        }
    } else if limited {
        rooms::state_changes_between(
            &node.pool,
            &membership.room_id,
            since.unwrap_or(0),
            state_before,
        )
        .await?
    } else {
        Vec::new()
    };
    let state_filter = &filter.room.state;
    let state_events: Vec<StoredEvent> = state_events
        .into_iter()
        .filter(|e| state_filter.matches(&e.room_id, &e.sender, &e.kind, e.content()))
        .collect();

    let mut section = json!({
        "timeline": {
            "events": client_events(node, &events, Some(requester)).await?,
            "limited": limited,
            "prev_batch": RoomStreamToken::live(prev_batch.max(0)).to_string(),
        },
        "state": { "events": client_events(node, &state_events, Some(requester)).await? },
        "account_data": { "events": [] },
    });
    if membership.membership == "join" {
        section["ephemeral"] = json!({ "events": [] });
        section["unread_notifications"] = json!({ "highlight_count": 0, "notification_count": 0 });
        // The summary changes only with membership: send it when the client
        // has none yet or a member event is in this batch.
        let members_changed = events
            .iter()
            .chain(&state_events)
            .any(|e| e.kind == "m.room.member");
        if full_state || members_changed {
            section["summary"] = summary(node, &membership.room_id, &requester.user_id).await?;
        }
    }
    Ok(section)
}

/// The room summary: heroes and member counts, for clients to name the room.
async fn summary(node: &Node, room_id: &str, viewer: &str) -> ApiResult<Value> {
    let summary = rooms::member_summary(&node.pool, room_id, viewer).await?;
    Ok(json!({
        "m.heroes": summary.heroes,
        "m.joined_member_count": summary.joined,
        "m.invited_member_count": summary.invited,
    }))
}
