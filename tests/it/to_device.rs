//! To-device messages: `PUT /sendToDevice/{eventType}/{txnId}` and the
//! `to_device` section of `/sync`. On the split, the to-device stream has
//! two writers (`events1` and `sync2`), neither where requests arrive
//! (`main`), sharded by the receiving user: a send to several users crosses
//! one mailbox per writer, and `/sync` (on `sync2`) hears of messages
//! through replication.

use std::collections::BTreeSet;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, Client, TestCluster, User, PASSWORD};

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("next_batch in {sync}"))
        .to_owned()
}

fn sync_instance(cluster: &TestCluster) -> &'static str {
    if cluster.is_split() {
        "sync2"
    } else {
        "main"
    }
}

async fn send(user: &User, kind: &str, txn_id: &str, body: Value) -> (StatusCode, Value) {
    user.put(
        &format!(
            "/_matrix/client/v3/sendToDevice/{}/{}",
            enc(kind),
            enc(txn_id)
        ),
        body,
    )
    .await
}

/// Sends `messages` as `m.test` with `txn_id`, asserting `200 {}`.
async fn send_ok(user: &User, txn_id: &str, messages: Value) {
    let (status, body) = send(user, "m.test", txn_id, json!({ "messages": messages })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
}

/// The to-device events of a `/sync` answer.
fn to_device(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("to_device.events in {sync}"))
}

/// The `n` of each to-device event's content, in order.
fn numbers(sync: &Value) -> Vec<i64> {
    to_device(sync)
        .iter()
        .map(|event| event["content"]["n"].as_i64().unwrap_or(-1))
        .collect()
}

async fn sync_since(user: &User, since: &str) -> Value {
    user.sync(&format!("since={}&timeout=0", enc(since))).await
}

/// `localpart` logged in again: a second device.
async fn second_device(client: &Client, localpart: &str) -> User {
    client.login(localpart).await
}

#[actix_web::test]
async fn a_message_reaches_its_device_once_and_is_gone_after_a_later_since() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let bob_phone = second_device(&client, "bob").await;
    let since = next_batch(&bob.sync("").await);
    let phone_since = next_batch(&bob_phone.sync("").await);

    send_ok(
        &alice,
        "t1",
        json!({ &bob.user_id: { &bob.device_id: { "n": 1, "secret": "for bob's laptop" } } }),
    )
    .await;

    let first = sync_since(&bob, &since).await;
    assert_eq!(
        to_device(&first),
        vec![json!({
            "sender": alice.user_id,
            "type": "m.test",
            "content": { "n": 1, "secret": "for bob's laptop" },
        })]
    );
    // A device only gets its own messages.
    assert!(to_device(&sync_since(&bob_phone, &phone_since).await).is_empty());
    // The client lost that answer and asks again with the same since: it
    // gets the message again (nothing is acknowledged yet).
    let again = sync_since(&bob, &since).await;
    assert_eq!(numbers(&again), vec![1]);
    // With the answer's next_batch: nothing more, and the message is gone
    // for good, even for the earlier since.
    let next = next_batch(&again);
    assert!(to_device(&sync_since(&bob, &next).await).is_empty());
    assert!(to_device(&sync_since(&bob, &since).await).is_empty());
    // An initial sync shows undelivered messages only.
    assert!(to_device(&bob.sync("").await).is_empty());

    // The instance remembers it emptied the inbox up to `next` and skips
    // the deletion while nothing new came; a new message is deleted in
    // its turn once acknowledged.
    assert!(to_device(&sync_since(&bob, &next).await).is_empty());
    send_ok(
        &alice,
        "t2",
        json!({ &bob.user_id: { &bob.device_id: { "n": 2 } } }),
    )
    .await;
    let second = sync_since(&bob, &next).await;
    assert_eq!(numbers(&second), vec![2]);
    let after = next_batch(&second);
    assert!(to_device(&sync_since(&bob, &after).await).is_empty());
    assert!(
        to_device(&sync_since(&bob, &next).await).is_empty(),
        "the second message was not deleted"
    );
}

