//! What the stats feed sends: one JSON snapshot of the node every tick. The dashboard, `orchestrator
//! top` and scripts read it; fields are only ever added.
//!
//! Counts are since the running config's pipeline started (a reload starts them afresh); rates are
//! per second over the last few seconds; latencies are over the last `window_s` seconds.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The node's name in a cluster, or the address it serves on.
    pub node: String,
    pub version: String,
    /// When this was taken, in Unix milliseconds.
    pub at_ms: u64,
    pub uptime_s: u64,
    /// How often snapshots come, and the span the latencies cover.
    pub interval_ms: u64,
    pub window_s: f64,
    /// The running config's generation (0 until the first reload).
    pub generation: u64,
    pub requests: Requests,
    /// The five stages in pipeline order.
    pub stages: Vec<StageView>,
    /// From admission to the first token reaching the caller.
    pub ttft: Latency,
    pub admission: Admission,
    pub models: Vec<ModelView>,
    /// Entries in the dead-letter queue, when one is configured and could be read.
    pub dlq: Option<u64>,
    /// Every live node and worker, when this node is part of a cluster.
    pub cluster: Option<ClusterView>,
    /// The last few minutes, oldest first, one point per tick: sent in the first event of a
    /// stream only, so a new viewer's charts start full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Point>,
}

/// Requests through the whole pipeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Requests {
    pub admitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Refused at the pipeline's full input queue or by the priority gate.
    pub shed: u64,
    pub in_flight: u64,
    /// Per second: completed, failed, shed.
    pub rate: f64,
    pub failed_rate: f64,
    pub shed_rate: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageView {
    /// `rag`, `assemble`, `inference`, `post`, `stream`.
    pub name: String,
    /// Waiting in the stage's queue now, and what the queue holds at most.
    pub queued: usize,
    pub capacity: usize,
    /// Being worked on now, and the stage's concurrency limit.
    pub in_flight: usize,
    pub concurrency: usize,
    pub admitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub shed: u64,
    /// Per second: completed, failed, shed at the stage's queue.
    pub rate: f64,
    pub failed_rate: f64,
    pub shed_rate: f64,
    pub queue_wait: Latency,
    pub work: Latency,
}

/// Percentiles over the window, in milliseconds; `None` when nothing was timed in it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// How many were timed in the window.
    pub count: u64,
}

/// The priority gate in front of the pipeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Admission {
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub queued: usize,
    pub max_queued: usize,
    /// `high`, `normal`, `low`, in that order.
    pub priorities: Vec<PriorityView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PriorityView {
    pub priority: String,
    pub queued: usize,
    pub admitted: u64,
    pub shed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelView {
    pub name: String,
    /// `chat` or `embedding`.
    pub kind: String,
    /// The first group's backends, then the fallbacks', in config order.
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackendView {
    pub name: String,
    /// Passing its health checks (always, when it has none).
    pub healthy: bool,
    /// Why the last health check failed, while it is out of rotation.
    pub problem: Option<String>,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    /// This node's calls in flight there.
    pub in_flight: usize,
    /// Requests waiting in the upstream's own queue, when its health checks report it.
    pub upstream_waiting: usize,
    /// Left of a `Retry-After` it sent, when it is resting.
    pub resting_ms: Option<u64>,
    /// Another node of the cluster finds it down.
    pub down_elsewhere: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    /// Why the nodes could not be read, when they could not (the last list read is kept).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// `gateway` or `worker`.
    pub role: String,
    pub address: String,
    pub version: String,
    pub models: Vec<String>,
    pub in_flight: usize,
    pub queued: usize,
    /// `in_flight` over the node's admission limit.
    pub load: f64,
    /// A worker's slots (jobs at once); 0 for a gateway.
    pub slots: usize,
    pub down_backends: Vec<String>,
}

/// One tick of the history the charts draw.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Point {
    pub at_ms: u64,
    pub rate: f64,
    pub failed_rate: f64,
    pub shed_rate: f64,
    pub in_flight: u64,
    /// Waiting in all the stages' queues and at the priority gate.
    pub queued: usize,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
}
