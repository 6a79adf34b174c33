//! A caller that goes away cancels its request wherever it is, including the model call.

use std::sync::Arc;

use tokio_prompt_orchestrator::{PipelineBuilder, ResponseEvent, Stage};

use crate::support::{ProbeWorker, chat, nz, small_config};

#[tokio::test]
async fn dropping_the_handle_cancels_the_model_call() {
    let (worker, _gate) = ProbeWorker::gated(1);
    let probe = worker.probe.clone();
    let handles = PipelineBuilder::new(Arc::new(worker))
        .config(small_config(2, 8, 8))
        .spawn();

    let mut handle = handles
        .input_tx
        .submit(chat("s", "hello there world"))
        .await
        .expect("admitted");
    assert_eq!(handle.recv().await, Some(ResponseEvent::Token("hello ".into())));
    // The model is now blocked producing its second token; the caller leaves.
    drop(handle);

    probe.cancelled.wait_for(1).await;
    assert_eq!(probe.finished.get(), 0);
    drop(handles.input_tx);
    handles.pipeline.join().await;
    let stats = handles.pipeline.stats();
    assert_eq!((stats.cancelled, stats.completed, stats.in_flight), (1, 0, 0));
}

#[tokio::test]
async fn a_request_dropped_while_queued_never_reaches_the_model() {
    let (worker, gate) = ProbeWorker::gated(0);
    let probe = worker.probe.clone();
    // One model call at a time: the second request waits in the Inference queue.
    let config = small_config(1, 8, 8).with_concurrency(Stage::Inference, nz(1));
    let handles = PipelineBuilder::new(Arc::new(worker)).config(config).spawn();

    let first = handles
        .input_tx
        .submit(chat("s", "first"))
        .await
        .expect("admitted");
    let second = handles
        .input_tx
        .submit(chat("s", "second"))
        .await
        .expect("admitted");
    probe.started.wait_for(1).await;
    drop(second);
    gate.add_permits(100);
    assert_eq!(first.into_response().await.expect("completes").text, "first");

    drop(handles.input_tx);
    handles.pipeline.join().await;
    assert_eq!(probe.calls(), [("s".to_string(), "first".to_string())]);
    let stats = handles.pipeline.stats();
    assert_eq!((stats.completed, stats.cancelled), (1, 1));
}
