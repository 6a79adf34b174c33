//! `[worker]`: how an `orchestrator worker` takes work. The rest of a worker's file is the same
//! as a gateway's: `[cluster]`, `[[backends]]`, `[[models]]`, and `[server]` for its own
//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs run at once. The worker pulls a job only when one is free, and refuses a gRPC call
    /// when none is, so work waits in the broker or the gateway, where any worker with room can
    /// take it, and never in a worker.
    pub slots: NonZeroUsize,
    /// How long a job may wait in a partition whose owner is busy before another worker with a
    /// free slot takes it (giving up the owner's warm prompt cache for that job).
    pub handoff_ms: u64,
    /// The worker's name without a cluster (in a cluster it is `[cluster] node_name`); by
    /// default the host's name and the process id.
    pub name: Option<String>,
    /// `[worker.grpc]`: gateways call the worker directly (`kind = "grpc"` backends).
    pub grpc: Option<GrpcServeConfig>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            slots: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            handoff_ms: 500,
            name: None,
            grpc: None,
        }
    }
}

/// `[worker.grpc]`: the worker's gRPC service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServeConfig {
    /// Where it listens (`--grpc-listen` instead).
    pub listen: Option<SocketAddr>,
    /// Name of the environment variable holding the secret every call must carry (the gateway
    /// backend's `secret_env`, sent as a bearer token).
    pub secret_env: Option<String>,
    /// `tls = { cert = "worker.pem", key = "worker.key", client_ca = "gateways.pem" }`: TLS;
    /// with `client_ca`, only callers with a certificate it signed are served (mTLS).
    pub tls: Option<ServerTls>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The worker's PEM certificate (chain) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The PEM certificate(s) that signed the gateways' own: set, a caller must show one.
    pub client_ca: Option<PathBuf>,
}
