//! Content reports (`reports`, migration 0023): what users reported to the
//! server's admins, newest first.

use deadpool_postgres::Pool;
use serde::Serialize;

use super::StorageResult;

/// What was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Event,
    Room,
    User,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Event => "event",
            ReportKind::Room => "room",
            ReportKind::User => "user",
        }
    }
}

/// A report to store.
pub struct NewReport<'a> {
    pub user_id: &'a str,
    pub kind: ReportKind,
    pub room_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub target_user_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub score: Option<i64>,
}

/// A stored report, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub id: i64,
    pub received_ts: i64,
    pub user_id: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<i64>,
}

pub async fn insert(pool: &Pool, report: &NewReport<'_>, now_ms: i64) -> StorageResult<i64> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "INSERT INTO reports
                 (received_ts, user_id, kind, room_id, event_id, target_user_id, reason, score)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &now_ms,
                &report.user_id,
                &report.kind.as_str(),
                &report.room_id,
                &report.event_id,
                &report.target_user_id,
                &report.reason,
                &report.score,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Up to `limit` reports older than the report `before` (newest first),
/// and the total.
pub async fn list(
    pool: &Pool,
    before: Option<i64>,
    limit: i64,
) -> StorageResult<(Vec<Report>, i64)> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, received_ts, user_id, kind, room_id, event_id, target_user_id, reason, score
             FROM reports WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before.unwrap_or(i64::MAX), &limit],
        )
        .await?;
    let total: i64 = client
        .query_one("SELECT count(*) FROM reports", &[])
        .await?
        .get(0);
    let reports = rows
        .iter()
        .map(|row| Report {
            id: row.get(0),
            received_ts: row.get(1),
            user_id: row.get(2),
            kind: row.get(3),
            room_id: row.get(4),
            event_id: row.get(5),
            target_user_id: row.get(6),
            reason: row.get(7),
            score: row.get(8),
        })
        .collect();
    Ok((reports, total))
}
