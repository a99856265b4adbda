//! `--postgres-baseline`: how fast the PostgreSQL under the server inserts and
//! commits rows shaped like Lattice's `events` rows, so a report can say what
//! fraction of the database's own speed the server reaches.
//!
//! The scratch table copies the columns and indexes of `events` in
//! `src/storage/migrations/0001_initial.sql` (primary key, unique event id,
//! the two secondary indexes) and a sequence for the stream ordering; rows
//! carry a signed-PDU-sized JSON body. Two measurements, each for a fixed
//! time: one row per transaction over several connections (what a writer
//! without group commit can do), and batches of rows per transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls, Statement};

#[derive(Debug, Clone, Copy)]
pub struct BaselineOptions {
    /// How long each of the two measurements runs.
    pub duration: Duration,
    /// Connections inserting one row per transaction.
    pub single_row_connections: usize,
    /// Connections inserting batches.
    pub batch_connections: usize,
    pub batch_size: usize,
}

impl Default for BaselineOptions {
    fn default() -> Self {
        BaselineOptions {
            duration: Duration::from_secs(5),
            single_row_connections: 16,
            batch_connections: 4,
            batch_size: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub single_row_rows_per_second: f64,
    pub single_row_connections: usize,
    pub batch_rows_per_second: f64,
    pub batch_size: usize,
    pub batch_connections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("postgres baseline: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

pub async fn measure(
    database_url: &str,
    options: BaselineOptions,
) -> Result<Baseline, BaselineError> {
    let suffix: String = crate::util::random_string(8).to_lowercase();
    let table = format!("bench_baseline_events_{suffix}");
    let sequence = format!("bench_baseline_seq_{suffix}");
    let admin = connect(database_url).await?;
    admin
        .batch_execute(&format!(
            "CREATE SEQUENCE {sequence};
             CREATE TABLE {table} (
                 stream_ordering BIGINT PRIMARY KEY,
                 event_id TEXT NOT NULL UNIQUE,
                 room_id TEXT NOT NULL,
                 instance_name TEXT NOT NULL,
                 depth BIGINT NOT NULL,
                 sender TEXT NOT NULL,
                 type TEXT NOT NULL,
                 state_key TEXT,
                 origin_server_ts BIGINT NOT NULL,
                 state_group BIGINT NOT NULL,
                 pdu JSONB NOT NULL,
                 redacted_by TEXT,
                 txn_device_id TEXT,
                 txn_id TEXT
             );
             CREATE INDEX {table}_room_stream ON {table} (room_id, stream_ordering);
             CREATE INDEX {table}_stream_instance ON {table} (instance_name, stream_ordering);"
        ))
        .await?;
    let result = run_both(database_url, &table, &sequence, options).await;
    let dropped = admin
        .batch_execute(&format!("DROP TABLE {table}; DROP SEQUENCE {sequence};"))
        .await;
    let baseline = result?;
    dropped?;
    Ok(baseline)
}

async fn run_both(
    database_url: &str,
    table: &str,
    sequence: &str,
    options: BaselineOptions,
) -> Result<Baseline, BaselineError> {
    let single = format!(
        "INSERT INTO {table} (stream_ordering, event_id, room_id, instance_name, depth, sender, type,
             origin_server_ts, state_group, pdu, txn_device_id, txn_id)
         VALUES (nextval('{sequence}'), $1, $2, 'main', $3, $4, 'm.room.message', $5, 1, $6, 'BENCH', $7)"
    );
    let batch = format!(
        "INSERT INTO {table} (stream_ordering, event_id, room_id, instance_name, depth, sender, type,
             origin_server_ts, state_group, pdu, txn_device_id, txn_id)
         SELECT nextval('{sequence}'), e, r, 'main', d, s, 'm.room.message', t, 1, p, 'BENCH', x
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::jsonb[], $7::text[])
             AS rows (e, r, d, s, t, p, x)"
    );
    let counter = Arc::new(AtomicU64::new(0));
    let single_rows = run_for(
        database_url,
        &single,
        Shape::SingleRow,
        options.single_row_connections,
        options.duration,
        &counter,
    )
    .await?;
    let batch_size = options.batch_size.max(1);
    let batch_rows = run_for(
        database_url,
        &batch,
        Shape::Batch(batch_size),
        options.batch_connections,
        options.duration,
        &counter,
    )
    .await?;
    Ok(Baseline {
        single_row_rows_per_second: single_rows,
        single_row_connections: options.single_row_connections,
        batch_rows_per_second: batch_rows,
        batch_size,
        batch_connections: options.batch_connections,
    })
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// One row per statement, each its own transaction.
    SingleRow,
    /// This many rows in one statement inside an explicit transaction.
    Batch(usize),
}

/// Inserts in a loop on `connections` connections for `duration`, each with
/// `sql` prepared once; answers rows per second.
async fn run_for(
    database_url: &str,
    sql: &str,
    shape: Shape,
    connections: usize,
    duration: Duration,
    counter: &Arc<AtomicU64>,
) -> Result<f64, BaselineError> {
    let mut prepared = Vec::new();
    for _ in 0..connections.max(1) {
        let client = connect(database_url).await?;
        let statement = client.prepare(sql).await?;
        prepared.push((client, statement));
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (client, statement) in prepared {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut rows = 0;
            while Instant::now() < deadline {
                rows += insert(&client, &statement, shape, &counter).await?;
            }
            Ok::<u64, tokio_postgres::Error>(rows)
        }));
    }
    let mut rows = 0;
    for task in tasks {
        match task.await {
            Ok(result) => rows += result?,
            Err(join) => tracing::warn!(error = %join, "baseline task failed"),
        }
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

async fn insert(
    client: &Client,
    statement: &Statement,
    shape: Shape,
    counter: &AtomicU64,
) -> Result<u64, tokio_postgres::Error> {
    match shape {
        Shape::SingleRow => {
            let row = Row::next(counter);
            client
                .execute(
                    statement,
                    &[
                        &row.event_id,
                        &row.room_id,
                        &row.depth,
                        &row.sender,
                        &row.ts,
                        &row.pdu,
                        &row.txn_id,
                    ],
                )
                .await?;
            Ok(1)
        }
        Shape::Batch(size) => {
            let rows: Vec<Row> = (0..size).map(|_| Row::next(counter)).collect();
            let event_ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
            let room_ids: Vec<&str> = rows.iter().map(|r| r.room_id.as_str()).collect();
            let depths: Vec<i64> = rows.iter().map(|r| r.depth).collect();
            let senders: Vec<&str> = rows.iter().map(|r| r.sender.as_str()).collect();
            let timestamps: Vec<i64> = rows.iter().map(|r| r.ts).collect();
            let pdus: Vec<&Value> = rows.iter().map(|r| &r.pdu).collect();
            let txn_ids: Vec<&str> = rows.iter().map(|r| r.txn_id.as_str()).collect();
            client.batch_execute("BEGIN").await?;
            client
                .execute(
                    statement,
                    &[
                        &event_ids,
                        &room_ids,
                        &depths,
                        &senders,
                        &timestamps,
                        &pdus,
                        &txn_ids,
                    ],
                )
                .await?;
            client.batch_execute("COMMIT").await?;
            Ok(size as u64)
        }
    }
}

async fn connect(database_url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "baseline connection closed");
        }
    });
    Ok(client)
}

