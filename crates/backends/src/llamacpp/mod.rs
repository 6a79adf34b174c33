//! llama.cpp's native API (`kind = "llamacpp"`): `POST /completion` with `cache_prompt: true` and
//! an `id_slot` derived from the session, so one session keeps reusing one slot's KV cache.
//!
//! - `config`: the `[[backends]]` entry ([`LlamaCppConfig`]).
//! - [`native`]: the `/completion` body and answers.

mod config;
pub mod native;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use http::Uri;
use tokio_prompt_orchestrator::shard::shard_for;
use tokio_prompt_orchestrator::{InferenceCall, ModelWorker, TokenStream, WorkerChunk, WorkerError};

pub use self::config::LlamaCppConfig;
pub use self::native::{CompletionBody, request_body};
use crate::http::{BuildError, HttpBackend};
use crate::routing::health::HealthProbe;
use crate::timeouts::Timeouts;

/// How long a health check waits for `/slots` once `/health` has answered.
const SLOTS_WAIT: Duration = Duration::from_millis(500);

pub struct LlamaCppWorker {
    http: HttpBackend,
    /// Slots sessions are spread over: configured, then as `/slots` reports.
    slots: AtomicUsize,
    /// `{base_url}/completion`, parsed once.
    completion_url: Uri,
}

impl LlamaCppWorker {
    /// # Errors
    /// When the key's variable is unset, a header is invalid, the base URL is not a URL, or the
    /// HTTP client cannot start.
    pub fn new(config: &LlamaCppConfig) -> Result<Self, BuildError> {
        if config.slots == 0 {
            return Err(BuildError("slots must be at least 1 (the server's -np)".into()));
        }
        let http = HttpBackend::new(
            &config.name,
            &config.base_url,
            config.api_key_env.as_deref(),
            &config.headers,
            Timeouts::from(config.timeouts),
        )?;
        Ok(Self {
            completion_url: http.url("/completion")?,
            http,
            slots: AtomicUsize::new(config.slots),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.http.name
    }
}

#[async_trait]
impl ModelWorker for LlamaCppWorker {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        let body = self
            .http
            .encode(&serde_json::json!({"prompt": prompt, "n_predict": -1, "cache_prompt": true}))?;
        let deadline = self.http.deadline();
        let mut stream = native::send(&self.http, &self.completion_url, body, deadline, false).await?;
        let mut tokens = Vec::new();
        while let Some(chunk) = stream.next().await {
            if let WorkerChunk::Token(t) = chunk? {
                tokens.push(t);
            }
        }
        Ok(tokens)
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let deadline = self.http.deadline();
        let slot = shard_for(&call.request.session, self.slots.load(Ordering::Relaxed));
        let streamed = call.request.stream;
        let body = self.http.encode(&request_body(&call, slot, streamed))?;
        // The call is not needed past here; its request goes before the wait for the upstream.
        drop(call);
        native::send(&self.http, &self.completion_url, body, deadline, streamed).await
    }
}

#[async_trait]
impl HealthProbe for LlamaCppWorker {
    /// llama-server answers `/health` with 503 while it loads its model. Its `/slots` lists its
    /// parallel slots: their number replaces the configured one, so every session maps onto a
    /// slot that exists (a server started with `--no-slots` refuses, and the count stays).
    async fn probe(&self) -> Result<Option<usize>, String> {
        let base = self.http.base_url();
        self.http.probe(&format!("{base}/health")).await?;
        // The health verdict is in. `/slots` waits for the server's current batch, so it gets a
        // short wait of its own and its failure only leaves the count as it was.
        let slots_url = format!("{base}/slots");
        let listed = tokio::time::timeout(SLOTS_WAIT, self.http.probe(&slots_url))
            .await
            .ok()
            .and_then(Result::ok);
        let count = listed
            .and_then(|body| serde_json::from_str::<Vec<serde::de::IgnoredAny>>(&body).ok())
            .map_or(0, |slots| slots.len());
        if count > 0 {
            let before = self.slots.swap(count, Ordering::Relaxed);
            if before != count {
                tracing::info!(backend = %self.http.name, slots = count, before, "The server's /slots lists another number of slots; sessions now map onto those.");
            }
        }
        Ok(None)
    }
}
