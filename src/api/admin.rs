//! Lattice's own admin API (`/_lattice/admin/v1/...`), for server admins only.
//! Registration tokens are in [`registration_tokens`].

pub mod registration_tokens;

use actix_web::{web, HttpResponse};

use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::media::id::MediaId;
use crate::node::Node;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/_lattice/admin/v1/actors", web::get().to(actors))
        .route("/_lattice/admin/v1/cluster", web::get().to(cluster))
        .route(
            "/_lattice/admin/v1/media/quarantine/{server_name}/{media_id}",
            web::post().to(quarantine_media),
        )
        .route(
            "/_lattice/admin/v1/user/{user_id}/media/quarantine",
            web::post().to(quarantine_user_media),
        )
        .route(
            "/_lattice/admin/v1/media/{server_name}/{media_id}",
            web::delete().to(delete_media),
        )
        .route(
            "/_lattice/admin/v1/users/{user_id}/media",
            web::delete().to(delete_user_media),
        )
        .route("/_lattice/admin/v1/reports", web::get().to(list_reports))
        .route("/_lattice/admin/v1/shards", web::get().to(shards))
        .route(
            "/_lattice/admin/v1/shards/{kind}/{shard}/move",
            web::post().to(move_shard),
        )
        .route(
            "/_lattice/admin/v1/registration_tokens",
            web::get().to(registration_tokens::list_tokens),
        )
        .route(
            "/_lattice/admin/v1/registration_tokens/new",
            web::post().to(registration_tokens::create_token),
        )
        .route(
            "/_lattice/admin/v1/registration_tokens/{token}",
            web::get().to(registration_tokens::get_token),
        )
        .route(
            "/_lattice/admin/v1/registration_tokens/{token}",
            web::put().to(registration_tokens::update_token),
        )
        .route(
            "/_lattice/admin/v1/registration_tokens/{token}",
            web::delete().to(registration_tokens::delete_token),
        );
}

/// GET /_lattice/admin/v1/shards
///
/// For each sharded kind (each stream's writers, `background`): the live members, how
/// many shards each owner holds, and each shard's owner, epoch and whether
/// it was pinned there by hand.
async fn shards(node: web::Data<Node>, requester: Requester) -> ApiResult<HttpResponse> {
    if !requester.is_admin {
        return Err(ApiError::forbidden("this endpoint is for server admins"));
    }
    let mut kinds = Vec::new();
    for kind in crate::shards::KINDS {
        kinds.push(crate::shards::describe(&node.pool, kind).await?);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "kinds": kinds })))
}

#[derive(Debug, serde::Deserialize)]
struct MoveBody {
    to: String,
}

/// POST /_lattice/admin/v1/shards/{kind}/{shard}/move `{"to": instance}`
///
/// Moves one shard to a live member and pins it there.
async fn move_shard(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    if !requester.is_admin {
        return Err(ApiError::forbidden("this endpoint is for server admins"));
    }
    let (kind, shard) = path.into_inner();
    let shard: i32 = shard
        .parse()
        .map_err(|_| ApiError::invalid_param(format!("`{shard}` is not a shard number")))?;
    let body: MoveBody = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_json(format!("expected {{\"to\": instance}}: {error}")))?;
    use crate::shards::MoveError;
    match crate::shards::move_shard(&node.pool, &kind, shard, &body.to).await {
        Ok(epoch) => {
            node.refresh_shards_soon();
            Ok(HttpResponse::Ok().json(serde_json::json!({
                "kind": kind, "shard": shard, "owner": body.to, "epoch": epoch,
            })))
        }
        Err(error @ (MoveError::UnknownKind(_) | MoveError::NoSuchShard(_))) => {
            Err(ApiError::not_found(error.to_string()))
        }
        Err(error @ MoveError::NotAMember { .. }) => {
            Err(ApiError::invalid_param(error.to_string()))
        }
        Err(MoveError::Storage(error)) => Err(error.into()),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ReportsQuery {
    /// The `next_token` of the page before.
    from: Option<String>,
    limit: Option<String>,
}

/// GET /_lattice/admin/v1/reports
///
/// The reports users sent (events, rooms, users), newest first, in pages of
/// `limit` (default 100), as Synapse's `event_reports` admin API pages
/// them: `{"reports", "total", "next_token"}`.
async fn list_reports(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<ReportsQuery>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let before = match query.from.as_deref() {
        None => None,
        Some(from) => Some(
            from.parse::<i64>()
                .map_err(|_| ApiError::invalid_param("from must be a next_token"))?,
        ),
    };
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(limit) => limit
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::invalid_param("limit must be between 1 and 1000"))?,
    };
    let (reports, total) = crate::storage::reports::list(&node.pool, before, limit).await?;
    let mut body = serde_json::json!({ "reports": reports, "total": total });
    if reports.len() as i64 == limit {
        if let Some(last) = reports.last() {
            body["next_token"] = serde_json::json!(last.id.to_string());
        }
    }
    Ok(HttpResponse::Ok().json(body))
}

