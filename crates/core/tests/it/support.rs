//! Test workers and helpers shared by the integration tests.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream;
use tokio::sync::{Semaphore, watch};
use tokio_prompt_orchestrator::{
    InferenceCall, InferenceRequest, ModelWorker, PipelineConfig, PromptOutput, PromptRequest, RequestSender,
    SessionId, Stage, TokenStream, WhenFull, WorkerChunk, WorkerError,
};

pub fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("non-zero")
}

/// A config with every queue at `capacity`, every stage at `concurrency`, `shards` shards, and
/// no default deadline (tests that stall the pipeline under paused time set their own).
pub fn small_config(shards: usize, capacity: usize, concurrency: usize) -> PipelineConfig {
    let mut config = PipelineConfig::default().with_shards(nz(shards));
    config.default_timeout_ms = None;
    for stage in Stage::ALL {
        let when_full = config.stage(stage).queue.when_full;
        config = config
            .with_queue(stage, nz(capacity), when_full)
            .with_concurrency(stage, nz(concurrency));
    }
    config
}

/// Same, but the input blocks instead of shedding (for tests that must not lose a request).
pub fn blocking_config(shards: usize, capacity: usize, concurrency: usize) -> PipelineConfig {
    small_config(shards, capacity, concurrency).with_queue(Stage::Rag, nz(capacity), WhenFull::Block)
}

/// A counter tests can wait on without sleeping.
#[derive(Clone)]
pub struct Count(Arc<watch::Sender<usize>>);

impl Default for Count {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Count {
    pub fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    pub fn get(&self) -> usize {
        *self.0.borrow()
    }

    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.0.subscribe();
        rx.wait_for(|v| *v >= n).await.expect("sender lives in self");
    }
}

/// What a `ProbeWorker` saw.
#[derive(Default)]
pub struct Probe {
    /// (session, prompt) of every call, in the order the calls began.
    pub calls: Mutex<Vec<(String, String)>>,
    pub started: Count,
    /// Calls dropped before their stream ended, and whose cancellation token was cancelled.
    pub cancelled: Count,
    pub finished: Count,
}

impl Probe {
    pub fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().expect("not poisoned").clone()
    }
}

/// Echoes its prompt word by word, recording what happens to each call.
///
/// - `gate`: before each token after the first `free_tokens`, a permit is taken (and kept), so a
///   test decides when tokens flow.
/// - `token_delay`: sleep before each token (use with paused time).
/// - A prompt starting with `fail` fails before the first token; `cut` fails after one token.
pub struct ProbeWorker {
    pub probe: Arc<Probe>,
    pub gate: Option<Arc<Semaphore>>,
    pub free_tokens: usize,
    pub token_delay: Option<Duration>,
}

impl ProbeWorker {
    pub fn new() -> Self {
        Self {
            probe: Arc::default(),
            gate: None,
            free_tokens: 0,
            token_delay: None,
        }
    }

    /// A worker whose tokens wait for permits on the returned semaphore (none at first).
    pub fn gated(free_tokens: usize) -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let worker = Self {
            gate: Some(gate.clone()),
            free_tokens,
            ..Self::new()
        };
        (worker, gate)
    }

    pub fn with_delay(delay: Duration) -> Self {
        Self {
            token_delay: Some(delay),
            ..Self::new()
        }
    }
}

/// Counts a call as cancelled if it is dropped before its stream ends.
struct CallGuard {
    probe: Arc<Probe>,
    call: InferenceCall,
    done: bool,
}

impl CallGuard {
    /// The stream ended normally.
    fn complete(mut self) {
        self.done = true;
        drop(self);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.done {
            self.probe.finished.bump();
        } else if self.call.cancel.is_cancelled() {
            self.probe.cancelled.bump();
        }
    }
}

#[async_trait]
impl ModelWorker for ProbeWorker {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        Ok(prompt.split_inclusive(' ').map(str::to_string).collect())
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let prompt = call.prompt.to_string();
        self.probe
            .calls
            .lock()
            .expect("not poisoned")
            .push((call.request.session.to_string(), prompt.clone()));
        self.probe.started.bump();
        if prompt.starts_with("fail") {
            return Err(WorkerError::retryable("upstream said no"));
        }
        let guard = CallGuard {
            probe: self.probe.clone(),
            call,
            done: false,
        };
        let tokens: Vec<String> = prompt.split_inclusive(' ').map(str::to_string).collect();
        let cut = prompt.starts_with("cut");
        let (gate, free, delay) = (self.gate.clone(), self.free_tokens, self.token_delay);
        let state = (guard, tokens.into_iter().enumerate());
        Ok(stream::unfold(state, move |(mut guard, mut tokens)| {
            let gate = gate.clone();
            async move {
                let Some((i, token)) = tokens.next() else {
                    guard.complete();
                    return None;
                };
                if cut && i == 1 {
                    guard.done = true;
                    return Some((
                        Err(WorkerError::new("connection reset mid-stream")),
                        (guard, tokens),
                    ));
                }
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                if let Some(gate) = gate.filter(|_| i >= free) {
                    gate.acquire().await.expect("gate open").forget();
                }
                Some((Ok(WorkerChunk::Token(token)), (guard, tokens)))
            }
        })
        .boxed())
    }
}

/// A streaming chat request for `session` saying `text`.
pub fn chat(session: &str, text: &str) -> InferenceRequest {
    InferenceRequest::chat(
        SessionId::new(session),
        vec![tokio_prompt_orchestrator::ChatMessage::user(text)],
    )
}

/// Collects `n` outputs from the output stream.
pub async fn outputs(rx: &mut tokio::sync::mpsc::Receiver<PromptOutput>, n: usize) -> Vec<PromptOutput> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match rx.recv().await {
            Some(o) => out.push(o),
            None => break,
        }
    }
    out
}

/// Sends `per_session` requests for each of `sessions` sessions (`session-<s>`), interleaved:
/// request `i` says `n<i>` followed by a filler whose length varies with `i` and `s`, so later
/// requests often finish first unless order is kept.
pub async fn send_numbered(sender: RequestSender, sessions: usize, per_session: usize) {
    for i in 0..per_session {
        for s in 0..sessions {
            let filler = " x".repeat((s * 7 + i * 3) % 11);
            let request = PromptRequest {
                session: SessionId::new(format!("session-{s}")),
                input: format!("n{i}{filler}"),
                meta: Default::default(),
            };
            sender.send(request).await.expect("admitted");
        }
    }
}

/// The `<i>` of a text `send_numbered` made (or its echo).
pub fn sequence(text: &str) -> usize {
    text.split(' ')
        .next()
        .and_then(|w| w[1..].parse().ok())
        .expect("n<i> prefix")
}
