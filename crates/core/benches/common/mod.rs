//! Shared by the benchmarks: a pipeline configuration and a closed-loop load driver.

// Each bench binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceRequest, PipelineConfig, PipelineError, RetrievedChunk, Retriever, SessionId,
    Stage, WhenFull,
};

/// Default settings, except that the input blocks instead of shedding: a benchmark measures
/// the pipeline at a given number of requests in flight, not its refusals.
pub fn bench_config() -> PipelineConfig {
    let config = PipelineConfig::default();
    let capacity = config.rag.queue.capacity;
    config.with_queue(Stage::Rag, capacity, WhenFull::Block)
}

/// `clients` concurrent callers, each sending its share of `total` requests one after another
/// and waiting for each final event. Returns every request's latency.
pub async fn drive(
    sender: &tokio_prompt_orchestrator::RequestSender,
    clients: usize,
    total: usize,
) -> Vec<Duration> {
    let per_client = total.div_ceil(clients);
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let request = InferenceRequest::chat(
                    SessionId::new(format!("client-{c}")),
                    vec![ChatMessage::user("Hello!")],
                )
                .with_stream(i % 2 == 0);
                let start = Instant::now();
                let handle = sender.submit(request).await.expect("admitted");
                handle.into_response().await.expect("completes");
                latencies.push(start.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all
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

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
