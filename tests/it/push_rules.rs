//! Push rules: `GET /pushrules/...`, `PUT`/`DELETE` of a user's rules
//! with `before`/`after`, `.../enabled` and `.../actions`, and the
//! `m.push_rules` account data event of `/sync`. On the split, the
//! `push_rules` stream has two writers on instances other than the one
//! requests arrive at, and `/sync` is served by a third.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};

const RULES: &str = "/_matrix/client/v3/pushrules/global";

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("next_batch in {sync}"))
        .to_owned()
}

/// The `m.push_rules` content of a sync's global account data, if any.
fn push_rules_event(sync: &Value) -> Option<Value> {
    sync["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .map(|e| e["content"].clone())
}

/// The rule ids of `kind` in a ruleset, in order.
fn ids(ruleset: &Value, kind: &str) -> Vec<String> {
    ruleset[kind]
        .as_array()
        .unwrap_or_else(|| panic!("{kind} in {ruleset}"))
        .iter()
        .map(|rule| rule["rule_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn global(user: &User) -> Value {
    let (status, body) = user.get(&format!("{RULES}/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn put_rule(
    user: &User,
    kind: &str,
    rule_id: &str,
    query: &str,
    body: Value,
) -> (StatusCode, Value) {
    user.put(&format!("{RULES}/{kind}/{}{query}", enc(rule_id)), body)
        .await
}

async fn put_ok(user: &User, kind: &str, rule_id: &str, query: &str, body: Value) {
    let (status, answer) = put_rule(user, kind, rule_id, query, body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "PUT {kind}/{rule_id}{query}: {answer}"
    );
    assert_eq!(answer, json!({}));
}

fn errcode(answer: &Value) -> &str {
    answer["errcode"].as_str().unwrap_or_default()
}

#[actix_web::test]
async fn every_user_starts_with_the_server_defaults() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let (status, all) = alice.get("/_matrix/client/v3/pushrules/").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let ruleset = &all["global"];
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(ruleset[kind].is_array(), "{kind} in {ruleset}");
    }
    assert_eq!(ids(ruleset, "override")[0], ".m.rule.master");
    assert!(ids(ruleset, "underride").contains(&".m.rule.message".to_owned()));
    assert_eq!(global(&alice).await, *ruleset);

    let (status, rule) = alice.get(&format!("{RULES}/override/.m.rule.master")).await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(rule["enabled"], false);
    assert_eq!(rule["default"], true);
}

#[actix_web::test]
async fn a_rule_is_put_placed_read_and_deleted() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let since = next_batch(&alice.sync("timeout=0").await);

    put_ok(
        &alice,
        "content",
        "cake",
        "",
        json!({ "pattern": "cake*lie", "actions": ["notify"] }),
    )
    .await;
    let (status, rule) = alice.get(&format!("{RULES}/content/cake")).await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(
        rule,
        json!({ "rule_id": "cake", "pattern": "cake*lie", "actions": ["notify"], "enabled": true, "default": false })
    );

    // Placement among the user's own override rules.
    let body = json!({ "conditions": [{ "kind": "event_match", "key": "type", "pattern": "m.x" }], "actions": [] });
    put_ok(&alice, "override", "a", "", body.clone()).await;
    put_ok(&alice, "override", "b", "", body.clone()).await;
    put_ok(&alice, "override", "c", "?after=b", body.clone()).await;
    put_ok(&alice, "override", "d", "?before=a", body.clone()).await;
    let overrides = ids(&global(&alice).await, "override");
    assert_eq!(
        &overrides[..5],
        [".m.rule.master", "b", "c", "d", "a"],
        "{overrides:?}"
    );
    assert_eq!(overrides[5], ".m.rule.suppress_notices");

    // A PUT of an existing rule without placement keeps its place.
    put_ok(
        &alice,
        "override",
        "c",
        "",
        json!({ "conditions": [], "actions": ["notify"] }),
    )
    .await;
    let ruleset = global(&alice).await;
    assert_eq!(
        &ids(&ruleset, "override")[..5],
        [".m.rule.master", "b", "c", "d", "a"]
    );
    assert_eq!(ruleset["override"][2]["actions"], json!(["notify"]));

    // enabled and actions, of a rule of one's own and of a default one.
    let (status, answer) = alice
        .put(
            &format!("{RULES}/override/c/enabled"),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    let (status, answer) = alice.get(&format!("{RULES}/override/c/enabled")).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({ "enabled": false }))
    );
    let (status, answer) = alice
        .put(
            &format!("{RULES}/underride/.m.rule.message/enabled"),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    let (_, answer) = alice
        .get(&format!("{RULES}/underride/.m.rule.message/enabled"))
        .await;
    assert_eq!(answer, json!({ "enabled": false }));
    let actions = json!(["notify", { "set_tweak": "sound", "value": "bing" }]);
    let (status, answer) = alice
        .put(
            &format!("{RULES}/content/cake/actions"),
            json!({ "actions": actions }),
        )
        .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    let (_, answer) = alice.get(&format!("{RULES}/content/cake/actions")).await;
    assert_eq!(answer, json!({ "actions": actions }));
    let (status, _) = alice
        .put(
            &format!("{RULES}/override/.m.rule.reaction/actions"),
            json!({ "actions": ["notify"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, answer) = alice
        .get(&format!("{RULES}/override/.m.rule.reaction/actions"))
        .await;
    assert_eq!(answer, json!({ "actions": ["notify"] }));

    // Delete.
    let (status, answer) = alice.delete(&format!("{RULES}/override/d")).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    let (status, answer) = alice.get(&format!("{RULES}/override/d")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(errcode(&answer), "M_NOT_FOUND");
    let ruleset = global(&alice).await;
    assert_eq!(
        &ids(&ruleset, "override")[..4],
        [".m.rule.master", "b", "c", "a"]
    );

    // Sender and room rules take the ids they are about.
    put_ok(
        &alice,
        "sender",
        "@bob:localhost",
        "",
        json!({ "actions": [] }),
    )
    .await;
    let (status, answer) =
        put_rule(&alice, "room", "not-a-room", "", json!({ "actions": [] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // The changes reach /sync: the whole ruleset, as GET shows it.
    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    let event = push_rules_event(&sync).unwrap_or_else(|| panic!("m.push_rules in {sync}"));
    assert_eq!(event["global"], global(&alice).await);
    // Not again without a change; always on an initial sync.
    let again = alice
        .sync(&format!("since={}&timeout=0", enc(&next_batch(&sync))))
        .await;
    assert_eq!(push_rules_event(&again), None, "{again}");
    let initial = alice.sync("timeout=0").await;
    assert_eq!(
        push_rules_event(&initial).map(|e| e["global"].clone()),
        Some(global(&alice).await)
    );
    // Nobody else's rules changed.
    let bob = cluster.client().register("bob").await;
    assert_eq!(
        ids(&global(&bob).await, "override")[1],
        ".m.rule.suppress_notices"
    );
}

#[actix_web::test]
async fn a_change_wakes_the_users_long_poll() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let since = next_batch(&alice.sync("timeout=0").await);
    let poll = {
        let alice = alice.clone();
        let since = since.clone();
        actix_web::rt::spawn(async move {
            alice
                .sync(&format!("since={}&timeout=20000", enc(&since)))
                .await
        })
    };
    cluster
        .wait_for_long_poll(if cluster.is_split() { "sync2" } else { "main" })
        .await;
    put_ok(
        &alice,
        "room",
        "!room:localhost",
        "",
        json!({ "actions": ["notify"] }),
    )
    .await;
    let sync = poll.await.expect("the long-poll answers");
    let event = push_rules_event(&sync).unwrap_or_else(|| panic!("m.push_rules in {sync}"));
    assert_eq!(ids(&event["global"], "room"), ["!room:localhost"]);
}

#[actix_web::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let body = json!({ "conditions": [], "actions": ["notify"] });
    put_ok(&alice, "override", "mine", "", body.clone()).await;
    let before = global(&alice).await;
    let since = next_batch(&alice.sync("timeout=0").await);

    let cases: Vec<(&str, String, Value, StatusCode, &str)> = vec![
        // A rule id with a slash or a backslash.
        (
            "PUT",
            format!("{RULES}/override/{}", enc("a/b")),
            body.clone(),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            "PUT",
            format!("{RULES}/override/{}", enc("a\\b")),
            body.clone(),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        // After or before a rule that does not exist (the spec's 400 M_UNKNOWN).
        (
            "PUT",
            format!("{RULES}/override/new?after=missing"),
            body.clone(),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            "PUT",
            format!("{RULES}/override/new?before=missing"),
            body.clone(),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        // Relative to a server-default rule.
        (
            "PUT",
            format!("{RULES}/override/new?after=.m.rule.master"),
            body.clone(),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        // A new rule with a server-default id.
        (
            "PUT",
            format!("{RULES}/override/.m.rule.mine"),
            body.clone(),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        // Unknown kind.
        (
            "PUT",
            format!("{RULES}/sideways/new"),
            body.clone(),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            "GET",
            format!("{RULES}/sideways/new"),
            Value::Null,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        // Bad bodies.
        (
            "PUT",
            format!("{RULES}/override/new"),
            json!({ "conditions": [] }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "PUT",
            format!("{RULES}/override/new"),
            json!({ "actions": ["explode"] }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "PUT",
            format!("{RULES}/content/new"),
            json!({ "actions": [] }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "PUT",
            format!("{RULES}/override/new"),
            json!([1]),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "PUT",
            format!("{RULES}/override/mine/enabled"),
            json!({ "enabled": "yes" }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            "PUT",
            format!("{RULES}/override/mine/actions"),
            json!({ "actions": "notify" }),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        // Default rules cannot be deleted; missing rules are not found.
        (
            "DELETE",
            format!("{RULES}/override/.m.rule.master"),
            Value::Null,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            "DELETE",
            format!("{RULES}/override/missing"),
            Value::Null,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            "PUT",
            format!("{RULES}/override/missing/enabled"),
            json!({ "enabled": true }),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            "PUT",
            format!("{RULES}/override/missing/actions"),
            json!({ "actions": [] }),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            "GET",
            format!("{RULES}/override/missing/actions"),
            Value::Null,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (seen, answer) = match method {
            "PUT" => alice.put(&path, body).await,
            "DELETE" => alice.delete(&path).await,
            _ => alice.get(&path).await,
        };
        assert_eq!(
            (seen, errcode(&answer)),
            (status, code),
            "{method} {path}: {answer}"
        );
    }
    let (status, answer) = alice
        .client
        .raw(
            Method::PUT,
            &format!("{RULES}/override/new"),
            Some(&alice.access_token),
            b"not json".to_vec(),
        )
        .await;
    assert_eq!(
        (status, errcode(&answer)),
        (StatusCode::BAD_REQUEST, "M_NOT_JSON"),
        "{answer}"
    );

    assert_eq!(global(&alice).await, before);
    let sync = alice
        .sync(&format!("since={}&timeout=0", enc(&since)))
        .await;
    assert_eq!(push_rules_event(&sync), None, "{sync}");
}
