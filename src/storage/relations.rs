//! Relations between events (`event_relations`, migration 0012): written in
//! the event persister's transaction ([`store`]), read for
//! `/relations` pages ([`relations_page`]), `/threads` ([`threads`]) and
//! the bundled aggregations of the events a response carries
//! ([`aggregations`], one statement for all of them).

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::ToSql;

use super::rooms::{StoredEvent, EVENT_COLUMNS};
use super::StorageResult;
use crate::rooms::pdu::Pdu;
use crate::rooms::relations::{Relation, REFERENCE, REPLACE, THREAD};

/// How many levels of relations a `recurse` page follows (Synapse's 3).
pub const RECURSION_DEPTH: i32 = 3;

/// The relation rows of a batch of new events, and the rows their
/// redactions remove, in the batch's transaction: a child counts in its
/// parent's aggregations exactly when the child is stored and not redacted.
pub async fn store<'a>(
    transaction: &impl GenericClient,
    events: impl IntoIterator<Item = (&'a Pdu, i64)>,
) -> StorageResult<()> {
    let mut rows = RelationRows::default();
    let mut redacted: (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for (pdu, position) in events {
        if let Some(relation) = Relation::of(&pdu.content) {
            rows.push(pdu, relation, position);
        }
        if let Some(redacts) = &pdu.redacts {
            redacted.0.push(redacts.as_str());
            redacted.1.push(pdu.room_id.as_str());
        }
    }
    if !rows.event_id.is_empty() {
        let statement = transaction
            .prepare_cached(
                "INSERT INTO event_relations (event_id, relates_to_id, rel_type, room_id, sender,
                    type, aggregation_key, stream_ordering)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                    $6::text[], $7::text[], $8::bigint[])
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .await?;
        transaction
            .execute(
                &statement,
                &[
                    &rows.event_id,
                    &rows.relates_to_id,
                    &rows.rel_type,
                    &rows.room_id,
                    &rows.sender,
                    &rows.kind,
                    &rows.key,
                    &rows.stream_ordering,
                ],
            )
            .await?;
    }
    if !redacted.0.is_empty() {
        let statement = transaction
            .prepare_cached(
                "DELETE FROM event_relations r USING unnest($1::text[], $2::text[]) AS d (event_id, room_id)
                 WHERE r.event_id = d.event_id AND r.room_id = d.room_id",
            )
            .await?;
        transaction
            .execute(&statement, &[&redacted.0, &redacted.1])
            .await?;
    }
    Ok(())
}

/// The columns of a batch's `event_relations` rows, for one `unnest` insert.
#[derive(Default)]
struct RelationRows<'a> {
    event_id: Vec<&'a str>,
    relates_to_id: Vec<&'a str>,
    rel_type: Vec<&'a str>,
    room_id: Vec<&'a str>,
    sender: Vec<&'a str>,
    kind: Vec<&'a str>,
    key: Vec<Option<&'a str>>,
    stream_ordering: Vec<i64>,
}

impl<'a> RelationRows<'a> {
    fn push(&mut self, pdu: &'a Pdu, relation: Relation<'a>, position: i64) {
        self.event_id.push(pdu.event_id.as_str());
        self.relates_to_id.push(relation.event_id);
        self.rel_type.push(relation.rel_type);
        self.room_id.push(pdu.room_id.as_str());
        self.sender.push(pdu.sender.as_str());
        self.kind.push(&pdu.kind);
        self.key.push(relation.key);
        self.stream_ordering.push(position);
    }
}

/// Which children of a parent a `/relations` page wants.
pub struct RelationsQuery<'a> {
    pub parent: &'a str,
    pub room_id: &'a str,
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    /// Also children of children, [`RECURSION_DEPTH`] levels down.
    pub recurse: bool,
}