/// One event row; the PDU has the size and shape of a signed `m.room.message`.
struct Row {
    event_id: String,
    room_id: String,
    depth: i64,
    sender: String,
    ts: i64,
    pdu: Value,
    txn_id: String,
}

impl Row {
    fn next(counter: &AtomicU64) -> Row {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let event_id = format!("${:0>43}", format!("baseline{n}"));
        let room_id = format!("!{:0>43}", format!("room{}", n % 50));
        let sender = format!("@bench-user-{}:localhost", n % 500);
        let ts = 1_700_000_000_000 + n as i64;
        let pdu = json!({
            "auth_events": [format!("${:0>43}", "a1"), format!("${:0>43}", "a2"), format!("${:0>43}", "a3")],
            "prev_events": [format!("${:0>43}", n.saturating_sub(1))],
            "type": "m.room.message",
            "room_id": room_id,
            "sender": sender,
            "depth": n,
            "origin_server_ts": ts,
            "content": { "msgtype": "m.text", "body": format!("baseline message {n} with a body of a typical chat size") },
            "hashes": { "sha256": "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE" },
            "signatures": { "localhost": { "ed25519:a_AbCd": "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbg" } },
        });
        Row {
            event_id,
            room_id,
            depth: n as i64,
            sender,
            ts,
            pdu,
            txn_id: format!("baseline{n}"),
        }
    }
}
