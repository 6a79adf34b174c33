//! Model backends for tokio-prompt-orchestrator: each is a `ModelWorker` that talks to a real
//! model server.
//!
//! - [`openai`]: any OpenAI-compatible server (OpenAI, vLLM, SGLang, Ollama, llama.cpp `/v1`,
//!   TGI), streaming relayed token by token.
//! - [`llamacpp`]: llama.cpp's llama-server, keeping each session on one KV-cache slot: chat
//!   through its `/v1/chat/completions` (the model's own chat template), completions and
//!   prompts a configured template rendered through its native `/completion`.
//! - [`http`], [`sse`], [`timeouts`]: what the HTTP backends share: the client, error mapping,
//!   the incremental SSE relay and its time limits.
//! - [`embeddings`]: embedding calls, for every HTTP backend; [`batch`]: an embedding request's
//!   inputs split into upstream batches, identical inputs in flight embedded once.
//! - [`dedup`]: identical in-flight calls sharing one upstream call.
//! - [`routing`]: the router in front of them: balancing, retries before the first token,
//!   fallback groups, circuit breakers, per-backend limits.

pub mod batch;
pub mod dedup;
mod embeddings;
pub mod http;
pub mod llamacpp;
pub mod openai;
pub mod routing;
pub mod sse;
pub mod timeouts;
pub mod transport;

pub use openai::{OpenAiConfig, OpenAiWorker};
pub use routing::Router;
