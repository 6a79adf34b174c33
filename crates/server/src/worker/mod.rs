//! `orchestrator worker`: a process next to a model server that joins the cluster and runs
//! inference jobs from the broker on its own backends (any backend kind but `cluster`, through
//! the same router a gateway uses: balancing, retries, fallback, breakers).
//!
//! - [`pull`]: takes a job only when a slot is free, from the queue it should serve next;
//! - [`ownership`]: which partitions are this worker's, from membership;
//! - [`pending`]: which queue to pull from next (priority, own partitions, hand-off);
//! - [`job`]: runs one job and settles it with the broker; `cancels`: stopping jobs on request;
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz` on the worker's own port.
//!
//! SIGTERM drains: the worker stops pulling and gives up its partitions, lets its running jobs
//! finish (within `server.shutdown_grace_ms`; past it, jobs not yet answering go back to the
//! queue and the rest end with an error), leaves the cluster, and exits 0.

mod cancels;
pub mod config;
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
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

pub use self::cancels::Cancels;
use self::config::WorkerConfig;
use crate::cluster::Cluster;
use crate::cluster::membership::{self, NodeRecord, Role};
use crate::config::{BackendConfig, ClusterConfig, Config};
use crate::dlq::entry::unix_ms;
use crate::models::build_router;
use crate::telemetry::install_metrics;

/// `orchestrator worker --config FILE [--cluster URL] [--listen ADDR]`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The worker's file: `[[backends]]` and `[[models]]` it serves, `[worker]` slots,
    /// `[cluster]` (or `--cluster`), `[server] listen` for its metrics and health.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The cluster's NATS server, instead of (or without) the file's `[cluster] nats_url`.
    #[arg(long, value_name = "NATS_URL", env = "ORCHESTRATOR_CLUSTER")]
    pub cluster: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` listen, instead of `[server] listen`.
    #[arg(long, env = "ORCHESTRATOR_LISTEN")]
    pub listen: Option<SocketAddr>,
}

/// What the worker's tasks share.
pub struct Shared {
    pub cluster: Arc<Cluster>,
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
    /// How long a taken job stays this worker's without news (`cluster.node_timeout_ms`).
    pub ack_wait: Duration,
    pub heartbeat: Duration,
    pub draining: watch::Sender<bool>,
}

/// Exit status of a config with problems (as `serve` and `validate`).
const INVALID_CONFIG: u8 = 2;

/// Runs a worker until `shutdown` completes, then drains.
pub async fn run(args: &WorkerArgs, shutdown: impl Future<Output = ()>) -> ExitCode {
    let (config, cluster_config) = match load(args) {
        Ok(loaded) => loaded,
        Err(problem) => {
            eprintln!("{problem}");
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
    let cluster = match Cluster::join(&cluster_config).await {
        Ok(cluster) => cluster,
        Err(e) => {
            tracing::error!(error = %e, "Cannot join the cluster.");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%listen, error = %e, "Cannot listen for /metrics and health checks.");
            return ExitCode::FAILURE;
        }
    };
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let addr = address.clone();
    let slots = config.worker.slots.get();
    metrics::gauge!("orchestrator_worker_slots").set(slots as f64);
    let shared = Arc::new(Shared {
        cluster: cluster.clone(),
        router,
        models: config.models.iter().map(|m| m.name.clone()).collect(),
        config: config.worker,
        slots: Arc::new(Semaphore::new(slots)),
        running: AtomicUsize::new(0),
        cancels: Cancels::default(),
        abort: CancellationToken::new(),
        ack_wait: Duration::from_millis(cluster.config.node_timeout_ms),
        heartbeat: Duration::from_millis(cluster.config.heartbeat_ms),
        draining: watch::channel(false).0,
    });
    let stop_pulling = CancellationToken::new();
    let leave = CancellationToken::new();
    let ops = tokio::spawn(ops::serve(listener, shared.clone(), leave.clone()));
    let started_at_ms = unix_ms(SystemTime::now());
    let record = {
        let shared = shared.clone();
        move || worker_record(&shared, &address, started_at_ms)
    };
    let heartbeat = tokio::spawn(membership::heartbeat(cluster.clone(), record, leave.clone()));
    let cancels = tokio::spawn(cancels::hear_cancels(shared.clone(), leave.clone()));
    let (owned_tx, owned_rx) = watch::channel(ownership::Owned::default());
    // The first owners are known before the first pull, so a joining worker does not take its
    // neighbours' jobs while it learns who they are.
    if let Ok((members, _)) = cluster.members().live().await {
        owned_tx.send_replace(ownership::owned(&members, &shared.models, &cluster.node, false));
    }
    let owners = tokio::spawn(ownership::follow(
        cluster.clone(),
        shared.models.clone(),
        shared.draining.subscribe(),
        owned_tx,
        leave.clone(),
    ));
    let puller = pull::Puller::new(shared.clone(), owned_rx, config.admission.starvation_bound);
    let pulling = tokio::spawn(puller.run(stop_pulling.clone()));
    tracing::info!(
        node = %cluster.node,
        models = %shared.models.join(", "),
        slots,
        addr,
        "Worker ready; taking jobs."
    );

    shutdown.await;
    tracing::info!(
        grace_ms = config.server.shutdown_grace_ms,
        "Draining: no new jobs; running ones may finish."
    );
    shared.draining.send_replace(true);
    stop_pulling.cancel();
    let _ = pulling.await;
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
    let _ = tokio::join!(heartbeat, cancels, owners, ops);
    tracing::info!("Worker stopped.");
    ExitCode::SUCCESS
}

/// The worker's file, and the cluster it joins.
///
/// # Errors
/// Every problem of the file, or why it cannot be a worker's.
fn load(args: &WorkerArgs) -> Result<(Config, ClusterConfig), String> {
    let mut config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let file = args.config.display();
    if let Some(problem) = worker_problem(&config) {
        return Err(format!("{file}: {problem}"));
    }
    let cluster =
        ClusterConfig::with_url(config.cluster.take(), args.cluster.as_deref()).ok_or_else(|| {
            format!(
                "{file}: a worker takes its jobs from the cluster's broker: add [cluster] with nats_url, \
             or start it with --cluster nats://HOST:PORT"
            )
        })?;
    Ok((config, cluster))
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
             models on its own model servers (kind echo, openai, vllm or llamacpp)",
            backend.name()
        ));
    }
    None
}

fn worker_record(shared: &Shared, address: &str, started_at_ms: u64) -> NodeRecord {
    let slots = shared.config.slots.get();
    let running = shared.running.load(Ordering::Relaxed);
    NodeRecord {
        name: shared.cluster.node.clone(),
        instance: shared.cluster.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        address: address.to_owned(),
        started_at_ms,
        models: shared.models.clone(),
        generation: 0,
        config_revision: None,
        config_error: None,
        in_flight: running,
        queued: 0,
        load: running as f64 / slots as f64,
        down_backends: Vec::new(),
        role: Role::Worker,
        slots,
        draining: *shared.draining.borrow(),
    }
}
