//! Relations and threads: `/_matrix/client/v1/rooms/{roomId}/relations/...`
//! (pages both ways with tokens, relation and event type filters,
//! `recurse`), `/threads` (by latest reply, `include=participated`), and
//! the aggregations bundled in `unsigned.m.relations` of events served by
//! `/sync`, `/messages`, `/context` and `/event` (`m.thread`, `m.replace`,
//! `m.reference`), as redactions change them.

use awc::http::StatusCode;
use rand::Rng;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

/// Sends an event of `kind`, asserting success; its id.
async fn send(user: &User, room_id: &str, kind: &str, content: Value) -> String {
    let txn_id = format!("t{}", rand::thread_rng().gen::<u64>());
    let (status, response) = user
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/{}/{txn_id}",
                enc(room_id),
                enc(kind)
            ),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "send {kind}: {response}");
    response["event_id"]
        .as_str()
        .expect("send answers an event_id")
        .to_owned()
}

fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

async fn thread_reply(user: &User, room_id: &str, root: &str, body: &str) -> String {
    let content = json!({
        "msgtype": "m.text", "body": body,
        "m.relates_to": { "rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                          "m.in_reply_to": { "event_id": root } },
    });
    send(user, room_id, "m.room.message", content).await
}

async fn react(user: &User, room_id: &str, target: &str, key: &str) -> String {
    let content =
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": key } });
    send(user, room_id, "m.reaction", content).await
}

async fn edit(user: &User, room_id: &str, original: &str, body: &str) -> String {
    let content = json!({
        "msgtype": "m.text", "body": format!("* {body}"),
        "m.new_content": { "msgtype": "m.text", "body": body },
        "m.relates_to": { "rel_type": "m.replace", "event_id": original },
    });
    send(user, room_id, "m.room.message", content).await
}

async fn reference(user: &User, room_id: &str, target: &str) -> String {
    let content = json!({
        "msgtype": "m.text", "body": "see above",
        "m.relates_to": { "rel_type": "m.reference", "event_id": target },
    });
    send(user, room_id, "m.room.message", content).await
}

async fn redact(user: &User, room_id: &str, event_id: &str) {
    let txn_id = format!("r{}", rand::thread_rng().gen::<u64>());
    let (status, response) = user
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{txn_id}",
                enc(room_id),
                enc(event_id)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "redact: {response}");
}

/// `GET /relations/{eventId}{suffix}?{query}`.
async fn relations(
    user: &User,
    room_id: &str,
    event_id: &str,
    suffix: &str,
    query: &str,
) -> (StatusCode, Value) {
    user.get(&format!(
        "/_matrix/client/v1/rooms/{}/relations/{}{suffix}?{query}",
        enc(room_id),
        enc(event_id)
    ))
    .await
}

async fn relations_ok(
    user: &User,
    room_id: &str,
    event_id: &str,
    suffix: &str,
    query: &str,
) -> Value {
    let (status, body) = relations(user, room_id, event_id, suffix, query).await;
    assert_eq!(status, StatusCode::OK, "relations{suffix}?{query}: {body}");
    body
}

async fn threads(user: &User, room_id: &str, query: &str) -> (StatusCode, Value) {
    user.get(&format!(
        "/_matrix/client/v1/rooms/{}/threads?{query}",
        enc(room_id)
    ))
    .await
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap_or_else(|| panic!("an array of events: {chunk}"))
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `GET /event/{eventId}`, asserting success.
async fn event(user: &User, room_id: &str, event_id: &str) -> Value {
    let (status, body) = user
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room_id),
            enc(event_id)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "event: {body}");
    body
}

/// A public room of alice's that bob joined.
async fn room_with_bob(cluster: &TestCluster) -> (User, User, String) {
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    (alice, bob, room_id)
}

