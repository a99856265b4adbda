//! Garbage to every route of the route table: malformed path parameters,
//! bodies and query strings, with and without a token. Nothing may answer a
//! 5xx, and every error must be Matrix JSON (the client checks that on every
//! answer). The routes are read from `src/api/client.rs` itself, so a new
//! route is fuzzed without anyone remembering to add it here.
//!
//! Two tests: a fixed sweep of known-bad inputs over every route, and a
//! seeded random one (`generate`) whose bodies, path parameters and query
//! strings follow the spec's schemas with boundary values mixed in. The
//! random one runs alone in a process of its own (`watch`) and also fails on
//! any panic or ERROR the servers log, and on any answer (2xx or error) that
//! does not match the spec's schema for it. `LATTICE_FUZZ_SEED` and
//! `LATTICE_FUZZ_CASES` choose its seed and number of requests.

mod generate;
mod watch;

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};
use crate::spec;

const ROUTE_TABLE: &str = include_str!("../../src/api/client.rs");

/// One route: a method and a path pattern with actix `{name}` parameters.
#[derive(Debug, Clone)]
struct Route {
    method: Method,
    pattern: String,
}

/// The routes of `src/api/client.rs` (`resource("path").route(web::get()...)`):
/// those in `configure` are absolute, those in `fn routes` are under
/// `/_matrix/client/v3` (and `r0`), those in `fn v1_routes` under `/v1`.
fn route_table() -> Vec<Route> {
    let (absolute, scoped) = ROUTE_TABLE
        .split_once("fn routes(")
        .expect("src/api/client.rs has `fn routes(`");
    let (scoped, v1) = scoped
        .split_once("fn v1_routes(")
        .expect("src/api/client.rs has `fn v1_routes(`");
    let mut routes = parse_routes(absolute, "");
    routes.extend(parse_routes(scoped, "/_matrix/client/v3"));
    routes.extend(parse_routes(v1, "/_matrix/client/v1"));
    routes
}

fn parse_routes(source: &str, prefix: &str) -> Vec<Route> {
    let mut routes = Vec::new();
    for chunk in source.split("resource(\"").skip(1) {
        let Some((path, rest)) = chunk.split_once('"') else {
            continue;
        };
        let methods: Vec<Method> = rest
            .split("web::")
            .skip(1)
            .filter_map(|call| match call.split("()").next() {
                Some("get") => Some(Method::GET),
                Some("post") => Some(Method::POST),
                Some("put") => Some(Method::PUT),
                Some("delete") => Some(Method::DELETE),
                _ => None,
            })
            .collect();
        assert!(!methods.is_empty(), "no method for the route {path}");
        for method in methods {
            routes.push(Route {
                method,
                pattern: format!("{prefix}{path}"),
            });
        }
    }
    routes
}

/// The parameter names of a pattern, in order (`{state_key:.*}` is `state_key`).
fn parameters(pattern: &str) -> Vec<String> {
    pattern
        .split('{')
        .skip(1)
        .filter_map(|p| p.split('}').next())
        .map(|p| p.split(':').next().unwrap_or(p).to_owned())
        .collect()
}

/// Fills the pattern's parameters, already encoded.
fn fill(pattern: &str, values: &[(String, String)]) -> String {
    let mut path = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .unwrap_or(rest.len());
        let name = rest[open + 1..close].split(':').next().unwrap_or_default();
        let value = values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("x");
        path.push_str(value);
        rest = &rest[(close + 1).min(rest.len())..];
    }
    path.push_str(rest);
    path
}

/// Sensible, existing values for every parameter name the table uses.
struct World {
    alice: User,
    room_id: String,
    event_id: String,
    alias: String,
    filter_id: String,
}

impl World {
    fn valid(&self, name: &str) -> String {
        match name {
            "room_id" => enc(&self.room_id),
            "room_id_or_alias" => enc(&self.alias),
            "room_alias" => enc(&self.alias),
            "user_id" => enc(&self.alice.user_id),
            "event_id" => enc(&self.event_id),
            "event_type" => "m.room.message".into(),
            "state_key" => enc(&self.alice.user_id),
            "txn_id" => format!("fuzz{}", rand::random::<u32>()),
            "field" => "displayname".into(),
            "filter_id" => self.filter_id.clone(),
            "kind" => "underride".into(),
            "rule_id" => ".m.rule.message".into(),
            "receipt_type" => "m.read".into(),
            "type" => "org.example.fuzz".into(),
            "tag" => "u.fuzz".into(),
            "rel_type" => "m.thread".into(),
            "device_id" => enc(&self.alice.device_id),
            "version" => "1".into(),
            "session_id" => "fuzzsession".into(),
            other => panic!("the fuzzer does not know the parameter `{other}`: add it"),
        }
    }
}

