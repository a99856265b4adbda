//! The Redis transport against a real Redis: the shared behavioural suite
//! (`suite/`), plus what only Redis has (key prefixes, crashes that skip all
//! clean-up, server restarts, ACL users, TLS).
//!
//! The shared server comes from `LATTICE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:$LATTICE_REDIS_PORT`, port 6390 unless set, as
//! `.ci/redis.sh start` runs it); each test uses its
//! own key prefix and deletes its keys when it passes. If that variable is
//! unset and the default server does not answer, each test starts a private
//! `redis-server` instead. Tests that stop the server, or need ACL users or
//! TLS, always run their own `redis-server` on a free port.

#[macro_use]
mod suite;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_actors::{
    serve, Envelope, HmacKey, Mailbox, MailboxError, RedisTransport, RedisTransportConfig,
    RedisTransportError, Transport,
};
use serde_json::json;
use suite::{counting, wait_for_backlog, Harness, Node, Ping, SECOND};
use tokio::time::Instant;

/// Whether a Redis at `url` answers PING within a second.
async fn answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Some(_))
    )
}

/// A `redis-server` child process on a free port, killed on drop.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Start one; `args(port)` gives its listening options. `None` when
    /// `redis-server` is not installed.
    async fn start(args: impl FnOnce(u16) -> Vec<String>) -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "lattice-redis-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Self {
            port,
            args: args(port),
            dir,
            child: None,
        };
        server.resume().await;
        Some(server)
    }

    /// (Re)start the process and wait until it accepts connections.
    async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kill the process (SIGKILL: like a crash, nothing is saved).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn plain_args(port: u16) -> Vec<String> {
        vec!["--port".into(), port.to_string()]
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Test transports sharing one Redis and one fresh key prefix.
struct RedisHarness {
    url: String,
    prefix: String,
    tls_ca: Option<Vec<u8>>,
    admin: RedisTransport,
    _server: Option<PrivateRedis>,
}

impl RedisHarness {
    async fn new() -> Self {
        let configured = std::env::var("LATTICE_TEST_REDIS_URL").ok();
        let url = configured.clone().unwrap_or_else(|| {
            let port = std::env::var("LATTICE_REDIS_PORT").unwrap_or_else(|_| "6390".into());
            format!("redis://127.0.0.1:{port}")
        });
        let (url, server) = if answers(&url).await {
            (url, None)
        } else if configured.is_some() {
            panic!("LATTICE_TEST_REDIS_URL={url} does not answer");
        } else {
            let Some(server) = PrivateRedis::start(PrivateRedis::plain_args).await else {
                panic!("no Redis at {url} and no redis-server to start: run `.ci/redis.sh start`");
            };
            (format!("redis://127.0.0.1:{}", server.port), Some(server))
        };
        Self::on(url, server).await
    }

    async fn on(url: String, server: Option<PrivateRedis>) -> Self {
        Self::with_tls(url, server, None).await
    }

    async fn with_tls(url: String, server: Option<PrivateRedis>, tls_ca: Option<Vec<u8>>) -> Self {
        let prefix = format!("lattice-test-{}", uuid::Uuid::new_v4().simple());
        let mut admin = RedisTransportConfig::new(&url, &prefix, "admin");
        if let Some(ca) = &tls_ca {
            admin = admin.tls_root_certificates(ca.clone());
        }
        let admin = RedisTransport::connect(admin)
            .await
            .expect("admin transport connects");
        Self {
            url,
            prefix,
            tls_ca,
            admin,
            _server: server,
        }
    }

    /// Test timings: short blocking reads and backoff.
    fn config(&self, instance: &str) -> RedisTransportConfig {
        let config = RedisTransportConfig::new(&self.url, &self.prefix, instance)
            .block(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(200))
            .command_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500));
        match &self.tls_ca {
            Some(ca) => config.tls_root_certificates(ca.clone()),
            None => config,
        }
    }

    async fn connect(&self, config: RedisTransportConfig) -> RedisTransport {
        RedisTransport::connect(config).await.expect("connects")
    }
}

