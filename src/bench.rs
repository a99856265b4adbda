//! `lattice bench`: a load generator that drives any homeserver through the
//! Client-Server API only, so Lattice in any topology, Synapse and others are
//! measured by the same client.
//!
//! A run plans a [`workload`] (users, rooms, who sends what), registers the
//! users (`m.login.dummy`), creates and joins the rooms, keeps a long-polling
//! `/sync` loop open for every watching user, then performs the measured
//! operations, closed-loop (C in flight) or open-loop (a fixed arrival rate),
//! and waits for every delivery. The [`tracker`] matches what each sync shows
//! against what was sent: latencies from send start to each recipient, and
//! events undelivered, duplicated or out of order, which must all be zero.
//! [`processes`] reads the server's CPU and memory from `/proc`, [`baseline`]
//! measures the database alone, and [`report`] prints a table and one JSON
//! line.
//!
//! HTTP runs on [`pool`] threads of their own (awc clients are not `Send`),
//! so the coordinating code here works on any tokio runtime, including a
//! test's, next to an in-process server.

pub mod baseline;
pub mod client;
pub mod latency;
pub mod media;
pub mod pool;
pub mod processes;
pub mod progress;
pub mod report;
pub mod to_device;
pub mod tracker;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::bench::baseline::{Baseline, BaselineError, BaselineOptions};
use crate::bench::client::{ClientError, Endpoints, MatrixClient, Session, SyncResponse};
use crate::bench::latency::LatencySummary;
use crate::bench::pool::{ClientPool, PoolStopped};
use crate::bench::processes::{ProcessWatch, Target};
use crate::bench::progress::Progress;
use crate::bench::report::{IdleMemory, Report};
use crate::bench::to_device::ToDeviceTracker;
use crate::bench::tracker::{RoomIndex, Tracker, UserIndex};
use crate::bench::workload::{Load, Operation, Plan, Shape, Workload};

/// How many times a request is tried when the answer says trying again may help.
const MAX_ATTEMPTS: u32 = 8;
/// How long the set-up waits for every watcher's first sync.
const INITIAL_SYNC_DEADLINE: Duration = Duration::from_secs(900);
/// After the last initial sync, time for the long polls to reach the server
/// before the idle workload reads its memory.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to run (or `summary` to summarise earlier runs' JSON lines).
    #[arg(value_enum)]
    pub workload: Workload,
    /// The homeserver's client API base URL, e.g. http://127.0.0.1:8008.
    #[arg(long, required_unless_present = "json_in")]
    pub base_url: Option<String>,
    /// Where `/sync` goes, when not to --base-url. Given more than once,
    /// each user's syncs go to one of them, chosen by a hash of the user
    /// (as `lattice routes --nginx` hashes /sync over the sync instances).
    #[arg(long)]
    pub sync_url: Vec<String>,
    /// Where sends (and join-storm's joins) go, when not to --base-url.
    #[arg(long)]
    pub send_url: Option<String>,
    #[arg(long)]
    pub users: Option<usize>,
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Members per room (join-storm: the members watching the storm).
    #[arg(long)]
    pub per_room: Option<usize>,
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages per sender.
    #[arg(long)]
    pub messages: Option<usize>,
    /// Closed loop: requests in flight.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: operations started per second, however slow the answers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The server's processes, `label=pid` or `pid`; each counts with its children.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<String>,
    /// Appends the run's JSON line to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Also measure how fast the database inserts event-shaped rows.
    #[arg(long, requires = "database_url")]
    pub postgres_baseline: bool,
    /// The database for --postgres-baseline (a scratch table is created and dropped).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Seconds each of the two baseline measurements runs.
    #[arg(long, default_value_t = 5)]
    pub baseline_seconds: u64,
    /// The server's name in reports.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// The run's name in reports (defaults to the workload's).
    #[arg(long)]
    pub name: Option<String>,
    /// Requests in flight while registering users, creating and joining rooms.
    #[arg(long, default_value_t = 16)]
    pub setup_concurrency: usize,
    /// Long-poll timeout of every `/sync`, in seconds.
    #[arg(long, default_value_t = 30)]
    pub sync_timeout: u64,
    /// Seconds to keep waiting for deliveries once none has arrived for that long.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// `media`: the directory of the plain file copy set beside uploads (on
    /// the disk of the server's media store, to compare like with like).
    #[arg(long, default_value = "var/bench")]
    pub scratch_dir: PathBuf,
    /// Keep retrying a request that failed in a way that may pass (5xx,
    /// 429, a dropped connection) for up to this many seconds from its
    /// first try, instead of 8 tries: for runs during which processes are
    /// killed on purpose (`make chaos`).
    #[arg(long)]
    pub retry_for: Option<u64>,
    /// Client threads (default: the number of cores, at most 4).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// summary: the JSON-lines files to read.
    #[arg(long)]
    pub json_in: Vec<PathBuf>,
    /// summary: also write the markdown here.
    #[arg(long)]
    pub markdown_out: Option<PathBuf>,
    /// summary: runs of the same name and server are repetitions (compare
    /// their medians), not re-runs (where the latest replaces the others).
    #[arg(long)]
    pub medians: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("set-up: {what}: {error}")]
    Setup { what: String, error: ClientError },
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Pool(#[from] PoolStopped),
    #[error("the run saw {0}")]
    Problems(String),
}

