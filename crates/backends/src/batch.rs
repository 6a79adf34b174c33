//! An embedding request's inputs in upstream batches. A long list is split into batches of its
//! model's `batch_size`, each routed as a call of its own (so one request's batches may run on
//! several replicas at once), and the vectors are joined in input order. An input already being
//! embedded for a request in flight is not sent again: it waits for that batch, as does an input
//! repeated within one request.
//!
//! Calls that embed nothing, and those of models without a batch size, go straight to the inner
//! worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use futures_util::future::{BoxFuture, Shared, WeakShared, try_join_all};
use futures_util::{FutureExt, StreamExt, stream};
use metrics::counter;
use tokio_prompt_orchestrator::{
    EmbedInput, FinishReason, InferenceCall, InferenceRequest, ModelWorker, Passthrough, PromptInput,
    SessionId, TokenStream, Usage, WorkerChunk, WorkerError,
};
use tokio_util::sync::CancellationToken;

/// Upstream embedding calls made (counter).
pub const EMBEDDING_BATCHES: &str = "orchestrator_embedding_batches_total";
/// Inputs embedded by a call another request had started (counter).
pub const EMBEDDING_INPUTS_SHARED: &str = "orchestrator_embedding_inputs_shared_total";

/// One batch's upstream call, and the same shared by every request with an input in it.
type Call = BoxFuture<'static, Result<Arc<Embedded>, WorkerError>>;
type Batch = Shared<Call>;

struct Embedded {
    vectors: Arc<[Vec<f32>]>,
    prompt_tokens: u32,
}

/// What makes two inputs the same: the model, the fields passed on (`dimensions`), the input.
#[derive(Clone, PartialEq, Eq, Hash)]
struct InputKey {
    model: String,
    extra: String,
    input: EmbedInput,
}

/// An input being embedded: its batch (by id, to tell it from a later one) and its place in it.
struct Flying {
    batch: u64,
    at: usize,
    call: WeakShared<Call>,
}

type Flights = Mutex<HashMap<InputKey, Flying>>;

pub struct Batcher {
    inner: Arc<dyn ModelWorker>,
    /// Inputs per upstream call, by model.
    sizes: HashMap<String, usize, foldhash::fast::RandomState>,
    flights: Arc<Flights>,
    next_batch: AtomicU64,
}

impl Batcher {
    /// Batches the embedding requests of the models in `sizes` (model, inputs per call) for
    /// `inner`.
    pub fn new(inner: Arc<dyn ModelWorker>, sizes: impl IntoIterator<Item = (String, usize)>) -> Self {
        Self {
            inner,
            sizes: sizes.into_iter().collect(),
            flights: Arc::default(),
            next_batch: AtomicU64::new(0),
        }
    }