fn node(transport: RedisTransport) -> Node {
    let stats = transport.clone();
    Node::new(Arc::new(transport), move || stats.stats())
}

impl Harness for RedisHarness {
    async fn node(&self, instance: &str, key: Option<HmacKey>) -> Node {
        node(
            self.connect(self.config(instance).maybe_hmac_key(key))
                .await,
        )
    }

    async fn backlog(&self, destination: &str) -> (u64, u64) {
        let backlog = self.admin.backlog(destination).await.expect("backlog");
        (backlog.pending, backlog.queued)
    }

    async fn finish(self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut conn)
                .await;
        }
    }
}

transport_suite!(RedisHarness::new().await);

#[tokio::test]
async fn transports_with_different_prefixes_do_not_see_each_other() {
    let one = RedisHarness::new().await;
    let two = RedisHarness::on(one.url.clone(), None).await;
    let (count_one, count_two) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));

    // Same instance names and destination, different prefixes.
    let server_one = one.connect(one.config("main")).await;
    let server_two = two.connect(two.config("main")).await;
    let serving_one = serve(
        Arc::new(server_one.clone()),
        "echo@main",
        counting(&count_one),
    )
    .await
    .expect("serves");
    let c2 = Arc::clone(&count_two);
    let serving_two = serve(Arc::new(server_two.clone()), "echo@main", move |Ping(n)| {
        c2.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(Ok::<u32, String>(n + 1000))
    })
    .await
    .expect("serves");

    let to_one = Mailbox::<Ping>::remote(
        Arc::new(one.connect(one.config("client")).await),
        "echo@main",
    );
    let to_two = Mailbox::<Ping>::remote(
        Arc::new(two.connect(two.config("client")).await),
        "echo@main",
    );
    for i in 0..3 {
        to_one.tell(Ping(i)).expect("posted");
    }
    assert_eq!(to_one.call(Ping(1), SECOND).await, Ok(2));
    assert_eq!(to_two.call(Ping(1), SECOND).await, Ok(1001));
    assert_eq!(to_one.call(Ping(2), SECOND).await, Ok(3));

    assert_eq!(count_one.load(Ordering::SeqCst), 5);
    assert_eq!(count_two.load(Ordering::SeqCst), 1);
    assert_eq!(server_one.stats().delivered, 5);
    assert_eq!(server_two.stats().delivered, 1);
    let observed = server_one.observe();
    assert_eq!(observed["delivered"], json!(5));
    assert_eq!(observed["completed"], json!(5));
    assert_eq!(observed["redis_errors"], json!(0));
    assert!(server_one.stream_key("echo@main").starts_with(&one.prefix));

    let _ = serving_one.shutdown().await;
    let _ = serving_two.shutdown().await;

    // A transport that was shut down refuses work.
    server_two.shutdown().await;
    let closed = Mailbox::<Ping>::remote(Arc::new(server_two.clone()), "echo@main");
    assert_eq!(
        closed.call(Ping(1), SECOND).await,
        Err(MailboxError::Closed)
    );
    assert_eq!(closed.tell(Ping(1)), Err(MailboxError::Closed));
    assert!(server_two.subscribe("echo@main").await.is_err());
    one.finish().await;
    two.finish().await;
}

/// Run a fresh transport on its own runtime, take one delivery of
/// `destination`, then kill that runtime: every task is dropped where it
/// stands, nothing is released or acknowledged, like a process crash.
/// Returns the delivery's attempt number.
async fn crash_after_first_delivery(config: RedisTransportConfig, destination: &str) -> u32 {
    let destination = destination.to_owned();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let kept = runtime.block_on(async {
            let transport = RedisTransport::connect(config).await.expect("connects");
            let mut sub = transport.subscribe(&destination).await.expect("subscribes");
            let delivery = tokio::time::timeout(Duration::from_secs(3), sub.next())
                .await
                .expect("delivered in time")
                .expect("delivered");
            (transport, sub, delivery)
        });
        drop(runtime);
        kept.2.attempt()
    })
    .await
    .expect("crashing thread")
}