/// A run's settings, with every default filled in.
#[derive(Debug, Clone)]
pub struct Options {
    pub workload: Workload,
    pub name: String,
    pub label: String,
    pub endpoints: Endpoints,
    pub shape: Shape,
    pub load: Load,
    pub pids: Vec<Target>,
    pub setup_concurrency: usize,
    pub sync_timeout: Duration,
    pub drain_timeout: Duration,
    /// See [`BenchArgs::retry_for`].
    pub retry_for: Option<Duration>,
    pub threads: usize,
    pub baseline: Option<(String, BaselineOptions)>,
    pub progress: bool,
    pub scratch_dir: PathBuf,
}

impl Options {
    pub fn from_args(args: &BenchArgs) -> Result<Options, BenchError> {
        let workload = args.workload;
        let base_url = args
            .base_url
            .as_deref()
            .ok_or_else(|| BenchError::Usage("--base-url is required".into()))?;
        let defaults = workload.default_shape();
        let shape = Shape {
            users: args.users.unwrap_or(defaults.users),
            rooms: args.rooms.unwrap_or(defaults.rooms),
            per_room: args.per_room.unwrap_or(defaults.per_room),
            senders: args.senders.unwrap_or(defaults.senders),
            messages: args.messages.unwrap_or(defaults.messages),
        };
        let load = match (args.concurrency, args.rate) {
            (_, Some(rate)) if rate.is_nan() || rate <= 0.0 => {
                return Err(BenchError::Usage("--rate must be positive".into()))
            }
            (_, Some(rate)) => Load::Open { rate },
            (Some(0), None) => {
                return Err(BenchError::Usage("--concurrency must be at least 1".into()))
            }
            (Some(concurrency), None) => Load::Closed { concurrency },
            (None, None) => workload.default_load(),
        };
        let pids = args
            .pids
            .iter()
            .map(|p| Target::parse(p))
            .collect::<Result<_, _>>()
            .map_err(BenchError::Usage)?;
        let baseline = match (&args.database_url, args.postgres_baseline) {
            (Some(url), true) => Some((
                url.clone(),
                BaselineOptions {
                    duration: Duration::from_secs(args.baseline_seconds.max(1)),
                    ..BaselineOptions::default()
                },
            )),
            _ => None,
        };
        let threads = args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(4)
        });
        Ok(Options {
            workload,
            name: args
                .name
                .clone()
                .unwrap_or_else(|| workload.name().to_owned()),
            label: args.label.clone(),
            endpoints: Endpoints::new(base_url, &args.sync_url, args.send_url.as_deref()),
            shape,
            load,
            pids,
            setup_concurrency: args.setup_concurrency.max(1),
            sync_timeout: Duration::from_secs(args.sync_timeout),
            drain_timeout: Duration::from_secs(args.drain_timeout.max(1)),
            retry_for: args.retry_for.map(Duration::from_secs),
            threads: threads.max(1),
            baseline,
            progress: !args.quiet,
            scratch_dir: args.scratch_dir.clone(),
        })
    }
}

/// `lattice bench ...`: runs one workload (or the summary) and prints its
/// table and JSON line on stdout. A run that saw undelivered, duplicated or
/// out-of-order events, or failed operations, ends in an error after printing.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    if args.workload == Workload::Summary {
        return summarise(&args);
    }
    let options = Options::from_args(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run_workload(&options))?;
    let line = serde_json::to_string(&report).map_err(std::io::Error::other)?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", report.table())?;
    writeln!(stdout, "{line}")?;
    if let Some(path) = &args.json_out {
        append_line(path, &line)?;
    }
    if !report.ok() {
        let problems = report.problems.join(", ");
        eprintln!();
        eprintln!(
            "!!! lattice bench: {} on {}: {problems} !!!",
            report.name, report.server
        );
        eprintln!();
        return Err(BenchError::Problems(problems));
    }
    Ok(())
}

