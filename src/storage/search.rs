//! Full-text search over events (`event_search`, migration 0022): the
//! matching events of some rooms, best or latest first, a page at a time.
//! The rows are written by a trigger as events are inserted; which of the
//! matches a user may see is decided by the caller.

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::rooms::{FilterClause, StoredEvent, EVENT_COLUMNS};
use super::StorageResult;
use crate::rooms::filter::RoomEventFilter;

/// The keys that are indexed (the spec's list).
pub const SEARCH_KEYS: &[&str] = &["content.body", "content.name", "content.topic"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    /// Best match first (`ts_rank_cd`), then latest.
    Rank,
    /// Latest first.
    Recent,
}

/// Where a page ends: the last result's rank (for [`SearchOrder::Rank`]) and
/// position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchCursor {
    pub rank: f32,
    pub stream_ordering: i64,
}

#[derive(Debug, Clone)]
pub struct SearchHit {
    pub event: StoredEvent,
    pub rank: f32,
}

/// What to look for and where.
pub struct SearchQuery<'a> {
    pub term: &'a str,
    pub room_ids: &'a [String],
    pub keys: &'a [String],
    pub filter: &'a RoomEventFilter,
    pub order: SearchOrder,
}

/// Up to `limit` matches after `after`, in `query.order`; redacted events
/// never match (their text is gone).
pub async fn search(
    pool: &Pool,
    query: &SearchQuery<'_>,
    after: Option<SearchCursor>,
    limit: i64,
) -> StorageResult<Vec<SearchHit>> {
    let mut params: Vec<&(dyn ToSql + Sync)> =
        vec![&query.term, &query.room_ids, &query.keys, &limit];
    let (rank_after, stream_after) = match after {
        Some(cursor) => (cursor.rank, cursor.stream_ordering),
        None => (f32::MAX, i64::MAX),
    };
    let cursor_sql = match (after.is_some(), query.order) {
        (false, _) => String::new(),
        (true, SearchOrder::Rank) => {
            params.push(&rank_after);
            params.push(&stream_after);
            format!(
                " AND (ts_rank_cd(s.vector, q.query), e.stream_ordering) < (${}::real, ${})",
                params.len() - 1,
                params.len()
            )
        }
        (true, SearchOrder::Recent) => {
            params.push(&stream_after);
            format!(" AND e.stream_ordering < ${}", params.len())
        }
    };
    let filtered = FilterClause::new(query.filter, "e", params.len());
    params.extend(filtered.params());
    let order = match query.order {
        SearchOrder::Rank => "rank DESC, e.stream_ordering DESC",
        SearchOrder::Recent => "e.stream_ordering DESC",
    };
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS}, ts_rank_cd(s.vector, q.query) AS rank
             FROM (SELECT websearch_to_tsquery('english', $1) AS query) q
             JOIN event_search s ON s.vector @@ q.query
             JOIN events e ON e.stream_ordering = s.stream_ordering
             WHERE s.room_id = ANY($2) AND s.key = ANY($3) AND e.redacted_by IS NULL
             {cursor_sql}{}
             ORDER BY {order} LIMIT $4",
            filtered.sql
        ))
        .await?;
    let rows = client.query(&statement, &params).await?;
    Ok(rows
        .iter()
        .map(|row| SearchHit {
            event: StoredEvent::from_row(row),
            rank: row.get("rank"),
        })
        .collect())
}

/// How many events match in all, before the history rules (the spec's
/// "approximate count").
pub async fn count(pool: &Pool, query: &SearchQuery<'_>) -> StorageResult<i64> {
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&query.term, &query.room_ids, &query.keys];
    let filtered = FilterClause::new(query.filter, "e", params.len());
    params.extend(filtered.params());
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT count(*)
             FROM (SELECT websearch_to_tsquery('english', $1) AS query) q
             JOIN event_search s ON s.vector @@ q.query
             JOIN events e ON e.stream_ordering = s.stream_ordering
             WHERE s.room_id = ANY($2) AND s.key = ANY($3) AND e.redacted_by IS NULL{}",
            filtered.sql
        ))
        .await?;
    Ok(client.query_one(&statement, &params).await?.get(0))
}
