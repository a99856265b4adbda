//! End-to-end encryption keys: `/keys/upload`, `/keys/query`,
//! `/keys/claim`, cross-signing (`/keys/device_signing/upload`,
//! `/keys/signatures/upload`) and the key counts of every `/sync`. Keys
//! are real ed25519 keys made and signed with ruma, as a client would.

use std::collections::BTreeSet;

use awc::http::StatusCode;
use ruma::serde::base64::Standard;
use ruma::serde::Base64;
use ruma::signatures::{sign_json, Ed25519KeyPair};
use ruma::CanonicalJsonValue;
use serde_json::{json, Value};

use crate::cluster::{TestCluster, User};

/// An ed25519 key pair whose key id is `ed25519:<name>`.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pub public: String,
    pub key_id: String,
}

impl SigningKey {
    /// A new key named `name`, or after its public key (cross-signing keys).
    pub fn new(name: Option<&str>) -> SigningKey {
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, String::new()).expect("a key pair");
        let public = Base64::<Standard>::new(pair.public_key().to_vec()).encode();
        let name = name.map_or_else(|| public.clone(), str::to_owned);
        SigningKey {
            pair: Ed25519KeyPair::from_der(&der, name.clone()).expect("a key pair"),
            public,
            key_id: format!("ed25519:{name}"),
        }
    }

    /// `object` with this key's signature as `signer`'s added.
    pub fn sign(&self, signer: &str, object: Value) -> Value {
        let Ok(CanonicalJsonValue::Object(mut canonical)) = CanonicalJsonValue::try_from(object)
        else {
            panic!("only objects are signed");
        };
        sign_json(signer, &self.pair, &mut canonical).expect("signed");
        CanonicalJsonValue::Object(canonical).into()
    }
}

/// A user's device keys signed by the device's own key.
pub fn device_keys(user: &User, device: &SigningKey) -> Value {
    device.sign(
        &user.user_id,
        json!({
            "user_id": user.user_id,
            "device_id": user.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{}", user.device_id): "curve25519identitykeyofthedevice0000000000",
                format!("ed25519:{}", user.device_id): device.public,
            },
        }),
    )
}

/// Uploads `user`'s signed device keys; the device's key.
pub async fn upload_device_keys(user: &User) -> SigningKey {
    let device = SigningKey::new(Some(&user.device_id));
    let (status, body) = user
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(user, &device) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "keys/upload: {body}");
    device
}

/// `/keys/query` of `users` (every device) as `user`.
pub async fn query(user: &User, users: &[&User]) -> Value {
    let wanted: serde_json::Map<String, Value> = users
        .iter()
        .map(|u| (u.user_id.clone(), json!([])))
        .collect();
    let (status, body) = user
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": wanted }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "keys/query: {body}");
    body
}

async fn claim(user: &User, owner: &User, device_id: &str, algorithm: &str) -> Value {
    let (status, body) = user
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { owner.user_id.clone(): { device_id: algorithm } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "keys/claim: {body}");
    body
}

/// The `algorithm:key_id` names of what a claim handed out for the device.
fn claimed_ids(claim: &Value, owner: &User, device_id: &str) -> Vec<String> {
    claim["one_time_keys"][&owner.user_id][device_id]
        .as_object()
        .map(|keys| keys.keys().cloned().collect())
        .unwrap_or_default()
}

/// `count` signed one-time keys named `prefix<n>`, signed by `device`.
fn one_time_keys(user: &User, device: &SigningKey, prefix: &str, count: usize) -> Value {
    let keys: serde_json::Map<String, Value> = (0..count)
        .map(|n| {
            (
                format!("signed_curve25519:{prefix}{n}"),
                device.sign(&user.user_id, json!({ "key": format!("otk{prefix}{n}") })),
            )
        })
        .collect();
    Value::Object(keys)
}

