//! Small runs of the bench against an in-process Lattice (on a runtime and a
//! fresh database of its own): they check the report's counts, never speed.
//! PostgreSQL must be running (`LATTICE_PG_FAST=1 .ci/postgres.sh start`);
//! `LATTICE_TEST_DATABASE_URL` names its admin database.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};

use figment::providers::{Format, Serialized, Yaml};
use figment::Figment;
use tokio_postgres::NoTls;

use super::*;
use crate::config::Config;

const DEFAULT_ADMIN_URL: &str = "postgresql://lattice@127.0.0.1:5433/postgres";

/// A monolith on a thread and runtime of its own, over a database of its own.
struct TestServer {
    addr: SocketAddr,
    database_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    admin_url: String,
    database: String,
}

impl TestServer {
    async fn start() -> TestServer {
        let admin_url = std::env::var("LATTICE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let database = format!(
            "bench_test_{}",
            crate::util::random_string(10).to_lowercase()
        );
        let admin = admin(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create the test database");
        let mut url = url::Url::parse(&admin_url).expect("LATTICE_TEST_DATABASE_URL is a URL");
        url.set_path(&database);
        let database_url = url.to_string();

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let sample = crate::config::sample(
            "localhost",
            &crate::signing_key::SigningKey::generate().to_config_string(),
        );
        let config = Config::from_figment(
            Figment::from(Yaml::string(&sample))
                .merge(Serialized::default("database.url", &database_url))
                .merge(Serialized::default("database.pool_size", 8))
                .merge(Serialized::default("enable_registration", true))
                .merge(Serialized::default("rate_limits.enabled", false))
                .merge(Serialized::default(
                    "media.media_store_path",
                    std::env::temp_dir().join(format!("{database}_media")),
                ))
                .merge(Serialized::default("listen", addr)),
        )
        .expect("test config is valid");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                match crate::node::Node::start(config, "main", listener, 1).await {
                    Ok(running) => {
                        let _ = started_tx.send(Ok(()));
                        let _ = stop_rx.await;
                        running.stop().await;
                    }
                    Err(error) => {
                        let _ = started_tx.send(Err(error.to_string()));
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(5));
        });
        match started_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("server failed to start: {error}"),
            Err(_) => panic!("server thread died while starting"),
        }
        TestServer {
            addr,
            database_url,
            stop: Some(stop_tx),
            thread: Some(thread),
            admin_url,
            database,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let admin = admin(&self.admin_url).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .await;
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at {url} ({e}); start it with LATTICE_PG_FAST=1 .ci/postgres.sh start")
    });
    tokio::spawn(connection);
    client
}

fn options(workload: Workload, addr: SocketAddr, shape: Shape, load: Load) -> Options {
    Options {
        workload,
        name: workload.name().to_owned(),
        label: "lattice".to_owned(),
        endpoints: Endpoints::new(&format!("http://{addr}"), &[], None),
        shape,
        load,
        pids: vec![Target {
            label: "self".into(),
            pid: std::process::id(),
        }],
        setup_concurrency: 4,
        sync_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(20),
        retry_for: None,
        threads: 2,
        baseline: None,
        progress: false,
        scratch_dir: std::env::temp_dir(),
    }
}

fn assert_clean(report: &Report) {
    assert!(report.ok(), "{}", report.table());
    assert_eq!(report.accepted, report.operations, "{}", report.table());
    assert_eq!(report.undelivered, 0, "{}", report.table());
    assert_eq!(
        report.delivered,
        report.deliveries_expected,
        "{}",
        report.table()
    );
    assert!(report.errors.is_empty(), "{}", report.table());
    assert_eq!(report.send_latency_ms.count, report.operations);
    assert_eq!(report.delivery_latency_ms.count, report.deliveries_expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_chat_run_delivers_every_message_once_and_in_order() {
    let server = TestServer::start().await;
    // 6 users in 3 rooms of 3 (user 0..5, rooms wrap so some users are in two).
    let shape = Shape {
        users: 6,
        rooms: 3,
        per_room: 3,
        senders: 6,
        messages: 4,
    };
    let report = run_workload(&options(
        Workload::Chat,
        server.addr,
        shape,
        Load::Closed { concurrency: 4 },
    ))
    .await
    .expect("the chat run completes");
    eprintln!("{}", report.table());
    assert_eq!(report.operations, 24);
    assert_eq!(report.deliveries_expected, 24 * 3);
    assert_eq!(
        (report.duplicated, report.out_of_order, report.unexpected),
        (0, 0, 0)
    );
    assert_clean(&report);
    assert_eq!(report.processes.len(), 1);
    assert!(report.processes[0].peak_rss_mb > 0.0);

    // Paced, and with the database baseline beside it.
    let mut paced = options(
        Workload::Chat,
        server.addr,
        shape,
        Load::Open { rate: 200.0 },
    );
    paced.baseline = Some((
        server.database_url.clone(),
        BaselineOptions {
            duration: Duration::from_millis(300),
            single_row_connections: 2,
            batch_connections: 1,
            batch_size: 10,
        },
    ));
    let report = run_workload(&paced).await.expect("the paced run completes");
    assert_clean(&report);
    assert_eq!(report.rate, Some(200.0));
    let baseline = report.baseline.expect("a baseline was asked for");
    assert!(baseline.single_row_rows_per_second > 0.0);
    assert!(baseline.batch_rows_per_second > 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_join_storm_is_seen_by_every_watcher() {
    let server = TestServer::start().await;
    let shape = Shape {
        users: 12,
        rooms: 1,
        per_room: 3,
        senders: 0,
        messages: 0,
    };
    let report = run_workload(&options(
        Workload::JoinStorm,
        server.addr,
        shape,
        Load::Closed { concurrency: 5 },
    ))
    .await
    .expect("the join storm completes");
    assert_eq!(report.operations, 9);
    assert_eq!(report.deliveries_expected, 9 * 3);
    assert_clean(&report);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_media_run_moves_every_byte() {
    let server = TestServer::start().await;
    let shape = Shape {
        messages: 2,
        ..Workload::Media.default_shape()
    };
    let mut options = options(
        Workload::Media,
        server.addr,
        shape,
        Load::Closed { concurrency: 2 },
    );
    // The test process is server and load generator at once: its memory
    // is not the server's, so it is not judged here.
    options.pids.clear();
    let report = run_workload(&options)
        .await
        .expect("the media run completes");
    eprintln!("{}", report.table());
    assert!(report.ok(), "{}", report.table());
    let media = report.media.expect("media figures");
    assert_eq!(media.uploads_10mb.requests, 2);
    assert_eq!(media.uploads_1mb.requests, 2);
    assert_eq!(
        media.downloads.bytes,
        2 * 10 * 1024 * 1024 + 2 * 1024 * 1024
    );
    assert_eq!(media.thumbnails.requests, 8);
    assert_eq!(media.thumbnails.failed, 0);
    assert!(media.thumbnails.bytes > 0);
    assert!(media.file_copy_mb_per_second > 0.0);
    assert_eq!(report.operations, 2 + 2 + 4 + 8);
    server.stop().await;
}