/// Follows `next_batch` from the first page to the last, collecting ids.
async fn all_pages(user: &User, room_id: &str, parent: &str, query: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut page = relations_ok(user, room_id, parent, "", query).await;
    for _ in 0..20 {
        let chunk = ids(&page["chunk"]);
        assert!(chunk.len() <= 2, "at most the limit: {page}");
        seen.extend(chunk);
        let Some(next) = page["next_batch"].as_str().map(str::to_owned) else {
            return seen;
        };
        let next_query = format!("{query}&from={}", enc(&next));
        page = relations_ok(user, room_id, parent, "", &next_query).await;
        assert_eq!(
            page["prev_batch"], next,
            "prev_batch is the from token: {page}"
        );
    }
    panic!("pagination did not end: {seen:?}");
}

#[actix_web::test]
async fn relations_are_paginated_both_ways_with_tokens() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let root = send(&alice, &room_id, "m.room.message", text("root")).await;
    let mut children = Vec::new();
    children.push(thread_reply(&bob, &room_id, &root, "one").await);
    children.push(react(&bob, &room_id, &root, "👍").await);
    children.push(thread_reply(&alice, &room_id, &root, "two").await);
    children.push(reference(&bob, &room_id, &root).await);
    children.push(react(&alice, &room_id, &root, "🎉").await);
    // Neither an unrelated message nor a plain reply is a child.
    send(&alice, &room_id, "m.room.message", text("unrelated")).await;
    let reply = json!({ "msgtype": "m.text", "body": "reply",
                        "m.relates_to": { "m.in_reply_to": { "event_id": root } } });
    send(&bob, &room_id, "m.room.message", reply).await;

    let first = relations_ok(&bob, &room_id, &root, "", "").await;
    assert!(first.get("prev_batch").is_none(), "the first page: {first}");
    assert!(first.get("recursion_depth").is_none(), "{first}");
    let mut newest_first = children.clone();
    newest_first.reverse();
    assert_eq!(
        ids(&first["chunk"]),
        newest_first,
        "default limit 5, newest first: {first}"
    );

    assert_eq!(
        all_pages(&bob, &room_id, &root, "limit=2").await,
        newest_first
    );
    assert_eq!(
        all_pages(&bob, &room_id, &root, "limit=2&dir=f").await,
        children
    );

    // `to` bounds a page: from the first page's token back to the second's.
    let page1 = relations_ok(&bob, &room_id, &root, "", "limit=2").await;
    let next = page1["next_batch"].as_str().expect("more").to_owned();
    let page2 = relations_ok(
        &bob,
        &room_id,
        &root,
        "",
        &format!("limit=2&from={}", enc(&next)),
    )
    .await;
    let end = page2["next_batch"].as_str().expect("more still").to_owned();
    let bounded = relations_ok(
        &bob,
        &room_id,
        &root,
        "",
        &format!("limit=10&from={}&to={}", enc(&next), enc(&end)),
    )
    .await;
    assert_eq!(ids(&bounded["chunk"]), ids(&page2["chunk"]), "{bounded}");
    // A /messages token works as well: from the room's end.
    let messages = alice.messages(&room_id, "dir=b&limit=1").await;
    let start = messages["start"].as_str().expect("start");
    let from_messages =
        relations_ok(&bob, &room_id, &root, "", &format!("from={}", enc(start))).await;
    assert_eq!(ids(&from_messages["chunk"]), newest_first);
}

