//! Request counters kept by the pipeline itself, for tests, demos and readiness checks.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{PipelineError, Stage};
use crate::latency::LatencyCounts;

/// Counts since the pipeline started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Requests accepted into the input queue.
    pub admitted: u64,
    /// Requests refused at the input because its queue was full (never admitted).
    pub shed: u64,
    /// Admitted requests that completed.
    pub completed: u64,
    /// Admitted requests that ended with an error other than cancellation.
    pub failed: u64,
    /// Admitted requests cancelled by their caller or aborted at the shutdown deadline.
    pub cancelled: u64,
    /// Admitted requests without their final event yet.
    pub in_flight: u64,
}

/// One stage as [`Pipeline::stage_stats`](crate::Pipeline::stage_stats) reads it. The counts are
/// since the pipeline started (as `orchestrator_stage_requests_total` counts them); a live view
/// takes differences of two readings for rates and windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageStats {
    pub stage: Stage,
    /// Started by the stage.
    pub admitted: u64,
    pub completed: u64,
    pub failed: u64,
    /// Ended because the caller went away.
    pub cancelled: u64,
    /// Refused at the stage's full queue.
    pub shed: u64,
    /// Holding a place under the stage's concurrency limit now. Stages that finish a request in
    /// one step (RAG without a retriever, Assemble) never hold one and read 0.
    pub in_flight: usize,
    /// The stage's concurrency limit.
    pub concurrency: usize,
    /// Waiting in the stage's queues now, and what they hold at most (over all shards).
    pub queued: usize,
    pub capacity: usize,
    /// Time spent waiting in the stage's queue, and working in the stage.
    pub queue_wait: LatencyCounts,
    pub work: LatencyCounts,
}

#[derive(Default)]
pub(crate) struct Stats {
    admitted: AtomicU64,
    shed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
}

impl Stats {
    pub fn record_admitted(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failed(&self, error: &PipelineError) {
        let counter = match error {
            PipelineError::Cancelled | PipelineError::Shutdown => &self.cancelled,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PipelineStats {
        // Read the outcomes before `admitted`: a request is counted admitted before it can end,
        // so `in_flight` never goes negative even while requests finish during the read.
        let completed = self.completed.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Acquire);
        let cancelled = self.cancelled.load(Ordering::Acquire);
        let admitted = self.admitted.load(Ordering::Acquire);
        PipelineStats {
            admitted,
            shed: self.shed.load(Ordering::Relaxed),
            completed,
            failed,
            cancelled,
            in_flight: admitted.saturating_sub(completed + failed + cancelled),
        }
    }
}

/// What [`Pipeline::shutdown`](crate::Pipeline::shutdown) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Requests that reached their final event during the grace period.
    pub drained: u64,
    /// Requests still running at the deadline, ended with `Shutdown`.
    pub aborted: u64,
}
