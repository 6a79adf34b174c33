//! Building and running the pipeline: channels, lanes, admission, and the handles users hold.
//!
//! `spawn_pipeline` creates, for each of the five stages, one bounded queue and one lane task per
//! shard, wired shard to shard, so a session stays on its shard from input to output. Shutdown
//! starts at the input: closing it lets every admitted request drain, and each lane ends when its
//! queue is closed and empty.

mod cores;
pub(crate) mod edge;
pub(crate) mod envelope;
mod handle;
mod lane;
pub(crate) mod limit;
mod order;
pub(crate) mod pipe;
mod sender;
mod stats;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cores::{Cores, Layout, LayoutError, StopOnDrop};
pub use handle::ResponseHandle;
pub use sender::RequestSender;
pub use stats::{PipelineStats, ShutdownReport, StageStats};

use self::edge::Edge;
use self::envelope::Envelope;
use self::lane::Lane;
use self::limit::Limit;
use self::order::OrderRegistry;
use self::stats::Stats;
use crate::config::PipelineConfig;
use crate::error::Stage;
use crate::event::PromptOutput;
use crate::latency::LatencyCounts;
use crate::metrics::{PipelineMetrics, record_queue_depth};
use crate::stages::assemble::{AssembleStage, Assembler};
use crate::stages::inference::InferenceStage;
use crate::stages::post::PostStage;
use crate::stages::post::chain::PostProcessor;
use crate::stages::rag::{RagStage, Retriever};
use crate::stages::stream::StreamStage;
use crate::stages::{Handoff, StageLogic};
use crate::worker::ModelWorker;

/// State every stage and handle shares.
pub(crate) struct Shared {
    pub config: PipelineConfig,
    /// Applied by the Post stage, in order, to every request they take.
    pub post_processors: Vec<Arc<dyn PostProcessor>>,
    pub metrics: PipelineMetrics,
    pub stats: Stats,
    /// Every lane and delivery task, so `join` can wait for all of them.
    pub tracker: TaskTracker,
    /// Cancelled at the shutdown deadline: aborts everything still running.
    pub root: CancellationToken,
    /// Per-shard parents of request tokens (children of `root`); spreads the lock that creating
    /// and dropping a child token takes.
    pub shard_tokens: Box<[CancellationToken]>,
    /// Cancelled when intake closes.
    pub intake: CancellationToken,
    pub order: Arc<OrderRegistry>,
    pub next_id: AtomicU64,
    /// Weak senders of every lane queue, to read depths without keeping queues open.
    depth_probes: Vec<(Stage, DepthProbe)>,
    /// Each stage's concurrency limit, shared by its lanes; `in_use` is its requests in flight.
    limits: [Arc<Limit>; 5],
    /// The core threads the lanes run on, in a per-core layout.
    pub cores: Option<Cores>,
}

impl Shared {
    fn queue_depths(&self) -> Vec<(Stage, usize)> {
        Stage::ALL
            .iter()
            .map(|&stage| {
                let depth = self
                    .depth_probes
                    .iter()
                    .filter(|(s, _)| *s == stage)
                    .map(|(_, probe)| probe())
                    .sum();
                (stage, depth)
            })
            .collect()
    }
}

/// What `spawn_pipeline` returns.
pub struct PipelineHandles {
    /// Admits requests. Dropping every clone closes the input: admitted work drains, then the
    /// stages end.
    pub input_tx: RequestSender,
    /// Outputs of fire-and-forget requests (`input_tx.send`), each session's in submission order.
    /// Read it, or drop it to discard outputs: a full output stream holds the pipeline back.
    pub output_rx: mpsc::Receiver<PromptOutput>,
    /// Control: stats, queue depths, close, shutdown, join.
    pub pipeline: Pipeline,
}

/// Spawns the pipeline with default settings in front of `worker`.
///
/// # Panics
/// When called outside a tokio runtime.
pub fn spawn_pipeline(worker: Arc<dyn ModelWorker>) -> PipelineHandles {
    PipelineBuilder::new(worker).spawn()
}

