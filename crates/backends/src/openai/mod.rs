//! The OpenAI-compatible backend: OpenAI, vLLM, SGLang, Ollama, llama.cpp's `/v1`, TGI.
//!
//! Streaming callers get an upstream SSE stream relayed token by token; others get one
//! non-streamed upstream answer (cheaper for both sides). Connections are pooled and kept alive
//! (HTTP/2 where the server offers it over TLS). Dropping the token stream drops the upstream
//! response, which closes its connection: the upstream sees the cancellation.

mod body;
mod config;
mod stream;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use reqwest::Url;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceCall, InferenceRequest, ModelWorker, RequestId, SessionId, TokenStream,
    WorkerChunk, WorkerError,
};
use tokio_util::sync::CancellationToken;

pub use self::body::{Endpoint, request_body};
pub use self::config::OpenAiConfig;
pub use crate::http::BuildError;
use crate::http::HttpBackend;
use crate::sse;
pub use crate::timeouts::{TimeoutConfig, Timeouts};

/// A worker calling one OpenAI-compatible server.
pub struct OpenAiWorker {
    http: HttpBackend,
    model: Option<String>,
    /// `{base_url}/chat/completions` and `{base_url}/completions`, parsed once.
    chat_url: Url,
    completions_url: Url,
}

impl OpenAiWorker {
    /// A worker for `config`, reading its API key from the environment now.
    ///
    /// # Errors
    /// When the key's variable is unset, a header is invalid, the base URL is not a URL, or the
    /// HTTP client cannot start.
    pub fn new(config: &OpenAiConfig) -> Result<Self, BuildError> {
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
            http,
            model: config.model.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.http.name
    }
}

#[async_trait]
impl ModelWorker for OpenAiWorker {
    /// The prompt as one user message, answered whole.
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        let request =
            InferenceRequest::chat(SessionId::new(""), vec![ChatMessage::user(prompt)]).with_stream(false);
        let call = InferenceCall {
            id: RequestId(0),
            request: Arc::new(request),
            prompt: Arc::from(prompt),
            cancel: CancellationToken::new(),
        };
        let mut tokens = Vec::new();
        let mut stream = self.infer_stream(call).await?;
        while let Some(chunk) = stream.next().await {
            if let WorkerChunk::Token(t) = chunk? {
                tokens.push(t);
            }
        }
        Ok(tokens)
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let deadline = self.http.deadline();
        let model = self.model.as_deref().unwrap_or(&call.request.model);
        let streamed = call.request.stream;
        let body = request_body(&call, model, streamed);
        let url = match Endpoint::of(&call) {
            Endpoint::Chat => &self.chat_url,
            Endpoint::Completions => &self.completions_url,
        };
        let response = self.http.post(url, &body, deadline).await?;
        if streamed {
            let dialect = stream::OpenAiDialect;
            return Ok(sse::relay(
                response,
                dialect,
                self.http.name.clone(),
                self.http.timeouts,
                deadline,
            ));
        }
        let body = self.http.read_all(response, deadline).await?;
        stream::answer_stream(&self.http.name, &body)
    }
}
