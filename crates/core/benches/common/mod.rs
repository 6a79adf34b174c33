//! Shared by the benchmarks: a pipeline configuration and closed-loop load drivers.

// Each bench binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio_prompt_orchestrator::{
    ChatMessage, Cores, InferenceRequest, PipelineConfig, PipelineError, PipelineHandles, PromptRequest,
    RequestSender, RetrievedChunk, Retriever, SessionId, Stage, WhenFull,
};

/// Default settings, except that the input blocks instead of shedding: a benchmark measures
/// the pipeline at a given number of requests in flight, not its refusals.
pub fn bench_config() -> PipelineConfig {
    let config = PipelineConfig::default();
    let capacity = config.rag.queue.capacity;
    config.with_queue(Stage::Rag, capacity, WhenFull::Block)
}

/// One request's figures: admission to final event, and the part of it that was not the
/// model's own time (`StageTimings::overhead`).
#[derive(Clone, Copy)]
pub struct Sample {
    pub latency: Duration,
    pub overhead: Duration,
}

/// `clients` concurrent callers, each sending its share of `total` requests one after another
/// and waiting for each final event.
pub async fn drive(sender: &RequestSender, clients: usize, total: usize) -> Vec<Sample> {
    closed_loop(sender, clients, total, true).await
}

/// As [`drive`], without timing each request: throughput rows count requests, and two clock
/// readings per request would be the caller's work, not the pipeline's.
pub async fn drive_untimed(sender: &RequestSender, clients: usize, total: usize) {
    closed_loop(sender, clients, total, false).await;
}

async fn closed_loop(sender: &RequestSender, clients: usize, total: usize, timed: bool) -> Vec<Sample> {
    let per_client = total.div_ceil(clients);
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let session = SessionId::new(format!("client-{c}"));
            let mut samples = Vec::with_capacity(if timed { per_client } else { 0 });
            for i in 0..per_client {
                let start = timed.then(Instant::now);
                let handle = sender.submit(request(&session, i)).await.expect("admitted");
                let response = handle.into_response().await.expect("completes");
                if let Some(start) = start {
                    samples.push(Sample {
                        latency: start.elapsed(),
                        overhead: response.completion.timings.overhead(),
                    });
                }
            }
            samples
        }));
    }
    let mut all = Vec::with_capacity(if timed { total } else { 0 });
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all
}

/// A caller's `i`th request: one short user message, streamed every other time.
/// As [`drive_untimed`], with caller `c` on core thread `c % cores.len()` and a session of its
/// own that keeps it there ([`SessionId::per_request`]): the gateway's per-core path, where a
/// request never leaves the core its connection is on.
pub async fn drive_on_cores(sender: &RequestSender, cores: &Cores, clients: usize, total: usize) {
    let per_client = total.div_ceil(clients);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let sender = sender.clone();
            cores.handles()[c % cores.len()].spawn(async move {
                let session = SessionId::per_request(format!("client-{c}"));
                for i in 0..per_client {
                    let handle = sender.submit(request(&session, i)).await.expect("admitted");
                    handle.into_response().await.expect("completes");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
}

fn request(session: &SessionId, i: usize) -> InferenceRequest {
    InferenceRequest::chat(session.clone(), vec![ChatMessage::user("Hello!")])
        .with_stream(i.is_multiple_of(2))
}

/// Fire-and-forget: sends `total` requests over `sessions` sessions with at most `in_flight`
/// outstanding, reading the outputs as they come. Returns requests per second.
pub async fn drive_outputs(
    handles: &mut PipelineHandles,
    sessions: usize,
    in_flight: usize,
    total: usize,
) -> f64 {
    let permits = Arc::new(Semaphore::new(in_flight));
    let sender = handles.input_tx.clone();
    let producer_permits = permits.clone();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        let sessions: Vec<SessionId> = (0..sessions).map(|s| SessionId::new(format!("s{s}"))).collect();
        for i in 0..total {
            producer_permits.acquire().await.expect("open").forget();
            let request = PromptRequest {
                session: sessions[i % sessions.len()].clone(),
                input: "Hello!".to_string(),
                meta: Default::default(),
            };
            sender.send(request).await.expect("admitted");
        }
    });
    for _ in 0..total {
        handles
            .output_rx
            .recv()
            .await
            .expect("output")
            .result
            .expect("completes");
        permits.add_permits(1);
    }
    producer.await.expect("producer");
    total as f64 / start.elapsed().as_secs_f64()
}

/// A retriever that takes a fixed time and finds nothing: a stand-in for a slow index.
pub struct SleepRetriever(pub Duration);

#[async_trait]
impl Retriever for SleepRetriever {
    async fn retrieve(&self, _request: &InferenceRequest) -> Result<Vec<RetrievedChunk>, PipelineError> {
        tokio::time::sleep(self.0).await;
        Ok(Vec::new())
    }
}

/// A multi-thread runtime with `BENCH_THREADS` workers (default 2, one per core here).
pub fn runtime() -> tokio::runtime::Runtime {
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A model that answers each call after `delay` give or take up to `jitter` (spread evenly), timed
/// by a thread of its own with the OS's precision rather than by tokio's 1 ms timer wheel. Real
/// model servers do not finish their calls in lockstep; with a fixed delay, 64 closed-loop
/// callers stay in step and every call's end queues behind 63 others in Post and Stream.
pub struct ThreadTimedModel {
    delay: Duration,
    jitter: Duration,
    calls: std::sync::atomic::AtomicU64,
    due: std::sync::mpsc::Sender<Due>,
}

type Due = std::cmp::Reverse<(Instant, u64, OrdSender)>;

/// A oneshot sender that sorts as equal to any other, so calls order by deadline alone.
struct OrdSender(tokio::sync::oneshot::Sender<()>);

impl PartialEq for OrdSender {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for OrdSender {}
impl PartialOrd for OrdSender {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdSender {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl ThreadTimedModel {
    pub fn new(delay: Duration, jitter: Duration) -> Self {
        let (due, calls) = std::sync::mpsc::channel::<Due>();
        std::thread::spawn(move || {
            let mut waiting = std::collections::BinaryHeap::<Due>::new();
            loop {
                let next = match waiting.peek() {
                    Some(std::cmp::Reverse((at, _, _))) => {
                        calls.recv_timeout(at.saturating_duration_since(Instant::now()))
                    }
                    None => calls
                        .recv()
                        .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                };
                match next {
                    Ok(call) => waiting.push(call),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) if waiting.is_empty() => return,
                    Err(_) => {}
                }
                let now = Instant::now();
                while waiting
                    .peek()
                    .is_some_and(|std::cmp::Reverse((at, _, _))| *at <= now)
                {
                    if let Some(std::cmp::Reverse((_, _, done))) = waiting.pop() {
                        let _ = done.0.send(());
                    }
                }
            }
        });
        Self {
            delay,
            jitter,
            calls: std::sync::atomic::AtomicU64::new(0),
            due,
        }
    }
}

#[async_trait]
impl tokio_prompt_orchestrator::ModelWorker for ThreadTimedModel {
    async fn infer(&self, _prompt: &str) -> Result<Vec<String>, tokio_prompt_orchestrator::WorkerError> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A fixed pseudo-random spread (Weyl sequence): the same run every time.
        let fraction = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.delay.saturating_sub(self.jitter) + self.jitter.mul_f64(2.0 * fraction);
        let (done, wait) = tokio::sync::oneshot::channel();
        let _ = self
            .due
            .send(std::cmp::Reverse((Instant::now() + delay, n, OrdSender(done))));
        let _ = wait.await;
        Ok(vec!["done".to_string()])
    }
}