fn append_line(path: &PathBuf, line: &str) -> Result<(), BenchError> {
    let file_error = |source| BenchError::File {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(file_error)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(file_error)?;
    writeln!(file, "{line}").map_err(file_error)
}

fn summarise(args: &BenchArgs) -> Result<(), BenchError> {
    if args.json_in.is_empty() {
        return Err(BenchError::Usage("summary needs --json-in FILE".into()));
    }
    let mut reports = Vec::new();
    for path in &args.json_in {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::File {
            path: path.clone(),
            source,
        })?;
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let report: Report = serde_json::from_str(line).map_err(|e| {
                BenchError::Usage(format!(
                    "{}:{}: not a bench report: {e}",
                    path.display(),
                    number + 1
                ))
            })?;
            reports.push(report);
        }
    }
    let markdown = report::summary_markdown(&reports, args.medians);
    print!("{markdown}");
    if let Some(path) = &args.markdown_out {
        std::fs::write(path, &markdown).map_err(|source| BenchError::File {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `"<request> <errcode>"` → count.
#[derive(Default)]
struct ErrorCounts {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl ErrorCounts {
    fn add(&self, request: &str, error: &ClientError, progress: &Progress) {
        tracing::debug!(request, %error, "request failed");
        if let Ok(mut counts) = self.counts.lock() {
            *counts
                .entry(format!("{request} {}", error.errcode()))
                .or_default() += 1;
        }
        progress.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// What the tasks of a run share, on every thread.
struct Shared {
    run_id: String,
    options: Options,
    plan: Plan,
    tracker: Arc<Mutex<Tracker>>,
    /// `chat-todevice`'s to-device messages.
    to_device: Mutex<ToDeviceTracker>,
    errors: ErrorCounts,
    progress: Arc<Progress>,
}

impl Shared {
    fn user_name(&self, user: UserIndex) -> String {
        format!("bench-{}-{user}", self.run_id)
    }

    /// Tries `attempt` until it succeeds, fails for good, or runs out of tries.
    async fn retrying<T, Fut>(
        &self,
        request: &str,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut tries = 0;
        let first = Instant::now();
        let patient = |tries: u32| match self.options.retry_for {
            Some(retry_for) => first.elapsed() < retry_for,
            None => tries < MAX_ATTEMPTS,
        };
        loop {
            tries += 1;
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    self.errors.add(request, &error, &self.progress);
                    match error.retry_after() {
                        Some(delay) if patient(tries) => tokio::time::sleep(delay).await,
                        _ => return Err(error),
                    }
                }
            }
        }
    }
}

/// Rooms and users once set up, read by the sync loops and the operations.
struct World {
    sessions: Vec<Session>,
    filters: Vec<Option<String>>,
    room_ids: Vec<String>,
    room_index: HashMap<String, RoomIndex>,
    /// join-storm: the joiner's user id → the operation of its join.
    join_operations: HashMap<String, usize>,
}

/// Runs one workload against the server and reports what it measured.
pub async fn run_workload(options: &Options) -> Result<Report, BenchError> {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if options.workload == Workload::Media {
        let pool = ClientPool::start(options.threads, Arc::new(options.endpoints.clone()))?;
        let result = media::run(options, &pool).await;
        pool.shutdown().await;
        let mut report = result?;
        report.started_unix = started_unix;
        return Ok(report);
    }
    let plan = Plan::new(options.workload, options.shape).map_err(BenchError::Usage)?;
    let operation_rooms: Vec<RoomIndex> = plan.operations.iter().map(|o| o.room()).collect();
    let tracker = Arc::new(Mutex::new(Tracker::new(
        plan.recipients.clone(),
        &operation_rooms,
    )));
    let progress = Arc::new(Progress::new(
        format!("{} {}", options.label, options.name),
        options.progress,
    ));
    let printer = progress.spawn_printer(tracker.clone());
    let shared = Arc::new(Shared {
        run_id: crate::util::random_string(6).to_lowercase(),
        options: options.clone(),
        plan,
        tracker: tracker.clone(),
        to_device: Mutex::new(ToDeviceTracker::default()),
        errors: ErrorCounts::default(),
        progress: progress.clone(),
    });
    let pool = ClientPool::start(options.threads, Arc::new(options.endpoints.clone()))?;
    let result = measure(&shared, &pool).await;
    pool.shutdown().await;
    progress.finish();
    let _ = printer.await;
    let mut report = result?;
    report.started_unix = started_unix;
    if let Some((url, baseline_options)) = &options.baseline {
        if options.progress {
            eprintln!("{} {}: postgres baseline", options.label, options.name);
        }
        report.baseline = Some(baseline::measure(url, *baseline_options).await?);
    }
    Ok(report)
}

async fn measure(shared: &Arc<Shared>, pool: &ClientPool) -> Result<Report, BenchError> {
    let options = &shared.options;
    let plan = &shared.plan;
    let setup_start = Instant::now();
    let world = Arc::new(set_up(shared, pool).await?);
    let setup_seconds = setup_start.elapsed().as_secs_f64();

    let mut watch = ProcessWatch::new(options.pids.clone());
    let rss_before = watch.rss_now();
    let syncs = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let initial_syncs = Arc::new(tokio::sync::Semaphore::new(options.setup_concurrency));
    shared.progress.phase("first sync", plan.syncing.len());
    for &user in &plan.syncing {
        let loop_state = SyncLoop {
            shared: shared.clone(),
            world: world.clone(),
            user,
            syncs: syncs.clone(),
            limited: limited.clone(),
            ready: ready.clone(),
            initial_syncs: initial_syncs.clone(),
        };
        // The loop runs until the pool shuts down; its answer is never awaited.
        drop(pool.run(user as usize, move |client| loop_state.run(client)));
    }
    let deadline = Instant::now() + INITIAL_SYNC_DEADLINE;
    while ready.load(Ordering::Relaxed) < plan.syncing.len() {
        if Instant::now() > deadline {
            return Err(BenchError::Usage(format!(
                "only {} of {} users finished their first sync in {} s",
                ready.load(Ordering::Relaxed),
                plan.syncing.len(),
                INITIAL_SYNC_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut idle_memory = Vec::new();
    if options.workload == Workload::Idle && !watch.is_empty() {
        tokio::time::sleep(IDLE_SETTLE).await;
        for ((label, before), (_, open)) in rss_before.into_iter().zip(watch.rss_now()) {
            idle_memory.push(IdleMemory {
                label,
                open_syncs: plan.syncing.len(),
                rss_before_mb: before,
                rss_open_mb: open,
                kb_per_sync: (open - before) * 1024.0 / plan.syncing.len().max(1) as f64,
            });
        }
    }

    // The measured phase.
    let watch_stop = Arc::new(tokio::sync::Notify::new());
    watch.sample();
    let watch = Arc::new(Mutex::new(watch));
    let sampler = {
        let watch = watch.clone();
        let stop = watch_stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    _ = tokio::time::sleep(processes::SAMPLE_INTERVAL) => {
                        if let Ok(mut watch) = watch.lock() {
                            watch.sample();
                        }
                    }
                }
            }
        })
    };
    let syncs_before = syncs.load(Ordering::Relaxed);
    let client_cpu_before = processes::own_cpu_seconds();
    shared.progress.phase("operations", plan.operations.len());
    match options.load {
        Load::Closed { concurrency } => run_closed_loop(shared, &world, pool, concurrency).await?,
        Load::Open { rate } => run_open_loop(shared, &world, pool, rate).await?,
    }
    shared.progress.phase("deliveries", 0);
    wait_for_deliveries(shared).await;
    watch_stop.notify_one();
    let _ = sampler.await;
    let processes = match watch.lock() {
        Ok(mut watch) => {
            watch.sample();
            watch.usage()
        }
        Err(_) => Vec::new(),
    };
    let syncs_measured = syncs.load(Ordering::Relaxed) - syncs_before;
    let client_cpu_seconds = processes::own_cpu_seconds() - client_cpu_before;

    let mut tracker = shared
        .tracker
        .lock()
        .map_err(|_| BenchError::Usage("tracker poisoned".into()))?;
    let counts = tracker.counts();
    for (op, room, missed) in tracker.undelivered_operations(20) {
        eprintln!(
            "lattice bench: operation {op} (txn {}) in room {room} never reached {missed} of its recipients",
            message_txn_id(&shared.run_id, op)
        );
    }
    let measured_seconds = tracker
        .operation_span()
        .map(|(first, last)| last.saturating_duration_since(first).as_secs_f64())
        .unwrap_or(0.0);
    let (send_latencies, delivery_latencies) = tracker.take_latencies();
    let to_device = match options.workload {
        Workload::ChatToDevice => shared.to_device.lock().ok().map(|mut t| t.report()),
        _ => None,
    };
    let (concurrency, rate, load) = match options.load {
        Load::Closed { concurrency } => (Some(concurrency), None, "closed"),
        Load::Open { rate } => (None, Some(rate), "open"),
    };
    let mut report = Report {
        name: options.name.clone(),
        workload: options.workload.name().to_owned(),
        server: options.label.clone(),
        base_url: options.endpoints.base.clone(),
        run_id: shared.run_id.clone(),
        started_unix: 0,
        users: options.shape.users,
        rooms: plan.rooms.len(),
        per_room: options.shape.per_room,
        senders: if options.workload == Workload::JoinStorm {
            0
        } else {
            options.shape.senders
        },
        messages: if options.workload == Workload::JoinStorm {
            0
        } else {
            options.shape.messages
        },
        load: load.to_owned(),
        concurrency,
        rate,
        setup_seconds,
        measured_seconds,
        operations: plan.operations.len() as u64,
        accepted: counts.operations_accepted,
        failed: counts.operations_failed,
        accepted_per_second: if measured_seconds > 0.0 {
            counts.operations_accepted as f64 / measured_seconds
        } else {
            0.0
        },
        send_latency_ms: LatencySummary::of(send_latencies),
        delivery_latency_ms: LatencySummary::of(delivery_latencies),
        deliveries_expected: counts.expected,
        delivered: counts.delivered,
        undelivered: counts.undelivered,
        duplicated: counts.duplicated,
        out_of_order: counts.out_of_order,
        unexpected: counts.unexpected,
        limited_timelines: limited.load(Ordering::Relaxed),
        syncs: syncs_measured,
        client_cpu_seconds,
        errors: shared.errors.snapshot(),
        processes,
        idle_memory,
        to_device,
        baseline: None::<Baseline>,
        media: None,
        problems: Vec::new(),
    };
    report.judge();
    Ok(report)
}

/// Registers every user, gives each watcher a filter, creates the rooms and
/// joins their members.
async fn set_up(shared: &Arc<Shared>, pool: &ClientPool) -> Result<World, BenchError> {
    let plan = &shared.plan;
    let concurrency = shared.options.setup_concurrency;

    shared.progress.phase("register", plan.users);
    let sessions = for_each(pool, concurrency, (0..plan.users as UserIndex).collect(), {
        let shared = shared.clone();
        move |client, user| {
            let shared = shared.clone();
            async move {
                let name = shared.user_name(user);
                let password = format!("{name}-password");
                let result = shared
                    .retrying("register", || client.register(&name, &password))
                    .await;
                shared.progress.step();
                result.map_err(|error| BenchError::Setup {
                    what: format!("register {name}"),
                    error,
                })
            }
        }
    })
    .await?;
    let sessions = Arc::new(sessions);

    let message_type = match shared.options.workload {
        Workload::JoinStorm => "m.room.member",
        _ => "m.room.message",
    };
    // Only what the bench reads: its own event type, no state, nothing else
    // (and with chat-ephemeral, the typing and receipts it makes, as a
    // client would get them).
    let ephemeral_types = match shared.options.workload {
        Workload::ChatEphemeral => json!(["m.typing", "m.receipt"]),
        _ => json!([]),
    };
    let filter = json!({
        "room": {
            "timeline": { "limit": 1000, "types": [message_type] },
            "state": { "types": [] },
            "ephemeral": { "types": ephemeral_types },
            "account_data": { "types": [] },
        },
        "presence": { "types": [] },
        "account_data": { "types": [] },
    });
    shared.progress.phase("filters", plan.syncing.len());
    let created = for_each(pool, concurrency, plan.syncing.clone(), {
        let shared = shared.clone();
        let sessions = sessions.clone();
        move |client, user| {
            let shared = shared.clone();
            let session = sessions[user as usize].clone();
            let filter = filter.clone();
            async move {
                let result = shared
                    .retrying("filter", || client.create_filter(&session, &filter))
                    .await;
                shared.progress.step();
                result
                    .map(|id| (user, id))
                    .map_err(|error| BenchError::Setup {
                        what: format!("filter for {}", session.user_id),
                        error,
                    })
            }
        }
    })
    .await?;
    let mut filters = vec![None; plan.users];
    for (user, id) in created {
        filters[user as usize] = Some(id);
    }

    shared.progress.phase("create rooms", plan.rooms.len());
    let room_ids = for_each(pool, concurrency, (0..plan.rooms.len()).collect(), {
        let shared = shared.clone();
        let sessions = sessions.clone();
        move |client, room: usize| {
            let shared = shared.clone();
            let creator = sessions[shared.plan.rooms[room][0] as usize].clone();
            async move {
                let name = format!("bench {} room {room}", shared.run_id);
                let result = shared
                    .retrying("createRoom", || client.create_room(&creator, &name))
                    .await;
                shared.progress.step();
                result.map_err(|error| BenchError::Setup {
                    what: format!("create room {room}"),
                    error,
                })
            }
        }
    })
    .await?;
    let room_ids = Arc::new(room_ids);

    let joins: Vec<(UserIndex, usize)> = plan
        .rooms
        .iter()
        .enumerate()
        .flat_map(|(room, members)| members.iter().skip(1).map(move |&user| (user, room)))
        .collect();
    shared.progress.phase("join", joins.len());
    for_each(pool, concurrency, joins, {
        let shared = shared.clone();
        let sessions = sessions.clone();
        let room_ids = room_ids.clone();
        move |client, (user, room)| {
            let shared = shared.clone();
            let session = sessions[user as usize].clone();
            let room_id = room_ids[room].clone();
            async move {
                let result = shared
                    .retrying("join", || client.join(&session, &room_id, false))
                    .await;
                shared.progress.step();
                result.map_err(|error| BenchError::Setup {
                    what: format!("{} joins {room_id}", session.user_id),
                    error,
                })
            }
        }
    })
    .await?;

    let sessions = Arc::try_unwrap(sessions).unwrap_or_else(|shared| (*shared).clone());
    let room_ids = Arc::try_unwrap(room_ids).unwrap_or_else(|shared| (*shared).clone());
    let join_operations = plan
        .operations
        .iter()
        .enumerate()
        .filter_map(|(op, operation)| match operation {
            Operation::Join { user, .. } => Some((sessions[*user as usize].user_id.clone(), op)),
            Operation::Message { .. } => None,
        })
        .collect();
    Ok(World {
        room_index: room_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as RoomIndex))
            .collect(),
        sessions,
        filters,
        room_ids,
        join_operations,
    })
}

/// Runs `work` for every item, `concurrency` at a time spread over the client
/// threads, and answers the results in the items' order (or the first error).
async fn for_each<I, T, F, Fut>(
    pool: &ClientPool,
    concurrency: usize,
    items: Vec<I>,
    work: F,
) -> Result<Vec<T>, BenchError>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(Rc<MatrixClient>, I) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, BenchError>> + 'static,
{
    let results: Vec<Result<Result<T, BenchError>, PoolStopped>> =
        futures::stream::iter(items.into_iter().enumerate().map(|(index, item)| {
            let work = work.clone();
            pool.run(index, move |client| work(client, item))
        }))
        .buffered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().map(|r| r?).collect()
}

/// One watcher's `/sync` loop: a first sync, then long polls until the pool
/// shuts down; every response is matched against the operations.
struct SyncLoop {
    shared: Arc<Shared>,
    world: Arc<World>,
    user: UserIndex,
    syncs: Arc<AtomicU64>,
    limited: Arc<AtomicU64>,
    ready: Arc<AtomicUsize>,
    initial_syncs: Arc<tokio::sync::Semaphore>,
}

impl SyncLoop {
    async fn run(self, client: Rc<MatrixClient>) {
        let shared = &self.shared;
        let session = &self.world.sessions[self.user as usize];
        let Some(filter) = self.world.filters[self.user as usize].as_deref() else {
            return;
        };
        let mut since = loop {
            let permit = self.initial_syncs.acquire().await;
            let result = client.sync(session, filter, None, Duration::ZERO).await;
            drop(permit);
            match result {
                Ok(response) => break response.next_batch,
                Err(error) => {
                    shared.errors.add("sync", &error, &shared.progress);
                    tokio::time::sleep(error.retry_after().unwrap_or(Duration::from_secs(1))).await;
                }
            }
        };
        self.ready.fetch_add(1, Ordering::Relaxed);
        shared.progress.step();
        loop {
            match client
                .sync(session, filter, Some(&since), shared.options.sync_timeout)
                .await
            {
                Ok(response) => {
                    let now = Instant::now();
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                    self.record(&response, now);
                    since = response.next_batch;
                }
                Err(error) => {
                    shared.errors.add("sync", &error, &shared.progress);
                    tokio::time::sleep(error.retry_after().unwrap_or(Duration::from_secs(1))).await;
                }
            }
        }
    }

    fn record(&self, response: &SyncResponse, now: Instant) {
        if let Some(to_device) = &response.to_device {
            let ops: Vec<usize> = to_device
                .events
                .iter()
                .filter_map(|event| event.content.bench.as_ref())
                .filter(|tag| tag.run == self.shared.run_id)
                .filter_map(|tag| usize::try_from(tag.id).ok())
                .collect();
            if !ops.is_empty() {
                if let Ok(mut tracker) = self.shared.to_device.lock() {
                    for op in ops {
                        tracker.observe(self.user, op, now);
                    }
                }
            }
        }
        let Some(rooms) = &response.rooms else { return };
        let mut seen: Vec<(RoomIndex, usize)> = Vec::new();
        let mut unknown = 0;
        for (room_id, room) in &rooms.join {
            let Some(timeline) = &room.timeline else {
                continue;
            };
            if timeline.limited {
                self.limited.fetch_add(1, Ordering::Relaxed);
            }
            let room_index = self.world.room_index.get(room_id).copied();
            for event in &timeline.events {
                let op = if let Some(tag) = &event.content.bench {
                    if tag.run != self.shared.run_id {
                        continue;
                    }
                    usize::try_from(tag.id).ok()
                } else if event.kind == "m.room.member"
                    && event.content.membership.as_deref() == Some("join")
                {
                    match event
                        .state_key
                        .as_ref()
                        .and_then(|key| self.world.join_operations.get(key))
                    {
                        Some(&op) => Some(op),
                        None => continue,
                    }
                } else {
                    continue;
                };
                match (room_index, op) {
                    (Some(room), Some(op)) => seen.push((room, op)),
                    _ => unknown += 1,
                }
            }
        }
        if seen.is_empty() && unknown == 0 {
            return;
        }
        if let Ok(mut tracker) = self.shared.tracker.lock() {
            for (room, op) in seen {
                tracker.observe(self.user, room, op, now);
            }
            for _ in 0..unknown {
                tracker.observe_unknown();
            }
        }
    }
}

/// How long a `chat-ephemeral` sender says it types before each message.
const TYPING_TIMEOUT: Duration = Duration::from_secs(5);

/// The event type `chat-todevice` sends to devices.
const ROOM_KEY_TYPE: &str = "lattice.bench.room_key";

/// `chat-todevice`: after `sender`'s message `op` to `room`, a to-device
/// message to every device of every other member of the room, as a client
/// shares a room key; its delivery counts from when it left.
async fn send_room_key(
    shared: &Shared,
    world: &World,
    client: &MatrixClient,
    op: usize,
    sender: UserIndex,
    room: RoomIndex,
) -> Result<(), ClientError> {
    let session = &world.sessions[sender as usize];
    let recipients: Vec<UserIndex> = shared.plan.rooms[room as usize]
        .iter()
        .copied()
        .filter(|&member| member != sender)
        .collect();
    let content = json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "lattice.bench": { "run": shared.run_id, "id": op },
    });
    let messages: serde_json::Map<String, serde_json::Value> = recipients
        .iter()
        .map(|&member| {
            (
                world.sessions[member as usize].user_id.clone(),
                json!({ "*": content }),
            )
        })
        .collect();
    let messages = serde_json::Value::Object(messages);
    let txn_id = format!("{}-{op}-key", shared.run_id);
    if let Ok(mut tracker) = shared.to_device.lock() {
        tracker.begin(op, Instant::now(), recipients);
    }
    let sent = shared
        .retrying("sendToDevice", || {
            client.send_to_device(session, ROOM_KEY_TYPE, &txn_id, &messages)
        })
        .await;
    if sent.is_err() {
        if let Ok(mut tracker) = shared.to_device.lock() {
            tracker.failed(op);
        }
    }
    sent
}

/// Performs operation `op`: latencies count from `start`.
async fn perform(shared: &Shared, world: &World, client: &MatrixClient, op: usize, start: Instant) {
    if let Ok(mut tracker) = shared.tracker.lock() {
        tracker.begin(op, start);
    }
    let result = match shared.plan.operations[op] {
        Operation::Message { sender, room } => {
            let session = &world.sessions[sender as usize];
            let room_id = &world.room_ids[room as usize];
            let txn_id = message_txn_id(&shared.run_id, op);
            let content = json!({
                "msgtype": "m.text",
                "body": format!("bench message {op}"),
                "lattice.bench": { "run": shared.run_id, "id": op },
            });
            let ephemeral = shared.options.workload == Workload::ChatEphemeral;
            let typed = if ephemeral {
                shared
                    .retrying("typing", || {
                        client.send_typing(session, room_id, TYPING_TIMEOUT)
                    })
                    .await
            } else {
                Ok(())
            };
            let sent = match typed {
                Ok(()) => {
                    shared
                        .retrying("send", || {
                            client.send_message(session, room_id, &txn_id, &content)
                        })
                        .await
                }
                Err(error) => Err(error),
            };
            let sent = match sent {
                Ok(event_id) if shared.options.workload == Workload::ChatToDevice => {
                    send_room_key(shared, world, client, op, sender, room)
                        .await
                        .map(|()| event_id)
                }
                sent => sent,
            };
            match sent {
                Ok(event_id) if ephemeral => {
                    shared
                        .retrying("receipt", || {
                            client.send_read_receipt(session, room_id, &event_id)
                        })
                        .await
                }
                sent => sent.map(drop),
            }
        }
        Operation::Join { user, room } => {
            let session = &world.sessions[user as usize];
            let room_id = &world.room_ids[room as usize];
            shared
                .retrying("join", || client.join(session, room_id, true))
                .await
        }
    };
    let end = Instant::now();
    if let Ok(mut tracker) = shared.tracker.lock() {
        tracker.finish(op, result.is_ok(), end);
    }
    shared.progress.step();
}

/// `concurrency` workers, each taking the next operation when its last one
/// was answered.
async fn run_closed_loop(
    shared: &Arc<Shared>,
    world: &Arc<World>,
    pool: &ClientPool,
    concurrency: usize,
) -> Result<(), BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let shared = shared.clone();
            let world = world.clone();
            let next = next.clone();
            pool.run(worker, move |client| async move {
                loop {
                    let op = next.fetch_add(1, Ordering::Relaxed);
                    if op >= shared.plan.operations.len() {
                        break;
                    }
                    perform(&shared, &world, &client, op, Instant::now()).await;
                }
            })
        })
        .collect();
    for worker in futures::future::join_all(workers).await {
        worker?;
    }
    Ok(())
}

