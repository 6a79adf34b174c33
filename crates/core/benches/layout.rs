//! Requests a second through the five stages with each layout at 1 and 2 threads (criterion):
//! - `work_stealing/N`: a multi-thread runtime of N workers running the lanes and the callers;
//! - `per_core/N`: N core threads, each the one worker of a runtime (pinned when the process
//!   may run on N cores), the callers on a runtime of their own, so every request
//!   crosses threads on its way in and on its way out;
//! - `per_core_local/N`: the same threads, each also running its share of the callers, whose
//!   requests stay on their core's shard (the gateway's per-core path).
//!
//! EchoWorker without delay, 64 requests in flight, one shard a thread. The scaling factor is
//! N=2 over N=1 within a layout; a machine with more cores shows more with
//! `LAYOUT_THREADS=1,2,4,8`.
//!
//! `cargo bench --bench layout`

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio_prompt_orchestrator::{Cores, EchoWorker, Layout, PipelineBuilder, PipelineHandles};

use common::{bench_config, drive_on_cores, drive_untimed};

const IN_FLIGHT: usize = 64;
const TOTAL: usize = 8192;

fn thread_counts() -> Vec<usize> {
    std::env::var("LAYOUT_THREADS")
        .ok()
        .map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2])
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    WorkStealing,
    PerCore,
    PerCoreLocal,
}

/// The runtime the measurement runs on, the pipeline, and its core threads (per-core).
fn setup(threads: usize, variant: Variant) -> (Runtime, PipelineHandles, Option<Cores>) {
    let n = NonZeroUsize::new(threads).expect("at least one thread");
    let builder = PipelineBuilder::new(Arc::new(EchoWorker::new())).config(bench_config().with_shards(n));
    if variant == Variant::WorkStealing {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime");
        let handles = rt.block_on(async { builder.spawn() });
        return (rt, handles, None);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pin = Layout::PerCore {
        threads: n,
        pin: true,
    }
    .check()
    .is_ok();
    let cores = Cores::start(n, pin).expect("core threads");
    let handles = rt.block_on(async { builder.layout(Layout::On(cores.clone())).spawn() });
    (rt, handles, Some(cores))
}

fn layouts(c: &mut Criterion) {
    for (name, variant) in [
        ("work_stealing", Variant::WorkStealing),
        ("per_core", Variant::PerCore),
        ("per_core_local", Variant::PerCoreLocal),
    ] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(TOTAL as u64));
        for threads in thread_counts() {
            let (rt, handles, cores) = setup(threads, variant);
            group.bench_function(BenchmarkId::from_parameter(threads), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let sender = handles.input_tx.clone();
                    let cores = cores.clone();
                    async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            match (&cores, variant) {
                                (Some(cores), Variant::PerCoreLocal) => {
                                    drive_on_cores(&sender, cores, IN_FLIGHT, TOTAL).await;
                                }
                                _ => drive_untimed(&sender, IN_FLIGHT, TOTAL).await,
                            }
                        }
                        start.elapsed()
                    }
                });
            });
            if let Some(cores) = cores {
                cores.stop();
            }
        }
        group.finish();
    }
}

criterion_group!(benches, layouts);
criterion_main!(benches);