/// Sets up a pipeline: worker, optional retriever and post-processors, settings.
pub struct PipelineBuilder {
    worker: Arc<dyn ModelWorker>,
    retriever: Option<Arc<dyn Retriever>>,
    assembler: Option<Arc<dyn Assembler>>,
    post_processors: Vec<Arc<dyn PostProcessor>>,
    config: PipelineConfig,
    layout: Layout,
}

impl PipelineBuilder {
    pub fn new(worker: Arc<dyn ModelWorker>) -> Self {
        Self {
            worker,
            retriever: None,
            assembler: None,
            post_processors: Vec::new(),
            config: PipelineConfig::default(),
            layout: Layout::default(),
        }
    }

    /// Where the lanes run: on the spawning runtime (the default), or on threads of the
    /// pipeline's own, one per core ([`Layout::PerCore`]), or on core threads shared with the
    /// caller ([`Layout::On`]).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    pub fn config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// Uses `retriever` in the RAG stage (without one, RAG passes requests straight through).
    pub fn retriever(mut self, retriever: Arc<dyn Retriever>) -> Self {
        self.retriever = Some(retriever);
        self
    }

    /// Uses `assembler` in the Assemble stage (without one, a fixed format: context, then the
    /// conversation).
    pub fn assembler(mut self, assembler: Arc<dyn Assembler>) -> Self {
        self.assembler = Some(assembler);
        self
    }

    /// Adds `processor` to the Post stage's chain (after the ones added before).
    pub fn post_processor(mut self, processor: Arc<dyn PostProcessor>) -> Self {
        self.post_processors.push(processor);
        self
    }

    /// Starts every stage's lanes.
    ///
    /// Install a metrics exporter before this: the stages register their metrics here.
    ///
    /// # Panics
    /// When called outside a tokio runtime with the work-stealing layout, or when a per-core
    /// layout cannot start ([`try_spawn`](Self::try_spawn) says why instead).
    pub fn spawn(self) -> PipelineHandles {
        match self.try_spawn() {
            Ok(handles) => handles,
            Err(e) => panic!("the pipeline cannot start: {e}"),
        }
    }

    /// [`spawn`](Self::spawn), saying why a per-core layout cannot start.
    ///
    /// # Errors
    /// More pinned threads than the cores this process may run on; a thread or runtime that
    /// cannot start.
    ///
    /// # Panics
    /// When called outside a tokio runtime with the work-stealing layout.
    pub fn try_spawn(self) -> Result<PipelineHandles, LayoutError> {
        let config = self.config;
        let shards = config.shards.get();
        let mut probes = Vec::new();
        let wiring: Vec<ShardQueues> = (0..shards)
            .map(|_| ShardQueues::new(&config, &mut probes))
            .collect();

        let (cores, owned) = match self.layout {
            Layout::WorkStealing => (None, false),
            Layout::PerCore { threads, pin } => (Some(Cores::start(threads, pin)?), true),
            Layout::On(cores) => (Some(cores), false),
        };
        let root = CancellationToken::new();
        let shared = Arc::new(Shared {
            post_processors: self.post_processors,
            metrics: PipelineMetrics::register(),
            stats: Stats::default(),
            tracker: TaskTracker::new(),
            shard_tokens: (0..shards).map(|_| root.child_token()).collect(),
            root,
            intake: CancellationToken::new(),
            order: OrderRegistry::new(shards),
            next_id: AtomicU64::new(0),
            depth_probes: probes,
            limits: Stage::ALL.map(|s| Limit::new(config.stage(s).concurrency.get())),
            cores,
            config,
        });
        let spawner = LaneSpawner {
            shared: &shared,
            cores: shared.cores.as_ref().map(Cores::handles),
        };
        let rag = Arc::new(RagStage {
            retriever: self.retriever,
        });
        let assemble = Arc::new(AssembleStage {
            assembler: self.assembler,
        });
        let inference = Arc::new(InferenceStage { worker: self.worker });
        let post = Arc::new(PostStage);
        let stream = Arc::new(StreamStage);
        let mut inputs = Vec::with_capacity(shards);
        for (shard, q) in wiring.into_iter().enumerate() {
            inputs.push(q.rag.0);
            spawner.spawn(&rag, q.rag.1, Some(q.assemble.0), shard);
            spawner.spawn(&assemble, q.assemble.1, Some(q.inference.0), shard);
            spawner.spawn(&inference, q.inference.1, Some(q.post.0), shard);
            spawner.spawn(&post, q.post.1, Some(q.stream.0), shard);
            spawner.spawn(&stream, q.stream.1, None, shard);
        }
        // Closing lets `wait` finish once every task has ended; later delivery tasks still count.
        shared.tracker.close();
        let sampler = sample_queue_depths(shared.clone());
        match &shared.cores {
            Some(cores) => {
                let first = &cores.handles()[0];
                drop(first.spawn(sampler));
                if owned {
                    // The pipeline's own threads end once it has drained.
                    let (tracker, cores) = (shared.tracker.clone(), cores.clone());
                    drop(first.spawn(async move {
                        tracker.wait().await;
                        cores.stop();
                    }));
                }
            }
            None => drop(tokio::spawn(sampler)),
        }

        let (output_tx, output_rx) = mpsc::channel(shared.config.output_capacity.get());
        Ok(PipelineHandles {
            input_tx: RequestSender::new(shared.clone(), inputs.into(), output_tx),
            output_rx,
            pipeline: Pipeline { shared },
        })
    }
}

