//! Per-request figures through all five stages: latency with EchoWorker (no model time, so all of
//! it is the pipeline's) at 1, 64 and 4,096 requests in flight; the pipeline's overhead next to a
//! 5 ms model (a fixed 5 ms on tokio's timer, and 5 ms +- 0.5 ms timed by a thread of its own);
//! and fire-and-forget throughput.
//!
//! `cargo bench --bench latency` (set `LATENCY_REQUESTS` to change the number of requests per
//! row, e.g. for a short run under `valgrind --tool=callgrind`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_prompt_orchestrator::{EchoWorker, ModelWorker, PipelineBuilder};

use common::{ThreadTimedModel, bench_config, drive, drive_outputs, percentile, runtime};

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
    let requests: usize = std::env::var("LATENCY_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_requests);
    let rt = runtime();

    println!("EchoWorker, no model time: every microsecond is the pipeline's (submit -> final event)");
    let worker: Arc<dyn ModelWorker> = Arc::new(EchoWorker::new());
    let handles = rt.block_on(async { PipelineBuilder::new(worker).config(bench_config()).spawn() });
    print_header();
    for in_flight in [1usize, 64, 4096] {
        let total = requests.max(in_flight * 5);
        // Warm up, then measure.
        rt.block_on(drive(&handles.input_tx, in_flight, total / 10));
        let start = Instant::now();
        let samples = rt.block_on(drive(&handles.input_tx, in_flight, total));
        let latencies = samples.iter().map(|s| s.latency).collect();
        print_row(
            in_flight,
            samples.len() as f64 / start.elapsed().as_secs_f64(),
            latencies,
        );
    }

    println!("\nA model taking 5 ms per call: pipeline overhead = latency minus the model's time");
    let fixed = EchoWorker::with_token_delay(Duration::from_millis(5));
    overhead_rows(&rt, Arc::new(fixed), requests);

    println!("\nThe same with a model taking 5 ms +- 0.5 ms, timed by its own thread, not tokio's 1 ms tick");
    let varied = ThreadTimedModel::new(Duration::from_millis(5), Duration::from_micros(500));
    overhead_rows(&rt, Arc::new(varied), requests);

    println!("\nFire-and-forget (input_tx -> output_rx), EchoWorker, 1,024 sessions");
    println!("{:>10} {:>10} {:>12}", "in_flight", "requests", "req/s");
    let worker: Arc<dyn ModelWorker> = Arc::new(EchoWorker::new());
    let mut handles = rt.block_on(async { PipelineBuilder::new(worker).config(bench_config()).spawn() });
    for in_flight in [64usize, 4096] {
        let total = requests.max(in_flight * 5);
        rt.block_on(drive_outputs(&mut handles, 1024, in_flight, total / 10));
        let rate = rt.block_on(drive_outputs(&mut handles, 1024, in_flight, total));
        println!("{in_flight:>10} {total:>10} {rate:>12.0}");
    }
}

/// Overhead percentiles next to `worker` at 1 and 64 requests in flight.
fn overhead_rows(rt: &tokio::runtime::Runtime, worker: Arc<dyn ModelWorker>, requests: usize) {
    let handles = rt.block_on(async { PipelineBuilder::new(worker).config(bench_config()).spawn() });
    print_header();
    for in_flight in [1usize, 64] {
        let total = (requests / 20).max(in_flight * 5);
        rt.block_on(drive(&handles.input_tx, in_flight, total / 10));
        let start = Instant::now();
        let samples = rt.block_on(drive(&handles.input_tx, in_flight, total));
        let overheads = samples.iter().map(|s| s.overhead).collect();
        print_row(
            in_flight,
            samples.len() as f64 / start.elapsed().as_secs_f64(),
            overheads,
        );
    }
}

fn print_header() {
    println!(
        "{:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "in_flight", "requests", "req/s", "p50", "p90", "p99", "p99.9"
    );
}

fn print_row(in_flight: usize, rate: f64, mut values: Vec<Duration>) {
    values.sort();
    println!(
        "{:>10} {:>10} {:>12.0} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?}",
        in_flight,
        values.len(),
        rate,
        percentile(&values, 0.5),
        percentile(&values, 0.9),
        percentile(&values, 0.99),
        percentile(&values, 0.999),
    );
}