fn require_admin(requester: &Requester) -> ApiResult<()> {
    if !requester.is_admin {
        return Err(ApiError::forbidden("this endpoint is for server admins"));
    }
    Ok(())
}

/// This server's media id in an admin path (remote media is never stored).
fn local_media_id(node: &Node, server_name: &str, media_id: &str) -> ApiResult<MediaId> {
    if server_name != node.config.server_name {
        return Err(ApiError::not_found(
            "only this server's media is stored here",
        ));
    }
    MediaId::parse(media_id).ok_or_else(|| ApiError::not_found("media not found"))
}

/// POST /_lattice/admin/v1/media/quarantine/{serverName}/{mediaId}
///
/// A quarantined item answers 404 to everyone, its uploader included
/// (Synapse's admin API of the same shape). Its file stays, for review.
async fn quarantine_media(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let (server_name, media_id) = path.into_inner();
    let media_id = local_media_id(&node, &server_name, &media_id)?;
    if !crate::storage::media::quarantine(&node.pool, media_id.as_str(), &requester.user_id).await?
    {
        return Err(ApiError::not_found("media not found"));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}

/// POST /_lattice/admin/v1/user/{userId}/media/quarantine
async fn quarantine_user_media(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let user_id = path.into_inner();
    let quarantined =
        crate::storage::media::quarantine_user(&node.pool, &user_id, &requester.user_id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "num_quarantined": quarantined })))
}

/// DELETE /_lattice/admin/v1/media/{serverName}/{mediaId}
///
/// Removes the item's row, file and thumbnails.
async fn delete_media(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let (server_name, media_id) = path.into_inner();
    let media_id = local_media_id(&node, &server_name, &media_id)?;
    if !node.media.delete(&media_id).await? {
        return Err(ApiError::not_found("media not found"));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "deleted_media": [media_id.as_str()],
        "total": 1,
    })))
}

/// DELETE /_lattice/admin/v1/users/{userId}/media
async fn delete_user_media(
    node: web::Data<Node>,
    requester: Requester,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    require_admin(&requester)?;
    let user_id = path.into_inner();
    let mut deleted = Vec::new();
    for media_id in crate::storage::media::media_ids_of_user(&node.pool, &user_id).await? {
        let Some(media_id) = MediaId::parse(&media_id) else {
            continue;
        };
        if node.media.delete(&media_id).await? {
            deleted.push(media_id.as_str().to_owned());
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "total": deleted.len(),
        "deleted_media": deleted,
    })))
}

/// GET /_lattice/admin/v1/actors
///
/// The `Observe` snapshot of every actor of this instance: status, restarts,
/// queue length, and each actor's own state (the event persister's stream
/// position, for one), and the replication reader's counters.
async fn actors(node: web::Data<Node>, requester: Requester) -> ApiResult<HttpResponse> {
    if !requester.is_admin {
        return Err(ApiError::forbidden("this endpoint is for server admins"));
    }
    let snapshot = node.observe().await;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "instance": node.instance_name,
        "actors": snapshot.get("actors").cloned().unwrap_or_default(),
        // Present on instances that replicate (split deployments).
        "replication": snapshot.get("replication").cloned(),
    })))
}

/// GET /_lattice/admin/v1/cluster
///
/// Every instance of the deployment (name, roles, host, pid, start and last
/// heartbeat), for the events stream each writer's position and how far
/// each instance's view lags behind the newest, and how many shards of each
/// sharded kind each instance owns.
async fn cluster(node: web::Data<Node>, requester: Requester) -> ApiResult<HttpResponse> {
    if !requester.is_admin {
        return Err(ApiError::forbidden("this endpoint is for server admins"));
    }
    let mut view = crate::storage::instances::cluster(&node.pool).await?;
    // Who owns how many shards of each kind (the whole map:
    // `/_lattice/admin/v1/shards`).
    let mut shards = serde_json::Map::new();
    for kind in crate::shards::KINDS {
        let described = crate::shards::describe(&node.pool, kind).await?;
        shards.insert(
            kind.to_owned(),
            serde_json::json!({
                "live_members": described["live_members"],
                "shards_per_owner": described["shards_per_owner"],
            }),
        );
    }
    if let Some(object) = view.as_object_mut() {
        object.insert("shards".into(), shards.into());
    }
    Ok(HttpResponse::Ok().json(view))
}