/// Starts operation `i` at `i / rate` seconds, whether or not earlier ones
/// were answered; latencies count from when each was due.
async fn run_open_loop(
    shared: &Arc<Shared>,
    world: &Arc<World>,
    pool: &ClientPool,
    rate: f64,
) -> Result<(), BenchError> {
    let start = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for op in 0..shared.plan.operations.len() {
        let due = start + Duration::from_secs_f64(op as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let shared = shared.clone();
        let world = world.clone();
        in_flight.push(pool.run(op, move |client| async move {
            perform(&shared, &world, &client, op, due).await;
        }));
        // Collect what has finished so the set stays small.
        while let Some(Some(done)) = futures::FutureExt::now_or_never(in_flight.next()) {
            done?;
        }
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok(())
}

/// The transaction id of operation `op`'s message (the `txn_id` its event
/// is stored with).
fn message_txn_id(run_id: &str, op: usize) -> String {
    format!("{run_id}-{op}")
}

/// Waits until every accepted operation reached every recipient, or until
/// nothing new arrived for the drain timeout.
async fn wait_for_deliveries(shared: &Shared) {
    let mut last_delivered = 0;
    let mut last_progress = Instant::now();
    loop {
        let (settled, delivered) = match shared.tracker.lock() {
            Ok(tracker) => (tracker.settled(), tracker.counts().delivered),
            Err(_) => return,
        };
        let (settled, delivered) = match shared.to_device.lock() {
            Ok(to_device) => (
                settled && to_device.settled(),
                delivered + to_device.delivered(),
            ),
            Err(_) => return,
        };
        if settled {
            return;
        }
        if delivered != last_delivered {
            last_delivered = delivered;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > shared.options.drain_timeout {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests;
