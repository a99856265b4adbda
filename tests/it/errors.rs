//! Errors every endpoint shares: bodies that are not JSON or have the wrong
//! shape, unknown endpoints, tokens, size limits, rate limits and CORS.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cluster::{enc, Options, TestCluster};

#[actix_web::test]
async fn bodies_that_are_not_json() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let token = Some(alice.access_token.as_str());
    let targets = [
        (Method::POST, "/_matrix/client/v3/createRoom".to_owned()),
        (Method::POST, "/_matrix/client/v3/login".to_owned()),
        (Method::POST, "/_matrix/client/v3/register".to_owned()),
        (
            Method::PUT,
            format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room_id)
            ),
        ),
        (
            Method::PUT,
            format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic",
                enc(&room_id)
            ),
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
        ),
    ];
    for (method, path) in &targets {
        for body in [
            &b"{\"name\":"[..],
            b"not json",
            b"{'single': 'quotes'}",
            b"\xff\xfe",
        ] {
            let (status, response) = client.raw(method.clone(), path, token, body.to_vec()).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{method} {path} {:?}: {response}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(response["errcode"], "M_NOT_JSON", "{method} {path}");
        }
    }
}

#[actix_web::test]
async fn json_of_the_wrong_shape() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let cases = [
        (
            "/_matrix/client/v3/createRoom".to_owned(),
            json!({ "invite": "x" }),
        ),
        ("/_matrix/client/v3/createRoom".to_owned(), json!([])),
        ("/_matrix/client/v3/createRoom".to_owned(), json!("room")),
        (
            "/_matrix/client/v3/createRoom".to_owned(),
            json!({ "is_direct": "yes" }),
        ),
        (
            "/_matrix/client/v3/login".to_owned(),
            json!({ "user": "alice" }),
        ),
        ("/_matrix/client/v3/login".to_owned(), json!({ "type": 1 })),
        (
            "/_matrix/client/v3/register".to_owned(),
            json!({ "username": ["alice"] }),
        ),
        (
            format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
            json!({ "user_id": 5 }),
        ),
        (
            format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
            json!({ "reason": "no user" }),
        ),
        (
            format!("/_matrix/client/v3/rooms/{}/join", enc(&room_id)),
            json!({ "reason": false }),
        ),
    ];
    for (path, body) in cases {
        let (status, response) = alice.post(&path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {response}");
        assert_eq!(response["errcode"], "M_BAD_JSON", "{path} {body}");
    }
}

