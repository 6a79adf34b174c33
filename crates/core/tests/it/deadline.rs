//! Per-request deadlines end the request with `Timeout` instead of processing it late.

use std::sync::Arc;
use std::time::Duration;

use tokio_prompt_orchestrator::{
    InferenceRequest, PipelineBuilder, PipelineError, PipelineHandles, ResponseEvent, Stage,
};

use crate::support::{Probe, ProbeWorker, chat, nz, small_config};

/// A pipeline whose model takes 10 s, and a request that may take 1 s.
fn too_slow() -> (Arc<Probe>, PipelineHandles, InferenceRequest) {
    let worker = ProbeWorker::with_delay(Duration::from_secs(10));
    let probe = worker.probe.clone();
    let handles = PipelineBuilder::new(Arc::new(worker))
        .config(small_config(1, 8, 8))
        .spawn();
    (
        probe,
        handles,
        chat("s", "too slow").with_timeout(Duration::from_secs(1)),
    )
}

#[tokio::test(start_paused = true)]
async fn a_slow_model_call_times_out_and_is_cancelled() {
    let (probe, handles, request) = too_slow();
    let mut handle = handles.input_tx.submit(request).await.expect("admitted");
    assert_eq!(
        handle.recv().await,
        Some(ResponseEvent::Error(Box::new(PipelineError::Timeout {
            stage: Stage::Inference
        })))
    );
    assert_eq!(handle.recv().await, None);
    probe.cancelled.wait_for(1).await;
    assert_eq!(handles.pipeline.stats().failed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_deadline_passes_in_a_queue_is_never_processed() {
    let worker = ProbeWorker::with_delay(Duration::from_secs(5));
    let probe = worker.probe.clone();
    let config = small_config(1, 8, 8).with_concurrency(Stage::Inference, nz(1));
    let handles = PipelineBuilder::new(Arc::new(worker)).config(config).spawn();

    // The first call holds the only inference slot for 5 s; the second may wait only 1 s.
    let first = handles
        .input_tx
        .submit(chat("s", "slow"))
        .await
        .expect("admitted");
    let second = chat("s", "impatient").with_timeout(Duration::from_secs(1));
    let second = handles.input_tx.submit(second).await.expect("admitted");

    assert_eq!(
        second.into_response().await,
        Err(PipelineError::Timeout {
            stage: Stage::Inference
        })
    );
    assert_eq!(first.into_response().await.expect("completes").text, "slow");
    assert_eq!(probe.calls().len(), 1, "the late request never reached the model");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_reading_times_out_in_the_stream_stage() {
    let worker = ProbeWorker::new();
    let probe = worker.probe.clone();
    let mut config = small_config(1, 8, 8);
    config.token_buffer = nz(1);
    let handles = PipelineBuilder::new(Arc::new(worker)).config(config).spawn();

    // More tokens than the pipes between the stages and to the caller can hold.
    let words = vec!["word"; 32].join(" ");
    let request = chat("s", &words).with_timeout(Duration::from_secs(1));
    let mut handle = handles.input_tx.submit(request).await.expect("admitted");
    // The caller reads nothing until well past its deadline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut last = None;
    while let Some(event) = handle.recv().await {
        last = Some(event);
    }
    assert_eq!(
        last,
        Some(ResponseEvent::Error(Box::new(PipelineError::Timeout {
            stage: Stage::Stream
        })))
    );
    probe.cancelled.wait_for(1).await;
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_the_model_call_even_while_nobody_reads_the_handle() {
    let (probe, handles, request) = too_slow();
    let mut handle = handles.input_tx.submit(request).await.expect("admitted");
    // Not read until long after the deadline: the model call ends at the deadline regardless.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(probe.cancelled.get(), 1, "the model call outlived the deadline");
    assert_eq!(
        handle.recv().await,
        Some(ResponseEvent::Error(Box::new(PipelineError::Timeout {
            stage: Stage::Inference
        })))
    );
    assert_eq!(handle.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_fire_and_forget_request_times_out_too() {
    let (probe, mut handles, request) = too_slow();
    handles.input_tx.send(request).await.expect("admitted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(probe.cancelled.get(), 1, "the model call outlived the deadline");
    let output = handles.output_rx.recv().await.expect("an output");
    assert_eq!(
        output.result,
        Err(PipelineError::Timeout {
            stage: Stage::Inference
        })
    );
}
