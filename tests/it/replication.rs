//! Split deployments under failure: these tests run on the 3-node split
//! (client+sync `main`, events writer `events1`, sync `sync2`), whatever
//! `LATTICE_TEST_TOPOLOGY` says, but for the stall test, which runs on
//! both (on the monolith there is no replication to lose).

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::cluster::{enc, Options, TestCluster};

fn split(write_timeout_ms: Option<u64>) -> Options {
    Options {
        topology: Some("split".into()),
        write_timeout_ms,
        ..Options::default()
    }
}

fn bodies(sync: &Value, room_id: &str) -> Vec<String> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn a_killed_writer_restarted_loses_no_acknowledged_event_and_wakes_long_polls() {
    let mut cluster = TestCluster::start_with(split(None)).await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let before = alice.send_text(&room, "before the crash").await;
    let since = bob.sync("timeout=0").await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    cluster.kill("events1");
    // A long-poll on sync2 and a send on main, both while the writer is down.
    let poller = bob.clone();
    let poll_since = since.clone();
    let long_poll = tokio::task::spawn_local(async move {
        poller
            .sync(&format!("since={}&timeout=20000", enc(&poll_since)))
            .await
    });
    let sender = alice.clone();
    let room_for_send = room.clone();
    let send = tokio::task::spawn_local(async move {
        sender
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/during",
                    enc(&room_for_send)
                ),
                json!({ "msgtype": "m.text", "body": "during the crash" }),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart("events1").await;

    // The send waiting in the writer's mailbox is handled by the restarted writer.
    let (status, body) = send.await.expect("send task");
    assert_eq!(status, StatusCode::OK, "{body}");
    let woken = long_poll.await.expect("long-poll task");
    let mut seen = bodies(&woken, &room);
    if !seen.contains(&"during the crash".to_owned()) {
        // The long-poll may have woken for the catch-up first: one more sync.
        let next = woken["next_batch"].as_str().unwrap_or_default().to_owned();
        seen.extend(bodies(
            &bob.sync(&format!("since={}&timeout=10000", enc(&next)))
                .await,
            &room,
        ));
    }
    assert!(seen.contains(&"during the crash".to_owned()), "{seen:?}");

    // Nothing acknowledged before the crash is lost, and nothing is doubled.
    let page = alice.messages(&room, "dir=b&limit=50").await;
    let texts: Vec<&str> = page["chunk"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["body"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(texts, vec!["during the crash", "before the crash"]);
    assert!(page["chunk"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["event_id"] == before.as_str())));
}

#[actix_web::test]
async fn a_request_whose_writer_is_unreachable_fails_within_its_deadline() {
    let mut cluster = TestCluster::start_with(split(Some(1500))).await;
    let alice = cluster.client().register("alice").await;
    let room = alice.create_room(json!({})).await;
    cluster.kill("events1");
    let started = Instant::now();
    let (status, body) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room)
            ),
            json!({ "msgtype": "m.text", "body": "lost?" }),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["errcode"], "M_UNAVAILABLE");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[actix_web::test]
async fn a_replication_message_with_a_wrong_hmac_is_rejected_and_counted() {
    let cluster = TestCluster::start_with(split(None)).await;
    let client = cluster.client();
    let admin = client.register("root").await;
    cluster.make_admin(&admin.user_id).await;
    let alice = client.register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "real").await;
    let before = alice.sync("timeout=0").await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // A forged POSITION claiming the writer reached a far future position,
    // signed with the wrong secret, and one not signed at all.
    let redis_url =
        std::env::var("LATTICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let redis = redis::Client::open(redis_url).expect("redis url");
    let mut connection = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let forged = lattice::streams::replication::Command::Position {
        stream: "events".into(),
        instance: "events1".into(),
        prev: 1,
        new: 1_000_000,
    };
    let wrong_key = lattice_actors::HmacKey::new("not the secret").expect("key");
    for line in [forged.to_line(Some(&wrong_key)), forged.to_line(None)] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(cluster.redis_prefix())
            .arg(line)
            .query_async(&mut connection)
            .await
            .expect("publish");
    }

    // Every node counts them, and none applied them.
    let mut rejected_everywhere = false;
    for _ in 0..50 {
        let mut counts = Vec::new();
        for node in cluster.node_clients() {
            let (status, body) = node
                .get("/_lattice/admin/v1/actors", Some(&admin.access_token))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            counts.push(body["replication"]["rejected"].as_u64().unwrap_or(0));
        }
        if counts.iter().all(|c| *c >= 2) {
            rejected_everywhere = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rejected_everywhere,
        "not every node counted the forged messages"
    );
    let after = alice
        .sync(&format!("since={}&timeout=0", enc(&before)))
        .await;
    let position = |token: &str| {
        token
            .split('_')
            .next()
            .and_then(|s| s.strip_prefix('s'))
            .and_then(|p| p.parse::<i64>().ok())
    };
    let next = after["next_batch"].as_str().unwrap_or_default();
    assert!(
        position(next) < Some(1_000_000),
        "the forged position was applied: {next}"
    );
}

