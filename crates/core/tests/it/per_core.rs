//! The per-core layout: each shard's lanes on a thread of the pipeline's own (the one worker of a
//! runtime each), callers on any other runtime; sessions keep their order, and a pinned layout
//! larger than the cores allowed is refused.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio_prompt_orchestrator::{
    EchoWorker, InferenceCall, Layout, LayoutError, ModelWorker, PipelineBuilder, TokenStream, WorkerError,
};

use crate::support::{blocking_config, chat, outputs, send_numbered, sequence};

/// Echoes, noting which thread ran each session's calls.
#[derive(Default)]
struct Threads {
    seen: Mutex<BTreeMap<String, Vec<String>>>,
}

#[async_trait]
impl ModelWorker for Threads {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        EchoWorker::new().infer(prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        let session = call.request.session.to_string();
        self.seen.lock().unwrap().entry(session).or_default().push(thread);
        EchoWorker::new().infer_stream(call).await
    }
}

fn per_core(threads: usize, pin: bool) -> Layout {
    Layout::PerCore {
        threads: NonZeroUsize::new(threads).unwrap(),
        pin,
    }
}

#[tokio::test]
async fn sessions_keep_their_order_and_each_runs_on_one_core_thread() {
    const SESSIONS: usize = 20;
    const PER_SESSION: usize = 10;
    let worker = Arc::new(Threads::default());
    let mut handles = PipelineBuilder::new(worker.clone())
        .config(blocking_config(2, 64, 16))
        .layout(per_core(2, false))
        .try_spawn()
        .expect("starts");
    let producer = tokio::spawn(send_numbered(handles.input_tx.clone(), SESSIONS, PER_SESSION));
    drop(handles.input_tx);
    let got = outputs(&mut handles.output_rx, SESSIONS * PER_SESSION + 1).await;
    producer.await.unwrap();
    handles.pipeline.join().await;
    assert_eq!(got.len(), SESSIONS * PER_SESSION, "one output a request");

    let mut order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for output in got {
        let text = output.result.expect("completes").text;
        order
            .entry(output.session.to_string())
            .or_default()
            .push(sequence(&text));
    }
    for (session, seen) in &order {
        assert_eq!(seen, &(0..PER_SESSION).collect::<Vec<_>>(), "{session}");
    }
    let threads = worker.seen.lock().unwrap().clone();
    let mut used = std::collections::BTreeSet::new();
    for (session, names) in threads {
        assert!(
            names.iter().all(|n| n == &names[0]),
            "{session} moved between threads: {names:?}"
        );
        assert!(
            names[0].starts_with("orchestrator-core-"),
            "{session} ran on {}",
            names[0]
        );
        used.insert(names[0].clone());
    }
    assert_eq!(used.len(), 2, "both core threads took sessions: {used:?}");
}

#[tokio::test]
async fn a_caller_on_another_runtime_gets_its_answer_and_shutdown_drains() {
    let handles = PipelineBuilder::new(Arc::new(EchoWorker::new()))
        .config(blocking_config(2, 8, 8))
        .layout(per_core(2, false))
        .try_spawn()
        .expect("starts");
    let response = handles
        .input_tx
        .submit(chat("s", "hello there"))
        .await
        .expect("admitted")
        .into_response()
        .await
        .expect("completes");
    assert_eq!(response.text, "hello there");
    let report = handles
        .pipeline
        .shutdown(std::time::Duration::from_secs(30))
        .await;
    assert_eq!(report.aborted, 0);
}

#[tokio::test]
async fn one_pinned_thread_serves_and_more_than_the_cores_allowed_is_refused() {
    let handles = PipelineBuilder::new(Arc::new(EchoWorker::new()))
        .config(blocking_config(1, 8, 8))
        .layout(per_core(1, true))
        .try_spawn()
        .expect("one pinned thread starts");
    let answer = handles
        .input_tx
        .submit(chat("s", "pinned"))
        .await
        .unwrap()
        .into_response()
        .await;
    assert_eq!(answer.unwrap().text, "pinned");

    let too_many = 4096;
    let refused = PipelineBuilder::new(Arc::new(EchoWorker::new()))
        .layout(per_core(too_many, true))
        .try_spawn()
        .err()
        .expect("refused");
    match &refused {
        LayoutError::MoreThreadsThanCores { threads, allowed } => {
            assert_eq!(*threads, too_many);
            assert!(*allowed >= 1 && *allowed < too_many);
        }
        other => panic!("{other:?}"),
    }
    assert!(refused.to_string().contains("pin = false"), "{refused}");
    assert_eq!(
        per_core(too_many, false).check(),
        Ok(()),
        "unpinned threads may outnumber cores"
    );
}