#[actix_web::test]
async fn relations_are_filtered_by_relation_and_event_type_and_recurse() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let root = send(&alice, &room_id, "m.room.message", text("root")).await;
    let reply = thread_reply(&bob, &room_id, &root, "in the thread").await;
    let reaction = react(&alice, &room_id, &root, "👍").await;
    let reaction_to_reply = react(&alice, &room_id, &reply, "👀").await;
    let edit_of_reply = edit(&bob, &room_id, &reply, "in the thread, edited").await;

    let annotations = relations_ok(&alice, &room_id, &root, "/m.annotation", "").await;
    assert_eq!(ids(&annotations["chunk"]), vec![reaction.clone()]);
    let threaded = relations_ok(&alice, &room_id, &root, "/m.thread/m.room.message", "").await;
    assert_eq!(ids(&threaded["chunk"]), vec![reply.clone()]);
    let none = relations_ok(&alice, &room_id, &root, "/m.annotation/m.room.message", "").await;
    assert_eq!(ids(&none["chunk"]), Vec::<String>::new());
    assert!(none.get("next_batch").is_none(), "{none}");

    // Direct children only, unless `recurse`.
    let direct = relations_ok(&alice, &room_id, &root, "", "").await;
    assert_eq!(ids(&direct["chunk"]), vec![reaction.clone(), reply.clone()]);
    let all = relations_ok(&alice, &room_id, &root, "", "recurse=true&limit=10").await;
    assert_eq!(all["recursion_depth"], 3, "{all}");
    assert_eq!(
        ids(&all["chunk"]),
        vec![
            edit_of_reply.clone(),
            reaction_to_reply.clone(),
            reaction.clone(),
            reply.clone()
        ]
    );
    let recursed_annotations =
        relations_ok(&alice, &room_id, &root, "/m.annotation", "recurse=true").await;
    assert_eq!(
        ids(&recursed_annotations["chunk"]),
        vec![reaction_to_reply, reaction]
    );
    let not_recursed = relations_ok(&alice, &room_id, &root, "", "recurse=false").await;
    assert_eq!(ids(&not_recursed["chunk"]), ids(&direct["chunk"]));
}

#[actix_web::test]
async fn threads_are_listed_by_latest_reply_and_by_participation() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    // bob replied in the first, only alice in the second, bob started the third.
    let first = send(&alice, &room_id, "m.room.message", text("first")).await;
    let second = send(&alice, &room_id, "m.room.message", text("second")).await;
    let third = send(&bob, &room_id, "m.room.message", text("third")).await;
    send(&alice, &room_id, "m.room.message", text("no thread")).await;
    thread_reply(&alice, &room_id, &third, "a").await;
    thread_reply(&bob, &room_id, &first, "b").await;
    thread_reply(&alice, &room_id, &second, "c").await;
    let latest = thread_reply(&alice, &room_id, &first, "d").await;

    let (status, all) = threads(&bob, &room_id, "").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(
        ids(&all["chunk"]),
        vec![first.clone(), second.clone(), third.clone()]
    );
    assert!(all.get("next_batch").is_none(), "{all}");
    let summary = &all["chunk"][0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2, "{all}");
    assert_eq!(summary["latest_event"]["event_id"], json!(latest), "{all}");
    assert_eq!(summary["current_user_participated"], true, "{all}");
    let second_summary = &all["chunk"][1]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(second_summary["current_user_participated"], false, "{all}");

    let (status, mine) = threads(&bob, &room_id, "include=participated").await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(ids(&mine["chunk"]), vec![first.clone(), third.clone()]);

    let (_, page) = threads(&bob, &room_id, "limit=2").await;
    assert_eq!(ids(&page["chunk"]), vec![first, second]);
    let next = page["next_batch"].as_str().expect("a next page");
    let (status, rest) = threads(&bob, &room_id, &format!("limit=2&from={}", enc(next))).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(ids(&rest["chunk"]), vec![third]);
    assert!(rest.get("next_batch").is_none(), "{rest}");
}

/// The `m.relations` of `event` (Null when there are none).
fn bundle(event: &Value) -> &Value {
    &event["unsigned"]["m.relations"]
}

/// The event `event_id` in the joined room's timeline of `sync`.
fn in_sync<'a>(sync: &'a Value, room_id: &str, event_id: &str) -> &'a Value {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == event_id))
        .unwrap_or_else(|| panic!("{event_id} in the timeline of {sync}"))
}

