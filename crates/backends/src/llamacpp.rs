//! llama.cpp's native API (`kind = "llamacpp"`): `POST /completion` with `cache_prompt: true` and
//! an `id_slot` derived from the session, so one session keeps reusing one slot's KV cache.
//!
//! It sends the prompt as the Assemble stage rendered it; llama-server applies no chat template
//! on this endpoint (use `kind = "openai"` against its `/v1` for that). Fields of the client's
//! request meant for OpenAI servers are not passed on here: the native API names them differently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};
use http::Uri;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_prompt_orchestrator::shard::shard_for;
use tokio_prompt_orchestrator::{
    FinishReason, InferenceCall, ModelWorker, TokenStream, Usage, WorkerChunk, WorkerError,
};

use crate::http::{BuildError, HttpBackend};
use crate::routing::health::{HealthConfig, HealthProbe};
use crate::routing::replica::ReplicaConfig;
use crate::sse::{self, Dialect, Parsed};
use crate::timeouts::{TimeoutConfig, Timeouts};

/// How long a health check waits for `/slots` once `/health` has answered.
const SLOTS_WAIT: Duration = Duration::from_millis(500);

/// One llama-server.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaCppConfig {
    pub name: String,
    /// The server root, without `/v1` (e.g. `http://127.0.0.1:8080`).
    pub base_url: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The server's parallel slots (its `-np`); each session maps to one of them. The health
    /// checks read the real number from the server's `/slots`, which then wins; this one is used
    /// until then, and for servers started with `--no-slots`.
    #[serde(default = "one")]
    pub slots: usize,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub routing: ReplicaConfig,
    /// `health_check = { interval_ms = 5000, ... }` against `/health` (503 while loading).
    #[serde(default)]
    pub health_check: HealthConfig,
}

fn one() -> usize {
    1
}

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
}

/// The `/completion` body for `call` on `slot`.
pub fn request_body(call: &InferenceCall, slot: usize, stream: bool) -> CompletionBody<'_> {
    let params = &call.request.params;
    CompletionBody {
        prompt: &call.prompt,
        n_predict: params.max_tokens.map_or(-1, i64::from),
        stream,
        cache_prompt: true,
        id_slot: slot,
        temperature: params.temperature,
        top_p: params.top_p,
        stop: &params.stop,
        seed: params.seed,
    }
}

/// A `/completion` request, borrowed from the call (no JSON tree is built for it).
#[derive(Serialize)]
pub struct CompletionBody<'a> {
    prompt: &'a str,
    /// -1: until the model stops.
    n_predict: i64,
    stream: bool,
    cache_prompt: bool,
    id_slot: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
}

/// A `/completion` answer, whole or one streamed piece of it.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    content: String,
    #[serde(default)]
    stop: bool,
    stop_type: Option<String>,
    tokens_predicted: Option<u32>,
    tokens_evaluated: Option<u32>,
    error: Option<Value>,
}

impl Answer {
    fn parsed(self) -> Parsed {
        let reason = match self.stop_type.as_deref() {
            Some("limit") => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        let finish = self.stop.then_some(reason);
        let usage = match (self.tokens_evaluated, self.tokens_predicted) {
            (Some(prompt), Some(completion)) if self.stop => Some(Usage::new(prompt, completion)),
            _ => None,
        };
        Parsed {
            token: Some(self.content).filter(|t| !t.is_empty()),
            extra: None,
            finish,
            usage,
            done: self.stop,
        }
    }
}

fn error_text(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| error.to_string(), String::from)
}

/// llama-server's stream: `{"content": ..., "stop": false}` pieces, then one with `stop: true`
/// and the counts; no `[DONE]`.
///
/// Public, but not an API: the fuzz targets (`fuzz/`) relay arbitrary streams through it.
#[doc(hidden)]
pub struct LlamaDialect;

impl Dialect for LlamaDialect {
    fn parse(&mut self, data: &str) -> Result<Parsed, String> {
        let answer: Answer =
            serde_json::from_str(data).map_err(|e| format!("an unreadable stream chunk ({e})"))?;
        if let Some(error) = &answer.error {
            return Err(error_text(error));
        }
        Ok(answer.parsed())
    }
}

