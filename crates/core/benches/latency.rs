//! Per-request latency through all five stages with EchoWorker (no model time, so all of it is
//! pipeline overhead): percentiles at 1, 64 and 4,096 requests in flight.
//!
//! `cargo bench --bench latency` (set `LATENCY_REQUESTS` to change the number of requests per
//! row, e.g. for a short run under `valgrind --tool=callgrind`).

mod common;

use std::sync::Arc;
use std::time::Instant;

use tokio_prompt_orchestrator::{EchoWorker, ModelWorker, PipelineBuilder};

use common::{bench_config, drive, percentile, runtime};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; a filter that does not name this target skips it.
    if args
        .iter()
        .any(|a| !a.starts_with("--") && !"latency".contains(a.as_str()))
    {
        return;
    }
    // Without `--bench` this runs as a test (`cargo test --all-targets`): a short smoke run.
    let default_requests = if args.iter().any(|a| a == "--bench") {
        200_000
    } else {
        500
    };
    let rt = runtime();
    let worker: Arc<dyn ModelWorker> = Arc::new(EchoWorker::new());
    let handles = rt.block_on(async { PipelineBuilder::new(worker).config(bench_config()).spawn() });
    println!(
        "{:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "in_flight", "requests", "req/s", "p50", "p90", "p99", "p99.9"
    );
    let requests: usize = std::env::var("LATENCY_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_requests);
    for in_flight in [1usize, 64, 4096] {
        let total = requests.max(in_flight * 5);
        // Warm up, then measure.
        rt.block_on(drive(&handles.input_tx, in_flight, total / 10));
        let start = Instant::now();
        let mut latencies = rt.block_on(drive(&handles.input_tx, in_flight, total));
        let elapsed = start.elapsed();
        latencies.sort();
        println!(
            "{:>10} {:>10} {:>12.0} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?}",
            in_flight,
            latencies.len(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
        );
    }
}