/// Path segments a client could send, already in their on-the-wire form.
fn garbage_segments() -> Vec<String> {
    vec![
        "garbage".into(),
        "%00".into(),
        "%ZZ".into(),
        "%F0%9F%A6%80".into(),
        enc("!unknown:lattice.test"),
        enc("@nobody:lattice.test"),
        enc("#nowhere:lattice.test"),
        enc("$unknown"),
        enc("!"),
        enc("@"),
        enc("#"),
        enc("$"),
        "..".into(),
        "-1".into(),
        "99999999999999999999999".into(),
        "x".repeat(5000),
        enc("'; DROP TABLE events; --"),
        enc("\n\t\"\\"),
    ]
}

fn garbage_bodies() -> Vec<Vec<u8>> {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(5000), "}".repeat(5000));
    vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"not json".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"string\"".to_vec(),
        b"12345678901234567890123456789".to_vec(),
        b"1e999".to_vec(),
        b"{\"a\":1}{\"b\":2}".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        deep.into_bytes(),
        deep_object.into_bytes(),
        json!({
            "user_id": [], "room_id": {}, "reason": 5, "visibility": null,
            "invite": [1, 2], "initial_state": "x", "preset": 3, "type": {},
            "identifier": "x", "password": 1, "username": {}, "auth": [],
            "filter": "x", "limit": -1, "since": 3, "displayname": [],
            "avatar_url": {}, "membership": 5, "alias": 1, "body": null,
            "room_version": 12, "power_level_content_override": [],
            "creation_content": "x", "is_direct": "yes", "inhibit_login": "no",
            "device_id": 7, "name": {}, "topic": [], "room": [], "presence": 1,
            "thread_id": 5, "m.fully_read": [], "m.read": {}, "m.read.private": 1,
        })
        .to_string()
        .into_bytes(),
        json!({ "text": "\u{0000}", "\u{0000}": "key" })
            .to_string()
            .into_bytes(),
        json!({ "text": "\u{ffff}\u{10ffff}", "float": 1.5, "nested": { "deep": [null, true] } })
            .to_string()
            .into_bytes(),
    ]
}

fn garbage_queries() -> Vec<&'static str> {
    vec![
        "?limit=-1&from=%ZZ&dir=sideways&filter=%7B&since=x&timeout=-1&at=&full_state=2",
        "?limit=99999999999999999999&from=s-1&to=t1-&dir=f&timeout=99999999999999999999",
        "?limit=1&limit=2&since=s1&since=s2",
        "?kind=robot&username=&server=%00&format=bogus&membership=&not_membership=",
        "?filter=%5B%5D&set_presence=away&access_token=",
        "?from=m1~&to=m1~0.0~0.1&since=s1_2_3_4_5_6_7_8_9",
    ]
}

/// Destructive routes go last, so the rest is fuzzed with a member and a token.
fn destructiveness(route: &Route) -> u8 {
    let p = &route.pattern;
    if p.ends_with("/logout") || p.ends_with("/logout/all") {
        3
    } else if ["/leave", "/forget", "/kick", "/ban", "/unban"]
        .iter()
        .any(|s| p.ends_with(s))
        || route.method == Method::DELETE
    {
        2
    } else {
        0
    }
}

/// Sends one request with Alice's token, without one and with a forged one;
/// records every answer that is a 5xx, not JSON, or not what the spec allows.
async fn probe(
    problems: &mut Vec<String>,
    user: &User,
    method: &Method,
    path: &str,
    body: Option<Vec<u8>>,
) {
    for token in [Some(user.access_token.as_str()), None, Some("lat_forged")] {
        let (status, _, bytes) = user
            .client
            .request_bytes(method.clone(), path, token, body.clone())
            .await;
        let shown_body = body
            .as_deref()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(60)]).into_owned());
        let request = format!(
            "{method} {} (token {}, body {shown_body:?})",
            &path[..path.len().min(200)],
            if token.is_some() { "yes" } else { "no" },
        );
        if status.is_server_error() {
            problems.push(format!(
                "{request} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
            continue;
        }
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(value) => value,
                Err(_) => {
                    problems.push(format!(
                        "{request} answered {status} with a body that is not JSON"
                    ));
                    continue;
                }
            }
        };
        for problem in spec::response_problems(method.as_str(), path, status.as_u16(), &value) {
            problems.push(format!("{request}: {problem}"));
        }
    }
}