#[actix_web::test]
async fn a_send_reaches_several_devices_and_star_means_every_device_then() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let bob_phone = second_device(&client, "bob").await;
    let carol = client.register("carol").await;
    let since = next_batch(&alice.sync("").await);

    send_ok(
        &alice,
        "t1",
        json!({
            &bob.user_id: {
                &bob.device_id: { "n": 1 },
                &bob_phone.device_id: { "n": 2 },
                "NOSUCHDEVICE": { "n": 9 },
            },
            &carol.user_id: { "*": { "n": 3 } },
            // Skipped as Synapse skips them: no such user, another
            // server, not a user id.
            "@nobody:lattice.test": { "X": { "n": 9 } },
            "@someone:elsewhere.example": { "X": { "n": 9 } },
            "not a user": { "X": { "n": 9 } },
        }),
    )
    .await;
    // A device carol logs in after the send did not exist when `*` was
    // expanded.
    let carol_phone = second_device(&client, "carol").await;

    // Each device's answer, and the token it resumes from.
    let mut tokens = Vec::new();
    for (user, expected) in [
        (&bob, vec![1]),
        (&bob_phone, vec![2]),
        (&carol, vec![3]),
        (&carol_phone, vec![]),
        // The sender got nothing.
        (&alice, vec![]),
    ] {
        let sync = sync_since(user, &since).await;
        assert_eq!(numbers(&sync), expected, "{user:?}: {sync}");
        if expected == vec![3] {
            assert_eq!(to_device(&sync)[0]["sender"], alice.user_id.as_str());
        }
        tokens.push(next_batch(&sync));
    }

    // Now `*` reaches both of carol's devices, and a user may send to
    // their own other devices (the sending one included).
    send_ok(&alice, "t2", json!({ &carol.user_id: { "*": { "n": 4 } } })).await;
    send_ok(&bob, "t1", json!({ &bob.user_id: { "*": { "n": 5 } } })).await;
    for ((user, expected), token) in [
        (&bob, vec![5]),
        (&bob_phone, vec![5]),
        (&carol, vec![4]),
        (&carol_phone, vec![4]),
        (&alice, vec![]),
    ]
    .into_iter()
    .zip(&tokens)
    {
        let sync = sync_since(user, token).await;
        assert_eq!(numbers(&sync), expected, "{user:?}: {sync}");
    }
}

#[actix_web::test]
async fn a_long_poll_wakes_when_a_message_arrives() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let since = next_batch(&bob.sync("").await);

    let query = format!("since={}&timeout=20000", enc(&since));
    let waiting = bob.sync(&query);
    let sending = async {
        cluster.wait_for_long_poll(sync_instance(&cluster)).await;
        send_ok(
            &alice,
            "t1",
            json!({ &bob.user_id: { &bob.device_id: { "n": 1 } } }),
        )
        .await;
    };
    let (woken, ()) = futures::join!(waiting, sending);
    assert_eq!(numbers(&woken), vec![1], "{woken}");
}

#[actix_web::test]
async fn a_transaction_id_sends_once_whatever_comes_again() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let alice_phone = second_device(&client, "alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let since = next_batch(&bob.sync("").await);
    let to_both = |n: i64| {
        json!({
            &bob.user_id: { &bob.device_id: { "n": n } },
            &carol.user_id: { "*": { "n": n } },
        })
    };

    send_ok(&alice, "same", to_both(1)).await;
    // A retry answers as the original did and stores nothing, even with
    // other content (the spec: a retransmission gets the same answer).
    send_ok(&alice, "same", to_both(1)).await;
    send_ok(&alice, "same", to_both(2)).await;
    // Transaction ids are per device: alice's other device sends anew.
    send_ok(&alice_phone, "same", to_both(3)).await;

    assert_eq!(numbers(&sync_since(&bob, &since).await), vec![1, 3]);
    assert_eq!(numbers(&sync_since(&carol, &since).await), vec![1, 3]);
}

