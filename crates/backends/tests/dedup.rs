//! In-flight deduplication: identical concurrent calls share one upstream call; late joiners get
//! every token; the call runs while anyone reads it and stops when the last reader leaves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream;
use orchestrator_backends::dedup::Dedup;
use tokio::sync::Semaphore;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceCall, InferenceRequest, ModelWorker, RequestId, SamplingParams, SessionId,
    TokenStream, WorkerChunk, WorkerError,
};

/// Three tokens, each released by the test; counts calls and streams dropped unfinished.
struct Gated {
    calls: AtomicUsize,
    dropped_early: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

struct CountsDrop(Arc<AtomicUsize>, bool);

impl CountsDrop {
    fn complete(&mut self) {
        self.1 = true;
    }
}

impl Drop for CountsDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl ModelWorker for Gated {
    async fn infer(&self, _: &str) -> Result<Vec<String>, WorkerError> {
        Ok(Vec::new())
    }

    async fn infer_stream(&self, _call: InferenceCall) -> Result<TokenStream, WorkerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.clone();
        let guard = CountsDrop(self.dropped_early.clone(), false);
        Ok(
            stream::unfold((0, gate, guard), |(i, gate, mut guard)| async move {
                if i == 3 {
                    guard.complete();
                    return None;
                }
                gate.acquire().await.ok()?.forget();
                Some((Ok(WorkerChunk::Token(format!("t{i} "))), (i + 1, gate, guard)))
            })
            .boxed(),
        )
    }
}

fn call(temperature: Option<f32>, model: &str) -> InferenceCall {
    let request = InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user("same question")])
        .with_model(model)
        .with_params(SamplingParams {
            temperature,
            ..SamplingParams::default()
        });
    InferenceCall::new(RequestId(1), request, "same question")
}

fn setup() -> (Arc<Gated>, Arc<Dedup>) {
    let worker = Arc::new(Gated {
        calls: AtomicUsize::new(0),
        dropped_early: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
    });
    let dedup = Arc::new(Dedup::new(worker.clone(), ["m".to_string()]));
    (worker, dedup)
}

async fn text(stream: TokenStream) -> String {
    stream
        .map(|item| match item.unwrap() {
            WorkerChunk::Token(t) => t,
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .await
        .concat()
}

#[tokio::test]
async fn identical_concurrent_calls_share_one_upstream_call() {
    let (worker, dedup) = setup();
    // One token out, the rest held: the call is in flight while ten callers arrive.
    worker.gate.add_permits(1);
    let mut readers = Vec::new();
    for _ in 0..10 {
        readers.push(dedup.infer_stream(call(Some(0.0), "m")).await.unwrap());
    }
    worker.gate.add_permits(2);
    for reader in readers {
        assert_eq!(text(reader).await, "t0 t1 t2 ");
    }
    assert_eq!(worker.calls.load(Ordering::SeqCst), 1);
    // The call has ended: the next identical request starts a new one.
    worker.gate.add_permits(3);
    text(dedup.infer_stream(call(Some(0.0), "m")).await.unwrap()).await;
    assert_eq!(worker.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_late_joiner_gets_the_tokens_so_far_then_the_live_ones() {
    let (worker, dedup) = setup();
    worker.gate.add_permits(2);
    let mut first = dedup.infer_stream(call(Some(0.0), "m")).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(first.next().await.unwrap().unwrap());
    }
    let late = dedup.infer_stream(call(Some(0.0), "m")).await.unwrap();
    worker.gate.add_permits(1);
    assert_eq!(text(late).await, "t0 t1 t2 ");
    assert_eq!(worker.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_call_runs_while_anyone_reads_and_stops_when_the_last_reader_leaves() {
    let (worker, dedup) = setup();
    worker.gate.add_permits(1);
    let mut a = dedup.infer_stream(call(Some(0.0), "m")).await.unwrap();
    let b = dedup.infer_stream(call(Some(0.0), "m")).await.unwrap();
    drop(b);
    assert!(a.next().await.is_none_or(|t| t.is_ok()));
    assert_eq!(worker.dropped_early.load(Ordering::SeqCst), 0, "a still reads");
    drop(a);
    for _ in 0..100 {
        if worker.dropped_early.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the upstream call was not cancelled after the last reader left");
}

#[tokio::test]
async fn only_deterministic_or_opted_in_calls_of_sharing_models_are_shared() {
    let (worker, dedup) = setup();
    worker.gate.add_permits(100);
    for c in [call(None, "m"), call(Some(0.7), "m"), call(Some(0.0), "other")] {
        let (x, y) = tokio::join!(dedup.infer_stream(c.clone()), dedup.infer_stream(c));
        text(x.unwrap()).await;
        text(y.unwrap()).await;
    }
    assert_eq!(worker.calls.load(Ordering::SeqCst), 6, "nothing shared");

    let mut opted = call(Some(0.7), "m");
    let mut request = (*opted.request).clone();
    request.meta.insert("dedup".into(), "on".into());
    opted.request = Arc::new(request);
    let (x, y) = tokio::join!(dedup.infer_stream(opted.clone()), dedup.infer_stream(opted));
    assert_eq!(text(x.unwrap()).await, text(y.unwrap()).await);
    assert_eq!(
        worker.calls.load(Ordering::SeqCst),
        7,
        "the opted-in pair shared one call"
    );
}

#[tokio::test]
async fn a_failure_before_output_reaches_every_caller() {
    struct Fails;
    #[async_trait]
    impl ModelWorker for Fails {
        async fn infer(&self, _: &str) -> Result<Vec<String>, WorkerError> {
            Ok(Vec::new())
        }
        async fn infer_stream(&self, _: InferenceCall) -> Result<TokenStream, WorkerError> {
            tokio::task::yield_now().await;
            Err(WorkerError::retryable("up: answered 503").with_status(503))
        }
    }
    let dedup = Dedup::new(Arc::new(Fails), ["m".to_string()]);
    let (x, y) = tokio::join!(
        dedup.infer_stream(call(Some(0.0), "m")),
        dedup.infer_stream(call(Some(0.0), "m"))
    );
    for result in [x, y] {
        let error = result.err().unwrap();
        assert_eq!(
            (error.message.as_str(), error.status),
            ("up: answered 503", Some(503))
        );
    }
}
