//! The OpenAI-compatible backend: OpenAI, vLLM, SGLang, Ollama, llama.cpp's `/v1`, TGI.
//!
//! Streaming callers get an upstream SSE stream relayed token by token; others get one
//! non-streamed upstream answer (cheaper for both sides). Connections are pooled and kept alive
//! (HTTP/2 where the server offers it over TLS). Dropping the token stream drops the upstream
//! response, which closes its connection: the upstream sees the cancellation.
//!
//! Embedding requests go to `/embeddings` ([`crate::embeddings`]).
//!
//! `kind = "vllm"` is the same protocol with vLLM's extras ([`vllm`]); llama.cpp's backend
//! sends its chat calls through `send` too, with its own extras.

mod body;
mod config;
pub(crate) mod stream;
mod template;
pub mod vllm;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use http::Uri;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceCall, InferenceRequest, ModelWorker, RequestId, SessionId, TokenStream,
    WorkerChunk, WorkerError,
};

pub use self::body::{Endpoint, RequestBody, ServerFields, request_body};
pub use self::config::OpenAiConfig;
/// Not an API: public so that the fuzz targets (`fuzz/`) can feed upstream answers and stream
/// chunks straight to the readers the worker uses.
#[doc(hidden)]
pub use self::stream::{OpenAiDialect, answer_stream};
use crate::embeddings;
pub use crate::http::BuildError;
use crate::http::HttpBackend;
use crate::routing::health::HealthProbe;
use crate::sse;
pub use crate::timeouts::{TimeoutConfig, Timeouts};

/// Which server speaks the protocol, and so which of its own extras it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Any OpenAI-compatible server: only the protocol itself.
    OpenAi,
    /// vLLM: `priority`, `/health` and the queue length from `/metrics`.
    Vllm,
}

/// A worker calling one OpenAI-compatible server.
pub struct OpenAiWorker {
    http: HttpBackend,
    model: Option<String>,
    flavor: Flavor,
    /// `{base_url}/chat/completions`, `/completions` and `/embeddings`, parsed once.
    chat_url: Uri,
    completions_url: Uri,
    embeddings_url: Uri,
}

impl OpenAiWorker {
    /// A worker for `config`, reading its API key from the environment now.
    ///
    /// # Errors
    /// When the key's variable is unset, a header is invalid, the base URL is not a URL, or the
    /// HTTP client cannot start.
    pub fn new(config: &OpenAiConfig) -> Result<Self, BuildError> {
        Self::with_flavor(config, Flavor::OpenAi)
    }

    /// A worker for `config` that speaks to `flavor`'s server.
    ///
    /// # Errors
    /// As [`OpenAiWorker::new`].
    pub fn with_flavor(config: &OpenAiConfig, flavor: Flavor) -> Result<Self, BuildError> {
        let http = HttpBackend::new(
            &config.name,
            &config.base_url,
            config.api_key_env.as_deref(),
            &config.headers,
            Timeouts::from(config.timeouts),
        )?;
        Ok(Self {
            chat_url: http.url(Endpoint::Chat.path())?,
            completions_url: http.url(Endpoint::Completions.path())?,
            embeddings_url: http.url(Endpoint::Embeddings.path())?,
            http,
            model: config.model.clone(),
            flavor,
        })
    }

    pub fn name(&self) -> &str {
        &self.http.name
    }
}

/// Posts an OpenAI request `body` to `url` and reads the answer as a token stream: SSE chunks
/// relayed as they come when `streamed`, else one whole answer. Dropping the stream drops the
/// response, which closes the connection: the server sees the cancellation.
///
/// # Errors
/// As [`HttpBackend::post`] and [`HttpBackend::read_all`]; a whole answer that is not OpenAI JSON
/// (retryable: nothing reached the caller).
pub(crate) async fn send(
    http: &HttpBackend,
    url: &Uri,
    body: Bytes,
    deadline: Option<Instant>,
    streamed: bool,
    traceparent: Option<String>,
) -> Result<TokenStream, WorkerError> {
    let response = http.post(url, body, deadline, streamed, traceparent).await?;
    if streamed {
        let dialect = stream::OpenAiDialect::default();
        return Ok(sse::relay(
            response,
            dialect,
            http.name.clone(),
            http.timeouts,
            deadline,
        ));
    }
    let body = http.read_all(response, deadline).await?;
    stream::answer_stream(&http.name, &body)
}

/// `infer` for a worker whose server takes chat: `prompt` as one user message, answered whole.
pub(crate) async fn infer_as_chat(
    worker: &impl ModelWorker,
    prompt: &str,
) -> Result<Vec<String>, WorkerError> {
    let request =
        InferenceRequest::chat(SessionId::new(""), vec![ChatMessage::user(prompt)]).with_stream(false);
    let call = InferenceCall::new(RequestId(0), request, prompt);
    let mut tokens = Vec::new();
    let mut stream = worker.infer_stream(call).await?;
    while let Some(chunk) = stream.next().await {
        if let WorkerChunk::Token(t) = chunk? {
            tokens.push(t);
        }
    }
    Ok(tokens)
}

#[async_trait]
impl ModelWorker for OpenAiWorker {
    /// The prompt as one user message, answered whole.
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        infer_as_chat(self, prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let deadline = self.http.deadline();
        let model = self.model.as_deref().unwrap_or(&call.request.model);
        let url = match Endpoint::of(&call) {
            Endpoint::Chat => &self.chat_url,
            Endpoint::Completions => &self.completions_url,
            Endpoint::Embeddings => {
                return embeddings::embed(&self.http, &self.embeddings_url, model, &call, deadline).await;
            }
        };
        let streamed = call.request.stream;
        let server = ServerFields {
            priority: match self.flavor {
                Flavor::Vllm => vllm::priority(call.request.priority),
                Flavor::OpenAi => None,
            },
            slot: None,
        };
        let body = self.http.encode(&request_body(&call, model, streamed, server))?;
        let traceparent = call.traceparent();
        // The call is not needed past here; its request goes before the wait for the upstream.
        drop(call);
        send(&self.http, url, body, deadline, streamed, traceparent).await
    }

    fn address(&self) -> Option<String> {
        self.http.address()
    }
}

#[async_trait]
impl HealthProbe for OpenAiWorker {
    /// OpenAI-compatible servers share no health endpoint, but all list their models; vLLM has
    /// `/health`, and its queue length in `/metrics` (optional: a server without it is healthy).
    async fn probe(&self) -> Result<Option<usize>, String> {
        match self.flavor {
            Flavor::OpenAi => {
                let url = format!("{}/models", self.http.base_url());
                self.http.probe(&url).await.map(|_| None)
            }
            Flavor::Vllm => {
                let root = vllm::server_root(self.http.base_url());
                self.http.probe(&format!("{root}/health")).await?;
                let metrics = self.http.probe(&format!("{root}/metrics")).await.ok();
                Ok(metrics.as_deref().and_then(vllm::waiting_requests))
            }
        }
    }
}
