//! Full queues: shedding at the input, shedding at an inner edge, and blocked stages resuming.

use std::sync::Arc;
use std::time::Duration;

use tokio_prompt_orchestrator::{
    PipelineBuilder, PipelineError, PromptRequest, ResponseEvent, SessionId, Stage, WhenFull,
};

use crate::support::{ProbeWorker, blocking_config, chat, nz, outputs, small_config};

#[tokio::test]
async fn full_input_queue_sheds_with_a_typed_error_and_counts_it() {
    let (worker, gate) = ProbeWorker::gated(0);
    let handles = PipelineBuilder::new(Arc::new(worker))
        .config(small_config(1, 2, 1))
        .spawn();

    // The test task does not yield between submits, so the lanes cannot drain the input queue:
    // its two slots fill, and the third request is shed at once.
    let a = handles.input_tx.submit(chat("s", "one")).await.expect("admitted");
    let b = handles.input_tx.submit(chat("s", "two")).await.expect("admitted");
    let shed = handles.input_tx.submit(chat("s", "three")).await.unwrap_err();
    assert_eq!(shed, PipelineError::Overloaded { stage: Stage::Rag });
    assert_eq!(shed.to_string(), "overloaded: the rag queue is full; retry later");

    let stats = handles.pipeline.stats();
    assert_eq!((stats.admitted, stats.shed), (2, 1));

    // The shed request cost nothing; the admitted ones complete once the model answers.
    gate.add_permits(100);
    assert_eq!(a.into_response().await.expect("completes").text, "one");
    assert_eq!(b.into_response().await.expect("completes").text, "two");
    assert_eq!(handles.pipeline.stats().completed, 2);
}

#[tokio::test(start_paused = true)]
async fn shed_policy_on_an_inner_queue_ends_the_request_with_overloaded() {
    // Each model call yields its first token freely, then waits for the gate.
    let (worker, gate) = ProbeWorker::gated(1);
    let probe = worker.probe.clone();
    // Post relays one stream at a time and queues one more hand-off; its lane also holds one it
    // took from the queue while waiting for a place. Anything beyond that is shed.
    let config = small_config(1, 8, 8)
        .with_queue(Stage::Post, nz(1), WhenFull::Shed)
        .with_concurrency(Stage::Post, nz(1));
    let handles = PipelineBuilder::new(Arc::new(worker)).config(config).spawn();
    // With paused time, a sleep returns only once every task is idle: the pipeline has settled.
    let settle = || tokio::time::sleep(Duration::from_secs(1));

    let mut first = handles
        .input_tx
        .submit(chat("s", "one more"))
        .await
        .expect("admitted");
    assert_eq!(first.recv().await, Some(ResponseEvent::Token("one ".into())));
    let second = handles
        .input_tx
        .submit(chat("s", "two more"))
        .await
        .expect("admitted");
    settle().await;
    let third = handles
        .input_tx
        .submit(chat("s", "three more"))
        .await
        .expect("admitted");
    settle().await;
    let mut fourth = handles
        .input_tx
        .submit(chat("s", "four more"))
        .await
        .expect("admitted");
    assert_eq!(
        fourth.recv().await,
        Some(ResponseEvent::Error(Box::new(PipelineError::Overloaded {
            stage: Stage::Post
        })))
    );
    assert_eq!(fourth.recv().await, None, "exactly one final event");

    gate.add_permits(100);
    assert_eq!(first.into_response().await.expect("completes").text, "more");
    assert_eq!(second.into_response().await.expect("completes").text, "two more");
    assert_eq!(third.into_response().await.expect("completes").text, "three more");
    // The shed request was cancelled before its model call was made.
    assert_eq!(probe.started.get(), 3);
    let stats = handles.pipeline.stats();
    assert_eq!((stats.admitted, stats.completed, stats.failed), (4, 3, 1));
}

#[tokio::test(start_paused = true)]
async fn blocked_stages_resume_and_lose_nothing() {
    let (worker, gate) = ProbeWorker::gated(0);
    let mut handles = PipelineBuilder::new(Arc::new(worker))
        .config(blocking_config(1, 1, 1))
        .spawn();

    let sender = handles.input_tx.clone();
    let producer = tokio::spawn(async move {
        for i in 0..20 {
            let request = PromptRequest {
                session: SessionId::new("s"),
                input: format!("m{i}"),
                meta: Default::default(),
            };
            sender.send(request).await.expect("block policy never sheds");
        }
    });
    // Paused time only advances when every task is idle: the pipeline is fully stalled now.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        !producer.is_finished(),
        "the producer waits at the full input queue"
    );
    let stalled = handles.pipeline.stats();
    assert!(stalled.admitted < 20);
    assert_eq!(stalled.completed, 0);

    gate.add_permits(1_000);
    producer.await.expect("producer finished");
    drop(handles.input_tx);
    let got = outputs(&mut handles.output_rx, 20).await;
    let texts: Vec<String> = got
        .into_iter()
        .map(|o| o.result.expect("completes").text)
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected);
    handles.pipeline.join().await;
    assert_eq!(handles.pipeline.stats().completed, 20);
}