#[tokio::test]
async fn a_crashed_owners_messages_come_back() {
    let h = RedisHarness::new().await;
    let long_idle = |instance: &str| h.config(instance).claim_idle(Duration::from_secs(30));
    let caller = h.connect(h.config("caller")).await;
    caller
        .post(
            "crashy",
            Envelope::request("test.ping.v1", "caller", None, json!(7)),
        )
        .expect("posted");

    // The owner crashes while handling it: the entry stays pending.
    assert_eq!(
        crash_after_first_delivery(long_idle("owner1"), "crashy").await,
        1
    );
    assert_eq!(h.backlog("crashy").await, (1, 0));

    // The same instance comes back: it takes over what its earlier life
    // held at once, without waiting for claim_idle (30 s here)... and
    // crashes again.
    let started = Instant::now();
    assert_eq!(
        crash_after_first_delivery(long_idle("owner1"), "crashy").await,
        2
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(h.backlog("crashy").await, (1, 0));

    // Another instance takes over once the entry has been idle claim_idle.
    let owner2 = h
        .connect(h.config("owner2").claim_idle(Duration::from_millis(400)))
        .await;
    let mut sub = owner2.subscribe("crashy").await.expect("subscribes");
    let delivery = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("requeued in time")
        .expect("delivered");
    assert_eq!(delivery.attempt(), 3);
    assert_eq!(delivery.envelope().body, json!(7));
    delivery.complete(None).await.expect("acknowledged");
    assert_eq!(h.backlog("crashy").await, (0, 0));
    let stats = owner2.redis_stats();
    assert_eq!((stats.common.redelivered, stats.requeued), (1, 1));
    drop(sub);
    h.finish().await;
}

#[tokio::test]
async fn a_slow_live_owner_keeps_its_message() {
    let h = RedisHarness::new().await;
    let short = |instance: &str| h.config(instance).claim_idle(Duration::from_millis(300));
    let caller = Mailbox::<Ping>::remote(Arc::new(h.connect(h.config("caller")).await), "slow");

    // Two owners; whichever gets the request takes 3 × claim_idle over it.
    let calls = Arc::new(AtomicU64::new(0));
    let mut owners = Vec::new();
    for instance in ["owner1", "owner2"] {
        let calls = Arc::clone(&calls);
        let transport = h.connect(short(instance)).await;
        owners.push(
            serve(Arc::new(transport), "slow", move |Ping(n)| {
                let calls = Arc::clone(&calls);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    Ok::<u32, String>(n + 1)
                }
            })
            .await
            .expect("serves"),
        );
    }
    assert_eq!(caller.call(Ping(1), Duration::from_secs(3)).await, Ok(2));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "kept alive, not requeued");
    for owner in owners {
        assert_eq!(owner.shutdown().await.redelivered, 0);
    }
    h.finish().await;
}

