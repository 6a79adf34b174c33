//! Throughput of the in-process pipeline (criterion): EchoWorker with no delay at 1, 64 and
//! 4,096 requests in flight, and a simulated 5 ms RAG + 50 ms model to show the stages overlap.
//!
//! `cargo bench --bench pipeline`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio_prompt_orchestrator::{EchoWorker, ModelWorker, PipelineBuilder, RequestSender};

use common::{SleepRetriever, bench_config, drive_untimed, runtime};

fn echo_in_flight(c: &mut Criterion) {
    let rt = runtime();
    let worker: Arc<dyn ModelWorker> = Arc::new(EchoWorker::new());
    let handles = rt.block_on(async { PipelineBuilder::new(worker).config(bench_config()).spawn() });
    let mut group = c.benchmark_group("echo");
    for in_flight in [1usize, 64, 4096] {
        bench_in_flight(
            &mut group,
            &rt,
            &handles.input_tx,
            in_flight,
            (in_flight * 8).max(8192),
        );
    }
    group.finish();
}

fn overlapping_stages(c: &mut Criterion) {
    let rt = runtime();
    // One token per request, so the model takes 50 ms per call.
    let worker: Arc<dyn ModelWorker> = Arc::new(EchoWorker::with_token_delay(Duration::from_millis(50)));
    let handles = rt.block_on(async {
        PipelineBuilder::new(worker)
            .retriever(Arc::new(SleepRetriever(Duration::from_millis(5))))
            .config(bench_config())
            .spawn()
    });
    let mut group = c.benchmark_group("rag5ms_model50ms");
    group.sample_size(10);
    for in_flight in [1usize, 64] {
        bench_in_flight(&mut group, &rt, &handles.input_tx, in_flight, in_flight * 4);
    }
    group.finish();
}

/// One benchmark: `total` requests from `in_flight` closed-loop callers per iteration.
fn bench_in_flight(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    sender: &RequestSender,
    in_flight: usize,
    total: usize,
) {
    group.throughput(Throughput::Elements(total as u64));
    group.bench_function(BenchmarkId::new("in_flight", in_flight), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let sender = sender.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    drive_untimed(&sender, in_flight, total).await;
                }
                start.elapsed()
            }
        });
    });
}

criterion_group!(benches, echo_in_flight, overlapping_stages);
criterion_main!(benches);
