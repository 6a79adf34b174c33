//! Shared by the benchmarks: a pipeline configuration and closed-loop load drivers.

// Each bench binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceRequest, PipelineConfig, PipelineError, PipelineHandles, PromptRequest,
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
    let per_client = total.div_ceil(clients);
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let session = SessionId::new(format!("client-{c}"));
            let mut samples = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let request = InferenceRequest::chat(session.clone(), vec![ChatMessage::user("Hello!")])
                    .with_stream(i % 2 == 0);
                let start = Instant::now();
                let handle = sender.submit(request).await.expect("admitted");
                let response = handle.into_response().await.expect("completes");
                samples.push(Sample {
                    latency: start.elapsed(),
                    overhead: response.completion.timings.overhead(),
                });
            }
            samples
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all
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