#[tokio::test]
async fn acl_user_and_a_redis_restart() {
    let Some(mut server) = PrivateRedis::start(|port| {
        let mut args = PrivateRedis::plain_args(port);
        // The least-privilege user the module documentation recommends.
        args.extend(
            [
                "--user",
                "default",
                "off",
                "--user",
                "lattice",
                "on",
                ">pw",
                "~lattice-test-*",
                "+@stream",
                "+@list",
                "+@scripting",
                "+@connection",
                "+pexpire",
            ]
            .map(String::from),
        );
        args
    })
    .await
    else {
        eprintln!("redis-server not installed; skipping");
        return;
    };
    let port = server.port;
    let h = RedisHarness::on(format!("redis://lattice:pw@127.0.0.1:{port}"), None).await;

    // Wrong or missing credentials are refused at connect.
    for url in [
        format!("redis://lattice:wrong@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let config = RedisTransportConfig::new(url, "p", "x")
            .connect_timeout(Duration::from_millis(300))
            .max_backoff(Duration::from_millis(100));
        match RedisTransport::connect(config).await {
            Err(RedisTransportError::Connect(text)) => assert!(!text.contains("wrong"), "{text}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let server_node = h.connect(h.config("b")).await;
    let serving = serve(Arc::new(server_node.clone()), "svc@b", move |Ping(n)| {
        record.lock().expect("test mutex").push(n);
        futures::future::ready(Ok::<u32, String>(n + 1))
    })
    .await
    .expect("serves");
    let caller = h.connect(h.config("a")).await;
    let mailbox = Mailbox::<Ping>::remote(Arc::new(caller.clone()), "svc@b");
    assert_eq!(mailbox.call(Ping(1), SECOND).await, Ok(2));
    // Everything the transports do is allowed to the restricted user.
    assert_eq!(server_node.redis_stats().redis_errors, 0);
    assert_eq!(caller.redis_stats().redis_errors, 0);

    // Redis goes away: calls fail within their deadline, tells are kept.
    server.stop();
    let started = Instant::now();
    let outcome = mailbox.call(Ping(2), Duration::from_millis(300)).await;
    assert!(
        matches!(
            outcome,
            Err(MailboxError::Timeout | MailboxError::Unreachable)
        ),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    mailbox.tell(Ping(3)).expect("queued while Redis is down");

    // Redis is back (empty: it saved nothing): the subscription recreates
    // its group, the told message is written, calls work again.
    server.resume().await;
    assert_eq!(mailbox.call(Ping(4), Duration::from_secs(5)).await, Ok(5));
    let seen = seen.lock().expect("test mutex").clone();
    assert_eq!(seen.first(), Some(&1));
    assert_eq!(seen.last(), Some(&4));
    assert!(seen.contains(&3), "{seen:?}");
    assert!(caller.redis_stats().redis_errors > 0);
    let _ = serving.shutdown().await;
    caller.shutdown().await;
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
/// `None` if openssl is not installed.
fn make_certificates(dir: &Path) -> Option<()> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .ok()?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ok = run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=lattice test CA",
        ],
    ]
    .concat())
        && run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat())
        && run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ]);
    ok.then_some(())
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!("lattice-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    if make_certificates(&dir).is_none() {
        eprintln!("openssl not available; skipping");
        return;
    }
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let Some(_server_guard) = PrivateRedis::start(|port| {
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    })
    .await
    else {
        eprintln!("redis-server not installed; skipping");
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", _server_guard.port);
    let ca = std::fs::read(dir.join("ca.crt")).expect("CA certificate");

    // The webpki roots do not know our CA.
    let untrusted = RedisTransportConfig::new(&url, "p", "x")
        .connect_timeout(Duration::from_millis(300))
        .max_backoff(Duration::from_millis(100));
    assert!(matches!(
        RedisTransport::connect(untrusted).await,
        Err(RedisTransportError::Connect(_))
    ));

    let h = RedisHarness::with_tls(url.clone(), None, Some(ca)).await;
    let tls = |instance: &str| h.config(instance);
    let counter = Arc::new(AtomicU64::new(0));
    let serving = serve(
        Arc::new(h.connect(tls("b")).await),
        "tls@b",
        counting(&counter),
    )
    .await
    .expect("serves");
    let mailbox = Mailbox::<Ping>::remote(Arc::new(h.connect(tls("a")).await), "tls@b");
    assert_eq!(mailbox.call(Ping(1), SECOND).await, Ok(2));
    let _ = serving.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shared secret of the replay tests.
fn replay_key() -> HmacKey {
    HmacKey::new("a shared secret of at least thirty-two bytes").expect("key")
}

/// The fields of the entries of `stream`, oldest first (what anyone who
/// can read the mailbox's stream sees).
async fn entries(h: &RedisHarness, stream: &str) -> Vec<Vec<(String, String)>> {
    let client = redis::Client::open(h.url.as_str()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let mut fields: Vec<(String, String)> = entry
                .map
                .iter()
                .filter_map(|(field, value)| {
                    redis::from_redis_value_ref::<String>(value)
                        .ok()
                        .map(|value| (field.clone(), value))
                })
                .collect();
            fields.sort();
            fields
        })
        .collect()
}

