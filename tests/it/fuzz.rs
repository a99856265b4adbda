//! Garbage to every route of the route table: malformed path parameters,
//! bodies and query strings, with and without a token. Nothing may answer a
//! 5xx, and every error must be Matrix JSON (the client checks that on every
//! answer). The routes are read from `src/api/client.rs` itself, so a new
//! route is fuzzed without anyone remembering to add it here.

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
/// `/_matrix/client/v3` (and `r0`).
fn route_table() -> Vec<Route> {
    let (absolute, scoped) = ROUTE_TABLE
        .split_once("fn routes(")
        .expect("src/api/client.rs has `fn routes(`");
    let mut routes = parse_routes(absolute, "");
    routes.extend(parse_routes(scoped, "/_matrix/client/v3"));
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
