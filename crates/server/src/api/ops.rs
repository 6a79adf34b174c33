//! The operational endpoints: the model list, liveness, readiness, Prometheus metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::middleware::Authorized;
use super::wire::{ModelList, ModelObject};
use crate::gateway::{Gateway, Readiness};
use crate::telemetry::prometheus;

fn model_object<'a>(state: &Gateway, id: &'a str) -> ModelObject<'a> {
    ModelObject {
        id,
        object: "model",
        created: state.started_at,
        owned_by: "orchestrator",
    }
}

/// `GET /v1/models`: every served model, in config order.
pub async fn list_models(State(state): State<Arc<Gateway>>, _: Authorized) -> Response {
    let live = state.live();
    let data = live
        .models
        .names()
        .iter()
        .map(|m| model_object(&state, m))
        .collect();
    Json(ModelList { object: "list", data }).into_response()
}

/// `GET /v1/models/{model}`.
pub async fn get_model(
    State(state): State<Arc<Gateway>>,
    _: Authorized,
    model: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(model)) = model else {
        return ApiError::invalid(
            "model",
            "the model name in the URL is not valid UTF-8 once its %-escapes are decoded",
        )
        .into_response();
    };
    if state.live().models.contains(&model) {
        Json(model_object(&state, &model)).into_response()
    } else {
        ApiError::model_not_found(&model).into_response()
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 while serving, 503 while starting or draining. In cluster mode the body
/// says how the node's link to NATS is: a node that lost it still serves (200), with its local
/// state, and says so in `cluster.detail`.
pub async fn readyz(State(state): State<Arc<Gateway>>) -> Response {
    match state.readiness() {
        Readiness::Ready => match &state.cluster {
            None => Json(json!({"status": "ready"})).into_response(),
            Some(cluster) => {
                let link = cluster.link.state();
                let status = if link.ok { "ready" } else { "degraded" };
                Json(json!({"status": status, "cluster": link})).into_response()
            }
        },
        Readiness::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        )
            .into_response(),
        Readiness::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        prometheus().render(),
    )
        .into_response()
}