/// A redis-server of this test's own, so that restarting it disturbs no other test.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start_on(port: u16) -> PrivateRedis {
        Self::start_with(port, &[])
    }

    /// With `extra` options (ACL users, TLS).
    fn start_with(port: u16, extra: &[&str]) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A split cluster on a Redis of the test's own (on a free port), so that
/// the test may stop and restart it.
async fn split_on_private_redis() -> (PrivateRedis, TestCluster) {
    let port = free_port();
    let redis = PrivateRedis::start_on(port);
    let options = Options {
        redis_url: Some(redis.url()),
        ..split(Some(20_000))
    };
    let cluster = TestCluster::start_with(options).await;
    (redis, cluster)
}

#[actix_web::test]
async fn after_a_redis_restart_every_node_reconnects_and_long_polls_wake() {
    let (mut redis, cluster) = split_on_private_redis().await;
    let port = redis.port;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    alice.send_text(&room, "before the restart").await;
    let since = bob.sync("timeout=0").await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    redis.kill();
    let poller = bob.clone();
    let long_poll = tokio::task::spawn_local(async move {
        poller
            .sync(&format!("since={}&timeout=25000", enc(&since)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _redis = PrivateRedis::start_on(port);

    // The send crosses the mailbox transport, which reconnects; the
    // long-poll on sync2 wakes through replication, which resubscribes.
    let mut sent = false;
    for attempt in 0..20 {
        let (status, _) = alice
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/after{attempt}",
                    enc(&room)
                ),
                json!({ "msgtype": "m.text", "body": "after the restart" }),
            )
            .await;
        if status == StatusCode::OK {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sent, "no send succeeded after redis came back");
    let woken = long_poll.await.expect("long-poll task");
    let mut seen = bodies(&woken, &room);
    if !seen.contains(&"after the restart".to_owned()) {
        let next = woken["next_batch"].as_str().unwrap_or_default().to_owned();
        seen.extend(bodies(
            &bob.sync(&format!("since={}&timeout=10000", enc(&next)))
                .await,
            &room,
        ));
    }
    assert!(seen.contains(&"after the restart".to_owned()), "{seen:?}");
}

/// Polls `/sync` (what sync2 serves) on `node` with `token` until it is
/// refused (at most 10 s); the answer it ended with.
async fn sync_until_refused(node: &crate::cluster::Client, token: &str) -> (StatusCode, Value) {
    let mut answer = (StatusCode::OK, Value::Null);
    for _ in 0..100 {
        answer = node
            .get("/_matrix/client/v3/sync?timeout=0", Some(token))
            .await;
        if answer.0 != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answer
}

#[actix_web::test]
async fn a_logout_while_redis_is_down_reaches_every_node_once_it_is_back() {
    let (mut redis, cluster) = split_on_private_redis().await;
    let port = redis.port;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let phone = client.login("alice").await;
    let sync2 = cluster.node_client("sync2");
    let (status, body) = sync2
        .get(
            "/_matrix/client/v3/sync?timeout=0",
            Some(&phone.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    redis.kill();
    let (status, body) = phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let _redis = PrivateRedis::start_on(port);

    let (status, body) = sync_until_refused(&sync2, &phone.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    // The other device's token is untouched.
    let (status, body) = sync2
        .get(
            "/_matrix/client/v3/sync?timeout=0",
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn an_invalidation_stored_by_a_node_that_died_before_publishing_it_reaches_the_others() {
    let mut cluster = TestCluster::start_with(split(None)).await;
    let client = cluster.client();
    let admin = client.register("root").await;
    cluster.make_admin(&admin.user_id).await;
    let alice = client.register("alice").await;
    let phone = client.login("alice").await;
    let sync2 = cluster.node_client("sync2");
    // The login published an invalidation of the phone's device too: let
    // sync2 apply it first, or it would forget the token cached below.
    let database = cluster.database().await;
    let written: i64 = database
        .query_one(
            "SELECT MAX(stream_id) FROM cache_invalidation_stream_by_instance",
            &[],
        )
        .await
        .expect("the newest invalidation")
        .get(0);
    let applied = r#"lattice_replication_position{stream="caches",writer="main"}"#;
    for _ in 0..100 {
        let text = crate::metrics::scrape(&sync2).await;
        if crate::metrics::sample(&text, applied).is_some_and(|p| p >= written as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = sync2
        .get(
            "/_matrix/client/v3/sync?timeout=0",
            Some(&phone.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // main logs the phone out and stores the invalidation, then dies before
    // publishing it: what `logout` does, up to the publish.
    cluster.kill("main");
    database
        .execute(
            "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
            &[&alice.user_id, &phone.device_id],
        )
        .await
        .expect("delete the token");
    database
        .execute(
            "INSERT INTO cache_invalidation_stream_by_instance
               (stream_id, instance_name, cache_func, keys, invalidation_ts)
             VALUES (nextval('cache_invalidation_stream_seq'), 'main', 'access_tokens', $1, 0)",
            &[&json!([alice.user_id, phone.device_id])],
        )
        .await
        .expect("store the invalidation");

    // Restarted, main announces its position; sync2 reads the row back
    // without having lost its Redis subscription.
    cluster.restart("main").await;
    let (status, body) = sync_until_refused(&sync2, &phone.access_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, body) = sync2
        .get("/_lattice/admin/v1/actors", Some(&admin.access_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replication"]["reconnects"], 0, "{body}");
    assert!(
        body["replication"]["caches_caught_up_rows"].as_u64() >= Some(1),
        "{body}"
    );
}

/// A connection to the Redis of the default split cluster.
async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let redis_url =
        std::env::var("LATTICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    redis::Client::open(redis_url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

/// The fields of the oldest entry of `stream`, once there is one (at most 10 s).
async fn first_entry(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<(String, String)> {
    for _ in 0..500 {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(redis)
            .await
            .expect("XRANGE");
        if let Some(entry) = reply.ids.into_iter().next() {
            return entry
                .map
                .iter()
                .filter_map(|(field, value)| {
                    redis::from_redis_value_ref::<String>(value)
                        .ok()
                        .map(|value| (field.clone(), value))
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing reached {stream}");
}

async fn xadd(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    fields: &[(String, String)],
) {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(stream).arg("*");
    for (field, value) in fields {
        xadd.arg(field).arg(value);
    }
    let _: String = xadd.query_async(redis).await.expect("XADD");
}

/// The value of `lattice_mailbox_rejected_total{reason}` on `node`, once it
/// reaches `at_least` (at most 10 s); what it was otherwise.
async fn mailbox_rejected(node: &crate::cluster::Client, reason: &str, at_least: f64) -> f64 {
    let series = format!("lattice_mailbox_rejected_total{{reason=\"{reason}\"}}");
    let mut value = 0.0;
    for _ in 0..200 {
        value = crate::metrics::sample(&crate::metrics::scrape(node).await, &series).unwrap_or(0.0);
        if value >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    value
}

/// The topics of `room`'s timeline, oldest first.
async fn topics(user: &crate::cluster::User, room: &str) -> Vec<String> {
    let page = user.messages(room, "dir=f&limit=100").await;
    page["chunk"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.topic")
                .filter_map(|e| e["content"]["topic"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn a_replayed_or_forged_mailbox_request_is_dropped_and_counted_and_writes_nothing() {
    let mut cluster = TestCluster::start_with(split(None)).await;
    let alice = cluster.client().register("alice").await;
    let room = alice.create_room(json!({})).await;
    let stream = format!("{}:mailbox:events@events1", cluster.redis_prefix());
    let mut redis = redis_connection().await;

    // The writer is down, so the request waits in its stream, where anyone
    // who can read Redis sees it.
    cluster.kill("events1");
    let sender = alice.clone();
    let room_for_put = room.clone();
    let put = tokio::task::spawn_local(async move {
        sender
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room_for_put)
                ),
                json!({ "topic": "set once" }),
            )
            .await
    });
    let captured = first_entry(&mut redis, &stream).await;
    cluster.restart("events1").await;
    let (status, body) = put.await.expect("put task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(topics(&alice, &room).await, vec!["set once"]);

    // The captured entry appended again: authentic, but a copy.
    xadd(&mut redis, &stream, &captured).await;
    let events1 = cluster.node_client("events1");
    assert_eq!(mailbox_rejected(&events1, "replay", 1.0).await, 1.0);

    // The same request changed (a forged topic, the signature kept), under
    // a fresh request id so that only its HMAC can give it away.
    let forged: Vec<(String, String)> = captured
        .iter()
        .map(|(field, value)| {
            if field != "env" {
                return (field.clone(), value.clone());
            }
            let mut envelope: Value = serde_json::from_str(value).expect("an envelope");
            envelope["body"]["content"]["topic"] = json!("forged");
            envelope["request_id"] = json!("0123456789abcdef0123456789abcdef");
            (field.clone(), envelope.to_string())
        })
        .collect();
    assert_ne!(forged, captured);
    xadd(&mut redis, &stream, &forged).await;
    assert_eq!(mailbox_rejected(&events1, "hmac", 1.0).await, 1.0);

    // Neither was written.
    assert_eq!(topics(&alice, &room).await, vec!["set once"]);
    let (status, body) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
            enc(&room)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["topic"], "set once");
}

/// Replication lines are not remembered like mailbox requests, because a
/// replayed one changes nothing: RDATA rows are applied only past the
/// position already processed for their writer, and positions only go
/// forward, so a captured RDATA or POSITION published again is skipped.
/// What the signature keeps out is a line nobody with the secret wrote.
#[actix_web::test]
async fn a_replayed_replication_line_changes_nothing() {
    let cluster = TestCluster::start_with(split(None)).await;
    let client = cluster.client();
    let admin = client.register("root").await;
    cluster.make_admin(&admin.user_id).await;
    let alice = client.register("alice").await;
    let room = alice.create_room(json!({})).await;

    // Listen on the replication channel, as anyone who can reach Redis can.
    let redis_url =
        std::env::var("LATTICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let mut pubsub = redis::Client::open(redis_url)
        .expect("redis url")
        .get_async_pubsub()
        .await
        .expect("redis");
    pubsub
        .subscribe(cluster.redis_prefix())
        .await
        .expect("subscribe");
    let mut lines = pubsub.into_on_message();
    alice.send_text(&room, "only once").await;
    let mut captured = Vec::new();
    while captured.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .expect("the send is replicated")
            .expect("subscribed");
        let line: String = message.get_payload().expect("text");
        if line.contains(" RDATA events ") || line.contains(" POSITION events events1 ") {
            captured.push(line);
        }
    }
    drop(lines);
    let seen = |sync: &Value| bodies(sync, &room);
    assert_eq!(seen(&alice.sync("timeout=0").await), vec!["only once"]);

    let sync2 = cluster.node_client("sync2");
    let replication = |node: crate::cluster::Client| {
        let token = admin.access_token.clone();
        async move {
            let (status, body) = node.get("/_lattice/admin/v1/actors", Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["replication"].clone()
        }
    };
    let before = replication(sync2.clone()).await;

    // The captured lines again, then one that does not verify: once sync2
    // has counted that one, it has read the replayed ones before it.
    let mut redis = redis_connection().await;
    let wrong_key =
        lattice_actors::HmacKey::new("not the secret of this deployment!!").expect("key");
    let forged = lattice::streams::replication::Command::Position {
        stream: "events".into(),
        instance: "events1".into(),
        prev: 1,
        new: 1_000_000,
    }
    .to_line(Some(&wrong_key));
    for line in captured.iter().chain([&forged]) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(cluster.redis_prefix())
            .arg(line)
            .query_async(&mut redis)
            .await
            .expect("publish");
    }
    let mut after = before.clone();
    for _ in 0..200 {
        after = replication(sync2.clone()).await;
        if after["rejected"].as_u64() > before["rejected"].as_u64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        after["rejected"].as_u64(),
        before["rejected"].as_u64().map(|r| r + 1),
        "{after}"
    );
    assert_eq!(after["applied"], before["applied"], "{after}");
    assert_eq!(seen(&alice.sync("timeout=0").await), vec!["only once"]);
}

/// What `lattice serve` prints and whether it succeeded, for a config file
/// made of the generated sample with `replace` applied to it.
fn serve_with(replace: impl Fn(String) -> String, args: &[&str]) -> (bool, String) {
    let binary = env!("CARGO_BIN_EXE_lattice");
    let generated = std::process::Command::new(binary)
        .args(["generate-config", "--server-name", "example.org"])
        .output()
        .expect("lattice generate-config");
    assert!(generated.status.success());
    let sample = String::from_utf8(generated.stdout).expect("utf-8");
    let path = std::env::temp_dir().join(format!(
        "lattice-replsec-{}-{}.yaml",
        std::process::id(),
        lattice::config::generate_replication_secret()
    ));
    std::fs::write(&path, replace(sample)).expect("write config");
    let output = std::process::Command::new(binary)
        .args(["serve", "--config"])
        .arg(&path)
        .args(args)
        .env("LATTICE__LISTEN", "127.0.0.1:0")
        .env("LATTICE__REDIS__URL", "redis://127.0.0.1:1")
        .output()
        .expect("lattice serve");
    let _ = std::fs::remove_file(&path);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

fn without_secret(sample: String) -> String {
    sample
        .lines()
        .filter(|line| !line.starts_with("replication_secret:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_split_instance_without_a_long_enough_replication_secret_refuses_to_start() {
    let split = ["--instance", "events1", "--roles", "events"];
    let (ok, stderr) = serve_with(without_secret, &split);
    assert!(!ok);
    assert_eq!(
        stderr,
        "lattice: config: key `replication_secret`: not set, but roles or stream writers are \
         spread over several instances, whose messages it authenticates: set the same random \
         string of at least 32 bytes for every instance (`lattice generate-config` writes one; \
         `openssl rand -hex 32` makes one)"
    );
    let short = |sample: String| {
        without_secret(sample) + "\nreplication_secret: \"test replication secret\"\n"
    };
    let (ok, stderr) = serve_with(short, &split);
    assert!(!ok);
    assert_eq!(
        stderr,
        "lattice: config: key `replication_secret`: is 23 bytes long, it must have at least 32 \
         (`openssl rand -hex 32` makes one)"
    );
}

#[test]
fn generate_config_writes_a_fresh_replication_secret() {
    let secret = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
            .args(["generate-config", "--server-name", "example.org"])
            .output()
            .expect("lattice generate-config");
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).expect("utf-8");
        use figment::providers::Format as _;
        let config = lattice::config::Config::from_figment(figment::Figment::from(
            figment::providers::Yaml::string(&text),
        ))
        .expect("the generated config loads");
        config.replication_secret.expect("a replication_secret")
    };
    let first = secret();
    assert!(first.len() >= 32, "{first}");
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert_ne!(first, secret(), "each generated config has its own");
}

/// The least a split deployment's Redis user needs, for the key prefix and
/// replication channel `prefix` (the server name unless `redis.prefix`).
fn acl_rules(prefix: &str) -> Vec<String> {
    [
        format!("~{prefix}:*"),
        format!("&{prefix}"),
        "+@stream".into(),
        "+@list".into(),
        "+@scripting".into(),
        "+@connection".into(),
        "+@pubsub".into(),
        "+pexpire".into(),
    ]
    .to_vec()
}

#[actix_web::test]
async fn a_split_works_through_a_redis_acl_user() {
    let port = free_port();
    // No default user: only `lattice`, with the rules the README gives
    // (test prefixes are the test database names).
    let mut args = vec![
        "--user",
        "default",
        "off",
        "--user",
        "lattice",
        "on",
        ">s3cret pass",
    ];
    let rules = acl_rules("lattice_test_*");
    args.extend(rules.iter().map(String::as_str));
    let _redis = PrivateRedis::start_with(port, &args);
    let options = Options {
        redis_url: Some(format!("redis://lattice:s3cret%20pass@127.0.0.1:{port}")),
        ..split(None)
    };
    let cluster = TestCluster::start_with(options).await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    // Through main's mailbox to events1, and replicated to sync2.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    alice.send_text(&room, "through an ACL user").await;
    let seen = synced_bodies(&bob, &room, "through an ACL user").await;
    assert!(seen.contains(&"through an ACL user".to_owned()), "{seen:?}");
}

/// The message bodies `user`'s `/sync` (sync2 on the split) gives for
/// `room`, long-polling (at most 10 times 5 s) until `expected` is among them.
async fn synced_bodies(user: &crate::cluster::User, room: &str, expected: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut since = String::new();
    for _ in 0..10 {
        let query = if since.is_empty() {
            "timeout=0".to_owned()
        } else {
            format!("since={}&timeout=5000", enc(&since))
        };
        let sync = user.sync(&query).await;
        seen.extend(bodies(&sync, room));
        if seen.iter().any(|body| body == expected) {
            break;
        }
        since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    }
    seen
}

/// A CA and a certificate for 127.0.0.1 it signed, made in `dir` with the
/// openssl command (as an operator would).
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (make test installs it)");
        assert!(status.success(), "openssl {args:?}");
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let words = |line: String| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
    for line in [
        format!("req -x509 {ec} -keyout ca.key -out ca.crt -days 1 -subj /CN=lattice-test-CA"),
        format!("req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
         -days 1 -extfile server.ext"
            .to_owned(),
    ] {
        let args = words(line);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[actix_web::test]
async fn a_split_works_over_tls_to_redis_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!(
        "lattice-it-tls-{}-{}",
        std::process::id(),
        lattice::config::generate_replication_secret()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    make_certificates(&dir);
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (plain_port, tls_port) = (free_port(), free_port());
    let (certificate, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    let _redis = PrivateRedis::start_with(
        plain_port,
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &certificate,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let options = Options {
        redis_url: Some(format!("rediss://127.0.0.1:{tls_port}")),
        redis_tls_ca_file: Some(dir.join("ca.crt")),
        ..split(None)
    };
    let cluster = TestCluster::start_with(options).await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "over TLS").await;
    // The send crossed main's mailbox to events1; sync2 (where /sync goes)
    // heard of it through replication.
    assert_eq!(
        synced_bodies(&alice, &room, "over TLS").await,
        vec!["over TLS"]
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sync token's components as numbers (`s12_3_...`: the room
/// component without its `s`), to compare tokens.
fn token_positions(token: &str) -> Vec<i64> {
    token
        .split('_')
        .map(|part| {
            part.trim_start_matches('s')
                .parse()
                .unwrap_or_else(|_| panic!("a live sync token: {token}"))
        })
        .collect()
}

/// What one user has seen of a room through `/sync` long-polls: every
/// message body in the order given, and every token, which must never go
/// back in any component.
struct Conversation {
    since: String,
    bodies: Vec<String>,
}

impl Conversation {
    /// Long-polls until `expected` was served (at most `within`); how long
    /// it took.
    async fn until_seen(
        &mut self,
        user: &crate::cluster::User,
        room: &str,
        expected: &str,
        within: Duration,
    ) -> Duration {
        let started = Instant::now();
        while !self.bodies.iter().any(|body| body == expected) {
            let left = within.saturating_sub(started.elapsed());
            assert!(
                !left.is_zero(),
                "`{expected}` not served within {within:?}; seen {:?}",
                self.bodies
            );
            let answer = user
                .sync(&format!(
                    "since={}&timeout={}",
                    enc(&self.since),
                    left.as_millis()
                ))
                .await;
            let next = answer["next_batch"].as_str().unwrap_or_default().to_owned();
            let (before, after) = (token_positions(&self.since), token_positions(&next));
            assert!(
                before.iter().zip(&after).all(|(b, a)| a >= b),
                "the token went back: {} then {next}",
                self.since
            );
            self.bodies.extend(bodies(&answer, room));
            self.since = next;
        }
        started.elapsed()
    }
}

/// Waits (at most 10 s) until the scrape of `node` has `series` at `value`.
async fn until_sample(node: &crate::cluster::Client, series: &str, accept: impl Fn(f64) -> bool) {
    let mut last = None;
    for _ in 0..200 {
        let text = crate::metrics::scrape(node).await;
        last = crate::metrics::sample(&text, series);
        if last.is_some_and(&accept) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{series} stayed at {last:?}");
}

/// The `stalled_writers` the cluster view shows for `instance`.
async fn stalled_in_cluster_view(admin: &crate::cluster::User, instance: &str) -> Value {
    let (status, body) = admin.get("/_lattice/admin/v1/cluster").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["instances"]
        .as_array()
        .and_then(|instances| instances.iter().find(|i| i["name"] == instance))
        .map(|i| i["stalled_writers"].clone())
        .unwrap_or(Value::Null)
}

#[actix_web::test]
async fn a_reader_cut_off_from_replication_serves_what_it_missed_from_postgres() {
    let cluster = TestCluster::start_with(Options {
        settings: vec![("replication.stall_check_ms", json!(250))],
        ..Options::default()
    })
    .await;
    let client = cluster.client();
    let admin = client.register("root").await;
    cluster.make_admin(&admin.user_id).await;
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    alice.send_text(&room, "before").await;
    let since = bob.sync("timeout=0").await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The instance bob's /sync goes to.
    let reader = if cluster.is_split() { "sync2" } else { "main" };
    let reader_client = cluster.node_client(reader);
    let stalled = r#"lattice_replication_stalled{stream="events",writer="events1"}"#;
    let recoveries = r#"lattice_replication_recoveries_total{stream="events"}"#;

    cluster
        .on_node(reader, |node| async move { node.cut_off_replication(true) })
        .await;
    let poller = bob.clone();
    let waiting = tokio::task::spawn_local({
        let room = room.clone();
        let mut seen = Conversation {
            since,
            bodies: Vec::new(),
        };
        async move {
            let took = seen
                .until_seen(&poller, &room, "while cut off", Duration::from_secs(20))
                .await;
            (seen, took)
        }
    });
    cluster.wait_for_long_poll(reader).await;
    alice.send_text(&room, "while cut off").await;
    let (mut seen, took) = waiting.await.expect("the long-poll");
    // Read back from PostgreSQL within a few checks, not when the
    // long-poll's timeout ran out.
    assert!(took < Duration::from_secs(5), "served after {took:?}");

    if cluster.is_split() {
        until_sample(&reader_client, stalled, |v| v == 1.0).await;
        until_sample(&reader_client, recoveries, |v| v >= 1.0).await;
        let mut shown = Value::Null;
        for _ in 0..100 {
            shown = stalled_in_cluster_view(&admin, reader).await;
            if shown
                .as_array()
                .is_some_and(|s| s.contains(&json!({ "stream": "events", "writer": "events1" })))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            shown
                .as_array()
                .is_some_and(|s| s.contains(&json!({ "stream": "events", "writer": "events1" }))),
            "{shown}"
        );
    }

    // Still cut off: the next message too, and the first one not again.
    alice.send_text(&room, "still cut off").await;
    seen.until_seen(&bob, &room, "still cut off", Duration::from_secs(10))
        .await;

    // Replication comes back: the stall ends and messages come the usual
    // way again.
    cluster
        .on_node(
            reader,
            |node| async move { node.cut_off_replication(false) },
        )
        .await;
    if cluster.is_split() {
        until_sample(&reader_client, stalled, |v| v == 0.0).await;
    }
    alice.send_text(&room, "after").await;
    seen.until_seen(&bob, &room, "after", Duration::from_secs(10))
        .await;
    assert_eq!(seen.bodies, vec!["while cut off", "still cut off", "after"]);

    if !cluster.is_split() {
        // Nothing to lose and nothing lost: no stall anywhere.
        let text = crate::metrics::scrape(&reader_client).await;
        assert!(!text.contains("lattice_replication_stalled{"), "{text}");
        assert_eq!(stalled_in_cluster_view(&admin, reader).await, json!([]));
    }
}

#[actix_web::test]
async fn a_sync_that_cannot_wait_reads_back_what_replication_did_not_bring() {
    // A watchdog too slow to help: the sync itself reads back.
    let cluster = TestCluster::start_with(Options {
        settings: vec![("replication.stall_check_ms", json!(600_000))],
        ..split(None)
    })
    .await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let since = bob.sync("timeout=0").await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    cluster
        .on_node(
            "sync2",
            |node| async move { node.cut_off_replication(true) },
        )
        .await;
    alice.send_text(&room, "while cut off").await;
    let started = Instant::now();
    let answer = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(bodies(&answer, &room), vec!["while cut off"], "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = crate::metrics::scrape(&cluster.node_client("sync2")).await;
    assert!(
        crate::metrics::sample(
            &text,
            r#"lattice_replication_recoveries_total{stream="events"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
}
