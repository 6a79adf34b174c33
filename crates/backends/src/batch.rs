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
    TokenStream, Usage, WorkerChunk, WorkerError,
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

/// Inputs being embedded: their batch (by id, to tell it from a later one) and place in it.
type Flights = Mutex<HashMap<InputKey, (u64, usize, WeakShared<Call>)>>;

pub struct Batcher {
    inner: Arc<dyn ModelWorker>,
    /// Inputs per upstream call, by model.
    sizes: HashMap<String, usize, foldhash::fast::RandomState>,
    flights: Arc<Flights>,
    next_batch: AtomicU64,
}

/// Where one input's vector comes from.
#[derive(Clone, Copy)]
enum Place {
    /// Position `1` of batch `0` (an index into the request's batches).
    In(usize, usize),
    /// The same as input `0` of this request.
    Same(usize),
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

    /// The batches `inputs` need, and where each input's vector is in them: inputs in flight
    /// join their batch, the others are split into new ones of `size`.
    fn plan(&self, call: &InferenceCall, inputs: &[EmbedInput], size: usize) -> (Vec<Batch>, Vec<Place>) {
        let model = &call.request.model;
        let extra = serde_json::to_string(&call.request.extra).unwrap_or_default();
        let key = |input: &EmbedInput| InputKey {
            model: model.clone(),
            extra: extra.clone(),
            input: input.clone(),
        };
        let mut batches: Vec<(u64, Batch)> = Vec::new();
        let mut places = Vec::with_capacity(inputs.len());
        let mut first_seen: HashMap<&EmbedInput, usize> = HashMap::new();
        let mut pending = Vec::new();
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, input) in inputs.iter().enumerate() {
            let flying = flights
                .get(&key(input))
                .and_then(|(id, at, weak)| Some((*id, *at, weak.upgrade()?)));
            if let Some((id, at, batch)) = flying {
                counter!(EMBEDDING_INPUTS_SHARED).increment(1);
                let slot = match batches.iter().position(|(b, _)| *b == id) {
                    Some(slot) => slot,
                    None => {
                        batches.push((id, batch));
                        batches.len() - 1
                    }
                };
                places.push(Place::In(slot, at));
            } else if let Some(&first) = first_seen.get(input) {
                places.push(Place::Same(first));
            } else {
                first_seen.insert(input, i);
                // Its place is set once its batch is made, below.
                places.push(Place::Same(i));
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
                    flights.insert(key, (id, at, weak.clone()));
                }
            }
            batches.push((id, batch));
            for (at, &i) in chunk.iter().enumerate() {
                places[i] = Place::In(batches.len() - 1, at);
            }
        }
        (batches.into_iter().map(|(_, b)| b).collect(), places)
    }

    /// A batch of `inputs`, called when first polled, with a cancellation of its own: it runs
    /// while any request waits for it, and leaves `flights` when it ends or is dropped.
    fn start(&self, call: &InferenceCall, inputs: Vec<EmbedInput>, id: u64, keys: Vec<InputKey>) -> Batch {
        let count = inputs.len();
        let mut request: InferenceRequest = (*call.request).clone();
        request.input = PromptInput::Embed(inputs);
        let sub = InferenceCall {
            request: Arc::new(request),
            cancel: CancellationToken::new(),
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
            if flights.get(key).is_some_and(|(id, _, _)| *id == self.id) {
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
        // Each batch's tokens, shared among the inputs that asked for its vectors.
        let mut tokens = 0.0;
        for place in &places {
            let (batch, at) = match *place {
                Place::In(batch, at) => (batch, at),
                Place::Same(first) => match places[first] {
                    Place::In(batch, at) => (batch, at),
                    // A first occurrence always has its batch.
                    Place::Same(_) => unreachable!("a first occurrence is placed in a batch"),
                },
            };
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
