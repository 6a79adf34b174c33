//! The HTTP API: OpenAI-compatible generation endpoints and the operational ones.
//!
//! - [`generate`]: `POST /v1/chat/completions`, `POST /v1/completions`; [`accept`]: what every
//!   generation endpoint does before it answers; [`hints`]: what request headers add.
//! - [`anthropic`]: `POST /v1/messages` and `/v1/messages/count_tokens`, Anthropic's API.
//! - [`responses`]: `POST /v1/responses` and stored responses, OpenAI's Responses API.
//! - [`embeddings`]: `POST /v1/embeddings`, for models of `kind = "embedding"`.
//! - [`ops`]: `/v1/models`, `/healthz`, `/readyz`, `/metrics`; [`admin`]: `POST /admin/reload`;
//!   [`dlq`]: `/admin/dlq` (the dead-letter queue); [`cluster`]: `/admin/cluster`; [`stats`]:
//!   `/admin/stats`, its live feed `/admin/stats/stream`, and `/dashboard`.
//! - [`middleware`]: request ids, access log, API keys.
//! - [`request`] / [`wire`]: the OpenAI request and response bodies; [`body`]: reading them.
//! - [`sse`]: streaming, written as [`frames`]; [`error`]: every error a client can see, with its status.
//! - [`cached`]: answers from the response cache, as the client asked for them.

pub mod accept;
pub mod access;
pub mod admin;
pub mod anthropic;
pub mod body;
pub mod cached;
pub mod cluster;
pub mod dlq;
pub mod embeddings;
mod encoding;
pub mod error;
pub mod format;
pub mod frames;
pub mod generate;
pub mod graft;
pub mod hints;
pub mod middleware;
pub mod ops;
pub mod request;
pub mod responses;
pub mod sources;
pub mod sse;
pub mod stats;
mod timing;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use self::error::ApiError;
use crate::gateway::Gateway;

/// Every route, with its middleware.
pub fn router(state: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/completions", post(generate::completions))
        .route(anthropic::MESSAGES, post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route(responses::RESPONSES, post(responses::create))
        .route(embeddings::EMBEDDINGS, post(embeddings::create))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route("/v1/models", get(ops::list_models))
        .route("/v1/models/{*model}", get(ops::get_model));
    // Whether /metrics needs a key is the running config's say, so it is decided per request.
    let metrics = Router::new()
        .route("/metrics", get(ops::metrics))
        .route_layer(from_fn_with_state(
            state.clone(),
            middleware::require_key_for_metrics,
        ));
    let admin = Router::new()
        .route("/admin/reload", post(admin::reload))
        .route("/admin/cluster", get(cluster::status))
        .route("/admin/dlq", get(dlq::list).delete(dlq::purge))
        .route("/admin/dlq/replay", post(dlq::replay_entries))
        .route("/admin/dlq/{id}", get(dlq::show))
        .route("/admin/stats", get(stats::latest))
        .route("/admin/stats/stream", get(stats::stream))
        .route_layer(from_fn_with_state(state.clone(), middleware::require_admin_key));
    Router::new()
        .merge(api)
        .merge(metrics)
        .merge(admin)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/dashboard", get(stats::dashboard))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(access::AccessLayer::new(state.clone()))
        .with_state(state)
}

/// A 200 whose body is already written as JSON.
pub fn json_body(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

async fn not_found(request: Request) -> impl IntoResponse {
    ApiError::not_found_route(request.uri().path())
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::method_not_allowed()
}
