//! The per-core layout: a thread per core, each the one worker of a runtime of its own (pinned to
//! its core when asked), and each shard's five lanes on one of them. A request's
//! stages then run on one thread, in one core's caches; only the hand-over into its shard's first
//! queue, and its events back to the caller, cross threads (and not even those when the caller
//! runs on the shard's core thread, as the gateway's connections do in its per-core mode).

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use core_affinity::CoreId;
use tokio::runtime::{Handle, Runtime};

/// Where a pipeline's lanes run.
#[derive(Clone, Debug, Default)]
pub enum Layout {
    /// On the runtime that spawns the pipeline (tokio's work-stealing runtime, usually).
    #[default]
    WorkStealing,
    /// On `threads` core threads of the pipeline's own ([`Cores`]); shard `s` on
    /// thread `s % threads`. With `pin`, thread `i` is pinned to the `i`-th core the process may
    /// run on. The threads end when the pipeline has drained.
    PerCore { threads: NonZeroUsize, pin: bool },
    /// On core threads the caller started and keeps ([`Cores::start`]), shard `s` on thread
    /// `s % len`: several pipelines in turn (a gateway's reloads), and the caller's own tasks,
    /// can share them.
    On(Cores),
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
    pub fn check(&self) -> Result<(), LayoutError> {
        match *self {
            Layout::PerCore { threads, pin: true } => check_pinned(threads.get()),
            _ => Ok(()),
        }
    }
}

fn check_pinned(threads: usize) -> Result<(), LayoutError> {
    let allowed = allowed_cores().len();
    if threads > allowed {
        return Err(LayoutError::MoreThreadsThanCores { threads, allowed });
    }
    Ok(())
}

/// The cores this process may run on (its affinity mask), in order.
fn allowed_cores() -> Vec<CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// A set of core threads, each the one worker of a tokio runtime of its own; cheap to clone. The
/// threads run until [`stop`](Self::stop) (or the guard of [`stop_on_drop`](Self::stop_on_drop)),
/// or the last clone is dropped; tasks still on them then are dropped.
///
/// A runtime of one worker rather than a current-thread runtime: its scheduler runs the task a
/// task has just woken next (the LIFO slot), so a token goes from the upstream's connection
/// through the streaming stages to the client's connection in one go, where a current-thread
/// runtime queues every hop behind all other ready tasks (BENCHMARKS.md, "Runtime modes").
#[derive(Clone, Debug)]
pub struct Cores {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Tells the threads of this set from those of any other, in [`Cores::current`].
    set: u64,
    handles: Box<[Handle]>,
    /// Taken by `stop`.
    runtimes: Mutex<Option<Vec<Runtime>>>,
}

thread_local! {
    /// On a core thread: its set, its index in the set and the set's size.
    static CURRENT: Cell<Option<(u64, usize, usize)>> = const { Cell::new(None) };
}

static NEXT_SET: AtomicU64 = AtomicU64::new(0);

impl Cores {
    /// Starts `threads` threads named `orchestrator-core-N`, thread `i` pinned to the `i`-th
    /// core the process may run on when `pin` is set.
    ///
    /// # Errors
    /// More pinned threads than allowed cores, or a runtime that cannot start.
    pub fn start(threads: NonZeroUsize, pin: bool) -> Result<Self, LayoutError> {
        if pin {
            check_pinned(threads.get())?;
        }
        let set = NEXT_SET.fetch_add(1, Ordering::Relaxed);
        let count = threads.get();
        let mut cores = allowed_cores().into_iter().map(|core| pin.then_some(core));
        let mut runtimes = Vec::with_capacity(count);
        for i in 0..count {
            match start_one(set, i, count, cores.next().flatten()) {
                Ok(runtime) => runtimes.push(runtime),
                Err(e) => {
                    shut_down(runtimes);
                    return Err(e);
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                set,
                handles: runtimes.iter().map(|r| r.handle().clone()).collect(),
                runtimes: Mutex::new(Some(runtimes)),
            }),
        })
    }

    /// The runtimes of the threads, by index.
    pub fn handles(&self) -> &[Handle] {
        &self.inner.handles
    }

    /// How many threads the set has.
    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    /// Never true: a set has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    /// The index of the calling thread in this set, when it is one of its threads.
    pub fn index_of_current(&self) -> Option<usize> {
        CURRENT
            .get()
            .and_then(|(set, index, _)| (set == self.inner.set).then_some(index))
    }

    /// When called on a core thread of any set: its index and the size of its set. For state
    /// kept per core, such as connection pools.
    pub fn current() -> Option<(usize, usize)> {
        CURRENT.get().map(|(_, index, count)| (index, count))
    }

    /// Ends the threads; tasks still on them are dropped. Callable from anywhere, a core thread
    /// included (nothing waits for the threads to end).
    pub fn stop(&self) {
        self.inner.stop();
    }

    /// A guard that ends the threads when dropped.
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.clone())
    }
}

/// Starts core thread `index` of `set` (of `count`): a runtime of one worker, which marks itself
/// (and pins itself to `core`) in its first task, before any other can run; the runtime's other
/// threads (its blocking pool) are not core threads.
fn start_one(set: u64, index: usize, count: usize, core: Option<CoreId>) -> Result<Runtime, LayoutError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("orchestrator-core-{index}"))
        .enable_all()
        .build()
        .map_err(|e| LayoutError::Runtime(e.to_string()))?;
    let (marked, wait) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        if let Some(core) = core {
            // A core the mask allows; if the kernel refuses anyway, the thread runs unpinned,
            // which is slower, not wrong.
            core_affinity::set_for_current(core);
        }
        CURRENT.set(Some((set, index, count)));
        let _ = marked.send(());
    });
    if wait.recv().is_err() {
        shut_down(vec![runtime]);
        return Err(LayoutError::Runtime(format!("core thread {index} did not start")));
    }
    Ok(runtime)
}

/// Shuts `runtimes` down without waiting: dropping one would wait for its threads, which a
/// caller on a runtime (or on one of these threads) must not.
fn shut_down(runtimes: Vec<Runtime>) {
    for runtime in runtimes {
        runtime.shutdown_background();
    }
}

impl Inner {
    fn stop(&self) {
        let taken = self
            .runtimes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        shut_down(taken.unwrap_or_default());
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ends a set's threads when dropped ([`Cores::stop_on_drop`]).
#[derive(Debug)]
pub struct StopOnDrop(Cores);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}
