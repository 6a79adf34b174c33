//! The running gateway: the pipeline behind the HTTP API, and its drain on shutdown.
//!
//! Shutdown, when the trigger fires (SIGTERM/SIGINT in the binary):
//! 1. `/readyz` turns 503 and the pipeline stops admitting: new requests get 503 + `Retry-After`;
//! 2. after `drain_delay_ms` the listener closes;
//! 3. in-flight requests and streams run until done or until `shutdown_grace_ms` (counted from
//!    the trigger), when what is left ends with an error event;
//! 4. open connections get a moment to flush those last events, then `run` returns.
//!
//! Pipelines of configs replaced by a reload that are still draining are drained (and cut at
//! the deadline) together with the current one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use orchestrator_backends::Router;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{Cores, Layout, PipelineStats, ShutdownReport, StopOnDrop};
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::cluster::{Cluster, dlq, jobs, limits, membership, pushed, verdicts};
use crate::config::{Config, ServerConfig};
use crate::dlq::entry::unix_ms;
use crate::gateway::live::Live;
use crate::gateway::reload::{self, ReloadError, Reloaded};
use crate::gateway::{Gateway, Readiness};
use crate::http1;
use crate::models::build_router;
use crate::stats;
use crate::stored::StoredResponses;
use crate::telemetry::install_metrics;
use crate::telemetry::otlp::Tracing;

/// Joins the cluster the config names, if any. First of all: a node that cannot reach the
/// cluster it is configured for must not start serving alone as if it were a single node, and
/// its `kind = "cluster"` backends need the connection.
async fn join(config: &Config) -> io::Result<Option<Arc<Cluster>>> {
    match &config.cluster {
        Some(cluster) => Ok(Some(Cluster::join(cluster).await.map_err(io::Error::other)?)),
        None => Ok(None),
    }
}

/// How long connections may take to write their last bytes after the pipeline has finished.
const FLUSH_ALLOWANCE: Duration = Duration::from_secs(2);

/// Read-only view of a running server, for embedders' health checks and for tests.
#[derive(Clone)]
pub struct ServerHandle {
    state: Arc<Gateway>,
}

impl ServerHandle {
    pub fn readiness(&self) -> Readiness {
        self.state.readiness()
    }

    /// The request counts of the running config's pipeline.
    pub fn pipeline_stats(&self) -> PipelineStats {
        self.state.live().pipeline.stats()
    }

    /// Requests holding a place in the running pipeline, and requests waiting for one.
    pub fn admission_load(&self) -> (usize, usize) {
        self.state.live().gate.load()
    }

    /// Reloads the config file (what SIGHUP does).
    ///
    /// # Errors
    /// When the file has problems (the running pipeline is kept), there is no file, or the
    /// server is draining.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        reload::reload(&self.state).await
    }

    /// Which config is running: 0 at start, one more after each reload.
    pub fn generation(&self) -> u64 {
        self.state.live().generation
    }

    /// Clients that went away before their response was complete.
    pub fn client_disconnects(&self) -> u64 {
        self.state.client_disconnects()
    }

    /// Pipelines of configs replaced by a reload that are still draining.
    pub fn draining_pipelines(&self) -> usize {
        self.state.retired().len()
    }
}

/// A bound, not yet serving, gateway.
pub struct Server {
    listener: TcpListener,
    state: Arc<Gateway>,
    config: ServerConfig,
    /// Per-core: the core threads connections are handed to and the pipelines run on.
    cores: Option<Cores>,
    /// Ends the core threads when the server is done (or dropped).
    _stop_cores: Option<StopOnDrop>,
}

impl Server {
    /// Binds `config.server.listen` and starts the pipeline in front of the config's models.
    ///
    /// # Errors
    /// When a backend cannot be built or the address cannot be bound.
    pub async fn bind(config: Config) -> io::Result<Self> {
        // Building the backends sets gauges (health), which a recorder installed later would miss.
        install_metrics(&config.telemetry).map_err(io::Error::other)?;
        let cluster = join(&config).await?;
        let models = build_router(&config, cluster.as_ref()).map_err(io::Error::other)?;
        Self::start(config, models, cluster).await
    }

