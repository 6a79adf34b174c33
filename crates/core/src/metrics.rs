//! Pipeline metrics through the `metrics` facade; the application installs the exporter.
//!
//! Names (all labelled with `stage` where it applies):
//! - `orchestrator_stage_latency_seconds` (histogram): time a stage worked on a request.
//! - `orchestrator_queue_wait_seconds` (histogram): time a request waited in a stage's queue.
//! - `orchestrator_queue_depth` (gauge): requests waiting in a stage's queue, sampled.
//! - `orchestrator_stage_requests_total{outcome}` (counter): `admitted` into the stage,
//!   `completed` it, `failed` there, `cancelled` there by a caller who went away, or `shed` at its
//!   full queue.
//! - `orchestrator_requests_total{outcome, kind}` (counter): final outcomes of requests.
//! - `orchestrator_time_to_first_token_seconds` (histogram).
//! - `orchestrator_admission_requests_total{priority, outcome}` (counter): requests let in by a
//!   [`PriorityGate`](crate::admission::PriorityGate) (`admitted`) or refused or displaced (`shed`).
//! - `orchestrator_admission_queued{priority}` (gauge): requests waiting at the gate.
//!
//! The stages hold registered handles (made when the pipeline is spawned, so install the
//! exporter first): a handle update is an atomic add, not a registry lookup per request. Each
//! stage's counts and latencies are also kept by the pipeline itself
//! ([`Pipeline::stage_stats`](crate::Pipeline::stage_stats)), for live views.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};

use crate::error::{PipelineError, Stage};
use crate::latency::{LatencyCounts, LatencyHistogram};

pub const STAGE_LATENCY: &str = "orchestrator_stage_latency_seconds";
pub const QUEUE_WAIT: &str = "orchestrator_queue_wait_seconds";
pub const QUEUE_DEPTH: &str = "orchestrator_queue_depth";
pub const STAGE_REQUESTS: &str = "orchestrator_stage_requests_total";
pub const REQUESTS: &str = "orchestrator_requests_total";
pub const TIME_TO_FIRST_TOKEN: &str = "orchestrator_time_to_first_token_seconds";
pub const ADMISSION_REQUESTS: &str = "orchestrator_admission_requests_total";
pub const ADMISSION_QUEUED: &str = "orchestrator_admission_queued";

/// Records how long `stage` worked on one request.
pub fn record_stage_latency(stage: Stage, duration: Duration) {
    histogram!(STAGE_LATENCY, "stage" => stage.as_str()).record(duration.as_secs_f64());
}

/// Records how many requests wait in `stage`'s queue.
pub fn record_queue_depth(stage: Stage, depth: usize) {
    gauge!(QUEUE_DEPTH, "stage" => stage.as_str()).set(depth as f64);
}

/// A counter exported through the facade and kept by the pipeline as well.
#[derive(Clone)]
pub(crate) struct Tally {
    exported: Counter,
    kept: Arc<AtomicU64>,
}

impl Tally {
    pub fn register(exported: Counter) -> Self {
        Self {
            exported,
            kept: Arc::default(),
        }
    }

    pub fn increment(&self, n: u64) {
        self.exported.increment(n);
        self.kept.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.kept.load(Ordering::Relaxed)
    }
}

/// A latency histogram exported through the facade and kept by the pipeline as well.
#[derive(Clone)]
pub(crate) struct Timer {
    exported: Histogram,
    kept: Arc<LatencyHistogram>,
}

impl Timer {
    fn register(exported: Histogram) -> Self {
        Self {
            exported,
            kept: Arc::default(),
        }
    }

    pub fn record(&self, duration: Duration) {
        self.exported.record(duration.as_secs_f64());
        self.kept.record(duration);
    }

    pub fn counts(&self) -> LatencyCounts {
        self.kept.counts()
    }
}

/// Registered handles for one stage.
#[derive(Clone)]
pub(crate) struct StageMetrics {
    pub latency: Timer,
    pub queue_wait: Timer,
    pub admitted: Tally,
    pub completed: Tally,
    pub failed: Tally,
    /// Ended because its caller went away.
    pub cancelled: Tally,
    pub shed: Tally,
}

impl StageMetrics {
    fn register(stage: Stage) -> Self {
        let s = stage.as_str();
        let outcome =
            |o: &'static str| Tally::register(counter!(STAGE_REQUESTS, "stage" => s, "outcome" => o));
        Self {
            latency: Timer::register(histogram!(STAGE_LATENCY, "stage" => s)),
            queue_wait: Timer::register(histogram!(QUEUE_WAIT, "stage" => s)),
            admitted: outcome("admitted"),
            completed: outcome("completed"),
            failed: outcome("failed"),
            cancelled: outcome("cancelled"),
            shed: outcome("shed"),
        }
    }
}

/// Registered handles for the whole pipeline.
pub(crate) struct PipelineMetrics {
    stages: [StageMetrics; 5],
    pub completed: Counter,
    pub time_to_first_token: Timer,
}

impl PipelineMetrics {
    pub fn register() -> Self {
        Self {
            stages: Stage::ALL.map(StageMetrics::register),
            completed: counter!(REQUESTS, "outcome" => "completed", "kind" => "ok"),
            time_to_first_token: Timer::register(histogram!(TIME_TO_FIRST_TOKEN)),
        }
    }

    pub fn stage(&self, stage: Stage) -> &StageMetrics {
        &self.stages[stage.index()]
    }

    /// Failures are rare, so their counter is looked up by kind when one happens.
    pub fn failed(&self, error: &PipelineError) {
        counter!(REQUESTS, "outcome" => "failed", "kind" => error.kind()).increment(1);
    }
}