#[actix_web::test]
async fn device_keys_are_queried_with_their_display_name_by_anyone() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    client.register("alice").await;
    let (status, login) = client
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": crate::cluster::PASSWORD,
                "initial_device_display_name": "Alice's phone",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let alice = User {
        user_id: login["user_id"].as_str().expect("user_id").to_owned(),
        access_token: login["access_token"].as_str().expect("token").to_owned(),
        device_id: login["device_id"].as_str().expect("device_id").to_owned(),
        client: client.clone(),
    };
    let bob = client.register("bob").await;
    let device = upload_device_keys(&alice).await;

    let answer = query(&bob, &[&alice]).await;
    let keys = &answer["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(keys["keys"][&device.key_id], device.public, "{answer}");
    assert_eq!(
        keys["unsigned"]["device_display_name"], "Alice's phone",
        "{answer}"
    );
    assert!(
        keys["signatures"][&alice.user_id][&device.key_id].is_string(),
        "{answer}"
    );
    // Only the device that uploaded keys is listed; asking for a device
    // by id lists it alone; an unknown user has no devices.
    assert_eq!(
        answer["device_keys"][&alice.user_id]
            .as_object()
            .map(|d| d.len()),
        Some(1)
    );
    let (status, by_id) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { alice.user_id.clone(): ["NOPE"], "@nobody:lattice.test": [] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{by_id}");
    assert_eq!(by_id["device_keys"][&alice.user_id], json!({}), "{by_id}");
    assert_eq!(
        by_id["device_keys"]["@nobody:lattice.test"],
        json!({}),
        "{by_id}"
    );
    assert_eq!(by_id["failures"], json!({}), "{by_id}");
}

#[actix_web::test]
async fn device_keys_not_signed_by_the_device_itself_are_refused() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let upload = |body: Value| {
        let alice = alice.clone();
        async move { alice.post("/_matrix/client/v3/keys/upload", body).await }
    };

    // Signed by a key that is not the one the keys name.
    let named = SigningKey::new(Some(&alice.device_id));
    let stranger = SigningKey::new(Some(&alice.device_id));
    let mut unsigned_keys = device_keys(&alice, &named);
    unsigned_keys
        .as_object_mut()
        .expect("object")
        .remove("signatures");
    let forged = stranger.sign(&alice.user_id, unsigned_keys);
    let (status, body) = upload(json!({ "device_keys": forged })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    // Not signed at all.
    let mut unsigned = device_keys(&alice, &named);
    unsigned
        .as_object_mut()
        .expect("object")
        .remove("signatures");
    let (status, body) = upload(json!({ "device_keys": unsigned })).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
    // Someone else's keys: bob's, validly signed by bob's device.
    let bobs = device_keys(&bob, &SigningKey::new(Some(&bob.device_id)));
    let (status, body) = upload(json!({ "device_keys": bobs })).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
    // Tampered with after signing.
    let mut tampered = device_keys(&alice, &named);
    tampered["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2"]);
    let (status, body) = upload(json!({ "device_keys": tampered })).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );

    // Nothing was stored.
    let answer = query(&bob, &[&alice]).await;
    assert_eq!(answer["device_keys"][&alice.user_id], json!({}), "{answer}");
}

#[actix_web::test]
async fn a_one_time_key_id_cannot_be_reused_with_other_content() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let device = SigningKey::new(Some(&alice.device_id));
    let keys = one_time_keys(&alice, &device, "A", 3);
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": keys }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["one_time_key_counts"]["signed_curve25519"], 3,
        "{body}"
    );
    // The same upload again (a retry) changes nothing.
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": keys }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["one_time_key_counts"]["signed_curve25519"], 3,
        "{body}"
    );
    // The id of a stored key with other content, beside a new key: 400, and
    // neither is stored.
    let other = json!({
        "signed_curve25519:A0": device.sign(&alice.user_id, json!({ "key": "different" })),
        "signed_curve25519:B0": device.sign(&alice.user_id, json!({ "key": "new" })),
    });
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": other }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    let (status, body) = alice
        .post("/_matrix/client/v3/keys/upload", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["one_time_key_counts"]["signed_curve25519"], 3,
        "{body}"
    );
    // A key name without an algorithm is refused.
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": { "nocolon": "abc" } }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
}