    /// The batches `inputs` need, and where each input's vector is in them (batch, position):
    /// inputs in flight join their batch, the others are split into new ones of `size`.
    fn plan(
        &self,
        call: &InferenceCall,
        inputs: &[EmbedInput],
        size: usize,
    ) -> (Vec<Batch>, Vec<(usize, usize)>) {
        let model = &call.request.model;
        let extra = serde_json::to_string(&call.request.extra).unwrap_or_default();
        let key = |input: &EmbedInput| InputKey {
            model: model.clone(),
            extra: extra.clone(),
            input: input.clone(),
        };
        let mut batches: Vec<(u64, Batch)> = Vec::new();
        let mut places = vec![None; inputs.len()];
        // Inputs repeated within this request, and their first occurrence.
        let mut repeats = Vec::new();
        let mut first_seen: HashMap<&EmbedInput, usize> = HashMap::new();
        let mut pending = Vec::new();
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, input) in inputs.iter().enumerate() {
            let flying = flights
                .get(&key(input))
                .and_then(|f| Some((f.batch, f.at, f.call.upgrade()?)));
            if let Some((id, at, batch)) = flying {
                counter!(EMBEDDING_INPUTS_SHARED).increment(1);
                let slot = batches.iter().position(|(b, _)| *b == id).unwrap_or_else(|| {
                    batches.push((id, batch));
                    batches.len() - 1
                });
                places[i] = Some((slot, at));
            } else if let Some(&first) = first_seen.get(input) {
                repeats.push((i, first));
            } else {
                first_seen.insert(input, i);
                pending.push(i);
            }
        }
        for chunk in pending.chunks(size) {
            let id = self.next_batch.fetch_add(1, Ordering::Relaxed);
            let keys: Vec<InputKey> = chunk.iter().map(|&i| key(&inputs[i])).collect();
            let batch = self.start(
                call,
                chunk.iter().map(|&i| inputs[i].clone()).collect(),
                id,
                keys.clone(),
            );
            if let Some(weak) = batch.downgrade() {
                for (at, key) in keys.into_iter().enumerate() {
                    let flying = Flying {
                        batch: id,
                        at,
                        call: weak.clone(),
                    };
                    flights.insert(key, flying);
                }
            }
            batches.push((id, batch));
            for (at, &i) in chunk.iter().enumerate() {
                places[i] = Some((batches.len() - 1, at));
            }
        }
        for (i, first) in repeats {
            places[i] = places[first];
        }
        // Every input is placed: in a batch in flight, in a new one, or as its first occurrence.
        let places = places.into_iter().flatten().collect();
        (batches.into_iter().map(|(_, b)| b).collect(), places)
    }

    /// A batch of `inputs`, called when first polled, with a cancellation of its own: it runs
    /// while any request waits for it, and leaves `flights` when it ends or is dropped.
    fn start(&self, call: &InferenceCall, inputs: Vec<EmbedInput>, id: u64, keys: Vec<InputKey>) -> Batch {
        let count = inputs.len();
        let mut request: InferenceRequest = (*call.request).clone();
        request.input = PromptInput::Embed(inputs);
        // Each batch is routed on its own: a long list spreads over the replicas.
        request.session = SessionId::new(format!("embed:{id}"));
        let sub = InferenceCall {
            request: Arc::new(request),
            cancel: CancellationToken::new(),
            // Each waiting request keeps its own deadline (the pipeline drops it then); the batch
            // runs while any request still waits, not until the first one's deadline.
            deadline: None,
            ..call.clone()
        };
        let inner = self.inner.clone();
        let leave = Leave {
            flights: self.flights.clone(),
            id,
            keys,
        };
        async move {
            let _leave = leave;
            // Dropped by its last waiter: the upstream call is cancelled.
            let _cancel = sub.cancel.clone().drop_guard();
            counter!(EMBEDDING_BATCHES).increment(1);
            let mut stream = inner.infer_stream(sub).await?;
            let (mut vectors, mut prompt_tokens) = (None, 0);
            while let Some(chunk) = stream.next().await {
                match chunk? {
                    WorkerChunk::Passthrough(extra) => vectors = extra.embeddings,
                    WorkerChunk::Finish { usage, .. } => prompt_tokens = usage.map_or(0, |u| u.prompt_tokens),
                    _ => {}
                }
            }
            let vectors = vectors.filter(|v| v.len() == count).ok_or_else(|| {
                WorkerError::new(format!("the backend answered no vectors for {count} inputs"))
            })?;
            Ok(Arc::new(Embedded {
                vectors,
                prompt_tokens,
            }))
        }
        .boxed()
        .shared()
    }
}

/// Takes a batch's inputs out of the flights when it ends or is dropped (unless a later batch
/// has taken their place).
struct Leave {
    flights: Arc<Flights>,
    id: u64,
    keys: Vec<InputKey>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            if flights.get(key).is_some_and(|f| f.batch == self.id) {
                flights.remove(key);
            }
        }
    }
}

