//! Live shards (issue 17): the event persisters' rooms are owned by lease,
//! so persisters join, leave and die while clients send and sync, and no
//! client sees an event twice, out of order, or not at all.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, Options, TestCluster, User};
use lattice::roles::Role;

const ROOMS: usize = 200;
const SENDERS: usize = 4;
const BODY_PREFIX: &str = "shard test ";

/// A `next_batch` the reader was given, with how many messages of each
/// room it had seen then.
type TokenSeen = (String, Vec<usize>);

/// One acknowledged send.
struct Sent {
    room: usize,
    event_id: String,
    started: Instant,
    answered: Instant,
}

/// Sends with a client's patience: the same transaction id again after an
/// error that says to (503, a dropped connection), for up to a minute.
async fn send_until_accepted(user: &User, room_id: &str, txn_id: &str, body: &str) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn_id}",
        enc(room_id)
    );
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = user
            .client
            .try_request_bytes(
                awc::http::Method::PUT,
                &path,
                Some(&user.access_token),
                Some(
                    serde_json::to_vec(&json!({ "msgtype": "m.text", "body": body }))
                        .expect("json"),
                ),
            )
            .await;
        match answer {
            Ok((status, _, bytes)) if status == StatusCode::OK => {
                let value: Value = serde_json::from_slice(&bytes).expect("json answer");
                return value["event_id"].as_str().expect("event_id").to_owned();
            }
            Ok((status, _, bytes)) if status == StatusCode::SERVICE_UNAVAILABLE => {
                let _ = bytes;
            }
            Ok((status, _, bytes)) => panic!(
                "send to {room_id} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ),
            Err(_dropped) => {}
        }
        assert!(
            Instant::now() < give_up,
            "a send to {room_id} never got through"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The test's messages in one `/sync` answer, by room, in timeline order,
/// and whether any timeline was limited (a gap).
fn messages_in(answer: &Value, index_of: &BTreeMap<String, usize>) -> (Vec<(usize, String)>, bool) {
    let mut found = Vec::new();
    let mut limited = false;
    if let Some(joined) = answer["rooms"]["join"].as_object() {
        for (room_id, room) in joined {
            let Some(&index) = index_of.get(room_id) else {
                continue;
            };
            limited |= room["timeline"]["limited"].as_bool() == Some(true);
            for event in room["timeline"]["events"].as_array().into_iter().flatten() {
                let is_ours = event["type"] == "m.room.message"
                    && event["content"]["body"]
                        .as_str()
                        .is_some_and(|body| body.starts_with(BODY_PREFIX));
                if is_ours {
                    found.push((
                        index,
                        event["event_id"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
    }
    (found, limited)
}

/// How many shards each persister owns, and the owner of each room, as
/// `main` sees them.
async fn shard_owners(
    cluster: &TestCluster,
    rooms: &[String],
) -> (Vec<(String, usize)>, Vec<String>) {
    let rooms = rooms.to_vec();
    cluster
        .on_node("main", move |node| async move {
            let counts = node.event_shards.counts();
            let owners = rooms
                .iter()
                .map(|room| {
                    node.event_shards
                        .owner_of(room)
                        .map(|owner| owner.instance.to_string())
                        .unwrap_or_default()
                })
                .collect();
            (counts, owners)
        })
        .await
}

const SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":1000},"state":{"lazy_load_members":true}},"presence":{"not_types":["*"]}}"#;

#[actix_web::test]
async fn rooms_stay_whole_while_persisters_join_leave_and_die() {
    let mut cluster = TestCluster::start_sharded(Options::default(), 4, 4).await;
    let alice = cluster.client().register("alice").await;

    // 200 rooms, spread over the four persisters' shards.
    let mut room_ids: Vec<String> = Vec::with_capacity(ROOMS);
    for _ in 0..ROOMS / 4 {
        let created = futures::future::join_all(
            (0..4).map(|_| alice.create_room(json!({ "preset": "private_chat" }))),
        )
        .await;
        room_ids.extend(created);
    }
    let index_of: BTreeMap<String, usize> = room_ids
        .iter()
        .enumerate()
        .map(|(index, room_id)| (room_id.clone(), index))
        .collect();
    let (counts, _) = shard_owners(&cluster, &room_ids).await;
    assert_eq!(
        counts
            .iter()
            .map(|(owner, _)| owner.as_str())
            .collect::<Vec<_>>(),
        ["events1", "events2", "events3", "events4"],
        "every persister owns shards: {counts:?}"
    );

    let first = alice.sync(&format!("filter={}", enc(SYNC_FILTER))).await;
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();

    let stop = Rc::new(Cell::new(false));
    let sent: Rc<RefCell<Vec<Sent>>> = Rc::default();
    // Senders that finished: a send in flight when `stop` is set is still
    // acknowledged, and must be read too.
    let senders_done = Rc::new(Cell::new(0));
    let senders = (0..SENDERS).map(|sender| {
        let (alice, stop, sent, room_ids, senders_done) = (
            alice.clone(),
            stop.clone(),
            sent.clone(),
            room_ids.clone(),
            senders_done.clone(),
        );
        async move {
            let mut round = 0;
            while !stop.get() {
                for room in (sender..ROOMS).step_by(SENDERS) {
                    if stop.get() {
                        break;
                    }
                    let started = Instant::now();
                    let body = format!("{BODY_PREFIX}{room}/{round}");
                    let txn_id = format!("s{room}r{round}");
                    let event_id =
                        send_until_accepted(&alice, &room_ids[room], &txn_id, &body).await;
                    sent.borrow_mut().push(Sent {
                        room,
                        event_id,
                        started,
                        answered: Instant::now(),
                    });
                }
                round += 1;
            }
            senders_done.set(senders_done.get() + 1);
        }
    });

    // The reader: every message of every room, exactly once, in order, and
    // the tokens it was given on the way, with what it had seen at each.
    let received: Rc<RefCell<Vec<Vec<String>>>> = Rc::new(RefCell::new(vec![Vec::new(); ROOMS]));
    let tokens: Rc<RefCell<Vec<TokenSeen>>> = Rc::default();
    let gaps = Rc::new(Cell::new(0));
    let reader = {
        let (alice, senders_done, sent, received, tokens, gaps, index_of) = (
            alice.clone(),
            senders_done.clone(),
            sent.clone(),
            received.clone(),
            tokens.clone(),
            gaps.clone(),
            index_of.clone(),
        );
        async move {
            let mut since = since;
            let mut answers = 0;
            let mut finished_at: Option<Instant> = None;
            loop {
                let total_received: usize = received.borrow().iter().map(Vec::len).sum();
                let sending = senders_done.get() < SENDERS;
                if !sending && total_received >= sent.borrow().len() {
                    break;
                }
                if !sending {
                    let finished = *finished_at.get_or_insert_with(Instant::now);
                    if finished.elapsed() > Duration::from_secs(30) {
                        break;
                    }
                }
                let answer = alice
                    .sync(&format!(
                        "since={}&timeout=1000&filter={}",
                        enc(&since),
                        enc(SYNC_FILTER)
                    ))
                    .await;
                let (found, limited) = messages_in(&answer, &index_of);
                if limited {
                    gaps.set(gaps.get() + 1);
                }
                {
                    let mut received = received.borrow_mut();
                    for (room, event_id) in found {
                        received[room].push(event_id);
                    }
                }
                since = answer["next_batch"]
                    .as_str()
                    .expect("next_batch")
                    .to_owned();
                answers += 1;
                if answers % 5 == 0 {
                    let seen = received.borrow().iter().map(Vec::len).collect();
                    tokens.borrow_mut().push((since.clone(), seen));
                }
            }
        }
    };

    // In the middle of it: a fifth persister joins, one leaves, one dies.
    let timeline: Rc<RefCell<Vec<(&'static str, Instant)>>> = Rc::default();
    let controller = {
        let (stop, sent, timeline) = (stop.clone(), sent.clone(), timeline.clone());
        let cluster = &mut cluster;
        let room_ids = &room_ids;
        async move {
            let sent_count = || sent.borrow().len();
            let wait_for_sends = |more: usize| {
                let target = sent_count() + more;
                let sent = sent.clone();
                async move {
                    let give_up = Instant::now() + Duration::from_secs(60);
                    while sent.borrow().len() < target {
                        assert!(Instant::now() < give_up, "sends stopped going through");
                        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            wait_for_sends(100).await;
            timeline
                .borrow_mut()
                .push(("events5 joins", Instant::now()));
            cluster.add_node("events5", &[Role::Events]).await;
            wait_for_sends(200).await;
            timeline
                .borrow_mut()
                .push(("events2 stops", Instant::now()));
            cluster.stop_node("events2");
            wait_for_sends(200).await;
            let (_, before_kill) = shard_owners(cluster, room_ids).await;
            timeline.borrow_mut().push(("events3 dies", Instant::now()));
            cluster.kill("events3");
            let killed = Instant::now();
            // Until every room of the dead persister took a send again.
            let dead_rooms: HashSet<usize> = before_kill
                .iter()
                .enumerate()
                .filter(|(_, owner)| *owner == "events3")
                .map(|(room, _)| room)
                .collect();
            assert!(!dead_rooms.is_empty(), "events3 owned rooms");
            let give_up = Instant::now() + Duration::from_secs(60);
            loop {
                let recovered: HashSet<usize> = sent
                    .borrow()
                    .iter()
                    .filter(|s| s.started >= killed && dead_rooms.contains(&s.room))
                    .map(|s| s.room)
                    .collect();
                if recovered.len() == dead_rooms.len() {
                    break;
                }
                assert!(
                    Instant::now() < give_up,
                    "the dead persister's rooms never came back"
                );
                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            }
            wait_for_sends(100).await;
            stop.set(true);
            (killed, dead_rooms)
        }
    };

    let (_, (killed, dead_rooms), ()) =
        futures::join!(futures::future::join_all(senders), controller, reader);

    // Every acknowledged send reached the reader exactly once, in order.
    let sent = std::mem::take(&mut *sent.borrow_mut());
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); ROOMS];
    for s in sent.iter() {
        expected[s.room].push(s.event_id.clone());
    }
    assert!(sent.len() >= 600, "only {} sends", sent.len());
    assert_eq!(gaps.get(), 0, "a timeline was limited");
    let received = std::mem::take(&mut *received.borrow_mut());
    let missing: Vec<String> = (0..ROOMS)
        .flat_map(|room| {
            expected[room]
                .iter()
                .filter(|event| !received[room].contains(event))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    if !missing.is_empty() {
        // What `main` had seen, for whoever reads the failure.
        let view = cluster
            .on_node("main", |node| async move {
                let events = node.streams.get("events").expect("events stream");
                let positions = events.read(|p| (p.persisted_upto(), p.positions()));
                (positions, node.event_shards.counts())
            })
            .await;
        let db = cluster.database().await;
        let rows = db
            .query(
                "SELECT stream_ordering, instance_name FROM events WHERE event_id = ANY($1)",
                &[&missing],
            )
            .await
            .expect("missing events");
        let rows: Vec<(i64, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        eprintln!("main's events stream (floor, writers) and shards: {view:?}; missing (position, writer): {rows:?}");
    }
    for room in 0..ROOMS {
        assert_eq!(
            received[room], expected[room],
            "room {room}: what the reader saw is not what was acknowledged, once each, in order"
        );
    }

    // A send to a room of the dead persister, started after it died, was
    // accepted within 15 s of its death.
    let back = sent
        .iter()
        .filter(|s| s.started >= killed && dead_rooms.contains(&s.room))
        .map(|s| s.answered.duration_since(killed))
        .min()
        .expect("sends after the death");
    assert!(
        back <= Duration::from_secs(15),
        "sends came back after {back:?}"
    );

    // Every token the reader was given resumes exactly after what it had
    // seen when it got it.
    let tokens = std::mem::take(&mut *tokens.borrow_mut());
    assert!(!tokens.is_empty());
    for (token, seen) in tokens.iter().step_by((tokens.len() / 6).max(1)) {
        let answer = alice
            .sync(&format!(
                "since={}&timeout=0&filter={}",
                enc(token),
                enc(SYNC_FILTER)
            ))
            .await;
        let (found, limited) = messages_in(&answer, &index_of);
        assert!(!limited);
        let mut resumed: Vec<Vec<String>> = vec![Vec::new(); ROOMS];
        for (room, event_id) in found {
            resumed[room].push(event_id);
        }
        for room in 0..ROOMS {
            assert_eq!(
                resumed[room],
                expected[room][seen[room]..],
                "room {room} resumed from a token at {} of {}",
                seen[room],
                expected[room].len()
            );
        }
    }

    // The survivors own every shard.
    let (counts, _) = shard_owners(&cluster, &room_ids).await;
    assert_eq!(
        counts
            .iter()
            .map(|(owner, _)| owner.as_str())
            .collect::<Vec<_>>(),
        ["events1", "events4", "events5"],
        "{counts:?}"
    );
    let timeline = timeline.borrow();
    eprintln!(
        "{} sends; back {back:?} after the death; {:?}",
        sent.len(),
        timeline.iter().map(|(what, _)| *what).collect::<Vec<_>>()
    );
}

/// The room among `rooms` whose shard `owner` holds, and that shard.
async fn room_held_by(cluster: &TestCluster, rooms: &[String], owner: &str) -> (String, i32) {
    let (_, owners) = shard_owners(cluster, rooms).await;
    let room = rooms
        .iter()
        .zip(owners)
        .find(|(_, held_by)| held_by == owner)
        .map(|(room, _)| room.clone())
        .unwrap_or_else(|| panic!("no room on {owner}"));
    let shard = lattice::shards::shard_of(&room);
    (room, shard)
}

/// The instance that persisted `event_id`.
async fn persisted_by(cluster: &TestCluster, event_id: &str) -> String {
    cluster
        .database()
        .await
        .query_one(
            "SELECT instance_name FROM events WHERE event_id = $1",
            &[&event_id],
        )
        .await
        .expect("event stored")
        .get(0)
}

#[actix_web::test]
async fn an_admin_sees_the_shards_and_moves_one_and_it_stays() {
    let cluster = TestCluster::start_sharded(Options::default(), 2, 2).await;
    let admin = cluster.client().register("admin").await;
    cluster.make_admin(&admin.user_id).await;
    let bob = cluster.client().register("bob").await;
    let mut rooms = Vec::new();
    for _ in 0..8 {
        rooms.push(admin.create_room(json!({ "preset": "private_chat" })).await);
    }

    // Only admins see them.
    let (status, body) = bob.get("/_lattice/admin/v1/shards").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // events1 started first and held every shard; events2 gets its share
    // on events1's next heartbeat. Wait until each shard is where the
    // rendezvous hash puts it.
    let members = ["events1".to_owned(), "events2".to_owned()];
    let give_up = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = admin.get("/_lattice/admin/v1/shards").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let settled = body["kinds"][0]["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .all(|shard| {
                let number = shard["shard"].as_i64().unwrap_or(-1) as i32;
                shard["owner"].as_str()
                    == lattice::shards::desired_owner("events", number, &members)
            });
        if settled {
            break body;
        }
        assert!(Instant::now() < give_up, "the shards never settled: {body}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    // Every instance's map has read the table since.
    cluster
        .on_node("main", |node| async move {
            node.event_shards.refresh(Duration::from_secs(2)).await;
        })
        .await;
    let kinds = body["kinds"].as_array().expect("kinds");
    let events = kinds
        .iter()
        .find(|k| k["kind"] == "events")
        .expect("events");
    assert_eq!(events["live_members"], json!(["events1", "events2"]));
    assert_eq!(events["shards"].as_array().map(Vec::len), Some(256));
    let per_owner = &events["shards_per_owner"];
    let (one, two) = (
        per_owner["events1"].as_u64().unwrap_or(0),
        per_owner["events2"].as_u64().unwrap_or(0),
    );
    assert_eq!(one + two, 256, "{per_owner}");
    assert!(one > 64 && two > 64, "both hold a share: {per_owner}");
    // The duties that run once go to the one background instance.
    let background = kinds
        .iter()
        .find(|k| k["kind"] == "background")
        .expect("background");
    assert_eq!(background["live_members"], json!(["main"]));
    assert_eq!(background["shards_per_owner"], json!({ "main": 256 }));

    // The cluster view says who holds how many.
    let (status, view) = admin.get("/_lattice/admin/v1/cluster").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["shards"]["events"]["shards_per_owner"], *per_owner);
    assert_eq!(
        view["shards"]["background"]["live_members"],
        json!(["main"])
    );

    // A room of events1 moved by hand to events2: its next event is
    // persisted there, and it stays there over many heartbeats.
    let (room, shard) = room_held_by(&cluster, &rooms, "events1").await;
    let before = admin.send_text(&room, "before the move").await;
    assert_eq!(persisted_by(&cluster, &before).await, "events1");
    let (status, body) = admin
        .post(
            &format!("/_lattice/admin/v1/shards/events/{shard}/move"),
            json!({ "to": "events2" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["owner"], "events2");
    let after = admin.send_text(&room, "after the move").await;
    assert_eq!(persisted_by(&cluster, &after).await, "events2");
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let (_, body) = admin.get("/_lattice/admin/v1/shards").await;
    let moved = &body["kinds"][0]["shards"][shard as usize];
    assert_eq!(moved["owner"], "events2", "{moved}");
    assert_eq!(moved["pinned"], true);
    let later = admin.send_text(&room, "later").await;
    assert_eq!(persisted_by(&cluster, &later).await, "events2");
    let timeline = admin.messages(&room, "dir=b&limit=3").await;
    let bodies: Vec<&str> = timeline["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["later", "after the move", "before the move"]);

    // Bad moves change nothing.
    for (path, body, status, errcode) in [
        (
            "events/3/move",
            json!({ "to": "nobody" }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            "events/3/move",
            json!({ "to": "main" }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            "events/256/move",
            json!({ "to": "events1" }),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            "events/x/move",
            json!({ "to": "events1" }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            "nonsense/3/move",
            json!({ "to": "events1" }),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        // The typing writers are the instances with the `typing` role.
        (
            "typing/3/move",
            json!({ "to": "events1" }),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            "events/3/move",
            json!({ "owner": "events1" }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
    ] {
        let (got, answer) = admin
            .post(&format!("/_lattice/admin/v1/shards/{path}"), body)
            .await;
        assert_eq!(
            (got, answer["errcode"].as_str()),
            (status, Some(errcode)),
            "{path}: {answer}"
        );
    }
    let (status, _) = bob
        .post(
            &format!("/_lattice/admin/v1/shards/events/{shard}/move"),
            json!({ "to": "events1" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, body) = admin.get("/_lattice/admin/v1/shards").await;
    assert_eq!(
        body["kinds"][0]["shards"][shard as usize]["owner"],
        "events2"
    );
}

/// The kind named `kind` in what `GET /_lattice/admin/v1/shards` answered.
fn kind_of<'a>(body: &'a Value, kind: &str) -> &'a Value {
    body["kinds"]
        .as_array()
        .and_then(|kinds| kinds.iter().find(|k| k["kind"] == kind))
        .unwrap_or_else(|| panic!("no kind {kind} in {body}"))
}

/// Which of `nodes` hold background shard 0 (run the
/// clean-up), each after reading the table again.
async fn background_holders(cluster: &TestCluster, nodes: &[&'static str]) -> Vec<&'static str> {
    let mut holders = Vec::new();
    for &name in nodes {
        let holds = cluster
            .on_node(name, |node| async move {
                node.background_shards.refresh(Duration::from_secs(1)).await;
                node.background_shards.held_here(0).is_some()
            })
            .await;
        if holds {
            holders.push(name);
        }
    }
    holders
}

#[actix_web::test]
async fn the_duties_that_run_once_have_one_holder_and_a_live_one_takes_them_over() {
    let mut cluster = TestCluster::start_sharded(Options::default(), 1, 1).await;
    let admin = cluster.client().register("admin").await;
    cluster.make_admin(&admin.user_id).await;
    // A second background instance takes its share of the duty shards.
    cluster.add_node("background2", &[Role::Background]).await;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = admin.get("/_lattice/admin/v1/shards").await;
        let background = kind_of(&body, "background");
        if background["live_members"] == json!(["background2", "main"])
            && background["shards_per_owner"]["background2"]
                .as_u64()
                .unwrap_or(0)
                > 64
        {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "background2 never took its share: {background}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let both = ["main", "background2"];
    assert_eq!(
        background_holders(&cluster, &both).await.len(),
        1,
        "one instance runs the clean-up"
    );

    // Put on background2, which then dies: main takes it over.
    let (status, body) = admin
        .post(
            "/_lattice/admin/v1/shards/background/0/move",
            json!({ "to": "background2" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(background_holders(&cluster, &both).await, ["background2"]);
    cluster.kill("background2");
    let give_up = Instant::now() + Duration::from_secs(10);
    while background_holders(&cluster, &["main"]).await != ["main"] {
        assert!(Instant::now() < give_up, "nobody took over the clean-up");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The shard of `key` (a room or user id) of the kind `kind`: who owns it,
/// as the admin API says.
async fn owner_of(admin: &User, kind: &str, key: &str) -> Value {
    let shard = lattice::shards::shard_of(key) as usize;
    let (_, body) = admin.get("/_lattice/admin/v1/shards").await;
    kind_of(&body, kind)["shards"][shard]["owner"].clone()
}

/// Moves the shard of `key` of `kind` to `to` by the admin API.
async fn move_shard_of(admin: &User, kind: &str, key: &str, to: &str) {
    let shard = lattice::shards::shard_of(key);
    let (status, body) = admin
        .post(
            &format!("/_lattice/admin/v1/shards/{kind}/{shard}/move"),
            json!({ "to": to }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kind}/{shard} to {to}: {body}");
}

/// Waits (at most 15 s) until `member` owns more than a quarter of the
/// shards of each of `kinds`: it joined and took its share.
async fn wait_for_share(admin: &User, kinds: &[&str], member: &str) {
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = admin.get("/_lattice/admin/v1/shards").await;
        let shares: Vec<u64> = kinds
            .iter()
            .map(|kind| {
                kind_of(&body, kind)["shards_per_owner"][member]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        if shares.iter().all(|share| *share > 64) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{member} never took its share of every kind: {shares:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The account data `m.test` content `/sync` shows since `since` (None:
/// not in this response).
fn test_account_data(sync: &Value) -> Option<Value> {
    sync["account_data"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|event| event["type"] == "m.test")
        .map(|event| event["content"].clone())
}

#[actix_web::test]
async fn the_other_stream_writers_join_move_and_are_replaced_while_serving() {
    // `main` writes every stream but events; `writers2` joins with every
    // stream writer role, unlisted, and takes its share of each kind.
    let mut cluster = TestCluster::start_sharded(Options::default(), 1, 1).await;
    let admin = cluster.client().register("admin").await;
    cluster.make_admin(&admin.user_id).await;
    let writer_roles = [
        Role::Typing,
        Role::Receipts,
        Role::AccountData,
        Role::PushRules,
        Role::Presence,
        Role::ToDevice,
        Role::DeviceLists,
    ];
    cluster.add_node("writers2", &writer_roles).await;
    let kinds = [
        "typing",
        "receipts",
        "account_data",
        "push_rules",
        "presence",
        "to_device",
        "device_lists",
    ];
    wait_for_share(&admin, &kinds, "writers2").await;

    let alice = cluster.client().register("alice").await;
    let room = alice.create_room(json!({})).await;
    let event = alice.send_text(&room, "hello").await;
    let first = alice.sync("").await;
    let mut since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let account_data = format!(
        "/_matrix/client/v3/user/{}/account_data/m.test",
        enc(&alice.user_id)
    );
    let receipt = format!(
        "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
        enc(&room),
        enc(&event)
    );

    // Alice's account data and her room's receipts are written by
    // writers2, then by main, each change seen once in order.
    for (n, owner) in [(1, "writers2"), (2, "main"), (3, "writers2")] {
        move_shard_of(&admin, "account_data", &alice.user_id, owner).await;
        move_shard_of(&admin, "receipts", &room, owner).await;
        let (status, body) = alice.put(&account_data, json!({ "n": n })).await;
        assert_eq!(status, StatusCode::OK, "account data on {owner}: {body}");
        let (status, body) = alice.post(&receipt, json!({})).await;
        assert_eq!(status, StatusCode::OK, "receipt on {owner}: {body}");
        let sync = alice.sync(&format!("since={since}&timeout=5000")).await;
        assert_eq!(
            test_account_data(&sync),
            Some(json!({ "n": n })),
            "written by {owner}: {sync}"
        );
        since = sync["next_batch"].as_str().expect("next_batch").to_owned();
        assert_eq!(
            owner_of(&admin, "account_data", &alice.user_id).await,
            owner
        );
    }
    let (status, body) = alice.get(&account_data).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "n": 3 })));

    // writers2 dies holding both shards: main takes them over and writes
    // them within 15 s, and the token from before goes on.
    cluster.kill("writers2");
    let killed = Instant::now();
    let (status, body) = alice.put(&account_data, json!({ "n": 4 })).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "account data after the kill: {body}"
    );
    let (status, body) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&alice.user_id)
            ),
            json!({ "typing": true, "timeout": 10000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "typing after the kill: {body}");
    let (status, body) = alice.post(&receipt, json!({})).await;
    assert_eq!(status, StatusCode::OK, "receipt after the kill: {body}");
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "writes came back after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        owner_of(&admin, "account_data", &alice.user_id).await,
        "main"
    );
    let sync = alice.sync(&format!("since={since}&timeout=5000")).await;
    assert_eq!(
        test_account_data(&sync),
        Some(json!({ "n": 4 })),
        "after the kill: {sync}"
    );
    let sync = alice
        .sync(&format!(
            "since={}&timeout=0",
            sync["next_batch"].as_str().expect("next_batch")
        ))
        .await;
    assert_eq!(test_account_data(&sync), None, "nothing twice: {sync}");
}

/// A to-device send whose receiver's part was stored, but whose request
/// never finished (its writer died before answering, say), is retried by
/// the client with the same txnId after the receiver's shard moved to
/// another writer: the new owner finds the part stored and does not
/// deliver it again.
#[actix_web::test]
async fn a_to_device_send_retried_after_its_receiver_moved_is_delivered_once() {
    let mut cluster = TestCluster::start_sharded(Options::default(), 1, 1).await;
    let admin = cluster.client().register("admin").await;
    cluster.make_admin(&admin.user_id).await;
    cluster.add_node("writers2", &[Role::ToDevice]).await;
    wait_for_share(&admin, &["to_device"], "writers2").await;
    let alice = cluster.client().register("alice").await;
    let bob = cluster.client().register("bob").await;
    let since = bob.sync("").await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let send = "/_matrix/client/v3/sendToDevice/m.test/retried";
    let body =
        json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "n": 1 } } } });

    move_shard_of(&admin, "to_device", &bob.user_id, "writers2").await;
    let (status, answer) = alice.put(send, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // As if the request had not finished: the whole send is not recorded.
    let database = cluster.database().await;
    let forgotten = database
        .execute(
            "DELETE FROM to_device_txns WHERE txn_id = 'retried' AND part = ''",
            &[],
        )
        .await
        .expect("delete the whole-send record");
    assert_eq!(forgotten, 1);
    move_shard_of(&admin, "to_device", &bob.user_id, "main").await;
    let (status, answer) = alice.put(send, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let sync = bob.sync(&format!("since={since}&timeout=5000")).await;
    let received: Vec<&Value> = sync["to_device"]["events"]
        .as_array()
        .map(|events| events.iter().filter(|e| e["type"] == "m.test").collect())
        .unwrap_or_default();
    assert_eq!(received.len(), 1, "delivered once: {sync}");
    assert_eq!(received[0]["content"], json!({ "n": 1 }));
}
