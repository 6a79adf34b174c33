//! The per-core layout: a thread per core, each running a current-thread runtime of its own
//! (pinned to its core when asked), and each shard's five lanes on one of them. A request's
//! stages then run on one thread, in one core's caches; only the hand-over into its shard's first
//! queue, and its events back to the caller, cross threads.

use std::num::NonZeroUsize;

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

/// Where a pipeline's lanes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// On the runtime that spawns the pipeline (tokio's work-stealing runtime, usually).
    #[default]
    WorkStealing,
    /// On `threads` threads of the pipeline's own, a current-thread runtime each; shard `s` on
    /// thread `s % threads`. With `pin`, thread `i` is pinned to the `i`-th core the process may
    /// run on.
    PerCore { threads: NonZeroUsize, pin: bool },
}

/// Why a per-core layout cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "{threads} threads pinned to cores, but this process may run on {allowed} core(s): use at most {allowed} threads, or pin = false"
    )]
    MoreThreadsThanCores { threads: usize, allowed: usize },
    #[error("the runtime of a core thread cannot start: {0}")]
    Runtime(String),
}

impl Layout {
    /// Checks the layout against the cores this process may run on.
    ///
    /// # Errors
    /// More pinned threads than allowed cores.
    pub fn check(self) -> Result<(), LayoutError> {
        if let Layout::PerCore { threads, pin: true } = self {
            let allowed = allowed_cores().len();
            if threads.get() > allowed {
                return Err(LayoutError::MoreThreadsThanCores {
                    threads: threads.get(),
                    allowed,
                });
            }
        }
        Ok(())
    }
}

/// The cores this process may run on (its affinity mask), in order.
fn allowed_cores() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Starts the threads of a per-core layout and returns their runtimes' handles. Each thread runs
/// until every task of `tracker` has ended (so its runtime outlives the lanes and the deliveries
/// spawned on it), then ends by itself.
///
/// # Errors
/// More pinned threads than allowed cores, or a runtime or thread that cannot start (then the
/// caller closes `tracker`, which ends the threads already started).
pub(crate) fn start(
    threads: NonZeroUsize,
    pin: bool,
    tracker: &TaskTracker,
) -> Result<Vec<Handle>, LayoutError> {
    Layout::PerCore { threads, pin }.check()?;
    // Pinned: the first `threads` cores allowed (`check` made sure there are enough).
    let mut cores = allowed_cores()
        .into_iter()
        .take(threads.get())
        .map(|core| pin.then_some(core));
    let mut handles = Vec::with_capacity(threads.get());
    for i in 0..threads.get() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LayoutError::Runtime(e.to_string()))?;
        handles.push(runtime.handle().clone());
        let core = cores.next().flatten();
        let tracker = tracker.clone();
        std::thread::Builder::new()
            .name(format!("orchestrator-core-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    // A core the mask allows; if the kernel refuses anyway, the thread runs
                    // unpinned, which is slower, not wrong.
                    core_affinity::set_for_current(core);
                }
                runtime.block_on(tracker.wait());
            })
            .map_err(|e| LayoutError::Runtime(e.to_string()))?;
    }
    Ok(handles)
}
