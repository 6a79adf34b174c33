//! Tokens reach the caller as they are produced; Post works on the stream.

use std::sync::Arc;

use tokio_prompt_orchestrator::{
    FinishReason, PipelineBuilder, PipelineError, ResponseEvent, SamplingParams, WorkerError,
};

use crate::support::{ProbeWorker, chat, small_config};

#[tokio::test]
async fn the_first_token_arrives_before_the_model_has_finished() {
    // The model produces one token, then waits for the test's permission.
    let (worker, gate) = ProbeWorker::gated(1);
    let probe = worker.probe.clone();
    let handles = PipelineBuilder::new(Arc::new(worker))
        .config(small_config(1, 8, 8))
        .spawn();

    let mut handle = handles
        .input_tx
        .submit(chat("s", "one two three"))
        .await
        .expect("admitted");
    assert_eq!(handle.recv().await, Some(ResponseEvent::Token("one ".into())));
    assert_eq!(probe.finished.get(), 0, "the model is still generating");

    gate.add_permits(2);
    assert_eq!(handle.recv().await, Some(ResponseEvent::Token("two ".into())));
    assert_eq!(handle.recv().await, Some(ResponseEvent::Token("three".into())));
    match handle.recv().await {
        Some(ResponseEvent::Done(done)) => {
            assert_eq!(done.finish_reason, FinishReason::Stop);
            assert_eq!(done.usage.completion_tokens, 3);
            assert!(done.timings.first_token.is_some());
        }
        other => panic!("expected Done, got {other:?}"),
    }
    assert_eq!(handle.recv().await, None);
}

#[tokio::test]
async fn a_stop_sequence_ends_the_output_and_stops_the_model() {
    let (worker, gate) = ProbeWorker::gated(3);
    let probe = worker.probe.clone();
    let handles = PipelineBuilder::new(Arc::new(worker))
        .config(small_config(1, 8, 8))
        .spawn();

    let params = SamplingParams {
        stop: vec!["STOP".into()],
        ..Default::default()
    };
    let request = chat("s", "alpha beta STOP gamma delta").with_params(params);
    let response = handles
        .input_tx
        .submit(request)
        .await
        .expect("admitted")
        .into_response()
        .await;
    let response = response.expect("completes");
    assert_eq!(response.text, "alpha beta ");
    assert_eq!(response.completion.finish_reason, FinishReason::Stop);
    // The model was blocked before "gamma"; ending the output cancelled it.
    probe.cancelled.wait_for(1).await;
    drop(gate);
}

#[tokio::test]
async fn max_tokens_caps_the_output_with_finish_reason_length() {
    let worker = ProbeWorker::new();
    let handles = PipelineBuilder::new(Arc::new(worker))
        .config(small_config(1, 8, 8))
        .spawn();
    let params = SamplingParams {
        max_tokens: Some(2),
        ..Default::default()
    };
    let request = chat("s", "a b c d e").with_params(params);
    let response = handles
        .input_tx
        .submit(request)
        .await
        .expect("admitted")
        .into_response()
        .await;
    let response = response.expect("completes");
    assert_eq!(response.text, "a b ");
    assert_eq!(response.completion.finish_reason, FinishReason::Length);
    assert_eq!(response.completion.usage.completion_tokens, 2);
}

#[tokio::test]
async fn a_non_streaming_caller_gets_one_joined_token() {
    let handles = PipelineBuilder::new(Arc::new(ProbeWorker::new()))
        .config(small_config(1, 8, 8))
        .spawn();
    let request = chat("s", "one two three").with_stream(false);
    let mut handle = handles.input_tx.submit(request).await.expect("admitted");
    assert_eq!(
        handle.recv().await,
        Some(ResponseEvent::Token("one two three".into()))
    );
    assert!(matches!(handle.recv().await, Some(ResponseEvent::Done(_))));
}

#[tokio::test]
async fn a_failure_before_the_first_token_is_the_only_event() {
    let handles = PipelineBuilder::new(Arc::new(ProbeWorker::new()))
        .config(small_config(1, 8, 8))
        .spawn();
    let mut handle = handles
        .input_tx
        .submit(chat("s", "fail please"))
        .await
        .expect("admitted");
    let expected = PipelineError::Worker(WorkerError::retryable("upstream said no"));
    assert_eq!(handle.recv().await, Some(ResponseEvent::Error(expected)));
    assert_eq!(handle.recv().await, None);
}

#[tokio::test]
async fn a_failure_mid_stream_ends_with_an_error_not_a_quiet_truncation() {
    let handles = PipelineBuilder::new(Arc::new(ProbeWorker::new()))
        .config(small_config(1, 8, 8))
        .spawn();
    let mut handle = handles
        .input_tx
        .submit(chat("s", "cut after one"))
        .await
        .expect("admitted");
    assert_eq!(handle.recv().await, Some(ResponseEvent::Token("cut ".into())));
    let expected = PipelineError::Worker(WorkerError::new("connection reset mid-stream"));
    assert_eq!(handle.recv().await, Some(ResponseEvent::Error(expected)));
    assert_eq!(handle.recv().await, None);
    assert_eq!(handles.pipeline.stats().failed, 1);
}
