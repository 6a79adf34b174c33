//! The HTTP API: OpenAI-compatible generation endpoints and the operational ones.
//!
//! - [`generate`]: `POST /v1/chat/completions`, `POST /v1/completions`.
//! - [`ops`]: `/v1/models`, `/healthz`, `/readyz`, `/metrics`.
//! - [`middleware`]: request ids, access log, API keys.
//! - [`request`] / [`wire`]: the OpenAI request and response bodies; [`body`]: reading them.
//! - [`sse`]: streaming; [`error`]: every error a client can see, with its status.

pub mod body;
pub mod error;
pub mod generate;
pub mod middleware;
pub mod ops;
pub mod request;
pub mod sse;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio_prompt_orchestrator::RequestSender;

use self::error::ApiError;
use crate::auth::ApiKeys;
use orchestrator_backends::Router as ModelRouter;

/// Where the server is in its life; `/readyz` answers 200 only while `Ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    Starting = 0,
    Ready = 1,
    Draining = 2,
}

/// What every handler shares.
pub struct AppState {
    pub sender: RequestSender,
    pub models: Arc<ModelRouter>,
    /// `None` when no keys are configured: the API is open.
    pub keys: Option<ApiKeys>,
    pub max_body_bytes: usize,
    /// Unix seconds at start, the `created` of every model in `/v1/models`.
    pub started_at: u64,
    readiness: AtomicU8,
    /// Clients that went away before their response was complete.
    client_disconnects: AtomicU64,
}

impl AppState {
    pub fn new(
        sender: RequestSender,
        models: Arc<ModelRouter>,
        keys: Option<ApiKeys>,
        max_body_bytes: usize,
        started_at: u64,
    ) -> Self {
        Self {
            sender,
            models,
            keys,
            max_body_bytes,
            started_at,
            readiness: AtomicU8::new(Readiness::Starting as u8),
            client_disconnects: AtomicU64::new(0),
        }
    }

    pub fn readiness(&self) -> Readiness {
        match self.readiness.load(Ordering::Acquire) {
            0 => Readiness::Starting,
            1 => Readiness::Ready,
            _ => Readiness::Draining,
        }
    }

    pub fn set_readiness(&self, readiness: Readiness) {
        self.readiness.store(readiness as u8, Ordering::Release);
    }

    pub fn client_disconnects(&self) -> u64 {
        self.client_disconnects.load(Ordering::Relaxed)
    }

    fn record_disconnect(&self) {
        self.client_disconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every route, with its middleware.
pub fn router(state: Arc<AppState>) -> Router {
    let protect_metrics = state.keys.as_ref().is_some_and(|k| k.protect_metrics);
    let api = Router::new()
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/models", get(ops::list_models))
        .route("/v1/models/{*model}", get(ops::get_model))
        .route_layer(from_fn_with_state(state.clone(), middleware::require_key));
    let mut metrics = Router::new().route("/metrics", get(ops::metrics));
    if protect_metrics {
        metrics = metrics.route_layer(from_fn_with_state(state.clone(), middleware::require_key));
    }
    Router::new()
        .merge(api)
        .merge(metrics)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), middleware::request_context))
        .with_state(state)
}

async fn not_found(request: Request) -> impl IntoResponse {
    ApiError::not_found_route(request.uri().path())
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::method_not_allowed()
}
