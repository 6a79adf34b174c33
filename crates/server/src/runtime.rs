//! `[runtime]`: how the gateway uses the cores it may run on. Work-stealing (the default): one
//! tokio runtime whose worker threads share every task. Per-core: a thread per core, each with a
//! runtime of its own (its one worker), running the connections handed to it and the pipeline
//! shards of its core, so a request stays on one core from its first byte to its last; the
//! process's main thread keeps a small runtime for what is not a request's (signals, reloads,
//! the cluster's tasks, the stats sampler, accepting connections).

use std::io;
use std::num::NonZeroUsize;

use serde::Deserialize;
use tokio::runtime::Runtime;
use tokio_prompt_orchestrator::{Cores, Layout};

/// `[runtime] mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeMode {
    #[default]
    WorkStealing,
    PerCore,
}

/// `[runtime]`: read when the process starts (a reload keeps the running one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub mode: RuntimeMode,
    /// Worker threads (work-stealing) or core threads (per-core); unset: the cores this process
    /// may use, after its CPU affinity mask and its cgroup's CPU quota.
    pub threads: Option<NonZeroUsize>,
    /// Per-core only: pins core thread `i` to the `i`-th core the affinity mask allows.
    pub pin: bool,
}

impl RuntimeConfig {
    /// The threads this config runs.
    pub fn threads(&self) -> NonZeroUsize {
        self.threads.unwrap_or_else(available_cores)
    }

    /// The problems of this section, by field.
    pub fn problems(&self, shards: usize) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.mode == RuntimeMode::WorkStealing {
            if self.pin {
                problems.push((
                    "pin",
                    "pins the threads of mode = \"per_core\" only; set that mode, or remove pin".into(),
                ));
            }
            return problems;
        }
        let threads = self.threads().get();
        if let Err(e) = self.layout_check() {
            problems.push(("threads", e));
        }
        if shards < threads {
            problems.push((
                "threads",
                format!(
                    "{threads} core threads but pipeline.shards = {shards}: a core without a shard would send \
                     every request to another core; set pipeline.shards to {threads} or a multiple of it"
                ),
            ));
        }
        problems
    }

    fn layout_check(&self) -> Result<(), String> {
        Layout::PerCore {
            threads: self.threads(),
            pin: self.pin,
        }
        .check()
        .map_err(|e| e.to_string())
    }

    /// The process's runtime: work-stealing with `threads` workers, or, per-core, the main
    /// thread's own (the core threads start with the server: [`start_cores`](Self::start_cores)).
    ///
    /// # Errors
    /// When the runtime cannot start.
    pub fn build(&self) -> io::Result<Runtime> {
        match self.mode {
            RuntimeMode::WorkStealing => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                // Unset, tokio's own default: `TOKIO_WORKER_THREADS`, else the cores available.
                if let Some(threads) = self.threads {
                    builder.worker_threads(threads.get());
                }
                builder.enable_all().build()
            }
            RuntimeMode::PerCore => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        }
    }

    /// Per-core: starts the core threads. `None` in work-stealing mode.
    ///
    /// # Errors
    /// More pinned threads than allowed cores, or a thread that cannot start.
    pub fn start_cores(&self) -> io::Result<Option<Cores>> {
        match self.mode {
            RuntimeMode::WorkStealing => Ok(None),
            RuntimeMode::PerCore => Cores::start(self.threads(), self.pin)
                .map(Some)
                .map_err(|e| io::Error::other(format!("runtime: {e}"))),
        }
    }
}

/// The cores this process may use: the standard library reads the affinity mask and the
/// cgroup's CPU quota.
fn available_cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}
