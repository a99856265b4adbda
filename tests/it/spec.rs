//! Response validation against the Matrix spec (v1.19, OpenAPI 3.1, every
//! `$ref` inlined) kept in `tests/spec/client-server.json`.
//!
//! [`validate`] checks one body against the schema the spec documents for a
//! method, path template and status; [`check_response`] finds the template of
//! a concrete path first, and is what the test client calls on every answer.
//! Statuses the spec does not document are still held to the standard error
//! shape when they are errors: DESIGN.md §7 promises Matrix JSON for every
//! error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

const SPEC_TEXT: &str = include_str!("../spec/client-server.json");

/// Compiled validators by (method, template, status); `None` when the spec
/// documents no JSON body for that status.
type Validators = HashMap<(String, String, u16), Option<Arc<jsonschema::Validator>>>;

struct Spec {
    paths: serde_json::Map<String, Value>,
    validators: Mutex<Validators>,
}

fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let document: Value = serde_json::from_str(SPEC_TEXT).expect("the spec file is JSON");
        let paths = document["paths"]
            .as_object()
            .cloned()
            .expect("the spec has paths");
        Spec {
            paths,
            validators: Mutex::new(HashMap::new()),
        }
    })
}

/// The spec's path template for a concrete request path (query string
/// ignored, the legacy `r0` prefix read as `v3`), if the spec documents
/// `method` on it.
pub fn template_for(method: &str, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or_default();
    let path = path.replacen("/_matrix/client/r0/", "/_matrix/client/v3/", 1);
    let method = method.to_lowercase();
    let spec = spec();
    let find = |path: &str| -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        spec.paths
            .iter()
            .filter(|(_, item)| item.get(&method).is_some())
            .filter_map(|(template, _)| {
                let parts: Vec<&str> = template.trim_end().split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal_matches = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') && part.ends_with('}') {
                        continue;
                    }
                    if part != segment {
                        return None;
                    }
                    literal_matches += 1;
                }
                Some((literal_matches, template.clone()))
            })
            .max_by_key(|(literal_matches, _)| *literal_matches)
            .map(|(_, template)| template)
    };
    // `/state/{eventType}` is `/state/{eventType}/{stateKey}` with an empty key.
    find(&path).or_else(|| find(&format!("{path}/")))
}

/// The spec's description of `method template` (parameters, request body,
/// responses), if it documents one.
pub fn operation(method: &str, template: &str) -> Option<Value> {
    spec()
        .paths
        .get(template)?
        .get(method.to_lowercase())
        .cloned()
}

/// The JSON schema of the response to `method template` with `status`, if the
/// spec documents one.
pub fn response_schema(method: &str, template: &str, status: u16) -> Option<Value> {
    spec()
        .paths
        .get(template)?
        .get(method.to_lowercase())?
        .get("responses")?
        .get(status.to_string())?
        .get("content")?
        .get("application/json")?
        .get("schema")
        .cloned()
}

/// Validates `body` against the schema the spec documents for `method
/// template` answering `status`; panics with every validation error. A status
/// the spec does not document is not checked here.
pub fn validate(method: &str, template: &str, status: u16, body: &Value) {
    let errors = validation_errors(method, template, status, body);
    if !errors.is_empty() {
        panic!("{}", errors.join("\n"));
    }
}

/// What [`validate`] would complain about, as one message (empty when valid).
pub fn validation_errors(method: &str, template: &str, status: u16, body: &Value) -> Vec<String> {
    let key = (method.to_lowercase(), template.to_owned(), status);
    let validator = {
        let mut validators = spec().validators.lock().unwrap_or_else(|e| e.into_inner());
        validators
            .entry(key)
            .or_insert_with(|| {
                response_schema(method, template, status).map(|schema| {
                    let schema = adapt(schema);
                    Arc::new(
                        jsonschema::draft202012::options()
                            .build(&schema)
                            .unwrap_or_else(|e| {
                                panic!(
                                    "schema of {method} {template} {status} does not compile: {e}"
                                )
                            }),
                    )
                })
            })
            .clone()
    };
    let Some(validator) = validator else {
        return Vec::new();
    };
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| {
            format!(
                "  at `{}`: {}",
                e.instance_path(),
                truncate(&e.to_string(), 500)
            )
        })
        .collect();
    if errors.is_empty() {
        return errors;
    }
    vec![format!(
        "response to {} {template} ({status}) does not match the spec:\n{}\nbody: {}",
        method.to_uppercase(),
        errors.join("\n"),
        truncate(&body.to_string(), 4000),
    )]
}

/// What the test client runs on every answer: the spec's schema when it
/// documents this status, and the standard error shape for any error.
pub fn check_response(method: &str, path: &str, status: u16, body: &Value) {
    let problems = response_problems(method, path, status, body);
    if !problems.is_empty() {
        panic!("{}", problems.join("\n"));
    }
}