#[actix_web::test]
async fn events_carry_their_aggregations_everywhere() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let carol = cluster.client().register("carol").await;
    carol.join(&room_id).await;
    let root = send(&alice, &room_id, "m.room.message", text("original")).await;
    let plain = send(&alice, &room_id, "m.room.message", text("plain")).await;
    thread_reply(&bob, &room_id, &root, "first reply").await;
    let latest = thread_reply(&alice, &room_id, &root, "second reply").await;
    let latest_edit = edit(&alice, &room_id, &latest, "second reply, edited").await;
    edit(&alice, &room_id, &root, "first edit").await;
    let last_edit = edit(&alice, &room_id, &root, "second edit").await;
    let referencing = reference(&bob, &room_id, &root).await;
    react(&bob, &room_id, &root, "👍").await;

    let check = |event: &Value, participated: bool| {
        let relations = bundle(event);
        let thread = &relations["m.thread"];
        assert_eq!(thread["count"], 2, "{event}");
        assert_eq!(thread["current_user_participated"], participated, "{event}");
        let latest_event = &thread["latest_event"];
        assert_eq!(latest_event["event_id"], json!(latest), "{event}");
        assert_eq!(latest_event["content"]["body"], "second reply", "{event}");
        // The latest reply has its own bundle: its edit.
        assert_eq!(
            bundle(latest_event)["m.replace"]["event_id"],
            json!(latest_edit),
            "{event}"
        );
        // The whole latest edit; the original's content stays (spec v1.7+).
        assert_eq!(
            relations["m.replace"]["event_id"],
            json!(last_edit),
            "{event}"
        );
        assert_eq!(
            relations["m.replace"]["content"]["m.new_content"]["body"],
            "second edit"
        );
        assert_eq!(event["content"]["body"], "original", "{event}");
        assert_eq!(
            relations["m.reference"],
            json!({ "chunk": [{ "event_id": referencing }] })
        );
        assert!(relations.get("m.annotation").is_none(), "{event}");
    };

    for (user, participated) in [(&alice, true), (&bob, true), (&carol, false)] {
        check(&event(user, &room_id, &root).await, participated);
    }
    assert_eq!(bundle(&event(&bob, &room_id, &plain).await), &Value::Null);

    let messages = bob.messages(&room_id, "dir=b&limit=50").await;
    let found = messages["chunk"]
        .as_array()
        .and_then(|chunk| chunk.iter().find(|e| e["event_id"] == root))
        .expect("the root in /messages");
    check(found, true);

    let (status, context) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
            enc(&room_id),
            enc(&plain)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    let before = context["events_before"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == root))
        .unwrap_or_else(|| panic!("the root before {plain}: {context}"));
    check(before, true);
    let (status, context) = carol
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/context/{}",
            enc(&room_id),
            enc(&root)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    check(&context["event"], false);

    let filter = json!({ "room": { "timeline": { "limit": 50 } } }).to_string();
    let sync = carol
        .sync(&format!("timeout=0&filter={}", enc(&filter)))
        .await;
    check(in_sync(&sync, &room_id, &root), false);
    // An incremental sync bundles what it carries too.
    let since = sync["next_batch"].as_str().expect("next_batch").to_owned();
    let another = thread_reply(&carol, &room_id, &plain, "carol's thread").await;
    let sync = carol
        .sync(&format!("timeout=0&since={}", enc(&since)))
        .await;
    let reply = in_sync(&sync, &room_id, &another);
    assert_eq!(bundle(reply), &Value::Null, "{sync}");
    let thread = event(&carol, &room_id, &plain).await;
    assert_eq!(
        bundle(&thread)["m.thread"]["current_user_participated"],
        true
    );
}