    /// Like [`bind`](Self::bind), serving `models` instead of the config's (tests and embedders
    /// bring their own workers).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind_with_models(config: Config, models: Router) -> io::Result<Self> {
        install_metrics(&config.telemetry).map_err(io::Error::other)?;
        let cluster = join(&config).await?;
        Self::start(config, models, cluster).await
    }

    async fn start(config: Config, models: Router, cluster: Option<Arc<Cluster>>) -> io::Result<Self> {
        let listener = TcpListener::bind(config.server.listen).await?;
        let cores = config.runtime.start_cores()?;
        let stop_cores = cores.as_ref().map(Cores::stop_on_drop);
        let layout = cores.clone().map_or(Layout::WorkStealing, Layout::On);
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let server_config = config.server.clone();
        let responses = match &config.responses {
            Some(wanted) => Some(
                StoredResponses::open(wanted, cluster.as_deref())
                    .await
                    .map_err(io::Error::other)?,
            ),
            None => None,
        };
        let tracing = config.telemetry.otlp.as_ref().map(Tracing::start).transpose();
        let tracing = tracing.map_err(io::Error::other)?;
        let live = Live::start(config, models, 0, None, cluster.as_deref(), layout);
        let live = live.map_err(io::Error::other)?;
        let mut gateway = Gateway::new(live, started_at, cluster, responses);
        gateway.tracing = tracing;
        let state = Arc::new(gateway);
        Ok(Self {
            listener,
            state,
            config: server_config,
            cores,
            _stop_cores: stop_cores,
        })
    }

    /// Lets reloads (SIGHUP, `POST /admin/reload`) read `path` again.
    pub fn reload_from(self, path: PathBuf) -> Self {
        self.state.set_config_path(path);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to watch the server while it runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` completes, then drains (see the module docs) and returns what the
    /// pipeline drained and aborted.
    ///
    /// # Errors
    /// When the HTTP server fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<ShutdownReport> {
        let Server {
            listener,
            state,
            config,
            cores,
            _stop_cores,
        } = self;
        let listener_address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let app = api::router(state.clone());
        let (close_listener, listener_closed) = tokio::sync::oneshot::channel::<()>();
        let serve = http1::serve(listener, app, http1::Edge::from(&config), cores, async {
            let _ = listener_closed.await;
        });
        let mut serving = tokio::spawn(serve);
        let leave = CancellationToken::new();
        // The feed's viewers are told the node is going as soon as it drains.
        let draining = CancellationToken::new();
        let node = match &state.cluster {
            Some(cluster) => cluster.node.clone(),
            None => listener_address.clone(),
        };
        let sampler = tokio::spawn(stats::run_sampler(Arc::downgrade(&state), node, draining.clone()));
        // The node's part in the cluster: its record, the pushed config, its dead letters.
        let in_cluster = state.cluster.clone().map(|cluster| {
            let address = listener_address.clone();
            [
                tokio::spawn(pushed::follow(cluster.clone(), state.clone(), leave.clone())),
                tokio::spawn(dlq::forward(cluster.clone(), state.clone(), leave.clone())),
                tokio::spawn(limits::return_idle(cluster.clone(), leave.clone())),
                tokio::spawn(verdicts::follow(cluster.clone(), state.clone(), leave.clone())),
                tokio::spawn(jobs::depth::watch(cluster.clone(), leave.clone())),
                tokio::spawn({
                    let (member, state) = (cluster.clone(), state.clone());
                    let started_at_ms = unix_ms(SystemTime::now());
                    let record = move || membership::gateway_record(&member, &state, &address, started_at_ms);
                    membership::heartbeat(cluster, record, leave.clone())
                }),
            ]
        });
        state.set_readiness(Readiness::Ready);

        tokio::select! {
            () = shutdown => {}
            result = &mut serving => {
                // The server stopped before being asked to.
                return Err(match result {
                    Ok(()) => io::Error::other("the HTTP server stopped unexpectedly"),
                    Err(e) => io::Error::other(e),
                });
            }
        }
        let grace_deadline = Instant::now() + Duration::from_millis(config.shutdown_grace_ms);
        tracing::info!(
            grace_ms = config.shutdown_grace_ms,
            drain_delay_ms = config.drain_delay_ms,
            "Draining: no new requests; in-flight ones may finish."
        );
        state.set_readiness(Readiness::Draining);
        draining.cancel();
        let _ = sampler.await;
        // Holding the reload lock keeps the pipelines as they are from here on.
        let _no_more_reloads = state.reload_lock.lock().await;
        let current = state.live().pipeline.clone();
        current.close();
        tokio::time::sleep(Duration::from_millis(config.drain_delay_ms)).await;
        let _ = close_listener.send(());
        let grace = grace_deadline.saturating_duration_since(Instant::now());
        let pipelines = std::iter::once(current).chain(state.retired());
        let reports = join_all(pipelines.map(|p| async move { p.shutdown(grace).await })).await;
        let report = reports
            .into_iter()
            .fold(ShutdownReport::default(), |sum, r| ShutdownReport {
                drained: sum.drained + r.drained,
                aborted: sum.aborted + r.aborted,
            });
        if tokio::time::timeout(FLUSH_ALLOWANCE, &mut serving).await.is_err() {
            tracing::warn!("Connections still open after the drain; closing them.");
            serving.abort();
        }
        // The node leaves the cluster once it serves nothing more, its last dead letters shared.
        leave.cancel();
        join_all(in_cluster.into_iter().flatten()).await;
        if let Some(tracing) = state.tracing.clone() {
            let _ = tokio::task::spawn_blocking(move || tracing.flush_blocking()).await;
        }
        tracing::info!(
            drained = report.drained,
            aborted = report.aborted,
            "Shutdown complete."
        );
        Ok(report)
    }
}
