//! `GET /sync` over HTTP: parses the query (`since`, `filter` by id or inline
//! JSON, `full_state`, `timeout`, `set_presence`), long-polls, and encodes the
//! answer. The answer itself is computed section by section in
//! [`crate::sync`].
//!
//! A request first registers with the notifier on the user's id and joined
//! rooms, then computes its answer between `since` and the instance's current
//! token; if every section is empty it sleeps until one of those keys is
//! notified or the timeout passes, then computes again.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;
use crate::rooms::filter::Filter;
use crate::streams::token::{StreamToken, TokenError};
use crate::sync::{self, SyncContext};

/// The longest a client may ask to wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

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
        let mut response = long_poll(&node, &requester, &query.into_inner()).await?;
        sync::one_time_keys::add_key_counts(&node, &requester, &mut response).await?;
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

/// How long a `/sync` waits for this instance to reach its `since` token.
const SINCE_WAIT: Duration = Duration::from_secs(5);

/// The answer to a /sync: at once when there is something new (or no
/// `since`), else when something happens or the timeout passes.
async fn long_poll(node: &Node, requester: &Requester, query: &SyncQuery) -> ApiResult<Value> {
    let since = match &query.since {
        Some(token) => {
            let token: StreamToken = token
                .parse()
                .map_err(|e: TokenError| ApiError::invalid_param(e.to_string()))?;
            // A token from an instance further ahead (a client moved between
            // sync instances): start from it, not from this one's position.
            // A token from the future waits this long, then is clamped.
            node.streams.wait_for_token(&token, SINCE_WAIT).await;
            let since = sync::clamp(&token, &sync::current_token(node, Some(&token)));
            // The client got the answer that ended at `since`.
            Box::pin(sync::to_device::acknowledge(node, requester, &since)).await?;
            Some(since)
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

    // The user syncs (for their presence) while this request runs.
    let _syncing = sync::presence::syncing(node, &requester.user_id, query.set_presence.as_deref());
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
        let listener = node
            .notifier
            .listen(sync::listen_keys(&requester.user_id, &memberships));
        // Read after registering: whatever moves later wakes the listener.
        let upto = sync::current_token(node, since.as_ref());
        let ctx = SyncContext {
            node,
            requester,
            filter: &filter,
            since: since.clone(),
            upto,
            full_state,
            memberships: &memberships,
        };
        let response = Box::pin(sync::sync(&ctx)).await?;
        let now = tokio::time::Instant::now();
        if !response.is_empty() || since.is_none() || full_state || now >= deadline {
            return Ok(response.into_json(&ctx.upto));
        }
        if !listener.wait(deadline - now).await {
            // Timed out: nothing happened that concerns this user. The
            // answer holds the token it was read at, never a later one: a
            // row that came in since without waking this request would be
            // passed over for good.
            return Ok(response.into_json(&ctx.upto));
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
