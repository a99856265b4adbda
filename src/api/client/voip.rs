//! VoIP: the TURN servers clients relay calls through, and credentials for
//! them. With `turn_shared_secret`, the credentials are the TURN REST API's
//! time-limited ones (what coturn's `use-auth-secret` checks, and what
//! Synapse makes): the username is `<expiry in unix seconds>:<user id>` and
//! the password the base64 of its HMAC-SHA1 under the secret. Without TURN
//! configured the answer is `{}`, as Synapse's.

use actix_web::{web, HttpResponse};
use base64::Engine;
use serde_json::json;

use crate::api::Requester;
use crate::node::Node;
use crate::util::now_ms;

/// GET /_matrix/client/v3/voip/turnServer
pub async fn turn_server(node: web::Data<Node>, requester: Requester) -> HttpResponse {
    let config = &node.config;
    let lifetime_ms = config.turn_user_lifetime.as_millis();
    if config.turn_uris.is_empty() || lifetime_ms == 0 {
        return HttpResponse::Ok().json(json!({}));
    }
    let (username, password) = match (
        &config.turn_shared_secret,
        &config.turn_username,
        &config.turn_password,
    ) {
        (Some(secret), _, _) => {
            let expiry_secs = (now_ms().max(0) as u64 + lifetime_ms) / 1000;
            shared_secret_credentials(secret, expiry_secs, &requester.user_id)
        }
        (None, Some(username), Some(password)) => (username.clone(), password.clone()),
        _ => return HttpResponse::Ok().json(json!({})),
    };
    HttpResponse::Ok().json(json!({
        "username": username,
        "password": password,
        "ttl": lifetime_ms / 1000,
        "uris": config.turn_uris,
    }))
}

/// The TURN REST API's credentials for `user_id` until `expiry_secs`.
fn shared_secret_credentials(secret: &str, expiry_secs: u64, user_id: &str) -> (String, String) {
    let username = format!("{expiry_secs}:{user_id}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_credentials_are_the_turn_rest_api_ones() {
        // From Python: base64.b64encode(hmac.new(b"s3cret",
        //   b"1700000000:@alice:example.org", hashlib.sha1).digest())
        let (username, password) =
            shared_secret_credentials("s3cret", 1_700_000_000, "@alice:example.org");
        assert_eq!(username, "1700000000:@alice:example.org");
        assert_eq!(password, EXPECTED_PASSWORD);
    }

    const EXPECTED_PASSWORD: &str = "oKcYiX5WLXOJY95WjqLUBOVFmFk=";
}
