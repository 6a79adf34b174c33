//! The gateway layer: what a request goes through between an edge (the HTTP API in `api`, or any
//! other that plugs in) and the pipeline, with no HTTP in it. An edge reads a request in its own
//! shape and calls, in order:
//!
//! 1. [`Gateway::live`]: the running config ([`live`]), replaced whole by [`reload`];
//! 2. [`auth`] and [`limits`]: who is calling, and whether its rate limits let it in;
//! 3. [`budget`]: room for the body's bytes;
//! 4. a [`Format`] (the edge's own) to check the body and build the pipeline request, and the
//!    model's [`cache`], which may hold the answer already;
//! 5. [`admit::admit`]: the key's [`token_budget`] reserved, a place in the pipeline by priority,
//!    then submission;
//! 6. [`outcome`]: when the answer ends, tokens charged, place freed, a failure kept as a dead
//!    letter (`crate::dlq`);
//!
//! and writes the answer, or the [`error::ApiError`], in its own shape.

pub mod admit;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod error;
pub mod gcra;
pub mod limits;
pub mod live;
pub mod outcome;
pub mod reload;
pub mod token_budget;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use tokio_prompt_orchestrator::Pipeline;

pub use self::admit::{Delivery, Format, Hints};
use self::budget::BodyBudget;
use self::live::Live;
use crate::cluster::Cluster;
use crate::stats::StatsFeed;
use crate::stored::StoredResponses;
use crate::telemetry::otlp::Tracing;

/// Where the server is in its life; `/readyz` answers 200 only while `Ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    Starting = 0,
    Ready = 1,
    Draining = 2,
}

/// The gateway: the running config (replaced on reload) and what outlives a config.
pub struct Gateway {
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
    /// This node's place in a cluster, when `[cluster]` is configured.
    pub cluster: Option<Arc<Cluster>>,
    /// The Responses API's stored answers, when `[responses]` is configured; opened at start.
    pub responses: Option<StoredResponses>,
    /// Snapshots for the dashboard, `orchestrator top` and `/admin/stats`.
    pub stats: StatsFeed,
    /// Where traces go, when `[telemetry.otlp]` is configured; started with the server.
    pub tracing: Option<Arc<Tracing>>,
}

impl Gateway {
    pub fn new(
        live: Live,
        started_at: u64,
        cluster: Option<Arc<Cluster>>,
        responses: Option<StoredResponses>,
    ) -> Self {
        Self {
            cluster,
            responses,
            body_budget: BodyBudget::new(live.config.server.max_body_bytes_in_flight),
            live: ArcSwap::from_pointee(live),
            retired: Mutex::new(Vec::new()),
            config_path: OnceLock::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            started_at,
            readiness: AtomicU8::new(Readiness::Starting as u8),
            client_disconnects: AtomicU64::new(0),
            stats: StatsFeed::default(),
            tracing: None,
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

    pub fn record_disconnect(&self) {
        self.client_disconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Unix time in whole seconds (the `created` of answers and models).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
