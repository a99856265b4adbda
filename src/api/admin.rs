//! Lattice's own admin API (`/_lattice/admin/v1/...`), for server admins only.

use actix_web::{web, HttpResponse};

use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::node::Node;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/_lattice/admin/v1/actors", web::get().to(actors))
        .route("/_lattice/admin/v1/cluster", web::get().to(cluster));
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
/// heartbeat) and, for the events stream, each writer's position and how far
/// each instance's view lags behind the newest.
async fn cluster(node: web::Data<Node>, requester: Requester) -> ApiResult<HttpResponse> {
    if !requester.is_admin {
        return Err(ApiError::forbidden("this endpoint is for server admins"));
    }
    Ok(HttpResponse::Ok().json(crate::storage::instances::cluster(&node.pool).await?))
}