#[async_trait]
impl ModelWorker for Batcher {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        self.inner.infer(prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let size = match (&call.request.input, self.sizes.get(&call.request.model)) {
            (PromptInput::Embed(_), Some(&size)) => size,
            _ => return self.inner.infer_stream(call).await,
        };
        let PromptInput::Embed(inputs) = &call.request.input else {
            unreachable!("matched above");
        };
        let (batches, places) = self.plan(&call, inputs, size);
        let embedded = try_join_all(batches).await?;
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(places.len());
        // Each batch's tokens, shared evenly among its inputs.
        let mut tokens = 0.0;
        for &(batch, at) in &places {
            let batch = &embedded[batch];
            vectors.push(batch.vectors[at].clone());
            tokens += f64::from(batch.prompt_tokens) / batch.vectors.len() as f64;
        }
        let chunks = [
            WorkerChunk::Passthrough(Box::new(Passthrough::embeddings(vectors))),
            WorkerChunk::Finish {
                reason: FinishReason::Stop,
                usage: Some(Usage::new(tokens.round() as u32, 0)),
            },
        ];
        Ok(stream::iter(chunks.map(Ok)).boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures_util::poll;
    use tokio::sync::Semaphore;
    use tokio_prompt_orchestrator::RequestId;

    use super::*;

    /// Embeds each input as its length, once a permit is given; records every call it gets.
    struct Held {
        calls: AtomicUsize,
        cancels: Mutex<Vec<CancellationToken>>,
        release: Semaphore,
    }

    impl Held {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                calls: AtomicUsize::new(0),
                cancels: Mutex::default(),
                release: Semaphore::new(0),
            })
        }
    }

    #[async_trait]
    impl ModelWorker for Held {
        async fn infer(&self, _prompt: &str) -> Result<Vec<String>, WorkerError> {
            Ok(Vec::new())
        }

        async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.cancels.lock().unwrap().push(call.cancel.clone());
            let _permit = self.release.acquire().await.unwrap();
            let PromptInput::Embed(inputs) = &call.request.input else {
                unreachable!("only embedding calls here");
            };
            let vectors: Vec<Vec<f32>> = inputs
                .iter()
                .map(|i| match i {
                    EmbedInput::Text(text) => vec![text.len() as f32],
                    EmbedInput::Tokens(ids) => vec![ids.len() as f32],
                })
                .collect();
            let chunk = WorkerChunk::Passthrough(Box::new(Passthrough::embeddings(vectors)));
            Ok(stream::iter([Ok(chunk)]).boxed())
        }
    }

    fn call(inputs: &[&str]) -> InferenceCall {
        let mut request = InferenceRequest::chat(SessionId::new("s"), Vec::new()).with_model("m");
        request.input = PromptInput::Embed(inputs.iter().map(|t| EmbedInput::Text((*t).into())).collect());
        InferenceCall::new(RequestId(1), request, "")
    }

    async fn vectors(stream: TokenStream) -> Vec<Vec<f32>> {
        let chunks: Vec<_> = stream.collect().await;
        chunks
            .into_iter()
            .find_map(|c| match c {
                Ok(WorkerChunk::Passthrough(p)) => p.embeddings.map(|v| v.to_vec()),
                _ => None,
            })
            .expect("the vectors")
    }

    #[tokio::test]
    async fn a_request_that_leaves_does_not_cancel_the_batch_another_waits_for() {
        let held = Held::new();
        let batcher = Arc::new(Batcher::new(held.clone(), [("m".to_owned(), 8)]));
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.infer_stream(call(&["one", "three"])).await.map(drop) }
        });
        while held.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Its first poll joins the batch in flight (and adds `fourteen` in a batch of its own).
        let mut second = Box::pin(batcher.infer_stream(call(&["three", "fourteen", "one"])));
        assert!(poll!(&mut second).is_pending());
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert!(
            !held.cancels.lock().unwrap()[0].is_cancelled(),
            "the shared batch goes on"
        );
        held.release.add_permits(2);
        let stream = second.await.expect("the second request is answered");
        assert_eq!(vectors(stream).await, [vec![5.0], vec![8.0], vec![3.0]]);
        // One call for the inputs both requests had, one for the new one.
        assert_eq!(held.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_last_request_leaving_cancels_its_batch() {
        let held = Held::new();
        let batcher = Arc::new(Batcher::new(held.clone(), [("m".to_owned(), 8)]));
        let only = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.infer_stream(call(&["alone"])).await.map(drop) }
        });
        while held.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        only.abort();
        let _ = only.await;
        assert!(held.cancels.lock().unwrap()[0].is_cancelled());
        // Nothing is left in flight: the same input is sent again.
        held.release.add_permits(1);
        let stream = batcher.infer_stream(call(&["alone"])).await.unwrap();
        assert_eq!(vectors(stream).await, [vec![5.0]]);
        assert_eq!(held.calls.load(Ordering::SeqCst), 2);
    }
}
