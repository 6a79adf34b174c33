//! llama.cpp's llama-server (`kind = "llamacpp"`), keeping each session on one KV-cache slot:
//! every call carries an `id_slot` derived from the session, and `cache_prompt: true`, so the
//! next turn of a session evaluates only what its slot has not seen.
//!
//! Which endpoint a call takes ([`Route`]):
//! - a chat request goes to `/v1/chat/completions`, where the server formats the messages with
//!   the model's own chat template (from its GGUF, or its `--chat-template`). Without one, a
//!   model that expects its chat format gets plain text and may answer nothing at all. The body
//!   and the reading of the answer are the OpenAI backend's ([`crate::openai`]), the caller's
//!   pass-through fields included, with llama.cpp's two fields added;
//! - a completion request, and a chat request whose prompt a configured `prompt` template
//!   rendered (a configured template wins over the model's), go to the native `/completion`
//!   as that text ([`native`]);
//! - an embedding request goes to `/v1/embeddings` ([`crate::embeddings`]), served when the
//!   server runs with `--embeddings`.
//!
//! - `config`: the `[[backends]]` entry ([`LlamaCppConfig`]).
//! - [`native`]: the `/completion` body and answers.

mod config;
pub mod native;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use http::Uri;
use tokio_prompt_orchestrator::shard::shard_for;
use tokio_prompt_orchestrator::{InferenceCall, ModelWorker, PromptInput, TokenStream, WorkerError};

pub use self::config::LlamaCppConfig;
pub use self::native::{CompletionBody, request_body};
#[doc(hidden)]
pub use self::native::{LlamaDialect, answer_stream};
use crate::embeddings;
use crate::http::{BuildError, HttpBackend};
use crate::openai::{self, ServerFields};
use crate::routing::health::HealthProbe;
use crate::timeouts::Timeouts;

/// How long a health check waits for `/slots` once `/health` has answered.
const SLOTS_WAIT: Duration = Duration::from_millis(500);

/// Which of llama-server's endpoints a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v1/chat/completions`: the server applies the model's own chat template.
    Chat,
    /// `/completion`: the prompt as the Assemble stage rendered it, as it is.
    Native,
}

impl Route {
    pub fn of(call: &InferenceCall) -> Self {
        match call.request.input {
            PromptInput::Chat(_) if !call.prompt_templated => Route::Chat,
            // A completion's text goes as the caller wrote it; a configured template's output
            // is already in the model's chat format.
            _ => Route::Native,
        }
    }
}

pub struct LlamaCppWorker {
    http: HttpBackend,
    /// Slots sessions are spread over: configured, then as `/slots` reports.
    slots: AtomicUsize,
    /// `{base_url}/completion`, `/v1/chat/completions` and `/v1/embeddings`, parsed once.
    completion_url: Uri,
    chat_url: Uri,
    embeddings_url: Uri,
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
            chat_url: http.url(&format!("/v1{}", openai::Endpoint::Chat.path()))?,
            embeddings_url: http.url(&format!("/v1{}", openai::Endpoint::Embeddings.path()))?,
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
    /// The prompt as one user message, in the model's chat format, answered whole.
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        openai::infer_as_chat(self, prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let deadline = self.http.deadline();
        let slot = shard_for(&call.request.session, self.slots.load(Ordering::Relaxed));
        let streamed = call.request.stream;
        if let PromptInput::Embed(_) = call.request.input {
            let model = &call.request.model;
            return embeddings::embed(&self.http, &self.embeddings_url, model, &call, deadline).await;
        }
        let route = Route::of(&call);
        let body = match route {
            Route::Chat => {
                let server = ServerFields {
                    slot: Some(slot),
                    ..ServerFields::default()
                };
                // llama-server serves the model it loaded whatever the name; sending the
                // caller's keeps the body valid for servers that check it.
                let model = &call.request.model;
                self.http
                    .encode(&openai::request_body(&call, model, streamed, server))?
            }
            Route::Native => {
                if call
                    .chat_messages()
                    .is_some_and(|m| m.iter().any(|m| m.extra.contains_key("content")))
                {
                    return Err(WorkerError::new(
                        "this model's prompt template renders text for llama-server's /completion, which \
                         takes no images: serve images through the chat route (no `prompt` template) \
                         or a backend of kind openai",
                    )
                    .with_status(400));
                }
                self.http.encode(&request_body(&call, slot, streamed))?
            }
        };
        let traceparent = call.traceparent();
        // The call is not needed past here; its request goes before the wait for the upstream.
        drop(call);
        match route {
            Route::Chat => {
                openai::send(&self.http, &self.chat_url, body, deadline, streamed, traceparent).await
            }
            Route::Native => {
                native::send(
                    &self.http,
                    &self.completion_url,
                    body,
                    deadline,
                    streamed,
                    traceparent,
                )
                .await
            }
        }
    }

    fn address(&self) -> Option<String> {
        self.http.address()
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
    use tokio_prompt_orchestrator::{ChatMessage, InferenceRequest, RequestId, SessionId};

    use super::*;

    #[test]
    fn chat_takes_the_models_template_unless_a_configured_one_rendered_the_prompt() {
        let chat = InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user("Hi")]);
        let mut call = InferenceCall::new(RequestId(1), chat, "Hi");
        assert_eq!(Route::of(&call), Route::Chat);
        call.prompt_templated = true;
        assert_eq!(Route::of(&call), Route::Native);
        let text = InferenceRequest::text(SessionId::new("s"), "Once");
        let call = InferenceCall::new(RequestId(2), text, "Once");
        assert_eq!(Route::of(&call), Route::Native);
    }
}