/// Answers that differ from the spec's schema on purpose, each for a
/// reason given here; kept as narrow as the answer itself.
fn is_known_deviation(method: &str, template: &str, status: u16, body: &Value) -> bool {
    // Without TURN configured, `{}`: the spec's schema requires the four
    // fields, but `{}` is what Synapse answers, and what matrix-js-sdk and
    // Element read as "no TURN server" (an error would make them retry).
    method.eq_ignore_ascii_case("get")
        && template == "/_matrix/client/v3/voip/turnServer"
        && status == 200
        && body.as_object().is_some_and(|fields| fields.is_empty())
}

/// What [`check_response`] would complain about.
pub fn response_problems(method: &str, path: &str, status: u16, body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    // A missing or unknown access token is answered 401 by every
    // authenticated endpoint (the spec's "Using access tokens"); where an
    // endpoint documents its own 401 (user-interactive auth), that schema
    // describes the other 401.
    let token_refused = status == 401
        && matches!(
            body.get("errcode").and_then(Value::as_str),
            Some("M_MISSING_TOKEN" | "M_UNKNOWN_TOKEN")
        );
    if let Some(template) = template_for(method, path).filter(|_| !token_refused) {
        if !is_known_deviation(method, &template, status, body) {
            problems.extend(validation_errors(method, &template, status, body));
        }
    }
    if status >= 400 {
        let errcode = body.get("errcode").and_then(Value::as_str);
        let error = body.get("error").and_then(Value::as_str);
        if !(errcode.is_some_and(|c| c.starts_with("M_")) && error.is_some()) {
            problems.push(format!(
                "{method} {path} answered {status} without a Matrix error body: {body}"
            ));
        }
    }
    problems
}

/// Removes what the OpenAPI bundling left that is not plain JSON Schema:
/// `$schema` declarations inside subschemas (inlined from their own files)
/// and `x-` extensions. `oneOf` is read as `anyOf`: the spec uses it for
/// alternatives that overlap (`GET .../state/{eventType}/{stateKey}` answers
/// "the content, or with `format=event` the whole event", and both are
/// objects), so an exact-one check rejects every valid answer.
fn adapt(schema: Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(key, _)| key != "$schema" && !key.starts_with("x-"))
                .map(|(key, value)| {
                    // Property names are data, not keywords: keep them all.
                    if key == "properties" || key == "patternProperties" {
                        let value = match value {
                            Value::Object(props) => Value::Object(
                                props.into_iter().map(|(k, v)| (k, adapt(v))).collect(),
                            ),
                            other => other,
                        };
                        (key, value)
                    } else if key == "example" || key == "examples" {
                        (key, value)
                    } else if key == "oneOf" {
                        ("anyOf".to_owned(), adapt(value))
                    } else {
                        (key, adapt(value))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(adapt).collect()),
        other => other,
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[test]
fn concrete_paths_find_their_templates() {
    assert_eq!(
        template_for(
            "PUT",
            "/_matrix/client/r0/rooms/!a:b/send/m.room.message/t1?x=1"
        )
        .as_deref(),
        Some("/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}")
    );
    assert_eq!(
        template_for("GET", "/_matrix/client/v3/rooms/!a:b/state/m.room.name").as_deref(),
        Some("/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}")
    );
    // A literal segment beats a parameter.
    assert_eq!(
        template_for("GET", "/_matrix/client/v3/register/available").as_deref(),
        Some("/_matrix/client/v3/register/available")
    );
    assert_eq!(template_for("GET", "/_matrix/client/v3/nonexistent"), None);
    assert_eq!(template_for("PATCH", "/_matrix/client/v3/login"), None);
}

#[test]
fn the_validator_rejects_bodies_that_break_the_schema() {
    let whoami = "/_matrix/client/v3/account/whoami";
    assert!(validation_errors(
        "GET",
        whoami,
        200,
        &serde_json::json!({ "user_id": "@a:b", "is_guest": false })
    )
    .is_empty());
    assert!(!validation_errors("GET", whoami, 200, &serde_json::json!({})).is_empty());
    assert!(
        !validation_errors("GET", whoami, 200, &serde_json::json!({ "user_id": 5 })).is_empty()
    );
    // Deep inside /sync: a timeline event without its event_id.
    let sync = serde_json::json!({
        "next_batch": "s1",
        "rooms": { "join": { "!r:b": { "timeline": { "events": [
            { "type": "m.room.message", "content": {}, "sender": "@a:b", "origin_server_ts": 1 }
        ] } } } }
    });
    assert!(!validation_errors("GET", "/_matrix/client/v3/sync", 200, &sync).is_empty());
    assert!(
        !response_problems("GET", whoami, 401, &serde_json::json!({ "error": "x" })).is_empty(),
        "an error without an errcode"
    );
}

#[test]
#[should_panic(expected = "does not match the spec")]
fn validate_fails_with_the_errors() {
    validate(
        "GET",
        "/_matrix/client/v3/joined_rooms",
        200,
        &serde_json::json!({ "joined_rooms": "!not-a-list:b" }),
    );
}
