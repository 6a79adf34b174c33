//! The `ModelWorker` extension point: what the Inference stage calls to produce tokens.
//!
//! A worker implements the original one-shot `infer`, and may override `infer_stream`, which gets
//! the whole request (model, messages, parameters, session, cancellation) and streams tokens. A
//! router that picks a backend per request is itself a `ModelWorker`.

mod echo;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use echo::EchoWorker;
pub(crate) use echo::count_tokens;

use crate::error::WorkerError;
use crate::event::{FinishReason, Passthrough, Usage};
use crate::request::{ChatMessage, InferenceRequest, PromptInput, RequestId};
use crate::trace::TraceParent;

/// One item of a worker's token stream.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WorkerChunk {
    /// Generated text.
    Token(String),
    /// What the upstream answered besides text (tool calls, logprobs, ...), for the caller.
    Passthrough(Box<Passthrough>),
    /// Generation ended; optional, a stream that simply ends finished with `Stop`.
    Finish {
        reason: FinishReason,
        usage: Option<Usage>,
    },
}

/// Tokens as the worker produces them. Dropping the stream must stop the upstream work.
pub type TokenStream = BoxStream<'static, Result<WorkerChunk, WorkerError>>;

/// Everything a worker needs for one model call.
#[derive(Clone, Debug)]
pub struct InferenceCall {
    pub id: RequestId,
    /// The caller's request as submitted.
    pub request: Arc<InferenceRequest>,
    /// The prompt as the Assemble stage rendered it (for completion-style backends and `infer`).
    pub prompt: Arc<str>,
    /// Whether a configured `prompt` template rendered `prompt` ([`Assembled::prompt_templated`]):
    /// a backend that would otherwise send the chat messages for its server to format with the
    /// model's own template sends `prompt` instead.
    ///
    /// [`Assembled::prompt_templated`]: crate::Assembled::prompt_templated
    pub prompt_templated: bool,
    /// The chat messages as the Assemble stage built them; `None`: the request's own.
    pub messages: Option<Arc<[ChatMessage]>>,
    /// Shared by calls whose prompts start with the same system prompt, tools and documents.
    pub prefix_key: Option<u64>,
    /// Cancelled when the caller goes away, the deadline passes, or the pipeline aborts at its
    /// shutdown deadline. The pipeline also drops the worker's future and stream then.
    pub cancel: CancellationToken,
    /// When the request's deadline passes, if it has one; a router shares the time left among
    /// its attempts, so a fallback is tried before the request runs out of time.
    pub deadline: Option<Instant>,
    /// The W3C trace context of this call, when the request is traced: a router sets it for
    /// each attempt, whose span the upstream's work then hangs under.
    pub traceparent: Option<TraceParent>,
}

impl InferenceCall {
    /// A call for `request` as it was submitted, not assembled: `prompt` as its text (not from a
    /// template), the request's own messages, no prefix key, and a cancellation token of its own.
    /// For calling a worker outside the pipeline (a worker's own `infer`, tests).
    pub fn new(id: RequestId, request: InferenceRequest, prompt: &str) -> Self {
        Self {
            id,
            request: Arc::new(request),
            prompt: Arc::from(prompt),
            prompt_templated: false,
            messages: None,
            prefix_key: None,
            cancel: CancellationToken::new(),
            deadline: None,
            traceparent: None,
        }
    }

    /// The `traceparent` to send upstream: this attempt's when the request is traced, else the
    /// client's own, passed on unchanged.
    pub fn traceparent(&self) -> Option<String> {
        match self.traceparent {
            Some(parent) => Some(parent.to_string()),
            None => self.request.meta.get("traceparent").cloned(),
        }
    }

    /// The messages to send a chat backend: the assembled ones, else the request's own; `None`
    /// for a completion request that was not assembled into messages.
    pub fn chat_messages(&self) -> Option<&[ChatMessage]> {
        match (&self.messages, &self.request.input) {
            (Some(messages), _) => Some(messages),
            (None, PromptInput::Chat(messages)) => Some(messages),
            (None, PromptInput::Text(_) | PromptInput::Embed(_)) => None,
        }
    }
}

/// A model backend.
#[async_trait]
pub trait ModelWorker: Send + Sync + 'static {
    /// Runs the model on `prompt` and returns every token at once.
    ///
    /// # Errors
    /// A [`WorkerError`] saying what failed and whether a retry may help.
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError>;

    /// Streams the tokens for one call as they are produced.
    ///
    /// The default runs [`infer`](Self::infer) on the rendered prompt and streams its tokens;
    /// workers that can stream override it.
    ///
    /// # Errors
    /// Fails before the first token with a [`WorkerError`]; later failures are stream items.
    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let tokens = self.infer(&call.prompt).await?;
        Ok(stream::iter(tokens.into_iter().map(|t| Ok(WorkerChunk::Token(t)))).boxed())
    }

    /// Where the upstream is (`host:port`), for a trace's `server.address`; `None` when the
    /// worker has no one address.
    fn address(&self) -> Option<String> {
        None
    }
}