/// A page of `query`'s children in stream order: strictly after `from`
/// (`forward`) up to `to`, or at-or-before `from` down to (not including)
/// `to`, as `/messages` pages the timeline.
pub async fn relations_page(
    pool: &Pool,
    query: &RelationsQuery<'_>,
    from: i64,
    to: Option<i64>,
    forward: bool,
    limit: i64,
) -> StorageResult<Vec<StoredEvent>> {
    let (bound, range, order) = if forward {
        let range = "r.stream_ordering > $5 AND r.stream_ordering <= $6";
        (to.unwrap_or(i64::MAX), range, "ASC")
    } else {
        let range = "r.stream_ordering <= $5 AND r.stream_ordering > $6";
        (to.unwrap_or(0), range, "DESC")
    };
    let params: Vec<&(dyn ToSql + Sync)> = vec![
        &query.parent,
        &query.room_id,
        &query.rel_type,
        &query.event_type,
        &from,
        &bound,
        &limit,
        &RECURSION_DEPTH,
    ];
    // Children of children are read by a recursive query bounded in depth
    // (a loop of relations cannot make it run forever: `UNION` drops rows
    // seen already, and the depth stops it anyway).
    let children = if query.recurse {
        "WITH RECURSIVE children (event_id, depth) AS (
             SELECT event_id, 1 FROM event_relations WHERE relates_to_id = $1 AND room_id = $2
             UNION
             SELECT r.event_id, c.depth + 1 FROM event_relations r
             JOIN children c ON r.relates_to_id = c.event_id
             WHERE c.depth < $8 AND r.room_id = $2
         )"
    } else {
        "WITH children (event_id) AS (
             SELECT event_id FROM event_relations WHERE relates_to_id = $1 AND room_id = $2
               AND $8::int IS NOT NULL
         )"
    };
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "{children}
             SELECT {EVENT_COLUMNS} FROM (SELECT DISTINCT event_id FROM children) c
             JOIN event_relations r ON r.event_id = c.event_id
             JOIN events e ON e.event_id = r.event_id
             WHERE ($3::text IS NULL OR r.rel_type = $3) AND ($4::text IS NULL OR r.type = $4)
               AND {range}
             ORDER BY r.stream_ordering {order} LIMIT $7"
        ))
        .await?;
    let rows = client.query(&statement, &params).await?;
    Ok(rows.iter().map(StoredEvent::from_row).collect())
}

/// One thread of a room: its root and its latest reply's position.
pub struct ThreadRow {
    pub root_id: String,
    pub latest: i64,
}

/// A room's threads whose latest reply is at or before `upto`, by latest
/// reply, newest first; only those `participant` started or replied to
/// when given. Roots not stored here are left out.
pub async fn threads(
    pool: &Pool,
    room_id: &str,
    upto: i64,
    participant: Option<&str>,
    limit: i64,
) -> StorageResult<Vec<ThreadRow>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT t.root_id, t.latest FROM (
                 SELECT r.relates_to_id AS root_id, max(r.stream_ordering) AS latest,
                        bool_or(r.sender = $3) AS replied
                 FROM event_relations r
                 WHERE r.room_id = $1 AND r.rel_type = 'm.thread'
                 GROUP BY r.relates_to_id
             ) t
             JOIN events root ON root.event_id = t.root_id AND root.room_id = $1
             WHERE t.latest <= $2 AND ($3::text IS NULL OR t.replied OR root.sender = $3)
             ORDER BY t.latest DESC LIMIT $4",
        )
        .await?;
    let rows = client
        .query(&statement, &[&room_id, &upto, &participant, &limit])
        .await?;
    Ok(rows
        .iter()
        .map(|row| ThreadRow {
            root_id: row.get(0),
            latest: row.get(1),
        })
        .collect())
}

/// An event whose aggregations a response bundles, and which of them it
/// may have.
pub struct Parent<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub sender: &'a str,
    pub kind: &'a str,
    /// It may be a thread root (it has no relation of its own).
    pub thread: bool,
    /// It may have edits (not redacted, not a state event).
    pub edits: bool,
}

/// A thread's summary: how many replies, the latest, and whether the
/// viewer replied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSummary {
    pub count: i64,
    pub latest_event_id: String,
    pub replied: bool,
}

