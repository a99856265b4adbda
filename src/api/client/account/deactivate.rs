//! Deactivating one's own account, for good. After the password (through
//! [`uiaa`](crate::api::client::uiaa)) the account is marked deactivated
//! first, so that no new session can start; then every device is removed
//! (its tokens revoked everywhere), the profile is erased, and the user
//! leaves every room they are joined to or invited to with an ordinary
//! leave event, sent as they would send it themselves. A password login
//! is then answered `403 M_USER_DEACTIVATED`.
//!
//! `erase: true` marks the account erased as well (Synapse's
//! `erased_users`). Synapse then hides the user's past messages from those
//! who join later; Lattice records the mark but does not do that yet.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::api::client::device::remove_devices;
use crate::api::client::uiaa::{self, AuthData};
use crate::api::{OptionalJsonBody, Requester};
use crate::error::ApiResult;
use crate::node::Node;
use crate::storage::{accounts, devices, rooms};

#[derive(Deserialize, Default)]
pub struct DeactivateRequest {
    auth: Option<AuthData>,
    #[serde(default)]
    erase: bool,
}

/// POST /_matrix/client/v3/account/deactivate
///
/// No third-party id is bound anywhere (an `id_server` given is not
/// asked), so the unbinding result is `no-support`, as Synapse answers.
pub async fn deactivate_account(
    request: HttpRequest,
    node: web::Data<Node>,
    requester: Requester,
    OptionalJsonBody(body): OptionalJsonBody<DeactivateRequest>,
) -> ApiResult<HttpResponse> {
    uiaa::authenticate_with_password(&node, &request, &requester, body.auth.as_ref()).await?;
    let user = requester.user()?;
    accounts::deactivate(&node.pool, user.as_str(), body.erase).await?;
    tracing::info!(user_id = %user, erase = body.erase, "deactivating account");
    let device_ids: Vec<ruma::OwnedDeviceId> = devices::device_ids(&node.pool, user.as_str())
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    remove_devices(&node, &user, &device_ids).await?;
    // Tokens of devices signed in while this ran, and cached owners that
    // still say the account is active.
    node.forget_tokens(user.as_str(), None).await?;
    leave_every_room(&node, &user).await?;
    Ok(HttpResponse::Ok().json(json!({ "id_server_unbind_result": "no-support" })))
}

/// Sends the user's leave event to every room they are joined to or
/// invited to (rejecting the invitation). A room that refuses is logged
/// and skipped: the account is deactivated whatever the rooms say.
async fn leave_every_room(node: &Node, user: &ruma::UserId) -> ApiResult<()> {
    for membership in rooms::memberships_of_user(&node.pool, user.as_str()).await? {
        if membership.membership != "join" && membership.membership != "invite" {
            continue;
        }
        let room_id = match ruma::RoomId::parse(&membership.room_id) {
            Ok(room_id) => room_id,
            Err(error) => {
                tracing::warn!(room_id = %membership.room_id, error = %error, "stored room id does not parse");
                continue;
            }
        };
        if let Err(error) = node
            .send_state_event(
                &room_id,
                user,
                "m.room.member",
                user.as_str(),
                json!({ "membership": "leave" }),
            )
            .await
        {
            tracing::warn!(room_id = %room_id, user_id = %user, error = %error, "deactivated user could not leave room");
        }
    }
    Ok(())
}