#[actix_web::test]
async fn claims_hand_out_one_time_keys_once_then_the_fallback_key() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let device = upload_device_keys(&alice).await;
    let fallback = json!({
        "signed_curve25519:F1": device.sign(&alice.user_id, json!({ "key": "fallback", "fallback": true })),
    });
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": one_time_keys(&alice, &device, "K", 2), "fallback_keys": fallback }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = alice.sync("timeout=0").await;
    assert_eq!(
        sync["device_one_time_keys_count"]["signed_curve25519"], 2,
        "{sync}"
    );
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"]),
        "{sync}"
    );

    let mut handed_out = BTreeSet::new();
    for _ in 0..2 {
        let claimed = claim(&bob, &alice, &alice.device_id, "signed_curve25519").await;
        let ids = claimed_ids(&claimed, &alice, &alice.device_id);
        assert_eq!(ids.len(), 1, "{claimed}");
        assert!(ids[0].starts_with("signed_curve25519:K"), "{claimed}");
        let key = &claimed["one_time_keys"][&alice.user_id][&alice.device_id][&ids[0]];
        assert!(
            key["signatures"][&alice.user_id][&device.key_id].is_string(),
            "{claimed}"
        );
        handed_out.insert(ids[0].clone());
    }
    assert_eq!(
        handed_out.len(),
        2,
        "each one-time key once: {handed_out:?}"
    );
    // None left: the fallback key, as often as asked, marked used.
    for _ in 0..2 {
        let claimed = claim(&bob, &alice, &alice.device_id, "signed_curve25519").await;
        assert_eq!(
            claimed_ids(&claimed, &alice, &alice.device_id),
            vec!["signed_curve25519:F1"],
            "{claimed}"
        );
    }
    let sync = alice.sync("timeout=0").await;
    assert_eq!(
        sync["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{sync}"
    );
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!([]),
        "{sync}"
    );
    // A new fallback key is unused again.
    let (status, _) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "fallback_keys": {
                "signed_curve25519:F2": device.sign(&alice.user_id, json!({ "key": "fallback2", "fallback": true })),
            } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sync = alice.sync("timeout=0").await;
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"]),
        "{sync}"
    );

    // A device that does not exist, an algorithm it has no key of: left
    // out, no error.
    let claimed = claim(&bob, &alice, "NOSUCHDEVICE", "signed_curve25519").await;
    assert_eq!(claimed["one_time_keys"], json!({}), "{claimed}");
    let claimed = claim(&bob, &alice, &alice.device_id, "curve25519").await;
    assert_eq!(claimed["one_time_keys"], json!({}), "{claimed}");
    assert_eq!(claimed["failures"], json!({}), "{claimed}");
}

#[actix_web::test]
async fn concurrent_claims_from_every_instance_hand_out_each_key_once() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let device = SigningKey::new(Some(&alice.device_id));
    const KEYS: usize = 12;
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": one_time_keys(&alice, &device, "C", KEYS) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Every instance claims at once, several claims each, more claims than
    // keys in all: from each instance's own database connections.
    let instances: &[&str] = if cluster.is_split() {
        &["main", "events1", "sync2"]
    } else {
        &["main"]
    };
    let claims = instances.iter().flat_map(|instance| {
        (0..16).map(|_| {
            let (user_id, device_id) = (alice.user_id.clone(), alice.device_id.clone());
            cluster.on_node(instance, move |node| async move {
                let client = node.pool.get().await.expect("a connection");
                lattice::storage::keys::claim_key(
                    &client,
                    &user_id,
                    &device_id,
                    "signed_curve25519",
                )
                .await
                .expect("a claim")
                .map(|(key_id, _)| key_id)
            })
        })
    });
    let claimed: Vec<String> = futures::future::join_all(claims)
        .await
        .into_iter()
        .flatten()
        .collect();
    let distinct: BTreeSet<&String> = claimed.iter().collect();
    assert_eq!(claimed.len(), KEYS, "every key handed out: {claimed:?}");
    assert_eq!(distinct.len(), KEYS, "none twice: {claimed:?}");
    let (_, body) = alice
        .post("/_matrix/client/v3/keys/upload", json!({}))
        .await;
    assert_eq!(
        body["one_time_key_counts"]["signed_curve25519"], 0,
        "{body}"
    );
}

