//! Discovery: `/versions`, `.well-known/matrix/client` and `/support`,
//! `/capabilities`.

use awc::http::StatusCode;
use serde_json::json;

use crate::cluster::{Options, TestCluster};

#[actix_web::test]
async fn versions_lists_the_spec_versions_served() {
    let cluster = TestCluster::start().await;
    let (status, body) = cluster.client().get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    let versions = body["versions"].as_array().expect("versions is an array");
    for version in ["r0.6.1", "v1.1", "v1.12"] {
        assert!(versions.iter().any(|v| v == version), "{version} in {body}");
    }
    assert!(body["unstable_features"].is_object(), "{body}");
}

#[actix_web::test]
async fn well_known_points_at_the_listener() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let (status, body) = client.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["m.homeserver"]["base_url"],
        format!("{}/", client.base_url()),
        "{body}"
    );
}

#[actix_web::test]
async fn support_information_is_not_found_until_configured() {
    let cluster = TestCluster::start().await;
    let (status, body) = cluster
        .client()
        .get("/.well-known/matrix/support", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

#[actix_web::test]
async fn support_information_is_the_support_setting() {
    let support = json!({
        "contacts": [
            {
                "matrix_id": "@admin:elsewhere.test",
                "email_address": "admin@lattice.test",
                "role": "m.role.admin",
            },
            { "email_address": "security@lattice.test", "role": "m.role.security" },
        ],
        "support_page": "https://lattice.test/support.html",
    });
    let cluster = TestCluster::start_with(Options {
        settings: vec![("support", support.clone())],
        ..Options::default()
    })
    .await;
    let (status, body) = cluster
        .client()
        .get("/.well-known/matrix/support", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, support);
}

#[actix_web::test]
async fn capabilities_name_the_room_versions() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let (status, body) = client.get("/_matrix/client/v3/capabilities", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");

    let alice = client.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v3/capabilities").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let versions = &body["capabilities"]["m.room_versions"];
    assert_eq!(versions["default"], "12", "{body}");
    for version in ["10", "11", "12"] {
        assert_eq!(versions["available"][version], "stable", "{body}");
    }
    assert_eq!(
        body["capabilities"]["m.change_password"]["enabled"], true,
        "{body}"
    );
    assert_eq!(
        body["capabilities"]["m.3pid_changes"]["enabled"], false,
        "{body}"
    );
    assert_eq!(
        body["capabilities"]["m.get_login_token"]["enabled"], false,
        "{body}"
    );
    assert_eq!(
        body["capabilities"]["m.profile_fields"]["enabled"], true,
        "{body}"
    );
    assert_eq!(
        body["capabilities"]["m.set_displayname"]["enabled"], true,
        "{body}"
    );
}

#[actix_web::test]
async fn the_legacy_r0_prefix_serves_the_same_endpoints() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let (status, body) = alice.get("/_matrix/client/r0/account/whoami").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
}

#[actix_web::test]
async fn every_user_has_the_default_push_rules() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v3/pushrules/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let master = body["global"]["override"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule_id"] == ".m.rule.master"))
        .cloned();
    assert_eq!(
        master.map(|r| r["enabled"].clone()),
        Some(serde_json::json!(false))
    );
    let (status, rule) = alice
        .get("/_matrix/client/v3/pushrules/global/underride/.m.rule.message")
        .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(rule["rule_id"], ".m.rule.message");
    let (status, body) = alice
        .get("/_matrix/client/v3/pushrules/global/underride/.no.such.rule")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

#[actix_web::test]
async fn push_rules_have_every_kind_and_unknown_rules_are_not_found() {
    let cluster = TestCluster::start().await;
    let alice = cluster.client().register("alice").await;
    let kinds = ["override", "content", "room", "sender", "underride"];
    let (status, body) = alice.get("/_matrix/client/v3/pushrules/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, global) = alice.get("/_matrix/client/v3/pushrules/global/").await;
    assert_eq!(status, StatusCode::OK, "{global}");
    for ruleset in [&body["global"], &global] {
        for kind in kinds {
            assert!(ruleset[kind].is_array(), "`{kind}` is a list: {ruleset}");
        }
    }
    for kind in kinds {
        let (status, body) = alice
            .get(&format!(
                "/_matrix/client/v3/pushrules/global/{kind}/no.such.rule"
            ))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kind}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{kind}");
    }
}
