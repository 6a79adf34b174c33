//! A worker's own HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is up) and
//! `/readyz` (200 while it takes jobs; 503 while draining or, in a cluster, without NATS, with the
//! reason).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::cluster::Cluster;

/// What the endpoints read: the worker, and its cluster when it joined one.
#[derive(Clone)]
struct Ops {
    shared: Arc<Shared>,
    cluster: Option<Arc<Cluster>>,
}

/// Serves until `stop`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    cluster: Option<Arc<Cluster>>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(crate::api::ops::metrics))
        .route("/healthz", get(crate::api::ops::healthz))
        .route("/readyz", get(readyz))
        .with_state(Ops { shared, cluster });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "The worker's HTTP endpoints stopped.");
    }
}

async fn readyz(State(Ops { shared, cluster }): State<Ops>) -> Response {
    let slots = shared.config.slots.get();
    let running = shared.running.load(std::sync::atomic::Ordering::Relaxed);
    let link = cluster.map(|c| c.link.state());
    let (status, code) = if *shared.draining.borrow() {
        ("draining", StatusCode::SERVICE_UNAVAILABLE)
    } else if link.as_ref().is_some_and(|link| !link.ok) {
        ("disconnected", StatusCode::SERVICE_UNAVAILABLE)
    } else {
        ("ready", StatusCode::OK)
    };
    let body = json!({
        "status": status,
        "role": "worker",
        "name": shared.name,
        "models": shared.models,
        "slots": slots,
        "running": running,
        "cluster": link,
    });
    (code, Json(body)).into_response()
}