#[actix_web::test]
async fn every_sync_counts_the_devices_one_time_keys() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let device = SigningKey::new(Some(&alice.device_id));
    let initial = alice.sync("timeout=0").await;
    assert_eq!(
        initial["device_one_time_keys_count"],
        json!({ "signed_curve25519": 0 }),
        "{initial}"
    );
    assert_eq!(
        initial["device_unused_fallback_key_types"],
        json!([]),
        "{initial}"
    );
    let (status, _) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": one_time_keys(&alice, &device, "S", 4) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let since = initial["next_batch"].as_str().expect("next_batch");
    // A sync with nothing new (it times out) counts them too.
    assert_synced_count(&cluster, &alice, since, 4).await;

    // A claim (from another user) lowers the count the device's syncs show.
    let bob = cluster.client().register("bob").await;
    let claimed = claim(&bob, &alice, &alice.device_id, "signed_curve25519").await;
    assert_eq!(
        claimed_ids(&claimed, &alice, &alice.device_id).len(),
        1,
        "{claimed}"
    );
    assert_synced_count(&cluster, &alice, since, 3).await;
}

/// Asserts `user`'s `/sync` (since `since`, waiting 10 ms) counts `count`
/// signed one-time keys. On the split the sync instance may still hold the
/// count it read before the change, until the change's `caches` row reaches
/// it (the replication delay): there it asks again for up to 5 s.
async fn assert_synced_count(cluster: &TestCluster, user: &User, since: &str, count: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let answer = user
            .sync(&format!("since={}&timeout=10", crate::cluster::enc(since)))
            .await;
        if answer["device_one_time_keys_count"]["signed_curve25519"] == count {
            return;
        }
        assert!(
            cluster.is_split() && std::time::Instant::now() < deadline,
            "expected {count} one-time keys: {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Uploads cross-signing keys for `user`; `(master, self_signing, user_signing)`.
pub async fn upload_cross_signing_keys(user: &User) -> (SigningKey, SigningKey, SigningKey) {
    let master = SigningKey::new(None);
    let self_signing = SigningKey::new(None);
    let user_signing = SigningKey::new(None);
    let body = cross_signing_body(user, &master, &self_signing, &user_signing);
    let (status, answer) = user
        .post("/_matrix/client/v3/keys/device_signing/upload", body)
        .await;
    assert_eq!(status, StatusCode::OK, "device_signing/upload: {answer}");
    (master, self_signing, user_signing)
}

fn cross_signing_key(user: &User, key: &SigningKey, usage: &str) -> Value {
    json!({ "user_id": user.user_id, "usage": [usage], "keys": { key.key_id.clone(): key.public } })
}

fn cross_signing_body(
    user: &User,
    master: &SigningKey,
    self_signing: &SigningKey,
    user_signing: &SigningKey,
) -> Value {
    json!({
        "master_key": cross_signing_key(user, master, "master"),
        "self_signing_key": master.sign(&user.user_id, cross_signing_key(user, self_signing, "self_signing")),
        "user_signing_key": master.sign(&user.user_id, cross_signing_key(user, user_signing, "user_signing")),
    })
}

#[actix_web::test]
async fn cross_signing_keys_are_checked_and_shown_to_whom_they_concern() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let upload = |body: Value| {
        let alice = alice.clone();
        async move {
            alice
                .post("/_matrix/client/v3/keys/device_signing/upload", body)
                .await
        }
    };
    let (master, self_signing, user_signing) = (
        SigningKey::new(None),
        SigningKey::new(None),
        SigningKey::new(None),
    );
    // A self-signing key without a master key to check it with.
    let (status, body) = upload(json!({
        "self_signing_key": master.sign(&alice.user_id, cross_signing_key(&alice, &self_signing, "self_signing")),
    }))
    .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_MISSING_PARAM")),
        "{body}"
    );
    // A self-signing key not signed by the master key.
    let (status, body) = upload(json!({
        "master_key": cross_signing_key(&alice, &master, "master"),
        "self_signing_key": self_signing.sign(&alice.user_id, cross_signing_key(&alice, &self_signing, "self_signing")),
    }))
    .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_SIGNATURE")),
        "{body}"
    );
    // A key of the wrong usage, a key of someone else.
    let (status, body) =
        upload(json!({ "master_key": cross_signing_key(&alice, &master, "self_signing") })).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) =
        upload(json!({ "master_key": cross_signing_key(&bob, &master, "master") })).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM")),
        "{body}"
    );
    let answer = query(&bob, &[&alice]).await;
    assert_eq!(answer["master_keys"], json!({}), "nothing stored: {answer}");

    // The first upload needs no authentication.
    let (status, body) = upload(cross_signing_body(
        &alice,
        &master,
        &self_signing,
        &user_signing,
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen_by_bob = query(&bob, &[&alice]).await;
    assert_eq!(
        seen_by_bob["master_keys"][&alice.user_id]["keys"][&master.key_id],
        master.public
    );
    assert_eq!(
        seen_by_bob["self_signing_keys"][&alice.user_id]["keys"][&self_signing.key_id],
        self_signing.public
    );
    assert_eq!(seen_by_bob["user_signing_keys"], json!({}), "{seen_by_bob}");
    let seen_by_alice = query(&alice, &[&alice]).await;
    assert_eq!(
        seen_by_alice["user_signing_keys"][&alice.user_id]["keys"][&user_signing.key_id],
        user_signing.public,
        "{seen_by_alice}"
    );
    // The same keys again: accepted, no authentication needed.
    let (status, body) = upload(cross_signing_body(
        &alice,
        &master,
        &self_signing,
        &user_signing,
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // New keys replace the old ones only with the user's password.
    let (new_master, new_ssk, new_usk) = (
        SigningKey::new(None),
        SigningKey::new(None),
        SigningKey::new(None),
    );
    let new_keys = cross_signing_body(&alice, &new_master, &new_ssk, &new_usk);
    let (status, challenge) = upload(new_keys.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(
        challenge["flows"],
        json!([{ "stages": ["m.login.password"] }]),
        "{challenge}"
    );
    let session = challenge["session"].as_str().expect("a session").to_owned();
    let with_password = |password: &str| {
        let mut body = new_keys.clone();
        body["auth"] = json!({
            "type": "m.login.password",
            "session": session,
            "identifier": { "type": "m.id.user", "user": alice.user_id },
            "password": password,
        });
        body
    };
    let (status, body) = upload(with_password("wrong")).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::UNAUTHORIZED, json!("M_FORBIDDEN")),
        "{body}"
    );
    let answer = query(&bob, &[&alice]).await;
    assert_eq!(
        answer["master_keys"][&alice.user_id]["keys"][&master.key_id], master.public,
        "unchanged: {answer}"
    );
    let (status, body) = upload(with_password(crate::cluster::PASSWORD)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = query(&bob, &[&alice]).await;
    assert_eq!(
        answer["master_keys"][&alice.user_id]["keys"][&new_master.key_id], new_master.public,
        "{answer}"
    );
}

#[actix_web::test]
async fn signatures_are_checked_and_shown_to_whom_they_concern() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let device = upload_device_keys(&alice).await;
    let (_, alice_ssk, alice_usk) = upload_cross_signing_keys(&alice).await;
    let (bob_master, _, _) = upload_cross_signing_keys(&bob).await;

    // Alice signs her device with her self-signing key, and bob's master
    // key with her user-signing key; one more signature is forged.
    let own_device = alice_ssk.sign(&alice.user_id, device_keys(&alice, &device));
    let bobs_master = query(&alice, &[&bob]).await["master_keys"][&bob.user_id].clone();
    let bobs_master = alice_usk.sign(&alice.user_id, bobs_master);
    // Carol has no cross-signing keys: nothing of hers to sign.
    let forged = SigningKey::new(Some(&alice_usk.public)).sign(
        &alice.user_id,
        json!({ "user_id": carol.user_id, "usage": ["master"], "keys": {} }),
    );
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({
                alice.user_id.clone(): { alice.device_id.clone(): own_device },
                bob.user_id.clone(): { bob_master.public.clone(): bobs_master, "NOTAKEY": { "x": 1 } },
                carol.user_id.clone(): { "ANYTHING": forged },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["failures"][&bob.user_id]["NOTAKEY"]["errcode"].is_string(),
        "{body}"
    );
    assert!(
        body["failures"][&carol.user_id]["ANYTHING"]["errcode"].is_string(),
        "{body}"
    );
    assert!(body["failures"].get(&alice.user_id).is_none(), "{body}");

    // A bad signature of a real key is refused too.
    let mut wrong = alice_ssk.sign(&alice.user_id, device_keys(&alice, &device));
    wrong["signatures"][&alice.user_id][&alice_ssk.key_id] = json!("AAAA");
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ alice.user_id.clone(): { alice.device_id.clone(): wrong } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["failures"][&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
        "{body}"
    );

    // Everyone sees alice's device signed by her self-signing key.
    let seen_by_carol = query(&carol, &[&alice, &bob]).await;
    let signatures = &seen_by_carol["device_keys"][&alice.user_id][&alice.device_id]["signatures"]
        [&alice.user_id];
    assert!(signatures[&alice_ssk.key_id].is_string(), "{seen_by_carol}");
    assert!(signatures[&device.key_id].is_string(), "{seen_by_carol}");
    // Alice's signature of bob's master key: only alice sees it.
    let bobs_signers = |answer: &Value| {
        answer["master_keys"][&bob.user_id]["signatures"]
            .as_object()
            .map(|s| s.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(
        !bobs_signers(&seen_by_carol).contains(&alice.user_id),
        "{seen_by_carol}"
    );
    let seen_by_alice = query(&alice, &[&bob]).await;
    assert!(
        seen_by_alice["master_keys"][&bob.user_id]["signatures"][&alice.user_id][&alice_usk.key_id]
            .is_string(),
        "{seen_by_alice}"
    );
}

#[actix_web::test]
async fn bad_key_requests_get_the_specs_errors() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    for (path, body) in [
        (
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { "not a user id": [] } }),
        ),
        (
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { "not a user id": {} } }),
        ),
    ] {
        let (status, answer) = alice.post(path, body).await;
        assert_eq!(
            (status, answer["errcode"].clone()),
            (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM")),
            "{path}: {answer}"
        );
    }
    for (path, body) in [
        (
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": ["x"] }),
        ),
        ("/_matrix/client/v3/keys/claim", json!({})),
        (
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": [] }),
        ),
    ] {
        let (status, answer) = alice.post(path, body).await;
        assert_eq!(
            (status, answer["errcode"].clone()),
            (StatusCode::BAD_REQUEST, json!("M_BAD_JSON")),
            "{path}: {answer}"
        );
    }
    let (status, answer) = alice
        .get("/_matrix/client/v3/keys/changes?from=nonsense&to=s1")
        .await;
    assert_eq!(
        (status, answer["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM")),
        "{answer}"
    );
    let (status, answer) = alice.get("/_matrix/client/v3/keys/changes?to=s1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}
