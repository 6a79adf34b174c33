//! `[worker]`: how an `orchestrator worker` takes jobs. The rest of a worker's file is the same
//! as a gateway's: `[cluster]`, `[[backends]]`, `[[models]]`, and `[server]` for its own
//! `/metrics`, `/healthz` and `/readyz`.

use std::num::NonZeroUsize;

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs run at once. The worker pulls a job only when one is free, so jobs wait in the broker,
    /// where any worker with room can take them, and never in a worker.
    pub slots: NonZeroUsize,
    /// How long a job may wait in a partition whose owner is busy before another worker with a
    /// free slot takes it (giving up the owner's warm prompt cache for that job).
    pub handoff_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            slots: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            handoff_ms: 500,
        }
    }
}
