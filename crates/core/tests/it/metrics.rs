//! Every stage reports its counters and latencies through the `metrics` facade.

use std::sync::Arc;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio_prompt_orchestrator::{PipelineBuilder, Stage};

use crate::support::{ProbeWorker, chat, small_config};

#[tokio::test]
async fn every_stage_counts_admitted_and_completed_and_records_latency() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The stages register their metric handles when spawned, so only spawning needs the recorder.
    let handles = metrics::with_local_recorder(&recorder, || {
        PipelineBuilder::new(Arc::new(ProbeWorker::new()))
            .config(small_config(2, 8, 8))
            .spawn()
    });
    for i in 0..10 {
        let request = chat(&format!("s{i}"), "hello world");
        handles
            .input_tx
            .submit(request)
            .await
            .expect("admitted")
            .into_response()
            .await
            .expect("completes");
    }

    let snapshot = snapshotter.snapshot().into_hashmap();
    let value = |name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, _)| {
                let key = key.key();
                key.name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, (_, _, value))| value)
    };
    for stage in Stage::ALL {
        let s = stage.as_str();
        for outcome in ["admitted", "completed"] {
            assert_eq!(
                value(
                    "orchestrator_stage_requests_total",
                    &[("stage", s), ("outcome", outcome)]
                ),
                Some(DebugValue::Counter(10)).as_ref(),
                "{s} {outcome}"
            );
        }
        match value("orchestrator_stage_latency_seconds", &[("stage", s)]) {
            Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 10, "{s} latency"),
            other => panic!("{s}: no latency histogram: {other:?}"),
        }
        match value("orchestrator_queue_wait_seconds", &[("stage", s)]) {
            Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 10, "{s} queue wait"),
            other => panic!("{s}: no queue-wait histogram: {other:?}"),
        }
    }
    assert_eq!(
        value("orchestrator_requests_total", &[("outcome", "completed")]),
        Some(DebugValue::Counter(10)).as_ref()
    );
}
