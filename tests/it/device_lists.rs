//! Device lists: `device_lists.changed` / `left` in `/sync` and `GET
//! /keys/changes`, when a user who shares a room (or starts or stops
//! sharing one) adds, removes or re-keys a device. On the split, the
//! `device_lists` stream has two writers, on neither the instance requests
//! arrive at nor (for one of them) the one `/sync` is served by.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{enc, TestCluster, User};
use crate::keys::{upload_cross_signing_keys, upload_device_keys};

fn next_batch(sync: &Value) -> String {
    sync["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("next_batch in {sync}"))
        .to_owned()
}

fn list(sync: &Value, name: &str) -> Vec<String> {
    sync["device_lists"][name]
        .as_array()
        .unwrap_or_else(|| panic!("device_lists.{name} in {sync}"))
        .iter()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

/// The instance `/sync` requests go to.
fn sync_instance(cluster: &TestCluster) -> &'static str {
    if cluster.is_split() {
        "sync2"
    } else {
        "main"
    }
}

async fn sync_since(user: &User, since: &str) -> Value {
    user.sync(&format!("since={}&timeout=0", enc(since))).await
}

/// Alice and bob in one room; carol alone.
async fn users(cluster: &TestCluster) -> (User, User, User, String) {
    let client = cluster.client();
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let carol = client.register("carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    (alice, bob, carol, room_id)
}

#[actix_web::test]
async fn a_new_device_shows_to_room_members_and_the_users_other_devices_only() {
    let cluster = TestCluster::start().await;
    let (alice, bob, carol, _) = users(&cluster).await;
    let initial = bob.sync("timeout=0").await;
    // An initial sync lists nothing.
    assert_eq!(
        initial["device_lists"],
        json!({ "changed": [], "left": [] }),
        "{initial}"
    );
    let bob_since = next_batch(&initial);
    let alice_since = next_batch(&alice.sync("timeout=0").await);
    let carol_since = next_batch(&carol.sync("timeout=0").await);

    let phone = cluster.client().login("alice").await;
    assert_ne!(phone.device_id, alice.device_id);
    let sync = sync_since(&bob, &bob_since).await;
    assert_eq!(
        list(&sync, "changed"),
        vec![alice.user_id.clone()],
        "{sync}"
    );
    let sync = sync_since(&alice, &alice_since).await;
    assert!(
        list(&sync, "changed").contains(&alice.user_id),
        "own devices: {sync}"
    );
    let sync = sync_since(&carol, &carol_since).await;
    assert!(
        list(&sync, "changed").is_empty(),
        "carol shares no room: {sync}"
    );

    // Once only.
    let again = sync_since(&bob, &next_batch(&sync_since(&bob, &bob_since).await)).await;
    assert!(list(&again, "changed").is_empty(), "{again}");

    // Logging the device out is a change too; so are new keys.
    let since = next_batch(&bob.sync("timeout=0").await);
    let (status, _) = phone.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let sync = sync_since(&bob, &since).await;
    assert_eq!(
        list(&sync, "changed"),
        vec![alice.user_id.clone()],
        "{sync}"
    );
    let since = next_batch(&sync);
    upload_device_keys(&alice).await;
    let sync = sync_since(&bob, &since).await;
    assert_eq!(
        list(&sync, "changed"),
        vec![alice.user_id.clone()],
        "{sync}"
    );
    let since = next_batch(&sync);
    upload_cross_signing_keys(&alice).await;
    let sync = sync_since(&bob, &since).await;
    assert_eq!(
        list(&sync, "changed"),
        vec![alice.user_id.clone()],
        "{sync}"
    );
}

#[actix_web::test]
async fn a_long_poll_wakes_when_a_room_member_uploads_keys() {
    let cluster = TestCluster::start().await;
    let (alice, bob, _, _) = users(&cluster).await;
    let since = next_batch(&bob.sync("timeout=0").await);
    let query = format!("since={}&timeout=20000", enc(&since));
    let waiting = bob.sync(&query);
    let uploading = async {
        cluster.wait_for_long_poll(sync_instance(&cluster)).await;
        upload_device_keys(&alice).await;
        std::time::Instant::now()
    };
    let (sync, uploaded_at) = futures::join!(waiting, uploading);
    assert_eq!(
        list(&sync, "changed"),
        vec![alice.user_id.clone()],
        "{sync}"
    );
    assert!(
        uploaded_at.elapsed() < Duration::from_secs(5),
        "the long-poll answered {:?} after the upload",
        uploaded_at.elapsed()
    );
}

#[actix_web::test]
async fn users_who_start_sharing_a_room_are_changed_and_who_stop_are_left() {
    let cluster = TestCluster::start().await;
    let (alice, bob, carol, room_id) = users(&cluster).await;
    let since = next_batch(&bob.sync("timeout=0").await);
    // Carol joins bob's room: bob should fetch her devices.
    carol.join(&room_id).await;
    let sync = sync_since(&bob, &since).await;
    assert_eq!(
        list(&sync, "changed"),
        vec![carol.user_id.clone()],
        "{sync}"
    );
    assert!(list(&sync, "left").is_empty(), "{sync}");
    // Carol leaves: bob shares no room with her any more.
    let since = next_batch(&sync);
    let (status, body) = carol
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_since(&bob, &since).await;
    assert_eq!(list(&sync, "left"), vec![carol.user_id.clone()], "{sync}");
    assert!(list(&sync, "changed").is_empty(), "{sync}");

    // Bob joins a room of carol's: both see each other as changed.
    let carol_room = carol.create_room(json!({ "preset": "public_chat" })).await;
    let since = next_batch(&bob.sync("timeout=0").await);
    let carol_since = next_batch(&carol.sync("timeout=0").await);
    bob.join(&carol_room).await;
    let sync = sync_since(&bob, &since).await;
    assert!(list(&sync, "changed").contains(&carol.user_id), "{sync}");
    let sync = sync_since(&carol, &carol_since).await;
    assert!(list(&sync, "changed").contains(&bob.user_id), "{sync}");
    // Bob leaves alice's room: alice is left, carol (still shared) is not.
    let since = next_batch(&bob.sync("timeout=0").await);
    let (status, _) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sync = sync_since(&bob, &since).await;
    assert_eq!(list(&sync, "left"), vec![alice.user_id.clone()], "{sync}");
}

#[actix_web::test]
async fn key_changes_lists_the_changes_between_two_tokens() {
    let cluster = TestCluster::start().await;
    let (alice, bob, carol, room_id) = users(&cluster).await;
    let from = next_batch(&bob.sync("timeout=0").await);
    upload_device_keys(&alice).await;
    carol.join(&room_id).await;
    let to = next_batch(&bob.sync("timeout=0").await);
    let (status, body) = bob
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={}&to={}",
            enc(&from),
            enc(&to)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut changed: Vec<String> = body["changed"]
        .as_array()
        .expect("changed")
        .iter()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        vec![alice.user_id.clone(), carol.user_id.clone()],
        "{body}"
    );
    assert_eq!(body["left"], json!([]), "{body}");
    // Nothing between a token and itself.
    let (status, body) = bob
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={}&to={}",
            enc(&to),
            enc(&to)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "changed": [], "left": [] }));
}

#[actix_web::test]
async fn signing_another_users_key_is_told_to_the_signer_only() {
    let cluster = TestCluster::start().await;
    let (alice, bob, _, _) = users(&cluster).await;
    let (_, _, alice_usk) = upload_cross_signing_keys(&alice).await;
    let (bob_master, _, _) = upload_cross_signing_keys(&bob).await;
    let alice_since = next_batch(&alice.sync("timeout=0").await);
    let bob_since = next_batch(&bob.sync("timeout=0").await);
    let bobs_master =
        crate::keys::query(&alice, &[&bob]).await["master_keys"][&bob.user_id].clone();
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ bob.user_id.clone(): { bob_master.public.clone(): alice_usk.sign(&alice.user_id, bobs_master) } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["failures"], json!({}), "{body}");
    let sync = sync_since(&alice, &alice_since).await;
    assert_eq!(list(&sync, "changed"), vec![bob.user_id.clone()], "{sync}");
    let sync = sync_since(&bob, &bob_since).await;
    assert!(list(&sync, "changed").is_empty(), "{sync}");
}
