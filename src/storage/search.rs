//! Full-text search over events (`event_search`, migration 0022): the
//! matching events of some rooms, best or latest first, a page at a time.
//! The rows are written by the event persister with the events ([`index`]);
//! which of the matches a user may see is decided by the caller.

use deadpool_postgres::{GenericClient, Pool};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::rooms::{FilterClause, StoredEvent, EVENT_COLUMNS};
use super::StorageResult;
use crate::rooms::filter::RoomEventFilter;

/// The keys that are indexed (the spec's list).
pub const SEARCH_KEYS: &[&str] = &["content.body", "content.name", "content.topic"];

/// The key and text of an event that search finds: `content.body` of an
/// `m.room.message`, `content.name` and `content.topic` of the room's name
/// and topic. A value that is not a string is not searchable.
pub fn searchable<'a>(
    kind: &str,
    state_key: Option<&str>,
    content: &'a Value,
) -> Option<(&'static str, &'a str)> {
    let (key, field) = match (kind, state_key) {
        ("m.room.message", _) => ("content.body", "body"),
        ("m.room.name", Some("")) => ("content.name", "name"),
        ("m.room.topic", Some("")) => ("content.topic", "topic"),
        _ => return None,
    };
    Some((key, content.get(field)?.as_str()?))
}

/// The searchable text of a batch of new events, as arrays for one insert.
#[derive(Default)]
pub struct SearchRows<'a> {
    stream_ordering: Vec<i64>,
    room_id: Vec<&'a str>,
    key: Vec<&'static str>,
    text: Vec<&'a str>,
}

impl<'a> SearchRows<'a> {
    /// Adds the event at `position` if it has searchable text.
    pub fn push(
        &mut self,
        position: i64,
        room_id: &'a str,
        kind: &str,
        state_key: Option<&str>,
        content: &'a Value,
    ) {
        if let Some((key, text)) = searchable(kind, state_key, content) {
            self.stream_ordering.push(position);
            self.room_id.push(room_id);
            self.key.push(key);
            self.text.push(text);
        }
    }
}

/// Indexes a batch of new events, in the persister's transaction: one
/// statement, with the 'english' configuration Synapse uses.
pub async fn index(client: &impl GenericClient, rows: &SearchRows<'_>) -> StorageResult<()> {
    if rows.stream_ordering.is_empty() {
        return Ok(());
    }
    let statement = client
        .prepare_cached(
            "INSERT INTO event_search (stream_ordering, room_id, key, vector)
             SELECT s.stream_ordering, s.room_id, s.key, to_tsvector('english', s.text)
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
               AS s (stream_ordering, room_id, key, text)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&rows.stream_ordering, &rows.room_id, &rows.key, &rows.text],
        )
        .await?;
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_message_body_and_the_room_name_and_topic_are_searchable() {
        let content = json!({ "body": "hello", "name": "Room", "topic": "About" });
        assert_eq!(
            searchable("m.room.message", None, &content),
            Some(("content.body", "hello"))
        );
        assert_eq!(
            searchable("m.room.name", Some(""), &content),
            Some(("content.name", "Room"))
        );
        assert_eq!(
            searchable("m.room.topic", Some(""), &content),
            Some(("content.topic", "About"))
        );
    }

    #[test]
    fn other_events_and_text_that_is_not_a_string_are_not() {
        let content = json!({ "body": 7, "name": ["Room"], "topic": "About" });
        assert_eq!(searchable("m.room.message", None, &content), None);
        assert_eq!(searchable("m.room.name", Some(""), &content), None);
        // Only the room's own name and topic (state key "").
        assert_eq!(searchable("m.room.topic", Some("x"), &content), None);
        assert_eq!(
            searchable("m.reaction", None, &json!({ "body": "b" })),
            None
        );
    }
}
