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

/// What `Pipeline::stage_stats` reads while requests are held in Inference, and once they have
/// all ended (completed, failed and cancelled): nothing stays counted in flight.
#[tokio::test]
async fn stage_stats_count_requests_in_flight_and_after_they_end() {
    let (worker, gate) = ProbeWorker::gated(1);
    let probe = worker.probe.clone();
    let handles = PipelineBuilder::new(Arc::new(worker))
        .config(small_config(2, 8, 8))
        .spawn();
    let mut held = Vec::new();
    for i in 0..3 {
        let mut handle = handles
            .input_tx
            .submit(chat(&format!("s{i}"), "one two three"))
            .await
            .expect("admitted");
        // The first token is free; the rest wait for the gate.
        assert!(handle.recv().await.is_some(), "first token");
        held.push(handle);
    }
    let stats = handles.pipeline.stage_stats();
    let inference = &stats[Stage::Inference.index()];
    assert_eq!(inference.stage, Stage::Inference);
    assert_eq!((inference.admitted, inference.in_flight), (3, 3));
    assert_eq!(inference.concurrency, 8);
    assert_eq!(inference.capacity, 8);

    // One is cancelled by its caller, one fails before its first token, the rest complete.
    drop(held.pop());
    probe.cancelled.wait_for(1).await;
    let failed = handles
        .input_tx
        .submit(chat("f", "fail now"))
        .await
        .expect("admitted")
        .into_response()
        .await;
    assert!(failed.is_err());
    gate.add_permits(100);
    for handle in held {
        handle.into_response().await.expect("completes");
    }

    let stats = handles.pipeline.stage_stats();
    for s in &stats {
        assert_eq!((s.in_flight, s.queued), (0, 0), "{}", s.stage);
        assert_eq!(s.queue_wait.count(), s.admitted, "{}", s.stage);
    }
    let inference = &stats[Stage::Inference.index()];
    assert_eq!(
        (
            inference.admitted,
            inference.completed,
            inference.failed,
            inference.cancelled
        ),
        (4, 2, 1, 1)
    );
    assert_eq!(inference.work.count(), 4);
    assert_eq!(
        handles.pipeline.time_to_first_token().count(),
        3,
        "one first token each"
    );
}
