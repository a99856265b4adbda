//! Registration tokens: with `registration_requires_token`, `/register`'s
//! flow is `m.login.registration_token` then `m.login.dummy`; a token
//! accepted by a session holds a pending use of it until the account is
//! made (then the use is completed) or the session expires (then it is
//! given back). Admins manage tokens under
//! `/_lattice/admin/v1/registration_tokens`, as Synapse's admin API does;
//! anyone may ask whether a token is valid.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{Client, Options, TestCluster, User, PASSWORD};

const REGISTER: &str = "/_matrix/client/v3/register";
const TOKENS: &str = "/_lattice/admin/v1/registration_tokens";
const TOKEN_STAGE: &str = "m.login.registration_token";
const VALIDITY: &str = "/_matrix/client/v1/register/m.login.registration_token/validity";

async fn cluster_requiring_tokens() -> TestCluster {
    TestCluster::start_with(Options {
        settings: vec![("registration_requires_token", json!(true))],
        ..Options::default()
    })
    .await
}

/// A registration request of `localpart` with `auth`.
async fn register(client: &Client, localpart: &str, auth: Option<Value>) -> (StatusCode, Value) {
    let mut body = json!({ "username": localpart, "password": PASSWORD });
    if let Some(auth) = auth {
        body["auth"] = auth;
    }
    client.post(REGISTER, None, body).await
}