#[actix_web::test]
async fn redacting_an_edit_or_a_reply_updates_the_bundle() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let root = send(&alice, &room_id, "m.room.message", text("original")).await;
    let first_edit = edit(&alice, &room_id, &root, "first").await;
    let second_edit = edit(&alice, &room_id, &root, "second").await;
    let first_reply = thread_reply(&bob, &room_id, &root, "one").await;
    let second_reply = thread_reply(&bob, &room_id, &root, "two").await;

    let relations = bundle(&event(&bob, &room_id, &root).await).clone();
    assert_eq!(relations["m.replace"]["event_id"], json!(second_edit));
    assert_eq!(relations["m.thread"]["count"], 2);

    redact(&alice, &room_id, &second_edit).await;
    redact(&bob, &room_id, &second_reply).await;
    let relations = bundle(&event(&bob, &room_id, &root).await).clone();
    assert_eq!(
        relations["m.replace"]["event_id"],
        json!(first_edit),
        "{relations}"
    );
    assert_eq!(relations["m.thread"]["count"], 1, "{relations}");
    assert_eq!(
        relations["m.thread"]["latest_event"]["event_id"],
        json!(first_reply)
    );
    let page = relations_ok(&bob, &room_id, &root, "/m.replace", "").await;
    assert_eq!(ids(&page["chunk"]), vec![first_edit.clone()], "{page}");

    redact(&alice, &room_id, &first_edit).await;
    redact(&bob, &room_id, &first_reply).await;
    let root_event = event(&bob, &room_id, &root).await;
    assert_eq!(bundle(&root_event), &Value::Null, "{root_event}");
    let (_, listed) = threads(&bob, &room_id, "").await;
    assert_eq!(ids(&listed["chunk"]), Vec::<String>::new(), "{listed}");

    // A redacted parent keeps its children, but its edits are not bundled.
    let edited = send(&alice, &room_id, "m.room.message", text("to go")).await;
    edit(&alice, &room_id, &edited, "going").await;
    let reply = thread_reply(&bob, &room_id, &edited, "still here").await;
    redact(&alice, &room_id, &edited).await;
    let redacted = event(&bob, &room_id, &edited).await;
    assert!(bundle(&redacted).get("m.replace").is_none(), "{redacted}");
    assert_eq!(
        bundle(&redacted)["m.thread"]["latest_event"]["event_id"],
        json!(reply)
    );
    let page = relations_ok(&bob, &room_id, &edited, "/m.thread", "").await;
    assert_eq!(ids(&page["chunk"]), vec![reply]);
}

#[actix_web::test]
async fn invalid_edits_are_not_bundled() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let root = send(&alice, &room_id, "m.room.message", text("alice's")).await;
    // Another sender's edit, one without m.new_content, one of another type.
    let by_bob = edit(&bob, &room_id, &root, "bob's version").await;
    let no_new_content = json!({ "msgtype": "m.text", "body": "* x",
        "m.relates_to": { "rel_type": "m.replace", "event_id": root } });
    let without = send(&alice, &room_id, "m.room.message", no_new_content).await;
    let other_type = json!({ "m.new_content": { "body": "x" },
        "m.relates_to": { "rel_type": "m.replace", "event_id": root } });
    let of_other_type = send(&alice, &room_id, "org.example.other", other_type).await;

    let original = event(&bob, &room_id, &root).await;
    assert_eq!(bundle(&original), &Value::Null, "{original}");
    // They are relations all the same.
    let page = relations_ok(&bob, &room_id, &root, "/m.replace", "").await;
    assert_eq!(ids(&page["chunk"]), vec![of_other_type, without, by_bob]);

    // An edit of an edit is no edit of the original: it gets no bundle.
    let valid = edit(&alice, &room_id, &root, "valid").await;
    edit(&alice, &room_id, &valid, "edit of an edit").await;
    let original = event(&bob, &room_id, &root).await;
    assert_eq!(bundle(&original)["m.replace"]["event_id"], json!(valid));
    assert_eq!(bundle(&event(&bob, &room_id, &valid).await), &Value::Null);
}