/// `XADD stream * field value…`, as anyone who can write to Redis can.
async fn xadd(h: &RedisHarness, stream: &str, fields: &[(String, String)]) {
    let client = redis::Client::open(h.url.as_str()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (field, value) in fields {
        cmd.arg(field).arg(value);
    }
    let _: String = cmd.query_async(&mut conn).await.expect("XADD");
}

/// Wait (at most 3 s) until `condition` holds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A call to `destination` from `caller`, started before anyone serves it,
/// and the stream entry that carries it.
async fn call_waiting_in_the_stream(
    h: &RedisHarness,
    caller: &RedisTransport,
    destination: &str,
) -> (
    tokio::task::JoinHandle<Result<u32, MailboxError>>,
    Vec<(String, String)>,
) {
    let mailbox = Mailbox::<Ping>::remote(Arc::new(caller.clone()), destination);
    let call = tokio::spawn(async move { mailbox.call(Ping(1), Duration::from_secs(10)).await });
    let stream = caller.stream_key(destination);
    let deadline = Instant::now() + Duration::from_secs(3);
    let entry = loop {
        if let Some(entry) = entries(h, &stream).await.pop() {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "the call never reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (call, entry)
}

#[tokio::test]
async fn a_replayed_request_is_dropped_and_counted_and_not_handled_again() {
    let h = RedisHarness::new().await;
    let caller = h.connect(h.config("caller").hmac_key(replay_key())).await;
    let owner = h.connect(h.config("owner").hmac_key(replay_key())).await;
    let (call, captured) = call_waiting_in_the_stream(&h, &caller, "replayed").await;
    assert!(
        captured.iter().any(|(field, _)| field == "env"),
        "{captured:?}"
    );

    let handled = Arc::new(AtomicU64::new(0));
    let serving = serve(Arc::new(owner.clone()), "replayed", counting(&handled))
        .await
        .expect("serves");
    assert_eq!(call.await.expect("call task"), Ok(2));

    // The signed entry, appended again (reply list included): it verifies,
    // but it is a copy.
    xadd(&h, &owner.stream_key("replayed"), &captured).await;
    eventually("the copy is dropped", || owner.redis_stats().replayed == 1).await;
    wait_for_backlog(&h, "replayed", (0, 0)).await;
    assert_eq!(owner.redis_stats().common.hmac_rejected, 0);

    // Appended to another destination (of the same process, which has
    // not seen it there): it was signed for its own stream only.
    let elsewhere = serve(Arc::new(owner.clone()), "elsewhere", counting(&handled))
        .await
        .expect("serves");
    xadd(&h, &owner.stream_key("elsewhere"), &captured).await;
    eventually("the moved copy is dropped", || {
        owner.redis_stats().common.hmac_rejected == 1
    })
    .await;
    wait_for_backlog(&h, "elsewhere", (0, 0)).await;

    assert_eq!(handled.load(Ordering::SeqCst), 1, "handled once");
    let stats = serving.shutdown().await;
    assert_eq!((stats.handled, stats.redelivered), (1, 0));
    assert_eq!(elsewhere.shutdown().await.handled, 0);
    assert_eq!(caller.redis_stats().late_replies, 0, "no second reply");
    h.finish().await;
}

#[tokio::test]
async fn a_request_without_a_near_deadline_is_refused_as_unreplayable() {
    let h = RedisHarness::new().await;
    let owner = h.connect(h.config("owner").hmac_key(replay_key())).await;
    let handled = Arc::new(AtomicU64::new(0));
    let serving = serve(Arc::new(owner.clone()), "far", counting(&handled))
        .await
        .expect("serves");
    // Correctly signed, but it could be replayed for ever, or for a day.
    for deadline in [
        None,
        Some(lattice_actors::envelope::deadline_after(
            Duration::from_secs(86_400),
        )),
    ] {
        let mut envelope = Envelope::request("test.ping.v1", "caller", deadline, json!(1));
        replay_key().sign_for(&owner.stream_key("far"), &mut envelope);
        let text = serde_json::to_string(&envelope).expect("json");
        xadd(&h, &owner.stream_key("far"), &[("env".into(), text)]).await;
    }
    eventually("both are refused", || owner.redis_stats().replayed == 2).await;
    wait_for_backlog(&h, "far", (0, 0)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0);

    // A posted message gets a deadline within the window, so it is handled.
    let poster = h.connect(h.config("poster").hmac_key(replay_key())).await;
    poster
        .post(
            "far",
            Envelope::request("test.ping.v1", "poster", None, json!(1)),
        )
        .expect("posted");
    eventually("the post is handled", || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(owner.redis_stats().replayed, 2);
    drop(serving);
    h.finish().await;
}

#[tokio::test]
async fn a_request_given_back_unacknowledged_is_handled_again_by_the_same_process() {
    let h = RedisHarness::new().await;
    let caller = h.connect(h.config("caller").hmac_key(replay_key())).await;
    let owner = h.connect(h.config("owner").hmac_key(replay_key())).await;
    let mailbox = Mailbox::<Ping>::remote(Arc::new(caller.clone()), "given-back");
    let call = tokio::spawn(async move { mailbox.call(Ping(1), Duration::from_secs(10)).await });

    // The first endpoint takes the request and never finishes it...
    let started = Arc::new(AtomicU64::new(0));
    let stuck = {
        let started = Arc::clone(&started);
        serve(Arc::new(owner.clone()), "given-back", move |Ping(_)| {
            started.fetch_add(1, Ordering::SeqCst);
            futures::future::pending::<Result<u32, String>>()
        })
        .await
        .expect("serves")
    };
    eventually("the request is taken", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    // ...and is aborted: the entry goes back to the stream, and the next
    // owner, in the same process, handles it: a redelivery, not a replay.
    stuck.abort().await;
    let handled = Arc::new(AtomicU64::new(0));
    let serving = serve(Arc::new(owner.clone()), "given-back", counting(&handled))
        .await
        .expect("serves");
    assert_eq!(call.await.expect("call task"), Ok(2));
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    assert_eq!(serving.shutdown().await.redelivered, 1);
    assert_eq!(owner.redis_stats().replayed, 0);
    h.finish().await;
}

#[tokio::test]
async fn a_request_pushed_onto_a_reply_list_is_not_taken_for_the_reply() {
    let h = RedisHarness::new().await;
    let caller = h.connect(h.config("caller").hmac_key(replay_key())).await;
    let owner = h.connect(h.config("owner").hmac_key(replay_key())).await;
    let (call, captured) = call_waiting_in_the_stream(&h, &caller, "confused").await;
    let request = captured
        .iter()
        .find(|(field, _)| field == "env")
        .map(|(_, value)| value.clone())
        .expect("an envelope");
    // The signed request has the id the caller waits for. Pushed onto the
    // caller's reply list it does not verify there (signed for the stream)...
    let client = redis::Client::open(h.url.as_str()).expect("url");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let push = |text: String| {
        let mut rpush = redis::cmd("RPUSH");
        rpush.arg(caller.reply_key()).arg(text);
        let mut conn = conn.clone();
        async move {
            let _: i64 = rpush.query_async(&mut conn).await.expect("RPUSH");
        }
    };
    push(request.clone()).await;
    eventually("the false reply is dropped", || {
        caller.redis_stats().common.reply_hmac_rejected == 1
    })
    .await;
    // ...and even signed for the list (by a holder of the secret), it is a
    // request, not the reply the caller waits for.
    let mut resigned: Envelope = serde_json::from_str(&request).expect("an envelope");
    replay_key().sign_for(caller.reply_key(), &mut resigned);
    push(serde_json::to_string(&resigned).expect("json")).await;
    eventually("the request is not taken for the reply", || {
        caller.redis_stats().late_replies == 1
    })
    .await;
    drop(conn);

    let handled = Arc::new(AtomicU64::new(0));
    let _serving = serve(Arc::new(owner), "confused", counting(&handled))
        .await
        .expect("serves");
    assert_eq!(call.await.expect("call task"), Ok(2));
    h.finish().await;
}