#[actix_web::test]
async fn a_missing_body_is_not_json_where_the_endpoint_needs_one() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let room = enc(&room_id);
    let token = Some(alice.access_token.as_str());
    let before = alice.messages(&room_id, "dir=b&limit=100").await;

    let needs_a_body = [
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/bodiless"),
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
        ),
        (Method::POST, "/_matrix/client/v3/createRoom".to_owned()),
        (Method::POST, "/_matrix/client/v3/login".to_owned()),
        (Method::POST, "/_matrix/client/v3/register".to_owned()),
        (
            Method::POST,
            format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/rooms/{room}/invite"),
        ),
        (
            Method::PUT,
            format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&alice.user_id)
            ),
        ),
    ];
    for (method, path) in &needs_a_body {
        let (status, body) = client.request(method.clone(), path, token, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert_eq!(body["errcode"], "M_NOT_JSON", "{method} {path}: {body}");
        // Authentication is answered first, whatever the body.
        if !path.ends_with("/login") && !path.ends_with("/register") {
            for bad_body in [None, Some(b"not json".to_vec())] {
                let (status, body) = client
                    .request(method.clone(), path, Some("lat_forged"), bad_body)
                    .await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
                assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{method} {path}");
            }
        }
    }
    let after = alice.messages(&room_id, "dir=b&limit=100").await;
    let ids = |page: &Value| -> Vec<Value> {
        let chunk = page["chunk"].as_array().expect("chunk");
        chunk.iter().map(|e| e["event_id"].clone()).collect()
    };
    assert_eq!(ids(&after), ids(&before), "nothing was sent: {after}");

    // Joining and leaving need nothing from a body: it may be left out
    // (an empty one only: whitespace is not JSON).
    let bob_token = Some(bob.access_token.as_str());
    let join = format!("/_matrix/client/v3/join/{room}");
    let (status, body) = client
        .raw(Method::POST, &join, bob_token, b" ".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_NOT_JSON", "{body}");
    for path in [
        join.clone(),
        format!("/_matrix/client/v3/rooms/{room}/leave"),
        format!("/_matrix/client/v3/rooms/{room}/join"),
    ] {
        let (status, body) = client.request(Method::POST, &path, bob_token, None).await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {body}");
    }
    let (status, members) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"))
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"].get(&bob.user_id).is_some(), "{members}");
}

#[actix_web::test]
async fn unknown_endpoints_are_unrecognized() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    for (method, path) in [
        (Method::GET, "/_matrix/client/v3/nonexistent"),
        (Method::POST, "/_matrix/client/v3/rooms"),
        (Method::GET, "/_matrix/client/v9/versions"),
        (Method::GET, "/_matrix/nothing"),
        (Method::GET, "/"),
        (Method::DELETE, "/_matrix/client/unstable/org.example/thing"),
    ] {
        for token in [None, Some(alice.access_token.as_str())] {
            let (status, body) = client.request(method.clone(), path, token, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{method} {path}");
        }
    }
}

#[actix_web::test]
async fn a_known_endpoint_with_another_method_is_405() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    for (method, path) in [
        (Method::DELETE, "/_matrix/client/v3/login"),
        (Method::GET, "/_matrix/client/v3/createRoom"),
        (Method::PUT, "/_matrix/client/r0/sync"),
        (Method::POST, "/_matrix/client/versions"),
        (
            Method::PATCH,
            "/_matrix/client/v3/rooms/!r:lattice.test/state/m.room.name/",
        ),
    ] {
        let (status, body) = client
            .request(method.clone(), path, Some(&alice.access_token), None)
            .await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{method} {path}");
    }
    // CORS preflights still succeed on every path.
    let (status, _, _) = client
        .request_bytes(Method::OPTIONS, "/_matrix/client/v3/createRoom", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn tokens_missing_unknown_or_malformed() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let endpoints = [
        (Method::GET, "/_matrix/client/v3/account/whoami".to_owned()),
        (Method::GET, "/_matrix/client/v3/sync".to_owned()),
        (Method::GET, "/_matrix/client/v3/joined_rooms".to_owned()),
        (Method::POST, "/_matrix/client/v3/createRoom".to_owned()),
        (
            Method::GET,
            format!("/_matrix/client/v3/rooms/{}/state", enc(&room_id)),
        ),
    ];
    for (method, path) in &endpoints {
        let (status, body) = client.request(method.clone(), path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        assert_eq!(body["errcode"], "M_MISSING_TOKEN", "{method} {path}");

        let (status, body) = client
            .request(method.clone(), path, Some("lat_forged"), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{method} {path}");

        let (status, _, bytes) = client
            .request_bytes(
                method.clone(),
                &format!("{path}?access_token=lat_forged"),
                None,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{method} {path}");
    }
}

#[actix_web::test]
async fn bodies_past_the_size_limit() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let big = json!({ "name": "x".repeat(2 * 1024 * 1024) }).to_string();
    let (status, body) = client
        .raw(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&alice.access_token),
            big,
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE");
}

#[actix_web::test]
async fn rate_limits_answer_429_with_retry_after() {
    let cluster = TestCluster::start_with(Options {
        rate_limit: Some((0.2, 5)),
        ..Options::default()
    })
    .await;
    let client = cluster.client();
    // Registration's two requests come out of the per-address bucket.
    let alice = client.register("alice").await;

    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let (status, body) = alice.get("/_matrix/client/v3/account/whoami").await;
        statuses.push(status.as_u16());
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(body);
            break;
        }
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 200, 429],
        "a burst of 5 per user"
    );
    let body = limited.expect("a 429");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    let retry = body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(retry > 0 && retry <= 5000, "{retry} ms at 0.2 requests/s");

    let (status, headers, _) = client
        .request_bytes(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            Some(&alice.access_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("Retry-After").is_some(), "{headers:?}");

    // Requests without a token are limited per address: 3 left after registering.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, body) = client
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({ "type": "m.login.password", "user": "nobody", "password": "wrong" }),
            )
            .await;
        statuses.push(status.as_u16());
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
            assert!(body["retry_after_ms"].is_u64(), "{body}");
        }
    }
    assert_eq!(statuses, vec![403, 403, 403, 429]);
}

