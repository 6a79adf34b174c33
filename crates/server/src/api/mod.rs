//! The HTTP API: OpenAI-compatible generation endpoints and the operational ones.
//!
//! - [`generate`]: `POST /v1/chat/completions`, `POST /v1/completions`.
//! - [`ops`]: `/v1/models`, `/healthz`, `/readyz`, `/metrics`; [`admin`]: `POST /admin/reload`;
//!   [`dlq`]: `/admin/dlq` (the dead-letter queue).
//! - [`outcome`]: what is settled when a request ends (tokens charged, place freed, failure kept).
//! - [`middleware`]: request ids, access log, API keys.
//! - [`request`] / [`wire`]: the OpenAI request and response bodies; [`body`]: reading them.
//! - [`sse`]: streaming; [`error`]: every error a client can see, with its status.

pub mod access;
pub mod admin;
pub mod body;
pub mod budget;
pub mod dlq;
mod encoding;
pub mod error;
pub mod generate;
pub mod graft;
pub mod middleware;
pub mod ops;
pub mod outcome;
pub mod request;
pub mod sources;
pub mod sse;
pub mod wire;

use self::budget::BodyBudget;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::Request;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio_prompt_orchestrator::Pipeline;

use self::error::ApiError;
use crate::live::Live;

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
    /// The running config's pipeline, models and keys; replaced on reload.
    live: ArcSwap<Live>,
    /// Pipelines of replaced configs that still drain what they admitted, by generation.
    retired: Mutex<Vec<(u64, Pipeline)>>,
    /// Where reloads read the config from; unset when the server runs a built-in config.
    config_path: OnceLock<PathBuf>,
    /// One reload at a time.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Unix seconds at start, the `created` of every model in `/v1/models`.
    pub started_at: u64,
    readiness: AtomicU8,
    /// Clients that went away before their response was complete.
    client_disconnects: AtomicU64,
    /// The bytes of request bodies held at once; sized when the server starts.
    pub body_budget: BodyBudget,
}

impl AppState {
    pub fn new(live: Live, started_at: u64) -> Self {
        Self {
            body_budget: BodyBudget::new(live.config.server.max_body_bytes_in_flight),
            live: ArcSwap::from_pointee(live),
            retired: Mutex::new(Vec::new()),
            config_path: OnceLock::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            started_at,
            readiness: AtomicU8::new(Readiness::Starting as u8),
            client_disconnects: AtomicU64::new(0),
        }
    }

    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.get()
    }

    pub fn set_config_path(&self, path: PathBuf) {
        let _ = self.config_path.set(path);
    }

    /// The running config. Hold it only while admitting a request: a replaced config's
    /// pipeline closes its intake when the last holder lets go.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Puts `live` in place and returns the one it replaced, whose pipeline keeps draining.
    pub fn replace(self: &Arc<Self>, live: Live) -> Arc<Live> {
        let old = self.live.swap(Arc::new(live));
        let (generation, pipeline) = (old.generation, old.pipeline.clone());
        self.retired_mut().push((generation, pipeline.clone()));
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            pipeline.join().await;
            tracing::info!(
                generation,
                "The pipeline of a replaced config has drained and stopped."
            );
            if let Some(state) = state.upgrade() {
                state.retired_mut().retain(|(g, _)| *g != generation);
            }
        });
        old
    }

    /// Pipelines of replaced configs still draining.
    pub fn retired(&self) -> Vec<Pipeline> {
        self.retired_mut().iter().map(|(_, p)| p.clone()).collect()
    }

    fn retired_mut(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Pipeline)>> {
        self.retired.lock().unwrap_or_else(PoisonError::into_inner)
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
    let api = Router::new()
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/completions", post(generate::completions))
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
        .route("/admin/dlq", get(dlq::list).delete(dlq::purge))
        .route("/admin/dlq/replay", post(dlq::replay_entries))
        .route("/admin/dlq/{id}", get(dlq::show))
        .route_layer(from_fn_with_state(state.clone(), middleware::require_admin_key));
    Router::new()
        .merge(api)
        .merge(metrics)
        .merge(admin)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(access::AccessLayer::new(state.clone()))
        .with_state(state)
}

async fn not_found(request: Request) -> impl IntoResponse {
    ApiError::not_found_route(request.uri().path())
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::method_not_allowed()
}
