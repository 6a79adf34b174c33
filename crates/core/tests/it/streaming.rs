//! Tokens reach the caller as they are produced; Post works on the stream.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use tokio_prompt_orchestrator::{
    FinishReason, InferenceCall, ModelWorker, Passthrough, PipelineBuilder, PipelineError, ResponseEvent,
    SamplingParams, TokenStream, WorkerChunk, WorkerError,
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
    assert_eq!(
        handle.recv().await,
        Some(ResponseEvent::Error(Box::new(expected)))
    );
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
    assert_eq!(
        handle.recv().await,
        Some(ResponseEvent::Error(Box::new(expected)))
    );
    assert_eq!(handle.recv().await, None);
    assert_eq!(handles.pipeline.stats().failed, 1);
}

/// A model that calls a tool: the call arrives as deltas (with logprobs), then the finish.
struct ToolCaller;

fn tool_delta(message: serde_json::Value, logprob: f64) -> WorkerChunk {
    let mut delta = Passthrough {
        message: message.as_object().cloned().unwrap(),
        ..Passthrough::default()
    };
    delta.choice.insert(
        "logprobs".into(),
        json!({"content": [{"token": "t", "logprob": logprob}]}),
    );
    delta.response.insert("system_fingerprint".into(), json!("fp_7"));
    WorkerChunk::Passthrough(Box::new(delta))
}

#[async_trait]
impl ModelWorker for ToolCaller {
    async fn infer(&self, _prompt: &str) -> Result<Vec<String>, WorkerError> {
        Ok(Vec::new())
    }

    async fn infer_stream(&self, _call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let chunks = [
            WorkerChunk::Token("Checking.".into()),
            tool_delta(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "lookup", "arguments": "{\"q\":"}}]}),
                -0.5,
            ),
            tool_delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}),
                -0.25,
            ),
            WorkerChunk::Finish {
                reason: FinishReason::ToolCalls,
                usage: None,
            },
        ];
        Ok(stream::iter(chunks.map(Ok)).boxed())
    }
}

#[tokio::test]
async fn pass_through_deltas_stream_in_order_and_merge_for_whole_answers() {
    let handles = PipelineBuilder::new(Arc::new(ToolCaller))
        .config(small_config(1, 8, 8))
        .spawn();
    let mut handle = handles.input_tx.submit(chat("s", "q")).await.unwrap();
    let mut events = Vec::new();
    while let Some(event) = handle.recv().await {
        events.push(event);
    }
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[0], ResponseEvent::Token("Checking.".into()));
    let ResponseEvent::Passthrough(first) = &events[1] else {
        panic!("expected a delta, got {:?}", events[1])
    };
    assert_eq!(first.message["tool_calls"][0]["function"]["arguments"], "{\"q\":");
    assert!(matches!(&events[2], ResponseEvent::Passthrough(_)));
    let ResponseEvent::Done(done) = &events[3] else {
        panic!("expected Done, got {:?}", events[3])
    };
    assert_eq!(done.finish_reason, FinishReason::ToolCalls);

    // A caller that wants the whole answer gets the deltas merged, as the stream would add up.
    let whole = handles
        .input_tx
        .submit(chat("s", "q").with_stream(false))
        .await
        .unwrap()
        .into_response()
        .await
        .unwrap();
    assert_eq!(whole.text, "Checking.");
    let extra = whole.passthrough.expect("the tool call came back");
    assert_eq!(
        extra.message["tool_calls"],
        json!([{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}])
    );
    assert_eq!(
        extra.choice["logprobs"]["content"],
        json!([{"token": "t", "logprob": -0.5}, {"token": "t", "logprob": -0.25}])
    );
    assert_eq!(extra.response["system_fingerprint"], "fp_7");
    assert_eq!(whole.completion.finish_reason, FinishReason::ToolCalls);
}

/// Honours `max_tokens` as a model server does: after `delay`, that many tokens, then its own
/// end with its own usage (a prompt of 37 tokens).
struct CappedModel {
    delay: std::time::Duration,
}

#[async_trait]
impl ModelWorker for CappedModel {
    async fn infer(&self, _prompt: &str) -> Result<Vec<String>, WorkerError> {
        unreachable!("the pipeline streams")
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        tokio::time::sleep(self.delay).await;
        let cap = call.request.params.max_tokens.unwrap_or(8);
        let mut chunks: Vec<Result<WorkerChunk, WorkerError>> = (0..cap)
            .map(|i| Ok(WorkerChunk::Token(format!("t{i} "))))
            .collect();
        chunks.push(Ok(WorkerChunk::Finish {
            reason: FinishReason::Length,
            usage: Some(tokio_prompt_orchestrator::Usage::new(37, cap)),
        }));
        Ok(stream::iter(chunks).boxed())
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_ended_by_max_tokens_is_a_success_with_the_models_usage_and_time() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let model = CappedModel {
        delay: std::time::Duration::from_secs(5),
    };
    let handles = metrics::with_local_recorder(&recorder, || {
        PipelineBuilder::new(Arc::new(model))
            .config(small_config(1, 8, 8))
            .spawn()
    });
    for stream in [true, false] {
        let params = SamplingParams {
            max_tokens: Some(3),
            ..Default::default()
        };
        let request = crate::support::chat("s", "a long question")
            .with_params(params)
            .with_stream(stream);
        let response = handles
            .input_tx
            .submit(request)
            .await
            .expect("admitted")
            .into_response()
            .await
            .expect("completes");
        assert_eq!(response.text, "t0 t1 t2 ");
        let completion = &response.completion;
        assert_eq!(completion.finish_reason, FinishReason::Length);
        assert_eq!(
            (completion.usage.prompt_tokens, completion.usage.completion_tokens),
            (37, 3)
        );
        assert!(!completion.usage.estimated, "the model's own usage");
        // The model took five (paused) seconds; none of it is the pipeline's.
        assert!(
            completion.timings.overhead() < std::time::Duration::from_secs(1),
            "{:?}",
            completion.timings
        );
    }
    // Both calls completed in the Inference stage: neither was cut by Post.
    let snapshot = snapshotter.snapshot().into_hashmap();
    let inference = |outcome: &str| {
        snapshot.iter().find_map(|(key, (_, _, value))| {
            let key = key.key();
            let labelled = |k: &str, v: &str| key.labels().any(|l| l.key() == k && l.value() == v);
            (key.name() == "orchestrator_stage_requests_total"
                && labelled("stage", "inference")
                && labelled("outcome", outcome))
            .then_some(value)
        })
    };
    assert_eq!(inference("completed"), Some(&DebugValue::Counter(2)));
    assert_eq!(inference("failed"), Some(&DebugValue::Counter(0)));
}
