//! A worker's own HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is up) and
//! `/readyz` (200 while it takes jobs; 503 while draining or without NATS, with the reason).

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

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(crate::api::ops::metrics))
        .route("/healthz", get(crate::api::ops::healthz))
        .route("/readyz", get(readyz))
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "The worker's HTTP endpoints stopped.");
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let slots = shared.config.slots.get();
    let running = shared.running.load(std::sync::atomic::Ordering::Relaxed);
    let link = shared.cluster.link.state();
    let (status, code) = if *shared.draining.borrow() {
        ("draining", StatusCode::SERVICE_UNAVAILABLE)
    } else if !link.ok {
        ("disconnected", StatusCode::SERVICE_UNAVAILABLE)
    } else {
        ("ready", StatusCode::OK)
    };
    let body = json!({
        "status": status,
        "role": "worker",
        "models": shared.models,
        "slots": slots,
        "running": running,
        "cluster": link,
    });
    (code, Json(body)).into_response()
}