#[actix_web::test]
async fn bad_requests_get_the_spec_errors() {
    let cluster = TestCluster::start().await;
    let (alice, _bob, room_id) = room_with_bob(&cluster).await;
    let root = send(&alice, &room_id, "m.room.message", text("root")).await;
    for query in [
        "dir=x",
        "limit=-1",
        "limit=many",
        "from=nonsense",
        "to=nonsense",
        "recurse=maybe",
    ] {
        let (status, body) = relations(&alice, &room_id, &root, "", query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{query}: {body}");
    }
    for query in ["include=mine", "limit=0", "limit=x", "from=nonsense"] {
        let (status, body) = threads(&alice, &room_id, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{query}: {body}");
    }
    let unknown_event = "$unknown:example.org";
    let (status, body) = relations(&alice, &room_id, unknown_event, "", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = relations(&alice, "!unknown:example.org", &root, "", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    // A user outside a private room sees nothing of it: as /event answers.
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    let secret = send(&alice, &private, "m.room.message", text("secret")).await;
    thread_reply(&alice, &private, &secret, "more secret").await;
    let eve = cluster.client().register("eve").await;
    let (status, body) = relations(&eve, &private, &secret, "", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (status, body) = threads(&eve, &private, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[actix_web::test]
async fn only_the_children_the_user_may_see_are_returned() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let (status, body) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&room_id)
            ),
            json!({ "history_visibility": "joined" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let root = send(&alice, &room_id, "m.room.message", text("root")).await;
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    thread_reply(&alice, &room_id, &root, "while bob was away").await;
    bob.join(&room_id).await;
    let back = thread_reply(&alice, &room_id, &root, "bob is back").await;

    // What came while bob was away stays hidden; what came after his
    // return is his to see, though no event of the page is his join.
    let page = relations_ok(&bob, &room_id, &root, "", "").await;
    assert_eq!(ids(&page["chunk"]), vec![back], "{page}");
    let (status, listed) = threads(&bob, &room_id, "").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(ids(&listed["chunk"]), vec![root], "{listed}");
}

/// A parent that was served while it had no children (so a server may
/// remember it as childless) gets its bundle as soon as a child exists, in
/// `/sync`, `/event` and `/messages`, on whichever instance serves them.
#[actix_web::test]
async fn a_parent_served_before_its_children_gets_their_bundle() {
    let cluster = TestCluster::start().await;
    let (alice, bob, room_id) = room_with_bob(&cluster).await;
    let first = bob.sync("").await;
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let root = send(&alice, &room_id, "m.room.message", text("root")).await;
    // Bob sees the root with nothing bundled.
    let answer = bob
        .sync(&format!("since={}&timeout=10000", enc(&since)))
        .await;
    let timeline = &answer["rooms"]["join"][&room_id]["timeline"]["events"];
    let served = timeline
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == root.as_str()))
        .unwrap_or_else(|| panic!("the root in bob's sync: {answer}"));
    assert!(served["unsigned"].get("m.relations").is_none(), "{served}");
    assert!(event(&bob, &room_id, &root).await["unsigned"]
        .get("m.relations")
        .is_none());

    let reply = thread_reply(&alice, &room_id, &root, "in thread").await;
    let edited = edit(&alice, &room_id, &root, "root, edited").await;
    let bundled = event(&bob, &room_id, &root).await;
    assert_eq!(
        bundled["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"], reply,
        "{bundled}"
    );
    assert_eq!(
        bundled["unsigned"]["m.relations"]["m.replace"]["event_id"], edited,
        "{bundled}"
    );
    // An initial sync serves the root with the same bundle.
    let answer = bob.sync("").await;
    let timeline = &answer["rooms"]["join"][&room_id]["timeline"]["events"];
    let served = timeline
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == root.as_str()))
        .unwrap_or_else(|| panic!("the root in bob's initial sync: {answer}"));
    assert_eq!(
        served["unsigned"]["m.relations"]["m.thread"]["count"], 1,
        "{served}"
    );
    let (status, page) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
            enc(&room_id)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let served = page["chunk"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == root.as_str()))
        .unwrap_or_else(|| panic!("the root in /messages: {page}"));
    assert_eq!(
        served["unsigned"]["m.relations"]["m.replace"]["event_id"], edited,
        "{served}"
    );
}
