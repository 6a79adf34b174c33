//! `orchestrator worker`: a process next to a model server that runs inference for gateways on
//! its own backends (any backend kind but `cluster`, through the same router a gateway uses:
//! balancing, retries, fallback, breakers). Work reaches it two ways, alone or together, sharing
//! its slots:
//!
//! - from the cluster's broker ([`broker`]): [`pull`] takes a job only when a slot is free, from
//!   the queue it should serve next ([`pending`], [`ownership`]); [`job`] runs one and settles it
//!   with the broker; `cancels` stops jobs on request;
//! - directly from gateways over gRPC ([`grpc`]): a call takes a free slot or is refused at once.
//!
//! [`ops`] serves `/metrics`, `/healthz`, `/readyz` on the worker's own port.
//!
//! SIGTERM drains: the worker takes no new work (stops pulling, gives up its partitions, refuses
//! new calls), lets its running jobs finish (within `server.shutdown_grace_ms`; past it, jobs not
//! yet answering go back to the queue and the rest end with an error), leaves the cluster, and
//! exits 0.

mod broker;
mod cancels;
pub mod config;
pub mod grpc;
pub mod job;
pub mod ops;
pub mod ownership;
pub mod pending;
pub mod pull;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use clap::Args;
use orchestrator_backends::Router;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

pub use self::cancels::Cancels;
use self::config::WorkerConfig;
use crate::cluster::Cluster;
use crate::cluster::config::host_and_pid;
use crate::config::{BackendConfig, ClusterConfig, Config};
use crate::dlq::entry::unix_ms;
use crate::models::build_router;
use crate::telemetry::install_metrics;

/// `orchestrator worker --config FILE [--cluster URL] [--grpc-listen ADDR] [--listen ADDR]`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The worker's file: `[[backends]]` and `[[models]]` it serves, `[worker]` slots and gRPC
    /// settings, `[cluster]` (or `--cluster`), `[server] listen` for its metrics and health.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The cluster's NATS server, instead of (or without) the file's `[cluster] nats_url`.
    #[arg(long, value_name = "NATS_URL", env = "ORCHESTRATOR_CLUSTER")]
    pub cluster: Option<String>,
    /// Serve gateways directly over gRPC at this address, instead of `[worker.grpc] listen`.
    #[arg(long, value_name = "ADDR", env = "ORCHESTRATOR_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// Where `/metrics`, `/healthz` and `/readyz` listen, instead of `[server] listen`.
    #[arg(long, env = "ORCHESTRATOR_LISTEN")]
    pub listen: Option<SocketAddr>,
}

/// What the worker's tasks share.
pub struct Shared {
    /// The worker's name: its node name in a cluster, else `[worker] name`.
    pub name: String,
    pub router: Arc<Router>,
    /// The models served, in config order; indexes into this name them in the pull loop.
    pub models: Vec<String>,
    pub config: WorkerConfig,
    /// One permit per slot: a job holds one while it runs (and the pull loop one while it
    /// looks for a job to fill it).
    pub slots: Arc<Semaphore>,
    /// Jobs running now.
    pub running: AtomicUsize,
    pub cancels: Cancels,
    /// Cancelled when the drain's grace runs out: every running job stops.
    pub abort: CancellationToken,
    pub draining: watch::Sender<bool>,
}

/// How a job ended here, as `orchestrator_worker_jobs_total{outcome}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
    Refused,
    Expired,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Refused => "refused",
            Outcome::Expired => "expired",
        }
    }
}

/// One job running here, from the broker or a gRPC call: it holds its slot, counts in
/// `orchestrator_worker_running` while it lives, and in `orchestrator_worker_jobs_total{model,
/// outcome}` when it goes (as cancelled unless [`end`](Self::end) said otherwise: a job dropped
/// unfinished is one whose caller went away).
pub struct Running {
    shared: Arc<Shared>,
    model: String,
    outcome: Outcome,
    _slot: OwnedSemaphorePermit,
}

impl Running {
    pub fn start(shared: &Arc<Shared>, model: String, slot: OwnedSemaphorePermit) -> Self {
        let running = shared.running.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("orchestrator_worker_running").set(running as f64);
        Self {
            shared: shared.clone(),
            model,
            outcome: Outcome::Cancelled,
            _slot: slot,
        }
    }

    pub fn end(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let running = self.shared.running.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("orchestrator_worker_running").set(running as f64);
        metrics::counter!(
            "orchestrator_worker_jobs_total",
            "model" => std::mem::take(&mut self.model),
            "outcome" => self.outcome.as_str()
        )
        .increment(1);
    }
}

/// Exit status of a config with problems (as `serve` and `validate`).
const INVALID_CONFIG: u8 = 2;

