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
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceCall, InferenceRequest, ModelWorker, RequestId, SessionId, TokenStream,
    WorkerChunk, WorkerError,
};
use tokio_util::sync::CancellationToken;

pub use self::body::{Endpoint, request_body};
pub use self::config::{OpenAiConfig, TimeoutConfig, Timeouts};

/// Longest error body read from an upstream: enough for any message, bounded against floods.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// A worker calling one OpenAI-compatible server.
pub struct OpenAiWorker {
    name: Arc<str>,
    base_url: String,
    model: Option<String>,
    client: reqwest::Client,
    timeouts: Timeouts,
}

/// Why a backend could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

impl OpenAiWorker {
    /// A worker for `config`, reading its API key from the environment now.
    ///
    /// # Errors
    /// When the key's variable is unset, a header is invalid, or the HTTP client cannot start.
    pub fn new(config: &OpenAiConfig) -> Result<Self, BuildError> {
        let mut headers = HeaderMap::new();
        if let Some(var) = &config.api_key_env {
            let key = std::env::var(var)
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| BuildError(format!("the environment variable {var} is not set or empty")))?;
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| BuildError(format!("the key in {var} is not a valid header value")))?;
            // Keeps the key out of debug output.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        for (name, value) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| BuildError(format!("headers: {name:?} is not a valid header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| BuildError(format!("headers.{name}: not a valid header value")))?;
            headers.insert(header, value);
        }
        let timeouts = Timeouts::from(config.timeouts);
        let mut client = reqwest::Client::builder()
            .default_headers(headers)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024);
        if let Some(connect) = timeouts.connect {
            client = client.connect_timeout(connect);
        }
        let client = client
            .build()
            .map_err(|e| BuildError(format!("cannot start the HTTP client: {e}")))?;
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            base_url: config.base_url.trim_end_matches('/').to_string(),
            model: config.model.clone(),
            client,
            timeouts,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends the call and waits for the response head (within the first-token and total limits).
    async fn send(
        &self,
        call: &InferenceCall,
        stream: bool,
        deadline: Option<Instant>,
    ) -> Result<reqwest::Response, WorkerError> {
        let endpoint = Endpoint::of(call);
        let model = self.model.as_deref().unwrap_or(&call.request.model);
        let body = request_body(call, model, stream);
        let request = self
            .client
            .post(format!("{}{}", self.base_url, endpoint.path()))
            .json(&body)
            .send();
        let limit = stream::earliest(self.timeouts.first_token.map(|t| Instant::now() + t), deadline);
        let response = match limit {
            Some(at) => tokio::time::timeout_at(at, request)
                .await
                .map_err(|_| self.error("no answer within the first-token timeout", true, None))?,
            None => request.await,
        }
        .map_err(|e| self.error(&format!("request failed: {}", error_chain(&e)), true, None))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // Seconds only: the HTTP-date form is rare from model servers.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let body = read_capped(response).await;
        let retryable = status.as_u16() == 429 || status.is_server_error();
        let mut error = self.error(
            &format!("answered {}: {}", status.as_u16(), stream::error_message(&body)),
            retryable,
            Some(status.as_u16()),
        );
        error.retry_after = retry_after;
        Err(error)
    }

    fn error(&self, message: &str, retryable: bool, status: Option<u16>) -> WorkerError {
        WorkerError {
            retryable,
            status,
            ..WorkerError::new(format!("{}: {message}", self.name))
        }
    }
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of an error response.
async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    body
}

/// An error with its causes: reqwest's own message alone rarely says what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            if let WorkerChunk::Token(t) = chunk? {
                tokens.push(t);
            }
        }
        Ok(tokens)
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let deadline = self.timeouts.total.map(|t| Instant::now() + t);
        if !call.request.stream {
            let response = self.send(&call, false, deadline).await?;
            let read = response.bytes();
            let body = match deadline {
                Some(at) => tokio::time::timeout_at(at, read)
                    .await
                    .map_err(|_| self.error("the call took longer than its total timeout", true, None))?,
                None => read.await,
            }
            .map_err(|e| {
                self.error(
                    &format!("reading the answer failed: {}", error_chain(&e)),
                    true,
                    None,
                )
            })?;
            return stream::answer_stream(&self.name, &body);
        }
        let response = self.send(&call, true, deadline).await?;
        Ok(stream::sse_stream(
            response,
            self.name.clone(),
            self.timeouts,
            deadline,
        ))
    }
}
