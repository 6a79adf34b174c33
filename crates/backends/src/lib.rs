//! Model backends for tokio-prompt-orchestrator: each is a `ModelWorker` that talks to a real
//! model server.
//!
//! - [`openai`]: any OpenAI-compatible server (OpenAI, vLLM, SGLang, Ollama, llama.cpp `/v1`,
//!   TGI), streaming relayed token by token.
//! - [`routing`]: the router in front of them: balancing, retries before the first token,
//!   fallback groups, circuit breakers, per-backend limits.

pub mod openai;
pub mod routing;

pub use openai::{OpenAiConfig, OpenAiWorker};
pub use routing::Router;