#[async_trait]
impl ModelWorker for LlamaCppWorker {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        let body = self
            .http
            .encode(&serde_json::json!({"prompt": prompt, "n_predict": -1, "cache_prompt": true}))?;
        let deadline = self.http.deadline();
        let response = self
            .http
            .post(&self.completion_url, body, deadline, false)
            .await?;
        let bytes = self.http.read_all(response, deadline).await?;
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
            self.http
                .error(&format!("the answer is not llama.cpp JSON ({e})"), true)
        })?;
        Ok(vec![answer.content])
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let deadline = self.http.deadline();
        let slot = shard_for(&call.request.session, self.slots.load(Ordering::Relaxed));
        let streamed = call.request.stream;
        let body = self.http.encode(&request_body(&call, slot, streamed))?;
        // The call is not needed past here; its request goes before the wait for the upstream.
        drop(call);
        let response = self
            .http
            .post(&self.completion_url, body, deadline, streamed)
            .await?;
        if streamed {
            return Ok(sse::relay(
                response,
                LlamaDialect,
                self.http.name.clone(),
                self.http.timeouts,
                deadline,
            ));
        }
        let bytes = self.http.read_all(response, deadline).await?;
        answer_stream(&self.http.name, &bytes)
    }
}

/// A non-streamed `/completion` answer as a token stream: its text as one token, then the finish.
///
/// Public, but not an API: the fuzz targets (`fuzz/`) call it with arbitrary bodies.
///
/// # Errors
/// When the body is not llama.cpp JSON (retryable), or reports an error (not retryable).
#[doc(hidden)]
pub fn answer_stream(backend: &str, body: &[u8]) -> Result<TokenStream, WorkerError> {
    let error = |message: String, retryable| WorkerError {
        retryable,
        ..WorkerError::new(format!("{backend}: {message}"))
    };
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| error(format!("the answer is not llama.cpp JSON ({e})"), true))?;
    if let Some(message) = &answer.error {
        return Err(error(error_text(message), false));
    }
    let parsed = answer.parsed();
    let mut chunks = Vec::with_capacity(2);
    if let Some(text) = parsed.token {
        chunks.push(Ok(WorkerChunk::Token(text)));
    }
    chunks.push(Ok(WorkerChunk::Finish {
        reason: parsed.finish.unwrap_or_default(),
        usage: parsed.usage,
    }));
    Ok(stream::iter(chunks).boxed())
}

impl LlamaCppWorker {
    pub fn name(&self) -> &Arc<str> {
        &self.http.name
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio_prompt_orchestrator::{InferenceRequest, RequestId, SamplingParams, SessionId};

    use super::*;

    fn written(call: &InferenceCall, slot: usize, stream: bool) -> Value {
        serde_json::to_value(request_body(call, slot, stream)).unwrap()
    }

    #[test]
    fn the_body_carries_the_rendered_prompt_slot_and_only_the_params_set() {
        let plain = InferenceCall::new(
            RequestId(1),
            InferenceRequest::text(SessionId::new("s"), "Once"),
            "rendered",
        );
        assert_eq!(
            written(&plain, 2, false),
            json!({"prompt": "rendered", "n_predict": -1, "stream": false, "cache_prompt": true, "id_slot": 2})
        );
        let request = InferenceRequest::text(SessionId::new("s"), "Once").with_params(SamplingParams {
            temperature: Some(0.5),
            top_p: Some(0.25),
            max_tokens: Some(9),
            stop: vec!["END".into()],
            seed: Some(7),
        });
        let call = InferenceCall::new(RequestId(2), request, "rendered");
        assert_eq!(
            written(&call, 0, true),
            json!({"prompt": "rendered", "n_predict": 9, "stream": true, "cache_prompt": true, "id_slot": 0,
                   "temperature": 0.5, "top_p": 0.25, "stop": ["END"], "seed": 7})
        );
    }
}