#[actix_web::test]
async fn no_input_produces_a_server_error() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": "fuzz" }))
        .await;
    let event_id = alice.send_text(&room_id, "fuzz me").await;
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let world = World {
        alice: alice.clone(),
        room_id,
        event_id,
        alias: "#fuzz:lattice.test".into(),
        filter_id: body["filter_id"].as_str().unwrap_or_default().to_owned(),
    };

    let mut routes = route_table();
    assert!(routes.len() >= 45, "the route table parsed to {routes:?}");
    routes.sort_by_key(destructiveness);
    let has_body = |m: &Method| *m == Method::POST || *m == Method::PUT;
    let mut problems = Vec::new();

    for route in &routes {
        let names = parameters(&route.pattern);
        let valid: Vec<(String, String)> =
            names.iter().map(|n| (n.clone(), world.valid(n))).collect();
        let path = fill(&route.pattern, &valid);

        // Garbage in each parameter, the others valid.
        for name in &names {
            for segment in garbage_segments() {
                let values: Vec<(String, String)> = valid
                    .iter()
                    .map(|(n, v)| {
                        let v = if n == name {
                            segment.clone()
                        } else {
                            v.clone()
                        };
                        (n.clone(), v)
                    })
                    .collect();
                let body = has_body(&route.method).then(|| b"{}".to_vec());
                let garbled = fill(&route.pattern, &values);
                probe(&mut problems, &world.alice, &route.method, &garbled, body).await;
            }
        }
        // Garbage bodies, each with a fresh transaction id so none is
        // answered from an earlier send.
        if has_body(&route.method) {
            for body in garbage_bodies() {
                let fresh: Vec<(String, String)> =
                    names.iter().map(|n| (n.clone(), world.valid(n))).collect();
                let path = fill(&route.pattern, &fresh);
                probe(
                    &mut problems,
                    &world.alice,
                    &route.method,
                    &path,
                    Some(body),
                )
                .await;
            }
        }
        // Garbage query strings.
        for query in garbage_queries() {
            let body = has_body(&route.method).then(|| b"{}".to_vec());
            probe(
                &mut problems,
                &world.alice,
                &route.method,
                &format!("{path}{query}"),
                body,
            )
            .await;
        }
        // The legacy prefix and the other methods on the same path.
        let legacy = path.replacen("/_matrix/client/v3/", "/_matrix/client/r0/", 1);
        probe(&mut problems, &world.alice, &route.method, &legacy, None).await;
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            probe(
                &mut problems,
                &world.alice,
                &method,
                &path,
                Some(b"{}".to_vec()),
            )
            .await;
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{} bad answers to garbage:\n{}",
        problems.len(),
        problems
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The seed when `LATTICE_FUZZ_SEED` does not give one: `make test` runs the
/// same requests every time; exploring is a matter of another seed.
const DEFAULT_SEED: u64 = 0x1a77_1ce5;
/// Requests per run when `LATTICE_FUZZ_CASES` does not say: about twenty per
/// route, well under a minute on a small machine.
const DEFAULT_CASES: usize = 1200;
/// The longest `timeout` a case gives a long-poll, in milliseconds.
const MAX_LONG_POLL_MS: u64 = 2000;
/// Cases between two fresh rooms, so that a random power-level change or a
/// leave does not lock the rest of the run out.
const CASES_PER_ROOM: usize = 100;

/// A value cut to a length a URL can carry: the test client cannot send a
/// URL over 64 KiB (`http::Uri`), which says nothing of the server.
fn url_part(value: String) -> String {
    value.chars().take(4000).collect()
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {text:?}")),
        Err(_) => default,
    }
}

/// A room to act in, with an event in it and a second member.
async fn fresh_room(alice: &User, bob: &User, n: usize) -> (String, String, String) {
    let alias_name = format!("fuzz{n}");
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": alias_name }))
        .await;
    bob.join(&room_id).await;
    let event_id = alice.send_text(&room_id, "fuzz me").await;
    (room_id, event_id, format!("#{alias_name}:lattice.test"))
}