type Queue<T> = (Edge<T>, mpsc::Receiver<T>);
type DepthProbe = Box<dyn Fn() -> usize + Send + Sync>;

/// One shard's five queues, one in front of each stage.
struct ShardQueues {
    rag: Queue<Envelope>,
    assemble: Queue<Envelope>,
    inference: Queue<Envelope>,
    post: Queue<Handoff>,
    stream: Queue<Handoff>,
}

impl ShardQueues {
    fn new(config: &PipelineConfig, probes: &mut Vec<(Stage, DepthProbe)>) -> Self {
        Self {
            rag: queue(config, Stage::Rag, probes),
            assemble: queue(config, Stage::Assemble, probes),
            inference: queue(config, Stage::Inference, probes),
            post: queue(config, Stage::Post, probes),
            stream: queue(config, Stage::Stream, probes),
        }
    }
}

/// One shard's bounded queue in front of `stage`; registers its depth probe.
fn queue<T: Send + 'static>(
    config: &PipelineConfig,
    stage: Stage,
    probes: &mut Vec<(Stage, DepthProbe)>,
) -> Queue<T> {
    let (tx, rx) = mpsc::channel(config.lane_capacity(stage));
    let weak = tx.downgrade();
    probes.push((
        stage,
        Box::new(move || weak.upgrade().map_or(0, |tx| tx.max_capacity() - tx.capacity())),
    ));
    (Edge::new(tx, stage, config.stage(stage).queue.when_full), rx)
}

struct LaneSpawner<'a> {
    shared: &'a Arc<Shared>,
    /// The per-core layout's runtimes; shard `s` runs on `s % len`.
    cores: Option<&'a [tokio::runtime::Handle]>,
}

impl LaneSpawner<'_> {
    fn spawn<L: StageLogic>(
        &self,
        logic: &Arc<L>,
        rx: mpsc::Receiver<L::In>,
        next: Option<Edge<L::Out>>,
        shard: usize,
    ) {
        let concurrency = self.shared.config.stage(L::STAGE).concurrency.get();
        // A synchronous stage has at most one request per lane in hand; a limit of at least the
        // number of lanes can never stop one.
        let binds = !logic.synchronous() || concurrency < self.shared.config.shards.get();
        let lane = Lane {
            logic: logic.clone(),
            rx,
            next,
            limit: binds.then(|| self.shared.limits[L::STAGE.index()].clone()),
            concurrency,
            intake: (L::STAGE == Stage::Rag).then(|| self.shared.intake.clone()),
            shard,
            metrics: self.shared.metrics.stage(L::STAGE).clone(),
        };
        match self.cores {
            Some(cores) => drop(
                self.shared
                    .tracker
                    .spawn_on(lane.run(), &cores[shard % cores.len()]),
            ),
            None => drop(self.shared.tracker.spawn(lane.run())),
        }
    }
}