#[actix_web::test]
async fn bad_input_is_refused_and_stores_nothing() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let since = next_batch(&bob.sync("").await);
    let big = "x".repeat(100 * 1024);

    for (txn_id, body, status, errcode) in [
        (
            "big",
            json!({ "messages": { &bob.user_id: {
                &bob.device_id: { "n": 1 },
                "OTHER": { "n": 2, "blob": big },
            } } }),
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
        ),
        (
            "array",
            json!({ "messages": [ { "n": 1 } ] }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "devices",
            json!({ "messages": { &bob.user_id: [ { "n": 1 } ] } }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "content",
            json!({ "messages": { &bob.user_id: { &bob.device_id: "hello" } } }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "missing",
            json!({ "message": {} }),
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
        ),
    ] {
        let (got, body) = send(&alice, "m.test", txn_id, body).await;
        assert_eq!(got, status, "{txn_id}: {body}");
        assert_eq!(body["errcode"], errcode, "{txn_id}: {body}");
    }
    let (status, body) = alice
        .client
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/notjson",
            Some(&alice.access_token),
            json!("not an object"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");
    // Nothing was stored, and a refused request's txnId is still free.
    assert!(to_device(&sync_since(&bob, &since).await).is_empty());
    send_ok(
        &alice,
        "big",
        json!({ &bob.user_id: { &bob.device_id: { "n": 7 } } }),
    )
    .await;
    assert_eq!(numbers(&sync_since(&bob, &since).await), vec![7]);
}

#[actix_web::test]
async fn at_most_100_messages_per_answer_and_the_rest_in_the_next() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let since = next_batch(&bob.sync("").await);
    // Concurrent sends: the writer stores what queued together in one
    // transaction.
    for chunk in (0..130).collect::<Vec<i64>>().chunks(26) {
        futures::future::join_all(chunk.iter().map(|n| {
            let (alice, bob) = (alice.clone(), bob.clone());
            async move {
                send_ok(
                    &alice,
                    &format!("t{n}"),
                    json!({ &bob.user_id: { &bob.device_id: { "n": n } } }),
                )
                .await
            }
        }))
        .await;
    }

    let first = sync_since(&bob, &since).await;
    assert_eq!(to_device(&first).len(), 100);
    let second = sync_since(&bob, &next_batch(&first)).await;
    assert_eq!(to_device(&second).len(), 30);
    let third = sync_since(&bob, &next_batch(&second)).await;
    assert!(to_device(&third).is_empty());
    let mut seen: Vec<i64> = numbers(&first);
    seen.extend(numbers(&second));
    let distinct: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct, (0..130).collect::<BTreeSet<i64>>());
    assert_eq!(seen.len(), 130, "each message once");
}

#[actix_web::test]
async fn a_deleted_device_loses_its_inbox() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let bob_phone = second_device(&client, "bob").await;
    send_ok(
        &alice,
        "t1",
        json!({ &bob_phone.user_id: { &bob_phone.device_id: { "n": 1 } } }),
    )
    .await;
    let (status, body) = bob_phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A device logged in later under the same id starts with an empty inbox.
    let (status, body) = client
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "bob" },
                "password": PASSWORD,
                "device_id": bob_phone.device_id,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], bob_phone.device_id.as_str());
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    let (status, sync) = client
        .get("/_matrix/client/v3/sync?timeout=0", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    assert!(to_device(&sync).is_empty(), "{sync}");
    assert!(to_device(&bob.sync("").await).is_empty());
}

/// The instance whose to-device writer owns `user_id` (`main` on the
/// monolith).
async fn writer_of(cluster: &TestCluster, user_id: &str) -> String {
    let user_id = user_id.to_owned();
    cluster
        .on_node("main", |node| async move {
            node.mailboxes
                .placement()
                .instance_for("to_device", &user_id)
                .to_owned()
        })
        .await
}

#[actix_web::test]
async fn a_message_outlives_the_death_of_its_writer_and_is_delivered_once() {
    let mut cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    // On the split, a recipient whose writer is not the instance serving
    // /sync: the message is delivered while its writer is dead.
    let mut recipient = None;
    for name in ["bob", "carol", "dave", "erin", "frank", "grace"] {
        let user_id = format!("@{name}:{}", crate::cluster::SERVER_NAME);
        let writer = writer_of(&cluster, &user_id).await;
        if !cluster.is_split() || writer == "events1" {
            recipient = Some((name, writer));
            break;
        }
    }
    let (name, writer) = recipient.expect("a user whose to-device writer is events1");
    let bob = client.register(name).await;
    let since = next_batch(&bob.sync("").await);
    send_ok(
        &alice,
        "t1",
        json!({ &bob.user_id: { &bob.device_id: { "n": 1 } } }),
    )
    .await;

    // The instance that stored the undelivered message dies.
    cluster.kill(&writer);
    let mut seen = Vec::new();
    let mut next = since.clone();
    if writer != sync_instance(&cluster) {
        // The message is in PostgreSQL: /sync shows it while its writer is down.
        let sync = sync_since(&bob, &next).await;
        seen.extend(numbers(&sync));
        next = next_batch(&sync);
    }
    cluster.restart(&writer).await;
    let sync = sync_since(&bob, &next).await;
    seen.extend(numbers(&sync));
    next = next_batch(&sync);
    assert_eq!(seen, vec![1], "delivered once");

    // Once acknowledged, the restarted writer does not bring it back, and
    // new messages go through it again.
    send_ok(
        &alice,
        "t2",
        json!({ &bob.user_id: { &bob.device_id: { "n": 2 } } }),
    )
    .await;
    let sync = sync_since(&bob, &next).await;
    assert_eq!(numbers(&sync), vec![2]);
    assert!(to_device(&sync_since(&bob, &next_batch(&sync)).await).is_empty());
}