/// Runs a worker until `shutdown` completes, then drains.
pub async fn run(args: &WorkerArgs, shutdown: impl Future<Output = ()>) -> ExitCode {
    let (config, cluster_config, grpc_listen) = match load(args) {
        Ok(loaded) => loaded,
        Err(problem) => {
            eprintln!("{problem}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    let file = args.config.display();
    let grpc_settings = match grpc_listen
        .map(|_| grpc::Settings::load(config.worker.grpc.clone().unwrap_or_default()))
        .transpose()
    {
        Ok(settings) => settings,
        Err(problem) => {
            eprintln!("{file}: worker.grpc.{problem}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    let listen = args.listen.unwrap_or(config.server.listen);
    // The recorder must exist before the backends set their gauges.
    if let Err(problem) = install_metrics(&config.telemetry) {
        eprintln!("{problem}");
        return ExitCode::from(INVALID_CONFIG);
    }
    let router = match build_router(&config, None) {
        Ok(router) => Arc::new(router),
        Err(e) => {
            tracing::error!(error = %e, "Cannot start.");
            return ExitCode::FAILURE;
        }
    };
    let cluster = match &cluster_config {
        None => None,
        Some(cluster_config) => match Cluster::join(cluster_config).await {
            Ok(cluster) => Some(cluster),
            Err(e) => {
                tracing::error!(error = %e, "Cannot join the cluster.");
                return ExitCode::FAILURE;
            }
        },
    };
    let Some(listener) = bind(listen, "/metrics and health checks").await else {
        return ExitCode::FAILURE;
    };
    let grpc_listener = match grpc_listen {
        None => None,
        Some(addr) => match bind(addr, "gRPC calls (worker.grpc.listen)").await {
            Some(listener) => Some(listener),
            None => return ExitCode::FAILURE,
        },
    };
    let address = local_address(&listener);
    let grpc_address = grpc_listener.as_ref().map(local_address);
    let slots = config.worker.slots.get();
    metrics::gauge!("orchestrator_worker_slots").set(slots as f64);
    let name = match &cluster {
        Some(cluster) => cluster.node.clone(),
        None => config.worker.name.clone().unwrap_or_else(host_and_pid),
    };
    let shared = Arc::new(Shared {
        name,
        router,
        models: config.models.iter().map(|m| m.name.clone()).collect(),
        config: config.worker,
        slots: Arc::new(Semaphore::new(slots)),
        running: AtomicUsize::new(0),
        cancels: Cancels::default(),
        abort: CancellationToken::new(),
        draining: watch::channel(false).0,
    });
    let grpc_services = match grpc_settings {
        Some(settings) => match grpc::prepare(&shared, settings).await {
            Ok(services) => Some(services),
            Err(problem) => {
                tracing::error!(error = %problem, "Cannot serve gRPC.");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let leave = CancellationToken::new();
    let ops = tokio::spawn(ops::serve(
        listener,
        shared.clone(),
        cluster.clone(),
        leave.clone(),
    ));
    let serving = match (grpc_services, grpc_listener) {
        (Some(services), Some(listener)) => {
            Some(tokio::spawn(grpc::serve(services, listener, leave.clone())))
        }
        _ => None,
    };
    let started_at_ms = unix_ms(SystemTime::now());
    let mut broker = match &cluster {
        Some(cluster) => Some(
            broker::Broker::start(
                &shared,
                cluster,
                address.clone(),
                started_at_ms,
                config.admission.starvation_bound,
                &leave,
            )
            .await,
        ),
        None => None,
    };
    tracing::info!(
        node = %shared.name,
        models = %shared.models.join(", "),
        slots,
        addr = address,
        grpc = grpc_address,
        broker = cluster.is_some(),
        "Worker ready; taking jobs."
    );

    shutdown.await;
    tracing::info!(
        grace_ms = config.server.shutdown_grace_ms,
        "Draining: no new jobs; running ones may finish."
    );
    shared.draining.send_replace(true);
    if let Some(broker) = &mut broker {
        broker.stop_pulling().await;
    }
    let all = u32::try_from(slots).unwrap_or(u32::MAX);
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    if tokio::time::timeout(grace, shared.slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("The grace ran out; ending the jobs still running.");
        shared.abort.cancel();
        let _ = shared.slots.acquire_many(all).await;
    }
    leave.cancel();
    if let Some(broker) = broker {
        broker.left().await;
    }
    if let Some(serving) = serving {
        let _ = serving.await;
    }
    let _ = ops.await;
    tracing::info!("Worker stopped.");
    ExitCode::SUCCESS
}

async fn bind(addr: SocketAddr, what: &str) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::error!(listen = %addr, error = %e, "Cannot listen for {what}.");
            None
        }
    }
}

fn local_address(listener: &TcpListener) -> String {
    listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// The worker's file, the cluster it joins and where it serves gRPC, if it does.
///
/// # Errors
/// Every problem of the file, or why it cannot be a worker's.
fn load(args: &WorkerArgs) -> Result<(Config, Option<ClusterConfig>, Option<SocketAddr>), String> {
    let mut config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let file = args.config.display();
    if let Some(problem) = worker_problem(&config) {
        return Err(format!("{file}: {problem}"));
    }
    let cluster = ClusterConfig::with_url(config.cluster.take(), args.cluster.as_deref());
    let grpc = args
        .grpc_listen
        .or_else(|| config.worker.grpc.as_ref().and_then(|g| g.listen));
    if config.worker.grpc.is_some() && grpc.is_none() {
        return Err(format!(
            "{file}: worker.grpc: no address to serve gRPC on: set listen, or start the worker with \
             --grpc-listen HOST:PORT"
        ));
    }
    if cluster.is_none() && grpc.is_none() {
        return Err(format!(
            "{file}: a worker needs a way to get work: [cluster] with nats_url (or --cluster \
             nats://HOST:PORT) to take jobs from the broker, and/or [worker.grpc] listen (or \
             --grpc-listen HOST:PORT) to serve gateways directly"
        ));
    }
    if cluster.is_some() && config.worker.name.is_some() {
        return Err(format!(
            "{file}: worker.name: in a cluster the worker is named by cluster.node_name; move the \
             name there"
        ));
    }
    Ok((config, cluster, grpc))
}

/// Why `config` cannot be a worker's, if it cannot.
fn worker_problem(config: &Config) -> Option<String> {
    if let Some(backend) = config
        .backends
        .iter()
        .find(|b| matches!(b, BackendConfig::Cluster(_)))
    {
        return Some(format!(
            "backends: {} is kind = \"cluster\", which sends jobs to workers; a worker runs its \
             models on its own model servers (kind echo, openai, vllm, llamacpp or grpc)",
            backend.name()
        ));
    }
    None
}
