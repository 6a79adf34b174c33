//! The served models: the config's backends built into workers, and each model's route over
//! them (balancing, retries, fallback), all in one `Router`, which is the pipeline's
//! `ModelWorker`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use orchestrator_backends::OpenAiWorker;
use orchestrator_backends::llamacpp::LlamaCppWorker;
use orchestrator_backends::openai::{BuildError, Flavor};
use orchestrator_backends::routing::health::{self, HealthConfig, HealthProbe};
use orchestrator_backends::routing::replica::Replica;
use orchestrator_backends::routing::{Group, Route, Router};
use orchestrator_grpc::GrpcWorker;
use tokio_prompt_orchestrator::{EchoWorker, ModelWorker};

use crate::cluster::Cluster;
use crate::cluster::jobs::backend::RemoteWorker;
use crate::config::{BackendConfig, Config};

/// The router of a validated config, with the health checks of its backends running (they stop
/// when the router is dropped). Must be called inside a tokio runtime. `cluster` is the cluster
/// the node has joined, which `kind = "cluster"` backends send their jobs through.
///
/// # Errors
/// When a backend cannot be built (e.g. its API key variable vanished since validation, or it
/// is `kind = "cluster"` and the node is not in a cluster).
pub fn build_router(config: &Config, cluster: Option<&Arc<Cluster>>) -> Result<Router, String> {
    // One replica per backend, shared by every model that uses it: its breaker and in-flight
    // count see all of its traffic.
    let mut replicas: HashMap<&str, Arc<Replica>> = HashMap::new();
    for backend in &config.backends {
        let built =
            build_backend(backend, cluster).map_err(|e| format!("backend {}: {e}", backend.name()))?;
        let replica = Arc::new(Replica::new(backend.name(), built.worker, backend.routing()));
        if let Some((probe, config)) = built.health {
            health::watch(&replica, probe, config);
        }
        replicas.insert(backend.name(), replica);
    }
    let mut router = Router::new();
    for model in &config.models {
        // Validation has checked that every name refers to a declared backend.
        let group = |names: &[String]| {
            let members: Vec<Arc<Replica>> = names
                .iter()
                .filter_map(|n| replicas.get(n.as_str()).cloned())
                .collect();
            Group::new(members, model.balancing)
        };
        let mut groups = vec![group(&model.backends)];
        if !model.fallback.is_empty() {
            groups.push(group(&model.fallback));
        }
        router.insert(&model.name, Route::new(groups, model.retries));
    }
    Ok(router)
}

/// A backend's worker, and how to check its health if it can be checked.
struct Built {
    worker: Arc<dyn ModelWorker>,
    health: Option<(Arc<dyn HealthProbe>, HealthConfig)>,
}

impl Built {
    fn checked<W: ModelWorker + HealthProbe>(worker: W, config: HealthConfig) -> Self {
        let worker = Arc::new(worker);
        Self {
            worker: worker.clone(),
            health: Some((worker, config)),
        }
    }
}

fn build_backend(config: &BackendConfig, cluster: Option<&Arc<Cluster>>) -> Result<Built, String> {
    let failed = |e: BuildError| e.to_string();
    Ok(match config {
        BackendConfig::Echo { token_delay_ms, .. } => Built {
            worker: Arc::new(if *token_delay_ms == 0 {
                EchoWorker::new()
            } else {
                EchoWorker::with_token_delay(Duration::from_millis(*token_delay_ms))
            }),
            health: None,
        },
        BackendConfig::Openai(c) => {
            Built::checked(OpenAiWorker::new(c).map_err(failed)?, c.health(Flavor::OpenAi))
        }
        BackendConfig::Vllm(c) => Built::checked(
            OpenAiWorker::with_flavor(c, Flavor::Vllm).map_err(failed)?,
            c.health(Flavor::Vllm),
        ),
        BackendConfig::Llamacpp(c) => Built::checked(LlamaCppWorker::new(c).map_err(failed)?, c.health_check),
        BackendConfig::Grpc(c) => Built::checked(GrpcWorker::new(c).map_err(failed)?, c.health_check),
        BackendConfig::Cluster(c) => {
            let cluster = cluster.ok_or(
                "kind = \"cluster\" sends jobs to workers through the cluster's broker, and this node \
                 is in no cluster: add [cluster] with nats_url, or start it with --cluster URL",
            )?;
            Built {
                worker: Arc::new(RemoteWorker::new(cluster.clone(), c.clone())),
                health: None,
            }
        }
    })
}