/// Starts a registration of `localpart`: the session of its `401`.
async fn start(client: &Client, localpart: &str) -> String {
    let (status, challenge) = register(client, localpart, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(
        challenge["flows"],
        json!([{ "stages": [TOKEN_STAGE, "m.login.dummy"] }]),
        "{challenge}"
    );
    challenge["session"].as_str().expect("a session").to_owned()
}

/// Registers `localpart` with `token`, stage by stage, asserting success.
async fn register_with_token(client: &Client, localpart: &str, token: &str) -> User {
    let session = start(client, localpart).await;
    let (status, challenge) = register(
        client,
        localpart,
        Some(json!({ "type": TOKEN_STAGE, "token": token, "session": session })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["completed"], json!([TOKEN_STAGE]), "{challenge}");
    let (status, registered) = register(
        client,
        localpart,
        Some(json!({ "type": "m.login.dummy", "session": session })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    User {
        user_id: registered["user_id"].as_str().expect("user_id").to_owned(),
        access_token: registered["access_token"]
            .as_str()
            .expect("token")
            .to_owned(),
        device_id: registered["device_id"].as_str().expect("device").to_owned(),
        client: client.clone(),
    }
}

/// A first admin, registered with a token put straight in the database (as
/// an operator would bootstrap one).
async fn admin(cluster: &TestCluster) -> User {
    cluster
        .database()
        .await
        .execute(
            "INSERT INTO registration_tokens (token, uses_allowed) VALUES ('bootstrap', 1)",
            &[],
        )
        .await
        .expect("a bootstrap token");
    let root = register_with_token(&cluster.client(), "root", "bootstrap").await;
    cluster.make_admin(&root.user_id).await;
    root
}

async fn token_info(admin: &User, token: &str) -> Value {
    let (status, body) = admin.get(&format!("{TOKENS}/{token}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn valid(client: &Client, token: &str) -> bool {
    let (status, body) = client.get(&format!("{VALIDITY}?token={token}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["valid"].as_bool().expect("valid")
}

#[actix_web::test]
async fn registration_needs_a_valid_token_and_spends_one_use() {
    let cluster = cluster_requiring_tokens().await;
    let client = cluster.client();
    let root = admin(&cluster).await;
    assert_eq!(
        token_info(&root, "bootstrap").await["completed"],
        1,
        "the bootstrap token's one use is spent"
    );

    // A wrong token: 401 with the flow, still in the same session.
    let session = start(&client, "carol").await;
    let (status, body) = register(
        &client,
        "carol",
        Some(json!({ "type": TOKEN_STAGE, "token": "wrong", "session": session })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
    assert_eq!(body["session"], session.as_str());
    assert!(body["flows"].is_array(), "{body}");
    // The dummy stage alone does not finish the flow.
    let (status, body) = register(
        &client,
        "carol",
        Some(json!({ "type": "m.login.dummy", "session": session })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["completed"], json!(["m.login.dummy"]), "{body}");

    let (status, made) = root
        .post(&format!("{TOKENS}/new"), json!({ "uses_allowed": 1 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let token = made["token"].as_str().expect("a token").to_owned();
    assert_eq!(token.len(), 16, "{made}");
    assert!(valid(&client, &token).await);
    assert!(!valid(&client, "wrong").await);

    // The token stage then finishes carol's flow: the dummy is done.
    let (status, registered) = register(
        &client,
        "carol",
        Some(json!({ "type": TOKEN_STAGE, "token": token, "session": session })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    assert_eq!(registered["user_id"], "@carol:lattice.test");
    let info = token_info(&root, &token).await;
    assert_eq!(
        (info["pending"].clone(), info["completed"].clone()),
        (json!(0), json!(1))
    );
    assert!(!valid(&client, &token).await, "its one use is spent");

    // A spent token is refused.
    let session = start(&client, "dave").await;
    let (status, body) = register(
        &client,
        "dave",
        Some(json!({ "type": TOKEN_STAGE, "token": token, "session": session })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    // Bad stage data.
    let (status, body) = register(
        &client,
        "dave",
        Some(json!({ "type": TOKEN_STAGE, "token": 7, "session": session })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, body) = register(
        &client,
        "dave",
        Some(json!({ "type": TOKEN_STAGE, "session": session })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
}

#[actix_web::test]
async fn a_pending_use_counts_until_the_session_ends() {
    let cluster = cluster_requiring_tokens().await;
    let client = cluster.client();
    let root = admin(&cluster).await;
    let (status, made) = root
        .post(
            &format!("{TOKENS}/new"),
            json!({ "token": "one-use", "uses_allowed": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");

    // Two registrations race for the one use: one holds it.
    let first = start(&client, "erin").await;
    let second = start(&client, "frank").await;
    let (one, other) = futures::join!(
        register(
            &client,
            "erin",
            Some(json!({ "type": TOKEN_STAGE, "token": "one-use", "session": first })),
        ),
        register(
            &client,
            "frank",
            Some(json!({ "type": TOKEN_STAGE, "token": "one-use", "session": second })),
        ),
    );
    let held: Vec<&Value> = [&one.1, &other.1]
        .into_iter()
        .filter(|body| body["completed"] == json!([TOKEN_STAGE]))
        .collect();
    assert_eq!(held.len(), 1, "{} / {}", one.1, other.1);
    assert!(
        [&one.1, &other.1]
            .iter()
            .any(|body| body["errcode"] == "M_UNAUTHORIZED"),
        "{} / {}",
        one.1,
        other.1
    );
    let info = token_info(&root, "one-use").await;
    assert_eq!(info["pending"], 1, "{info}");
    assert!(!valid(&client, "one-use").await);

    // The sessions expire unused: the use is given back.
    cluster
        .database()
        .await
        .execute("UPDATE uia_sessions SET created_ts = 0", &[])
        .await
        .expect("age the sessions");
    let deleted = cluster
        .on_node("main", |node| async move {
            lattice::storage::accounts::delete_uia_sessions_older_than(&node.pool, 1)
                .await
                .expect("clean up")
        })
        .await;
    assert!(deleted >= 2, "{deleted}");
    let info = token_info(&root, "one-use").await;
    assert_eq!(
        (info["pending"].clone(), info["completed"].clone()),
        (json!(0), json!(0))
    );
    assert!(valid(&client, "one-use").await);
}

#[actix_web::test]
async fn admins_manage_tokens() {
    let cluster = cluster_requiring_tokens().await;
    let root = admin(&cluster).await;
    let user = register_with_token(&cluster.client(), "user", &{
        let (_, made) = root.post(&format!("{TOKENS}/new"), json!({})).await;
        made["token"].as_str().expect("a token").to_owned()
    })
    .await;
    let (status, body) = user.get(TOKENS).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, _) = user
        .post(&format!("{TOKENS}/new"), json!({ "token": "mine" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let later = lattice::util::now_ms() + 3_600_000;
    let (status, made) = root
        .post(
            &format!("{TOKENS}/new"),
            json!({ "token": "abc.DEF_~-1", "uses_allowed": 3, "expiry_time": later }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(
        made,
        json!({
            "token": "abc.DEF_~-1",
            "uses_allowed": 3,
            "pending": 0,
            "completed": 0,
            "expiry_time": later,
        })
    );
    let (status, body) = root
        .post(&format!("{TOKENS}/new"), json!({ "token": "abc.DEF_~-1" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, made) = root
        .post(&format!("{TOKENS}/new"), json!({ "length": 8 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["token"].as_str().map(str::len), Some(8), "{made}");
    assert_eq!(made["uses_allowed"], Value::Null);
    for bad in [
        json!({ "token": "has space" }),
        json!({ "token": "" }),
        json!({ "token": 5 }),
        json!({ "length": 0 }),
        json!({ "length": 65 }),
        json!({ "uses_allowed": -1 }),
        json!({ "uses_allowed": "3" }),
        json!({ "expiry_time": 1 }),
    ] {
        let (status, body) = root.post(&format!("{TOKENS}/new"), bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{bad}");
    }

    // Updates change what is given; null clears.
    let (status, updated) = root
        .put(
            &format!("{TOKENS}/abc.DEF_~-1"),
            json!({ "uses_allowed": 0, "expiry_time": null }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["uses_allowed"], 0);
    assert_eq!(updated["expiry_time"], Value::Null);
    let (status, unchanged) = root.put(&format!("{TOKENS}/abc.DEF_~-1"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{unchanged}");
    assert_eq!(unchanged, updated);

    // Listing, all or by validity.
    let list = |query: &'static str| {
        let root = root.clone();
        async move {
            let (status, body) = root.get(&format!("{TOKENS}{query}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["registration_tokens"]
                .as_array()
                .expect("registration_tokens")
                .iter()
                .map(|t| t["token"].as_str().expect("token").to_owned())
                .collect::<Vec<String>>()
        }
    };
    let all = list("").await;
    assert_eq!(all.len(), 4, "{all:?}");
    let used_up = list("?valid=false").await;
    assert!(used_up.contains(&"abc.DEF_~-1".to_owned()), "{used_up:?}");
    assert!(used_up.contains(&"bootstrap".to_owned()), "{used_up:?}");
    let still_valid = list("?valid=true").await;
    assert_eq!(still_valid.len() + used_up.len(), all.len());
    let (status, _) = root.get(&format!("{TOKENS}?valid=maybe")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = root.delete(&format!("{TOKENS}/abc.DEF_~-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    for (status, body) in [
        root.delete(&format!("{TOKENS}/abc.DEF_~-1")).await,
        root.get(&format!("{TOKENS}/abc.DEF_~-1")).await,
        root.put(
            &format!("{TOKENS}/abc.DEF_~-1"),
            json!({ "uses_allowed": 1 }),
        )
        .await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
    }
}

#[actix_web::test]
async fn without_the_setting_registration_needs_no_token() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let (status, challenge) = register(&client, "alice", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["flows"], json!([{ "stages": ["m.login.dummy"] }]));
    // The validity of tokens can still be asked.
    assert!(!valid(&client, "anything").await);
    let (status, body) = register(
        &client,
        "alice",
        Some(json!({ "type": TOKEN_STAGE, "token": "x", "session": challenge["session"] })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[actix_web::test]
async fn validity_is_forbidden_while_registration_is_closed() {
    let cluster = TestCluster::start_with(Options {
        enable_registration: false,
        ..Options::default()
    })
    .await;
    let (status, body) = cluster
        .client()
        .get(&format!("{VALIDITY}?token=abc"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}
