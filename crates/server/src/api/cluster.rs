//! `GET /admin/cluster`: the cluster as this node sees it: its link to NATS, and every live
//! node's record (models, version, config generation, in-flight requests, load).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use crate::gateway::Gateway;

/// 200 with `{"node", "link", "nodes", "problems"}`; 404 on a node that runs alone; 503 when
/// the nodes cannot be read (NATS unreachable), with this node's link state in the message.
pub async fn status(State(state): State<Arc<Gateway>>) -> Response {
    let Some(cluster) = &state.cluster else {
        return ApiError::not_clustered("GET /admin/cluster").into_response();
    };
    let link = cluster.link.state();
    let unavailable = |why: String| {
        ApiError::cluster_unavailable(format!(
            "The cluster's nodes cannot be read from {}: {why}. This node: {}",
            cluster.node, link.detail
        ))
        .into_response()
    };
    // Asking a broker that is not there would only wait for its timeout.
    if !link.connected {
        return unavailable("NATS is unreachable".into());
    }
    match cluster.members().live().await {
        Ok((nodes, problems)) => Json(json!({
            "node": cluster.node,
            "link": link,
            "nodes": nodes,
            "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => unavailable(e.to_string()),
    }
}