#[actix_web::test]
async fn random_requests_to_every_endpoint() {
    if !watch::is_child() {
        watch::run_in_child("fuzz::random_requests_to_every_endpoint");
        return;
    }
    let watch = watch::Watch::install();
    let seed = env_number("LATTICE_FUZZ_SEED", DEFAULT_SEED);
    let cases = env_number("LATTICE_FUZZ_CASES", DEFAULT_CASES);
    let topology = std::env::var("LATTICE_TEST_TOPOLOGY").unwrap_or_else(|_| "monolith".into());
    println!(
        "fuzz: seed {seed}, {cases} cases on the {topology} \
         (LATTICE_FUZZ_SEED={seed} LATTICE_FUZZ_CASES={cases} repeats this run)"
    );
    let mut generator = generate::Generator::new(seed);

    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    client.register("carol").await;
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
            json!({ "room": { "timeline": { "limit": 3 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let filter_id = body["filter_id"].as_str().unwrap_or_default().to_owned();
    let (mut room_id, mut event_id, mut alias) = fresh_room(&alice, &bob, 0).await;
    let next_batch = alice.sync("").await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let routes: Vec<Route> = route_table()
        .into_iter()
        .filter(|r| !r.pattern.starts_with("/_matrix/client/r0"))
        .collect();
    let mut problems: Vec<String> = Vec::new();
    // Answers by status class, to show how many requests got past parsing.
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let started = std::time::Instant::now();
    for case in 0..cases {
        if case > 0 && case % CASES_PER_ROOM == 0 {
            (room_id, event_id, alias) = fresh_room(&alice, &bob, case).await;
        }
        let route = &routes[generator.index(routes.len())];
        let user_ids = [
            alice.user_id.clone(),
            bob.user_id.clone(),
            "@carol:lattice.test".into(),
        ];
        let hint = |name: &str| -> Option<String> {
            Some(match name {
                "mx-user-id" | "user_id" | "userId" => user_ids[case % 3].clone(),
                "mx-room-id" | "room_id" | "roomId" => room_id.clone(),
                "mx-event-id" | "event_id" | "eventId" => event_id.clone(),
                "mx-room-alias" | "room_alias" | "roomAlias" | "alias" => alias.clone(),
                "room_id_or_alias" | "roomIdOrAlias" => alias.clone(),
                "room_alias_name" => format!("a{case}"),
                "event_type" | "eventType" => "m.room.message".into(),
                "state_key" | "stateKey" => alice.user_id.clone(),
                "txn_id" | "txnId" => format!("fuzz{case}"),
                "field" | "keyName" => "displayname".into(),
                "filter_id" | "filterId" => filter_id.clone(),
                "kind" => "override".into(),
                "rule_id" | "ruleId" => ".m.rule.master".into(),
                "from" | "to" | "since" => next_batch.clone(),
                "password" => crate::cluster::PASSWORD.into(),
                "username" | "user" => format!("user{case}"),
                "msgtype" => "m.text".into(),
                "mx-mxc-uri" | "avatar_url" => "mxc://lattice.test/avatar".into(),
                _ => return None,
            })
        };

        // Path parameters: mostly ones that exist.
        let values: Vec<(String, String)> = parameters(&route.pattern)
            .into_iter()
            .map(|name| {
                let value = match hint(&name) {
                    Some(valid) if generator.chance(0.75) => enc(&valid),
                    _ if generator.chance(0.5) => generator.pick(&garbage_segments()),
                    _ => enc(&url_part(generator.boundary_string())),
                };
                (name, value)
            })
            .collect();
        let mut path = fill(&route.pattern, &values);
        let valid_path = fill(
            &route.pattern,
            &parameters(&route.pattern)
                .into_iter()
                .map(|n| {
                    let v = hint(&n).unwrap_or_default();
                    (n, enc(&v))
                })
                .collect::<Vec<_>>(),
        );
        let operation = spec::template_for(route.method.as_str(), &valid_path)
            .and_then(|template| spec::operation(route.method.as_str(), &template));

        // Query parameters the spec documents for the route, and sometimes others.
        let mut query = Vec::new();
        let documented: Vec<Value> = operation
            .as_ref()
            .and_then(|op| op.get("parameters"))
            .and_then(Value::as_array)
            .map(|p| p.iter().filter(|p| p["in"] == "query").cloned().collect())
            .unwrap_or_default();
        for parameter in &documented {
            if !generator.chance(0.5) {
                continue;
            }
            let name = parameter["name"].as_str().unwrap_or_default();
            let value = if generator.chance(0.6) {
                match generator.value(&parameter["schema"], name, &hint, 0.0, 0) {
                    Value::String(text) => text,
                    other => other.to_string(),
                }
            } else if name == "filter" && generator.chance(0.5) {
                let filter_schema = json!({ "type": "object", "properties": {
                    "limit": { "type": "integer" }, "types": { "type": "array", "items": { "type": "string" } },
                    "not_types": { "type": "array", "items": { "type": "string" } },
                    "senders": { "type": "array", "items": { "type": "string", "format": "mx-user-id" } },
                    "contains_url": { "type": "boolean" }, "lazy_load_members": { "type": "boolean" },
                    "room": { "type": "object" } } });
                generator
                    .value(&filter_schema, "filter", &hint, 0.2, 0)
                    .to_string()
            } else {
                generator.boundary_string()
            };
            // A long-poll with nothing new waits for its whole timeout (up to
            // five minutes), longer than the test client waits for an answer.
            let value = match (name, value.parse::<u64>()) {
                ("timeout", Ok(ms)) if ms > MAX_LONG_POLL_MS => MAX_LONG_POLL_MS.to_string(),
                _ => value,
            };
            query.push(format!("{name}={}", enc(&url_part(value))));
        }
        if generator.chance(0.1) {
            query.push(
                generator
                    .pick(&garbage_queries())
                    .trim_start_matches('?')
                    .to_owned(),
            );
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }

        // The body: from the spec's schema, mutated or not, or raw bytes.
        let has_body = route.method == Method::POST || route.method == Method::PUT;
        let schema = operation
            .as_ref()
            .and_then(|op| op.pointer("/requestBody/content/application~1json/schema"))
            .cloned();
        let body = match (&schema, has_body) {
            (_, false) if !generator.chance(0.1) => None,
            (Some(schema), true) if generator.chance(0.8) => {
                let mutate = if generator.chance(0.4) { 0.0 } else { 0.15 };
                Some(
                    generator
                        .value(schema, "", &hint, mutate, 0)
                        .to_string()
                        .into_bytes(),
                )
            }
            _ => Some(generator.raw_body()),
        };

        // Logging out is done with a session of its own.
        let logs_out = route.pattern.contains("/logout");
        let session_token = if logs_out {
            Some(client.login("carol").await.access_token)
        } else {
            None
        };
        let token = match generator.index(20) {
            0 => None,
            1 => Some("lat_forged".to_owned()),
            _ => session_token.or_else(|| Some(alice.access_token.clone())),
        };
        let request = format!(
            "case {case}: {} {} (token {}, body {:?})",
            route.method,
            &path[..path.len().min(300)],
            match token.as_deref() {
                None => "none",
                Some("lat_forged") => "forged",
                Some(_) => "valid",
            },
            body.as_deref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
        );
        let answer = client
            .try_request_bytes(route.method.clone(), &path, token.as_deref(), body)
            .await;
        let (status, _, bytes) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                problems.push(format!("{request}: no answer: {error}"));
                continue;
            }
        };
        *statuses.entry(status.as_u16()).or_default() += 1;
        let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
        if status.is_server_error() {
            problems.push(format!("{request}: answered {status}: {}", shown()));
            continue;
        }
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(value) => value,
                Err(_) => {
                    problems.push(format!(
                        "{request}: answered {status}, not JSON: {}",
                        shown()
                    ));
                    continue;
                }
            }
        };
        for problem in
            spec::response_problems(route.method.as_str(), &path, status.as_u16(), &value)
        {
            problems.push(format!("{request}: {problem}"));
        }
    }
    println!(
        "fuzz: {cases} cases in {:.1}s, answers by status: {statuses:?}",
        started.elapsed().as_secs_f64()
    );
    let logged = watch.records();
    assert!(
        problems.is_empty() && logged.is_empty(),
        "seed {seed}: {} bad answers, {} panics or errors logged \
         (LATTICE_FUZZ_SEED={seed} LATTICE_FUZZ_CASES={cases} repeats this run)\n{}\n{}",
        problems.len(),
        logged.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        logged
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    );
}