#[actix_web::test]
async fn cors_preflight_and_headers() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let (status, headers, _) = client
        .request_bytes(Method::OPTIONS, "/_matrix/client/v3/login", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers
            .get("Access-Control-Allow-Origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );
    let methods = headers
        .get("Access-Control-Allow-Methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for method in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(method), "{methods}");
    }
    let (_, headers, _) = client
        .request_bytes(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert!(headers.get("Access-Control-Allow-Origin").is_some());
}

#[actix_web::test]
async fn nul_characters_are_a_client_error() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let room = enc(&room_id);
    // PostgreSQL stores no NUL in text or jsonb; where a query meets one the
    // request is refused, not failed.
    let refused_by_queries = [
        (
            Method::GET,
            "/_matrix/client/v3/profile/%00".to_owned(),
            None,
        ),
        (
            Method::GET,
            "/_matrix/client/v3/rooms/%00/members".to_owned(),
            None,
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
            Some(json!({ "event_fields": ["\u{0}"] })),
        ),
        (
            Method::POST,
            "/_matrix/client/v3/login".to_owned(),
            Some(json!({ "type": "m.login.password", "user": "a\u{0}", "password": "x" })),
        ),
    ];
    // Through the event persister: event types, state keys, transaction ids.
    let refused_by_the_writer = [
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/%00"),
            Some(json!({ "body": "x" })),
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room}/send/%00/t1"),
            Some(json!({ "body": "x" })),
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room}/state/org.example/%00"),
            Some(json!({})),
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t2"),
            Some(json!({ "body": "a\u{0}b" })),
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body) in refused_by_queries.iter().chain(&refused_by_the_writer) {
        let (status, response) = client
            .request(
                method.clone(),
                path,
                Some(&alice.access_token),
                body.as_ref().map(|b| b.to_string().into_bytes()),
            )
            .await;
        if status != StatusCode::BAD_REQUEST && status != StatusCode::FORBIDDEN {
            failures.push(format!("{method} {path}: {status} {response}"));
        }
    }
    assert!(
        failures.is_empty(),
        "NUL characters must answer 400 (or 403 for a login), not:\n{}",
        failures.join("\n")
    );
}

#[actix_web::test]
async fn rooms_that_do_not_exist() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let room = enc("!nowhere:lattice.test");
    // Reading a room one is not in is forbidden whether or not it exists, so
    // a room's existence is not revealed; writing into it finds no room.
    let cases = [
        (
            Method::GET,
            format!("/_matrix/client/v3/rooms/{room}/state"),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            format!("/_matrix/client/v3/rooms/{room}/state/m.room.create"),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            format!("/_matrix/client/v3/rooms/{room}/messages"),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            format!("/_matrix/client/v3/rooms/{room}/members"),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            format!("/_matrix/client/v3/rooms/{room}/event/{}", enc("$e")),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/rooms/{room}/join"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/rooms/{room}/leave"),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/rooms/{room}/forget"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            format!("/_matrix/client/v3/directory/list/room/{room}"),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, expected) in cases {
        let (status, body) = alice
            .client
            .request(
                method.clone(),
                &path,
                Some(&alice.access_token),
                (method != Method::GET).then(|| b"{}".to_vec()),
            )
            .await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        let errcode = if expected == StatusCode::FORBIDDEN {
            "M_FORBIDDEN"
        } else {
            "M_NOT_FOUND"
        };
        assert_eq!(body["errcode"], errcode, "{method} {path}");
    }
}