/// The aggregations of a set of parents, by parent event id.
#[derive(Debug, Default)]
pub struct Aggregations {
    pub threads: HashMap<String, ThreadSummary>,
    /// The latest valid edit of each edited parent.
    pub edits: HashMap<String, String>,
    /// The referencing events of each parent, oldest first.
    pub references: HashMap<String, Vec<String>>,
}

/// The aggregations of `parents` for `viewer`, in one statement. An edit
/// counts when it is the same type from the same sender as its parent, is
/// no state event and has `m.new_content` (an encrypted edit has it inside
/// its ciphertext); the latest by `origin_server_ts`, then event id, wins.
pub async fn aggregations(
    pool: &Pool,
    parents: &[Parent<'_>],
    viewer: &str,
) -> StorageResult<Aggregations> {
    let mut aggregations = Aggregations::default();
    if parents.is_empty() {
        return Ok(aggregations);
    }
    let ids: Vec<&str> = parents.iter().map(|p| p.event_id).collect();
    let rooms: Vec<&str> = parents.iter().map(|p| p.room_id).collect();
    let senders: Vec<&str> = parents.iter().map(|p| p.sender).collect();
    let kinds: Vec<&str> = parents.iter().map(|p| p.kind).collect();
    let threads: Vec<bool> = parents.iter().map(|p| p.thread).collect();
    let edits: Vec<bool> = parents.iter().map(|p| p.edits).collect();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH p (event_id, room_id, sender, type, thread, edits) AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                      $5::bool[], $6::bool[])
             )
             SELECT p.event_id, r.rel_type, count(*),
                    CASE WHEN r.rel_type = 'm.thread'
                         THEN (array_agg(r.event_id ORDER BY r.stream_ordering DESC))[1:1]
                         ELSE array_agg(r.event_id ORDER BY r.stream_ordering DESC) END,
                    bool_or(r.sender = $7)
             FROM p JOIN event_relations r ON r.relates_to_id = p.event_id
                AND r.room_id = p.room_id
                AND ((r.rel_type = 'm.thread' AND p.thread) OR r.rel_type = 'm.reference')
             GROUP BY p.event_id, r.rel_type
             UNION ALL
             SELECT * FROM (
                 SELECT DISTINCT ON (p.event_id) p.event_id, r.rel_type, 1::bigint,
                        ARRAY[r.event_id], false
                 FROM p JOIN event_relations r ON r.relates_to_id = p.event_id
                    AND r.room_id = p.room_id AND r.rel_type = 'm.replace'
                    AND r.sender = p.sender AND r.type = p.type
                 JOIN events e ON e.event_id = r.event_id
                 WHERE p.edits AND e.state_key IS NULL
                   AND (jsonb_typeof(e.pdu -> 'content' -> 'm.new_content') = 'object'
                        OR e.type = 'm.room.encrypted')
                 ORDER BY p.event_id, e.origin_server_ts DESC, e.event_id DESC
             ) edits",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[&ids, &rooms, &senders, &kinds, &threads, &edits, &viewer],
        )
        .await?;
    for row in &rows {
        let parent: String = row.get(0);
        let rel_type: &str = row.get(1);
        let count: i64 = row.get(2);
        let children: Vec<String> = row.get(3);
        let replied: bool = row.get(4);
        match rel_type {
            THREAD => {
                if let Some(latest) = children.into_iter().next() {
                    let summary = ThreadSummary {
                        count,
                        latest_event_id: latest,
                        replied,
                    };
                    aggregations.threads.insert(parent, summary);
                }
            }
            REPLACE => {
                if let Some(edit) = children.into_iter().next() {
                    aggregations.edits.insert(parent, edit);
                }
            }
            REFERENCE => {
                let oldest_first = children.into_iter().rev().collect();
                aggregations.references.insert(parent, oldest_first);
            }
            _ => {}
        }
    }
    Ok(aggregations)
}