/// Publishes queue depths once a second until every lane has ended.
async fn sample_queue_depths(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut finished = std::pin::pin!(shared.tracker.wait());
    loop {
        tokio::select! {
            () = &mut finished => break,
            _ = tick.tick() => {
                for (stage, depth) in shared.queue_depths() {
                    record_queue_depth(stage, depth);
                }
            }
        }
    }
}

/// Control handle of a running pipeline; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

impl Pipeline {
    /// Counts of requests so far.
    pub fn stats(&self) -> PipelineStats {
        self.shared.stats.snapshot()
    }

    /// Requests waiting in each stage's queue (summed over shards), in stage order.
    pub fn queue_depths(&self) -> Vec<(Stage, usize)> {
        self.shared.queue_depths()
    }

    /// Each stage's counts, queue, requests in flight and latencies so far, in stage order.
    pub fn stage_stats(&self) -> Vec<StageStats> {
        let shared = &self.shared;
        shared
            .queue_depths()
            .into_iter()
            .map(|(stage, queued)| {
                let metrics = shared.metrics.stage(stage);
                let config = shared.config.stage(stage);
                StageStats {
                    stage,
                    admitted: metrics.admitted.get(),
                    completed: metrics.completed.get(),
                    failed: metrics.failed.get(),
                    cancelled: metrics.cancelled.get(),
                    shed: metrics.shed.get(),
                    in_flight: shared.limits[stage.index()].in_use(),
                    concurrency: config.concurrency.get(),
                    queued,
                    capacity: shared.config.lane_capacity(stage) * shared.config.shards.get(),
                    queue_wait: metrics.queue_wait.counts(),
                    work: metrics.latency.counts(),
                }
            })
            .collect()
    }

    /// Times to first token so far (from admission to the first token reaching the caller).
    pub fn time_to_first_token(&self) -> LatencyCounts {
        self.shared.metrics.time_to_first_token.counts()
    }

    /// Sessions with fire-and-forget outputs still in flight: the only per-session state kept.
    pub fn tracked_sessions(&self) -> usize {
        self.shared.order.len()
    }

    /// Whether intake has been closed by [`close`](Self::close) or [`shutdown`](Self::shutdown).
    pub fn is_closed(&self) -> bool {
        self.shared.intake.is_cancelled()
    }

    /// Stops admitting requests (senders get `Closed`); everything admitted still drains.
    pub fn close(&self) {
        self.shared.intake.cancel();
    }

    /// Waits until every stage task has ended: after the input is closed (by dropping every
    /// sender or calling [`close`](Self::close)) and all admitted requests have their final event.
    pub async fn join(&self) {
        self.shared.tracker.wait().await;
    }

    /// Closes intake and lets admitted requests drain for up to `grace`; whatever is still
    /// running then is aborted with [`PipelineError::Shutdown`](crate::PipelineError::Shutdown).
    /// Returns when every stage task has ended.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.close();
        let before = self.stats();
        let drained_in_time = tokio::time::timeout(grace, self.join()).await.is_ok();
        let aborted = if drained_in_time {
            0
        } else {
            let left = self.stats().in_flight;
            tracing::warn!(left, "Shutdown grace period ran out; aborting what is left.");
            self.shared.root.cancel();
            self.join().await;
            left
        };
        let after = self.stats();
        ShutdownReport {
            drained: (after.completed + after.failed + after.cancelled)
                .saturating_sub(before.completed + before.failed + before.cancelled)
                .saturating_sub(aborted),
            aborted,
        }
    }
}
